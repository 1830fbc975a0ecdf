"""The S3 cold sink against the real stack: Kafka (read_committed) → Parquet on S3 → DuckDB.

Each test uses its own topics, consumer group and S3 prefix, so reruns and the other cluster
tests never see each other's data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tradepulse.config import Settings
from tradepulse.events import Quote, Trade
from tradepulse.log import kafka
from tradepulse.market_time import NS_PER_S
from tradepulse.process.stages import all_tables
from tradepulse.store.cold.s3 import S3ColdSink, cold_root, s3_filesystem
from tradepulse.store.query import QueryEngine

DAY1 = 1_736_866_800 * NS_PER_S  # 2025-01-14 10:00 ET
DAY2 = DAY1 + 24 * 3600 * NS_PER_S
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
KEY_RE = re.compile(
    r"^(trades|quotes)/date=\d{4}-\d\d-\d\d/ticker=[A-Z]+/kafka-(\d+)-(\d+)-(\d+)\.parquet$"
)


# A sink in a child process that takes N messages, writes its objects and is killed (os._exit,
# so no shutdown hook, rebalance callback or commit runs) between the write and the commit.
CRASHING_SINK = """
import os, sys, json
from tradepulse.config import load_settings
from tradepulse.store.cold.s3 import S3ColdSink

topics, group, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sink = S3ColdSink(load_settings(backend="cluster"), topics=topics, group_id=group,
                  consumer_extra=json.loads(sys.argv[4]))
while sink.stats.messages < n:
    sink.run_once(0.5)

class KilledBeforeCommit:
    def __init__(self, real):
        self.real = real
    def __getattr__(self, name):
        return getattr(self.real, name)
    def commit(self, *args, **kwargs):
        os._exit(9)

sink.consumer = KilledBeforeCommit(sink.consumer)
sink.flush()
"""


@pytest.fixture
def env(
    cluster_settings: Settings, unique: Callable[[str], str]
) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Settings with a private S3 prefix, and private trades/quotes topics (3 partitions)."""
    admin = AdminClient(kafka.client_config(cluster_settings))
    topics = {"trades": unique("trades"), "quotes": unique("quotes")}
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=3, replication_factor=1) for t in topics.values()]
    )
    for fut in futures.values():
        fut.result(30)
    settings = cluster_settings.model_copy(
        update={"s3_prefix": unique("cold"), "cold_flush_s": 3600.0, "cold_flush_rows": 10**6}
    )
    yield settings, topics
    for fut in admin.delete_topics(list(topics.values()), operation_timeout=30).values():
        fut.result(30)
    fs = s3_filesystem(settings)
    fs.delete_dir_contents(cold_root(settings), missing_dir_ok=True)


def trades(tickers: list[str], day_ns: int, seqs: range) -> list[Trade]:
    return [
        Trade(t, 100.0 + s / 100, s % 7 + 1, day_ns + s * 1_000_000, day_ns + s, s, 4, 1, (12, 37))
        for t in tickers
        for s in seqs
    ]


def quotes(tickers: list[str], day_ns: int, seqs: range) -> list[Quote]:
    return [
        Quote(t, 99.5, 3, 100.5, 4, day_ns + s * 1_000_000, day_ns + s, s, 11, 12, 1, (1,))
        for t in tickers
        for s in seqs
    ]


def publish(settings: Settings, topic: str, records: list[Any], *, commit: bool = True) -> int:
    """One Kafka transaction with one message per ticker; return the messages it held."""
    producer = Producer(
        kafka.producer_config(settings, **{"transactional.id": f"test-{topic}-{commit}"})
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    groups = kafka.group_by_ticker(records)
    for ticker, recs in groups.items():
        producer.produce(topic, key=ticker.encode(), value=kafka.encode(recs))
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)
    return len(groups)


def make_sink(settings: Settings, topics: dict[str, str], group: str, **kw: Any) -> S3ColdSink:
    return S3ColdSink(settings, topics=topics, group_id=group, consumer_extra=FAST_GROUP, **kw)


def consume(sink: S3ColdSink, messages: int, timeout_s: float = 60.0) -> None:
    """Run the sink until it has taken `messages` messages, then a little longer (nothing more
    may arrive: aborted transactions must stay invisible)."""
    deadline = time.monotonic() + timeout_s
    while sink.stats.messages < messages and time.monotonic() < deadline:
        sink.run_once(timeout_s=0.5)
    assert sink.stats.messages == messages
    for _ in range(2):
        sink.run_once(timeout_s=0.3)
    assert sink.stats.messages == messages


