"""Scenario 3: the hot store slows down (every commit takes 200 ms more) in the middle of a
run, then recovers.

Injection (`inject.slow_commits`): the store's writer connection is a `sqlite3.Connection`
subclass whose COMMIT sleeps first — inside the interval the store itself times (BEGIN →
COMMIT), as a slow or saturated disk would, so the pipeline sees the latency through its
normal path.

Expected: after every slow commit the processor takes nothing from the log for
`backpressure_pause_ms` (a slow commit during a pause extends it), the pauses are counted,
memory stays within the stated bound while input keeps arriving, lag falls back once the
store is fast again, and every trade the simulator sent is stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import inject
import psutil
import pytest
from fault_harness import scaled, trade_tally
from inject import SlowCommit

from tradepulse.config import load_settings
from tradepulse.log.embedded import Frame
from tradepulse.ops import metrics
from tradepulse.runner import Pipeline, run_embedded
from tradepulse.sim import SimConfig
from tradepulse.store.base import StoreBatch, WriteResult

TICKERS = ["AAPL", "MSFT", "NVDA"]
INJECTED_S = 0.2
PAUSE_MS = 500.0
THRESHOLD_MS = 100.0
SLOW_S = scaled(5.0, 60.0)
# Stated bound on RSS growth from just before the slowdown: the writer's SQLite page cache
# (up to 64 MiB) plus what the bounded log and the write queue hold while input keeps coming.
RSS_BOUND_BYTES = 200 * 1024 * 1024

pytestmark = pytest.mark.timeout(int(scaled(120, 600)))


@pytest.fixture
def slow_store() -> Iterator[type[SlowCommit]]:
    inject.slow_commits(0.0)
    yield SlowCommit
    inject.restore()


def _pauses() -> float:
    return metrics.BACKPRESSURE_PAUSES._value.get()  # type: ignore[attr-defined, no-any-return]


@pytest.mark.usefixtures("clean_env")
async def test_slow_store_pauses_consumption_bounds_memory_and_recovers(
    tmp_path: Path, slow_store: type[SlowCommit]
) -> None:
    data = tmp_path / "data"
    settings = load_settings(
        data_dir=data,
        tickers=",".join(TICKERS),
        backpressure_latency_ms=THRESHOLD_MS,
        backpressure_pause_ms=PAUSE_MS,
        warmup_s=0,
    )
    live_s = 2.0 + SLOW_S + 6.0
    sim_cfg = SimConfig(
        tickers=TICKERS, rate=3000, seed=8, truth_dir=data / "truth", duration_s=live_s
    )
    commits: list[tuple[float, float]] = []  # (monotonic commit time, store latency s)
    intakes: list[float] = []  # when the processor took frames from the log
    pipelines: list[Pipeline] = []

    def observe(batch: StoreBatch, result: WriteResult, done_ns: int) -> None:
        commits.append((time.monotonic(), result.latency_s))

    def on_start(pipeline: Pipeline) -> None:
        pipelines.append(pipeline)
        take = pipeline.log.take

        async def timed_take(max_frames: int, max_wait_s: float) -> list[Frame]:
            frames = await take(max_frames, max_wait_s)
            intakes.append(time.monotonic())
            return frames

        pipeline.log.take = timed_take  # type: ignore[method-assign]

    proc = psutil.Process()
    run = asyncio.create_task(
        run_embedded(
            settings,
            sim_config=sim_cfg,
            serve_api=False,
            out=lambda _line: None,
            observers=[observe],
            on_start=on_start,
        )
    )
    samples: list[tuple[float, int, int]] = []  # (monotonic, lag, rss)

    async def sample() -> None:
        while True:
            if pipelines:
                samples.append((time.monotonic(), pipelines[0].lag(), proc.memory_info().rss))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    try:
        deadline = time.monotonic() + 60
        while len(commits) < 5 and time.monotonic() < deadline:
            assert not run.done(), run.exception()
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        rss_before = proc.memory_info().rss
        pauses_before = _pauses()
        slow_from = time.monotonic()
        slow_store.delay_s = INJECTED_S
        await asyncio.sleep(SLOW_S)
        slow_store.delay_s = 0.0
        slow_to = time.monotonic()
        summary = await asyncio.wait_for(run, 120)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    slow = [t for t, lat in commits if slow_from <= t <= slow_to and lat >= INJECTED_S]
    assert len(slow) >= 3, "the injected latency never reached the store's own timing"
    # Nothing is taken from the log within a pause. (A take already waiting for frames when
    # the slow commit lands may still return within one batch window, hence the slack.)
    slack = settings.batch_max_ms / 1000 + 0.03
    early = [
        (round(c - slow_from, 3), round(t - c, 3))
        for c in slow
        for t in intakes
        if c + slack < t < c + PAUSE_MS / 1000 * 0.95
    ]
    assert not early, f"frames taken during a pause (commit s, taken s after): {early}"
    assert _pauses() - pauses_before >= len(slow) - 1

    lag_slow = max(lag for t, lag, _ in samples if slow_from <= t <= slow_to)
    lag_end = [lag for t, lag, _ in samples if t >= slow_to + 3.0]
    rss_peak = max(rss for t, _, rss in samples if t >= slow_from)
    print(
        f"[fault] backpressure: {len(slow)} slow commits, {_pauses() - pauses_before:.0f} pauses,"
        f" lag peak {lag_slow:,} -> {max(lag_end or [0]):,} after recovery, RSS "
        f"+{(rss_peak - rss_before) / 2**20:.0f} MiB (bound {RSS_BOUND_BYTES / 2**20:.0f} MiB)"
    )
    assert lag_slow > 0, "input never queued up while the store was slow"
    assert lag_end and max(lag_end) < lag_slow, "lag did not recover once the store was fast"
    assert rss_peak - rss_before < RSS_BOUND_BYTES

    tally = trade_tally("backpressure", data, data / "truth")
    assert summary.trades_stored == tally.stored
    assert (tally.lost, tally.duplicated, tally.extra) == (0, 0, 0)
