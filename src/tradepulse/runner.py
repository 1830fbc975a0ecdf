"""`tradepulse run` on the embedded backend: every stage in one process, wired in one place.

    simulator (or Polygon) ──WS──▶ PolygonWSClient ──▶ EmbeddedLog (bounded)
        ──▶ Processor (decode, validate, features, anomalies, news join)
        ──▶ writer (SQLite hot store, one transaction per batch) ──▶ cold flusher (Parquet)
    FastAPI app + dashboard on the same event loop, reading the hot store.

Before the feed connects, the last `warmup_s` of trades (or, after a restart, everything since
the last stored trade) come from the REST trades endpoint through the same path, so windows
and models are warm from the first live trade; each later disconnect is filled the same way
(`sources/gapfill.py`).

Shutdown order matters for exactness: stop the simulator (it sends everything it generated,
then closes), let the client read to the close, then drain the log, the processor and the
writer, flush the cold store, and only then close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tradepulse.config import Settings
from tradepulse.events import Disconnect
from tradepulse.log.embedded import EmbeddedLog, Frame
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.ops import metrics
from tradepulse.process.pipeline import Processor
from tradepulse.sources.gapfill import PENDING_KEY, GapFiller, decode_pending, encode_pending
from tradepulse.store.base import StoreBatch, WriteResult

log = logging.getLogger("tradepulse.run")

_STOP = Frame(recv_ts=-1)  # sentinel: the log is closed, drain and finish


class StoreWriteError(Exception):
    """A batch could not be committed (disk full, unwritable data dir, corrupt store)."""


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    trades_stored: int = 0
    trades_duplicate: int = 0
    quotes_stored: int = 0
    dead_letters: int = 0
    events_in_flight: int = 0
    batches: int = 0
    last_write_s: float = 0.0
    events_per_frame: float = 1.0

    def lag(self, queued_frames: int) -> int:
        return int(self.events_in_flight + queued_frames * self.events_per_frame)


class Backpressure:
    """A typed signal from the writer to the reader: store writes got slow, pause consumption.

    When a batch write takes longer than `threshold_s`, consumption pauses for `pause_s`; the
    bounded log then fills and the WebSocket reader stops reading, which pushes back over TCP.
    """

    def __init__(self, threshold_s: float, pause_s: float) -> None:
        self.threshold_s = threshold_s
        self.pause_s = pause_s
        self.pause_until = 0.0

    def observe(self, write_latency_s: float) -> None:
        if write_latency_s > self.threshold_s:
            self.pause_until = time.monotonic() + self.pause_s
            metrics.BACKPRESSURE_PAUSES.inc()

    async def wait(self) -> None:
        # A slow write that lands during the sleep moves the deadline: wait for the new one.
        while (delay := self.pause_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)


class Pipeline:
    """Log → processor → writer, shared by live runs and replay."""

    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        write: Callable[[StoreBatch], WriteResult],
        *,
        on_written: Callable[[StoreBatch, WriteResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.log = EmbeddedLog(settings.ws_queue_frames, settings.ws_queue_bytes)
        self._write = write
        self._on_written = on_written
        # Each batch travels with the `committed` futures of its frames, resolved after its write.
        self._write_q: asyncio.Queue[tuple[StoreBatch, list[asyncio.Future[None]]] | None] = (
            asyncio.Queue(maxsize=2)
        )
        self.stats = RunStats()
        self.backpressure = Backpressure(
            settings.backpressure_latency_ms / 1000, settings.backpressure_pause_ms / 1000
        )
        # Set when a write fails: the processor stops taking frames and the run ends with the
        # error instead of hanging on a writer that will never take another batch.
        self.error: BaseException | None = None
        self.failed = asyncio.Event()

    def lag(self) -> int:
        return self.stats.lag(self.log.depth())

    async def close_log(self) -> None:
        if self.error is None:
            await self.log.put(_STOP)
        else:
            with contextlib.suppress(asyncio.QueueFull):
                self.log.queue.put_nowait(_STOP)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise StoreWriteError(f"store write failed: {self.error}") from self.error

    async def process_loop(self) -> None:
        max_frames = max(1, self.settings.batch_max_events // 8)
        wait_s = self.settings.batch_max_ms / 1000
        done = False
        while not done and self.error is None:
            await self.backpressure.wait()
            frames = await self.log.take(max_frames, wait_s)
            if any(f is _STOP for f in frames):
                done = True
                frames = [f for f in frames if f is not _STOP] + self.log.drain_nowait()
                frames = [f for f in frames if f is not _STOP]
            if not frames:
                continue
            batch = self.processor.process(frames, now_ns())
            n = len(batch)
            if n:
                self.stats.events_per_frame = 0.9 * self.stats.events_per_frame + 0.1 * (
                    n / len(frames)
                )
            self.stats.events_in_flight += n
            waiters = [f.committed for f in frames if f.committed is not None]
            await self._write_q.put((batch, waiters))
            # Yield so the socket reader and the API get the loop between CPU-bound batches.
            await asyncio.sleep(0)
        await self._write_q.put(None)

    async def write_loop(self) -> None:
        while (item := await self._write_q.get()) is not None:
            batch, waiters = item
            if self.error is not None:
                _settle(waiters, self.error)
                continue  # drain, so the processor is never blocked on a dead writer
            try:
                result = await asyncio.to_thread(self._write, batch)
            except Exception as exc:
                log.error("store write failed: %s", exc)
                self.error = exc
                self.failed.set()
                _settle(waiters, exc)
                continue
            _settle(waiters, None)
            done_ns = now_ns()
            self._account(batch, result, done_ns)
            self.backpressure.observe(result.latency_s)
            if self._on_written is not None:
                self._on_written(batch, result)

    def _account(self, batch: StoreBatch, result: WriteResult, done_ns: int) -> None:
        s = self.stats
        s.events_in_flight -= len(batch)
        s.trades_stored += result.trades_inserted
        s.trades_duplicate += result.trades_duplicate
        s.quotes_stored += result.quotes_inserted
        s.dead_letters += result.dead_letters
        s.batches += 1
        s.last_write_s = result.latency_s
        metrics.STORE_WRITE.labels("hot").observe(result.latency_s)
        metrics.EVENTS.labels("stored", "trade").inc(result.trades_inserted)
        metrics.EVENTS.labels("stored", "quote").inc(result.quotes_inserted)
        if result.trades_duplicate:
            metrics.EVENTS.labels("duplicate", "trade").inc(result.trades_duplicate)
        metrics.LAG.set(self.lag())
        _observe_latency(batch, done_ns)


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for w in waiters:
        if w.done():  # its waiter was cancelled (the run is stopping)
            continue
        if error is None:
            w.set_result(None)
        else:
            w.set_exception(StoreWriteError(f"store write failed: {error}"))


def _observe_latency(batch: StoreBatch, done_ns: int, samples: int = 64) -> None:
    """Feed the e2e histogram an even sample of the batch (observing every event costs ~1 µs)."""
    events: list[Any] = [*batch.trades, *batch.quotes]
    if not events:
        return
    step = max(1, len(events) // samples)
    for ev in events[::step]:
        metrics.E2E_LATENCY.observe(max(0, done_ns - ev.ingest_ts) / NS_PER_S)


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def status_loop(
    pipeline: Pipeline, interval_s: float, stop: asyncio.Event, out: Callable[[str], None]
) -> None:
    last_t = time.monotonic()
    last_n = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        s = pipeline.stats
        now = time.monotonic()
        n = s.trades_stored + s.quotes_stored
        rate = (n - last_n) / max(now - last_t, 1e-9)
        last_t, last_n = now, n
        out(
            f"[tradepulse] {rate:,.0f} ev/s | lag {pipeline.lag():,} | stored "
            f"{s.trades_stored:,} trades, {s.quotes_stored:,} quotes | DLQ {s.dead_letters:,}"
            f" | last write {s.last_write_s * 1000:.1f} ms"
        )


def echo_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def run_until(stop: asyncio.Event, duration_s: float | None) -> None:
    if duration_s is None:
        await stop.wait()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), duration_s)


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


def data_paths(settings: Settings) -> dict[str, Path]:
    root = settings.data_dir
    return {
        "root": root,
        "hot": root / "hot.sqlite3",
        "cold": root / "cold",
        "truth": root / "truth",
        "news_seen": root / "news_seen.json",
    }


async def periodic(
    interval_s: float, stop: asyncio.Event, fn: Callable[[], Awaitable[None]]
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        if not stop.is_set():
            try:
                await fn()
            except Exception as exc:
                # One failed turn (a cold flush on a full disk) must not end the loop for the
                # rest of the run: the next turn retries from the last recorded position.
                name = getattr(fn, "__name__", "periodic task")
                log.error("%s failed: %s; retrying in %.0f s", name, exc, interval_s)


@dataclass
class EmbeddedBackend:
    """The embedded stores and the processor, opened together for run, replay and backfill."""

    processor: Processor
    hot: Any
    cold: Any
    paths: dict[str, Path]
    last_trade_ns: dict[str, int] = field(default_factory=dict)  # this session's, set by warm

    @classmethod
    def open(cls, settings: Settings) -> EmbeddedBackend:
        from tradepulse.process.stages import build_stages
        from tradepulse.store.cold.parquet import ParquetColdStore
        from tradepulse.store.hot.sqlite import SQLiteHotStore

        paths = data_paths(settings)

        def unusable(exc: Exception) -> StoreWriteError:
            # One line naming the place (the CLI exits 1 with it), not a traceback from deep
            # inside sqlite3 for a data dir that is a file, unwritable or full.
            return StoreWriteError(f"cannot use the data dir {paths['root']}: {exc}")

        try:  # before the stages, whose imports take seconds: a bad path fails at once
            paths["root"].mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unusable(exc) from exc
        processor = Processor(
            build_stages(settings), max_skew_ns=int(settings.max_clock_skew_s * NS_PER_S)
        )
        hot: SQLiteHotStore | None = None
        try:
            hot = SQLiteHotStore(
                paths["hot"],
                processor.tables,
                retention_ns=int(settings.hot_retention_h * 3600 * NS_PER_S),
            )
            cold = ParquetColdStore(paths["cold"], hot, processor.tables)
        except (OSError, sqlite3.Error) as exc:
            if hot is not None:
                hot.close()
            raise unusable(exc) from exc
        return cls(processor, hot, cold, paths)

    def warm(self) -> int:
        """Rebuild stage state from the current session's stored trades (and the articles
        stored but not yet joined), so a restart continues where the last run stopped."""
        from tradepulse.market_time import session_start_ns
        from tradepulse.process.features import session_of

        # session_of, not trading_day: before 04:00 ET the session is still yesterday's.
        since = session_start_ns(session_of(now_ns()))
        trades = self.hot.trades_since(since)
        news = self.hot.unjoined_news()
        self.processor.warm(trades, news)
        for t in trades:  # in time order: the last one per ticker wins
            self.last_trade_ns[t.ticker] = t.timestamp
        return len(trades)

    def close(self) -> None:
        self.hot.close()


@dataclass
class RunSummary:
    trades_stored: int
    quotes_stored: int
    dead_letters: int
    duplicates: int
    seconds: float
    truth_dir: Path | None


async def run_embedded(
    settings: Settings,
    *,
    sim_config: Any | None = None,
    duration_s: float | None = None,
    serve_api: bool = True,
    status_interval_s: float = 5.0,
    out: Callable[[str], None] = echo_err,
    observers: Sequence[Callable[[StoreBatch, WriteResult, int], None]] = (),
    on_start: Callable[[Pipeline], None] | None = None,
    until_feed_closes: bool = False,
) -> RunSummary:
    """Run every stage in this process until `duration_s` passes or SIGINT/SIGTERM arrives.

    `observers` see every committed batch with its write result and the commit time (ns), and
    `on_start` gets the pipeline once it exists: the benchmark measures through these, so it
    runs exactly the code path of `tradepulse run`. `until_feed_closes` ends the run when
    the feed's server closes the connection (an external simulator that finished), after
    everything it sent has been read."""
    from tradepulse.api.app import create_app
    from tradepulse.api.publish import publish_batch
    from tradepulse.api.stream import Broadcaster
    from tradepulse.ops.health import HealthMonitor
    from tradepulse.sources.polygon_ws import SOURCE as SOURCE_WS
    from tradepulse.sources.polygon_ws import PolygonWSClient

    backend = EmbeddedBackend.open(settings)
    processor, hot, cold, paths = backend.processor, backend.hot, backend.cold, backend.paths
    health = HealthMonitor()
    broadcaster = Broadcaster()

    stop = asyncio.Event()
    install_signal_handlers(stop)
    tasks: list[asyncio.Task[Any]] = []

    server = None
    api_task: asyncio.Task[None] | None = None
    if serve_api:
        import uvicorn

        from tradepulse.store.query import QueryEngine

        # Look-backs past the hot window (hours > 48) read hot + cold through the query layer.
        engine = QueryEngine(settings.data_dir, processor.tables)
        app = create_app(settings, hot, health, broadcaster, query=engine.query_rows)
        server = uvicorn.Server(
            uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning")
        )
        # Up before the simulator's history and the warm-up, so the dashboard answers at once.
        api_task = asyncio.create_task(server.serve(), name="api")
        out(f"[tradepulse] dashboard and API on http://{settings.host}:{settings.port}")

    sim = None
    ws_url = settings.polygon_ws_url
    api_key = settings.polygon_api_key.get_secret_value() if settings.polygon_api_key else ""
    if settings.resolved_source == "sim":
        from tradepulse.sim import MarketSimulator, SimConfig

        cfg = sim_config or SimConfig(
            tickers=list(settings.tickers),
            rate=DEFAULT_SIM_RATE,
            truth_dir=paths["truth"],
            history_s=settings.warmup_s,
        )
        sim = MarketSimulator(cfg)
        began = time.monotonic()
        await sim.start()
        ws_url = sim.ws_url
        api_key = api_key or cfg.api_key
        out(f"[tradepulse] simulator on {sim.ws_url} (REST {sim.http_url})")
        if cfg.history_s > 0:
            out(
                f"[tradepulse] simulator: {cfg.history_s:.0f} s of market history generated "
                f"in {time.monotonic() - began:.1f} s"
            )

    def on_written(batch: StoreBatch, result: WriteResult) -> None:
        health.record_batch(len(batch), result.latency_s, pipeline.lag())
        if observers:
            done = now_ns()
            for observe in observers:
                observe(batch, result, done)
        # Live clients (/stream, the dashboard) get each committed batch, coalesced per ticker.
        publish_batch(broadcaster, batch)

    pipeline = Pipeline(settings, processor, hot.write, on_written=on_written)
    backend.warm()
    pending: list[asyncio.Task[None]] = []  # disconnect records on their way into the log
    if on_start is not None:
        on_start(pipeline)
    proc_task = asyncio.create_task(pipeline.process_loop(), name="processor")
    write_task = asyncio.create_task(pipeline.write_loop(), name="writer")

    filler = None
    warm_end: int | None = None
    rest = _rest_endpoint(settings, sim, api_key)
    if rest is not None:
        filler = GapFiller(
            rest[0],
            rest[1],
            settings.tickers,
            pipeline.log.put,
            frame_events=settings.batch_max_events,
            out=out,
        )
        # The built-in simulator's history ends where its live clock started.
        # (+1: REST's upper bound is exclusive, the history's last instant is not.)
        until = sim.started_at_ns + 1 if sim is not None and sim.started_at_ns else now_ns()
        unfilled = decode_pending(hot.position(PENDING_KEY))
        await warm_up(settings, filler, backend.last_trade_ns, unfilled, until, out)
        warm_end = until
        tasks.append(asyncio.create_task(filler.run(), name="gap-filler"))

    def on_connection(up: bool) -> None:
        nonlocal warm_end
        health.set_feed(up)
        if up and filler is not None and warm_end is not None:
            # What happened between the warm-up's end and this first connection.
            d = Disconnect(SOURCE_WS, warm_end, now_ns(), "warm-up until live")
            warm_end = None
            position = filler.request(d)
            pending.append(
                asyncio.create_task(pipeline.log.put(Frame(recv_ts=now_ns(), position=position)))
            )

    def on_disconnect(d: Disconnect) -> None:
        # The fill's pending record commits with the disconnect record, ahead of the live
        # frames read after the reconnect: a crash before the fill lands cannot forget it.
        position = filler.request(d) if filler is not None else None
        frame = Frame(recv_ts=now_ns(), disconnects=[d], position=position)
        pending.append(asyncio.create_task(pipeline.log.put(frame)))

    client = PolygonWSClient(
        ws_url,
        api_key,
        settings.tickers,
        pipeline.log.queue,
        reconnect_base_s=settings.reconnect_base_s,
        reconnect_max_s=settings.reconnect_max_s,
        max_frame_bytes=settings.ws_max_frame_bytes,
        on_connection=on_connection,
        on_disconnect=on_disconnect,
    )

    if until_feed_closes:
        client.expect_close()
    client_task = asyncio.create_task(client.run(), name="ws-client")

    news_task = asyncio.create_task(_news_poller(settings, pipeline, sim, out), name="news")

    async def flush_cold() -> None:
        rows = await asyncio.to_thread(cold.flush)
        if rows:
            out(f"[tradepulse] cold store: flushed {rows:,} rows to Parquet")

    tasks.append(asyncio.create_task(periodic(settings.cold_flush_s, stop, flush_cold)))
    tasks.append(
        asyncio.create_task(status_loop(pipeline, status_interval_s, stop, out), name="status")
    )
    if sim is not None:
        tasks.append(asyncio.create_task(_stop_when(sim.wait_finished(), stop)))

    async def watch_client() -> None:
        # A wrong API key ends the client with AuthError: stop the run with that message.
        # Its error is raised from client_task after the drain; letting it escape here would
        # skip stop.set(), and the run would go on until its duration (or forever).
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await client_task
        stop.set()

    watcher = asyncio.create_task(watch_client())
    tasks.append(asyncio.create_task(_stop_when(pipeline.failed.wait(), stop)))
    await run_until(stop, duration_s)
    stop.set()

    # Orderly drain: source first, then log → processor → writer, then the cold flush.
    if filler is not None and not await filler.drain(timeout_s=30.0):
        out("[tradepulse] a gap fill was still running at shutdown; see `tradepulse backfill`")
    if sim is not None:
        client.expect_close()
        await sim.stop()
        await wait_disconnected(client, timeout_s=5.0)
    await client.stop()
    # Sources stop before the log closes, so nothing they accepted is left behind in it.
    await cancel_all([client_task, watcher, news_task])
    for t in pending:
        await t
    await pipeline.close_log()
    await proc_task
    await write_task
    if pipeline.error is None:
        await flush_cold()
    if server is not None and api_task is not None:
        # A graceful exit lets uvicorn finish its lifespan; cancelling it mid-way logs a
        # CancelledError traceback on every shutdown.
        server.should_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(api_task), 5.0)
        tasks.append(api_task)
    await cancel_all(tasks)
    backend.close()
    pipeline.raise_if_failed()
    s = pipeline.stats
    if client_task.done() and not client_task.cancelled():
        exc = client_task.exception()
        if exc is not None:
            raise exc
    return RunSummary(
        trades_stored=s.trades_stored,
        quotes_stored=s.quotes_stored,
        dead_letters=s.dead_letters,
        duplicates=s.trades_duplicate,
        seconds=time.monotonic() - s.started,
        truth_dir=paths["truth"] if sim is not None else None,
    )


DEFAULT_SIM_RATE = 1000.0  # events/s of `tradepulse run`'s simulator (trades + quotes)


def _rest_endpoint(settings: Settings, sim: Any | None, ws_key: str) -> tuple[str, str] | None:
    """Where the REST trades of the live feed come from: the simulator's own endpoint, or
    Polygon's with the same key; None for sources without one."""
    if sim is not None:
        return sim.http_url, ws_key
    if settings.resolved_source == "polygon" and settings.polygon_api_key is not None:
        return settings.polygon_rest_url, settings.polygon_api_key.get_secret_value()
    return None


