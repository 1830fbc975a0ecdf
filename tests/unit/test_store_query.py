"""QueryEngine: hot ∪ cold views deduplicated on identity, empty views, output formats."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tradepulse.events import DeadLetter, Quote, Trade
from tradepulse.market_time import NS_PER_S
from tradepulse.process.correlator import NEWS_TABLE, SENTIMENT_TABLE
from tradepulse.store.base import DerivedTable, StoreBatch
from tradepulse.store.cold.parquet import ParquetColdStore
from tradepulse.store.hot.sqlite import SQLiteHotStore, cold_position_key
from tradepulse.store.query import QueryEngine, QueryError, QueryResult, format_result

pytestmark = pytest.mark.unit

T0 = 1_709_650_800 * NS_PER_S  # 2024-03-05 10:00 ET
HOUR = 3600 * NS_PER_S

BARS = DerivedTable(
    name="bars_1m",
    columns={"ticker": "TEXT", "start": "INTEGER", "close": "REAL"},
    key=("ticker", "start"),
    mode="replace",
    time_column="start",
    cold=True,
)
ANOMALIES = DerivedTable(
    name="anomalies",
    columns={"ticker": "TEXT", "timestamp": "INTEGER", "score": "REAL", "features": "TEXT"},
    key=("ticker", "timestamp"),
    time_column="timestamp",
    cold=True,
)
LATEST = DerivedTable(
    name="features_latest",
    columns={"ticker": "TEXT", "timestamp": "INTEGER", "vwap": "REAL"},
    key=("ticker",),
    mode="newer",
    order_by=("timestamp",),
    time_column="timestamp",
)
TABLES = [BARS, ANOMALIES, LATEST, NEWS_TABLE, SENTIMENT_TABLE]


def trade(seq: int, ticker: str = "AAPL", ts: int | None = None) -> Trade:
    ts = T0 + seq * NS_PER_S if ts is None else ts
    return Trade(ticker, 10.0 + seq, seq, ts, ts + 1, seq, conditions=(1, 2))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[SQLiteHotStore, ParquetColdStore, QueryEngine]]:
    hot = SQLiteHotStore(tmp_path / "hot.sqlite3", TABLES, retention_ns=48 * HOUR)
    cold = ParquetColdStore(tmp_path / "cold", hot, TABLES, expire_hot=False)
    yield hot, cold, QueryEngine(tmp_path, TABLES)
    hot.close()


def scalar(engine: QueryEngine, sql: str) -> Any:
    return engine.sql(sql).rows[0][0]


def test_fresh_store_has_empty_views(tmp_path: Path) -> None:
    engine = QueryEngine(tmp_path, TABLES)  # no hot file, no cold dir
    for name in ("trades", "quotes", "dlq", "bars_1m", "anomalies", "features_latest", "news"):
        assert scalar(engine, f"SELECT count(*) FROM {name}") == 0
    cols = engine.sql("SELECT * FROM trades").columns
    assert cols[:11] == [
        "ticker",
        "price",
        "size",
        "timestamp",
        "ingest_ts",
        "sequence_number",
        "exchange",
        "tape",
        "conditions",
        "trade_id",
        "trf_id",
    ]
    assert cols[11:] == ["day", "date"]
    hot = SQLiteHotStore(tmp_path / "hot.sqlite3", TABLES, retention_ns=HOUR)
    hot.close()  # an empty hot store answers the same
    assert scalar(engine, "SELECT count(*) FROM market_sentiment") == 0


def test_hot_and_cold_rows_are_counted_once(
    env: tuple[SQLiteHotStore, ParquetColdStore, QueryEngine],
) -> None:
    hot, cold, engine = env
    hot.write(StoreBatch(trades=[trade(1), trade(2), trade(1, "MSFT")]))
    assert scalar(engine, "SELECT count(*) FROM trades") == 3  # hot only
    cold.flush()
    hot.write(StoreBatch(trades=[trade(3)]))
    assert scalar(engine, "SELECT count(*) FROM trades") == 4  # cold + unflushed hot
    # Rows in both places (e.g. a flush whose position was lost) still count once.
    hot.set_position(cold_position_key("trades"), "0")
    assert scalar(engine, "SELECT count(*) FROM trades") == 4
    got = engine.sql(
        "SELECT ticker, sequence_number, price, conditions, day, date FROM trades "
        "ORDER BY ticker, sequence_number"
    ).rows
    assert got[0] == ("AAPL", 1, 11.0, "[1,2]", 20240305, date(2024, 3, 5))
    assert [r[:2] for r in got] == [("AAPL", 1), ("AAPL", 2), ("AAPL", 3), ("MSFT", 1)]


def test_cold_rows_stay_visible_after_expiry(tmp_path: Path) -> None:
    hot = SQLiteHotStore(tmp_path / "hot.sqlite3", TABLES, retention_ns=HOUR)
    cold = ParquetColdStore(tmp_path / "cold", hot, TABLES)
    engine = QueryEngine(tmp_path, TABLES)
    try:
        hot.write(
            StoreBatch(
                trades=[trade(1), trade(2)],
                quotes=[Quote("AAPL", 1.0, 1, 2.0, 1, T0, T0, 1)],
                dead_letters=[DeadLetter("bad", "{", "ws", T0)],
                derived={"anomalies": [{"ticker": "AAPL", "timestamp": T0, "score": -0.7}]},
            )
        )
        cold.flush()  # and expire: everything is older than an hour
        assert hot.count("trades") == hot.count("anomalies") == hot.count("dlq") == 0
        assert scalar(engine, "SELECT count(*) FROM trades") == 2
        assert scalar(engine, "SELECT count(*) FROM quotes") == 1
        assert engine.sql("SELECT id, reason, ticker FROM dlq").rows == [(1, "bad", None)]
        assert engine.query_rows("SELECT ticker, score FROM anomalies") == [
            {"ticker": "AAPL", "score": -0.7}
        ]
    finally:
        hot.close()


def test_replaced_rows_newest_version_wins(
    env: tuple[SQLiteHotStore, ParquetColdStore, QueryEngine],
) -> None:
    hot, cold, engine = env
    bar = {"ticker": "AAPL", "start": T0, "close": 1.0}
    hot.write(StoreBatch(derived={"bars_1m": [bar, {**bar, "start": T0 + 60 * NS_PER_S}]}))
    cold.flush()
    hot.write(StoreBatch(derived={"bars_1m": [{**bar, "close": 2.0}]}))
    sql = "SELECT start, close FROM bars_1m ORDER BY start"
    assert engine.sql(sql).rows == [(T0, 2.0), (T0 + 60 * NS_PER_S, 1.0)]
    cold.flush()  # both versions now in Parquet: the newer still wins
    assert engine.sql(sql).rows == [(T0, 2.0), (T0 + 60 * NS_PER_S, 1.0)]
    assert "_rid" not in engine.sql("SELECT * FROM bars_1m").columns


def test_hot_only_derived_table(env: tuple[SQLiteHotStore, ParquetColdStore, QueryEngine]) -> None:
    hot, _, engine = env
    hot.write(StoreBatch(derived={"features_latest": [{"ticker": "A", "timestamp": 1}]}))
    assert engine.query_rows("SELECT * FROM features_latest") == [
        {"ticker": "A", "timestamp": 1, "vwap": None}
    ]


def test_partition_pruning_on_date_and_ticker(
    env: tuple[SQLiteHotStore, ParquetColdStore, QueryEngine],
) -> None:
    hot, cold, engine = env
    hot.write(StoreBatch(trades=[trade(1), trade(2, "MSFT"), trade(1, ts=T0 + 24 * HOUR)]))
    cold.flush()
    query = "SELECT * FROM trades WHERE ticker = 'AAPL' AND date = DATE '2024-03-05'"

    def scans() -> list[str]:
        plan = "\n".join(str(r[1]) for r in engine.sql(f"EXPLAIN {query}").rows)
        return re.findall(r"Scanning Files: \d+/\d+", plan)

    assert scans() == ["Scanning Files: 1/3"]
    hot.write(StoreBatch(trades=[trade(2)]))  # unflushed: the anti-join scan is pruned too
    assert scans() == ["Scanning Files: 1/3", "Scanning Files: 1/3"]
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM trades WHERE ticker = 'AAPL' AND date = DATE '2024-03-05'",
        )
        == 2
    )


def test_bad_sql_and_unknown_tables(tmp_path: Path) -> None:
    engine = QueryEngine(tmp_path, TABLES)
    with pytest.raises(QueryError, match="syntax"):
        engine.sql("SELEC nonsense")
    with pytest.raises(QueryError, match="views: trades, quotes, dlq"):
        engine.sql("SELECT * FROM nosuch")
    with pytest.raises(QueryError, match="empty"):
        engine.sql("  ")


RESULT = QueryResult(
    pa.table(
        {
            "ticker": ["AAPL", "MSFT"],
            "n": [1, 22],
            "px": [1.5, None],
            "d": [date(2024, 3, 5), date(2024, 3, 6)],
        }
    )
)


def test_format_table() -> None:
    text = format_result(RESULT, "table")
    assert isinstance(text, str)
    lines = text.splitlines()
    assert lines[0].split(" | ") == ["ticker", " n", "  px", "d"]
    assert lines[2] == "AAPL   |  1 |  1.5 | 2024-03-05"
    assert lines[3] == "MSFT   | 22 | NULL | 2024-03-06"
    assert lines[-1] == "(2 rows)"


def test_format_json_csv_parquet() -> None:
    js = format_result(RESULT, "json")
    assert isinstance(js, str)
    assert orjson.loads(js) == [
        {"ticker": "AAPL", "n": 1, "px": 1.5, "d": "2024-03-05"},
        {"ticker": "MSFT", "n": 22, "px": None, "d": "2024-03-06"},
    ]
    text = format_result(RESULT, "csv")
    assert isinstance(text, str)
    assert list(csv.reader(io.StringIO(text))) == [
        ["ticker", "n", "px", "d"],
        ["AAPL", "1", "1.5", "2024-03-05"],
        ["MSFT", "22", "", "2024-03-06"],
    ]
    data = format_result(RESULT, "parquet")
    assert isinstance(data, bytes)
    assert pq.read_table(io.BytesIO(data)).equals(RESULT.table)
    with pytest.raises(ValueError):
        format_result(RESULT, "xml")


def test_json_of_aggregates(env: tuple[SQLiteHotStore, ParquetColdStore, QueryEngine]) -> None:
    hot, _, engine = env
    hot.write(StoreBatch(trades=[trade(1), trade(2)]))
    result = engine.sql("SELECT sum(size) AS volume, avg(price) AS avg FROM trades")
    assert orjson.loads(format_result(result, "json")) == [{"volume": 3, "avg": 11.5}]
