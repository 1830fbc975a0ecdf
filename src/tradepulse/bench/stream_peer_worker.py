"""The two sides of the stream-framework comparison, each run in a process of its own.

`stream_peer.py` starts one of these at a time (a fresh interpreter each: spawn, never fork,
so no librdkafka thread or imported state crosses over) and reads back one `WorkerResult`.
Both consume the same input topic from its beginning in a consumer group of their own, compute
the same feature rows with the same `FeatureEngine`, produce them to an output topic keyed by
ticker, one message of msgpack rows per input message's worth of rows, and commit outputs and
input offsets in Kafka transactions. Each stops at the input count or after `max_s` seconds of
processing, whichever comes first; `seconds` runs from its first consumed message to its last
commit, so process start, imports and the consumer-group join are left out of both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tradepulse.config import Settings
from tradepulse.store.base import StoreBatch, WriteResult

# Startup (imports, producer init, group join, Quix's state setup) may take this long before
# the first message; afterwards a side that consumes nothing for IDLE_S has stalled.
SETUP_S = 120.0
IDLE_S = 30.0


@dataclass(frozen=True)
class PeerJob:
    settings: Settings  # namespaced: its topics and consumer groups are this run's own
    input_topic: str
    output_topic: str
    target_events: int  # input trades loaded: a side that consumed them all is done
    max_s: float
    state_dir: Path  # Quix's RocksDB state


@dataclass(frozen=True)
class WorkerResult:
    version: str
    events: int  # input trades consumed and committed
    seconds: float  # first consume → last commit
    commits: int  # transactions committed (ours: micro-batches; Quix: checkpoints)
    compute_s: float  # of `seconds`, inside the feature computation (the rest is the loop)


def quix_group(settings: Settings) -> str:
    return settings.namespaced("quix-features")


class NoHotStore:
    """The hot store left out of the comparison (see stream_peer.py): writes nothing."""

    def write(self, batch: StoreBatch) -> WriteResult:
        return WriteResult(0, 0, 0, 0, 0.0)

    def latest_trade(self, ticker: str) -> dict[str, Any] | None:
        return None

    def latest_quote(self, ticker: str) -> dict[str, Any] | None:
        return None

    def known_tickers(self) -> list[str]:
        return []

    def position(self, key: str) -> str | None:
        return None

    def close(self) -> None:
        pass


def run_ours(job: PeerJob) -> WorkerResult:
    """Our consume → features → produce + offsets loop (`TransactionalProcessor`), with the
    feature stage alone and no store, configured as `tradepulse processor` configures it."""
    from tradepulse import __version__
    from tradepulse.log.transactional import TransactionalProcessor
    from tradepulse.market_time import NS_PER_S
    from tradepulse.process.feature_stage import FeatureStage
    from tradepulse.process.pipeline import Processor, WorkBatch

    settings = job.settings
    compute = {"s": 0.0}

    class TimedFeatureStage(FeatureStage):
        def apply(self, batch: WorkBatch) -> None:
            t0 = time.perf_counter()
            super().apply(batch)
            compute["s"] += time.perf_counter() - t0

    def make() -> Processor:
        return Processor(
            [TimedFeatureStage(settings)], max_skew_ns=int(settings.max_clock_skew_s * NS_PER_S)
        )

    proc = TransactionalProcessor(
        settings,
        make,
        NoHotStore(),
        instance_id="stream-peer",
        max_messages=max(1, settings.batch_max_events // 8),
        poll_timeout_s=settings.batch_max_ms / 1000,
    )
    started = time.perf_counter()
    first: float | None = None
    end = last_progress = started
    try:
        while proc.stats.events < job.target_events:
            t0 = time.perf_counter()
            if first is None:
                if t0 - started > SETUP_S:
                    raise RuntimeError(f"ours: nothing consumed within {SETUP_S:g} s")
            elif t0 - first >= job.max_s or t0 - last_progress > IDLE_S:
                break
            if proc.run_once():
                end = last_progress = time.perf_counter()
                if first is None:
                    first = t0
    finally:
        proc.close()
    return WorkerResult(
        version=__version__,
        events=proc.stats.events,
        seconds=end - first if first is not None else 0.0,
        commits=proc.stats.batches,
        compute_s=compute["s"],
    )


def run_quix(job: PeerJob) -> WorkerResult:
    """A Quix Streams application doing the same: exactly-once, a stateful `apply` per message
    that calls our `FeatureEngine`, the rows to its own output topic."""
    import quixstreams
    from quixstreams import Application, State
    from quixstreams.models import Deserializer, Serializer

    from tradepulse.log import kafka
    from tradepulse.process.features import FeatureEngine, FeatureParams

    settings = job.settings

    class TradesDeserializer(Deserializer):
        # One Quix row per Kafka message: the message's trades, as our processor decodes them.
        def __init__(self) -> None:
            pass  # the base takes and ignores arguments; it is untyped

        def __call__(self, value: bytes, ctx: Any) -> list[Any]:
            return kafka.decode(kafka.TRADES, value)

    class RowsSerializer(Serializer):
        # The same value encoding as our output topics: a msgpack array of row dicts.
        def __call__(self, value: Sequence[Any], ctx: Any) -> bytes:
            return kafka.encode(value)

    app = Application(
        broker_address=settings.kafka_bootstrap,
        consumer_group=quix_group(settings),
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=job.state_dir,
        loglevel="WARNING",
        # The output side of our producer configuration, so both ship the same bytes.
        producer_extra_config={"linger.ms": 5, "compression.type": "lz4"},
    )
    source = app.topic(
        job.input_topic, key_deserializer="str", value_deserializer=TradesDeserializer()
    )
    sink = app.topic(job.output_topic, key_serializer="str", value_serializer=RowsSerializer())
    engine = FeatureEngine(FeatureParams.from_settings(settings))
    seen = {"events": 0}
    compute = {"s": 0.0}
    marks: dict[str, float] = {}

    def features(
        trades: list[Any], _key: str, _ts: int, _headers: Any, state: State[Any, Any]
    ) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        if "first" not in marks:
            marks["first"] = t0
        rows = [row for block in engine.process(trades) for row in block.rows()]
        compute["s"] += time.perf_counter() - t0
        if rows:
            # The ticker's position, checkpointed with the offsets through Quix's state store
            # and its changelog: the per-message state cost of a stateful Quix operator.
            emitted = state.get("rows", 0) + len(rows)
            state.set("rows", emitted)
            state.set("last", [rows[-1]["timestamp"], rows[-1]["sequence_number"]])
        seen["events"] += len(trades)
        if seen["events"] >= job.target_events or time.perf_counter() - marks["first"] >= job.max_s:
            app.stop()  # the loop ends after this message and commits its checkpoint
        return rows

    sdf = app.dataframe(source)
    sdf = sdf.apply(features, stateful=True, metadata=True)
    sdf = sdf.filter(bool)
    sdf.to_topic(sink)
    commits = _time_commits(app, marks)
    app.run(timeout=IDLE_S)
    end = marks.get("commit", time.perf_counter())
    return WorkerResult(
        version=quixstreams.__version__,
        events=seen["events"],
        seconds=end - marks["first"] if "first" in marks else 0.0,
        commits=commits["n"],
        compute_s=compute["s"],
    )


def _time_commits(app: Any, marks: dict[str, float]) -> dict[str, int]:
    """Note when each of the application's checkpoint commits returns (its loop calls
    `commit_checkpoint` every iteration; it commits when the interval expired, and once more,
    forced, when the loop stops). Quix has no public hook for it; without the private
    attribute the end is taken when `run` returns, which adds the shutdown."""
    counter = {"n": 0}
    ctx = getattr(app, "_processing_context", None)
    inner: Callable[..., Any] | None = getattr(ctx, "commit_checkpoint", None)
    if ctx is None or inner is None:
        return counter

    def timed(force: bool = False, revoking: bool = False) -> None:
        checkpoint = ctx.checkpoint
        committing = (force or checkpoint.expired()) and not checkpoint.empty()
        inner(force=force, revoking=revoking)
        if committing:
            counter["n"] += 1
            marks["commit"] = time.perf_counter()

    ctx.commit_checkpoint = timed
    return counter


WORKERS: dict[str, Callable[[PeerJob], WorkerResult]] = {"ours": run_ours, "quix": run_quix}


def child_main(kind: str, job: PeerJob, conn: Connection) -> None:
    """Entry point of the child process: run one side, send back its result or its error."""
    try:
        conn.send(WORKERS[kind](job))
    except BaseException as exc:
        conn.send(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        conn.close()
