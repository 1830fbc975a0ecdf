"""DynamoDB, S3 and SQS throttling and failing under a running pipeline (issue 9): retries with
backoff, dead letters for what is invalid, nothing silently dropped, nothing stored twice.

`tradepulse processor` (with its S3 cold sink) runs as a child whose DynamoDB and S3 endpoints
are fault-injecting proxies (`aws_faults.py`); the input is published the way the producer
publishes it (each frame through `decode_frame`, valid trades and quotes to Kafka, the frame's
dead letters to SQS through the producer's `DeadLetterSender`, whose SQS endpoint is the third
proxy). Ground truth is what the feed published and rejected.

1. Flaky AWS: a quarter of all calls are answered with the services' throttling or 5xx
   errors, and a quarter of the batch calls are answered in part (DynamoDB's
   UnprocessedItems/UnprocessedKeys, SQS's Failed entries). Everything must end up stored
   exactly once, every invalid event in the DLQ with its reason, and every service must have
   seen faults and SDK retries.
2. Outage, for longer than any SDK retry budget: S3 and SQS fail every call, DynamoDB
   throttles every write of the hot per-ticker items every batch updates. Nothing published
   after the outage began may be committed — not by the processor (it cannot write DynamoDB),
   not by the cold sink (it cannot write S3) — while the processes stay up. DynamoDB and SQS
   come back and the processor is restarted while S3 is still down (it must start and catch
   up on DynamoDB, its cold sink retrying); then S3 returns, and every record of both phases
   is stored exactly once.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import orjson
import pyarrow.dataset as pads
import pytest
from aws_faults import AwsFaults
from cluster_pipeline import TICKERS, Namespace, wait_for
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as TP
from pyarrow.fs import FileType

from tradepulse.cluster.lag import GroupLag
from tradepulse.cluster.producer import DeadLetterSender, publish_decoded
from tradepulse.cluster.supervise import spawn, terminate
from tradepulse.config import Settings
from tradepulse.events import DeadLetter
from tradepulse.log import kafka
from tradepulse.log.transactional import group_id
from tradepulse.market_time import NS_PER_S, now_ns, trading_day
from tradepulse.sim import SimConfig
from tradepulse.sim.market import MarketGenerator
from tradepulse.store.cold.s3 import GROUP_ID as COLD_GROUP
from tradepulse.store.cold.s3 import cold_root, s3_filesystem
from tradepulse.validate import decode_frame
from tradepulse.validate.dlq.sqs import DlqError, SqsDeadLetterQueue

pytestmark = [pytest.mark.cluster, pytest.mark.fault, pytest.mark.timeout(600)]

RATE = 40.0  # events/s of event time, all tickers
PHASE_S = 40.0  # event time per phase
FEED_WALL_S = 8.0  # wall time over which a phase's input is published
TICK_S = 0.5  # one frame per tick of event time
BAD_RATE = 0.05  # malformed events, each in its tick's frame (or alone when not JSON)
FAULT_RATE = 0.25
PARTIAL_RATE = 0.25
# The outage: S3 and SQS fail every call; DynamoDB throttles every write of a hot key — the
# per-ticker items (latest trade and quote, session volume) that every batch updates — after
# the batch's trades went in.
OUTAGE: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "dynamodb": (("ThrottlingException",), ("PutItem", "UpdateItem")),
    "s3": (("InternalError",), None),
    "sqs": (("ServiceUnavailable",), None),
}

RESTARTED = "--- restarted ---"

Identity = tuple[str, int, int]


# -- the feed: the producer's path, with its ground truth ------------------------------------


@dataclass
class Truth:
    trades: dict[Identity, int] = field(default_factory=dict)  # identity → size
    quotes: set[Identity] = field(default_factory=set)
    dead: list[DeadLetter] = field(default_factory=list)


class Feed:
    """Generated market → frames → `decode_frame` → Kafka (valid) and SQS (dead letters).

    Dead letters go through the producer's own `DeadLetterSender`, on a thread of their own so
    that an SQS outage holds up only them (in the producer it would hold up the frame queue
    and, through TCP, the feed — which would keep the DynamoDB and S3 outage idle here)."""

    def __init__(self, ns: Namespace, sqs_endpoint: str, *, seconds: float, seed: int) -> None:
        self.ns = ns
        end = now_ns()
        self.t = end - int(seconds * NS_PER_S)
        cfg = SimConfig(
            tickers=list(TICKERS), rate=RATE, seed=seed, bad_rate=BAD_RATE, news_rate=0.0
        )
        self.gen = MarketGenerator(cfg, self.t)
        self.producer = kafka.EventProducer(ns.settings)
        self.topics = ns.topics
        self.truth = Truth()
        sender_settings = ns.settings.model_copy(update={"sqs_endpoint": sqs_endpoint})
        self.sender = DeadLetterSender(sender_settings)
        self.letters: queue.Queue[list[DeadLetter]] = queue.Queue()
        self.dlq_sends = 0
        self._dlq_thread = threading.Thread(target=self._send_dead, name="dlq", daemon=True)
        self._dlq_thread.start()

    def _send_dead(self) -> None:
        while True:
            letters = self.letters.get()
            try:
                if letters:
                    self.sender.send(letters)
                    self.dlq_sends += 1
            finally:
                self.letters.task_done()

    def publish(self, seconds: float, wall_s: float) -> None:
        """Publish the next `seconds` of event time, spread over `wall_s`."""
        until = self.t + int(seconds * NS_PER_S)
        step = int(TICK_S * NS_PER_S)
        ticks = max(1, (until - self.t) // step)
        for _ in range(ticks):
            self.t = min(until, self.t + step)
            batch = self.gen.advance(self.t)
            elements: list[object] = list(batch.events)
            frames: list[bytes] = []
            for bad in batch.malformed:
                try:
                    parsed = orjson.loads(bad.raw)
                except orjson.JSONDecodeError:
                    frames.append(bad.raw.encode())  # not JSON: a frame of its own
                    continue
                elements.extend(parsed)  # a bad element among the tick's good ones
            frames.insert(0, orjson.dumps(elements))
            for frame in frames:
                self._frame(frame)
            time.sleep(wall_s / ticks)
        assert self.producer.flush(60) == 0 and self.producer.stats.failed == 0

    def _frame(self, frame: bytes) -> None:
        decoded = decode_frame(frame, now_ns(), source="polygon-ws", now_ns=now_ns())
        publish_decoded(self.producer, self.topics, decoded)
        for t in decoded.trades:
            self.truth.trades[(t.ticker, t.timestamp, t.sequence_number)] = t.size
        self.truth.quotes.update((q.ticker, q.timestamp, q.sequence_number) for q in decoded.quotes)
        if decoded.dead_letters:
            self.truth.dead.extend(decoded.dead_letters)
            self.letters.put(list(decoded.dead_letters))

    def dead_letters_sent(self) -> bool:
        return self.letters.unfinished_tasks == 0


# -- reading back -------------------------------------------------------------------------------


def group_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Committed offset per partition of `topic` for `group` (-1: none)."""
    c = Consumer({**kafka.client_config(settings), "group.id": group, "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=30).topics[topic].partitions)
        return {tp.partition: tp.offset for tp in c.committed([TP(topic, p) for p in parts], 30)}
    finally:
        c.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    c = Consumer({**kafka.client_config(settings), "group.id": "tp-test-watermarks"})
    try:
        parts = sorted(c.list_topics(topic, timeout=30).topics[topic].partitions)
        return {p: c.get_watermark_offsets(TP(topic, p), 30, cached=False)[1] for p in parts}
    finally:
        c.close()


def lag(settings: Settings, group: str, topics: tuple[str, ...]) -> int | None:
    measure = GroupLag(settings, group=group, topics=topics)
    try:
        got = measure.try_measure()
        return None if got is None else got.total
    finally:
        measure.close()


def cold_rows(settings: Settings, table: str) -> Counter[Identity]:
    fs = s3_filesystem(settings)
    path = f"{cold_root(settings)}/{table}"
    if fs.get_file_info(path).type == FileType.NotFound:
        return Counter()
    data = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    cols = data.to_table(columns=["ticker", "timestamp", "sequence_number"]).to_pydict()
    return Counter(zip(cols["ticker"], cols["timestamp"], cols["sequence_number"], strict=True))


def line(label: str, sent: int, stored: int, lost: int, dup: int) -> str:
    return f"  {label:<14} sent {sent:>6,}  stored {stored:>6,}  lost {lost}  duplicated {dup}"


def compare(ns: Namespace, truth: Truth, label: str) -> None:
    """Print sent / stored / lost / duplicated per store; assert none lost or duplicated."""
    failures: list[str] = []
    lines = [f"{label}:"]
    hot = ns.store()
    try:
        hot_trades = Counter(
            (t.ticker, t.timestamp, t.sequence_number) for t in hot.trades_since(0)
        )
        hot_quotes = hot.count("quotes")
        latest = {t: hot.latest_trade(t) for t in TICKERS}
    finally:
        hot.close()
    sent = set(truth.trades)
    for name, got in (
        ("trades hot", hot_trades),
        ("trades cold", cold_rows(ns.settings, "trades")),
    ):
        lost, extra = len(sent - set(got)), len(set(got) - sent)
        dup = sum(n - 1 for n in got.values())
        lines.append(line(name, len(sent), sum(got.values()), lost, dup))
        if lost or dup or extra:
            failures.append(f"{name}: lost {lost}, duplicated {dup}, not sent {extra}")
    lines.append(f"  {'quotes hot':<14} sent {len(truth.quotes):>6,}  stored {hot_quotes:>6,}")
    if hot_quotes != len(truth.quotes):
        failures.append(f"quotes hot: {hot_quotes} stored, {len(truth.quotes)} sent")
    cold_quotes = cold_rows(ns.settings, "quotes")
    lost = len(truth.quotes - set(cold_quotes))
    dup = sum(n - 1 for n in cold_quotes.values())
    lines.append(line("quotes cold", len(truth.quotes), sum(cold_quotes.values()), lost, dup))
    if lost or dup or set(cold_quotes) != truth.quotes:
        failures.append(f"quotes cold: lost {lost}, duplicated {dup}")
    # The session volume is counted as trades are inserted: a write that failed after its
    # trades were in, and was retried, must still count them once.
    wrong_volume = {}
    for ticker, row in latest.items():
        want = sum(
            size
            for (t, ts, _), size in truth.trades.items()
            if t == ticker and row is not None and trading_day(ts) == row["day"]
        )
        if row is None or row.get("volume") != want:
            wrong_volume[ticker] = (None if row is None else row.get("volume"), want)
    lines.append(f"  session volume: {len(TICKERS) - len(wrong_volume)}/{len(TICKERS)} right")
    if wrong_volume:
        failures.append(f"session volume (stored, sent): {wrong_volume}")
    dlq = SqsDeadLetterQueue(ns.settings)
    try:
        waiting, in_flight = dlq.count()
        entries = dlq.peek(waiting + in_flight + 50)
    finally:
        dlq.close()
    want_dead = Counter((d.reason, d.raw, d.first_seen) for d in truth.dead)
    got_dead = Counter((e.reason, e.raw, e.first_seen) for e in entries)
    lost, dup = sum((want_dead - got_dead).values()), sum((got_dead - want_dead).values())
    reasons = Counter(e.reason.split(":")[0] for e in entries)
    lines.append(line("dead letters", len(truth.dead), len(entries), lost, dup))
    lines.append(f"  {'':<14} reasons {dict(sorted(reasons.items()))}")
    if lost or dup or not all(e.reason for e in entries):
        failures.append(f"dead letters: lost {lost}, duplicated {dup}")
    print("\n".join(lines))
    assert not failures, failures


# -- the test -----------------------------------------------------------------------------------


@pytest.fixture
def namespace(cluster_settings: Settings, tmp_path: Path) -> Iterator[Namespace]:
    ns = Namespace.create(
        f"tp-test-awsf-{uuid.uuid4().hex[:8]}",
        tmp_path / "data",
        cold_flush_s=2.0,
    )
    try:
        yield ns
    finally:
        ns.drop()


class Processor:
    """`tradepulse processor` (cold sink included) as a child, its AWS endpoints proxied."""

    def __init__(self, ns: Namespace, env: dict[str, str]) -> None:
        self.ns, self.env = ns, env
        self.log = ns.data_dir / "processor.log"
        self.proc = spawn(["processor", "--instance-id", "f0"], env, self.log)

    def text(self) -> str:
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""

    def count(self, needle: str) -> int:
        """Occurrences in the log of the running process (since the last restart)."""
        return self.text().rsplit(RESTARTED, 1)[-1].count(needle)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        return terminate(self.proc, 120.0)

    def until(self, cond: Callable[[], bool], timeout_s: float, what: str) -> None:
        """`wait_for(cond)`, failing at once with the log should the processor exit."""

        def check() -> bool:
            assert self.alive(), (
                f"the processor exited while waiting for {what}:\n" + (self.text()[-6000:])
            )
            return cond()

        wait_for(check, timeout_s, what, step_s=1.0)

    def restart(self) -> None:
        code = self.stop()
        assert code == 0, self.text()[-6000:]
        with open(self.log, "a") as fh:
            fh.write(f"{RESTARTED}\n")
        self.proc = spawn(["processor", "--instance-id", "f0"], self.env, self.log)


def test_throttling_5xx_and_outages_lose_and_duplicate_nothing(
    cluster_settings: Settings, namespace: Namespace
) -> None:
    ns = namespace
    s = ns.settings
    topics = (ns.topics.trades, ns.topics.quotes)
    processors, cold = group_id(s), s.namespaced(COLD_GROUP)
    kafka.ensure_topics(s)
    upstreams = {
        "dynamodb": str(s.dynamodb_endpoint),
        "s3": str(s.s3_endpoint),
        "sqs": str(s.sqs_endpoint),
    }
    with AwsFaults(upstreams) as faults:
        feed = Feed(ns, faults["sqs"].url, seconds=2 * PHASE_S, seed=23)
        proc = Processor(ns, ns.env | faults.env())
        started = time.monotonic()
        try:

            def drained(what: str) -> None:
                proc.until(
                    lambda: (
                        feed.dead_letters_sent()
                        and lag(s, processors, ns.topics.inputs) == 0
                        and lag(s, cold, topics) == 0
                    ),
                    240,
                    what,
                )

            # -- 1. a quarter of all calls throttled or failed ----------------------------
            faults.configure_all(FAULT_RATE, PARTIAL_RATE)
            feed.publish(PHASE_S, FEED_WALL_S)
            drained("phase 1 to be stored and dead-lettered")
            print(
                f"\nflaky AWS ({FAULT_RATE:.0%} of calls rejected), stored after "
                f"{time.monotonic() - started:.0f} s:\n{faults.describe()}"
            )
            compare(ns, feed.truth, "with throttling and 5xx")
            for p in faults:
                st = p.stats
                assert st.injected > 0 and st.retries > 0, (p.service, st)
                assert st.partial > 0 or p.service == "s3", (p.service, st)

            # -- 2. outage: every call fails ------------------------------------------------
            faults.configure_all(0.0)
            for svc, (codes, operations) in OUTAGE.items():
                faults[svc].configure(rate=1.0, codes=codes, operations=operations)
            before = faults["dynamodb"].stats.injected, faults["sqs"].stats.injected
            hot_failed, cold_failed = (
                proc.count("hot store write failed"),
                proc.count("cold sink: flush failed"),
            )
            # Everything from here on arrives while no write can succeed.
            ends = {t: end_offsets(s, t) for t in topics}
            feed.publish(PHASE_S / 2, FEED_WALL_S / 2)
            proc.until(
                lambda: (
                    proc.count("hot store write failed") >= hot_failed + 2
                    and proc.count("cold sink: flush failed") >= cold_failed + 2
                    and faults["sqs"].stats.injected > before[1]
                ),
                180,
                "the processor, the cold sink and the DLQ sender to fail and retry",
            )

            def nothing_committed_past(group: str, what: str) -> None:
                for t in topics:
                    got = group_offsets(s, group, t)
                    over = {p: (o, ends[t][p]) for p, o in got.items() if o > ends[t][p]}
                    assert not over, f"{what} committed {t} past the outage start: {over}"

            nothing_committed_past(processors, "the processor")
            nothing_committed_past(cold, "the cold sink")
            held = {svc: p.stats.injected for svc, p in faults.proxies.items()}
            print(
                f"outage: {held['dynamodb'] - before[0]:,} DynamoDB calls refused, the "
                f"processor failed {proc.count('hot store write failed') - hot_failed} writes "
                f"and committed nothing that arrived meanwhile; the cold sink failed "
                f"{proc.count('cold sink: flush failed') - cold_failed} flushes"
            )

            # DynamoDB and SQS return; the processor restarts while S3 is still down.
            faults["dynamodb"].configure(0.0)
            faults["sqs"].configure(0.0)
            proc.restart()
            feed.publish(PHASE_S / 2, FEED_WALL_S / 2)
            proc.until(
                lambda: (
                    proc.count("cold sink: flush failed") > 0
                    and lag(s, processors, ns.topics.inputs) == 0
                ),
                240,
                "the restarted processor to catch up on DynamoDB, its cold sink failing",
            )
            nothing_committed_past(cold, "the restarted cold sink")

            faults["s3"].configure(0.0)
            drained("everything to be stored once S3 and SQS are back")
        finally:
            code = proc.stop()
        print(f"after the outage, {time.monotonic() - started:.0f} s in all:\n{faults.describe()}")
        assert code == 0, proc.text()[-6000:]
        compare(ns, feed.truth, "after the outage (both phases)")


def test_a_dead_letter_send_refused_in_part_is_resumed_without_duplicates(
    cluster_settings: Settings, aws_kwargs: Callable[[str], dict[str, Any]]
) -> None:
    """25 dead letters are three SQS batches; the first is stored, then SendMessageBatch fails
    for good. The producer retries the same letters once SQS is back (DeadLetterSender): the
    retry must send the 15 SQS did not take, not all 25 again under new ids."""
    settings = cluster_settings.model_copy(
        update={"cluster_namespace": f"tp-test-dlqr-{uuid.uuid4().hex[:8]}"}
    )
    first_seen = now_ns()
    letters = [
        DeadLetter(
            "non_positive_price",
            f'{{"ev":"T","sym":"AAPL","p":0,"i":"{i}"}}',
            "test",
            first_seen + i,
        )
        for i in range(25)
    ]
    reader = SqsDeadLetterQueue(settings)
    try:
        with AwsFaults({"sqs": str(settings.sqs_endpoint)}) as faults:
            proxied = settings.model_copy(update={"sqs_endpoint": faults["sqs"].url})
            queue = SqsDeadLetterQueue(proxied)
            faults["sqs"].configure(
                rate=1.0,
                codes=("ServiceUnavailable",),
                operations=("SendMessageBatch",),
                pass_first=1,
            )
            with pytest.raises(DlqError) as refused:
                queue.send(letters)
            assert len(refused.value.unsent) == 15
            faults["sqs"].configure(0.0)
            queue.send(letters)
            print(f"\nSQS: {faults['sqs'].stats.describe()}")
        entries = reader.peek(100)
        raws = Counter(e.raw for e in entries)
        lost = sum(1 for d in letters if d.raw not in raws)
        dup = sum(n - 1 for n in raws.values())
        print(line("dead letters", len(letters), len(entries), lost, dup))
        assert (lost, dup) == (0, 0)
        assert len({e.dlq_id for e in entries}) == len(letters)
    finally:
        reader.close()
        sqs = boto3.client("sqs", **aws_kwargs("sqs"))
        sqs.delete_queue(QueueUrl=reader.url)
        sqs.close()
