"""What the benchmark measures while the real pipeline runs, through `run_embedded`'s hooks.

`Recorder.observe` is one of the run's batch observers: it sees every committed batch and its
commit time, so every trade and quote is measured (not a sample), from the WebSocket receive
time the event carries (`ingest_ts`) to the hot-store commit. `Recorder.sample_loop` runs in a
thread next to the pipeline and samples lag, RSS and CPU, and switches the offered rate between
phases; `Recorder.heartbeat` measures how long the event loop stalls.

Cost matters: the observer runs on the pipeline's event loop. Events of one frame share their
receive time and a batch shares its commit time, so latencies come in few distinct values per
batch; they are counted with numpy and recorded into the HDR histogram once per distinct value.
The observer's own time is measured and reported as measurement overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import psutil
from hdrh.histogram import HdrHistogram

from tradepulse.bench.scenarios import Phase
from tradepulse.store.base import StoreBatch, WriteResult

US_MAX = 3_600_000_000  # one hour in µs: the histograms' ceiling
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    # 3 significant digits: 0.1 % resolution from 1 µs to an hour.
    return HdrHistogram(1, US_MAX, 3)


def summarize(h: HdrHistogram, scale: float = 1e-3) -> dict[str, float | int]:
    """Percentiles of an µs histogram, in ms by default (`scale` converts µs → unit)."""
    n = int(h.get_total_count())
    if n == 0:
        return {"count": 0}
    out: dict[str, float | int] = {"count": n}
    for p in PERCENTILES:
        out[f"p{p:g}"] = round(h.get_value_at_percentile(p) * scale, 4)
    out["max"] = round(h.get_max_value() * scale, 4)
    out["mean"] = round(h.get_mean_value() * scale, 4)
    return out


def histogram_points(h: HdrHistogram, scale: float = 1e-3) -> list[tuple[float, int]]:
    """(value, count) per recorded bucket, for the histogram plot."""
    return [
        (item.value_iterated_to * scale, int(item.count_at_value_iterated_to))
        for item in h.get_recorded_iterator()
    ]


@dataclass(slots=True)
class Sample:
    t: float  # s since the run started
    lag: int
    queued_frames: int
    rss_mb: float
    cpu_pct: float  # of one core; 200 = both cores of a 2-core machine
    committed: int


@dataclass
class Recorder:
    """Batch observer + sampler for one pipeline run."""

    phases: Sequence[Phase]
    sim_config: Any  # the SimConfig the simulator reads its rate from
    sample_s: float = 0.2
    started_ns: int = 0
    started: float = 0.0
    latency: dict[str, HdrHistogram] = field(default_factory=dict)  # per phase + "all"
    store_write: HdrHistogram = field(default_factory=new_histogram)
    per_second: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    samples: list[Sample] = field(default_factory=list)
    batches: int = 0
    events: int = 0
    trades: int = 0
    quotes: int = 0
    trades_inserted: int = 0
    quotes_inserted: int = 0
    dead_letters: int = 0
    max_batch: int = 0
    unmeasured: int = 0  # events received before `on_start` (a run that starts it late)
    observer_s: float = 0.0
    pipeline: Any = None
    _phase_ends: list[float] = field(default_factory=list)
    loop_stall: HdrHistogram = field(default_factory=new_histogram)
    _task: asyncio.Task[None] | None = None
    _thread: threading.Thread | None = None
    _halt: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        acc = 0.0
        for p in self.phases:
            acc += p.seconds
            self._phase_ends.append(acc)
            self.latency.setdefault(p.name, new_histogram())
        self.latency["all"] = new_histogram()

    # -- hooks -----------------------------------------------------------------------------

    def on_start(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.started_ns = time.time_ns()
        self.started = time.monotonic()
        # The sampler is a thread, not a task: the processor runs on the event loop, and a
        # loop-bound sampler would go quiet exactly when the loop is stalled. The heartbeat task
        # measures those stalls (how late a 50 ms sleep wakes up).
        self._thread = threading.Thread(target=self.sample_loop, name="bench-sampler", daemon=True)
        self._thread.start()
        self._task = asyncio.get_running_loop().create_task(self.heartbeat())

    def phase_at(self, t: float) -> Phase | None:
        for p, end in zip(self.phases, self._phase_ends, strict=True):
            if t < end:
                return p
        return self.phases[-1] if self.phases else None

    def observe(self, batch: StoreBatch, result: WriteResult, done_ns: int) -> None:
        t0 = time.perf_counter()
        trades, quotes = batch.trades, batch.quotes
        n = len(trades) + len(quotes)
        if not self.started_ns:
            self.unmeasured += n
            return
        self.batches += 1
        self.trades += len(trades)
        self.quotes += len(quotes)
        self.trades_inserted += result.trades_inserted
        self.quotes_inserted += result.quotes_inserted
        self.dead_letters += result.dead_letters
        self.store_write.record_value(max(1, min(US_MAX, int(result.latency_s * 1e6))))
        if n:
            ingest = np.fromiter(
                (e.ingest_ts for seq in (trades, quotes) for e in seq), np.int64, count=n
            )
            # Events received before a late `on_start` waited out whatever delayed it: they
            # are counted, not measured.
            ingest = ingest[ingest >= self.started_ns]
            self.unmeasured += n - len(ingest)
            n = len(ingest)
        if n:
            self.events += n
            self.max_batch = max(self.max_batch, n)
            rel = (done_ns - self.started_ns) / 1e9
            self.per_second[int(rel)] += n
            lat_us = np.clip((done_ns - ingest) // 1000, 1, US_MAX)
            values, counts = np.unique(lat_us, return_counts=True)
            phase = self.phase_at(rel)
            hists = [self.latency["all"]]
            if phase is not None:
                hists.append(self.latency[phase.name])
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                for h in hists:
                    h.record_value(v, c)
        self.observer_s += time.perf_counter() - t0

    def sample_loop(self) -> None:
        proc = psutil.Process()
        last_cpu = proc.cpu_times()
        last_t = time.monotonic()
        current: Phase | None = None
        while not self._halt.is_set():
            now = time.monotonic()
            t = now - self.started
            phase = self.phase_at(t)
            if phase is not None and phase is not current:
                # The simulator reads its rate every tick, so a new phase starts offering its
                # rate right away; this is the only coupling to the simulator's internals.
                self.sim_config.rate = phase.rate
                current = phase
            cpu = proc.cpu_times()
            busy = (cpu.user - last_cpu.user) + (cpu.system - last_cpu.system)
            cpu_pct = 100.0 * busy / max(now - last_t, 1e-6)
            last_cpu, last_t = cpu, now
            p = self.pipeline
            self.samples.append(
                Sample(
                    t=round(t, 3),
                    lag=int(p.lag()),
                    queued_frames=int(p.log.depth()),
                    rss_mb=round(proc.memory_info().rss / 2**20, 1),
                    cpu_pct=round(cpu_pct, 1),
                    committed=self.events,
                )
            )
            self._halt.wait(self.sample_s)

    async def heartbeat(self, period_s: float = 0.05) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(period_s)
            late_us = int((time.perf_counter() - t0 - period_s) * 1e6)
            self.loop_stall.record_value(max(1, min(US_MAX, late_us)))

    async def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- derived figures ------------------------------------------------------------------------

    def throughput(self) -> list[tuple[int, int]]:
        """(second since start, events committed in it), with empty seconds as zero."""
        if not self.per_second:
            return []
        last = max(self.per_second)
        return [(s, self.per_second.get(s, 0)) for s in range(last + 1)]

    def samples_in(self, lo: float, hi: float) -> list[Sample]:
        return [s for s in self.samples if lo <= s.t < hi]


class LagSample(Protocol):
    @property
    def t(self) -> float: ...
    @property
    def lag(self) -> int: ...


def drain_seconds(phases: Sequence[Phase], samples: Sequence[LagSample]) -> float | None:
    """Seconds after the burst ended until lag was back to normal (None: no burst phase, or
    it never drained). Normal = below a tenth of a second of base-rate events, or below the
    90th percentile of lag during the sustained phase, whichever is larger."""
    names = [p.name for p in phases]
    if "burst" not in names:
        return None
    i = names.index("burst")
    burst_end = sum(p.seconds for p in phases[: i + 1])
    base = phases[0].rate
    sustained = sorted(s.lag for s in samples if 0 <= s.t < phases[0].seconds)
    p90 = sustained[int(0.9 * (len(sustained) - 1))] if sustained else 0
    normal = max(0.1 * base, p90)
    for s in samples:
        if s.t >= burst_end and s.lag <= normal:
            return round(s.t - burst_end, 2)
    return None


def lag_bounded(
    samples: Sequence[Sample], rate: float, end_s: float
) -> tuple[bool, dict[str, float]]:
    """Whether lag stayed bounded over a step of `end_s` seconds at `rate` events/s.

    Bounded = the lag at the end (max over its last second) is below two seconds' worth of
    events, and over the second half of the step it grew by less than 5 % of the input rate
    per second (least-squares slope), i.e. the backlog is not building up."""
    window = [s for s in samples if s.t < end_s]
    tail = [s.lag for s in window if s.t >= end_s - 1.0] or [0]
    half = [s for s in window if s.t >= end_s / 2]
    slope = 0.0
    if len(half) >= 3:
        xs = np.array([s.t for s in half])
        ys = np.array([s.lag for s in half], dtype=float)
        slope = float(np.polyfit(xs, ys, 1)[0])
    end_lag = float(max(tail))
    ok = end_lag < 2 * rate and slope < 0.05 * rate
    return ok, {"end_lag": end_lag, "lag_slope_per_s": round(slope, 1)}


def time_it(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
