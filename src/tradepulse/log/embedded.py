"""The embedded log: a bounded in-process queue of raw frames.

Bounded on purpose: when processing falls behind, `put` waits, the WebSocket reader stops
reading, and TCP flow control pushes back on the sender instead of memory growing without limit.
Bounded twice: in frames, and in bytes — a count alone lets a peer that sends frames just under
the size limit (4 MiB) hold thousands of them (GBs) in the queue.
Durability on this backend comes from the hot store: a frame's events are durable once the batch
that holds them is committed, together with the source positions it advanced.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tradepulse.events import Disconnect, News
from tradepulse.validate import Decoded


@dataclass(slots=True)
class Frame:
    """A raw frame as received (to be decoded by the processor) or already-decoded events."""

    recv_ts: int
    raw: bytes | str | None = None
    decoded: Decoded | None = None
    news: list[News] | None = None
    disconnects: list[Disconnect] | None = None
    source: str = "polygon-ws"
    position: tuple[str, str] | None = None  # (key, value) committed with the batch
    # Resolved once the batch holding this frame is committed (an exception if it failed),
    # for a source that may forget what it delivered only once that is durable.
    committed: asyncio.Future[None] | None = None


Item = Frame | tuple[int, bytes | str]


def _as_frame(item: Item) -> Frame:
    if isinstance(item, Frame):
        return item
    return Frame(recv_ts=item[0], raw=item[1])


_RECORD_BYTES = 256  # rough in-memory size of one decoded record, for frames without raw bytes


def weight(item: Item) -> int:
    """Bytes an item holds in the queue: its raw frame, or an estimate for decoded events."""
    if isinstance(item, Frame):
        if item.raw is not None:
            return len(item.raw)
        n = len(item.news or ()) + len(item.disconnects or ())
        if item.decoded is not None:
            d = item.decoded
            n += len(d.trades) + len(d.quotes) + len(d.dead_letters)
        return 64 + n * _RECORD_BYTES
    return len(item[1])


class FrameQueue(asyncio.Queue[Item]):
    """An asyncio queue full at `maxsize` items or at `max_bytes` (see `weight`), whichever
    comes first. An empty queue always takes one item, however large, so nothing is refused."""

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.bytes = 0

    def full(self) -> bool:
        return super().full() or (self.bytes >= self.max_bytes and self.qsize() > 0)

    def _put(self, item: Item) -> None:
        self.bytes += weight(item)
        super()._put(item)

    def _get(self) -> Item:
        item = super()._get()
        self.bytes -= weight(item)
        return item


class EmbeddedLog:
    """`queue` is handed to the WebSocket client, which puts `(recv_ts_ns, raw)` tuples on it;
    other sources (replay, backfill) put `Frame`s with already-decoded events."""

    def __init__(self, max_frames: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.queue: FrameQueue = FrameQueue(max_frames, max_bytes)

    async def put(self, frame: Frame) -> None:
        await self.queue.put(frame)

    def depth(self) -> int:
        return self.queue.qsize()

    async def take(self, max_frames: int, max_wait_s: float) -> list[Frame]:
        """Wait for one frame, then gather more for up to `max_wait_s` (a micro-batch)."""
        out = [_as_frame(await self.queue.get())]
        deadline = time.monotonic() + max_wait_s
        while len(out) < max_frames:
            try:
                out.append(_as_frame(self.queue.get_nowait()))
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                out.append(_as_frame(await asyncio.wait_for(self.queue.get(), remaining)))
            except TimeoutError:
                break
        return out

    def drain_nowait(self) -> list[Frame]:
        out: list[Frame] = []
        while True:
            try:
                out.append(_as_frame(self.queue.get_nowait()))
            except asyncio.QueueEmpty:
                return out
