"""Exactly-once processing on Kafka: one transaction per micro-batch.

The commit protocol lives here and nowhere else. For every micro-batch:

  1. Consume up to `max_messages` (isolation.level=read_committed) from the assigned input
     partitions of market.trades / market.quotes / market.news.
  2. Run the same `Processor` as the embedded backend over the decoded events.
  3. Write the resulting `StoreBatch` to the hot store. Writes are idempotent on event identity,
     so if we die after this step the repeated batch rewrites the same items.
  4. Begin a transaction and produce the derived rows (features, bars, anomalies, sentiment)
     to their output topics, keyed by ticker.
  5. Add the consumed offsets to the transaction (`send_offsets_to_transaction`).
  6. Commit. Until this returns nothing downstream (read_committed) sees the outputs and the
     group's offsets have not moved; on any failure before it, abort and rewind.

State survives restarts and rebalances by deterministic rebuild from the log: whenever the
assignment changes, the stages are rebuilt for the new assignment by re-reading each assigned
trades partition from the session start (04:00 ET) up to the committed offset, without
emitting. Per-ticker state depends only on that ticker's events in partition order, so a
killed-and-restarted (or rebalanced) processor computes what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as TP

from tradepulse.config import Settings
from tradepulse.events import News, Quote, Trade
from tradepulse.log import kafka
from tradepulse.log.embedded import Frame
from tradepulse.market_time import NS_PER_MS, now_ns, session_start_ns, trading_day
from tradepulse.process.pipeline import Processor
from tradepulse.store.base import HotStore, StoreBatch
from tradepulse.validate import Decoded

log = logging.getLogger("tradepulse.processor")

GROUP_ID = "tradepulse-processor"


@dataclass
class ProcessorStats:
    batches: int = 0
    events: int = 0
    aborts: int = 0
    rebuilds: int = 0
    rebuild_events: int = 0
    lag: int = 0


class TransactionalProcessor:
    def __init__(
        self,
        settings: Settings,
        make_processor: Callable[[], Processor],
        hot: HotStore,
        *,
        instance_id: str,
        max_messages: int = 500,
        poll_timeout_s: float = 0.2,
        consumer_extra: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self._make_processor = make_processor
        self.processor = make_processor()
        self.hot = hot
        self.max_messages = max_messages
        self.poll_timeout_s = poll_timeout_s
        self.stats = ProcessorStats()
        self._assignment_changed = False
        self.consumer = Consumer(
            {
                **kafka.client_config(settings),
                "group.id": GROUP_ID,
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "range",  # co-partitions trades with news
                **(consumer_extra or {}),
            }
        )
        self.producer = Producer(
            kafka.producer_config(settings, **{"transactional.id": f"tradepulse-{instance_id}"})
        )
        self.producer.init_transactions(60)
        self.consumer.subscribe(
            list(kafka.INPUTS), on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    # -- rebalance ---------------------------------------------------------------------------
    def _on_assign(self, _consumer: Consumer, _parts: list[TP]) -> None:
        self._assignment_changed = True

    def _on_revoke(self, _consumer: Consumer, _parts: list[TP]) -> None:
        # Anything consumed but uncommitted is abandoned: the next owner resumes from the
        # committed offsets. State for the revoked tickers goes with the rebuild below.
        self._assignment_changed = True

    def _rebuild(self) -> None:
        """Fresh stages, warmed from the session start up to the committed offsets."""
        self._assignment_changed = False
        self.processor = self._make_processor()
        parts = [p for p in self.consumer.assignment() if p.topic == kafka.TRADES]
        if not parts:
            return
        committed = {p.partition: p.offset for p in self.consumer.committed(parts, timeout=30)}
        start_ms = session_start_ns(trading_day(now_ns())) // NS_PER_MS
        reader = Consumer(
            {
                **kafka.client_config(self.settings),
                "group.id": f"{GROUP_ID}-rebuild",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        try:
            starts = reader.offsets_for_times(
                [TP(kafka.TRADES, p, start_ms) for p in committed], timeout=30
            )
            targets: dict[int, int] = {}
            assign: list[TP] = []
            for tp in starts:
                end = committed[tp.partition]
                if end is None or end < 0:
                    continue  # nothing committed yet: nothing to rebuild
                begin = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                targets[tp.partition] = end
                assign.append(TP(kafka.TRADES, tp.partition, begin))
            if not assign:
                return
            reader.assign(assign)
            trades: list[Trade] = []
            idle = 0
            while targets and idle < 3:
                msgs = reader.consume(1000, 1.0)
                if not msgs:
                    # Transaction markers occupy offsets too, so the last readable message
                    # can sit below the committed offset: stop once positions reach it.
                    for tp in reader.position([TP(kafka.TRADES, p) for p in targets]):
                        if tp.offset >= targets[tp.partition]:
                            targets.pop(tp.partition)
                    idle += 1
                    continue
                idle = 0
                for m in msgs:
                    p = m.partition()
                    if m.error() is not None or p not in targets:
                        continue
                    offset = m.offset()
                    if offset is not None and offset >= targets[p]:
                        targets.pop(p)
                        continue
                    trades.extend(kafka.decode(kafka.TRADES, m.value()))
            trades.sort(key=lambda t: (t.ticker, t.timestamp, t.sequence_number))
            self.processor.warm(trades, [])
            self.stats.rebuilds += 1
            self.stats.rebuild_events += len(trades)
        finally:
            reader.close()

    # -- the loop ------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Process one micro-batch; return the number of events it held."""
        msgs = self.consumer.consume(self.max_messages, self.poll_timeout_s)
        if self._assignment_changed:
            self._rebuild()
            # Messages consumed across a rebalance may belong to partitions we no longer
            # own, and the rebuilt state starts at the committed offsets: rewind to them.
            self._rewind()
            return 0
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            return 0
        trades: list[Trade] = []
        quotes: list[Quote] = []
        news: list[News] = []
        for m in msgs:
            records = kafka.decode(m.topic(), m.value())
            if m.topic() == kafka.TRADES:
                trades.extend(records)
            elif m.topic() == kafka.QUOTES:
                quotes.extend(records)
            else:
                news.extend(records)
        frame = Frame(
            recv_ts=now_ns(),
            decoded=Decoded(trades=trades, quotes=quotes, dead_letters=[], statuses=[]),
            news=news,
        )
        batch = self.processor.process([frame], now_ns())
        self._commit(batch)
        n = len(trades) + len(quotes) + len(news)
        self.stats.batches += 1
        self.stats.events += n
        return n

    def _commit(self, batch: StoreBatch) -> None:
        self.hot.write(batch)  # step 3
        try:
            self.producer.begin_transaction()  # step 4
            for table, rows in batch.derived.items():
                topic = kafka.output_topic(table)
                if rows and topic in kafka.OUTPUTS:
                    for ticker, recs in kafka.group_by_ticker(rows).items():
                        self.producer.produce(topic, key=ticker.encode(), value=kafka.encode(recs))
            positions = self.consumer.position(self.consumer.assignment())
            self.producer.send_offsets_to_transaction(  # step 5
                positions, self.consumer.consumer_group_metadata(), 30
            )
            self.producer.commit_transaction(60)  # step 6
        except KafkaException as exc:
            self.stats.aborts += 1
            err = exc.args[0]
            log.warning("transaction failed, aborting and rewinding: %s", err)
            if err.txn_requires_abort():
                self.producer.abort_transaction(30)
            elif not err.retriable():
                raise
            self._rewind()
            self._assignment_changed = True  # state advanced past what was committed

    def _rewind(self) -> None:
        assignment = self.consumer.assignment()
        if not assignment:
            return
        for tp in self.consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                self.consumer.seek(TP(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._STATE:
                    raise

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.run_once()

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(10)


def lag(consumer: Consumer) -> int:
    """Sum over assigned partitions of high watermark − committed offset."""
    total = 0
    assignment = consumer.assignment()
    if not assignment:
        return 0
    for tp in consumer.committed(assignment, timeout=10):
        _low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        total += max(0, high - max(tp.offset, 0))
    return total


def wait_until(cond: Callable[[], bool], timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return cond()