def warmup_ranges(
    tickers: Sequence[str], last_trade_ns: Mapping[str, int], now: int, warmup_s: float
) -> dict[str, tuple[int, int]]:
    """Per ticker, what to pull before going live: the last `warmup_s` seconds, or — after a
    restart — everything since the last trade stored this session (what the dead process
    missed), never reaching back before the session start."""
    from tradepulse.market_time import session_start_ns
    from tradepulse.process.features import session_of

    session = session_start_ns(session_of(now))
    out = {}
    for t in tickers:
        last = last_trade_ns.get(t)
        lo = last if last is not None else now - int(warmup_s * NS_PER_S)
        out[t] = (max(lo, session), now)
    return out


async def warm_up(
    settings: Settings,
    filler: GapFiller,
    last_trade_ns: Mapping[str, int],
    unfilled: Sequence[tuple[int, int]],
    until_ns: int,
    out: Callable[[str], None],
) -> None:
    """Before the live feed starts: the fills a previous run requested but did not commit,
    then the history of `warmup_ranges` up to `until_ns`, each committed before returning
    (so the live latency figures never include the warm-up's processing)."""
    from tradepulse.sources.polygon_rest import RestError

    began = time.monotonic()
    left = list(unfilled)
    try:
        for span in unfilled:
            left.remove(span)
            res = await filler.fill(
                dict.fromkeys(settings.tickers, span), (PENDING_KEY, encode_pending(left))
            )
            out(f"[tradepulse] gap left by the last run filled from REST: {res.trades:,} trades")
    except (RestError, httpx.HTTPError) as exc:
        out(f"[tradepulse] could not fill the last run's gaps from REST ({exc}); see backfill")
    ranges = warmup_ranges(settings.tickers, last_trade_ns, until_ns, settings.warmup_s)
    ranges = {t: r for t, r in ranges.items() if r[1] > r[0]}
    if not ranges:
        return
    span_s = max(hi - lo for lo, hi in ranges.values()) / NS_PER_S
    out(f"[tradepulse] warm-up: fetching up to {span_s:,.0f} s of trades from REST")
    try:
        res = await filler.fill(ranges)
    except (RestError, httpx.HTTPError) as exc:
        out(f"[tradepulse] warm-up skipped ({exc}); windows fill from the live feed instead")
        return
    out(
        f"[tradepulse] warm-up: {res.trades:,} trades processed in {time.monotonic() - began:.1f} s"
    )


