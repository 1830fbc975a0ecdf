"""Pipeline health from what the writer reports once per batch.

Status rules (thresholds are constructor arguments; the defaults are documented in docs/api.md):

- ``unhealthy``: nothing has been written for ``stall_s`` seconds while events are pending
  (``consumer_lag > 0``), or the live feed has been down for longer than ``stall_s``;
- ``degraded``: the hot-store write p99 over the last ``window_s`` seconds is above
  ``degraded_latency_ms``, or ``consumer_lag`` is above ``degraded_lag``, or the feed is down
  (briefly: reconnecting);
- ``healthy`` otherwise.

`record_batch` is O(1): it appends to two bounded rings. Percentiles are computed only when
`snapshot()` is called (by `/health`, a few times a minute).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["healthy", "degraded", "unhealthy"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the ⌈q/100 · n⌉-th smallest value (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class HealthMonitor:
    """Bounded record of recent batches, turned into a status on demand."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        window_s: float = 60.0,
        rate_window_s: float = 10.0,
        degraded_latency_ms: float = 100.0,
        degraded_lag: int = 10_000,
        stall_s: float = 10.0,
        ring_size: int = 2048,
    ) -> None:
        self._clock = clock
        self.window_s = window_s
        self.rate_window_s = rate_window_s
        self.degraded_latency_ms = degraded_latency_ms
        self.degraded_lag = degraded_lag
        self.stall_s = stall_s
        self._started = clock()
        # (time, write latency s) and (time, events) of the most recent batches.
        self._latencies: deque[tuple[float, float]] = deque(maxlen=ring_size)
        self._counts: deque[tuple[float, int]] = deque(maxlen=ring_size)
        self._lag = 0
        self._last_batch: float | None = None
        self._feed_down_since: float | None = None

    def record_batch(
        self, events: int, write_latency_s: float, lag: int, now: float | None = None
    ) -> None:
        """Called by the writer after each committed batch."""
        t = self._clock() if now is None else now
        self._latencies.append((t, write_latency_s))
        self._counts.append((t, events))
        self._lag = max(0, int(lag))
        self._last_batch = t

    def set_lag(self, n: int) -> None:
        self._lag = max(0, int(n))

    def set_feed(self, up: bool, now: float | None = None) -> None:
        """Report the live feed's connection state (the ingest client calls it on change)."""
        t = self._clock() if now is None else now
        if up:
            self._feed_down_since = None
        elif self._feed_down_since is None:
            self._feed_down_since = t

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        t = self._clock() if now is None else now
        recent = [lat for ts, lat in self._latencies if ts >= t - self.window_s]
        p99_ms = percentile(recent, 99.0) * 1000.0
        uptime = max(0.0, t - self._started)
        span = min(self.rate_window_s, uptime) or self.rate_window_s
        events = sum(n for ts, n in self._counts if ts >= t - self.rate_window_s)
        since_batch = t - (self._last_batch if self._last_batch is not None else self._started)

        reasons: list[str] = []
        status: Status = "healthy"
        down_for = None if self._feed_down_since is None else t - self._feed_down_since
        if self._lag > 0 and since_batch > self.stall_s:
            reasons.append(f"no batch written for {since_batch:.0f} s with {self._lag} pending")
        if down_for is not None and down_for > self.stall_s:
            reasons.append(f"feed down for {down_for:.0f} s")
        if reasons:
            status = "unhealthy"
        else:
            if p99_ms > self.degraded_latency_ms:
                reasons.append(f"write p99 {p99_ms:.1f} ms > {self.degraded_latency_ms:g} ms")
            if self._lag > self.degraded_lag:
                reasons.append(f"consumer lag {self._lag} > {self.degraded_lag}")
            if down_for is not None:
                reasons.append("feed reconnecting")
            if reasons:
                status = "degraded"
        return {
            "status": status,
            "consumer_lag": self._lag,
            "dynamo_latency_p99": round(p99_ms, 3),
            "uptime_seconds": round(uptime, 3),
            "checked_at": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "events_per_s": round(events / span, 1),
            "reasons": reasons,
        }
