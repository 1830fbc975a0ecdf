"""Putting records that now validate back where fresh records enter the pipeline.

Cluster: the Kafka input topics, through the same idempotent producer as the live feed, so
the processor treats them like any other event. Embedded: the log is in the memory of the
`tradepulse run` process, so the records go through the same processing stages (warmed from
the stored session, as on a restart) and into the hot store in one transaction. Either way a
record published twice (a crash before its entry left the queue) is one event downstream:
every store write is idempotent on identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tradepulse.config import Settings
from tradepulse.market_time import now_ns
from tradepulse.validate.dlq.revalidate import Verdict

__all__ = ["EmbeddedRepublisher", "KafkaRepublisher", "Republisher"]


class Republisher(Protocol):
    def publish(self, verdicts: Sequence[Verdict]) -> None:
        """Deliver every record durably, or raise."""
        ...

    def close(self) -> None: ...


class KafkaRepublisher:
    def __init__(self, settings: Settings, *, timeout_s: float = 60.0) -> None:
        from tradepulse.log import kafka

        self._kafka = kafka
        self.topics = kafka.Topics.of(settings)
        self.producer = kafka.EventProducer(settings)
        self.timeout_s = timeout_s

    def publish(self, verdicts: Sequence[Verdict]) -> None:
        failed = self.producer.stats.failed
        for topic, records in (
            (self.topics.trades, [t for v in verdicts for t in v.trades]),
            (self.topics.quotes, [q for v in verdicts for q in v.quotes]),
            (self.topics.news, [n for v in verdicts for n in v.news]),
        ):
            if records:
                self.producer.send(topic, records)
        left = self.producer.flush(self.timeout_s)
        if left or self.producer.stats.failed > failed:
            raise RuntimeError(
                f"Kafka did not take the redriven records ({left} undelivered): "
                f"{self.producer.stats.last_error}"
            )

    def close(self) -> None:
        self.producer.flush(self.timeout_s)


class EmbeddedRepublisher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def publish(self, verdicts: Sequence[Verdict]) -> None:
        from tradepulse.log.embedded import Frame
        from tradepulse.runner import EmbeddedBackend
        from tradepulse.validate import Decoded

        trades = [t for v in verdicts for t in v.trades]
        quotes = [q for v in verdicts for q in v.quotes]
        news = [n for v in verdicts for n in v.news]
        if not (trades or quotes or news):
            return
        backend = EmbeddedBackend.open(self.settings)
        try:
            backend.warm()
            now = now_ns()
            frame = Frame(
                recv_ts=now,
                decoded=Decoded(trades=trades, quotes=quotes),
                news=news or None,
                source="dlq-redrive",
            )
            backend.hot.write(backend.processor.process([frame], now))
        finally:
            backend.close()

    def close(self) -> None:
        """Nothing is held between publishes."""
