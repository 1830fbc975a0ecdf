"""`tradepulse producer`: the live feed → validation → Kafka; dead letters → SQS.

The WebSocket reader only reads (`sources/polygon_ws.py`); a second task decodes and validates
each frame with the same `decode_frame` as the embedded backend and publishes the valid trades
and quotes, one message per ticker per frame keyed by ticker, through the idempotent, acks=all
producer of `log/kafka.py` (a retried send is never duplicated, a ticker's events keep their
order). Every rejected element goes to the dead-letter queue on SQS.

With a REST endpoint (Polygon's, or the simulator's), the last `warmup_s` of trades are
published before the feed connects, so the processors' windows and models are warm from the
first live trade, and every interval the socket was down is fetched after the reconnect
(`sources/gapfill.py`, as in the embedded runner). Both overlap what Kafka may already hold;
the processors and the stores are idempotent on trade identity, so an overlap is harmless.

Backpressure and broker outages: the frame queue is bounded in frames and in bytes
(`ws_queue_frames`, `ws_queue_bytes`), Kafka's local buffer in bytes (`kafka_buffer_kb`). While
the broker is down librdkafka holds what it was given and retries it — for as long as it takes:
this producer never lets a message expire, since a live frame cannot be asked for again. Once
the buffer is full, publishing waits (without blocking the event loop), the queue fills and the
reader stops reading, so TCP pushes back on the feed. A feed that drops us meanwhile (Polygon's
slow consumer, or a keepalive timeout) is recovered like any disconnect: the gap fill reaches
back to the newest trade we had published, since that is where what the feed dropped begins.
An outage therefore costs memory up to those bounds, then latency — never a trade. A message
Kafka refuses for good (not an outage: a deleted topic, an oversized message) stops the
producer at once with the error; its restart re-publishes the warm-up window from REST.

Stopping (SIGTERM/SIGINT, `duration_s`, or the feed closing with `until_feed_closes`): the
reader stops, a gap fill in progress finishes, the queue drains, and the process exits only
once Kafka has acknowledged every message; an undelivered message makes it fail loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from tradepulse.cluster.logs import setup_logging
from tradepulse.config import Settings
from tradepulse.events import DeadLetter, Disconnect
from tradepulse.log import kafka
from tradepulse.log.embedded import Frame, FrameQueue
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.runner import echo_err, install_signal_handlers, warm_up
from tradepulse.validate import Decoded, decode_frame

log = logging.getLogger("tradepulse.producer")

_DLQ_GIVE_UP_S = 300.0


@dataclass
class ProducerSummary:
    trades: int = 0  # from the live feed
    quotes: int = 0
    dead_letters: int = 0
    frames: int = 0
    disconnects: int = 0
    rest_trades: int = 0  # warm-up and gap fills, overlap with the feed included
    seconds: float = 0.0
    # Kafka unreachable or slow: client errors librdkafka reported (each connection refused,
    # all brokers down, ...), how often and how long the local buffer was full, and the most
    # messages ever waiting for an acknowledgement at once.
    kafka_errors: int = 0
    buffer_full: int = 0
    buffer_full_s: float = 0.0
    peak_unacked: int = 0


def publish_decoded(
    producer: kafka.EventProducer, topics: kafka.Topics, decoded: Decoded
) -> tuple[int, int]:
    """Publish a frame's valid trades and quotes; return how many of each."""
    if decoded.trades:
        producer.send(topics.trades, decoded.trades)
    if decoded.quotes:
        producer.send(topics.quotes, decoded.quotes)
    return len(decoded.trades), len(decoded.quotes)


async def publish_decoded_async(
    producer: kafka.EventProducer,
    topics: kafka.Topics,
    decoded: Decoded,
    group: kafka.DeliveryGroup | None = None,
) -> tuple[int, int]:
    """`publish_decoded` for the event loop: waits for room in Kafka's local buffer."""
    if decoded.trades:
        await producer.send_async(topics.trades, decoded.trades, group)
    if decoded.quotes:
        await producer.send_async(topics.quotes, decoded.quotes, group)
    return len(decoded.trades), len(decoded.quotes)


