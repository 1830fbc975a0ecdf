"""Reading a stretch of one partition's history: what a processor rebuilds its state from.

Every read has a consumer of its own: one that was assigned the same partition before may
still deliver a message or an end-of-partition event from that assignment, which would cut
a rebuild short without a sound.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as TP

from tradepulse.config import Settings
from tradepulse.log import kafka

READ_STALL_S = 60.0  # a read that makes no progress this long fails (and the rebuild with it)
CHUNK = 20_000  # records per chunk handed on (a rebuild warms the stages chunk by chunk)
GROUP = "tradepulse-history"  # never joined, never committed: assign() only


def _reader(settings: Settings) -> Consumer:
    return Consumer(
        {
            **kafka.client_config(settings),
            "group.id": settings.namespaced(GROUP),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


def offset_for_time(settings: Settings, topic: str, partition: int, ts_ms: int) -> int:
    """The first offset whose message timestamp is >= ts_ms; -1 when there is none."""
    reader = _reader(settings)
    try:
        got = reader.offsets_for_times([TP(topic, partition, max(ts_ms, 0))], timeout=30)
        return int(got[0].offset)
    finally:
        reader.close()


def message_ts_ms(settings: Settings, topic: str, partition: int, offset: int) -> int | None:
    """The timestamp (ms) of the message at `offset`; None when there is none."""
    if offset < 0:
        return None
    for msg in messages(settings, topic, partition, offset, offset + 1):
        kind, ts = msg.timestamp()
        return int(ts) if kind != 0 else None
    return None


def messages(
    settings: Settings, topic: str, partition: int, begin: int, end: int
) -> Iterator[Message]:
    """Messages of [begin, end) in log order (begin -1: none)."""
    if begin < 0 or begin >= end:
        return
    reader = _reader(settings)
    reader.assign([TP(topic, partition, begin)])
    try:
        deadline = time.monotonic() + READ_STALL_S
        while True:
            msgs = reader.consume(1000, 0.1)
            if not msgs and time.monotonic() > deadline:
                raise RuntimeError(f"rebuild: {topic}[{partition}] stalled before offset {end}")
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return  # the rest up to `end` are transaction markers
                    raise KafkaException(err)
                offset = m.offset()
                if offset is None or offset >= end:
                    return
                yield m
            if msgs:
                deadline = time.monotonic() + READ_STALL_S
    finally:
        reader.close()


def read_records(
    settings: Settings, topic: str, base: str, partition: int, begin: int, end: int
) -> Iterator[list[Any]]:
    """Decoded records of [begin, end), in chunks of about `CHUNK`; `base` is the topic's
    namespace-free name."""
    chunk: list[Any] = []
    for m in messages(settings, topic, partition, begin, end):
        chunk.extend(kafka.decode(base, m.value()))
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
