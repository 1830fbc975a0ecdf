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

A broker that is down: `EventProducer` keeps what it was given in librdkafka's local buffer
(bounded by `kafka_buffer_kb`) and retries; `hold=True` (the live feed's producer) never lets a
message expire, so an outage of any length costs memory up to the bound, then backpressure
(`send_async` waits for room), never a message. What librdkafka reports about the cluster
(brokers unreachable and back) is counted and logged, at most once per `_ERROR_LOG_S`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tradepulse.config import Settings
from tradepulse.events import News, Quote, Trade

log = logging.getLogger("tradepulse.kafka")

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


_ERROR_LOG_S = 10.0  # at most one log line per this many seconds about client errors
# A message's bound: well inside the local buffer (a bigger one could never be queued) and the
# brokers' default message.max.bytes (1 MB).
_MAX_MESSAGE_BYTES = 512 * 1024
_FULL_WAIT_S = 0.05  # how often `send_async` looks for room in a full local buffer


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0
    last_error: str = ""
    client_errors: int = 0  # librdkafka's error callback: brokers unreachable, and worse
    last_client_error: str = ""
    buffer_full: int = 0  # times the local buffer filled up and a send had to wait
    buffer_full_s: float = 0.0  # time spent waiting for room, over all those times


@dataclass
class DeliveryGroup:
    """The deliveries of some messages (a gap fill): how many are not yet acknowledged."""

    pending: int = 0
    failed: int = 0
    last_error: str = ""


class EventProducer:
    """Publishes validated events to the log, one message per (topic, ticker) per batch.

    `hold=True`: never give up on a message (`delivery.timeout.ms=0`), for a producer whose
    input cannot be asked for again; the others keep librdkafka's bounded retries."""

    def __init__(self, settings: Settings, *, hold: bool = False, **extra: Any) -> None:
        config = producer_config(
            settings,
            **{
                "queue.buffering.max.kbytes": settings.kafka_buffer_kb,
                # librdkafka's other bound, 100,000 messages, is minutes of a feed at one
                # message per ticker per frame: the bytes bind first (messages of 64 bytes or
                # more), and the per-message bookkeeping it does not count stays bounded.
                "queue.buffering.max.messages": min(
                    2**31 - 1, max(1024, settings.kafka_buffer_kb * 16)
                ),
            },
            **({"delivery.timeout.ms": 0} if hold else {}),
            **extra,
        )
        config["error_cb"] = self._on_error
        self._producer = Producer(config)
        self._max_message = min(_MAX_MESSAGE_BYTES, settings.kafka_buffer_kb * 1024 // 8)
        self.stats = DeliveryStats()
        self._full_since: float | None = None
        self._error_logged = 0.0
        self._errors_unlogged = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            self.stats.last_error = str(err)

    def _on_delivery_in(self, group: DeliveryGroup, err: KafkaError | None, msg: Any) -> None:
        self._on_delivery(err, msg)
        group.pending -= 1
        if err is not None:
            group.failed += 1
            group.last_error = str(err)

    def _on_error(self, err: KafkaError) -> None:
        # Called from poll()/flush(): per client event (a connection refused, all brokers
        # down), not per message; still, an outage repeats them, so the log is thinned.
        self.stats.client_errors += 1
        self.stats.last_client_error = err.str()
        now = time.monotonic()
        if err.fatal() or now - self._error_logged >= _ERROR_LOG_S:
            more = f" (+{self._errors_unlogged} more)" if self._errors_unlogged else ""
            unacked = len(self._producer)
            log.warning("Kafka client: %s%s; %d messages unacknowledged", err.str(), more, unacked)
            self._error_logged, self._errors_unlogged = now, 0
        else:
            self._errors_unlogged += 1

    def unacked(self) -> int:
        """Messages in the local buffer or in flight, not yet acknowledged by the broker."""
        return len(self._producer)

    def buffer_full(self) -> bool:
        """Whether a send is waiting for room in the local buffer right now."""
        return self._full_since is not None

    def _messages(self, records: Sequence[Any]) -> Iterator[tuple[str, bytes, int]]:
        """(key, value, timestamp ms) per ticker, split in order where one would be too big."""
        for ticker, recs in group_by_ticker(records).items():
            yield from self._split(ticker, recs)

    def _split(self, ticker: str, recs: list[Any]) -> Iterator[tuple[str, bytes, int]]:
        value = encode(recs)
        if len(value) <= self._max_message or len(recs) == 1:
            yield ticker, value, max_ts_ms(recs)
            return
        half = len(recs) // 2
        yield from self._split(ticker, recs[:half])
        yield from self._split(ticker, recs[half:])

    def send(self, topic: str, records: Sequence[Any]) -> int:
        """Publish now; while the local buffer is full this blocks the calling thread."""
        sent = 0
        for ticker, value, ts in self._messages(records):
            while not self._try_produce(topic, ticker, value, ts, None):
                # Local queue full (broker slow or down): serve callbacks and wait.
                self._producer.poll(0.1)
            sent += 1
        self._producer.poll(0)
        self._room_again()
        return sent

    async def send_async(
        self, topic: str, records: Sequence[Any], group: DeliveryGroup | None = None
    ) -> int:
        """`send` for an event loop: while the local buffer is full this waits without
        blocking the loop, and so does its caller (the backpressure that stops the feed
        reader). `group` counts these messages' deliveries."""
        sent = 0
        for ticker, value, ts in self._messages(records):
            while True:
                if self._try_produce(topic, ticker, value, ts, group):
                    break
                # Polled, not signalled: room appears as the broker acknowledges.
                await asyncio.sleep(_FULL_WAIT_S)
            sent += 1
        self._producer.poll(0)
        self._room_again()
        return sent

    def _room_again(self) -> None:
        if self._full_since is not None:
            waited = time.monotonic() - self._full_since
            self._full_since = None
            self.stats.buffer_full_s += waited
            log.info("Kafka's local buffer has room again after %.1f s", waited)

    def _try_produce(
        self, topic: str, ticker: str, value: bytes, ts: int, group: DeliveryGroup | None
    ) -> bool:
        callback = self._on_delivery if group is None else partial(self._on_delivery_in, group)
        try:
            self._producer.produce(
                topic, key=ticker.encode(), value=value, timestamp=ts, on_delivery=callback
            )
        except BufferError:
            if not len(self._producer):
                # Nothing buffered to make room: this one message is over the bound.
                raise BufferError(
                    f"a {len(value):,}-byte message does not fit in the local buffer "
                    "(kafka_buffer_kb)"
                ) from None
            self._producer.poll(0)  # serve delivery callbacks: acknowledged messages go
            if self._full_since is None:
                self._full_since = time.monotonic()
                self.stats.buffer_full += 1
                log.warning(
                    "Kafka's local buffer is full (%d messages unacknowledged): waiting, "
                    "and the feed waits with it",
                    len(self._producer),
                )
            return False
        if group is not None:
            group.pending += 1
        return True

    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait for outstanding deliveries; return how many are still undelivered."""
        return int(self._producer.flush(timeout_s))

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)
