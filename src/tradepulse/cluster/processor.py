"""`tradepulse processor`: Kafka → the analytic stages → DynamoDB + output topics, exactly once,
with the S3 cold sink in a thread of the same process.

The exactly-once loop, the per-partition state and its rebuild are `log/transactional.py`;
this module builds the stages and stores from the settings, runs the loop until SIGTERM/SIGINT
and reports. Several processors (each with its own `instance_id`) share the partitions of one
consumer group; adding one moves partitions to it, and it rebuilds their state from the log.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tradepulse.cluster.logs import setup_logging
from tradepulse.cluster.names import table_prefix
from tradepulse.cluster.summary import LatencyRecorder, write_summary
from tradepulse.config import Settings
from tradepulse.market_time import NS_PER_S
from tradepulse.process.pipeline import Processor
from tradepulse.runner import echo_err

if TYPE_CHECKING:
    from tradepulse.store.base import HotStore, StoreBatch, WriteResult
    from tradepulse.store.cold.s3 import S3ColdSink

# Within one partition the messages of different tickers interleave with a few milliseconds
# of event-time disorder; the news join waits this long past the partition's watermark before
# it closes a window on another ticker's events, so where a micro-batch ends cannot change a
# join (see log/transactional.py, "Tasks").
NEWS_LATENESS_S = 5.0
COLD_DRAIN_S = 30.0


def make_processor_factory(settings: Settings) -> Callable[[], Processor]:
    from tradepulse.process.stages import build_stages

    def make() -> Processor:
        return Processor(
            build_stages(settings, news_lateness_s=NEWS_LATENESS_S),
            max_skew_ns=int(settings.max_clock_skew_s * NS_PER_S),
        )

    return make


@dataclass
class ProcessorSummary:
    instance_id: str
    events: int = 0
    batches: int = 0
    aborts: int = 0
    rebuilds: int = 0
    rebuild_events: int = 0
    cold_rows: int = 0
    seconds: float = 0.0
    # Kafka clients replaced after a broker outage left them fenced, fatal or hung.
    consumers_replaced: int = 0
    producers_replaced: int = 0
    partitions: list[int] = field(default_factory=list)
    # LatencyRecorder.snapshot(): latency histograms and events confirmed per second.
    updated_ns: int = 0
    measured_events: int = 0
    measured_batches: int = 0
    e2e_latency_us: str = ""
    store_write_us: str = ""
    committed_per_s: list[list[int]] = field(default_factory=list)


class MeasuredStore:
    """The hot store, with every confirmed write measured by a `LatencyRecorder`: the
    transactional loop calls `write` and nothing else measures it from outside."""

    def __init__(self, inner: HotStore, latency: LatencyRecorder) -> None:
        self.inner = inner
        self.latency = latency

    def write(self, batch: StoreBatch) -> WriteResult:
        result = self.inner.write(batch)
        self.latency.record(batch.trades, batch.quotes, result.latency_s, time.time_ns())
        return result

    def latest_trade(self, ticker: str) -> dict[str, Any] | None:
        return self.inner.latest_trade(ticker)

    def latest_quote(self, ticker: str) -> dict[str, Any] | None:
        return self.inner.latest_quote(ticker)

    def known_tickers(self) -> list[str]:
        return self.inner.known_tickers()

    def position(self, key: str) -> str | None:
        return self.inner.position(key)

    def close(self) -> None:
        self.inner.close()


def run_processor(
    settings: Settings,
    *,
    instance_id: str,
    cold: bool = True,
    duration_s: float | None = None,
    status_interval_s: float = 5.0,
    summary_interval_s: float = 0.5,
    out: Callable[[str], None] = echo_err,
) -> ProcessorSummary:
    """Process until SIGTERM/SIGINT (or `duration_s`); the batch in progress is finished.
    Every `summary_interval_s` the summary so far is written (`cluster/summary.py`)."""
    from tradepulse.log import kafka
    from tradepulse.log.transactional import TransactionalProcessor
    from tradepulse.store.hot.dynamodb import DynamoHotStore

    tag = f"[processor {instance_id}]"
    setup_logging(settings, tag)
    kafka.ensure_topics(settings)
    make = make_processor_factory(settings)
    hot = DynamoHotStore(settings, make().tables, table_prefix=table_prefix(settings))
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    latency = LatencyRecorder()
    proc = TransactionalProcessor(
        settings,
        make,
        MeasuredStore(hot, latency),
        instance_id=instance_id,
        max_messages=max(1, settings.batch_max_events // 8),
        poll_timeout_s=settings.batch_max_ms / 1000,
    )
    # The sink stops on its own signal: after the loop below, once it has read to the end.
    sink_stop = threading.Event()
    sink_thread, sink = _start_cold_sink(settings, sink_stop) if cold else (None, None)
    summary = ProcessorSummary(instance_id=instance_id)
    started = time.monotonic()

    def fill() -> ProcessorSummary:
        s = proc.stats
        summary.events, summary.batches, summary.aborts = s.events, s.batches, s.aborts
        summary.rebuilds, summary.rebuild_events = s.rebuilds, s.rebuild_events
        summary.consumers_replaced = s.consumers_replaced
        summary.producers_replaced = s.producers_replaced
        summary.partitions = list(s.partitions)
        summary.cold_rows = sink.stats.rows if sink is not None else 0
        summary.seconds = time.monotonic() - started
        for key, value in latency.snapshot().items():
            setattr(summary, key, value)
        return summary

    deadline = started + duration_s if duration_s else None
    next_status, last_events = started + status_interval_s, 0
    next_summary = started
    try:
        while not stopping.is_set() and (deadline is None or time.monotonic() < deadline):
            proc.run_once()
            now = time.monotonic()
            if now >= next_summary:
                # Best effort: a full disk must not stop the processing.
                with contextlib.suppress(OSError):
                    write_summary(settings, f"processor-{instance_id}", fill())
                next_summary = now + summary_interval_s
            if now >= next_status:
                s = proc.stats
                lag = proc.lag()
                out(
                    f"{tag} {(s.events - last_events) / status_interval_s:,.0f} ev/s | "
                    f"partitions {s.partitions} | committed {s.events:,} events in "
                    f"{s.batches:,} batches | lag {'?' if lag is None else f'{lag:,}'} | "
                    f"rebuilt {s.rebuilds} "
                    f"({s.rebuild_events:,} events)"
                )
                next_status, last_events = now + status_interval_s, s.events
    finally:
        proc.close()
        if sink is not None:
            _drain_cold(sink)
        sink_stop.set()
        if sink_thread is not None:
            sink_thread.join(60)
        hot.close()
    fill()
    s = proc.stats
    out(
        f"{tag} committed {s.events:,} events in {s.batches:,} batches "
        f"({s.aborts} aborted, {s.rebuilds} partitions rebuilt)"
    )
    return summary


def _drain_cold(sink: S3ColdSink, timeout_s: float = COLD_DRAIN_S, quiet_s: float = 2.0) -> None:
    """Let the cold sink read on until it has taken nothing for `quiet_s` (the producers have
    stopped: it is at the end of its partitions), within `timeout_s`, so its last flush holds
    everything. Watched through its counters: its consumer belongs to its own thread."""
    deadline = time.monotonic() + timeout_s
    seen, quiet_since = sink.stats.messages, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = time.monotonic()
        if sink.stats.messages != seen:
            seen, quiet_since = sink.stats.messages, now
        elif now - quiet_since >= quiet_s:
            return


def _start_cold_sink(
    settings: Settings, stop: threading.Event
) -> tuple[threading.Thread, S3ColdSink]:
    """This namespace's trades and quotes → Parquet on S3 (store/cold/s3.py), in a thread."""
    from tradepulse.store.cold.s3 import S3ColdSink

    sink = S3ColdSink(settings)
    thread = threading.Thread(target=sink.run, args=(stop.is_set,), name="cold-sink", daemon=True)
    thread.start()
    return thread, sink
