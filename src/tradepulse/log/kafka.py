"""The cluster log: Apache Kafka through confluent-kafka, thin wrappers and nothing clever.

Topics (all keyed by ticker, so one ticker's events stay ordered in one partition):
  market.trades  (settings.kafka_trades_partitions, default 6)   validated trades
  market.quotes  (same count)                                     validated quotes
  market.news    (same count, so news co-partitions with trades)  polled articles
  market.features / market.bars / market.anomalies / market.sentiment   processor outputs

Every name is inside `settings.cluster_namespace` (`Topics.of`); the constants below are the
names of the empty namespace. Every producer uses librdkafka's default partitioner (CRC32 of
the key), so a ticker lands in the same partition number of every topic of equal size.

Values are msgpack arrays of records (one message per ticker per producer batch): cheap to
encode and decode, and far fewer messages than one per event. The message timestamp is the
newest event time in it, so `offsets_for_times` can find where a time window starts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tradepulse.config import Settings
from tradepulse.events import News, Quote, Trade

TRADES = "market.trades"
QUOTES = "market.quotes"
NEWS = "market.news"
# Derived table → its output topic (the sentiment table is "market_sentiment").
OUTPUT_TABLES = {
    "features": "market.features",
    "bars": "market.bars",
    "anomalies": "market.anomalies",
    "market_sentiment": "market.sentiment",
}
OUTPUTS = tuple(OUTPUT_TABLES.values())
INPUTS = (TRADES, QUOTES, NEWS)

_ENC = msgspec.msgpack.Encoder()
_DEC_TRADES = msgspec.msgpack.Decoder(list[Trade])
_DEC_QUOTES = msgspec.msgpack.Decoder(list[Quote])
_DEC_NEWS = msgspec.msgpack.Decoder(list[News])
_DEC_ROWS = msgspec.msgpack.Decoder(list[dict[str, Any]])


def encode(records: Sequence[Any]) -> bytes:
    return _ENC.encode(records)


@dataclass(frozen=True)
class Topics:
    """The topic names of one namespace."""

    trades: str
    quotes: str
    news: str
    outputs: dict[str, str]  # derived table → topic

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        ns = settings.namespaced
        return cls(
            trades=ns(TRADES),
            quotes=ns(QUOTES),
            news=ns(NEWS),
            outputs={table: ns(topic) for table, topic in OUTPUT_TABLES.items()},
        )

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.trades, self.quotes, self.news)

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.inputs, *self.outputs.values())

    def base(self, topic: str | None) -> str | None:
        """The namespace-free name of one of these topics (what `decode` dispatches on)."""
        if topic == self.trades:
            return TRADES
        if topic == self.quotes:
            return QUOTES
        if topic == self.news:
            return NEWS
        return topic


def decode(topic: str | None, value: bytes | None) -> list[Any]:
    """Records of one message; a message without a value (a tombstone) carries none.
    `topic` is the namespace-free name (`Topics.base`)."""
    if value is None:
        return []
    if topic == TRADES:
        return _DEC_TRADES.decode(value)
    if topic == QUOTES:
        return _DEC_QUOTES.decode(value)
    if topic == NEWS:
        return _DEC_NEWS.decode(value)
    return _DEC_ROWS.decode(value)


def client_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap}


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Idempotent, all-replica acks; batching and lz4 compression measured in the benchmark."""
    return {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1 << 20,
        "compression.type": "lz4",
        "queue.buffering.max.kbytes": 256 * 1024,
        # A stopped broker must not lose what we buffered: retry until delivery.timeout.ms.
        "delivery.timeout.ms": 300_000,
        # librdkafka refuses a transactional producer whose delivery timeout exceeds the
        # transaction timeout (default 60 s); the broker allows up to 15 min.
        "transaction.timeout.ms": 300_000,
        **extra,
    }


def ensure_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that are missing (idempotent); return the names created."""
    admin = AdminClient(client_config(settings))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    n = settings.kafka_trades_partitions
    wanted = [NewTopic(t, num_partitions=n, replication_factor=1) for t in Topics.of(settings).all]
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return []
    created = []
    for topic, fut in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            fut.result(timeout_s)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def group_by_ticker(records: Iterable[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        out[r.ticker if not isinstance(r, dict) else r["ticker"]].append(r)
    return out


def max_ts_ms(records: Sequence[Any], time_column: str = "timestamp") -> int:
    """The newest event time of the records, in ms (0, "now", when none has one); rows are
    dicts whose time is `time_column`, news is timed by `published_at`."""
    best = 0
    for r in records:
        if isinstance(r, dict):
            ts = r.get(time_column)
        elif isinstance(r, News):
            ts = r.published_at
        else:
            ts = getattr(r, "timestamp", 0)
        best = max(best, int(ts or 0))
    return best // 1_000_000


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0
    last_error: str = ""


class EventProducer:
    """Publishes validated events to the log, one message per (topic, ticker) per batch."""

    def __init__(self, settings: Settings, **extra: Any) -> None:
        self._producer = Producer(producer_config(settings, **extra))
        self.stats = DeliveryStats()

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            self.stats.last_error = str(err)

    def send(self, topic: str, records: Sequence[Any]) -> int:
        sent = 0
        for ticker, recs in group_by_ticker(records).items():
            self._produce(topic, ticker, recs)
            sent += 1
        self._producer.poll(0)
        return sent

    def _produce(self, topic: str, ticker: str, recs: list[Any]) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    key=ticker.encode(),
                    value=encode(recs),
                    timestamp=max_ts_ms(recs),
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                # Local queue full (broker slow or down): serve callbacks and wait, which is
                # exactly the backpressure we want on the WebSocket reader.
                self._producer.poll(0.1)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        return int(self._producer.flush(timeout_s))

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)
