"""`tradepulse processor`: Kafka → the analytic stages → DynamoDB + output topics, exactly once,
with the S3 cold sink in a thread of the same process.

The exactly-once loop, the per-partition state and its rebuild are `log/transactional.py`;
this module builds the stages and stores from the settings, runs the loop until SIGTERM/SIGINT
and reports. Several processors (each with its own `instance_id`) share the partitions of one
consumer group; adding one moves partitions to it, and it rebuilds their state from the log.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tradepulse.cluster.logs import setup_logging
from tradepulse.cluster.names import table_prefix
from tradepulse.config import Settings
from tradepulse.market_time import NS_PER_S
from tradepulse.process.pipeline import Processor
from tradepulse.runner import echo_err

if TYPE_CHECKING:
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


def run_processor(
    settings: Settings,
    *,
    instance_id: str,
    cold: bool = True,
    duration_s: float | None = None,
    status_interval_s: float = 5.0,
    out: Callable[[str], None] = echo_err,
) -> ProcessorSummary:
    """Process until SIGTERM/SIGINT (or `duration_s`); the batch in progress is finished."""
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
    proc = TransactionalProcessor(
        settings,
        make,
        hot,
        instance_id=instance_id,
        max_messages=max(1, settings.batch_max_events // 8),
        poll_timeout_s=settings.batch_max_ms / 1000,
    )
    # The sink stops on its own signal: after the loop below, once it has read to the end.
    sink_stop = threading.Event()
    sink_thread, sink = _start_cold_sink(settings, sink_stop) if cold else (None, None)
    summary = ProcessorSummary(instance_id=instance_id)
    started = time.monotonic()
    deadline = started + duration_s if duration_s else None
    next_status, last_events = started + status_interval_s, 0
    try:
        while not stopping.is_set() and (deadline is None or time.monotonic() < deadline):
            proc.run_once()
            now = time.monotonic()
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
    s = proc.stats
    summary.events, summary.batches, summary.aborts = s.events, s.batches, s.aborts
    summary.rebuilds, summary.rebuild_events = s.rebuilds, s.rebuild_events
    summary.cold_rows = sink.stats.rows if sink is not None else 0
    summary.seconds = time.monotonic() - started
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
