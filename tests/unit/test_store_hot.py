"""SQLiteHotStore: idempotent batches, write modes, atomicity, reads and retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from records import Records
from tradepulse.events import DeadLetter, Disconnect
from tradepulse.market_time import NS_PER_S
from tradepulse.process.correlator import NEWS_TABLE, SENTIMENT_TABLE
from tradepulse.store.base import DerivedTable, StoreBatch
from tradepulse.store.hot.sqlite import SQLiteHotStore, cold_position_key

pytestmark = pytest.mark.unit

T0 = 1_709_650_800 * NS_PER_S  # 2024-03-05 10:00 ET
DAY0 = 20240305
HOUR = 3600 * NS_PER_S

ANOMALIES = DerivedTable(
    name="anomalies",
    columns={
        "ticker": "TEXT",
        "timestamp": "INTEGER",
        "sequence_number": "INTEGER",
        "anomaly_score": "REAL",
        "features": "TEXT",
        "warming_up": "INTEGER",
    },
    key=("ticker", "timestamp", "sequence_number"),
    mode="ignore",
    time_column="timestamp",
    cold=True,
)
BARS = DerivedTable(
    name="bars_1m",
    columns={"ticker": "TEXT", "start": "INTEGER", "close": "REAL", "volume": "INTEGER"},
    key=("ticker", "start"),
    mode="replace",
    time_column="start",
    cold=True,
)
LATEST = DerivedTable(
    name="features_latest",
    columns={
        "ticker": "TEXT",
        "timestamp": "INTEGER",
        "sequence_number": "INTEGER",
        "vwap": "REAL",
    },
    key=("ticker",),
    mode="newer",
    order_by=("timestamp", "sequence_number"),
    time_column="timestamp",
)
TABLES = [ANOMALIES, BARS, LATEST, NEWS_TABLE, SENTIMENT_TABLE]


RECORDS = Records(T0)
trade, quote, news = RECORDS.trade, RECORDS.quote, RECORDS.news


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteHotStore(tmp_path / "hot.sqlite3", TABLES, retention_ns=48 * HOUR)
    yield s
    s.close()


def test_wal_mode_and_schema_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "hot.sqlite3"
    SQLiteHotStore(path, TABLES, retention_ns=HOUR).close()
    s = SQLiteHotStore(path, TABLES, retention_ns=HOUR)  # reopening creates nothing twice
    s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"trades", "quotes", "dlq", "disconnects", "positions"} <= names
    assert {t.name for t in TABLES} <= names


def test_same_batch_twice_leaves_one_copy(store: SQLiteHotStore) -> None:
    batch = StoreBatch(
        trades=[trade(1), trade(2), trade(1, ticker="MSFT")],
        quotes=[quote(1), quote(2)],
        derived={"anomalies": [{"ticker": "AAPL", "timestamp": T0, "sequence_number": 1}]},
        positions={"replay:x": "3"},
    )
    first = store.write(batch)
    assert (first.trades_inserted, first.trades_duplicate, first.quotes_inserted) == (3, 0, 2)
    assert first.latency_s > 0
    second = store.write(batch)
    assert (second.trades_inserted, second.trades_duplicate, second.quotes_inserted) == (0, 3, 0)
    assert store.count("trades") == 3
    assert store.count("quotes") == 2
    assert store.count("anomalies") == 1


def test_duplicates_within_one_batch_are_counted(store: SQLiteHotStore) -> None:
    r = store.write(StoreBatch(trades=[trade(1), trade(1), trade(2)]))
    assert (r.trades_inserted, r.trades_duplicate) == (2, 1)


def test_identity_includes_the_trading_day(store: SQLiteHotStore) -> None:
    # Sequence numbers reset each day: the same number on the next day is a new trade.
    r = store.write(StoreBatch(trades=[trade(1), trade(1, ts=T0 + 24 * HOUR)]))
    assert r.trades_inserted == 2


def test_dead_letters_are_never_deduplicated(store: SQLiteHotStore) -> None:
    dl = DeadLetter("bad json", "{", "polygon-ws", T0, 1, None)
    r = store.write(StoreBatch(dead_letters=[dl, dl]))
    store.write(StoreBatch(dead_letters=[dl]))
    assert r.dead_letters == 2
    assert store.count("dlq") == 3
    assert store.dead_letters(1) == [dl]


def test_disconnects_are_idempotent(store: SQLiteHotStore) -> None:
    d = Disconnect("polygon-ws", T0, T0 + 5 * NS_PER_S, "timeout")
    store.write(StoreBatch(disconnects=[d]))
    store.write(StoreBatch(disconnects=[d]))
    assert store.disconnects() == [d]


def test_mode_ignore_keeps_the_first(store: SQLiteHotStore) -> None:
    row = {"ticker": "AAPL", "timestamp": T0, "sequence_number": 1, "anomaly_score": -0.7}
    store.write(StoreBatch(derived={"anomalies": [row]}))
    store.write(StoreBatch(derived={"anomalies": [{**row, "anomaly_score": -0.9}]}))
    assert store.latest_row("anomalies", "AAPL")["anomaly_score"] == -0.7  # type: ignore[index]


def test_mode_replace_keeps_the_last(store: SQLiteHotStore) -> None:
    bar = {"ticker": "AAPL", "start": T0, "close": 1.0, "volume": 10}
    store.write(StoreBatch(derived={"bars_1m": [bar, {**bar, "close": 2.0}]}))
    store.write(StoreBatch(derived={"bars_1m": [{**bar, "close": 3.0, "volume": 30}]}))
    assert store.count("bars_1m") == 1
    assert store.latest_row("bars_1m", "AAPL") == {**bar, "close": 3.0, "volume": 30}


def test_mode_newer_keeps_the_greatest_order_by(store: SQLiteHotStore) -> None:
    def row(ts: int, seq: int, vwap: float) -> dict[str, Any]:
        return {"ticker": "AAPL", "timestamp": ts, "sequence_number": seq, "vwap": vwap}

    store.write(StoreBatch(derived={"features_latest": [row(T0, 5, 1.0)]}))
    store.write(StoreBatch(derived={"features_latest": [row(T0 - 1, 9, 2.0)]}))  # older ts
    assert store.latest_row("features_latest", "AAPL")["vwap"] == 1.0  # type: ignore[index]
    store.write(StoreBatch(derived={"features_latest": [row(T0, 5, 3.0)]}))  # equal: no
    assert store.latest_row("features_latest", "AAPL")["vwap"] == 1.0  # type: ignore[index]
    store.write(StoreBatch(derived={"features_latest": [row(T0, 6, 4.0), row(T0, 7, 5.0)]}))
    assert store.latest_row("features_latest", "AAPL")["vwap"] == 5.0  # type: ignore[index]
    assert store.count("features_latest") == 1


def test_nested_numpy_and_bool_values(store: SQLiteHotStore) -> None:
    row = {
        "ticker": "AAPL",
        "timestamp": np.int64(T0),
        "sequence_number": np.int32(3),
        "anomaly_score": np.float32(-0.5),
        "features": {"price": np.float64(1.5), "volume": 3},
        "warming_up": True,
    }
    store.write(StoreBatch(derived={"anomalies": [row]}))
    got = store.latest_row("anomalies", "AAPL")
    assert got is not None
    assert got["timestamp"] == T0 and got["sequence_number"] == 3
    assert got["anomaly_score"] == -0.5
    assert orjson.loads(got["features"]) == {"price": 1.5, "volume": 3}
    assert got["warming_up"] == 1


def test_undeclared_derived_rows_are_ignored(store: SQLiteHotStore) -> None:
    r = store.write(StoreBatch(trades=[trade(1)], derived={"features": [{"x": 1}]}))
    assert r.trades_inserted == 1


def test_failing_batch_leaves_nothing(store: SQLiteHotStore) -> None:
    bad = StoreBatch(
        trades=[trade(1)],
        quotes=[quote(1)],
        dead_letters=[DeadLetter("r", "{}", "s", T0)],
        derived={"anomalies": [{"ticker": "AAPL", "timestamp": object()}]},  # unbindable
        positions={"replay:f": "10"},
    )
    with pytest.raises(sqlite3.Error):
        store.write(bad)
    assert store.count("trades") == store.count("quotes") == store.count("dlq") == 0
    assert store.position("replay:f") is None
    assert store.latest_trade("AAPL") is None
    assert store.known_tickers() == []
    # The store is still usable after the rollback.
    assert store.write(StoreBatch(trades=[trade(1)], positions={"replay:f": "1"})).trades_inserted
    assert store.position("replay:f") == "1"


def test_latest_trade_with_session_volume(store: SQLiteHotStore) -> None:
    store.write(StoreBatch(trades=[trade(1), trade(3)]))
    store.write(StoreBatch(trades=[trade(2), trade(3)]))  # late one + a duplicate
    latest = store.latest_trade("AAPL")
    assert latest is not None
    assert latest["sequence_number"] == 3 and latest["price"] == 103.0
    assert latest["conditions"] == [12, 37]
    assert latest["volume"] == 10 + 20 + 30  # duplicates not counted twice
    # A new trading day starts a new session volume.
    store.write(StoreBatch(trades=[trade(1, ts=T0 + 24 * HOUR)]))
    latest = store.latest_trade("AAPL")
    assert latest is not None and latest["day"] == DAY0 + 1 and latest["volume"] == 10
    assert store.latest_trade("NOPE") is None


def test_latest_quote_and_known_tickers(store: SQLiteHotStore) -> None:
    store.write(StoreBatch(quotes=[quote(2), quote(1)], trades=[trade(1, ticker="MSFT")]))
    q = store.latest_quote("AAPL")
    assert q is not None
    assert q["sequence_number"] == 2 and q["bid_price"] == 101.0 and q["ask_price"] == 103.0
    assert q["conditions"] == [1]
    assert store.known_tickers() == ["AAPL", "MSFT"]


def test_rows_since_newest_first(store: SQLiteHotStore) -> None:
    rows = [
        {"ticker": "AAPL", "timestamp": T0 + i, "sequence_number": i, "anomaly_score": -i}
        for i in range(5)
    ]
    rows.append({"ticker": "MSFT", "timestamp": T0 + 9, "sequence_number": 9})
    store.write(StoreBatch(derived={"anomalies": rows}))
    got = store.rows_since("anomalies", "AAPL", T0 + 2, limit=2)
    assert [r["sequence_number"] for r in got] == [4, 3]
    assert store.latest_row("anomalies", "AAPL")["sequence_number"] == 4  # type: ignore[index]
    assert store.rows_since("unknown", "AAPL", 0) == []
    assert store.latest_row("unknown", "AAPL") is None


def test_trades_since_in_event_order(store: SQLiteHotStore) -> None:
    store.write(StoreBatch(trades=[trade(5), trade(2, ticker="MSFT"), trade(1)]))
    store.write(StoreBatch(trades=[trade(3, ticker="MSFT", ts=T0 + 6 * NS_PER_S), trade(4)]))
    got = store.trades_since(T0 + 2 * NS_PER_S)
    assert [(t.ticker, t.sequence_number) for t in got] == [
        ("MSFT", 2),
        ("AAPL", 4),
        ("AAPL", 5),
        ("MSFT", 3),
    ]
    assert got[-1] == trade(3, ticker="MSFT", ts=T0 + 6 * NS_PER_S)


def test_unjoined_news(store: SQLiteHotStore) -> None:
    a, b = news("a"), news("b")
    rows = [
        {f: getattr(n, f) for f in NEWS_TABLE.columns if f != "ticker"} | {"ticker": n.ticker}
        for n in (a, b)
    ]
    store.write(StoreBatch(derived={"news": rows}))
    assert store.unjoined_news() == [a, b]
    joined = {"ticker": "AAPL", "article_id": "a", "published_at": T0, "sentiment": 0.3}
    store.write(StoreBatch(derived={"market_sentiment": [joined]}))
    assert store.unjoined_news() == [b]


def test_unjoined_news_without_tables(tmp_path: Path) -> None:
    s = SQLiteHotStore(tmp_path / "h.sqlite3", [], retention_ns=HOUR)
    try:
        assert s.unjoined_news() == []
    finally:
        s.close()


def test_expire_only_removes_flushed_rows(store: SQLiteHotStore) -> None:
    old = [trade(i, ts=T0 + i) for i in range(1, 5)]
    store.write(StoreBatch(trades=old, quotes=[quote(1, ts=T0)]))
    store.write(StoreBatch(dead_letters=[DeadLetter("r", "{}", "s", T0)]))
    store.write(StoreBatch(trades=[trade(9, ts=T0 + 50 * HOUR)]))
    now = T0 + 50 * HOUR
    assert store.expire(now) == 0  # nothing flushed yet: nothing may go
    store.set_position(cold_position_key("trades"), "2")  # rows 1-2 are in Parquet
    assert store.expire(now) == 2
    assert [t.sequence_number for t in store.trades_since(0)] == [3, 4, 9]
    store.set_position(cold_position_key("trades"), "5")
    store.set_position(cold_position_key("quotes"), "1")
    store.set_position(cold_position_key("dlq"), "1")
    assert store.expire(now) == 2 + 1 + 1  # row 9 is recent and stays
    assert [t.sequence_number for t in store.trades_since(0)] == [9]
    # The latest-per-ticker rows survive retention.
    assert store.latest_quote("AAPL") is not None


def test_derived_table_gains_a_column(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    SQLiteHotStore(path, [BARS], retention_ns=HOUR).close()
    wider = DerivedTable(
        name="bars_1m",
        columns={**BARS.columns, "vwap": "REAL"},
        key=BARS.key,
        mode="replace",
        time_column="start",
    )
    s = SQLiteHotStore(path, [wider], retention_ns=HOUR)
    try:
        row = {"ticker": "A", "start": T0, "close": 1.0, "volume": 1, "vwap": 2.0}
        s.write(StoreBatch(derived={"bars_1m": [row]}))
        assert s.latest_row("bars_1m", "A") == row
    finally:
        s.close()
