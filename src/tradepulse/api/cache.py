"""A small server-side TTL cache for read endpoints, and the matching Cache-Control value."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class TTLCache:
    """Values expire `ttl` seconds after they were computed; at most `max_entries` are kept.

    Thread-safe (sync routes run in a thread pool). Two requests that miss at the same moment
    may both compute; that is cheaper than holding a lock across a store read.
    """

    def __init__(self, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic):
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self._clock = clock

    def get_or_compute(self, key: Hashable, ttl: float, compute: Callable[[], T]) -> T:
        now = self._clock()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and hit[0] > now:
                value: T = hit[1]
                return value
        value = compute()
        with self._lock:
            self._data[key] = (now + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def cache_control(ttl: float, *, private: bool) -> str:
    """`no-store` for uncached data; otherwise max-age = the server TTL (private behind keys)."""
    if ttl <= 0:
        return "no-store"
    return f"{'private' if private else 'public'}, max-age={max(1, int(ttl))}"
