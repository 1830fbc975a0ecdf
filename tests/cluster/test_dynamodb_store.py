"""DynamoHotStore against the stack's DynamoDB: the SQLiteHotStore contract, on DynamoDB.

Every test uses its own table prefix, so reruns against a long-lived server never meet each
other's items. Event times are recent (the hot window is 48 h and reads drop expired rows).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from botocore.exceptions import ClientError

from records import Records
from tradepulse.config import Settings
from tradepulse.events import DeadLetter, Disconnect, News
from tradepulse.market_time import NS_PER_S, now_ns, trading_day
from tradepulse.process.anomaly import ANOMALIES_TABLE
from tradepulse.process.bars import BARS_TABLE
from tradepulse.process.correlator import NEWS_TABLE, SENTIMENT_TABLE
from tradepulse.process.feature_stage import FEATURES_LATEST_TABLE, FEATURES_TABLE
from tradepulse.store.base import DerivedTable, StoreBatch
from tradepulse.store.hot.dynamodb import SHARDS, DynamoHotStore, DynamoWriteError, trade_shard
from tradepulse.store.hot.sqlite import SQLiteHotStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

HOUR = 3600 * NS_PER_S
RETENTION = 48 * HOUR
# Two hours ago on a whole second: recent enough to be inside the hot window.
T0 = (now_ns() - 2 * HOUR) // NS_PER_S * NS_PER_S

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
BARS = DerivedTable(
    name="bars_1m",
    columns={"ticker": "TEXT", "start": "INTEGER", "close": "REAL", "volume": "INTEGER"},
    key=("ticker", "start"),
    mode="replace",
    time_column="start",
    cold=True,
)
TABLES = [ANOMALIES_TABLE, BARS, LATEST, NEWS_TABLE, SENTIMENT_TABLE]
STAGE_TABLES = [
    FEATURES_TABLE,
    FEATURES_LATEST_TABLE,
    BARS_TABLE,
    ANOMALIES_TABLE,
    NEWS_TABLE,
    SENTIMENT_TABLE,
]

Factory = Callable[..., DynamoHotStore]

RECORDS = Records(T0, price_offset=0.125)
trade, quote, news = RECORDS.trade, RECORDS.quote, RECORDS.news


def news_row(n: News) -> dict[str, Any]:
    return {c: getattr(n, c) for c in NEWS_TABLE.columns}


def anomaly(seq: int, ticker: str = "AAPL", ts: int | None = None, **kw: Any) -> dict[str, Any]:
    ts = T0 + seq * NS_PER_S if ts is None else ts
    row = {
        "ticker": ticker,
        "timestamp": ts,
        "sequence_number": seq,
        "anomaly_score": -0.5 - seq / 100,
        "threshold": -0.4,
        "kind": "isolation_forest",
        "model_version": 2,
        "features": {"price": 1.5, "volume": seq},
    }
    return row | kw


@pytest.fixture
def make_store(cluster_settings: Settings, unique: Callable[[str], str]) -> Iterator[Factory]:
    made: list[DynamoHotStore] = []

    def make(
        tables: Sequence[DerivedTable] = TABLES, *, prefix: str | None = None, **kw: Any
    ) -> DynamoHotStore:
        kw.setdefault("retention_ns", RETENTION)
        store = DynamoHotStore(cluster_settings, tables, table_prefix=prefix or unique("hot"), **kw)
        made.append(store)
        return store

    try:
        yield make
    finally:
        # Drop everything before closing: stores of one test may share a client.
        for s in made:
            s.drop_tables()
        for s in made:
            s.close()


@pytest.fixture
def store(make_store: Factory) -> DynamoHotStore:
    return make_store()


def test_tables_are_created_idempotently_with_ttl(
    make_store: Factory, unique: Callable[[str], str]
) -> None:
    prefix = unique("schema")
    first = make_store(prefix=prefix)
    first.write(StoreBatch(trades=[trade(1)], positions={"p": "1"}))
    again = make_store(prefix=prefix)  # finds every table, creates nothing, keeps the data
    assert again.position("p") == "1"
    assert again.latest_trade("AAPL") is not None
    client = again._client
    names = set(client.list_tables()["TableNames"])
    assert set(again.table_names()) <= names
    assert all(n.startswith(prefix + "-") for n in again.table_names())
    assert f"{prefix}-features_latest" not in names  # lives in the latest table
    for table in (again.trades_table, again.quotes_table, f"{prefix}-anomalies"):
        desc = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        if desc.get("TimeToLiveStatus") == "DISABLED":
            # Only a server without UpdateTimeToLive (dynalite) may leave it off; reads filter.
            with pytest.raises(ClientError, match="UnknownOperationException"):
                client.update_time_to_live(
                    TableName=table,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
                )
            continue
        assert desc.get("TimeToLiveStatus") == "ENABLED"
        assert desc.get("AttributeName") == "ttl"
    described = client.describe_table(TableName=again.trades_table)["Table"]
    assert described.get("TableStatus") == "ACTIVE"
    assert described.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"


def test_trade_items_are_sharded_with_time_ordered_keys_and_ttl(store: DynamoHotStore) -> None:
    t = trade(7)
    store.write(StoreBatch(trades=[t]))
    shard = trade_shard("AAPL", t.timestamp)
    assert trade_shard("AAPL", t.timestamp) == shard  # stable: crc32, not salted hash
    item = store._client.get_item(
        TableName=store.trades_table,
        Key={"pk": {"S": f"AAPL#{shard}"}, "sk": {"S": f"{t.timestamp:020d}#{7:020d}"}},
    )["Item"]
    assert item["ttl"] == {"N": str((t.timestamp + RETENTION) // NS_PER_S)}
    assert item["day"] == {"N": str(trading_day(t.timestamp))}
    assert item["price"] == {"N": repr(t.price)}
    assert {trade_shard("AAPL", T0 + i) for i in range(200)} == set(range(SHARDS))


def test_same_batch_twice_leaves_one_copy(store: DynamoHotStore) -> None:
    batch = StoreBatch(
        trades=[trade(1), trade(2), trade(1, ticker="MSFT")],
        quotes=[quote(1), quote(2)],
        derived={"anomalies": [anomaly(1)], "news": [news_row(news("a"))]},
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
    assert store.count("news") == 1
    latest = store.latest_trade("AAPL")
    assert latest is not None and latest["volume"] == 10 + 20  # the replay added nothing


def test_duplicates_within_one_batch_and_the_trading_day(store: DynamoHotStore) -> None:
    r = store.write(StoreBatch(trades=[trade(1), trade(1), trade(2)]))
    assert (r.trades_inserted, r.trades_duplicate) == (2, 1)
    # Sequence numbers reset each day: the same number on the next day is a new trade.
    r = store.write(StoreBatch(trades=[trade(1, ts=T0 + 24 * HOUR + NS_PER_S)]))
    assert (r.trades_inserted, r.trades_duplicate) == (1, 0)


def test_latest_is_newer_wins(store: DynamoHotStore) -> None:
    store.write(StoreBatch(trades=[trade(1), trade(3)], quotes=[quote(5)]))
    store.write(StoreBatch(trades=[trade(2), trade(3)], quotes=[quote(4)]))  # late + duplicate
    latest = store.latest_trade("AAPL")
    assert latest is not None
    assert latest["sequence_number"] == 3 and latest["price"] == 103.125
    assert latest["conditions"] == [12, 37]
    assert latest["volume"] == 10 + 20 + 30
    q = store.latest_quote("AAPL")
    assert q is not None and q["sequence_number"] == 5 and q["conditions"] == [1]
    # Equal timestamp, greater sequence number: newer.
    store.write(StoreBatch(trades=[trade(9, ts=T0 + 3 * NS_PER_S)]))
    assert store.latest_trade("AAPL")["sequence_number"] == 9  # type: ignore[index]
    # A new trading day starts a new session volume.
    store.write(StoreBatch(trades=[trade(1, ts=T0 + 24 * HOUR + 10 * NS_PER_S)]))
    latest = store.latest_trade("AAPL")
    assert latest is not None and latest["volume"] == 10
    assert latest["day"] == trading_day(T0 + 24 * HOUR + 10 * NS_PER_S)
    assert store.latest_trade("NOPE") is None and store.latest_quote("NOPE") is None


def test_mode_newer_keeps_the_greatest_order_by(store: DynamoHotStore) -> None:
    def row(ts: int, seq: int, vwap: float) -> dict[str, Any]:
        return {"ticker": "AAPL", "timestamp": ts, "sequence_number": seq, "vwap": vwap}

    def vwap() -> Any:
        got = store.latest_row("features_latest", "AAPL")
        return None if got is None else got["vwap"]

    store.write(StoreBatch(derived={"features_latest": [row(T0, 5, 1.0)]}))
    store.write(StoreBatch(derived={"features_latest": [row(T0 - 1, 9, 2.0)]}))  # older ts
    assert vwap() == 1.0
    store.write(StoreBatch(derived={"features_latest": [row(T0, 5, 3.0)]}))  # equal: no
    assert vwap() == 1.0
    store.write(StoreBatch(derived={"features_latest": [row(T0, 6, 4.0), row(T0, 7, 5.0)]}))
    assert vwap() == 5.0
    assert store.count("features_latest") == 1
    assert store.rows_since("features_latest", "AAPL", T0) == [row(T0, 7, 5.0)]
    assert store.rows_since("features_latest", "AAPL", T0 + 1) == []


def test_modes_ignore_and_replace(store: DynamoHotStore) -> None:
    store.write(StoreBatch(derived={"anomalies": [anomaly(1)]}))
    store.write(StoreBatch(derived={"anomalies": [anomaly(1, anomaly_score=-0.9)]}))
    got = store.latest_row("anomalies", "AAPL")
    assert got is not None and got["anomaly_score"] == -0.51  # the first copy stays
    assert got["features"] == '{"price":1.5,"volume":1}'  # nested values as JSON text
    bar = {"ticker": "AAPL", "start": T0, "close": 1.0, "volume": 10}
    store.write(StoreBatch(derived={"bars_1m": [bar, {**bar, "close": 2.0}]}))
    store.write(StoreBatch(derived={"bars_1m": [{**bar, "close": 3.0, "volume": 30}]}))
    assert store.count("bars_1m") == 1
    assert store.latest_row("bars_1m", "AAPL") == {**bar, "close": 3.0, "volume": 30}


def test_rows_since_merges_shards_newest_first(store: DynamoHotStore) -> None:
    trades = [trade(i, ts=T0 + i * 1000) for i in range(1, 41)]
    store.write(StoreBatch(trades=trades, derived={"anomalies": [anomaly(i) for i in range(5)]}))
    assert len({trade_shard("AAPL", t.timestamp) for t in trades}) > 1
    got = store.rows_since("trades", "AAPL", T0 + 10 * 1000, limit=25)
    assert [r["sequence_number"] for r in got] == list(range(40, 15, -1))
    assert got[0]["conditions"] == [12, 37] and got[0]["price"] == trades[-1].price
    assert [r["sequence_number"] for r in store.rows_since("trades", "AAPL", 0)] == list(
        range(40, 0, -1)
    )
    rows = store.rows_since("anomalies", "AAPL", T0 + 2 * NS_PER_S, limit=2)
    assert [r["sequence_number"] for r in rows] == [4, 3]
    assert store.latest_row("anomalies", "AAPL")["sequence_number"] == 4  # type: ignore[index]
    assert store.rows_since("unknown", "AAPL", 0) == []
    assert store.latest_row("unknown", "AAPL") is None


def test_rows_since_orders_ties_like_sqlite(store: DynamoHotStore) -> None:
    # Same time column value, different keys: the later write comes first (SQLite's rowid).
    a, b, c = news("a", published=T0), news("b", published=T0), news("c", published=T0 - 1)
    store.write(StoreBatch(derived={"news": [news_row(a)]}))
    store.write(StoreBatch(derived={"news": [news_row(b), news_row(c)]}))
    got = store.rows_since("news", "AAPL", 0, limit=2)
    assert [r["article_id"] for r in got] == ["b", "a"]
    assert store.latest_row("news", "AAPL")["article_id"] == "b"  # type: ignore[index]


def test_expired_rows_are_filtered_on_every_read(store: DynamoHotStore) -> None:
    old = now_ns() - RETENTION - HOUR
    store.write(
        StoreBatch(
            trades=[trade(1, ts=old), trade(2)],
            quotes=[quote(1, ts=old)],
            dead_letters=[DeadLetter("r", "{}", "s", old)],
            derived={
                "anomalies": [anomaly(1, ts=old), anomaly(2)],
                "news": [news_row(news("o", published=old))],
            },
        )
    )
    assert store.count("trades") == 1 and store.count("quotes") == 0
    assert [t.sequence_number for t in store.trades_since(0)] == [2]
    assert [r["sequence_number"] for r in store.rows_since("trades", "AAPL", 0)] == [2]
    assert [r["sequence_number"] for r in store.rows_since("anomalies", "AAPL", 0)] == [2]
    assert store.dead_letters() == []
    assert store.unjoined_news() == []
    # The latest-per-ticker items never expire, like SQLite's.
    assert store.latest_quote("AAPL") is not None
    # The items are still there: only DynamoDB's (lazy) TTL sweep would remove them.
    raw = store._client.scan(TableName=store.trades_table, Select="COUNT")
    assert raw["Count"] == 2


class _FlakyClient:
    """A DynamoDB client that returns the second half of a BatchWriteItem as unprocessed."""

    def __init__(self, inner: DynamoDBClient, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def batch_write_item(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failures <= 0:
            return dict(self.inner.batch_write_item(**kw))
        self.failures -= 1
        ((table, requests),) = kw["RequestItems"].items()
        half = max(1, len(requests) // 2)
        if len(requests) > 1:
            self.inner.batch_write_item(RequestItems={table: requests[:half]})
        unprocessed = requests[half:] if len(requests) > 1 else requests
        return {"UnprocessedItems": {table: unprocessed}}


def test_unprocessed_items_are_retried_with_backoff(
    make_store: Factory, unique: Callable[[str], str]
) -> None:
    prefix = unique("flaky")
    plain = make_store(prefix=prefix)
    flaky = _FlakyClient(plain._client, failures=3)
    store = make_store(
        prefix=prefix, client=cast("DynamoDBClient", flaky), workers=1, backoff_base_s=0.001
    )
    r = store.write(StoreBatch(trades=[trade(i) for i in range(1, 21)]))
    assert r.trades_inserted == 20
    assert flaky.calls >= 4  # three partial answers, then the rest
    assert store.count("trades") == 20
    # Never processed: a clear error after the bounded attempts, and a retry completes it.
    flaky.failures = 10**6
    broken = StoreBatch(trades=[trade(i) for i in range(21, 24)], positions={"src": "23"})
    with pytest.raises(DynamoWriteError, match="unprocessed after 3 attempts"):
        make_store(
            prefix=prefix,
            client=cast("DynamoDBClient", flaky),
            max_attempts=3,
            backoff_base_s=0.001,
        ).write(broken)
    assert store.position("src") is None  # positions come last: not written
    flaky.failures = 0
    # Two of the three landed before the error; writing the batch again completes it.
    assert store.write(broken).trades_inserted == 1
    assert store.count("trades") == 23 and store.position("src") == "23"


def test_positions_dead_letters_and_disconnects(store: DynamoHotStore) -> None:
    assert store.position("replay:f") is None
    store.write(StoreBatch(trades=[trade(1)], positions={"replay:f": "10", "other": "x"}))
    store.write(StoreBatch(positions={"replay:f": "12"}))
    assert store.position("replay:f") == "12" and store.position("other") == "x"
    store.set_position("cold:trades", "5")
    assert store.position("cold:trades") == "5"

    dl = DeadLetter("bad json", "{", "polygon-ws", T0, 1, None)
    dl2 = DeadLetter("negative price", '{"p":-1}', "polygon-ws", T0, 2, "AAPL")
    r = store.write(StoreBatch(dead_letters=[dl, dl]))
    store.write(StoreBatch(dead_letters=[dl2]))
    assert r.dead_letters == 2
    assert store.count("dlq") == 3  # never deduplicated
    assert store.dead_letters(2) == [dl2, dl]

    d = Disconnect("polygon-ws", T0, T0 + 5 * NS_PER_S, "timeout")
    store.write(StoreBatch(disconnects=[d]))
    store.write(StoreBatch(disconnects=[d]))
    assert store.disconnects() == [d]
    store.write(StoreBatch(disconnects=[Disconnect("polygon-ws", T0, T0 + NS_PER_S, "again")]))
    assert store.disconnects() == [Disconnect("polygon-ws", T0, T0 + 5 * NS_PER_S, "again")]
    assert store.disconnects(T0 + 6 * NS_PER_S) == []


def test_trades_since_in_event_order(store: DynamoHotStore) -> None:
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
    assert store.known_tickers() == ["AAPL", "MSFT"]


def test_unjoined_news(store: DynamoHotStore) -> None:
    a, b = news("a"), news("b", published=T0 + 1)
    store.write(StoreBatch(derived={"news": [news_row(b), news_row(a)]}))
    assert store.unjoined_news() == [a, b]
    joined = {"ticker": "AAPL", "article_id": "a", "published_at": T0, "sentiment": 0.3}
    store.write(StoreBatch(derived={"market_sentiment": [joined]}))
    assert store.unjoined_news() == [b]


def test_numbers_round_trip(store: DynamoHotStore) -> None:
    import numpy as np

    row = anomaly(
        3,
        timestamp=np.int64(T0),
        sequence_number=np.int32(3),
        anomaly_score=np.float32(-0.5),
        threshold=float("nan"),  # SQLite stores NaN as NULL; so do we
        model_version=True,
        features={"price": np.float64(1.5)},
    )
    bar = {"ticker": "AAPL", "start": T0, "close": float("inf"), "volume": 7.0}
    store.write(StoreBatch(derived={"anomalies": [row], "bars_1m": [bar]}))
    got = store.latest_row("anomalies", "AAPL")
    assert got is not None
    assert got["timestamp"] == T0 and isinstance(got["timestamp"], int)
    assert got["anomaly_score"] == -0.5 and isinstance(got["anomaly_score"], float)
    assert got["threshold"] is None and got["model_version"] == 1
    assert store.latest_row("bars_1m", "AAPL") == {**bar, "volume": 7}


def _parity_batches() -> list[StoreBatch]:
    feats = [
        {
            "ticker": tk,
            "timestamp": T0 + i * NS_PER_S,
            "sequence_number": i,
            "price": 100.0 + i / 8,
            "size": i,
            "vwap": 100.0 + i / 16,
            "volume_zscore": float("nan") if i < 3 else i / 3,
            "warming_up": i < 3,
        }
        for tk in ("AAPL", "MSFT")
        for i in range(1, 9)
    ]
    bars = [
        {"ticker": "AAPL", "minute_start": T0, "open": 1.0, "close": c, "volume": 5, "revision": k}
        for k, c in enumerate((1.0, 2.0))
    ]
    first = StoreBatch(
        trades=[trade(i, tk) for tk in ("AAPL", "MSFT") for i in (3, 1, 2, 3)],
        quotes=[quote(i, tk) for tk in ("AAPL", "MSFT") for i in (2, 1)],
        derived={
            "features": feats[:8],
            "features_latest": [feats[7]],
            "bars": bars,
            "anomalies": [anomaly(2), anomaly(2, anomaly_score=-9.0), anomaly(1, "MSFT")],
            "news": [news_row(news("a")), news_row(news("b", published=T0 + 5))],
            "scratch": [{"x": 1}],
        },
        dead_letters=[DeadLetter("r", "{}", "s", T0, 1, "AAPL")],
        disconnects=[Disconnect("ws", T0, T0 + 2, "eof")],
        positions={"replay:f": "8"},
    )
    second = StoreBatch(
        trades=[trade(i, tk) for tk in ("AAPL", "MSFT") for i in (4, 2)],
        quotes=[quote(3, "AAPL")],
        derived={
            "features": feats[8:],
            "features_latest": [feats[15], feats[14]],
            "bars": [{**bars[1], "close": 3.0, "revision": 2}],
            "anomalies": [anomaly(4)],
            "market_sentiment": [
                {"ticker": "AAPL", "article_id": "a", "published_at": T0, "sentiment": 0.25}
            ],
        },
        positions={"replay:f": "12"},
    )
    return [first, second, first]  # the replayed first batch must change nothing


def test_parity_with_sqlite(make_store: Factory, tmp_path: Path) -> None:
    dyn = make_store(STAGE_TABLES)
    lite = SQLiteHotStore(tmp_path / "hot.sqlite3", STAGE_TABLES, retention_ns=RETENTION)
    try:
        for batch in _parity_batches():
            a, b = lite.write(batch), dyn.write(batch)
            assert (a.trades_inserted, a.trades_duplicate, a.quotes_inserted, a.dead_letters) == (
                b.trades_inserted,
                b.trades_duplicate,
                b.quotes_inserted,
                b.dead_letters,
            )
        assert dyn.known_tickers() == lite.known_tickers() == ["AAPL", "MSFT"]
        for tk in ("AAPL", "MSFT", "NOPE"):
            assert dyn.latest_trade(tk) == lite.latest_trade(tk)
            assert dyn.latest_quote(tk) == lite.latest_quote(tk)
            for t in STAGE_TABLES:
                assert dyn.latest_row(t.name, tk) == lite.latest_row(t.name, tk), t.name
                for since, limit in ((0, 1000), (T0 + 3 * NS_PER_S, 2), (T0 + 100 * NS_PER_S, 5)):
                    assert dyn.rows_since(t.name, tk, since, limit) == lite.rows_since(
                        t.name, tk, since, limit
                    ), (t.name, since, limit)
        assert dyn.trades_since(0) == lite.trades_since(0)
        assert dyn.unjoined_news() == lite.unjoined_news()
        assert dyn.disconnects() == lite.disconnects()
        assert dyn.dead_letters() == lite.dead_letters()
        assert dyn.position("replay:f") == lite.position("replay:f") == "8"  # replayed last
        for table in ("trades", "quotes", "dlq", *(t.name for t in STAGE_TABLES)):
            assert dyn.count(table) == lite.count(table), table
    finally:
        lite.close()


def test_write_throughput_5000_trades(store: DynamoHotStore) -> None:
    tickers = ("AAPL", "MSFT", "NVDA", "AMZN", "TSLA")
    trades = [trade(i, tickers[i % 5], ts=T0 + i * 1000) for i in range(1, 5001)]
    r = store.write(StoreBatch(trades=trades))
    again = store.write(StoreBatch(trades=trades))
    assert (r.trades_inserted, again.trades_duplicate) == (5000, 5000)
    print(
        f"\n[dynamodb] 5000-trade batch: {5000 / r.latency_s:,.0f} trades/s new "
        f"({r.latency_s:.2f} s), {5000 / again.latency_s:,.0f} trades/s replayed "
        f"({again.latency_s:.2f} s)",
        file=sys.stderr,
    )
    assert store.count("trades") == 5000
    assert sum(store.latest_trade(t)["volume"] for t in tickers) == sum(  # type: ignore[index]
        t.size for t in trades
    )


def test_reads_over_many_tickers_with_a_small_pool(make_store: Factory) -> None:
    # More tickers than workers: the shard queries must not wait on each other in the pool.
    store = make_store(workers=2)
    tickers = [f"T{i}" for i in range(5)]
    store.write(StoreBatch(trades=[trade(i, tk) for tk in tickers for i in range(1, 4)]))
    got = store.trades_since(0)
    assert len(got) == 15
    assert [(t.timestamp, t.sequence_number) for t in got] == sorted(
        (t.timestamp, t.sequence_number) for t in got
    )
