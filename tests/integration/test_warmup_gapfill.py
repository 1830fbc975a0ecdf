"""Start-up warm-up and disconnect gap fill from the REST trades endpoint, end to end.

An external simulator with a calm history stands in for Polygon: the run pulls the history
before the socket connects (so the z-score is defined from the first live trade), then the
provider drops the connection twice; what was generated meanwhile reaches the run only
through REST. Every generated trade must be stored exactly once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest

from tradepulse.config import load_settings
from tradepulse.process.stages import all_tables
from tradepulse.runner import run_embedded
from tradepulse.sim import MarketSimulator, SimConfig
from tradepulse.store.query import QueryEngine

pytestmark = pytest.mark.integration

TICKERS = ["AAPL", "MSFT"]
HISTORY_S = 420.0  # > 5 baseline windows + the current one: z-scores defined at once


@pytest.mark.usefixtures("clean_env")
async def test_history_warms_the_windows_and_gaps_are_filled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sim = MarketSimulator(
        SimConfig(
            tickers=TICKERS,
            rate=200,
            seed=5,
            duration_s=30.0,
            history_s=HISTORY_S,
            anomaly_rate=0,
            news_rate=0,
            truth_dir=data / "truth",
        )
    )
    await sim.start()
    settings = load_settings(
        data_dir=data,
        tickers=",".join(TICKERS),
        source="polygon",
        polygon_api_key="simulator",
        polygon_ws_url=sim.ws_url,
        polygon_rest_url=sim.http_url,
        # Wider than the history: the run starts seconds after the simulator's clock did.
        warmup_s=HISTORY_S + 120,
        reconnect_base_s=0.3,
        reconnect_max_s=0.6,
    )
    lines: list[str] = []

    async def drop_twice() -> None:
        for _ in range(2):
            # A dropped connection stops counting as subscribed at once, so this waits for
            # the reconnect (the old handler may still be winding down meanwhile).
            while sim.subscribed == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)
            assert sim.drop_clients() == 1

    async def finish() -> None:
        await sim.wait_finished()
        await sim.stop()

    dropper = asyncio.create_task(drop_twice())
    finisher = asyncio.create_task(finish())
    try:
        summary = await run_embedded(
            settings, duration_s=60.0, serve_api=False, out=lines.append, until_feed_closes=True
        )
    finally:
        await dropper
        await finisher

    truth = orjson.loads((data / "truth" / "summary.json").read_bytes())
    history = sum(truth["history_trades"].values())
    generated = sum(truth["valid_trades"].values())
    assert history > 10_000 and generated > history
    assert any("warm-up:" in ln and "processed" in ln for ln in lines), lines
    fills = [ln for ln in lines if "filled from REST" in ln]
    assert sum("(1012)" in ln for ln in fills) == 2, lines
    assert sum("warm-up until live" in ln for ln in fills) == 1, lines

    engine = QueryEngine(data, all_tables(settings))
    per_ticker = {
        r["ticker"]: r["n"]
        for r in engine.query_rows("select ticker, count(*) as n from trades group by 1")
    }
    assert per_ticker == truth["valid_trades"]  # history + live + both gaps, nothing lost
    dupes = engine.query_rows(
        "select count(*) as n from (select ticker, sequence_number, count(*) c from trades "
        "group by 1, 2 having c > 1)"
    )
    assert dupes[0]["n"] == 0
    assert summary.trades_stored == generated
    with sqlite3.connect(data / "hot.sqlite3") as db:
        reasons = [r[0] for r in db.execute("select reason from disconnects")]
    assert len(reasons) == 2 and all("1012" in r for r in reasons), reasons
    # The history warmed the windows: no live trade is still warming up.
    live = engine.query_rows(
        "select count(*) as n, sum(cast(warming_up as integer)) as warm "
        f"from features where timestamp >= {truth['started_at_ns']}"
    )
    assert live[0]["n"] > 500 and live[0]["warm"] == 0