class DeadLetterSender:
    """Dead letters to SQS, retried with backoff: a rejected event is never dropped silently,
    so after `_DLQ_GIVE_UP_S` of failures the producer stops with the error instead."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._queue: Any = None  # connected at the first dead letter

    def send(self, letters: Sequence[DeadLetter]) -> None:
        from tradepulse.validate.dlq.sqs import SqsDeadLetterQueue

        started = time.monotonic()
        delay = 0.5
        while True:
            try:
                if self._queue is None:
                    self._queue = SqsDeadLetterQueue(self.settings)
                self._queue.send(list(letters))
                return
            except Exception as exc:
                if time.monotonic() - started > _DLQ_GIVE_UP_S:
                    raise
                log.warning("dead-letter queue: %s; retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)


async def run_producer(
    settings: Settings,
    *,
    ws_url: str,
    api_key: str,
    rest_url: str | None = None,
    until_feed_closes: bool = False,
    duration_s: float | None = None,
    out: Callable[[str], None] = echo_err,
    status_interval_s: float = 5.0,
) -> ProducerSummary:
    """Ingest from the WebSocket, validate, and publish to Kafka until stopped; `rest_url`
    (with the same key) serves the warm-up and the gap fills."""
    from tradepulse.sources.gapfill import GapFiller
    from tradepulse.sources.polygon_ws import PolygonWSClient

    setup_logging(settings, "[producer]")
    topics = kafka.Topics.of(settings)
    await asyncio.to_thread(kafka.ensure_topics, settings)
    producer = kafka.EventProducer(settings, hold=True)
    dlq = DeadLetterSender(settings)
    queue = FrameQueue(settings.ws_queue_frames, settings.ws_queue_bytes)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    summary = ProducerSummary()
    started = time.monotonic()
    max_skew = int(settings.max_clock_skew_s * NS_PER_S)
    newest_live_ns = 0  # event time of the newest trade published from the feed
    fill = kafka.DeliveryGroup()  # the messages of the fill in progress

    async def put_fetched(frame: Frame) -> None:
        nonlocal fill
        if frame.decoded is not None:
            trades, _quotes = await publish_decoded_async(producer, topics, frame.decoded, fill)
            summary.rest_trades += trades
            if frame.decoded.dead_letters:
                await asyncio.to_thread(dlq.send, frame.decoded.dead_letters)
                summary.dead_letters += len(frame.decoded.dead_letters)
        if frame.committed is not None:
            # The filler waits for its last frame to be durable: on Kafka, every message of
            # the fill acknowledged — however long the broker is away.
            done, fill = fill, kafka.DeliveryGroup()
            while done.pending > 0 and not done.failed:
                producer.poll(0)
                await asyncio.sleep(0.1)
            if done.failed:
                error = RuntimeError(f"Kafka refused the fill: {done.last_error}")
                frame.committed.set_exception(error)
            else:
                frame.committed.set_result(None)

    filler = None
    if rest_url is not None:
        filler = GapFiller(
            rest_url,
            api_key,
            settings.tickers,
            put_fetched,
            frame_events=settings.batch_max_events,
            out=out,
        )
        if settings.warmup_s > 0:
            # The embedded run's warm-up; no restart gaps here (Kafka keeps what was published).
            await warm_up(settings, filler, {}, [], now_ns(), out)

    def on_disconnect(d: Disconnect) -> None:
        summary.disconnects += 1
        down = (d.ended_at - d.started_at) / NS_PER_S
        if filler is not None:
            if 0 < newest_live_ns < d.started_at:
                # After backpressure the client notices a drop late: the feed may have thrown
                # away everything after the last frame we read, not just what came after the
                # moment we noticed. The overlap with frames still queued is harmless.
                d = msgspec.structs.replace(d, started_at=newest_live_ns)
            filler.request(d)
        else:
            out(f"[producer] feed was down {down:.1f} s ({d.reason}); no REST URL to fill it")

    client = PolygonWSClient(
        ws_url,
        api_key,
        settings.tickers,
        queue,
        reconnect_base_s=settings.reconnect_base_s,
        reconnect_max_s=settings.reconnect_max_s,
        max_frame_bytes=settings.ws_max_frame_bytes,
        on_disconnect=on_disconnect,
    )
    if until_feed_closes:
        client.expect_close()

    async def pump() -> None:
        nonlocal newest_live_ns
        while True:
            item = await queue.get()
            assert not isinstance(item, Frame)  # the client puts (recv_ts, raw) only
            recv_ts, raw = item
            if recv_ts < 0:
                return
            decoded = decode_frame(
                raw, recv_ts, source="polygon-ws", now_ns=now_ns(), max_skew_ns=max_skew
            )
            trades, quotes = await publish_decoded_async(producer, topics, decoded)
            if decoded.trades:
                newest_live_ns = max(newest_live_ns, max(t.timestamp for t in decoded.trades))
            summary.trades += trades
            summary.quotes += quotes
            summary.frames += 1
            summary.peak_unacked = max(summary.peak_unacked, producer.unacked())
            if producer.stats.failed:
                # Never an outage (nothing expires): Kafka refused a message for good.
                raise RuntimeError(
                    f"Kafka refused {producer.stats.failed} messages: {producer.stats.last_error}"
                )
            if decoded.dead_letters:
                await asyncio.to_thread(dlq.send, decoded.dead_letters)
                summary.dead_letters += len(decoded.dead_letters)

    async def status() -> None:
        last, last_n = time.monotonic(), 0
        while True:
            await asyncio.sleep(status_interval_s)
            producer.poll(0)  # delivery reports and client errors, while no frame comes
            n = summary.trades + summary.quotes
            now = time.monotonic()
            full = " (local buffer full: feed paused)" if producer.buffer_full() else ""
            out(
                f"[producer] {(n - last_n) / (now - last):,.0f} ev/s | published "
                f"{summary.trades:,} trades, {summary.quotes:,} quotes | DLQ "
                f"{summary.dead_letters:,} | queue {queue.qsize()} | Kafka unacked "
                f"{producer.unacked():,}{full}"
            )
            last, last_n = now, n

    client_task = asyncio.create_task(client.run(), name="ws-client")
    pump_task = asyncio.create_task(pump(), name="publish")
    status_task = asyncio.create_task(status(), name="status")
    fill_task = asyncio.create_task(filler.run(), name="gap-fill") if filler else None
    waiters = [asyncio.create_task(stop.wait()), client_task, pump_task]
    if fill_task is not None:
        waiters.append(fill_task)  # a fill Kafka refused ends the run (it raises)
    await asyncio.wait(waiters, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
    await client.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await client_task  # re-raises AuthError and friends
    if fill_task is not None and fill_task.done():
        fill_task.result()  # re-raises the refused fill
    if filler is not None and not await filler.drain(timeout_s=30.0):
        out("[producer] a gap fill was still running at shutdown; its interval stays missing")
    if not pump_task.done():
        await queue.put((-1, b""))
    await pump_task  # re-raises a failed dead-letter send or a message Kafka refused
    for t in (waiters[0], status_task, fill_task):
        if t is not None:
            t.cancel()
    left = await asyncio.to_thread(producer.flush, 120.0)
    summary.kafka_errors = producer.stats.client_errors
    summary.buffer_full = producer.stats.buffer_full
    summary.buffer_full_s = round(producer.stats.buffer_full_s, 3)
    if left or producer.stats.failed:
        raise RuntimeError(
            f"Kafka did not acknowledge {left + producer.stats.failed} messages "
            f"({producer.stats.last_error or producer.stats.last_client_error or 'timed out'})"
        )
    summary.seconds = time.monotonic() - started
    out(
        f"[producer] published {summary.trades:,} trades, {summary.quotes:,} quotes "
        f"(+{summary.rest_trades:,} trades from REST); {summary.dead_letters:,} dead letters "
        "to SQS"
    )
    return summary