async def _news_poller(
    settings: Settings, pipeline: Pipeline, sim: Any | None, out: Callable[[str], None]
) -> None:
    """Finnhub (or the simulator's Finnhub endpoint) → the log, as news frames."""
    from tradepulse.events import DeadLetter, News
    from tradepulse.sources.finnhub import poller_from_settings
    from tradepulse.validate import Decoded

    async def durably(frame: Frame) -> None:
        # The poller marks what it delivered as seen, never to be fetched again, as soon as
        # this returns: returning before the batch is committed (the frame only on the
        # in-memory log) would lose it for good to a kill in between.
        frame.committed = asyncio.get_running_loop().create_future()
        await pipeline.log.put(frame)
        await frame.committed

    async def put_news(items: list[News]) -> None:
        await durably(Frame(recv_ts=now_ns(), news=items, source="finnhub"))

    async def put_dead(items: list[DeadLetter]) -> None:
        decoded = Decoded(trades=[], quotes=[], dead_letters=list(items), statuses=[])
        await durably(Frame(recv_ts=now_ns(), decoded=decoded, source="finnhub"))

    sim_url = sim.http_url if sim is not None else None
    use_sim = sim_url is not None and not settings.finnhub_api_key
    if not use_sim and not settings.finnhub_api_key:
        out("[tradepulse] news: FINNHUB_API_KEY is not set, company news is not polled")
        return
    poller = poller_from_settings(
        settings,
        put_news,
        seen_path=data_paths(settings)["news_seen"],
        base_url=f"{sim_url}/api/v1" if use_sim else None,
        api_key="simulator" if use_sim else None,
        on_dead_letters=put_dead,
    )
    try:
        await poller.run()
    finally:
        poller.stop()


