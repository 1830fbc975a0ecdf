"""Scenario 2: the WebSocket dropped repeatedly, the feed down for longer than the reconnect
backoff each time, while the simulator keeps trading.

The embedded run connects to the simulator through `FlakyProxy`; REST goes to the simulator
directly (the provider's REST service is separate from its socket). Expected: the client
reconnects with exponential backoff and full jitter (seen from the proxy as the times of the
refused attempts), subscribes again (trades keep coming after every outage), each outage is
recorded in `disconnects`, and the trades sent while the socket was down are filled from
REST, so that every trade the simulator generated is stored exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

import pytest
from fault_harness import (
    Tally,
    duplicates,
    hot_count,
    scaled,
    stored_per_ticker,
    trade_tally,
    truth,
)
from netfault import FlakyProxy

from tradepulse.config import load_settings
from tradepulse.runner import run_embedded
from tradepulse.sim import MarketSimulator, SimConfig
from tradepulse.store.hot.sqlite import SQLiteHotStore

TICKERS = ["AAPL", "MSFT", "NVDA"]
OUTAGES = int(scaled(3, 12))
OUTAGE_S = scaled(2.5, 6.0)
UP_S = scaled(1.5, 4.0)
RECONNECT_BASE_S = 0.2
RECONNECT_MAX_S = 1.0

pytestmark = pytest.mark.timeout(int(scaled(120, 600)))


@pytest.mark.usefixtures("clean_env")
async def test_outages_longer_than_the_backoff_lose_nothing(tmp_path: Path) -> None:
    data, truth_dir = tmp_path / "data", tmp_path / "truth"
    live_s = 1.0 + OUTAGES * (UP_S + OUTAGE_S) + UP_S
    sim = MarketSimulator(
        SimConfig(tickers=TICKERS, rate=1200, seed=21, truth_dir=truth_dir, duration_s=live_s)
    )
    await sim.start()
    windows: list[tuple[int, int]] = []  # (cut, restore) wall-clock ns
    down: list[tuple[float, float]] = []  # the same, monotonic
    rng = random.Random(4)
    try:
        async with FlakyProxy(sim.port) as proxy:
            settings = load_settings(
                data_dir=data,
                tickers=",".join(TICKERS),
                source="polygon",
                polygon_api_key="simulator",
                polygon_ws_url=f"ws://127.0.0.1:{proxy.port}/stocks",
                polygon_rest_url=sim.http_url,
                reconnect_base_s=RECONNECT_BASE_S,
                reconnect_max_s=RECONNECT_MAX_S,
            )
            run = asyncio.create_task(
                run_embedded(
                    settings, duration_s=live_s + 5.0, serve_api=False, out=lambda _line: None
                )
            )
            deadline = time.monotonic() + 60
            while hot_count(data, "trades") == 0 and time.monotonic() < deadline:
                assert not run.done(), run.exception()
                await asyncio.sleep(0.1)
            stored_before: list[int] = []
            for _ in range(OUTAGES):
                await asyncio.sleep(UP_S * rng.uniform(0.7, 1.0))
                stored_before.append(hot_count(data, "trades"))
                cut, cut_m = time.time_ns(), time.monotonic()
                proxy.cut()
                await asyncio.sleep(OUTAGE_S)
                proxy.restore()
                windows.append((cut, time.time_ns()))
                down.append((cut_m, time.monotonic()))
            summary = await run
    finally:
        await sim.stop()

    # Reconnected after every outage and kept receiving (so it subscribed again).
    forwarded = [a for a in proxy.attempts if a.forwarded]
    assert len(forwarded) == OUTAGES + 1, proxy.attempts
    assert hot_count(data, "trades") > stored_before[-1]

    # Backoff with full jitter: while the feed was down the client kept trying, never more
    # than the cap apart (plus scheduling slack), and the waits were not a fixed schedule.
    refused = [a.at for a in proxy.attempts if not a.forwarded]
    assert len(refused) >= 2 * OUTAGES, f"only {len(refused)} attempts in {OUTAGES} outages"
    gaps = [
        b - a
        for lo, hi in down
        for a, b in itertools.pairwise([t for t in refused if lo <= t <= hi])
    ]
    assert max(gaps) <= RECONNECT_MAX_S + 0.5, gaps
    assert len({round(g, 2) for g in gaps}) > 1, gaps
    print(f"[fault] ws-outage: {len(refused)} refused attempts, waits {min(gaps):.2f}-"
          f"{max(gaps):.2f} s, {summary.trades_stored} trades stored by the run")  # fmt: skip

    # Every outage is recorded as an interval that covers it.
    store = SQLiteHotStore(data / "hot.sqlite3", [], retention_ns=10**18)
    try:
        recorded = [d for d in store.disconnects() if d.source == "polygon-ws"]
    finally:
        store.close()
    for cut, restored in windows:
        assert any(
            d.started_at <= cut + 500_000_000 and d.ended_at is not None and d.ended_at >= restored
            for d in recorded
        ), (cut, restored, recorded)

    tally = trade_tally("ws-outage", data, truth_dir)
    Tally(
        "ws-outage",
        "quotes (no REST history: loss while down is expected)",
        sum(truth(truth_dir)["valid_quotes"].values()),
        sum(stored_per_ticker(data, "quotes").values()),
        duplicates(data, "quotes", ("ticker", "day", "sequence_number")),
    ).report()
    assert tally.duplicated == 0 and tally.extra == 0
    assert tally.lost == 0, f"{tally.lost} trades sent while the socket was down were not filled"
