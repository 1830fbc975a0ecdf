"""Fan-out of live updates to push clients (Server-Sent Events).

The pipeline calls `Broadcaster.publish` once per batch and per ticker (never per event).
Each subscriber owns a bounded mailbox:

- "latest" kinds (quote, features, health) are coalesced: a new message replaces the unread one
  for the same (kind, ticker), so a slow client sees the newest state, not a backlog;
- event kinds (anomaly, news) queue up to `max_events`; beyond that the oldest are dropped and
  counted.

`publish` never blocks and never awaits: it appends under a lock and wakes the subscriber's
event loop (thread-safe, so the API may run on another loop or thread than the pipeline).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

COALESCED_KINDS = frozenset({"quote", "features", "health"})


@dataclass(slots=True)
class Message:
    kind: str
    ticker: str
    payload: dict[str, Any]


@dataclass(eq=False)
class Subscription:
    tickers: frozenset[str] | None
    loop: asyncio.AbstractEventLoop
    max_events: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    latest: dict[tuple[str, str], Message] = field(default_factory=dict)
    events: deque[Message] = field(default_factory=deque)
    dropped: int = 0

    def wants(self, ticker: str) -> bool:
        return self.tickers is None or ticker in self.tickers or ticker == ""


class Broadcaster:
    def __init__(self, max_events: int = 256) -> None:
        self.max_events = max_events
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, tickers: Iterable[str] | None = None) -> Subscription:
        """Register a subscriber on the running event loop (None = every ticker)."""
        sub = Subscription(
            frozenset(tickers) if tickers is not None else None,
            asyncio.get_running_loop(),
            self.max_events,
        )
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def publish(self, kind: str, ticker: str, payload: dict[str, Any]) -> None:
        msg = Message(kind, ticker, payload)
        with self._lock:
            targets = [s for s in self._subs if s.wants(ticker)]
            for sub in targets:
                if kind in COALESCED_KINDS:
                    sub.latest[(kind, ticker)] = msg
                else:
                    if len(sub.events) >= sub.max_events:
                        sub.events.popleft()
                        sub.dropped += 1
                    sub.events.append(msg)
        for sub in targets:
            _wake(sub)

    def drain(self, sub: Subscription) -> list[Message]:
        """Everything waiting for `sub`: queued events first, then the latest states."""
        with self._lock:
            out = list(sub.events)
            out.extend(sub.latest.values())
            sub.events.clear()
            sub.latest.clear()
            sub.wake.clear()
        return out


def _wake(sub: Subscription) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is sub.loop:
        sub.wake.set()
    elif not sub.loop.is_closed():
        sub.loop.call_soon_threadsafe(sub.wake.set)