async def _stop_when(aw: Awaitable[Any], stop: asyncio.Event) -> None:
    await aw
    stop.set()


async def wait_disconnected(client: Any, timeout_s: float) -> None:
    """After the simulator closed, the client reads to the close: every frame sent is queued."""
    deadline = time.monotonic() + timeout_s
    # Polls because it waits for an Event to be *cleared*, which asyncio.Event cannot await.
    while client.connected.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def batch_pipeline(settings: Settings) -> AsyncIterator[tuple[Pipeline, EmbeddedBackend]]:
    """Stores + warmed processor + the log → processor → writer loops, for sources that push
    already-decoded frames (replay, backfill). On exit the log is drained, the cold store
    flushed and the stores closed; on error the loops are cancelled and nothing half-written
    is committed (each batch is its own transaction)."""
    backend = EmbeddedBackend.open(settings)
    try:
        backend.warm()
        pipeline = Pipeline(settings, backend.processor, backend.hot.write)
        proc_task = asyncio.create_task(pipeline.process_loop())
        write_task = asyncio.create_task(pipeline.write_loop())

        def on_done(task: asyncio.Task[None]) -> None:
            # A processor that died (a stage raised) takes no more frames: record it so
            # sources waiting for room in the log stop instead of waiting forever.
            if not task.cancelled() and task.exception() is not None and pipeline.error is None:
                pipeline.error = task.exception()
                pipeline.failed.set()

        proc_task.add_done_callback(on_done)
        try:
            yield pipeline, backend
            await pipeline.close_log()
            await proc_task
            await write_task
            pipeline.raise_if_failed()
            await asyncio.to_thread(backend.cold.flush)
        finally:
            await cancel_all([t for t in (proc_task, write_task) if not t.done()])
    finally:
        backend.close()


