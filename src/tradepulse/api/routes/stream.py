"""GET /stream: Server-Sent Events of quotes, features, anomalies, news and health.

Each message is ``event: <kind>`` + ``data: <JSON>``; kinds are hello (first, with the
tickers), quote, features, anomaly, news (per ticker) and health (every `HEALTH_EVERY_S`).
A comment line keeps idle connections open through proxies. Rate limited like the data
endpoints (one hit per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from tradepulse.api.deps import Ctx, parse_ticker, require_api_key
from tradepulse.api.models import DATA_ERRORS
from tradepulse.api.stream import Broadcaster, Subscription
from tradepulse.ops.health import HealthMonitor

router = APIRouter(tags=["stream"], dependencies=[Depends(require_api_key)])

HEALTH_EVERY_S = 2.0
KEEPALIVE_S = 15.0


def sse(kind: str, payload: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def sse_events(
    broadcaster: Broadcaster,
    sub: Subscription,
    health: HealthMonitor,
    disconnected: Callable[[], Awaitable[bool]],
    *,
    tickers: list[str],
    health_every_s: float = HEALTH_EVERY_S,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for `sub` until the client goes away; always unsubscribes."""
    try:
        yield b"retry: 2000\n\n" + sse("hello", {"tickers": tickers})
        yield sse("health", health.snapshot())
        next_health = time.monotonic() + health_every_s
        last_sent = time.monotonic()
        while not await disconnected():
            timeout = max(0.0, next_health - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), timeout)
            chunks = [sse(m.kind, m.payload) for m in broadcaster.drain(sub)]
            now = time.monotonic()
            if now >= next_health:
                chunks.append(sse("health", health.snapshot()))
                next_health = now + health_every_s
            if chunks:
                yield b"".join(chunks)
                last_sent = now
            elif now - last_sent > KEEPALIVE_S:
                yield b": keep-alive\n\n"
                last_sent = now
    finally:
        broadcaster.unsubscribe(sub)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **DATA_ERRORS,
    },
    summary="Live push of quotes, features, anomalies, news and health (SSE)",
)
async def stream(
    request: Request,
    ctx: Ctx,
    tickers: Annotated[
        str | None,
        Query(max_length=200, description="Comma-separated tickers to follow (default: all)"),
    ] = None,
) -> StreamingResponse:
    wanted = None
    if tickers:
        wanted = [parse_ticker(t) for t in tickers.split(",") if t.strip()]
    sub = ctx.broadcaster.subscribe(wanted)
    return StreamingResponse(
        sse_events(
            ctx.broadcaster,
            sub,
            ctx.health,
            request.is_disconnected,
            tickers=wanted or list(ctx.settings.tickers),
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
