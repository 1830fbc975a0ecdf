"""Adversarial WebSocket input: hostile element values and a scripted hostile Polygon peer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tradepulse.market_time import NS_PER_MS

# Values that break a field of an otherwise valid trade: wrong types, non-finite and huge
# numbers, negatives, hostile strings. (NaN and Infinity reach us as the non-standard JSON
# literals `json.dumps` writes for them.)
HOSTILE_VALUES: tuple[Any, ...] = (
    None,
    True,
    "",
    "12.5",
    [],
    {},
    [[[[1]]]],
    {"$gt": ""},
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    -1e308,
    0,
    2**63,
    2**64 + 1,
    -(2**63) - 1,
    10**400,
    1e308,
    "ÅAPL",
    "AAPL\u0000",
    "ＡＡＰＬ",
    "\u202eLPAA",
    "A" * 100_000,
    "𝔄𝔄𝔓𝔏",
)


def now_ms() -> int:
    return time.time_ns() // NS_PER_MS


def trade(seq: int, sym: str = "AAPL", **over: Any) -> dict[str, Any]:
    t = {"ev": "T", "sym": sym, "i": f"id{seq}", "x": 4, "p": 100.0 + seq % 7, "s": 100,
         "c": [12], "t": now_ms(), "q": seq, "z": 3}  # fmt: skip
    t.update(over)
    return t


def dumps(elements: Sequence[Any]) -> str:
    """Standard-library JSON, which writes NaN/Infinity literals and any int (as a feed
    might); orjson would refuse them."""
    return json.dumps(list(elements))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


class HostilePeer:
    """Speaks Polygon's handshake, then sends `frames` in order across connections. A frame
    longer than `refused_over` is one the client will refuse by closing the connection: the
    peer then waits for that close, and the next connection continues after the frame (what
    it would have sent into the dying connection is not lost that way). `flood` frames follow
    as fast as the socket takes them."""

    def __init__(
        self,
        frames: Sequence[str | bytes],
        flood: Sequence[str | bytes] = (),
        refused_over: int = 4 * 1024 * 1024,
    ) -> None:
        self.frames = list(frames)
        self.flood = list(flood)
        self.refused_over = refused_over
        self.pos = 0
        self.connections = 0
        self.done = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        await ws.send(orjson.dumps([{"ev": "status", "status": "connected"}]).decode())
        await ws.recv()  # auth
        await ws.send(orjson.dumps([{"ev": "status", "status": "auth_success"}]).decode())
        await ws.recv()  # subscribe
        script = self.frames + self.flood
        try:
            while self.pos < len(script):
                frame = script[self.pos]
                self.pos += 1  # counted as sent even if it gets the connection dropped
                await ws.send(frame)
                if len(frame) > self.refused_over:
                    await ws.wait_closed()
                    return
        except ConnectionClosed:
            return
        self.done.set()
        await ws.wait_closed()