class ColdKeys:
    """Identities of the trades/quotes already in the cold store, per (table, day, ticker).

    The hot store's unique key only sees rows still inside the hot window: a replay or
    backfill of data older than the retention would otherwise insert those rows into hot
    again and the next flush would write a second cold copy. Replay and backfill drop such
    rows before processing (so no derived row is computed twice either). Each partition's
    sequence numbers are read once, one Parquet column, as a sorted int64 array."""

    def __init__(self, cold_root: Path) -> None:
        self.root = cold_root
        self._cache: dict[tuple[str, int, str], Any] = {}

    def _keys(self, table: str, day: int, ticker: str) -> Any:
        import numpy as np
        import pyarrow.parquet as pq

        from tradepulse.market_time import day_iso

        k = (table, day, ticker)
        got = self._cache.get(k)
        if got is None:
            d = self.root / table / f"date={day_iso(day)}" / f"ticker={ticker}"
            parts = [
                pq.read_table(f, columns=["sequence_number"]).column(0).to_numpy()
                for f in sorted(d.glob("part-*.parquet"))
            ]
            got = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
            self._cache[k] = got
        return got

    def drop_stored(self, table: str, events: list[Any]) -> tuple[list[Any], int]:
        """`events` without those whose identity the cold store holds; and how many."""
        if not events or not (self.root / table).is_dir():
            return events, 0
        import numpy as np

        from tradepulse.market_time import trading_day

        keep = np.ones(len(events), dtype=bool)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, ev in enumerate(events):
            groups.setdefault((trading_day(ev.timestamp), ev.ticker), []).append(i)
        for (day, ticker), idx in groups.items():
            known = self._keys(table, day, ticker)
            if len(known):
                seqs = np.fromiter((events[i].sequence_number for i in idx), np.int64, len(idx))
                keep[np.asarray(idx)[np.isin(seqs, known)]] = False
        dropped = int((~keep).sum())
        if not dropped:
            return events, 0
        return [ev for ev, k in zip(events, keep.tolist(), strict=True) if k], dropped


