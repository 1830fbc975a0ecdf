"""Helpers for the tests of the cluster processes: one namespace per pipeline under test, the
recorded input, processor children, and reading back what a pipeline stored and produced.

A namespace (`cluster_namespace`) gives a pipeline its own topics, consumer groups,
transactional ids, DynamoDB tables, S3 prefix and SQS queue, so several pipelines (and other
engineers' tests) share the stack without meeting. `Namespace.drop()` deletes all of it.
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
from botocore.exceptions import ClientError
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient
from pyarrow.fs import FileType

from tradepulse.cluster.lag import GroupLag
from tradepulse.cluster.names import table_prefix
from tradepulse.cluster.processor import make_processor_factory
from tradepulse.cluster.producer import publish_decoded
from tradepulse.cluster.supervise import spawn, terminate
from tradepulse.config import Settings, load_settings
from tradepulse.log import kafka
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.sim import SimConfig
from tradepulse.sim.market import MarketGenerator
from tradepulse.sources.finnhub import parse_company_news
from tradepulse.store.hot.dynamodb import DynamoHotStore
from tradepulse.validate import decode_frame
from tradepulse.validate.dlq.sqs import queue_name

TICKERS = ("AAPL", "MSFT", "AMZN", "TSLA", "NVDA")

# Windows short enough that a few minutes of input carries anomalies and news joins: the
# z-score needs 5 baseline windows, the first model `retrain_every` scorable trades.
FAST_WINDOWS: dict[str, Any] = {
    "volume_window_s": 5.0,
    "anomaly_retrain_every": 50,
    "anomaly_train_window": 100,
    "anomaly_threshold": "cutoff",  # each model's contamination cut-off: flags some in any input
    "correlation_window_s": 10.0,
    "news_poll_s": 2.0,
}


@dataclass
class Namespace:
    settings: Settings
    env: dict[str, str]
    data_dir: Path

    @classmethod
    def create(cls, name: str, data_dir: Path, **overrides: Any) -> Namespace:
        values = {"cluster_namespace": name, "data_dir": data_dir, **overrides}
        settings = load_settings(backend="cluster", tickers=",".join(TICKERS), **values)
        env = {f"TRADEPULSE_{k.upper()}": _env_value(v) for k, v in values.items()}
        env |= {"TRADEPULSE_BACKEND": "cluster", "TRADEPULSE_TICKERS": ",".join(TICKERS)}
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings, env, data_dir)

    @property
    def topics(self) -> kafka.Topics:
        return kafka.Topics.of(self.settings)

    def store(self) -> DynamoHotStore:
        tables = make_processor_factory(self.settings)().tables
        return DynamoHotStore(self.settings, tables, table_prefix=table_prefix(self.settings))

    def lag(self) -> int | None:
        """Input messages the processor group has not committed (None: Kafka did not say)."""
        measure = GroupLag(self.settings)
        try:
            got = measure.try_measure()
            return None if got is None else got.total
        finally:
            measure.close()

    def committed(self, topic: str) -> int:
        """Messages of `topic` the processor group has committed (0 when Kafka did not say)."""
        measure = GroupLag(self.settings, topics=(topic,))
        try:
            got = measure.try_measure()
            return 0 if got is None else got.committed
        finally:
            measure.close()

    def drop(self) -> None:
        """Delete the namespace's topics, groups, tables and cold objects."""
        admin = AdminClient(kafka.client_config(self.settings))
        existing = set(admin.list_topics(timeout=30).topics)
        doomed = [t for t in self.topics.all if t in existing]
        if doomed:
            for fut in admin.delete_topics(doomed, operation_timeout=30).values():
                fut.result(30)
        groups = [
            g.group_id
            for g in admin.list_consumer_groups().result(30).valid
            if g.group_id.startswith(f"{self.settings.cluster_namespace}.")
        ]
        if groups:
            for fut in admin.delete_consumer_groups(groups).values():
                try:
                    fut.result(30)
                except Exception:
                    continue
        hot = self.store()
        try:
            hot.drop_tables()
        finally:
            hot.close()
        from tradepulse.store.cold.s3 import s3_filesystem

        s3 = s3_filesystem(self.settings)
        root = f"{self.settings.s3_bucket}/{self.settings.cluster_namespace}"
        if s3.get_file_info(root).type != FileType.NotFound:
            s3.delete_dir(root)
        sqs = boto3.client(
            "sqs",
            endpoint_url=self.settings.sqs_endpoint,
            region_name=self.settings.aws_region,
            aws_access_key_id="test",  # the local server accepts any signature
            aws_secret_access_key="test",
        )
        try:
            url = sqs.get_queue_url(QueueName=queue_name(self.settings))["QueueUrl"]
            sqs.delete_queue(QueueUrl=url)
        except ClientError:
            pass  # never created: no dead letters in this namespace
        finally:
            sqs.close()


