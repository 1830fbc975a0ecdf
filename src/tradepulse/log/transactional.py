"""Exactly-once processing on Kafka: one transaction per micro-batch.

The commit protocol lives here and nowhere else. For every micro-batch:

  1. Consume up to `max_messages` (isolation.level=read_committed) from the assigned partitions
     of the three input topics (trades, quotes, news).
  2. Run each partition's own `Processor` (its *task*) over that partition's events.
  3. Write the merged `StoreBatch` to the hot store. Writes are idempotent on event identity,
     so a batch repeated after a crash rewrites the same items.
  4. Begin a transaction and produce the derived rows (features, bars, anomalies, sentiment)
     to their output topics, keyed by ticker.
  5. Add the batch's input offsets to the transaction (`send_offsets_to_transaction`, with the
     group's generation: a processor that lost its partitions can no longer commit for them).
  6. Commit. Until then read_committed readers see none of the outputs and the group's offsets
     have not moved; on an abortable failure, abort, rewind to the committed offsets and
     rebuild the tasks, whose state ran ahead of what was committed.

Tasks. The input topics are co-partitioned (equal partition counts, keyed by ticker, and the
range assignor gives a processor the same partition numbers of each), so the task of partition
p sees every trade, quote and article of its tickers. A task's results depend only on its
partition's events in log order — not on which other partitions share the process, nor on
where the log was cut into micro-batches — because its event-time watermark is its own, and
the news join waits `news_lateness_s` past it (make_processor's business) for the other
tickers of the partition, whose messages interleave with a few milliseconds of disorder.

Restarts and rebalances. A task is valid for exactly the offsets it has consumed. After every
assignment the task of each partition is compared with the group's committed offsets: a task
that matches is kept (a partition that stays through a rebalance), any other partition gets a
fresh task warmed from the log — its trades from the start of the session of its last committed
trade, its news from `news_lookback_s` before that — up to the committed offsets, without
emitting (`Processor.warm`); then the news joins whose windows had closed by then are closed
and dropped, so exactly the articles pending at the commit point are pending again. A
killed-and-restarted or rebalanced processor therefore computes what an uninterrupted one
would have. Rebuilding costs one read of the session so far, per partition taken over.

Identity. `instance_id` names a processor across restarts: it is the static group member id
(`group.instance.id`: a restarted instance takes its partitions back without a rebalance) and
the transactional id (its restart aborts the transaction the dead process left open, which
would otherwise hold back the offsets and the outputs until the transaction timed out). Two
live processes with the same id fence each other; each needs its own.

Broker outages. A stopped or killed broker must cost time, never the process: the loop waits
it out and goes on with the state it has. What librdkafka does meanwhile, and the answers:
  * consume() reports connection errors: logged, the loop polls on.
  * A step of the transaction cannot finish (a timeout, a lost coordinator): abort (retried
    while the broker cannot answer) and rewind; the batch runs again from the committed offsets.
  * The transactional producer turns fatal after the restart (an abort answered with
    INVALID_TXN_STATE, or an epoch bumped by the coordinator): a new producer with the same
    transactional id replaces it, its `init_transactions` fences the old one and aborts what that
    one left open; rewind.
  * `send_offsets_to_transaction` ignores its timeout while it looks for the group coordinator
    and can block for good after a restart (librdkafka issues 5456 and 5511): it runs on a helper
    thread, and when it has not returned in time the producer is abandoned and replaced as above.
  * A static member whose session expired while the broker was down rejoins and is fenced by its
    own new membership (FENCED_INSTANCE_ID, a fatal consumer error, librdkafka issue 3437): the
    consumer is closed and a new one joins with the same instance id; its assignment is
    reconciled like any other, so the tasks whose offsets are still committed are kept.
Each replacement is counted; more than `MAX_RECOVERIES` in `RECOVERY_WINDOW_S` (another live
process with the same instance id fencing this one, not an outage) is fatal. A broker that stays
away longer than `BROKER_WAIT_S` is fatal too: the process exits for its supervisor to restart.

Limits. A late trade that was "too late" for the features when it arrived (past the late
allowance) is merged normally during a rebuild, and a rebuild within the late allowance after
04:00 ET does not hold the previous session's tape; both change only features of trades that
arrive out of order by more than the late allowance or straddle the session boundary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import TopicPartition as TP

from tradepulse.config import Settings
from tradepulse.events import News, Quote, Trade
from tradepulse.log import history, kafka
from tradepulse.log.embedded import Frame
from tradepulse.market_time import NS_PER_MS, now_ns, session_start_ns
from tradepulse.process.features import session_of
from tradepulse.process.pipeline import Processor
from tradepulse.process.stages import NewsStage
from tradepulse.store.base import HotStore, StoreBatch
from tradepulse.validate import Decoded

log = logging.getLogger("tradepulse.processor")

GROUP = "tradepulse-processor"
TRANSACTION_TIMEOUT_MS = 60_000
# How long an unreachable broker is waited out (an abort, new producer, committed offsets).
BROKER_WAIT_S = 600.0
# send_offsets_to_transaction's own timeout, and how much longer it gets before it counts as hung.
SEND_OFFSETS_TIMEOUT_S = 10.0
SEND_OFFSETS_GRACE_S = 20.0
# Client replacements (see "Broker outages") allowed within the window before giving up.
MAX_RECOVERIES = 6
RECOVERY_WINDOW_S = 600.0


def group_id(settings: Settings) -> str:
    return settings.namespaced(GROUP)


def member_id(settings: Settings, instance_id: str) -> str:
    return settings.namespaced(f"{GROUP}-{instance_id}")


@dataclass
class ProcessorStats:
    batches: int = 0
    events: int = 0
    aborts: int = 0
    rebuilds: int = 0  # tasks warmed from the log
    rebuild_events: int = 0
    rebuild_s: float = 0.0
    kept: int = 0  # tasks kept across an assignment
    consumers_replaced: int = 0  # fenced after a broker outage
    producers_replaced: int = 0  # fatal or hung after a broker outage
    partitions: list[int] = field(default_factory=list)


@dataclass
class _Task:
    processor: Processor
    offsets: dict[str, int]  # input topic → next offset this state has consumed up to


class FatalProcessorError(RuntimeError):
    """This processor cannot go on (fenced by a newer instance, topics not co-partitioned)."""


class _ProducerHung(Exception):
    """A transactional call did not return long after its timeout (see "Broker outages")."""


class TransactionalProcessor:
    def __init__(
        self,
        settings: Settings,
        make_processor: Callable[[], Processor],
        hot: HotStore,
        *,
        instance_id: str,
        max_messages: int = 500,
        poll_timeout_s: float = 0.05,
        news_lookback_s: float = 3600.0,
        consumer_extra: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = kafka.Topics.of(settings)
        self._make_processor = make_processor
        self.hot = hot
        self.max_messages = max_messages
        self.poll_timeout_s = poll_timeout_s
        self.news_lookback_s = news_lookback_s
        self.stats = ProcessorStats()
        self.tasks: dict[int, _Task] = {}
        self._reassigned = False
        self._store_failures = 0
        self._time_column = {t.name: t.time_column for t in make_processor().tables}
        self.group = group_id(settings)
        member = member_id(settings, instance_id)
        self._consumer_config = {
            **kafka.client_config(settings),
            "group.id": self.group,
            "group.instance.id": member,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",  # co-partitions trades, quotes, news
            # A dead member's partitions move after this long (a graceful stop of a static
            # member does not leave the group either).
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            # A rebuild reads the session so far between two polls.
            "max.poll.interval.ms": 900_000,
            **(consumer_extra or {}),
        }
        # Nothing buffered here is precious (an undelivered output aborts its transaction and
        # the batch runs again), so a short transaction timeout is safe, and it bounds how long
        # a transaction left open by a process that died for good holds back its partitions.
        self._producer_config = kafka.producer_config(
            settings,
            **{
                "transactional.id": member,
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "delivery.timeout.ms": TRANSACTION_TIMEOUT_MS,
            },
        )
        self._recoveries: deque[float] = deque()
        self.consumer = Consumer(self._consumer_config)
        self.producer = self._new_producer()
        self._check_copartitioned()
        self._subscribe()

    def _subscribe(self) -> None:
        self.consumer.subscribe(
            list(self.topics.inputs),
            on_assign=self._on_change,
            on_revoke=self._on_change,
            on_lost=self._on_change,
        )

    def _new_producer(self) -> Producer:
        producer = Producer(self._producer_config)
        deadline = time.monotonic() + BROKER_WAIT_S
        while True:
            try:
                # Fences any earlier producer with this transactional id and aborts its open
                # transaction (waiting for that abort is part of the call).
                producer.init_transactions(60)
                return producer
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or time.monotonic() > deadline:
                    raise
                log.warning("transactional producer not ready (%s); retrying", err)

    def _count_recovery(self, what: str) -> None:
        now = time.monotonic()
        while self._recoveries and now - self._recoveries[0] > RECOVERY_WINDOW_S:
            self._recoveries.popleft()
        self._recoveries.append(now)
        if len(self._recoveries) > MAX_RECOVERIES:
            raise FatalProcessorError(
                f"{what}: {len(self._recoveries)} client replacements in "
                f"{RECOVERY_WINDOW_S:.0f} s; is another processor running with this instance id?"
            )

    def _replace_producer(self, reason: str) -> None:
        self._count_recovery(f"transactional producer lost ({reason})")
        log.warning("transactional producer lost (%s); starting a new one", reason)
        # The old one is dropped, not closed: it may still be blocked in a call on a helper
        # thread, which keeps it alive until that call returns (or for good).
        self.producer = self._new_producer()
        self.stats.producers_replaced += 1

    def _replace_consumer(self, err: KafkaError) -> None:
        self._count_recovery(f"consumer lost ({err.str()})")
        log.warning("consumer lost (%s); joining the group again", err.str())
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the lost consumer: %s", exc)
        self.consumer = Consumer(self._consumer_config)
        self._subscribe()
        # The new member's assignment is reconciled when its callback runs; until then the
        # tasks are kept, to be checked against the committed offsets.
        self.stats.consumers_replaced += 1

    def _check_copartitioned(self) -> None:
        md = self.consumer.list_topics(timeout=30).topics
        counts = {t: len(md[t].partitions) if t in md else 0 for t in self.topics.inputs}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise FatalProcessorError(
                f"input topics must exist with equal partition counts, got {counts}"
            )

    # -- assignment ----------------------------------------------------------------------------

    def _on_change(self, _consumer: Consumer, _parts: list[TP]) -> None:
        # Only noted here: the messages of the poll that ran this callback are dropped and
        # the tasks reconciled once it returns.
        self._reassigned = True

    def _committed(self, parts: list[TP]) -> dict[tuple[str, int], int]:
        # Committed offsets are "unstable" while a transaction that commits them is open
        # (a process that died mid-transaction): the broker answers once it is aborted. A
        # broker that is down answers nothing: waited out too.
        deadline = time.monotonic() + max(TRANSACTION_TIMEOUT_MS / 1000 + 30, BROKER_WAIT_S)
        while True:
            try:
                got = self.consumer.committed(parts, timeout=30)
                return {(tp.topic, tp.partition): tp.offset for tp in got}
            except KafkaException as exc:
                if time.monotonic() > deadline or not exc.args[0].retriable():
                    raise
                log.warning("committed offsets not available yet (%s); retrying", exc.args[0])

    def _reconcile(self) -> None:
        self._reassigned = False
        assignment = self.consumer.assignment()
        self.stats.partitions = sorted({tp.partition for tp in assignment})
        if not assignment:
            # Between a revocation and the next assignment (the range assignor revokes all):
            # keep the tasks; the next assignment checks them against the committed offsets.
            return
        committed = self._committed(assignment)
        parts = self.stats.partitions
        for p in list(self.tasks):
            if p not in parts:
                del self.tasks[p]
        kept = 0
        for p in parts:
            want = {t: committed.get((t, p), -1) for t in self.topics.inputs}
            task = self.tasks.get(p)
            if task is not None and task.offsets == want:
                kept += 1
                continue
            self.tasks[p] = self._rebuild(p, want)
        self.stats.kept += kept
        self._rewind(committed)
        log.info("assigned partitions %s (%d with their state kept)", parts, kept)

    def _rewind(self, committed: dict[tuple[str, int], int]) -> None:
        """Seek every assigned partition back to its committed offset, dropping what was
        consumed past it."""
        for (topic, p), offset in committed.items():
            target = offset if offset >= 0 else OFFSET_BEGINNING
            try:
                self.consumer.seek(TP(topic, p, target))
            except KafkaException as exc:
                # _STATE: the partition's fetcher has not started yet; it will start at the
                # committed offset, and nothing past it can have been consumed.
                if exc.args[0].code() != KafkaError._STATE:
                    raise

    # -- rebuild -------------------------------------------------------------------------------

    def _rebuild(self, partition: int, offsets: dict[str, int]) -> _Task:
        task = _Task(self._make_processor(), dict(offsets))
        trades_end = offsets[self.topics.trades]
        news_end = offsets[self.topics.news]
        if trades_end <= 0 and news_end <= 0:
            return task  # nothing committed: the task starts with the partition
        started = time.monotonic()
        topics, settings = self.topics, self.settings
        last_ms = history.message_ts_ms(settings, topics.trades, partition, trades_end - 1)
        ref_ns = last_ms * NS_PER_MS if last_ms is not None else now_ns()
        start_ms = session_start_ns(session_of(ref_ns)) // NS_PER_MS
        news_from_ms = start_ms - int(self.news_lookback_s * 1000)
        news: list[News] = []
        begin = history.offset_for_time(settings, topics.news, partition, news_from_ms)
        for chunk in history.read_records(
            settings, topics.news, kafka.NEWS, partition, begin, news_end
        ):
            news.extend(chunk)
        events = len(news)
        begin = history.offset_for_time(settings, topics.trades, partition, start_ms)
        for chunk in history.read_records(
            settings, topics.trades, kafka.TRADES, partition, begin, trades_end
        ):
            task.processor.warm(chunk, [])
            events += len(chunk)
        task.processor.warm([], news)
        # Close the joins whose windows had closed at the commit point: they were emitted then
        # (and their rows committed); what stays pending is what was pending.
        for stage in task.processor.stages:
            if isinstance(stage, NewsStage):
                stage.correlator.finalize(task.processor.watermark_ns, 0)
        self.stats.rebuilds += 1
        self.stats.rebuild_events += events
        self.stats.rebuild_s += time.monotonic() - started
        log.info(
            "partition %d rebuilt from %d events in %.1f s",
            partition,
            events,
            time.monotonic() - started,
        )
        return task

    # -- the loop ------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Process one micro-batch; return the number of events it held."""
        msgs = self.consumer.consume(self.max_messages, self.poll_timeout_s)
        for m in msgs:
            err = m.error()
            # A consumer turned fatal says so once, as a _FATAL event whose own fatal() is
            # False; looked for first, since a pending reassignment drops the messages.
            if err is not None and (err.fatal() or err.code() == KafkaError._FATAL):
                self._replace_consumer(err)
                return 0
        if self._reassigned:
            self._reconcile_or_replace()
            return 0
        by_part: dict[int, tuple[list[Trade], list[Quote], list[News]]] = {}
        ends: dict[tuple[str, int], int] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                log.warning("consumer: %s", err)
                continue
            topic, p, offset = m.topic(), m.partition(), m.offset()
            assert topic is not None and p is not None and offset is not None
            if p not in self.tasks:
                # An assignment whose callback has not run yet: handle it first.
                self._reconcile_or_replace()
                return 0
            trades, quotes, news = by_part.setdefault(p, ([], [], []))
            base = self.topics.base(topic)
            records = kafka.decode(base, m.value())
            if base == kafka.TRADES:
                trades.extend(records)
            elif base == kafka.QUOTES:
                quotes.extend(records)
            else:
                news.extend(records)
            ends[(topic, p)] = offset + 1
        if not ends:
            return 0
        now = now_ns()
        parts = []
        for p, (trades, quotes, news) in by_part.items():
            decoded = Decoded(trades=trades, quotes=quotes, dead_letters=[], statuses=[])
            frame = Frame(recv_ts=now, decoded=decoded, news=news or None)
            parts.append(self.tasks[p].processor.process([frame], now))
        batch = merge_batches(parts)
        if not self._commit(batch, ends):
            return 0
        for (topic, p), offset in ends.items():
            self.tasks[p].offsets[topic] = offset
        n = len(batch.trades) + len(batch.quotes) + sum(len(v) for _, _, v in by_part.values())
        self.stats.batches += 1
        self.stats.events += n
        return n

    def _reconcile_or_replace(self) -> None:
        try:
            self._reconcile()
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.fatal() or err.code() == KafkaError._FATAL):
                raise
            self._replace_consumer(err)

    def _commit(self, batch: StoreBatch, ends: dict[tuple[str, int], int]) -> bool:
        try:
            self.hot.write(batch)  # step 3
        except Exception as exc:
            # The store is down or refusing: keep the process (and its partitions), retry the
            # batch from the committed offsets after a pause that grows while this lasts.
            self._store_failures += 1
            pause = min(30.0, 0.5 * 2 ** min(self._store_failures, 6))
            log.error("hot store write failed (%s); retrying in %.1f s", exc, pause)
            time.sleep(pause)
            self._retry(ends)
            return False
        self._store_failures = 0
        try:
            self.producer.begin_transaction()  # step 4
            for table, rows in batch.derived.items():
                topic = self.topics.outputs.get(table)
                if rows and topic is not None:
                    column = self._time_column.get(table) or "timestamp"
                    for ticker, recs in kafka.group_by_ticker(rows).items():
                        self._produce(topic, ticker, recs, column)
            self._send_offsets([TP(t, p, off) for (t, p), off in ends.items()])  # step 5
            self._commit_transaction()  # step 6
            return True
        except _ProducerHung as exc:
            self.stats.aborts += 1
            self._replace_producer(str(exc))
        except KafkaException as exc:
            err = exc.args[0]
            self.stats.aborts += 1
            if err.fatal():
                # Fenced by a newer instance with this id, or the producer's state was lost
                # with the broker: a new producer fences this one (and is fenced in turn by a
                # newer live instance, which the recovery count turns into a fatal error).
                self._replace_producer(err.str())
            else:
                log.warning("transaction aborted, rewinding to the committed offsets: %s", err)
                self._abort()
        self._retry(ends)
        return False

    def _send_offsets(self, offsets: list[TP]) -> None:
        """`send_offsets_to_transaction` on a helper thread (a daemon: one that never returns
        must not hold up the exit); raises _ProducerHung when it has not returned
        `SEND_OFFSETS_GRACE_S` after its own timeout."""
        metadata = self.consumer.consumer_group_metadata()
        producer = self.producer
        done = threading.Event()
        failed: list[BaseException] = []

        def call() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, metadata, SEND_OFFSETS_TIMEOUT_S)
            except BaseException as exc:
                failed.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name="send-offsets", daemon=True).start()
        if not done.wait(SEND_OFFSETS_TIMEOUT_S + SEND_OFFSETS_GRACE_S):
            raise _ProducerHung(
                "send_offsets_to_transaction still blocked after "
                f"{SEND_OFFSETS_TIMEOUT_S + SEND_OFFSETS_GRACE_S:.0f} s"
            )
        if failed:
            raise failed[0]

    def _abort(self) -> None:
        """Abort the open transaction, retrying while the broker cannot answer; a producer
        that cannot abort is replaced (which aborts the transaction broker-side)."""
        deadline = time.monotonic() + BROKER_WAIT_S
        while True:
            try:
                self.producer.abort_transaction(30)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.fatal() and time.monotonic() < deadline:
                    log.warning("abort not answered yet (%s); retrying", err)
                    continue
                if time.monotonic() >= deadline:
                    raise FatalProcessorError(f"cannot abort: {err}") from exc
                self._replace_producer(f"abort failed: {err.str()}")
                return

    def _retry(self, ends: dict[tuple[str, int], int]) -> None:
        """After a batch that did not commit: its partitions' tasks ran ahead of the committed
        offsets, so they go (rebuilt at the reconcile), and every partition rewinds."""
        for _topic, p in ends:
            self.tasks.pop(p, None)
        self._reassigned = True

    def _produce(self, topic: str, ticker: str, rows: list[Any], time_column: str) -> None:
        value = kafka.encode(rows)
        ts = kafka.max_ts_ms(rows, time_column)
        while True:
            try:
                self.producer.produce(topic, key=ticker.encode(), value=value, timestamp=ts)
                return
            except BufferError:
                self.producer.poll(0.1)

    def _commit_transaction(self) -> None:
        for attempt in range(3):
            try:
                self.producer.commit_transaction(60)
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or attempt == 2:
                    raise

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.run_once()

    def lag(self) -> int | None:
        """Messages not yet committed on this processor's partitions (high watermark −
        committed offset, summed); None while Kafka cannot say."""
        assignment = self.consumer.assignment()
        if not assignment:
            return 0
        total = 0
        try:
            # One short try: a status line must not wait out a broker outage. The ends are
            # the ones the fetcher last saw (a query per partition can take seconds).
            for tp in self.consumer.committed(assignment, timeout=5):
                _low, high = self.consumer.get_watermark_offsets(
                    TP(tp.topic, tp.partition), cached=True
                )
                if high < 0:
                    return None  # not fetched yet
                total += max(0, high - max(tp.offset, 0))
        except KafkaException:
            return None
        return total

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(10)


def merge_batches(parts: list[StoreBatch]) -> StoreBatch:
    if len(parts) == 1:
        return parts[0]
    derived: dict[str, list[Any]] = {}
    for b in parts:
        for table, rows in b.derived.items():
            derived.setdefault(table, []).extend(rows)
    return StoreBatch(
        trades=[t for b in parts for t in b.trades],
        quotes=[q for b in parts for q in b.quotes],
        dead_letters=[d for b in parts for d in b.dead_letters],
        disconnects=[d for b in parts for d in b.disconnects],
        derived=derived,
    )