@dataclass
class ReplaySummary:
    rows: int
    trades: int
    quotes: int
    dead_letters: int
    trades_stored: int
    seconds: float
    already_cold: int = 0  # trades/quotes skipped: the cold store already holds them


async def run_replay(
    settings: Settings,
    files: list[Path],
    *,
    speed: float | None = None,
    progress: Callable[[str], None] | None = echo_err,
) -> ReplaySummary:
    """Feed flat files through the same log → processor → writer path as live data.

    `speed=None` replays as fast as the pipeline takes it; `speed=N` paces event time at N×
    real time. The file position is committed with each batch, so an interrupted replay
    resumes where it stopped; identity-keyed writes make a repeated replay a no-op.
    """
    from tradepulse.sources.replay import read_flat_file

    totals = {"rows": 0, "trades": 0, "quotes": 0, "dead": 0, "in_cold": 0}
    started = time.monotonic()
    frame_events = max(1, settings.batch_max_events)
    async with batch_pipeline(settings) as (pipeline, backend):
        hot = backend.hot
        cold_keys = ColdKeys(backend.paths["cold"])
        for path in files:
            key = f"replay:{path.resolve()}"
            start_row = int(hot.position(key) or 0)
            size = max(path.stat().st_size, 1)
            first_ts: int | None = None
            wall0 = time.monotonic()
            last_report = 0.0
            for chunk in read_flat_file(path, ingest_ts=now_ns(), start_row=start_row):
                chunk.trades, dropped_t = cold_keys.drop_stored("trades", chunk.trades)
                chunk.quotes, dropped_q = cold_keys.drop_stored("quotes", chunk.quotes)
                totals["in_cold"] += dropped_t + dropped_q
                for decoded, last, frame_ts in _replay_frames(chunk, frame_events):
                    if speed is not None and frame_ts:
                        first_ts = first_ts or frame_ts
                        due = (frame_ts - first_ts) / NS_PER_S / speed
                        ahead = due - (time.monotonic() - wall0)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                    await _wait_for_room(pipeline, max_depth=2)
                    await pipeline.log.put(
                        Frame(
                            recv_ts=now_ns(),
                            decoded=decoded,
                            source=f"replay:{path.name}",
                            # Only a chunk's last frame commits its row count: a restart
                            # re-reads a half-stored chunk, and identity makes that a no-op.
                            position=(key, str(chunk.rows)) if last else None,
                        )
                    )
                totals["trades"] += len(chunk.trades)
                totals["quotes"] += len(chunk.quotes)
                totals["dead"] += len(chunk.dead_letters)
                totals["rows"] = (
                    totals["trades"] + totals["quotes"] + totals["dead"] + totals["in_cold"]
                )
                now = time.monotonic()
                if progress is not None and now - last_report >= 1.0:
                    last_report = now
                    frac = chunk.bytes_read / size
                    progress(_progress_line(path, frac, totals["rows"], now - started))
    seconds = time.monotonic() - started
    if progress is not None:
        progress(_progress_line(files[-1], 1.0, totals["rows"], seconds))
    return ReplaySummary(
        rows=totals["rows"],
        trades=totals["trades"],
        quotes=totals["quotes"],
        dead_letters=totals["dead"],
        trades_stored=pipeline.stats.trades_stored,
        seconds=seconds,
        already_cold=totals["in_cold"],
    )


