"""Retraining on vs off: does refitting the Isolation Forest stall ingestion? (issue 8)

The same live run twice — simulator → WebSocket → the `run` code path, fresh stores, same
seed, tickers and rate — once with the anomaly engine refitting every `retrain_every` trades
per ticker as configured, once with the model it holds at the live start never replaced
(`AnomalyParams.retrain = False`). Retraining runs synchronously inside the processor's batch
(determinism on replay, see process/anomaly.py), so whatever it costs the stream shows in the
difference between the two runs: end-to-end latency of every event, the processor's time per
batch, and event-loop stalls.

For retraining to happen in a short run the detector has to be scoring from the first live
trade, which a cold pipeline does only after the features' warm-up (the momentum needs 60 s
of tape, the volume z-score `volume_min_baseline` + 1 volume windows) and then
`retrain_every` trades per ticker. So each run starts from a processor warmed, through
`Processor.warm` (the restart path: no rows emitted, nothing stored), on the same calm history:
the simulator's generator over 70 s at the runs' own rate, trades only. The volume window is
10 s in these runs instead of 60 s, so 70 s cover the warm-up instead of more than six minutes;
that changes what the z-score compares, not what a batch costs.

The tape must not jump where the history meets the live feed, or every live trade looks
anomalous to a model trained on the history, and the frozen model of the "off" run keeps
flagging (and storing) them while the retrained one adapts: different work, not a comparison.
The live simulator starts each ticker where the history started (same seed, same opening), so
the history is scaled per ticker to end at the price it began with, and shifted in time to end
just before the first live frame: the processor is warmed when that frame reaches it, and the
measurement starts once what queued during the warm-up has been processed. The "off" engine
stops refitting at the warm-up.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgspec
import orjson

from tradepulse.bench.collect import US_MAX, histogram_points, new_histogram, summarize
from tradepulse.bench.scenarios import Phase
from tradepulse.events import Trade
from tradepulse.market_time import NS_PER_S

VOLUME_WINDOW_S = 10.0
HISTORY_S = 70.0  # 60 s for the momentum + 10 s past it to train the first models
# The simulator's extra time for connecting, warming up (~0.3 s with the kernels compiled)
# and draining what queued meanwhile, before the measured part starts.
PREROLL_S = 1.5
FRAME_EVENTS = 5000  # history trades per decoded frame


@dataclass
class RetrainRun:
    retrain: bool
    figures: dict[str, Any]


@dataclass
class History:
    trades: list[Trade]  # as decoded, in tape order
    end_ns: int
    scale: dict[str, float]  # per ticker: opening / closing price

    def moved(self, end_ns: int) -> list[Trade]:
        """The history shifted to end at `end_ns` and scaled, per ticker, to end at its
        opening price (see the module doc)."""
        shift = end_ns - self.end_ns
        # Milliseconds, as the WebSocket's timestamps are.
        shift -= shift % 1_000_000
        return [
            msgspec.structs.replace(
                t, timestamp=t.timestamp + shift, price=t.price * self.scale[t.ticker]
            )
            for t in self.trades
        ]


def history(tickers: Sequence[str], rate: float, *, seed: int, seconds: float) -> History:
    """`seconds` of calm market at `rate` events/s from the simulator's generator, its trades
    decoded as the pipeline decodes a frame (the quotes are dropped: only trades build the
    features and the models)."""
    from tradepulse.sim.config import SimConfig
    from tradepulse.sim.market import MarketGenerator
    from tradepulse.validate.decode import decode_frame

    cfg = SimConfig(
        tickers=list(tickers),
        rate=rate,
        seed=seed,
        profile="flat",
        news_rate=0.0,
        history_s=seconds,
    )
    end_ns = time.time_ns()
    batch = MarketGenerator(cfg, end_ns).advance_history()
    events = [e for e in batch.events if e["ev"] == "T"]
    trades: list[Trade] = []
    for i in range(0, len(events), FRAME_EVENTS):
        # The skew rule would refuse history older than the allowed skew: these trades are
        # history by construction, so the bound is their own age.
        decoded = decode_frame(
            orjson.dumps(events[i : i + FRAME_EVENTS]),
            end_ns,
            source="bench-history",
            now_ns=end_ns,
            max_skew_ns=int((seconds + 60.0) * NS_PER_S),
        )
        trades.extend(decoded.trades)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for t in trades:
        first.setdefault(t.ticker, t.price)
        last[t.ticker] = t.price
    return History(trades, end_ns, {k: first[k] / last[k] for k in first})


def anomaly_engine(processor: Any) -> Any:
    """The processor's anomaly engine (None if the anomaly stage is not configured)."""
    from tradepulse.process.anomaly import AnomalyEngine

    for stage in getattr(processor, "stages", ()):
        engine = getattr(stage, "engine", None)
        if isinstance(engine, AnomalyEngine):
            return engine
    return None


