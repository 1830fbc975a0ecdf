"""How far the processors are behind: the processor group's committed offsets against the end
of the input topics. Read from outside the group (it never joins), so anyone may ask: the
API's /health, `tradepulse run`'s shutdown and the tests."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as TP

from tradepulse.config import Settings
from tradepulse.log import kafka
from tradepulse.log.transactional import group_id


@dataclass(frozen=True)
class Lag:
    total: int  # input messages not yet committed by the processors
    committed: int  # input messages committed (sum of committed offsets)
    end: int  # input messages in the log (sum of high watermarks)
    by_topic: dict[str, int]


class GroupLag:
    """Lag of `group` (default: the processors') on `topics` (default: the input topics)."""

    def __init__(
        self,
        settings: Settings,
        *,
        group: str | None = None,
        topics: tuple[str, ...] | None = None,
    ) -> None:
        self.topics = topics or kafka.Topics.of(settings).inputs
        # read_uncommitted: the offsets of an open transaction are not waited for (a committed
        # read would block until it ends); what counts is what has been committed.
        self.consumer = Consumer(
            {
                **kafka.client_config(settings),
                "group.id": group or group_id(settings),
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
            }
        )

    def measure(self, timeout_s: float = 10.0) -> Lag:
        md = self.consumer.list_topics(timeout=timeout_s).topics
        parts = [TP(t, p) for t in self.topics if t in md for p in sorted(md[t].partitions)]
        committed = self.consumer.committed(parts, timeout=timeout_s) if parts else []
        by_topic: dict[str, int] = dict.fromkeys(self.topics, 0)
        total_committed = total_end = 0
        for tp in committed:
            low, high = self.consumer.get_watermark_offsets(
                TP(tp.topic, tp.partition), timeout=timeout_s, cached=False
            )
            done = tp.offset if tp.offset >= 0 else low  # nothing committed: all of it is lag
            by_topic[tp.topic] += max(0, high - done)
            total_committed += max(0, tp.offset)
            total_end += high
        return Lag(sum(by_topic.values()), total_committed, total_end, by_topic)

    def try_measure(self, timeout_s: float = 10.0) -> Lag | None:
        """`measure`, or None while the broker cannot answer."""
        try:
            return self.measure(timeout_s)
        except KafkaException:
            return None

    def close(self) -> None:
        self.consumer.close()