def _replay_frames(chunk: Any, size: int) -> list[tuple[Any, bool, int]]:
    """A reader chunk (one CSV block, ~100k rows) as decoded frames of at most `size` events.

    The log bounds frames, not events, and the processor takes many frames per batch
    (sized for WebSocket frames of a few events): chunk-sized frames would let a whole file
    pile up in the queue and reach the stages as one giant batch."""
    from tradepulse.validate import Decoded

    out: list[tuple[Any, bool, int]] = []
    parts = [("trades", chunk.trades), ("quotes", chunk.quotes), ("dead", chunk.dead_letters)]
    for name, items in parts:
        for i in range(0, len(items), size):
            piece = items[i : i + size]
            decoded = Decoded(
                trades=piece if name == "trades" else [],
                quotes=piece if name == "quotes" else [],
                dead_letters=piece if name == "dead" else [],
                statuses=[],
            )
            out.append((decoded, False, 0 if name == "dead" else piece[0].timestamp))
    if not out:
        out.append((Decoded(trades=[], quotes=[], dead_letters=[], statuses=[]), False, 0))
    out[-1] = (out[-1][0], True, out[-1][2])
    return out


async def _wait_for_room(pipeline: Pipeline, max_depth: int) -> None:
    """Hold the reader while the log already holds `max_depth` frames: memory then stays at a
    few frames' worth of events whatever the file size. Ends early if the writer failed."""
    while pipeline.log.depth() >= max_depth and pipeline.error is None:  # noqa: ASYNC110
        await asyncio.sleep(0.002)


