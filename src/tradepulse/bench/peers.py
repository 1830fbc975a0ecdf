"""Our pipeline and the baseline on the same recorded frames, each as fast as it goes.

The live run measures latency at an offered rate, which caps its throughput at that rate; a
capacity ratio needs both sides saturated on identical input. So the recorded frames are pushed
through our real log → processor → writer path (`batch_pipeline`, the path replay uses, with
every stage on) and, separately, through the baseline. Neither side has a socket in front, so
the ratio compares the designs, not the transport.

The anomaly stage of our run is timed in place (a wrapper around its `apply`), which gives its
cost per scored trade at the original's retraining cadence without a second pass.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradepulse.bench.baseline import BaselineResult, run_baseline
from tradepulse.bench.feed import Recording
from tradepulse.config import Settings
from tradepulse.log.embedded import Frame
from tradepulse.market_time import now_ns


@dataclass
class OursResult:
    events: int  # events offered
    stored_trades: int
    stored_quotes: int
    seconds: float
    anomaly_s: float  # time inside the anomaly stage
    anomaly_rows: int  # feature rows the anomaly stage received
    anomaly_fits: int  # models fitted (retrains) during the run
    engine: Any  # the anomaly engine, for the retrain micro-benchmark

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def run_ours(settings: Settings, rec: Recording, *, max_s: float) -> OursResult:
    """Feed `rec` through the embedded pipeline; stop offering frames after `max_s`."""
    from tradepulse.process.feature_stage import FEATURE_ROWS, AnomalyStage
    from tradepulse.runner import batch_pipeline

    timer = {"s": 0.0, "rows": 0}
    engine: Any = None
    offered = 0
    start = time.perf_counter()
    async with batch_pipeline(settings) as (pipeline, backend):
        for stage in backend.processor.stages:
            if isinstance(stage, AnomalyStage):
                engine = stage.engine
                inner = stage.apply

                def timed(batch: Any, _inner: Any = inner) -> None:
                    t0 = time.perf_counter()
                    _inner(batch)
                    timer["s"] += time.perf_counter() - t0
                    timer["rows"] += len(batch.derived.get(FEATURE_ROWS, ()))

                stage.apply = timed  # type: ignore[method-assign]
        deadline = start + max_s
        for frame in rec.frames:
            if time.perf_counter() > deadline:
                break
            # The raw frame goes through the same decode + validation as a live one.
            await pipeline.log.put(Frame(recv_ts=now_ns(), raw=frame))
            offered += frame.count(b'"ev":')
    seconds = time.perf_counter() - start
    s = pipeline.stats
    return OursResult(
        events=offered,
        stored_trades=s.trades_stored,
        stored_quotes=s.quotes_stored,
        seconds=seconds,
        anomaly_s=timer["s"],
        anomaly_rows=int(timer["rows"]),
        anomaly_fits=int(getattr(engine, "fits", 0)),
        engine=engine,
    )


@dataclass
class PeerResults:
    ours: OursResult
    baseline: BaselineResult

    @property
    def ratio(self) -> float:
        b = self.baseline.events_per_s
        return self.ours.events_per_s / b if b > 0 else float("inf")


async def run_peers(
    settings: Settings, rec: Recording, workdir: Path, *, ours_max_s: float, baseline_max_s: float
) -> PeerResults:
    ours = await run_ours(settings, rec, max_s=ours_max_s)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    # The baseline is synchronous and CPU-bound: a worker thread keeps the loop responsive.
    baseline = await asyncio.to_thread(
        run_baseline, rec, workdir / "baseline.sqlite3", max_s=baseline_max_s
    )
    return PeerResults(ours, baseline)
