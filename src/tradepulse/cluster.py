"""The cluster backend's processes: the same stages as `tradepulse run`, on real engines.

  tradepulse producer   WebSocket (Polygon or the simulator) → validate → Kafka; dead letters → SQS
  tradepulse processor  Kafka → features/anomalies/news join → DynamoDB + output topics, exactly
                        once (log/transactional.py); plus the cold sink (Kafka → S3 Parquet)
  tradepulse news       Finnhub → Kafka market.news
  tradepulse api        FastAPI over DynamoDB

Every process reads the same settings; several processors share the partitions of one
consumer group. `tradepulse run --backend cluster` starts them together as child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from tradepulse.config import Settings
from tradepulse.events import DeadLetter
from tradepulse.log import kafka
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.process.pipeline import Processor
from tradepulse.runner import echo_err, install_signal_handlers, run_until, wait_disconnected


def make_processor_factory(settings: Settings) -> Callable[[], Processor]:
    from tradepulse.process.stages import build_stages

    def make() -> Processor:
        return Processor(
            build_stages(settings), max_skew_ns=int(settings.max_clock_skew_s * NS_PER_S)
        )

    return make


# -- producer ---------------------------------------------------------------------------------


async def run_producer(
    settings: Settings,
    *,
    sim_config: Any | None = None,
    duration_s: float | None = None,
    out: Callable[[str], None] = echo_err,
) -> dict[str, int]:
    """Ingest from the WebSocket, validate, and publish to Kafka until stopped."""
    from tradepulse.sources.polygon_ws import PolygonWSClient
    from tradepulse.store.dlq_sqs import SqsDeadLetterQueue
    from tradepulse.validate import decode_frame

    kafka.ensure_topics(settings)
    producer = kafka.EventProducer(settings)
    dlq = SqsDeadLetterQueue(settings)
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(maxsize=settings.ws_queue_frames)
    stop = asyncio.Event()
    install_signal_handlers(stop)

    sim = None
    ws_url = settings.polygon_ws_url
    api_key = settings.polygon_api_key.get_secret_value() if settings.polygon_api_key else ""
    if sim_config is not None:
        from tradepulse.sim import MarketSimulator

        sim = MarketSimulator(sim_config)
        await sim.start()
        ws_url, api_key = sim.ws_url, api_key or "simulator"
        out(f"[producer] simulator on {sim.ws_url}")
    client = PolygonWSClient(
        ws_url,
        api_key,
        settings.tickers,
        queue,
        reconnect_base_s=settings.reconnect_base_s,
        reconnect_max_s=settings.reconnect_max_s,
        max_frame_bytes=settings.ws_max_frame_bytes,
    )
    counts = {"trades": 0, "quotes": 0, "dead_letters": 0}
    max_skew = int(settings.max_clock_skew_s * NS_PER_S)

    async def pump() -> None:
        while True:
            recv_ts, raw = await queue.get()
            if recv_ts < 0:
                return
            decoded = decode_frame(
                raw, recv_ts, source="polygon-ws", now_ns=now_ns(), max_skew_ns=max_skew
            )
            if decoded.trades:
                producer.send(kafka.TRADES, decoded.trades)
                counts["trades"] += len(decoded.trades)
            if decoded.quotes:
                producer.send(kafka.QUOTES, decoded.quotes)
                counts["quotes"] += len(decoded.quotes)
            if decoded.dead_letters:
                await asyncio.to_thread(dlq.send, decoded.dead_letters)
                counts["dead_letters"] += len(decoded.dead_letters)

    client_task = asyncio.create_task(client.run())
    pump_task = asyncio.create_task(pump())
    tasks = [client_task]
    if sim is not None:

        async def sim_done() -> None:
            await sim.wait_finished()
            stop.set()

        tasks.append(asyncio.create_task(sim_done()))
    await run_until(stop, duration_s)
    if sim is not None:
        await sim.stop()
        await wait_disconnected(client, timeout_s=5.0)
    await client.stop()
    for t in tasks:
        t.cancel()
        with contextlib.suppress(BaseException):
            await t
    await queue.put((-1, b""))
    await pump_task
    left = await asyncio.to_thread(producer.flush, 120.0)
    if left:
        raise RuntimeError(f"{left} Kafka messages still undelivered after 120 s")
    out(
        f"[producer] published {counts['trades']:,} trades, {counts['quotes']:,} quotes; "
        f"{counts['dead_letters']:,} dead letters to SQS"
    )
    return counts


# -- processor + cold sink ----------------------------------------------------------------------


@dataclass
class ColdSinkStats:
    flushed_rows: int = 0
    flushes: int = 0
    buffered: dict[str, int] = field(default_factory=dict)


class ColdSink:
    """Kafka → S3 Parquet, committing offsets only after the objects are written.

    Object names derive from (partition, first offset, last offset), so a flush repeated after
    a crash (offsets not yet committed) overwrites the same objects instead of duplicating.
    """

    def __init__(
        self, settings: Settings, cold: Any, *, consumer_extra: dict[str, Any] | None = None
    ) -> None:
        self.cold = cold
        self.stats = ColdSinkStats()
        self.consumer = Consumer(
            {
                **kafka.client_config(settings),
                "group.id": "tradepulse-cold",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **(consumer_extra or {}),
            }
        )
        self.consumer.subscribe(
            [kafka.TRADES, kafka.QUOTES, *kafka.OUTPUTS], on_revoke=self._on_revoke
        )
        self._pending = 0

    def _on_revoke(self, consumer: Consumer, parts: list[Any]) -> None:
        self.flush()

    def poll(self, max_messages: int = 1000, timeout_s: float = 0.2) -> int:
        msgs = [m for m in self.consumer.consume(max_messages, timeout_s) if m.error() is None]
        for m in msgs:
            self.cold.add(m.topic(), m.partition(), m.offset(), kafka.decode(m.topic(), m.value()))
        self._pending += len(msgs)
        return len(msgs)

    def flush(self) -> int:
        if not self._pending:
            return 0
        rows = int(self.cold.flush())
        self.consumer.commit(asynchronous=False)
        self._pending = 0
        self.stats.flushed_rows += rows
        self.stats.flushes += 1
        return rows

    def close(self) -> None:
        self.flush()
        self.consumer.close()


def run_processor(
    settings: Settings, *, instance_id: str, duration_s: float | None = None
) -> dict[str, int]:
    """The exactly-once processor and the cold sink, until SIGTERM/SIGINT or `duration_s`."""
    from tradepulse.log.transactional import TransactionalProcessor
    from tradepulse.store.cold.s3 import S3ColdStore
    from tradepulse.store.hot.dynamodb import DynamoHotStore

    kafka.ensure_topics(settings)
    make = make_processor_factory(settings)
    tables = make().tables
    hot = DynamoHotStore(settings, tables)
    cold = S3ColdStore(settings, tables)
    proc = TransactionalProcessor(settings, make, hot, instance_id=instance_id)
    sink = ColdSink(settings, cold)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    deadline = time.monotonic() + duration_s if duration_s else None
    last_flush = time.monotonic()
    try:
        while not stopping.is_set() and (deadline is None or time.monotonic() < deadline):
            proc.run_once()
            sink.poll()
            if time.monotonic() - last_flush >= settings.cold_flush_s:
                sink.flush()
                last_flush = time.monotonic()
    finally:
        sink.close()
        proc.close()
    return {
        "events": proc.stats.events,
        "batches": proc.stats.batches,
        "cold_rows": sink.stats.flushed_rows,
    }


def dead_letters_to_sqs(settings: Settings, dead: list[DeadLetter]) -> None:
    from tradepulse.store.dlq_sqs import SqsDeadLetterQueue

    SqsDeadLetterQueue(settings).send(dead)


# -- all together -------------------------------------------------------------------------------


def spawn(
    args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `tradepulse ARGS` as a child in its own process group."""
    stdout = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "tradepulse", *args],
        env={**os.environ, **(env or {})},
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout else None,
        start_new_session=True,
    )


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)