def _progress_line(path: Path, frac: float, rows: int, elapsed: float) -> str:
    rate = rows / max(elapsed, 1e-9)
    eta = elapsed * (1 - frac) / frac if frac > 0 else float("inf")
    width = 30
    filled = int(width * min(frac, 1.0))
    bar = "#" * filled + "-" * (width - filled)
    eta_s = f"{eta:,.0f}s" if eta != float("inf") else "?"
    return (
        f"[replay] {path.name} [{bar}] {frac * 100:5.1f}% {rows:,} events {rate:,.0f}/s ETA {eta_s}"
    )


@dataclass
class BackfillSummary:
    fetched: int
    trades_stored: int
    duplicates: int
    dead_letters: int
    seconds: float


async def run_backfill(
    settings: Settings,
    *,
    base_url: str,
    api_key: str,
    tickers: list[str],
    from_ns: int,
    to_ns: int,
    progress: Callable[[str], None] | None = echo_err,
) -> BackfillSummary:
    """Pull `[from_ns, to_ns)` from the REST trades endpoint into the stores, idempotently:
    trades the live feed already stored count as duplicates, never as second copies."""
    import httpx

    from tradepulse.sources.polygon_rest import convert_results, fetch_trades
    from tradepulse.validate import Decoded

    started = time.monotonic()
    fetched = in_cold = 0
    async with (
        batch_pipeline(settings) as (pipeline, backend),
        httpx.AsyncClient(timeout=30.0) as client,
    ):
        cold_keys = ColdKeys(backend.paths["cold"])
        for ticker in tickers:
            async for page in fetch_trades(client, base_url, api_key, ticker, from_ns, to_ns):
                trades, dead = convert_results(ticker, page, now_ns(), "polygon-rest")
                trades, dropped = cold_keys.drop_stored("trades", trades)
                in_cold += dropped
                fetched += len(page)
                decoded = Decoded(trades=trades, quotes=[], dead_letters=dead, statuses=[])
                await _wait_for_room(pipeline, max_depth=2)  # a page is up to 50,000 trades
                await pipeline.log.put(
                    Frame(recv_ts=now_ns(), decoded=decoded, source="polygon-rest")
                )
                if progress is not None:
                    progress(f"[backfill] {ticker}: {fetched:,} trades fetched")
    s = pipeline.stats
    return BackfillSummary(
        fetched=fetched,
        trades_stored=s.trades_stored,
        duplicates=s.trades_duplicate + in_cold,
        dead_letters=s.dead_letters,
        seconds=time.monotonic() - started,
    )