def objects(settings: Settings) -> dict[str, int]:
    """Data object keys (relative to the cold root) → size."""
    fs, root = s3_filesystem(settings), cold_root(settings)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {
        i.path.removeprefix(root + "/"): i.size
        for i in infos
        if i.is_file and i.path.endswith(".parquet")
    }


def stored(settings: Settings, table: str) -> list[dict[str, Any]]:
    """Every row in the table's objects, read straight from S3 (no deduplication)."""
    fs, root = s3_filesystem(settings), cold_root(settings)
    dataset = ds.dataset(f"{root}/{table}", filesystem=fs, format="parquet", partitioning="hive")
    return list(dataset.to_table().to_pylist())


def identities(rows: list[dict[str, Any]]) -> Counter[tuple[str, int, int]]:
    return Counter((r["ticker"], r["day"], r["sequence_number"]) for r in rows)


def test_committed_trades_and_quotes_land_once_in_the_hive_layout(
    env: tuple[Settings, dict[str, str]], unique: Callable[[str], str]
) -> None:
    settings, topics = env
    tickers = ["AAPL", "MSFT", "NVDA"]
    sent = trades(tickers, DAY1, range(1, 41)) + trades(tickers, DAY2, range(1, 21))
    sent_quotes = quotes(tickers[:2], DAY1, range(1, 11))
    messages = publish(settings, topics["trades"], sent[:60])
    messages += publish(settings, topics["trades"], sent[60:])
    messages += publish(settings, topics["quotes"], sent_quotes)
    # An aborted transaction's trades must never reach the cold store.
    publish(settings, topics["trades"], trades(["AAPL"], DAY1, range(500, 520)), commit=False)

    group = unique("sink")
    sink = make_sink(settings, topics, group)
    consume(sink, messages)
    sink.close()

    keys = objects(settings)
    assert keys and all(KEY_RE.match(k) for k in keys), sorted(keys)
    dirs = {k.rsplit("/", 1)[0] for k in keys}
    assert dirs == {
        *(f"trades/date=2025-01-14/ticker={t}" for t in tickers),
        *(f"trades/date=2025-01-15/ticker={t}" for t in tickers),
        "quotes/date=2025-01-14/ticker=AAPL",
        "quotes/date=2025-01-14/ticker=MSFT",
    }
    fs, root = s3_filesystem(settings), cold_root(settings)
    some = f"{root}/{next(iter(sorted(keys)))}"
    assert "ticker" not in pq.read_schema(some, filesystem=fs).names  # lives in the path
    assert pq.read_metadata(some, filesystem=fs).row_group(0).column(0).compression == "SNAPPY"

    rows = stored(settings, "trades")
    assert len(rows) == len(sent)
    assert set(identities(rows).values()) == {1}
    assert {(r["ticker"], r["sequence_number"], r["timestamp"]) for r in rows} == {
        (t.ticker, t.sequence_number, t.timestamp) for t in sent
    }
    assert {r["conditions"] for r in rows} == {"[12,37]"}
    assert len(stored(settings, "quotes")) == len(sent_quotes)

    # The offsets were committed: the same group starts after everything.
    again = make_sink(settings, topics, group)
    for _ in range(8):
        again.run_once(timeout_s=0.5)
    again.close()
    assert again.stats.messages == 0

    engine = QueryEngine.for_settings(settings, all_tables(settings))
    assert engine.sql("select count(*) from trades").rows == [(len(sent),)]
    by_day = engine.sql("select date, count(*) from trades group by 1 order by 1").rows
    assert [(str(d), n) for d, n in by_day] == [("2025-01-14", 120), ("2025-01-15", 60)]
    first = engine.sql(
        "select ticker, price, size, timestamp, conditions, day from trades "
        "where ticker = 'MSFT' and date = '2025-01-15' order by sequence_number limit 1"
    ).to_dicts()
    t = next(x for x in sent if x.ticker == "MSFT" and x.timestamp >= DAY2)
    assert first == [
        {
            "ticker": "MSFT",
            "price": t.price,
            "size": t.size,
            "timestamp": t.timestamp,
            "conditions": "[12,37]",
            "day": 20250115,
        }
    ]
    assert engine.sql("select count(*) from quotes").rows == [(len(sent_quotes),)]
    assert engine.sql("select count(*) from dlq").rows == [(0,)]  # no such objects: empty

    # The same through the command line.
    from typer.testing import CliRunner

    from tradepulse.cli import app

    env = {
        "TRADEPULSE_S3_PREFIX": settings.s3_prefix,
        "TRADEPULSE_CLUSTER_NAMESPACE": settings.cluster_namespace,
        "TRADEPULSE_S3_BUCKET": settings.s3_bucket,
    }
    argv = ["query", "--backend", "cluster", "--json", "select count(*) as n from trades"]
    res = CliRunner().invoke(app, argv, env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == [{"n": len(sent)}]


def crash_after_write(settings: Settings, topics: dict[str, str], group: str, n: int) -> set[str]:
    """A sink process that takes `n` messages, writes its objects and dies before committing;
    return the objects it left behind."""
    env = {**os.environ, "TRADEPULSE_S3_PREFIX": settings.s3_prefix}
    argv = [json.dumps(topics), group, str(n), json.dumps(FAST_GROUP)]
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_SINK, *argv], env=env, timeout=120, capture_output=True
    )
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    written = set(objects(settings))
    assert written
    return written


