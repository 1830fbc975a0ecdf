"""Simulator + the whole embedded pipeline for a few seconds, scored against ground truth:
what is stored equals what the simulator sent, exactly, and bad events are all dead letters."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tradepulse.config import load_settings
from tradepulse.process.stages import all_tables
from tradepulse.runner import run_embedded
from tradepulse.sim import SimConfig
from tradepulse.store.query import QueryEngine

TICKERS = ["AAPL", "MSFT", "NVDA"]


def _rows(engine: QueryEngine, sql: str) -> list[dict[str, object]]:
    return engine.query_rows(sql)


@pytest.mark.usefixtures("clean_env")
async def test_stored_counts_equal_the_simulators_truth(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = load_settings(data_dir=data, tickers=",".join(TICKERS), cold_flush_s=2.0)
    sim_cfg = SimConfig(
        tickers=TICKERS, rate=3000, seed=11, bad_rate=0.01, truth_dir=data / "truth"
    )
    summary = await run_embedded(
        settings, sim_config=sim_cfg, duration_s=6.0, serve_api=False, out=lambda _line: None
    )
    truth = orjson.loads((data / "truth" / "summary.json").read_bytes())
    sent_trades = sum(truth["valid_trades"].values())
    sent_quotes = sum(truth["valid_quotes"].values())
    assert sent_trades > 1000 and truth["malformed"] > 0

    assert summary.trades_stored == sent_trades
    assert summary.quotes_stored == sent_quotes
    assert summary.dead_letters == truth["malformed"]

    engine = QueryEngine(data, all_tables(settings))
    per_ticker = {
        r["ticker"]: r["n"]
        for r in _rows(engine, "select ticker, count(*) as n from trades group by 1")
    }
    assert per_ticker == truth["valid_trades"]
    assert _rows(engine, "select count(*) as n from quotes")[0]["n"] == sent_quotes
    assert _rows(engine, "select count(*) as n from dlq")[0]["n"] == truth["malformed"]
    dupes = _rows(
        engine,
        "select count(*) as n from (select ticker, sequence_number, count(*) c from trades "
        "group by 1, 2 having c > 1)",
    )
    assert dupes[0]["n"] == 0
    # The shutdown flush wrote the cold copy in the Hive layout.
    parts = list((data / "cold" / "trades").glob("date=*/ticker=*/*.parquet"))
    assert {p.parent.name for p in parts} == {f"ticker={t}" for t in TICKERS}
    # Features were computed for stored trades and the latest row per ticker is readable.
    latest = _rows(engine, "select ticker from features_latest order by ticker")
    assert [r["ticker"] for r in latest] == sorted(TICKERS)
