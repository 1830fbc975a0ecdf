"""Shared request dependencies: the app context, ticker parsing, API keys, cache headers."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Path, Request, Response
from fastapi.security import APIKeyHeader

from tradepulse.api.cache import TTLCache, cache_control
from tradepulse.api.errors import ApiError, invalid, not_found
from tradepulse.api.stream import Broadcaster
from tradepulse.config import TICKER_RE, Settings
from tradepulse.ops.health import HealthMonitor
from tradepulse.store.base import HotReader

QueryFn = Callable[[str], list[dict[str, object]]]

# The documented path pattern accepts either case; TICKER_RE is checked after upper-casing.
TICKER_PATTERN = r"^[A-Za-z][A-Za-z0-9.\-]{0,9}$"
KNOWN_TICKERS_TTL_S = 5.0


@dataclass
class ApiContext:
    settings: Settings
    reader: HotReader
    health: HealthMonitor
    broadcaster: Broadcaster
    query: QueryFn | None
    cache: TTLCache = field(default_factory=TTLCache)
    _known: frozenset[str] = frozenset()
    _known_at: float = -1e18
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def is_known(self, ticker: str) -> bool:
        """Configured, or seen in the store (refreshed at most every few seconds)."""
        if ticker in self.settings.tickers:
            return True
        now = time.monotonic()
        with self._lock:
            stale = now - self._known_at > KNOWN_TICKERS_TTL_S
        if stale:
            known = frozenset(self.reader.known_tickers())
            with self._lock:
                self._known, self._known_at = known, now
        return ticker in self._known

    def require_known(self, ticker: str) -> None:
        if not self.is_known(ticker):
            raise not_found(f"unknown ticker {ticker}")


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]


def parse_ticker(raw: str) -> str:
    """Case-insensitive in, upper-case out; 422 unless it matches TICKER_RE."""
    ticker = raw.strip().upper()
    if not TICKER_RE.match(ticker):
        raise invalid(f"malformed ticker {raw[:16]!r}: expected 1-10 of A-Z 0-9 . - (e.g. AAPL)")
    return ticker


def ticker_path(
    ticker: Annotated[
        str,
        Path(
            description="Ticker symbol, case-insensitive (e.g. AAPL or aapl)",
            pattern=TICKER_PATTERN,
            examples=["AAPL"],
        ),
    ],
) -> str:
    return parse_ticker(ticker)


Ticker = Annotated[str, Depends(ticker_path)]

_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Needed when keys are set"
)


def require_api_key(ctx: Ctx, key: Annotated[str | None, Depends(_key_header)] = None) -> None:
    """No-op when no keys are configured; otherwise one of them, compared in constant time."""
    keys = ctx.settings.api_keys
    if not keys:
        return
    if key and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        return
    raise ApiError(
        401, "missing or invalid API key (send it in X-API-Key)", {"WWW-Authenticate": "APIKey"}
    )


def cache_headers(ttl: float) -> Callable[[ApiContext, Response], None]:
    """Dependency that sets Cache-Control to match a route's server-side TTL."""

    def dep(ctx: Ctx, response: Response) -> None:
        response.headers["Cache-Control"] = cache_control(ttl, private=bool(ctx.settings.api_keys))

    return dep