def compare_settings(settings: Any) -> Any:
    """The comparison runs' settings: the short volume window (see the module doc) and no
    REST warm-up (the bench warms the processor itself)."""
    return settings.model_copy(update={"volume_window_s": VOLUME_WINDOW_S, "warmup_s": 0.0})


async def run_one(
    settings: Any,
    tickers: Sequence[str],
    rate: float,
    seconds: float,
    tape: History,
    *,
    retrain: bool,
    seed: int,
    drain_limit_s: float,
) -> RetrainRun:
    """One run at `rate`: the processor is warmed when the first live frame reaches it, the
    measurement starts once what queued meanwhile is processed and lasts `seconds` (the
    simulator runs `PREROLL_S` longer to cover the wait)."""
    from tradepulse.bench.run import live_run

    process = new_histogram()
    state: dict[str, Any] = {"scored": 0, "flagged": 0, "measuring": False}

    def prepare(pipeline: Any, start: Callable[[], None]) -> None:
        # A full collection's pause grows with the heap (the history, the previous runs'
        # garbage), not with retraining: both runs start collected, and what exists after the
        # warm-up is frozen out of later collections, so such a pause does not decide the
        # comparison. (Collected now, before the feed connects: it takes a few 100 ms.)
        gc.collect()
        processor = pipeline.processor
        engine = anomaly_engine(processor)
        inner = processor.process

        def timed(frames: Any, now_ns: int) -> Any:
            if "warm_s" not in state:
                warm(min(f.recv_ts for f in frames))
            elif not state["measuring"] and pipeline.log.depth() <= 1:
                # The backlog of the warm-up is gone: measure from here.
                state["measuring"] = True
                state["fits0"] = getattr(engine, "fits", 0)
                start()
            t = time.perf_counter()
            out = inner(frames, now_ns)
            if state["measuring"]:
                us = int((time.perf_counter() - t) * 1e6)
                process.record_value(max(1, min(US_MAX, us)))
            return out

        def warm(first_ns: int) -> None:
            # Here rather than before the feed connects: the history ends just before the
            # first live frame, so no gap opens between them (see the module doc).
            t0 = time.perf_counter()
            processor.warm(tape.moved(first_ns - 50_000_000))
            if engine is not None and not retrain:
                engine.params = replace(engine.params, retrain=False)
            gc.freeze()
            state["warm_s"] = time.perf_counter() - t0

        processor.process = timed
        if engine is not None:
            update = engine.update

            def counted(ticker: str, session: int, x: Any, *, score: bool = True) -> Any:
                out = update(ticker, session, x, score=score)
                if out is not None and state["measuring"]:
                    state["scored"] += len(out.index)
                    state["flagged"] += int(out.is_anomaly.sum())
                return out

            engine.update = counted
        state["engine"] = engine

    t0 = time.perf_counter()
    try:
        run = await live_run(
            settings,
            tickers,
            [Phase("sustained", seconds, rate)],
            seed=seed,
            drain_limit_s=drain_limit_s,
            keep_status=False,
            prepare=prepare,
            preroll_s=PREROLL_S,
        )
    finally:
        gc.unfreeze()
    engine = state.get("engine")
    rec = run.recorder
    figures = {
        "retrain": retrain,
        "events": rec.events,
        # From the start of the measurement to the simulator's end: about `seconds` (the
        # pre-roll the warm-up did not use is measured too).
        "measured_s": len(rec.throughput()),
        "exact": run.exact()["ok"],
        "retrains": getattr(engine, "fits", 0) - state.get("fits0", getattr(engine, "fits", 0)),
        "trades_scored": state["scored"],
        # Rows the anomalies table receives: the two runs' stores should do similar work.
        "trades_flagged": state["flagged"],
        "latency_ms": summarize(rec.latency["all"]),
        "latency_histogram": histogram_points(rec.latency["all"]),
        "batch_process_ms": summarize(process),
        "batch_process_histogram": histogram_points(process),
        "event_loop_stall_ms": summarize(rec.loop_stall),
        "store_write_ms": summarize(rec.store_write),
        "warm_s": round(state.get("warm_s", 0.0), 2),
        "run_s": round(time.perf_counter() - t0, 1),
    }
    return RetrainRun(retrain, figures)


