"""The simulator on the network: Polygon's stocks WebSocket and the REST endpoints, one port.

The `websockets` server answers WebSocket upgrades on any path (``ws_url`` names ``/stocks``)
and plain HTTP GETs through `process_request`: ``/v3/trades/{ticker}`` (Polygon),
``/api/v1/company-news`` (Finnhub) and ``/health``. Each HTTP response closes its connection.

WebSocket protocol, as Polygon's: greet with ``connected``; ``auth`` answers ``auth_success``
or ``auth_failed`` (then the socket is closed, 1008); ``subscribe``/``unsubscribe`` answer one
``success`` status per channel (``T.SYM``, ``Q.SYM``, ``T.*``, ``Q.*``). Events go out as JSON
arrays, one frame per generator tick (split above `MAX_EVENTS_PER_FRAME`); a malformed event is
always alone in its frame.

Generation starts when the first client has authenticated and subscribed, runs every `tick_s`
on the wall clock and stops at the configured duration or count (or at `stop()`); events made
while nobody listens still count (their trades are in the REST history).

Backpressure. Each client has a queue drained by its own sender task that awaits every
`send`, so TCP flow control paces it. The queue is bounded in bytes (`client_buffer_bytes`);
a client that falls that far behind is a slow consumer and is treated as Polygon does: its
backlog is dropped, it gets a ``slow_consumer`` status and the socket is closed with 1008
(aborted if even that cannot be written within `SLOW_CLOSE_TIMEOUT_S`). It can reconnect and
backfill the gap from REST.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tradepulse.sim.config import SimConfig
from tradepulse.sim.market import Batch, MarketGenerator
from tradepulse.sim.rest import (
    DEFAULT_HISTORY_TRADES,
    TradeHistory,
    company_news_endpoint,
    trades_endpoint,
)
from tradepulse.sim.truth import write_truth

log = logging.getLogger("tradepulse.sim")

MAX_EVENTS_PER_FRAME = 1000
SLOW_CLOSE_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 30.0


def _status(status: str, message: str) -> str:
    return orjson.dumps([{"ev": "status", "status": status, "message": message}]).decode()


CONNECTED = _status("connected", "Connected Successfully")
AUTH_SUCCESS = _status("auth_success", "authenticated")
AUTH_FAILED = _status("auth_failed", "authentication failed")


class _Close:
    """Queue sentinel: send nothing more, close with this code."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Client:
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.authed = False
        self.subs: set[str] = set()
        self.key: frozenset[str] = frozenset()
        self.queue: asyncio.Queue[str | bytes | _Close] = asyncio.Queue()
        self.queued_bytes = 0
        self.sender: asyncio.Task[None] | None = None
        self.closing = False
        self.drained = asyncio.Event()
        self.drained.set()
        self.frames_sent = 0

    def wants(self, ev: str, sym: str) -> bool:
        return f"{ev}.{sym}" in self.subs or f"{ev}.*" in self.subs


