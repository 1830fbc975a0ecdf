"""The peers' common input: Polygon WebSocket frames from the simulator's pure generator.

The live run's simulator uses the same generator with the same seed and tickers, so this is the
same kind of traffic event for event in distribution (not the identical byte stream: the live
simulator advances on the wall clock, which no two runs share). Frames are JSON text as the
socket carries it, one per generator tick, so every peer pays for parsing just as live.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from tradepulse.market_time import NS_PER_MS
from tradepulse.sim.config import SimConfig
from tradepulse.sim.market import MarketGenerator

TICK_NS = 5 * NS_PER_MS


@dataclass(slots=True)
class Recording:
    frames: list[bytes]
    events: int
    trades: int
    quotes: int
    generate_s: float  # generator time, i.e. what the load generator costs per event

    def head(self, max_events: int) -> Recording:
        """The first frames holding at most `max_events` events (at least one frame)."""
        out: list[bytes] = []
        n = t = 0
        for frame in self.frames:
            k = frame.count(b'"ev":')
            if out and n + k > max_events:
                break
            out.append(frame)
            n += k
            t += frame.count(b'"ev":"T"')
        return Recording(out, n, t, n - t, self.generate_s * n / max(self.events, 1))


def record(
    tickers: list[str], rate: float, *, seed: int, max_events: int, max_s: float
) -> Recording:
    """Generate up to `max_events` valid events (and at most `max_s` of generator time)."""
    cfg = SimConfig(tickers=list(tickers), rate=rate, seed=seed, profile="flat", news_rate=0.0)
    start = time.time_ns()
    gen = MarketGenerator(cfg, start)
    frames: list[bytes] = []
    events = trades = 0
    now = start
    t0 = time.perf_counter()
    deadline = t0 + max_s
    while events < max_events and time.perf_counter() < deadline:
        now += TICK_NS
        batch = gen.advance(now)
        if not batch.events:
            continue
        frames.append(orjson.dumps(batch.events))
        events += len(batch.events)
        trades += len(batch.trades)
    return Recording(frames, events, trades, events - trades, time.perf_counter() - t0)