def _env_value(value: Any) -> str:
    return str(value.resolve()) if isinstance(value, Path) else str(value)


# -- the input -------------------------------------------------------------------------------


@dataclass
class RecordedInput:
    trades: int = 0
    quotes: int = 0
    articles: int = 0
    messages: dict[str, int] = field(default_factory=dict)


def record_input(
    ns: Namespace, *, seconds: float, rate: float, seed: int = 11, poll_s: float = 10.0
) -> RecordedInput:
    """Generate `seconds` of market up to now with the simulator's generator and publish it as
    the producer and the news poller do: each generator tick is one WebSocket frame, decoded
    and validated by `decode_frame` and published by `publish_decoded`; articles are polled
    every `poll_s` of event time and published as `parse_company_news` parses them."""
    cfg = SimConfig(
        tickers=list(TICKERS),
        rate=rate,
        seed=seed,
        anomaly_rate=1.5,
        news_rate=3.0,
        news_spike_prob=0.6,
    )
    end = now_ns()
    start = end - int(seconds * NS_PER_S)
    gen = MarketGenerator(cfg, start)
    kafka.ensure_topics(ns.settings)
    producer = kafka.EventProducer(ns.settings)
    topics = ns.topics
    out = RecordedInput()
    seen: set[int] = set()
    step = 50 * 1_000_000
    next_poll = start + int(poll_s * NS_PER_S)
    t = start
    while t < end:
        t = min(end, t + step)
        batch = gen.advance(t)
        if batch.events:
            decoded = decode_frame(orjson.dumps(batch.events), t, now_ns=end)
            assert not decoded.dead_letters, decoded.dead_letters[:1]
            n_trades, n_quotes = publish_decoded(producer, topics, decoded)
            out.trades += n_trades
            out.quotes += n_quotes
        if t >= next_poll or t == end:
            next_poll += int(poll_s * NS_PER_S)
            for ticker in TICKERS:
                fresh = [a for a in gen.published(ticker, t) if a.id not in seen]
                if not fresh:
                    continue
                seen.update(a.id for a in fresh)
                body = orjson.dumps([a.to_finnhub() for a in fresh])
                news = parse_company_news(body, ticker, t).news
                producer.send(topics.news, news)
                out.articles += len(news)
    assert producer.flush(60) == 0 and producer.stats.failed == 0
    return out


LogMessage = tuple[bytes | None, bytes | None, int]  # key, value, timestamp (ms)


