"""Per-client fixed-window rate limiting, as pure ASGI middleware.

Each client address gets `limit` requests per 60 s window (windows aligned to the clock's
minute). Every limited response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (seconds until the window resets); a refused one is 429 with
``Retry-After``. The client address is the TCP peer; ``X-Forwarded-For`` is believed only when
the peer is a configured trusted proxy, so a client cannot spoof its way to a fresh budget.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
OVERFLOW_KEY = "<overflow>"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset_s).encode()),
        ]
        if not self.allowed:
            out.append((b"retry-after", str(self.reset_s).encode()))
        return out


class FixedWindowLimiter:
    """`limit` hits per `window_s` per key; memory is bounded by the clients of one window."""

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        max_clients: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> Decision:
        now = self._clock()
        window = int(now // self.window_s)
        reset = max(1, math.ceil((window + 1) * self.window_s - now))
        with self._lock:
            if window != self._window:
                # A new window: every client starts again and old keys are forgotten.
                self._window = window
                self._counts = {}
            if key not in self._counts and len(self._counts) >= self.max_clients:
                # A flood of distinct addresses shares one budget instead of growing memory.
                key = OVERFLOW_KEY
            used = self._counts.get(key, 0)
            if used >= self.limit:
                return Decision(False, self.limit, 0, reset)
            self._counts[key] = used + 1
        return Decision(True, self.limit, self.limit - used - 1, reset)


def parse_networks(values: Iterable[str]) -> list[Network]:
    """Trusted proxies as addresses or CIDR blocks ("10.0.0.1", "10.0.0.0/8")."""
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


def _in(addr: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: list[Network]) -> str:
    """The address to rate-limit: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies, walk ``X-Forwarded-For`` from the right (the entries our own
    proxies appended) and take the first address that is not itself a trusted proxy.
    """
    addr = peer or "unknown"
    if not forwarded_for or not trusted or not _in(addr, trusted):
        return addr
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _in(hop, trusted):
            return hop
        addr = hop
    return addr


def limit_key(addr: str) -> str:
    """IPv6 clients are limited per /64 (one host usually owns the whole block)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RateLimitMiddleware:
    """Applies `limiter` to HTTP requests whose first path segment is in `prefixes`."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: FixedWindowLimiter,
        prefixes: frozenset[str],
        trusted_proxies: list[Network],
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.prefixes = prefixes
        self.trusted = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        segment = str(scope.get("path", "")).lstrip("/").split("/", 1)[0]
        if segment not in self.prefixes:
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        xff = None
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-for":
                xff = value.decode("latin-1")
        client = client_address(peer[0] if peer else None, xff, self.trusted)
        decision = self.limiter.hit(limit_key(client))
        extra = decision.headers()
        if not decision.allowed:
            body = orjson.dumps(
                {
                    "detail": f"rate limit of {decision.limit} requests per minute exceeded; "
                    f"retry in {decision.reset_s} s"
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"cache-control", b"no-store"),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