async def compare(
    root: Path,
    settings_for: Callable[[Path], Any],
    tickers: Sequence[str],
    *,
    rate: float,
    seconds: float,
    seed: int,
    drain_limit_s: float,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Both runs (retraining on first) and what the report needs of them."""
    from tradepulse.bench.micro import compile_anomaly_kernels

    # Compiling (or loading from numba's cache) the anomaly kernels would otherwise happen in
    # the first run's warm-up, seconds the simulator's traffic queues up behind.
    compile_anomaly_kernels()
    t0 = time.perf_counter()
    tape = history(tickers, rate, seed=seed, seconds=HISTORY_S)
    gen_s = time.perf_counter() - t0
    runs: dict[str, dict[str, Any]] = {}
    for retrain in (True, False):
        name = "on" if retrain else "off"
        settings = compare_settings(settings_for(root / f"retrain-{name}"))
        run = await run_one(
            settings,
            tickers,
            rate,
            seconds,
            tape,
            retrain=retrain,
            seed=seed,
            drain_limit_s=drain_limit_s,
        )
        runs[name] = run.figures
        lat = run.figures["latency_ms"]
        echo(
            f"[bench] retrain {name}: {run.figures['retrains']} retrains, "
            f"{run.figures['trades_scored']:,} trades scored, e2e p50 {lat.get('p50')} ms "
            f"p99 {lat.get('p99')} ms max {lat.get('max')} ms"
        )
    return {
        "rate": rate,
        "seconds": seconds,
        "batch_max_ms": float(settings.batch_max_ms),
        "history_s": HISTORY_S,
        "history_trades": len(tape.trades),
        "history_generate_s": round(gen_s, 2),
        "volume_window_s": VOLUME_WINDOW_S,
        "definition": "the same live run twice (fresh stores, same seed and rate), the "
        "processor warmed on the same history; on = the anomaly engine refits every "
        "retrain_every trades per ticker, off = the model held at the live start is kept",
        **runs,
    }


def verdict(section: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether retraining stalls ingestion. Retraining can only hold the stream up through the
    batch it runs in, so the decision is on what it adds there: the p99 of the processor's
    time per batch and of the event loop's stalls, with retraining minus without, must each
    stay under one batching wait (`batch_max_ms`, the delay every event already accepts).
    End-to-end latency is reported, with its histograms, but not decided on: on a shared
    machine one slow store write moves a short run's p99 more than any refit does. None when
    the runs do not decide it (no retrain happened, or a run measured nothing)."""
    on, off = section.get("on", {}), section.get("off", {})
    keys = ("batch_process_ms", "event_loop_stall_ms")
    p99 = {k: (on.get(k, {}).get("p99"), off.get(k, {}).get("p99")) for k in keys}
    if any(a is None or b is None for a, b in p99.values()):
        return None, "a run measured no batches"
    if not on.get("retrains"):
        return None, "no retrain happened in the retraining run: not decided"
    budget = section["batch_max_ms"]
    added = {k: round(a - b, 3) for k, (a, b) in p99.items()}
    met = all(v <= budget for v in added.values())
    return met, (
        f"{on['retrains']} retrains in {section['seconds']:g} s at {section['rate']:,.0f}/s; "
        f"p99 added per batch {added['batch_process_ms']} ms, to loop stalls "
        f"{added['event_loop_stall_ms']} ms (budget {budget:g} ms); e2e max on/off "
        f"{on['latency_ms'].get('max')} / {off['latency_ms'].get('max')} ms"
    )


__all__ = ["HISTORY_S", "History", "compare", "history", "verdict"]
