"""The Polygon WebSocket client against a small scripted server on loopback: handshake,
a refused key, a dropped connection (reconnect, resubscribe, the outage recorded)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tradepulse.sources.polygon_ws import AuthError, PolygonWSClient, subscribe_params

KEY = "right-key"


class ScriptedFeed:
    """Speaks Polygon's handshake; sends `frames_per_conn` frames per connection, then (for the
    first `drops` connections) drops the socket without a close frame."""

    def __init__(self, frames_per_conn: int = 5, drops: int = 0) -> None:
        self.frames_per_conn = frames_per_conn
        self.drops = drops
        self.connections = 0
        self.auth_attempts = 0
        self.subscriptions: list[str] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        conn = self.connections
        await ws.send(orjson.dumps([{"ev": "status", "status": "connected"}]).decode())
        auth = orjson.loads(await ws.recv())
        self.auth_attempts += 1
        if auth != {"action": "auth", "params": KEY}:
            refused = {"ev": "status", "status": "auth_failed", "message": "authentication failed"}
            await ws.send(orjson.dumps([refused]).decode())
            await ws.close()
            return
        await ws.send(orjson.dumps([{"ev": "status", "status": "auth_success"}]).decode())
        sub = orjson.loads(await ws.recv())
        assert sub["action"] == "subscribe"
        self.subscriptions.append(sub["params"])
        for i in range(self.frames_per_conn):
            ev = {"ev": "T", "sym": "AAPL", "p": 1.0, "s": 1, "t": 1, "q": conn * 1000 + i}
            await ws.send(orjson.dumps([ev]).decode())
        if conn <= self.drops:
            ws.transport.abort()  # an abrupt drop, as a network failure looks
            return
        await ws.wait_closed()


@pytest.fixture
async def feed_server(request: pytest.FixtureRequest) -> AsyncIterator[ScriptedFeed]:
    feed: ScriptedFeed = request.param
    async with serve(feed.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        feed.url = f"ws://127.0.0.1:{port}/stocks"
        yield feed


def client_for(feed: ScriptedFeed, key: str, q: asyncio.Queue[Any]) -> PolygonWSClient:
    return PolygonWSClient(
        feed.url,
        key,
        ["AAPL", "MSFT"],
        q,
        reconnect_base_s=0.05,
        reconnect_max_s=0.2,
        rng=random.Random(1),
    )


def test_subscribe_params() -> None:
    assert subscribe_params(["AAPL", "MSFT"]) == "T.AAPL,Q.AAPL,T.MSFT,Q.MSFT"


@pytest.mark.parametrize("feed_server", [ScriptedFeed()], indirect=True)
async def test_wrong_key_is_a_clear_error_not_a_retry_storm(feed_server: ScriptedFeed) -> None:
    q: asyncio.Queue[Any] = asyncio.Queue()
    client = client_for(feed_server, "wrong-key", q)
    with pytest.raises(AuthError, match="authentication failed"):
        await asyncio.wait_for(client.run(), 5)
    assert feed_server.auth_attempts == 1
    assert q.empty()


async def _collect(q: asyncio.Queue[Any], n: int) -> list[Any]:
    return [orjson.loads((await asyncio.wait_for(q.get(), 5))[1])[0] for _ in range(n)]


@pytest.mark.parametrize("feed_server", [ScriptedFeed(frames_per_conn=5, drops=2)], indirect=True)
async def test_dropped_connection_reconnects_resubscribes_and_records_the_gap(
    feed_server: ScriptedFeed,
) -> None:
    q: asyncio.Queue[Any] = asyncio.Queue()
    client = client_for(feed_server, KEY, q)
    task = asyncio.create_task(client.run())
    try:
        got = await _collect(q, 15)
        await asyncio.wait_for(client.connected.wait(), 5)
    finally:
        await client.stop()
        await asyncio.wait_for(task, 5)
    # Every frame of the three connections arrived, in order, and each came with a receive time.
    assert [e["q"] for e in got] == [c * 1000 + i for c in (1, 2, 3) for i in range(5)]
    assert feed_server.subscriptions == ["T.AAPL,Q.AAPL,T.MSFT,Q.MSFT"] * 3
    assert len(client.disconnects) == 2
    for d in client.disconnects:
        assert d.source == "polygon-ws" and d.ended_at >= d.started_at
        assert "closed" in d.reason


async def test_unreachable_server_backs_off_until_stopped() -> None:
    q: asyncio.Queue[Any] = asyncio.Queue()
    client = PolygonWSClient(
        "ws://127.0.0.1:9/stocks", KEY, ["AAPL"], q,
        reconnect_base_s=0.01, reconnect_max_s=0.05,
    )  # fmt: skip
    task = asyncio.create_task(client.run())
    await asyncio.sleep(0.3)
    await client.stop()
    await asyncio.wait_for(task, 5)
    assert client.connections == 0 and not client.connected.is_set()
