"""Ours next to a real Python stream framework (Quix Streams) on the same Kafka broker and input.

The question is what a general-purpose framework costs for the same job, so both sides do the
same thing end to end and nothing else:

  input   the recording's valid trades (decoded and validated as the producer does), loaded
          once, untimed, into a fresh topic of this run: one message per ticker per frame,
          keyed by ticker, the trades topic's encoding, partitioning and partition count.
  work    the features (VWAP, rolling averages, volume z-score, momentum, VWAP deviation,
          trade frequency) of every trade, by the same `FeatureEngine`, so the rows must agree.
  output  the feature rows to an output topic of its own, keyed by ticker, and the input
          offsets, in Kafka transactions (exactly once, read_committed).

Ours is `TransactionalProcessor`, the loop `tradepulse processor` runs, with the feature stage
alone and without the hot and cold stores: in the cluster run the DynamoDB and S3 emulators
cap throughput far below either side, which would hide the comparison (and Quix has no such
sink here). Quix is an `Application` with processing_guarantee="exactly-once" and its own
consumer group, reading the topic from the beginning; otherwise its defaults (a checkpoint,
i.e. a transaction, every 5 s, where ours commits one per micro-batch). Its processing model
is what is measured: every message goes through the dataframe one at a time, here a stateful
`apply` that calls our engine on that message's trades. The engine's tapes stay in process
memory, as in our processor: Quix's `State` is a key-value store per message key, and putting
a ticker's tape (up to 22 minutes of its trades) there would serialise it on every message.
The state holds each ticker's position instead, so Quix's state store and changelog are on
the path as for any stateful operator. That is the cheapest way Quix can run this, so the
ratio errs in Quix's favour.

Each side runs in a process of its own (no shared interpreter or GIL) and one at a time, since
the machine has two cores; events/s = input trades consumed and committed / seconds from the
side's first consumed message to its last commit. Then both output topics are read back
(read_committed) and compared row by row. Every topic and consumer group of the run is deleted
at the end. Other work on the machine competes for the same cores: the ratio of two runs made
minutes apart is more robust than either absolute figure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import multiprocessing
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tradepulse.bench.feed import Recording
from tradepulse.bench.stream_peer_worker import (
    SETUP_S,
    PeerJob,
    WorkerResult,
    child_main,
    quix_group,
)
from tradepulse.config import Settings
from tradepulse.log import kafka
from tradepulse.log.transactional import group_id
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.process.features import ROW_KEYS
from tradepulse.validate import decode_frame

if importlib.util.find_spec("quixstreams") is None:
    # Quix runs only in the child process, but a missing one should fail here, at once.
    raise ImportError("quixstreams is not installed (it is in the 'bench' extra)")

# Values are equal when within this relative tolerance (both sides run the same code on the
# same trades in the same order, so anything but 0 means they saw different tapes).
REL_TOL = 1e-9
_FLOAT_KEYS = tuple(k for k in ROW_KEYS[3:] if k not in ("size", "warming_up"))
_EXACT_KEYS = ("size", "warming_up")
READ_STALL_S = 60.0
_ROWS_BASE = kafka.OUTPUT_TABLES["features"]  # what `kafka.decode` reads as rows


@dataclass
class StreamPeerResult:
    name: str
    version: str
    events: int  # input trades consumed and committed
    seconds: float  # first consumed message → last commit
    feature_rows: int  # rows in its output topic, read back read_committed
    commits: int = 0  # transactions committed
    compute_s: float = 0.0  # of `seconds`, inside the feature computation

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def loop_events_per_s(self) -> float:
        """Events/s with the feature computation taken out: what the consume → produce →
        commit loop alone allows (the bound were the features free)."""
        loop = self.seconds - self.compute_s
        return self.events / loop if loop > 0 else 0.0


@dataclass
class StreamPeers:
    ours: StreamPeerResult
    quix: StreamPeerResult
    # Every row either side committed is in the other's output with equal values, no row is
    # committed twice, and sides that consumed all the input hold the same rows (a side that
    # `max_s` stopped early holds those of a prefix of each partition).
    rows_match: bool
    max_abs_diff: float  # over the float columns of the rows both hold
    input_trades: int = 0
    input_messages: int = 0
    compared_rows: int = 0  # rows both hold
    mismatched_rows: int = 0  # rows both hold whose values differ
    duplicate_rows: int = 0  # rows committed more than once (both sides together)
    namespace: str = ""  # of the run's topics and groups (all deleted at the end)

    @property
    def ratio(self) -> float:
        """Ours over Quix in events/s."""
        q = self.quix.events_per_s
        return self.ours.events_per_s / q if q > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Both sides consumed every input trade."""
        return self.ours.events == self.quix.events == self.input_trades


