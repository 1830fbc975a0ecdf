"""The cluster cold store: Kafka → Snappy Parquet on S3, in the embedded store's Hive layout.

`S3ColdSink` consumes the committed input topics (`market.trades`, `market.quotes`, inside the
cluster namespace) in its own consumer group (`tradepulse-cold`) with
`isolation.level=read_committed`, buffers the records per Kafka partition and writes them,
every `cold_flush_s` or `cold_flush_rows` rows and at shutdown, to::

    <root>/trades/date=YYYY-MM-DD/ticker=T/kafka-<partition>-<first>-<last>.parquet
    <root>/quotes/date=…/ticker=…/kafka-….parquet      (root: `cold_root`, bucket/[ns/]prefix)

with the same columns and partitioning as `store/cold/parquet.py` (its `ColdTable` specs and
`partition_groups`), so one query layer reads both. `<first>`/`<last>` are the Kafka offsets
the flush covers in that partition. Offsets are committed only after the objects are written.

No duplicate rows after a crash between writing and committing. Before writing a partition's
objects the sink writes a small intent marker, `<root>/_sink/<group>/<topic>/<partition>.json`
= {start, end, keys}. A restarted sink (or the next owner after a rebalance) resumes at the
committed offset; when the first offset it reads is at or below a marker's `end`, that flush
was never committed, and two things follow:

1. Deterministic boundary: the sink flushes that partition exactly when it reaches the marker's
   `end` again. The log between two offsets never changes (read_committed skips the same
   aborted records every time), so the replayed flush has the same offset range, the same rows
   and the same object names: S3 overwrites each object in place.
2. Cleanup: should the replay end elsewhere (a timed or size flush came first, or a different
   version partitions differently), the marker's keys that the new flush does not rewrite are
   deleted before its offsets are committed; each new marker lists them too until then.

Either way every row is in exactly one object once the commit lands. S3 PUTs are atomic, so a
reader sees an old or a new object, never half of one. Kafka itself may still hold the same
trade twice (a backfill overlapping the live feed, a dead letter re-published), so the query
layer deduplicates on identity. One writer per partition is assumed (the consumer group's
guarantee); a zombie that outlives its session timeout is not fenced.

A failed flush (S3 or the commit) keeps its buffers, stops consuming and is retried; what a
failed attempt wrote is in its marker, so the retry cleans it up the same way. A marker that
cannot be read (S3 throttling or failing) rewinds the batch that needed it and is read again
on the retry, so no consumed message is skipped. The bucket is checked before the first write,
not at construction: the processor starts, and writes DynamoDB, while S3 is down.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tradepulse.config import Settings
from tradepulse.log import kafka
from tradepulse.store.cold.parquet import (
    QUOTES,
    TRADES,
    ColdTable,
    column_arrays,
    partition_groups,
    trading_days,
)

__all__ = ["GROUP_ID", "S3ColdSink", "SinkStats", "cold_root", "s3_filesystem", "sink_tables"]

log = logging.getLogger("tradepulse.cold")

GROUP_ID = "tradepulse-cold"
_MAX_BACKOFF_S = 30.0


def s3_filesystem(settings: Settings) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for the configured endpoint (real AWS when none is set), retrying
    throttles (503 SlowDown) and 5xx as the settings say (pyarrow has no adaptive mode)."""
    retry: pafs.S3RetryStrategy
    if settings.aws_retry_mode == "legacy":
        retry = pafs.AwsDefaultS3RetryStrategy(max_attempts=settings.aws_max_attempts)
    else:
        retry = pafs.AwsStandardS3RetryStrategy(max_attempts=settings.aws_max_attempts)
    kwargs: dict[str, Any] = {
        "region": settings.aws_region,
        "allow_bucket_creation": True,
        "retry_strategy": retry,
    }
    if settings.s3_endpoint:
        from tradepulse.ops.stack import endpoints

        url = urlsplit(settings.s3_endpoint)
        kwargs |= {"endpoint_override": url.netloc, "scheme": url.scheme or "http"}
        # The local server accepts any signature; real endpoints use the normal chain.
        if endpoints(settings, ["s3"])["s3"].local:
            kwargs |= {"access_key": "test", "secret_key": "test"}
    return pafs.S3FileSystem(**kwargs)