class MarketSimulator:
    """Polygon-compatible WebSocket + Polygon/Finnhub-compatible REST over generated data."""

    def __init__(
        self,
        config: SimConfig,
        *,
        tick_s: float = 0.005,
        client_buffer_bytes: int = 64 * 1024 * 1024,
        max_history_trades: int = DEFAULT_HISTORY_TRADES,
        truth_interval_s: float = 2.0,
    ) -> None:
        self.config = config
        self.tick_s = tick_s
        self.client_buffer_bytes = client_buffer_bytes
        self.truth_interval_s = truth_interval_s
        self.history = TradeHistory(max_history_trades // len(config.tickers))
        self.generator: MarketGenerator | None = None
        self.started_at_ns: int | None = None
        self.ws_url = ""
        self.http_url = ""
        self.port = 0
        self.slow_consumers = 0
        self._server: Server | None = None
        self._clients: set[_Client] = set()
        self._go = asyncio.Event()
        self._halt = False
        self._stopped = False
        self._finished = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._gen_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            max_size=1024 * 1024,
            logger=logging.getLogger("tradepulse.sim.ws"),
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        self.http_url = f"http://{shown}:{self.port}"
        self.ws_url = f"ws://{shown}:{self.port}/stocks"
        if self.config.history_s > 0:
            await self._generate_history()
        self._gen_task = asyncio.create_task(self._generate_loop(), name="sim-generate")
        if self.config.truth_dir is not None:
            self._tasks.append(asyncio.create_task(self._truth_loop(), name="sim-truth"))

    async def wait_finished(self) -> None:
        """Until the duration/count is reached and every client has been sent everything."""
        await self._finished.wait()

    async def stop(self) -> None:
        """Stop generating, flush every client, close them, write the truth, stop serving."""
        if self._stopped:
            return
        self._stopped = True
        self._halt = True
        if self._gen_task is not None:
            if not self._go.is_set():
                self._gen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gen_task
        senders = []
        for c in list(self._clients):
            if not c.closing:
                c.closing = True
                c.queue.put_nowait(_Close(1000, ""))
            if c.sender is not None:
                senders.append(c.sender)
            else:
                with contextlib.suppress(Exception):
                    await c.ws.close(1000)
        if senders:
            _, pending = await asyncio.wait(senders, timeout=FLUSH_TIMEOUT_S)
            for task in pending:
                task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.write_truth()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._finished.set()

    @property
    def ended_at_ns(self) -> int:
        return self.generator.ended_ns if self.generator is not None else time.time_ns()

    def write_truth(self) -> None:
        if self.config.truth_dir is None:
            return
        write_truth(
            self.config.truth_dir,
            self.config,
            self.generator,
            self.started_at_ns,
            self.ended_at_ns,
        )

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def subscribed(self) -> int:
        """Connections authenticated, subscribed and not closing: the ones being fed."""
        return sum(1 for c in self._clients if c.authed and c.subs and not c.closing)

    # --- generation ------------------------------------------------------------------------

    async def _generate_history(self) -> None:
        """The trading before the live start, for the REST endpoint only. The live clock then
        starts now, not at the first subscription: what is generated until a client
        subscribes reaches it in one burst, so REST history and live feed meet without a gap."""
        self.started_at_ns = time.time_ns()
        gen = self.generator = MarketGenerator(self.config, self.started_at_ns)
        began = time.monotonic()
        # Seconds of CPU for long histories: off the event loop so the port answers meanwhile.
        batch = await asyncio.to_thread(gen.advance_history)
        self.history.extend(batch.trades)
        log.info(
            "simulator: %.0f s of history, %d trades, generated in %.1f s",
            self.config.history_s,
            len(batch.trades),
            time.monotonic() - began,
        )

    async def _generate_loop(self) -> None:
        await self._go.wait()
        gen = self.generator
        if gen is None:
            self.started_at_ns = time.time_ns()
            gen = self.generator = MarketGenerator(self.config, self.started_at_ns)
        log.info("simulator: generating from %d", self.started_at_ns)
        while not self._halt:
            batch = gen.advance(time.time_ns())
            if len(batch):
                self.history.extend(batch.trades)
                self._dispatch(batch)
            if gen.finished:
                break
            await asyncio.sleep(self.tick_s)
        if gen.finished and not self._halt:
            self._tasks.append(asyncio.create_task(self._finish(), name="sim-finish"))

    async def _finish(self) -> None:
        """Generation reached its end: wait until every client has been sent everything."""
        while any(not c.drained.is_set() for c in self._clients if not c.closing):
            waits = [
                asyncio.ensure_future(c.drained.wait())
                for c in self._clients
                if not c.closing and not c.drained.is_set()
            ]
            _, pending = await asyncio.wait(waits, timeout=0.5)
            for w in pending:
                w.cancel()
        self.write_truth()
        self._finished.set()

    async def _truth_loop(self) -> None:
        while True:
            await asyncio.sleep(self.truth_interval_s)
            if self.generator is not None:
                self.write_truth()

    def _dispatch(self, batch: Batch) -> None:
        frames_by_key: dict[frozenset[str], list[bytes]] = {}
        for c in list(self._clients):
            if not c.authed or not c.subs or c.closing:
                continue
            frames = frames_by_key.get(c.key)
            if frames is None:
                frames = frames_by_key[c.key] = self._frames(c, batch)
            for frame in frames:
                self._offer(c, frame)
            for bad in batch.malformed:
                if c.closing:
                    break
                if c.wants("T", bad.ticker):
                    self._offer(c, bad.raw)

    def _frames(self, c: _Client, batch: Batch) -> list[bytes]:
        events = batch.events
        if "T.*" not in c.subs or "Q.*" not in c.subs:
            events = [e for e in events if c.wants(e["ev"], e["sym"])]
        return [
            orjson.dumps(events[i : i + MAX_EVENTS_PER_FRAME])
            for i in range(0, len(events), MAX_EVENTS_PER_FRAME)
        ]

    def _offer(self, c: _Client, frame: str | bytes) -> None:
        if c.closing:
            return
        size = len(frame)
        if c.queued_bytes + size > self.client_buffer_bytes:
            self._slow_consumer(c)
            return
        c.queued_bytes += size
        c.drained.clear()
        c.queue.put_nowait(frame)

    def drop_clients(self, code: int = 1012, reason: str = "service restart") -> int:
        """Close every connection after what is already queued for it (a provider-side
        disconnect, for fault tests); returns how many were closed. Generation goes on, so
        what is generated until a client reconnects reaches it only through REST."""
        dropped = 0
        for c in list(self._clients):
            if not c.closing:
                c.closing = True
                c.queue.put_nowait(_Close(code, reason))
                dropped += 1
        return dropped

    def _slow_consumer(self, c: _Client) -> None:
        self.slow_consumers += 1
        log.warning("simulator: closing a slow consumer (%d bytes queued)", c.queued_bytes)
        c.closing = True
        while not c.queue.empty():
            c.queue.get_nowait()
        c.queued_bytes = 0
        c.drained.set()
        c.queue.put_nowait(_status("slow_consumer", "disconnected: client is reading too slowly"))
        c.queue.put_nowait(_Close(1008, "slow consumer"))

        def abort_if_stuck() -> None:
            if c.sender is not None and not c.sender.done():
                c.ws.transport.abort()

        asyncio.get_running_loop().call_later(SLOW_CLOSE_TIMEOUT_S, abort_if_stuck)

    async def _sender(self, c: _Client) -> None:
        ws = c.ws
        try:
            while True:
                item = await c.queue.get()
                if isinstance(item, _Close):
                    await ws.close(item.code, item.reason)
                    return
                if isinstance(item, bytes):
                    await ws.send(item, text=True)
                else:
                    await ws.send(item)
                c.frames_sent += 1
                c.queued_bytes = max(0, c.queued_bytes - len(item))
                if c.queue.empty():
                    c.drained.set()
        except ConnectionClosed:
            pass
        finally:
            c.drained.set()

    # --- WebSocket -------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        c = _Client(ws)
        self._clients.add(c)
        try:
            await ws.send(CONNECTED)
            async for message in ws:
                await self._control(c, message)
                if c.closing and c.sender is None:
                    break
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(c)
            c.drained.set()
            sender = c.sender
            if sender is not None and not sender.done():
                if c.closing:
                    # stop() or a slow-consumer close: let the sender finish its last frames.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(sender), FLUSH_TIMEOUT_S)
                else:
                    sender.cancel()

    async def _control(self, c: _Client, message: str | bytes) -> None:
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            await c.ws.send(_status("error", "invalid JSON"))
            return
        if not isinstance(msg, dict):
            await c.ws.send(_status("error", "expected a JSON object"))
            return
        action = msg.get("action")
        params = msg.get("params")
        if action == "auth":
            if params == self.config.api_key:
                c.authed = True
                await c.ws.send(AUTH_SUCCESS)
                if c.sender is None:
                    c.sender = asyncio.create_task(self._sender(c), name="sim-sender")
            else:
                c.closing = True
                await c.ws.send(AUTH_FAILED)
                await c.ws.close(1008, "authentication failed")
            return
        if action not in ("subscribe", "unsubscribe"):
            await c.ws.send(_status("error", f"unknown action: {action!r}"))
            return
        if not c.authed:
            await c.ws.send(_status("error", "not authorized"))
            return
        if not isinstance(params, str):
            await c.ws.send(_status("error", "params must be a comma-separated string"))
            return
        replies = []
        for raw in params.split(","):
            channel = raw.strip()
            if not channel:
                continue
            ev, _, sym = channel.partition(".")
            if ev not in ("T", "Q") or not sym:
                replies.append(_status("error", f"unknown channel: {channel}"))
                continue
            if action == "subscribe":
                c.subs.add(f"{ev}.{sym}")
                replies.append(_status("success", f"subscribed to: {channel}"))
            else:
                c.subs.discard(f"{ev}.{sym}")
                replies.append(_status("success", f"unsubscribed to: {channel}"))
        c.key = frozenset(c.subs)
        # Replies go through the queue once the sender runs so they stay in order with data.
        for reply in replies:
            self._offer(c, reply)
        if c.subs:
            self._go.set()

    # --- HTTP ------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        try:
            status, body = self._http(request)
        except Exception:
            log.exception("simulator: HTTP handler failed for %s", request.path)
            status, body = 500, {"status": "ERROR", "error": "internal error"}
        return _json_response(status, body)

    def _http(self, request: Request) -> tuple[int, Any]:
        parts = urlsplit(request.path)
        path = unquote(parts.path).rstrip("/") or "/"
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        if path.startswith("/v3/trades/"):
            ticker = path[len("/v3/trades/") :]
            return trades_endpoint(
                self.history,
                ticker,
                query,
                headers,
                api_key=self.config.api_key,
                base_url=self.http_url,
            )
        if path == "/api/v1/company-news":
            published = self.generator.published if self.generator is not None else _no_articles
            return company_news_endpoint(published, query, headers, time.time_ns())
        if path in ("/", "/health"):
            gen = self.generator
            return 200, {
                "status": "ok",
                "generating": gen is not None and not gen.finished and not self._halt,
                "events": gen.total_events if gen is not None else 0,
                "clients": len(self._clients),
                "ws_url": self.ws_url,
            }
        return 404, {"status": "NOT_FOUND", "error": f"no route for {path}"}


def _no_articles(ticker: str, now_ns: int) -> list[Any]:
    return []


def _json_response(status: int, body: Any) -> Response:
    payload = orjson.dumps(body)
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Connection", "close"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, payload)