def run_stream_peers(
    settings: Settings,
    rec: Recording,
    workdir: Path,
    *,
    max_s: float,
    echo: Callable[[str], None],
) -> StreamPeers:
    """Load `rec`'s trades into a fresh topic on the cluster of `settings`, run ours and then
    Quix Streams over it (each for at most `max_s` seconds of processing), compare outputs."""
    run = f"stream-peer-{uuid.uuid4().hex[:8]}"
    ns = settings.model_copy(update={"cluster_namespace": run})
    topics = kafka.Topics.of(ns)
    ours_out = topics.outputs["features"]
    quix_out = ns.namespaced("quix.features")
    state_dir = workdir / run
    admin = AdminClient(kafka.client_config(ns))
    try:
        kafka.ensure_topics(ns)
        _create_topic(admin, quix_out, ns.kafka_trades_partitions)
        trades, messages = load_trades(ns, topics.trades, rec)
        echo(
            f"[bench] stream peers: {trades:,} trades in {messages:,} messages on "
            f"{topics.trades} ({ns.kafka_trades_partitions} partitions)"
        )
        results: dict[str, WorkerResult] = {}
        for kind, out in (("ours", ours_out), ("quix", quix_out)):
            job = PeerJob(ns, topics.trades, out, trades, max_s, state_dir)
            results[kind] = r = _run_child(kind, job)
            side = _result(kind, r, 0)
            echo(
                f"[bench] stream peers: {kind} {r.events:,} trades in {r.seconds:.2f} s "
                f"({side.events_per_s:,.0f}/s; {r.commits:,} commits; {r.compute_s:.2f} s in "
                f"the features, the loop alone {side.loop_events_per_s:,.0f}/s)"
            )
        ours_rows = read_rows(ns, ours_out)
        quix_rows = read_rows(ns, quix_out)
        cmp = compare_rows(
            ours_rows,
            quix_rows,
            complete=(
                results["ours"].events == trades,
                results["quix"].events == trades,
            ),
        )
        peers = StreamPeers(
            ours=_result("tradepulse", results["ours"], len(ours_rows)),
            quix=_result("quixstreams", results["quix"], len(quix_rows)),
            rows_match=cmp.match,
            max_abs_diff=cmp.max_abs_diff,
            input_trades=trades,
            input_messages=messages,
            compared_rows=cmp.compared,
            mismatched_rows=cmp.mismatched,
            duplicate_rows=cmp.duplicates,
            namespace=run,
        )
        echo(
            f"[bench] stream peers: rows ours {len(ours_rows):,}, quix {len(quix_rows):,}, "
            f"{'match' if cmp.match else 'MISMATCH'} (max |diff| {cmp.max_abs_diff:.3g}); "
            f"ours/quix {peers.ratio:.2f}x"
        )
        return peers
    finally:
        _cleanup(admin, ns, run)
        shutil.rmtree(state_dir, ignore_errors=True)


def _result(name: str, r: WorkerResult, rows: int) -> StreamPeerResult:
    return StreamPeerResult(name, r.version, r.events, r.seconds, rows, r.commits, r.compute_s)


# --- input ----------------------------------------------------------------------------------


def load_trades(settings: Settings, topic: str, rec: Recording) -> tuple[int, int]:
    """Publish the recording's valid trades as the producer does (one message per ticker per
    frame); return (trades, messages). Quotes are not part of this comparison."""
    producer = kafka.EventProducer(settings)
    skew = int(settings.max_clock_skew_s * NS_PER_S)
    trades = messages = 0
    for frame in rec.frames:
        decoded = decode_frame(frame, now_ns(), max_skew_ns=skew)
        if decoded.trades:
            messages += producer.send(topic, decoded.trades)
            trades += len(decoded.trades)
    left = producer.flush(60)
    if left or producer.stats.failed:
        raise RuntimeError(
            f"loading the input: {left} undelivered, {producer.stats.failed} failed "
            f"({producer.stats.last_error})"
        )
    return trades, messages


