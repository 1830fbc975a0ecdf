"""Polygon (Massive) stocks WebSocket client: auth, subscribe, read, reconnect.

The reader does nothing but read the socket and put `(recv_ts_ns, raw)` on the bounded log;
parsing happens in the processor. A slow reader would be disconnected by the provider as a
`slow_consumer`, and a full log makes `put` wait, which stops reading and lets TCP push back.

Protocol: the server greets with a `connected` status; we send
`{"action":"auth","params":KEY}` and wait for `auth_success` (`auth_failed` raises `AuthError`:
retrying a wrong key only earns a ban), then `{"action":"subscribe","params":"T.AAPL,Q.AAPL"}`.
On any other disconnect we reconnect with exponential backoff and full jitter, resubscribe,
and record the disconnected interval: Polygon's sequence numbers have normal holes, so the
interval — not a sequence jump — is what tells a backfill what was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import CloseCode

from tradepulse.events import Disconnect
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.ops import metrics
from tradepulse.sources.finnhub import backoff_delay
from tradepulse.validate import RefusedFrame

log = logging.getLogger(__name__)

SOURCE = "polygon-ws"
NORMAL_CLOSURE = 1000  # how the simulator ends a finished run; other codes are drops


class AuthError(Exception):
    """The feed refused the API key; reconnecting cannot help."""


class ProtocolError(Exception):
    """The server did not follow the handshake (wrong URL, not a Polygon endpoint)."""


def subscribe_params(tickers: Sequence[str], channels: Sequence[str] = ("T", "Q")) -> str:
    return ",".join(f"{ch}.{t}" for t in tickers for ch in channels)


def _statuses(raw: str | bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    items = data if isinstance(data, list) else [data]
    return [m for m in items if isinstance(m, dict) and m.get("ev") == "status"]


class PolygonWSClient:
    def __init__(
        self,
        url: str,
        api_key: str,
        tickers: Sequence[str],
        queue: asyncio.Queue[Any],  # receives (recv_ts_ns, raw frame) tuples
        *,
        reconnect_base_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_frame_bytes: int = 4 * 1024 * 1024,
        handshake_timeout_s: float = 10.0,
        channels: Sequence[str] = ("T", "Q"),
        on_disconnect: Callable[[Disconnect], None] | None = None,
        on_connection: Callable[[bool], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self._api_key = api_key
        self.tickers = list(tickers)
        self.queue = queue
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_max_s = reconnect_max_s
        self.max_frame_bytes = max_frame_bytes
        self.handshake_timeout_s = handshake_timeout_s
        self.channels = list(channels)
        self.on_disconnect = on_disconnect
        self.on_connection = on_connection
        self.rng = rng or random.Random()
        self.connected = asyncio.Event()
        self.disconnects: list[Disconnect] = []
        self.connections = 0
        self.frames = 0
        self._stop = asyncio.Event()
        self._closing = False
        self._ws: ClientConnection | None = None

    def expect_close(self) -> None:
        """The server is about to close on purpose (the simulator at the end of a run): read to
        its normal closure (1000), then end instead of reconnecting. Any other close is still
        a drop: reconnect and have the gap filled."""
        self._closing = True

    async def stop(self) -> None:
        self._stop.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def run(self) -> None:
        """Read until `stop()`; raises AuthError on a refused key."""
        attempt = 0
        down_since: int | None = None
        down_reason = "not connected yet"
        while not self._stop.is_set():
            closed_normally = False
            try:
                async with connect(
                    self.url,
                    max_size=self.max_frame_bytes,
                    open_timeout=self.handshake_timeout_s,
                    proxy=None,
                ) as ws:
                    self._ws = ws
                    await self._handshake(ws)
                    self.connections += 1
                    attempt = 0
                    if down_since is not None:
                        self._record(down_since, down_reason)
                        down_since = None
                    self._set_connected(True)
                    await self._read(ws)
                    closed_normally = ws.close_code == NORMAL_CLOSURE
                    down_reason = f"closed by server ({ws.close_code})"
            except AuthError:
                raise
            except websockets.ConnectionClosed as exc:
                closed_normally = False
                down_reason = (
                    f"connection closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
                )
                if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                    # We closed it over a frame above max_frame_bytes, never read: that frame
                    # becomes a dead letter like any other rejected input.
                    note = f"frame refused unread, connection closed 1009: {exc.sent.reason}"
                    await self.queue.put((now_ns(), RefusedFrame(note)))
            except (OSError, TimeoutError, websockets.InvalidHandshake, ProtocolError) as exc:
                down_reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
                if self.connected.is_set():
                    self._set_connected(False)
                    if not (self._stop.is_set() or self._closing):
                        down_since = now_ns()
            # An expected end is a normal closure; any other close is a drop to recover from.
            if self._stop.is_set() or (self._closing and self.connections and closed_normally):
                break
            if down_since is None:
                down_since = now_ns()
            attempt += 1
            metrics.WS_RECONNECTS.inc()
            delay = backoff_delay(attempt, self.reconnect_base_s, self.reconnect_max_s, self.rng)
            log.warning("feed disconnected (%s); reconnecting in %.2f s", down_reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _set_connected(self, up: bool) -> None:
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        if self.on_connection is not None:
            self.on_connection(up)

    async def _handshake(self, ws: ClientConnection) -> None:
        async def expect(wanted: set[str]) -> dict[str, Any]:
            while True:
                raw = await asyncio.wait_for(ws.recv(), self.handshake_timeout_s)
                statuses = _statuses(raw)
                for st in statuses:
                    status = str(st.get("status"))
                    if status == "auth_failed":
                        raise AuthError(str(st.get("message") or "authentication failed"))
                    if status in wanted:
                        return st
                if not statuses:
                    raise ProtocolError(f"unexpected frame during handshake: {str(raw)[:200]}")

        await expect({"connected"})
        await ws.send(orjson.dumps({"action": "auth", "params": self._api_key}).decode())
        await expect({"auth_success"})
        params = subscribe_params(self.tickers, self.channels)
        await ws.send(orjson.dumps({"action": "subscribe", "params": params}).decode())

    async def _read(self, ws: ClientConnection) -> None:
        put = self.queue.put
        async for raw in ws:
            # The receive time is taken before a possibly waiting put: latency starts here.
            await put((now_ns(), raw))
            self.frames += 1

    def _record(self, started: int, reason: str) -> None:
        d = Disconnect(source=SOURCE, started_at=started, ended_at=now_ns(), reason=reason)
        self.disconnects.append(d)
        metrics.WS_DISCONNECTED.inc((d.ended_at - d.started_at) / NS_PER_S)
        if self.on_disconnect is not None:
            self.on_disconnect(d)