def read_log(settings: Settings, topic: str) -> dict[int, list[LogMessage]]:
    """Every committed message of `topic` as (key, value, timestamp ms) per partition, in order."""
    consumer = Consumer(
        {
            **kafka.client_config(settings),
            "group.id": f"{settings.cluster_namespace}.test-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        parts = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        consumer.assign([TP(topic, p, OFFSET_BEGINNING) for p in parts])
        out: dict[int, list[LogMessage]] = {p: [] for p in parts}
        at_end: set[int] = set()
        deadline = time.monotonic() + 120
        while len(at_end) < len(parts) and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                p = m.partition()
                assert p is not None
                err = m.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    at_end.add(p)
                    continue
                at_end.discard(p)
                out[p].append((m.key(), m.value(), m.timestamp()[1]))
        assert len(at_end) == len(parts), f"{topic}: did not reach the end"
        return out
    finally:
        consumer.close()


def copy_input(
    src: Namespace,
    dst: Namespace,
    *,
    seconds: float,
    hold: tuple[float, threading.Event] | None = None,
) -> threading.Thread:
    """Copy `src`'s input topics into `dst`'s, partition for partition, spread evenly over
    `seconds` (a live-looking feed, each partition in its own order); returns the started
    thread. `hold=(fraction, event)` pauses the feed once `fraction` of it is sent until the
    event is set, so a test can act while input is still to come whatever the machine's load."""
    streams: list[tuple[str, int, list[LogMessage]]] = []
    for s_topic, d_topic in zip(src.topics.inputs, dst.topics.inputs, strict=True):
        for p, msgs in read_log(src.settings, s_topic).items():
            streams.append((d_topic, p, msgs))
    kafka.ensure_topics(dst.settings)
    producer = Producer(kafka.producer_config(dst.settings))
    steps = max(1, int(seconds / 0.25))

    def run() -> None:
        sent = [0] * len(streams)
        for i in range(1, steps + 1):
            if hold is not None and i > hold[0] * steps:
                hold[1].wait(600)
            for j, (topic, p, msgs) in enumerate(streams):
                upto = math.ceil(len(msgs) * i / steps)
                for key, value, ts in msgs[sent[j] : upto]:
                    _produce(producer, topic, p, key, value, ts)
                sent[j] = upto
            producer.poll(0)
            time.sleep(seconds / steps)
        assert producer.flush(60) == 0

    thread = threading.Thread(target=run, name="copy-input", daemon=True)
    thread.start()
    return thread


def _produce(
    producer: Producer, topic: str, p: int, key: bytes | None, value: bytes | None, ts: int
) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, partition=p, timestamp=ts)
            return
        except BufferError:
            producer.poll(0.1)


# -- processors ------------------------------------------------------------------------------


class Processors:
    """`tradepulse processor` children of one namespace, logging to files under its data dir."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, instance_id: str) -> None:
        log = self.ns.data_dir / f"processor-{instance_id}.log"
        self.logs[instance_id] = log
        self.procs[instance_id] = spawn(
            ["processor", "--instance-id", instance_id, "--no-cold"], self.ns.env, log
        )

    def kill(self, instance_id: str) -> None:
        proc = self.procs[instance_id]
        proc.kill()  # SIGKILL: no shutdown hook, rebalance callback or commit runs
        proc.wait(30)

    def stop_all(self) -> dict[str, int]:
        return {name: terminate(p, 60.0) for name, p in self.procs.items()}

    def log_text(self) -> str:
        return "\n".join(
            f"--- {name}\n{path.read_text(errors='replace')[-4000:]}"
            for name, path in self.logs.items()
            if path.exists()
        )


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(step_s)


def wait_drained(ns: Namespace, copier: threading.Thread | None, timeout_s: float) -> None:
    """Until the input is complete and the processor group has committed all of it."""
    if copier is not None:
        copier.join(timeout_s)
        assert not copier.is_alive(), "the input copy did not finish"
    wait_for(lambda: ns.lag() == 0, timeout_s, "the processors to commit every input message")


# -- what a pipeline stored and produced -------------------------------------------------------

DERIVED = ("features", "anomalies", "market_sentiment", "news", "features_latest")


@dataclass
class Stored:
    trades: Counter[tuple[str, int, int]]
    quotes: int
    rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]]  # table → key → row


def read_store(ns: Namespace) -> Stored:
    hot = ns.store()
    try:
        trades = Counter((t.ticker, t.timestamp, t.sequence_number) for t in hot.trades_since(0))
        rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        for table in DERIVED:
            spec = hot.tables[table]
            keyed: dict[tuple[Any, ...], dict[str, Any]] = {}
            for ticker in TICKERS:
                for r in hot.rows_since(table, ticker, 0, limit=1_000_000):
                    keyed[tuple(r[c] for c in spec.key)] = r
            rows[table] = keyed
        return Stored(trades, hot.count("quotes"), rows)
    finally:
        hot.close()


def output_keys(ns: Namespace) -> dict[str, Counter[tuple[Any, ...]]]:
    """How often each row key appears in each committed output topic (read_committed)."""
    keys = {
        "features": ("ticker", "timestamp", "sequence_number"),
        "anomalies": ("ticker", "timestamp", "sequence_number"),
        "market_sentiment": ("ticker", "article_id"),
    }
    out: dict[str, Counter[tuple[Any, ...]]] = {}
    for table, cols in keys.items():
        topic = ns.topics.outputs[table]
        seen: Counter[tuple[Any, ...]] = Counter()
        for msgs in read_log(ns.settings, topic).values():
            for _key, value, _ts in msgs:
                for row in kafka.decode(topic, value):
                    seen[tuple(row[c] for c in cols)] += 1
        out[table] = seen
    return out


def iter_differences(
    expected: dict[tuple[Any, ...], dict[str, Any]],
    got: dict[tuple[Any, ...], dict[str, Any]],
    ignore: tuple[str, ...] = (),
) -> Iterator[str]:
    for key in sorted(expected.keys() & got.keys()):
        a = {k: v for k, v in expected[key].items() if k not in ignore}
        b = {k: v for k, v in got[key].items() if k not in ignore}
        if a != b:
            diff = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            yield f"{key}: {diff}"
