"""Replay of the committed sample flat files (written by the simulator's generator, see
tests/flatfile_gen.py): counts against DuckDB over the same files, idempotence, and
determinism of the derived tables across replays into separate data dirs."""

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flatfile_gen import et_ns, write_sim_files
from tradepulse.config import Settings, load_settings
from tradepulse.process.stages import all_tables
from tradepulse.runner import run_replay
from tradepulse.store.query import QueryEngine

DATA = Path(__file__).resolve().parents[1] / "data"
TRADES = DATA / "sample_trades.csv.gz"
QUOTES = DATA / "sample_quotes.csv.gz"
SAMPLE_ARGS: dict[str, Any] = {
    "tickers": ["AAPL", "MSFT"],
    "start_ns": et_ns("2024-04-05", 10, 0),
    "seconds": 90,
    "rate": 60,
    "seed": 7,
}


def _settings(data: Path) -> Settings:
    # Short volume windows and small anomaly windows: 90 s of two tickers then leaves the
    # warm-up, trains models and flags anomalies.
    return load_settings(
        data_dir=data,
        tickers="AAPL,MSFT",
        volume_window_s=5.0,
        volume_min_baseline=2,
        anomaly_train_window=64,
        anomaly_retrain_every=32,
        batch_max_events=500,
    )


def _duck(sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect() as con:
        return con.sql(sql).fetchall()


def _rows(data: Path, settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    return QueryEngine(data, all_tables(settings)).sql(sql).rows


def test_committed_samples_are_what_the_generator_writes(tmp_path: Path) -> None:
    t, q = tmp_path / "t.csv.gz", tmp_path / "q.csv.gz"
    write_sim_files(t, q, **SAMPLE_ARGS)
    assert gzip.decompress(t.read_bytes()) == gzip.decompress(TRADES.read_bytes())
    assert gzip.decompress(q.read_bytes()) == gzip.decompress(QUOTES.read_bytes())
    assert TRADES.stat().st_size + QUOTES.stat().st_size < 200_000


@pytest.mark.usefixtures("clean_env")
async def test_replay_twice_stores_one_copy_and_derived_tables_repeat(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    sa, sb = _settings(a), _settings(b)
    first = await run_replay(sa, [TRADES, QUOTES], progress=None)
    again = await run_replay(sa, [TRADES, QUOTES], progress=None)  # resumes at the end: no-op
    again_pos = a / "hot.sqlite3"
    assert again_pos.exists()
    fresh = await run_replay(sb, [TRADES, QUOTES], progress=None)

    file_trades = _duck(
        f"select ticker, count(*), sum(size::BIGINT) from read_csv('{TRADES}', all_varchar=true) "
        "group by 1 order by 1"
    )
    file_quotes = _duck(f"select count(*) from read_csv('{QUOTES}')")[0][0]
    assert first.trades == sum(n for _, n, _ in file_trades) and first.dead_letters == 0
    assert first.trades_stored == first.trades and first.quotes == file_quotes
    assert again.trades_stored == 0 and fresh.trades_stored == first.trades

    stored = _rows(a, sa, "select ticker, count(*), sum(size) from trades group by 1 order by 1")
    assert [(t, n, int(v)) for t, n, v in stored] == [
        (t, n, int(float(v))) for t, n, v in file_trades
    ]
    dupes = (
        "select count(*) from (select ticker, day, sequence_number from trades "
        "group by all having count(*) > 1)"
    )
    assert _rows(a, sa, dupes) == [(0,)]
    assert _rows(a, sa, "select count(*) from quotes") == [(file_quotes,)]

    # A forced second pass over the same rows (position reset, as for a renamed copy of the
    # file) is still one copy each, although the rows left the hot store (2024 is far past
    # the 48 h retention) and live only in Parquet.
    with sqlite3.connect(a / "hot.sqlite3") as con:
        con.execute("delete from positions where key like 'replay:%'")
    forced = await run_replay(sa, [TRADES], progress=None)
    assert forced.already_cold == first.trades and forced.trades_stored == 0
    assert _rows(a, sa, "select count(*) from trades") == [(first.trades,)]
    assert _rows(a, sa, dupes) == [(0,)]

    for table, order in (
        ("features", "ticker, timestamp, sequence_number"),
        ("anomalies", "ticker, timestamp, sequence_number"),
        ("bars", "ticker, minute_start"),
    ):
        cols = "* exclude (date)" if table != "features_latest" else "*"
        ra = _rows(a, sa, f"select {cols} from {table} order by {order}")
        rb = _rows(b, sb, f"select {cols} from {table} order by {order}")
        assert ra == rb, table
        assert ra, f"{table} is empty: the comparison would prove nothing"