def cold_root(settings: Settings) -> str:
    """`bucket/[namespace/]prefix`: the cold store's root as a pyarrow filesystem path. The
    cluster namespace keeps pipelines that share a bucket out of each other's objects."""
    parts = (settings.s3_bucket, settings.cluster_namespace, settings.s3_prefix)
    return "/".join(p for p in parts if p)


def sink_tables(
    settings: Settings, topics: Mapping[str, str] | None = None
) -> dict[str, tuple[ColdTable, str]]:
    """Topic → (the table it is written to, the canonical topic whose decoder reads it).
    The topics are the namespace's input topics unless `topics` ({table: topic}) says."""
    ns = kafka.Topics.of(settings)
    names = {"trades": ns.trades, "quotes": ns.quotes, **(topics or {})}
    return {names["trades"]: (TRADES, kafka.TRADES), names["quotes"]: (QUOTES, kafka.QUOTES)}


def record_columns(spec: ColdTable, records: Sequence[Any]) -> dict[str, list[Any]]:
    """Trade/Quote records as the hot store's columns (day derived, conditions as JSON text)."""
    out: dict[str, list[Any]] = {}
    for col in spec.columns:
        if col == "day":
            ts = np.fromiter((r.timestamp for r in records), dtype=np.int64, count=len(records))
            out[col] = trading_days(ts).tolist()
        elif col == "conditions":
            out[col] = [orjson.dumps(r.conditions).decode() for r in records]
        else:
            out[col] = [getattr(r, col) for r in records]
    return out


@dataclass
class SinkStats:
    messages: int = 0
    rows: int = 0  # rows written to S3 (a replayed flush counts again)
    flushes: int = 0
    objects: int = 0
    undecodable: int = 0
    failures: int = 0


@dataclass
class _Buffer:
    first: int
    last: int
    records: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class _Intent:
    start: int
    end: int
    keys: frozenset[str]  # relative to the cold root


TP = tuple[str, int]