# --- the children ---------------------------------------------------------------------------


def _run_child(kind: str, job: PeerJob) -> WorkerResult:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child_main, args=(kind, job, child), name=f"stream-peer-{kind}")
    proc.start()
    child.close()
    # Startup, at most max_s of processing, then the final commit and close.
    limit = SETUP_S + job.max_s + 60.0
    try:
        if not parent.poll(limit):
            raise RuntimeError(f"stream peer {kind}: no result within {limit:g} s")
        got = parent.recv()
    except EOFError:
        got = f"the process exited with code {proc.exitcode} without a result"
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        parent.close()
    if not isinstance(got, WorkerResult):
        raise RuntimeError(f"stream peer {kind} failed: {got}")
    return got


# --- output ---------------------------------------------------------------------------------


def read_rows(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every committed row of an output topic (all partitions, from the beginning)."""
    consumer = Consumer(
        {
            **kafka.client_config(settings),
            "group.id": settings.namespaced("stream-peer-reader"),  # assign() only
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    rows: list[dict[str, Any]] = []
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TP(topic, p, OFFSET_BEGINNING) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + READ_STALL_S
        while pending:
            msgs = consumer.consume(1000, 0.2)
            if msgs:
                deadline = time.monotonic() + READ_STALL_S
            elif time.monotonic() > deadline:
                raise RuntimeError(f"reading {topic}: stalled with partitions {pending} unread")
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise KafkaException(err)
                rows.extend(kafka.decode(_ROWS_BASE, m.value()))
    finally:
        consumer.close()
    return rows


@dataclass
class RowComparison:
    match: bool
    compared: int
    mismatched: int
    duplicates: int
    max_abs_diff: float


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return (row["ticker"], row["timestamp"], row["sequence_number"])


def _index(rows: Iterable[dict[str, Any]]) -> tuple[dict[tuple[str, int, int], Any], int]:
    out: dict[tuple[str, int, int], Any] = {}
    dups = 0
    for r in rows:
        k = _key(r)
        if k in out:
            dups += 1
        else:
            out[k] = r
    return out, dups


def compare_rows(
    a: list[dict[str, Any]], b: list[dict[str, Any]], *, complete: tuple[bool, bool]
) -> RowComparison:
    """Compare two sides' feature rows by trade identity (ticker, timestamp, sequence);
    `complete` says which sides consumed all the input."""
    ia, dup_a = _index(a)
    ib, dup_b = _index(b)
    common = ia.keys() & ib.keys()
    mismatched = 0
    worst = 0.0
    for k in common:
        ra, rb = ia[k], ib[k]
        bad = any(ra[c] != rb[c] for c in _EXACT_KEYS)
        for c in _FLOAT_KEYS:
            x, y = float(ra[c]), float(rb[c])
            d = abs(x - y)
            worst = max(worst, d)
            if not math.isclose(x, y, rel_tol=REL_TOL, abs_tol=REL_TOL):
                bad = True
        mismatched += bad
    if complete[0] and complete[1]:
        same_set = ia.keys() == ib.keys()
    elif complete[0]:
        same_set = ib.keys() <= ia.keys()
    elif complete[1]:
        same_set = ia.keys() <= ib.keys()
    else:
        same_set = True  # both stopped early at different points: only common rows compare
    match = same_set and mismatched == 0 and dup_a == dup_b == 0 and bool(common)
    return RowComparison(match, len(common), mismatched, dup_a + dup_b, worst)


# --- topics ---------------------------------------------------------------------------------


def _create_topic(admin: AdminClient, name: str, partitions: int) -> None:
    fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    fut[name].result(30)


def _cleanup(admin: AdminClient, settings: Settings, run: str) -> None:
    """Delete every topic of this run (its namespace: ours, Quix's output, and Quix's
    changelog, whose name carries Quix's consumer group) and the run's consumer groups."""
    with contextlib.suppress(KafkaException):
        names = [t for t in admin.list_topics(timeout=30).topics if run in t]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(KafkaException):
                    fut.result(30)
    groups = [group_id(settings), quix_group(settings)]
    with contextlib.suppress(KafkaException):
        for fut in admin.delete_consumer_groups(groups, request_timeout=30).values():
            with contextlib.suppress(KafkaException):
                fut.result(30)