def test_crash_between_write_and_commit_replays_into_the_same_objects(
    env: tuple[Settings, dict[str, str]], unique: Callable[[str], str]
) -> None:
    settings, topics = env
    tickers = ["AAPL", "MSFT", "TSLA", "AMZN"]
    first = trades(tickers, DAY1, range(1, 31))
    messages = sum(publish(settings, topics["trades"], first[i::3]) for i in range(3))
    group = unique("sink")
    written = crash_after_write(settings, topics, group, messages)
    before = objects(settings)

    # More data arrives before the restart: the replay must still stop where the crashed
    # flush stopped, so it rewrites exactly the same objects.
    later = trades(tickers, DAY1, range(31, 46))
    more = publish(settings, topics["trades"], later)
    sink = make_sink(settings, topics, group)
    consume(sink, messages + more)
    # Before shutdown: one flush, of exactly the crashed range, onto the same object names.
    assert (sink.stats.flushes, sink.stats.rows) == (1, len(first))
    assert set(objects(settings)) == written
    assert objects(settings) == before
    sink.close()

    rows = stored(settings, "trades")
    assert len(rows) == len(first) + len(later)
    assert set(identities(rows).values()) == {1}
    engine = QueryEngine.for_settings(settings, all_tables(settings))
    assert engine.sql("select count(*) from trades").rows == [(len(first) + len(later),)]


def test_restart_that_flushes_elsewhere_deletes_the_uncommitted_objects(
    env: tuple[Settings, dict[str, str]], unique: Callable[[str], str]
) -> None:
    settings, topics = env
    tickers = ["AAPL", "MSFT", "TSLA"]
    sent = trades(tickers, DAY1, range(1, 25))
    messages = sum(publish(settings, topics["trades"], sent[i::4]) for i in range(4))
    group = unique("sink")
    written = crash_after_write(settings, topics, group, messages)

    # Restarted with a one-row flush threshold, one message per step: every flush ends
    # before the crashed one did, so none of its objects is overwritten; they must go.
    small = settings.model_copy(update={"cold_flush_rows": 1})
    sink = make_sink(small, topics, group, max_messages=1)
    consume(sink, messages)
    sink.close()
    assert sink.stats.flushes >= messages
    assert not written & set(objects(settings))
    rows = stored(settings, "trades")
    assert len(rows) == len(sent)
    assert set(identities(rows).values()) == {1}


def test_the_flush_interval_writes_without_shutdown(
    env: tuple[Settings, dict[str, str]], unique: Callable[[str], str]
) -> None:
    settings, topics = env
    timed = settings.model_copy(update={"cold_flush_s": 0.5})
    messages = publish(settings, topics["trades"], trades(["AAPL", "MSFT"], DAY1, range(1, 6)))
    sink = make_sink(timed, topics, unique("sink"))
    consume(sink, messages)
    deadline = time.monotonic() + 10
    while sink.stats.rows < 10 and time.monotonic() < deadline:
        sink.run_once(timeout_s=0.2)
    assert sink.stats.rows == 10  # flushed by the interval, before close()
    assert len(stored(settings, "trades")) == 10
    sink.close()
