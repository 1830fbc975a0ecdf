"""A loopback TCP forwarder that can take the feed down: the network fault of scenario 2."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass


@dataclass
class Attempt:
    at: float  # monotonic
    forwarded: bool


class FlakyProxy:
    """Forwards 127.0.0.1:<port> to the feed. `cut()` resets every open connection and then
    resets each new one as soon as it is accepted — a feed that is down, as a load balancer
    with no healthy backend looks — until `restore()`. Every connection attempt is recorded
    with its time, so the client's reconnect schedule can be checked from the outside."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.down = False
        self.attempts: list[Attempt] = []
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FlakyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    def cut(self) -> None:
        self.down = True
        self._reset_all()

    def restore(self) -> None:
        self.down = False

    def _reset_all(self) -> None:
        for w in list(self._open):
            w.transport.abort()
        self._open.clear()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts.append(Attempt(time.monotonic(), not self.down))
        if self.down:
            writer.transport.abort()
            return
        task = asyncio.ensure_future(self._forward(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_w)
        self._open.update(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            for w in pair:
                self._open.discard(w)
                w.transport.abort()