class S3ColdSink:
    """Kafka → S3 Parquet, offsets committed after the objects (module docstring).

    `run(should_stop)` is meant for a thread of the processor process; `run_once()` is one
    consume-and-maybe-flush step for tests and custom loops.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        topics: Mapping[str, str] | None = None,
        group_id: str | None = None,
        consumer_extra: Mapping[str, Any] | None = None,
        filesystem: pafs.FileSystem | None = None,
        max_messages: int = 1000,
    ) -> None:
        self.settings = settings
        self.group_id = group_id or settings.namespaced(GROUP_ID)
        self.flush_s = settings.cold_flush_s
        self.flush_rows = settings.cold_flush_rows
        self.max_messages = max_messages
        self.stats = SinkStats()
        self.fs = filesystem if filesystem is not None else s3_filesystem(settings)
        self.root = cold_root(settings)
        # Checked before the first write, not here: an S3 outage at start-up must not stop the
        # process that runs the sink (the processor) from starting; the sink retries it.
        self._bucket_ready = False
        self._specs = sink_tables(settings, topics)
        self._buffers: dict[TP, _Buffer] = {}
        # Offsets past a replayed flush's end, held until that flush is committed.
        self._overflow: dict[TP, _Buffer] = {}
        self._intents: dict[TP, _Intent] = {}
        self._checked: set[TP] = set()
        self._rows = 0
        self._last_flush = time.monotonic()
        self._retry = False
        self._closed = False
        self.consumer = Consumer(
            {
                **kafka.client_config(settings),
                "group.id": self.group_id,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **(consumer_extra or {}),
            }
        )
        self.consumer.subscribe(list(self._specs), on_revoke=self._on_revoke)

    # -- the loop ----------------------------------------------------------------------------

    def run_once(self, timeout_s: float = 0.5) -> int:
        """Consume one batch and flush what is due; return the number of messages taken."""
        if self._retry:
            # Consuming on while a flush fails would grow the buffers without bound.
            self.flush()
        msgs = self.consumer.consume(self.max_messages, timeout_s)
        self._check_intents(msgs)
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("cold sink: consumer error: %s", err)
                continue
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if topic is not None and partition is not None and offset is not None:
                self._add(topic, partition, offset, m.value())
        self.stats.messages += len(msgs)
        replayed = [tp for tp, buf in self._buffers.items() if _reached(self._intents.get(tp), buf)]
        if replayed:
            self._flush(replayed)  # the uncommitted flush's exact range: same objects rewritten
        due = self._buffers and time.monotonic() - self._last_flush >= self.flush_s
        if self._rows >= self.flush_rows or due:
            self.flush()
        return len(msgs)

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Run until `should_stop()`; then flush and leave the group. Failures back off."""
        backoff = 0.5
        try:
            while not should_stop():
                try:
                    self.run_once()
                    backoff = 0.5
                except (OSError, KafkaException) as exc:
                    self.stats.failures += 1
                    log.error("cold sink: flush failed, retrying in %.1f s: %s", backoff, exc)
                    _sleep_unless(should_stop, backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF_S)
        finally:
            try:
                self.close()
            except (OSError, KafkaException) as exc:
                # Nothing is lost: the offsets stay uncommitted, and the next sink of this
                # group (this processor restarted, or another) writes the rows.
                self.stats.failures += 1
                log.error(
                    "cold sink: final flush failed; its rows stay in Kafka, uncommitted, for "
                    "the next start: %s",
                    exc,
                )

    def flush(self) -> int:
        """Write every buffered partition, then commit their offsets; return rows written."""
        return self._flush(sorted(self._buffers))

    def close(self) -> None:
        """Flush what is buffered and leave the consumer group (offsets of a failed final
        flush stay uncommitted and are replayed by the next start). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self.consumer.close()

    # -- buffering ---------------------------------------------------------------------------

    def _add(self, topic: str, partition: int, offset: int, value: bytes | None) -> None:
        tp = (topic, partition)
        try:
            records = kafka.decode(self._specs[topic][1], value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Only our own producers write these topics; one bad message must not wedge the
            # sink, and it stays in Kafka for inspection.
            self.stats.undecodable += 1
            log.error("cold sink: undecodable message %s[%d]@%d: %s", topic, partition, offset, exc)
            records = []
        into = self._buffers
        if _reached(self._intents.get(tp), self._buffers.get(tp)):
            into = self._overflow
        buf = into.get(tp)
        if buf is None:
            buf = into[tp] = _Buffer(first=offset, last=offset)
        buf.last = offset
        buf.records.extend(records)
        self._rows += len(records)

    def _check_intents(self, msgs: Sequence[Message]) -> None:
        """Check the partitions of a batch that are new since their assignment, before any of
        it is buffered. Should S3 fail, every partition of the batch is rewound to its first
        message in it and the error raised: the retry consumes the same messages again
        instead of buffering past the ones this batch had taken."""
        first: dict[TP, int] = {}
        for m in msgs:
            topic, partition, offset = m.topic(), m.partition(), m.offset()
            if m.error() is not None or topic is None or partition is None or offset is None:
                continue
            first.setdefault((topic, partition), offset)
        try:
            for tp, offset in first.items():
                if tp not in self._checked:
                    self._check_intent(tp, offset)
        except OSError:
            for (topic, partition), offset in first.items():
                self.consumer.seek(TopicPartition(topic, partition, offset))
            raise

    def _check_intent(self, tp: TP, first_offset: int) -> None:
        """On the first message after an assignment: was this partition's last flush committed?"""
        try:
            with self.fs.open_input_stream(self._intent_path(tp)) as fh:
                doc = orjson.loads(fh.read())
        except FileNotFoundError:
            doc = None
        self._checked.add(tp)
        if doc is not None and first_offset <= int(doc["end"]):
            intent = _Intent(int(doc["start"]), int(doc["end"]), frozenset(doc["keys"]))
            self._intents[tp] = intent
            log.info(
                "cold sink: %s[%d] flush %d-%d was not committed; replaying it",
                *tp,
                intent.start,
                intent.end,
            )

    def _on_revoke(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        revoked = [(p.topic, p.partition) for p in parts]
        try:
            self._flush([tp for tp in revoked if tp in self._buffers])
        except (OSError, KafkaException) as exc:
            # The next owner resumes at the committed offsets and finds our intent markers.
            log.error("cold sink: flush on revoke failed, leaving it to the next owner: %s", exc)
        for tp in revoked:
            for held in (self._buffers, self._overflow):
                buf = held.pop(tp, None)
                if buf is not None:
                    self._rows -= len(buf.records)
            self._intents.pop(tp, None)
            self._checked.discard(tp)
        self._retry = self._retry and bool(self._buffers)

    # -- flushing ----------------------------------------------------------------------------

    def _flush(self, tps: Iterable[TP]) -> int:
        tps = [tp for tp in tps if tp in self._buffers]
        if not tps:
            self._last_flush = time.monotonic()
            return 0
        self._retry = True
        self._ensure_bucket()
        rows = 0
        for tp in tps:
            rows += self._write(tp, self._buffers[tp])
        commits = [TopicPartition(t, p, self._buffers[(t, p)].last + 1) for t, p in tps]
        for res in self.consumer.commit(offsets=commits, asynchronous=False) or []:
            if res.error is not None:
                raise KafkaException(res.error)
        for tp in tps:
            self._rows -= len(self._buffers.pop(tp).records)
            self._intents.pop(tp, None)
            if tp in self._overflow:
                self._buffers[tp] = self._overflow.pop(tp)
        self._retry = False
        self._last_flush = time.monotonic()
        self.stats.flushes += 1
        self.stats.rows += rows
        return rows

    def _write(self, tp: TP, buf: _Buffer) -> int:
        spec = self._specs[tp[0]][0]
        name = f"kafka-{tp[1]}-{buf.first}-{buf.last}.parquet"
        data = record_columns(spec, buf.records) if buf.records else {}
        groups = partition_groups(spec, data) if data else []
        keys = [f"{spec.name}/{rel}/{name}" if rel else f"{spec.name}/{name}" for rel, _ in groups]
        previous = self._intents.get(tp)
        stale = (previous.keys if previous else frozenset()) - set(keys)
        if keys or stale:
            intent = _Intent(buf.first, buf.last, frozenset(keys) | stale)
            self._put_intent(tp, intent)
            self._intents[tp] = intent
        if groups:
            arrays = column_arrays(spec, data)
            table = pa.table({c: arrays[c] for c in spec.file_columns})
            for (_rel, idx), key in zip(groups, keys, strict=True):
                pq.write_table(
                    table.take(pa.array(idx)),
                    f"{self.root}/{key}",
                    filesystem=self.fs,
                    compression="snappy",
                )
            self.stats.objects += len(keys)
        for key in sorted(stale):
            with contextlib.suppress(FileNotFoundError):  # an earlier attempt deleted it
                self.fs.delete_file(f"{self.root}/{key}")
        return len(buf.records)

    def _ensure_bucket(self) -> None:
        if not self._bucket_ready:
            if self.fs.get_file_info(self.settings.s3_bucket).type == pafs.FileType.NotFound:
                self.fs.create_dir(self.settings.s3_bucket)
            self._bucket_ready = True

    def _intent_path(self, tp: TP) -> str:
        return f"{self.root}/_sink/{self.group_id}/{tp[0]}/{tp[1]}.json"

    def _put_intent(self, tp: TP, intent: _Intent) -> None:
        doc = {"start": intent.start, "end": intent.end, "keys": sorted(intent.keys)}
        with self.fs.open_output_stream(self._intent_path(tp)) as fh:
            fh.write(orjson.dumps(doc))


def _reached(intent: _Intent | None, buf: _Buffer | None) -> bool:
    """Whether the buffer holds all of an uncommitted flush's range (time to replay it)."""
    return intent is not None and buf is not None and buf.last >= intent.end


def _sleep_unless(should_stop: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(min(0.2, deadline - time.monotonic()))
