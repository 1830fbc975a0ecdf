"""Live feed for part of a simulator run, then `run_backfill` over a range overlapping it from
the simulator's REST /v3/trades: every trade the simulator generated is stored exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tradepulse.config import load_settings
from tradepulse.process.stages import all_tables
from tradepulse.runner import run_backfill, run_embedded
from tradepulse.sim import MarketSimulator, SimConfig
from tradepulse.store.query import QueryEngine

TICKERS = ["AAPL", "MSFT", "NVDA"]


@pytest.mark.usefixtures("clean_env")
async def test_backfill_over_live_data_has_no_duplicates_and_no_gaps(tmp_path: Path) -> None:
    data = tmp_path / "data"
    truth = tmp_path / "truth"
    sim = MarketSimulator(
        SimConfig(tickers=TICKERS, rate=1500, seed=5, duration_s=6.0, truth_dir=truth)
    )
    await sim.start()
    try:
        settings = load_settings(
            data_dir=data,
            tickers=",".join(TICKERS),
            source="polygon",
            polygon_ws_url=sim.ws_url,
            polygon_api_key="simulator",
            polygon_rest_url=sim.http_url,
            # No warm-up history, and REST on the simulator (never the real service): the gap
            # after the live part is left for `run_backfill` to close.
            warmup_s=0,
        )
        # The live feed covers the first ~3 s of the 6 s the simulator generates: the rest is
        # a gap only the REST endpoint can fill.
        live = await run_embedded(settings, duration_s=3.0, serve_api=False, out=lambda _l: None)
        await asyncio.wait_for(sim.wait_finished(), 30)
        summary = orjson.loads((truth / "summary.json").read_bytes())
        expected = summary["valid_trades"]
        assert 0 < live.trades_stored < sum(expected.values())

        start = summary["started_at_ns"]
        end = summary["ended_at_ns"] + 1
        fill = await run_backfill(
            settings,
            base_url=sim.http_url,
            api_key="simulator",
            tickers=TICKERS,
            from_ns=start - 1_000_000_000,  # overlaps everything the live feed stored
            to_ns=end,
            progress=None,
        )
    finally:
        await sim.stop()

    assert fill.fetched == sum(expected.values())
    assert fill.duplicates == live.trades_stored
    assert fill.trades_stored == fill.fetched - live.trades_stored

    engine = QueryEngine(data, all_tables(settings))
    per_ticker = dict(engine.sql("select ticker, count(*) from trades group by 1").rows)
    assert per_ticker == expected
    dupes = engine.sql(
        "select count(*) from (select ticker, day, sequence_number from trades "
        "group by all having count(*) > 1)"
    ).rows
    assert dupes == [(0,)]
    # No gaps: the stored sequence numbers are exactly the simulator's, per ticker.
    hist = {
        t: [row[1] for row in sim.history.query(t, None, None, False, 10**9, None)[0]]
        for t in TICKERS
    }
    for t in TICKERS:
        stored = [
            r[0]
            for r in engine.sql(
                f"select sequence_number from trades where ticker = '{t}' order by 1"
            ).rows
        ]
        assert stored == hist[t], t
