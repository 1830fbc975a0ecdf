"""`tradepulse bench`: run the scenario on the real pipeline, then the peers, then report.

Order within one invocation (same machine state for everything):
  1. the live run(s): simulator → WebSocket → the `run` code path, measured by `Recorder`;
  2. retraining on vs off: two more live runs from a warmed processor (retrain.py);
  3. the peers on one recording of the simulator's frames: ours saturated vs the baseline;
  4. micro-benchmarks: anomaly retrain/inference, VADER;
  5. the report: bench.json, bench.md, PNG plots under `out`.

`--backend cluster` runs bench/cluster.py instead: the same scenarios through the cluster's
processes, the engines alone, the same peers, and the same report.

Every load is bounded in count and time: the simulator stops at the scenario's duration, the
pipeline run has a hard stop after it, the peers stop offering input after a time budget.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tradepulse.bench import report, retrain
from tradepulse.bench.collect import (
    Recorder,
    drain_seconds,
    histogram_points,
    lag_bounded,
    summarize,
)
from tradepulse.bench.feed import record
from tradepulse.bench.micro import (
    anomaly_costs,
    anomaly_engine,
    sklearn_single_score_us,
    vader_cost,
)
from tradepulse.bench.peers import PeerResults, run_peers
from tradepulse.bench.scenarios import BACKENDS, Phase, Plan, plan
from tradepulse.config import DEFAULT_TICKERS, Settings, load_settings

# After the simulator's last event, the run may take this long to drain before it is cut off
# (what is not stored by then shows up as a mismatch against the truth, never as a hang).
DRAIN_LIMIT_S = 60.0
QUICK_DRAIN_LIMIT_S = 10.0
EXTRA_TICKERS = ("GOOGL", "META", "AMD", "NFLX", "SPY", "QQQ", "JPM", "INTC", "GOOG")


@dataclass
class BenchOptions:
    backend: str = "embedded"
    scenario: str = "market-open"
    duration_s: float | None = None
    rate: float | None = None
    tickers: int = 5
    quick: bool = False
    out: Path = Path("docs/benchmarks")
    seed: int = 7
    # Peers: budgets in seconds and the size of the shared recording (None = by --quick).
    peer_events: int | None = None
    ours_max_s: float | None = None
    baseline_max_s: float | None = None
    vader_headlines: int | None = None
    burst_s: float | None = None
    recovery_s: float | None = None
    # Retraining on vs off: seconds of each run and its rate (None = by --quick; see _bench).
    retrain_compare: bool = True
    retrain_s: float | None = None
    retrain_rate: float | None = None
    plots: bool = True
    command: str = ""
    # Cluster backend (bench/cluster.py): processor processes, the drain's cut-off after the
    # feed stops (None = by --quick), the stream-framework peer's budget.
    processors: int = 1
    drain_limit_s: float | None = None
    stream_peer_max_s: float | None = None


@dataclass
class LiveRun:
    phases: tuple[Phase, ...]
    recorder: Recorder
    truth: dict[str, Any]
    trades_stored: int
    quotes_stored: int
    dead_letters: int
    duplicates: int
    seconds: float
    status: list[str] = field(default_factory=list)

    @property
    def sent_trades(self) -> int:
        return int(sum(self.truth.get("valid_trades", {}).values()))

    @property
    def sent_quotes(self) -> int:
        return int(sum(self.truth.get("valid_quotes", {}).values()))

    def exact(self) -> dict[str, Any]:
        r = self.recorder
        checks = {
            "stored_trades": self.trades_stored,
            "truth_valid_trades": self.sent_trades,
            "stored_quotes": self.quotes_stored,
            "truth_valid_quotes": self.sent_quotes,
            "dead_letters": self.dead_letters,
            "truth_malformed": int(self.truth.get("malformed", 0)),
            "duplicates": self.duplicates,
            "measured_events": r.events,
            "unmeasured_events": r.unmeasured,
        }
        checks["ok"] = (
            self.trades_stored == self.sent_trades
            and self.quotes_stored == self.sent_quotes
            and self.dead_letters == checks["truth_malformed"]
            # A trade re-delivered (a reconnect's gap fill overlapping what arrived) is
            # measured again but stored once: the store reports it as a duplicate.
            and r.events + r.unmeasured == self.sent_trades + self.sent_quotes + self.duplicates
        )
        return checks


def ticker_list(n: int) -> list[str]:
    pool = list(DEFAULT_TICKERS) + [t for t in EXTRA_TICKERS if t not in DEFAULT_TICKERS]
    if not 1 <= n <= len(pool):
        raise ValueError(f"tickers must be 1..{len(pool)} (got {n})")
    return pool[:n]


def bench_settings(data_dir: Path, tickers: Sequence[str]) -> Settings:
    """The user's settings (env, .env) with the run pinned to the simulator in `data_dir`:
    a real Polygon or Finnhub key in the environment must not turn a benchmark into live
    traffic against the providers."""
    base = load_settings(data_dir=data_dir, tickers=",".join(tickers))
    return base.model_copy(
        update={
            "data_dir": data_dir,
            "source": "sim",
            "polygon_api_key": None,
            "finnhub_api_key": None,
        }
    )


async def live_run(
    settings: Settings,
    tickers: Sequence[str],
    phases: Sequence[Phase],
    *,
    seed: int,
    drain_limit_s: float = DRAIN_LIMIT_S,
    keep_status: bool = True,
    prepare: Callable[[Any, Callable[[], None]], None] | None = None,
    preroll_s: float = 0.0,
) -> LiveRun:
    """One run of `phases` through `run_embedded`. Without `prepare` the measurement (and the
    phase clock) starts with the pipeline; `prepare(pipeline, start)` gets the pipeline before
    any frame is processed and calls `start()` when the measurement should begin, the
    simulator running `preroll_s` longer than the phases to cover the wait."""
    from tradepulse.runner import run_embedded
    from tradepulse.sim import SimConfig

    total = sum(p.seconds for p in phases) + preroll_s
    truth_dir = settings.data_dir / "truth"
    sim_cfg = SimConfig(
        tickers=list(tickers),
        rate=phases[0].rate,
        seed=seed,
        profile="flat",
        truth_dir=truth_dir,
        duration_s=total,
    )
    rec = Recorder(tuple(phases), sim_cfg)
    status: list[str] = []

    def on_start(pipeline: Any) -> None:
        if prepare is None:
            rec.on_start(pipeline)
        else:
            prepare(pipeline, lambda: rec.on_start(pipeline))

    t0 = time.monotonic()
    try:
        summary = await run_embedded(
            settings,
            sim_config=sim_cfg,
            duration_s=total + drain_limit_s,
            serve_api=False,
            status_interval_s=5.0,
            out=status.append if keep_status else (lambda _line: None),
            observers=[rec.observe],
            on_start=on_start,
        )
    finally:
        await rec.stop()
    truth_file = truth_dir / "summary.json"
    truth = orjson.loads(truth_file.read_bytes()) if truth_file.exists() else {}
    return LiveRun(
        phases=tuple(phases),
        recorder=rec,
        truth=truth,
        trades_stored=summary.trades_stored,
        quotes_stored=summary.quotes_stored,
        dead_letters=summary.dead_letters,
        duplicates=summary.duplicates,
        seconds=time.monotonic() - t0,
        status=status,
    )


def phase_figures(run: LiveRun) -> list[dict[str, Any]]:
    r = run.recorder
    out: list[dict[str, Any]] = []
    start = 0.0
    tp = dict(r.throughput())
    for p in run.phases:
        end = start + p.seconds
        # Whole seconds strictly inside the phase: the edges hold partial seconds.
        secs = [tp.get(s, 0) for s in range(int(start) + 1, int(end))]
        samples = r.samples_in(start, end)
        lags = [s.lag for s in samples] or [0]
        out.append(
            {
                "phase": p.name,
                "start_s": start,
                "seconds": p.seconds,
                "offered_rate": p.rate,
                "committed_rate_mean": round(sum(secs) / len(secs), 1) if secs else None,
                "committed_rate_min": min(secs) if secs else None,
                "lag_max": max(lags),
                "lag_mean": round(sum(lags) / len(lags), 1),
                "lag_end": lags[-1],
                "rss_max_mb": max((s.rss_mb for s in samples), default=None),
                "cpu_mean_pct": round(sum(s.cpu_pct for s in samples) / len(samples), 1)
                if samples
                else None,
                "latency_ms": summarize(r.latency[p.name]),
            }
        )
        start = end
    return out


def live_figures(run: LiveRun) -> dict[str, Any]:
    r = run.recorder
    samples = r.samples
    rss = [s.rss_mb for s in samples]
    cpu = [s.cpu_pct for s in samples]
    return {
        "seconds": round(run.seconds, 1),
        "exactness": run.exact(),
        "phases": phase_figures(run),
        "latency_ms": summarize(r.latency["all"]),
        "latency_histogram": histogram_points(r.latency["all"]),
        "store_write_ms": summarize(r.store_write),
        "event_loop_stall_ms": summarize(r.loop_stall),
        "batches": r.batches,
        "mean_batch_events": round(r.events / r.batches, 1) if r.batches else 0,
        "max_batch_events": r.max_batch,
        "lag_max": max((s.lag for s in samples), default=0),
        "burst_drain_s": drain_seconds(run.phases, run.recorder.samples),
        "rss_mb_max": max(rss, default=None),
        "rss_mb_start": rss[0] if rss else None,
        "cpu_pct_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
        "cpu_pct_max": max(cpu, default=None),
        "measurement_overhead": {
            "observer_s": round(r.observer_s, 3),
            "us_per_event": round(r.observer_s / r.events * 1e6, 3) if r.events else None,
        },
        "timeline": {
            "throughput": r.throughput(),
            "samples": [
                [s.t, s.lag, s.queued_frames, s.rss_mb, s.cpu_pct, s.committed] for s in samples
            ],
            "sample_columns": ["t_s", "lag", "queued_frames", "rss_mb", "cpu_pct", "committed"],
        },
    }


async def max_search(
    root: Path,
    tickers: Sequence[str],
    p: Plan,
    seed: int,
    echo: Callable[[str], None],
    drain_limit_s: float,
) -> tuple[list[dict[str, Any]], LiveRun | None]:
    """Step the rate up; each step a fresh run; stop at the first step that is not bounded."""
    steps: list[dict[str, Any]] = []
    best: LiveRun | None = None
    for i, step in enumerate(p.steps):
        settings = bench_settings(root / f"step-{i}", tickers)
        run = await live_run(settings, tickers, [step], seed=seed, drain_limit_s=drain_limit_s)
        r = run.recorder
        ok, lag_info = lag_bounded(r.samples, step.rate, step.seconds)
        sent = run.sent_trades + run.sent_quotes
        achieved = sent / step.seconds
        tp = [n for s, n in r.throughput() if 1 <= s < int(step.seconds)]
        # The simulator shares this process: when it cannot generate the rate asked of it,
        # the step measures the generator, not the pipeline.
        generator_limited = achieved < 0.9 * step.rate
        entry = {
            "offered_rate": step.rate,
            "generated_rate": round(achieved, 1),
            "committed_rate_mean": round(sum(tp) / len(tp), 1) if tp else None,
            "bounded": ok,
            "generator_limited": generator_limited,
            "exact": run.exact()["ok"],
            "latency_ms": summarize(r.latency["all"]),
            "rss_mb_max": max((s.rss_mb for s in r.samples), default=None),
            "cpu_pct_mean": round(sum(s.cpu_pct for s in r.samples) / len(r.samples), 1)
            if r.samples
            else None,
            **lag_info,
        }
        steps.append(entry)
        echo(
            f"[bench] max: offered {step.rate:,.0f}/s generated {achieved:,.0f}/s "
            f"-> {'bounded' if ok else 'NOT bounded'}, end lag {lag_info['end_lag']:,.0f}"
        )
        if ok:
            best = run
        if not ok or generator_limited:
            break
    return steps, best


async def _bench(opts: BenchOptions, root: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    tickers = ticker_list(opts.tickers)
    p = plan(
        opts.scenario,
        rate=opts.rate,
        duration_s=opts.duration_s,
        quick=opts.quick,
        burst_s=opts.burst_s,
        recovery_s=opts.recovery_s,
    )
    started = time.time()
    doc: dict[str, Any] = {
        "command": opts.command,
        "started_at": started,
        "backend": opts.backend,
        "scenario": opts.scenario,
        "quick": opts.quick,
        "tickers": tickers,
        "seed": opts.seed,
        "plan": {
            "base_rate": p.base_rate,
            "phases": [vars_phase(x) for x in p.phases],
            "steps": [vars_phase(x) for x in p.steps],
        },
    }
    drain = QUICK_DRAIN_LIMIT_S if opts.quick else DRAIN_LIMIT_S
    settings = bench_settings(root / "live", tickers)
    doc["settings"] = settings.model_dump(mode="json")
    run: LiveRun | None = None
    if p.steps:
        echo(f"[bench] max: up to {len(p.steps)} steps of {p.steps[0].seconds:g} s")
        steps, run = await max_search(root, tickers, p, opts.seed, echo, drain)
        bounded = [s for s in steps if s["bounded"]]
        doc["max"] = {
            "steps": steps,
            "max_bounded_committed_rate": max(
                (s["committed_rate_mean"] or 0 for s in bounded), default=None
            ),
            "max_bounded_offered_rate": max((s["offered_rate"] for s in bounded), default=None),
            "stopped_by": (
                "unbounded lag"
                if steps and not steps[-1]["bounded"]
                else "generator limit"
                if steps and steps[-1]["generator_limited"]
                else "end of ladder"
            ),
            "definition": "bounded = lag at the end of the step (max over its last second) "
            "< 2 s of offered events and lag slope over the second half < 5 % of the rate",
        }
    else:
        total = p.seconds
        echo(
            f"[bench] live run: {opts.scenario}, {len(tickers)} tickers, "
            + ", ".join(f"{x.name} {x.seconds:g} s @ {x.rate:,.0f}/s" for x in p.phases)
            + f" (~{total:.0f} s)"
        )
        run = await live_run(settings, tickers, p.phases, seed=opts.seed, drain_limit_s=drain)
    if run is not None:
        doc["live"] = live_figures(run)
        ex = doc["live"]["exactness"]
        echo(
            f"[bench] live: {ex['stored_trades']:,} trades + {ex['stored_quotes']:,} quotes "
            f"stored, truth {ex['truth_valid_trades']:,} + {ex['truth_valid_quotes']:,} -> "
            f"{'exact' if ex['ok'] else 'MISMATCH'}"
        )

    if opts.retrain_compare:
        # Half the base rate in a quick run: the history it needs is generated at that rate
        # (see retrain.py), and the whole command has to stay under two minutes.
        retrain_rate = opts.retrain_rate or (p.base_rate / 2 if opts.quick else p.base_rate)
        retrain_s = opts.retrain_s or (5.0 if opts.quick else 60.0)
        echo(
            f"[bench] retraining on vs off: 2 runs of {retrain_s:g} s at {retrain_rate:,.0f}/s "
            f"from a warmed processor"
        )
        doc["retrain"] = await retrain.compare(
            root,
            lambda d: bench_settings(d, tickers),
            tickers,
            rate=retrain_rate,
            seconds=retrain_s,
            seed=opts.seed,
            drain_limit_s=drain,
            echo=echo,
        )

    # Peers on one recording, sized so ours runs a few seconds saturated.
    n_events = opts.peer_events or (150_000 if opts.quick else 1_000_000)
    peer_rate = p.base_rate
    echo(f"[bench] peers: recording {n_events:,} events of simulator frames")
    rec = record(tickers, peer_rate, seed=opts.seed, max_events=n_events, max_s=60.0)
    ours_max = opts.ours_max_s or (15.0 if opts.quick else 60.0)
    base_max = opts.baseline_max_s or (6.0 if opts.quick else 30.0)
    peers = await run_peers(
        bench_settings(root / "peer-ours", tickers),
        rec,
        root / "peer-baseline",
        ours_max_s=ours_max,
        baseline_max_s=base_max,
    )
    doc["peers"] = peer_figures(peers, rec)
    echo(
        f"[bench] peers: ours {peers.ours.events_per_s:,.0f} ev/s, baseline "
        f"{peers.baseline.events_per_s:,.0f} ev/s -> {peers.ratio:,.1f}x"
    )
    echo("[bench] micro-benchmarks: anomaly retrain/inference, VADER")
    live_batch = doc.get("live", {}).get("mean_batch_events") or 200.0
    # Trades per ticker in one micro-batch of the live run: the engine sees chunks this size.
    chunk = max(1, round(live_batch * rec.trades / max(rec.events, 1) / len(tickers)))
    eng = anomaly_engine(rec, chunk=chunk, max_vectors=15_000 if opts.quick else 200_000)
    engine = eng.pop("engine")
    costs: dict[str, Any] = {"engine": eng, **anomaly_costs(engine)}
    costs["sklearn_score_samples_us_one_vector"] = sklearn_single_score_us(
        engine, 50 if opts.quick else 200
    )
    costs["us_per_vector_amortized"] = eng["us_per_vector_amortized"]
    ours = peers.ours
    # In the pipeline the stage only scores rows past the features' warm-up (minutes of
    # event time), so this figure is meaningful on long runs only; it is reported as seen.
    costs["pipeline_stage"] = {
        "rows": ours.anomaly_rows,
        "retrains": ours.anomaly_fits,
        "seconds": round(ours.anomaly_s, 4),
        "us_per_row": round(ours.anomaly_s / ours.anomaly_rows * 1e6, 3)
        if ours.anomaly_rows
        else None,
    }
    doc["anomaly"] = costs
    doc["vader"] = vader_cost(opts.vader_headlines or (2000 if opts.quick else 20_000))
    doc["machine"] = report.machine_info()
    doc["versions"] = report.versions()
    doc["finished_at"] = time.time()
    doc["targets"] = report.targets(doc)
    doc["original"] = report.versus_original(doc)
    return doc


def vars_phase(x: Phase) -> dict[str, Any]:
    return {"name": x.name, "seconds": x.seconds, "rate": x.rate}


def peer_figures(peers: PeerResults, rec: Any) -> dict[str, Any]:
    o, b = peers.ours, peers.baseline
    return {
        "input": {
            "frames": len(rec.frames),
            "events": rec.events,
            "trades": rec.trades,
            "quotes": rec.quotes,
            "generator_us_per_event": round(rec.generate_s / max(rec.events, 1) * 1e6, 2),
        },
        "ours": {
            "events": o.events,
            "seconds": round(o.seconds, 3),
            "events_per_s": round(o.events_per_s, 1),
            "stored_trades": o.stored_trades,
            "stored_quotes": o.stored_quotes,
            "exact": o.stored_trades + o.stored_quotes == o.events,
        },
        "baseline": {
            "events": b.events,
            "seconds": round(b.seconds, 3),
            "events_per_s": round(b.events_per_s, 1),
            "stored_trades": b.stored_trades,
            "stored_quotes": b.stored_quotes,
            "exact": b.stored_trades + b.stored_quotes == b.events - b.invalid,
            "validate_us_per_event": b.validate_us,
            "score_us_per_trade": b.score_us,
            "write_us_per_event": b.write_us,
            "anomalies": b.anomalies,
        },
        "ratio_ours_over_baseline": round(peers.ratio, 2),
    }


def run_bench(opts: BenchOptions, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything, write the report into `opts.out`, return the JSON document."""
    if opts.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {opts.backend!r})")
    if opts.processors < 1:
        raise ValueError(f"processors must be at least 1 (got {opts.processors})")
    opts.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tradepulse-bench-") as tmp:
        if opts.backend == "cluster":
            from tradepulse.bench import cluster

            doc = asyncio.run(cluster.bench(opts, Path(tmp), echo))
        else:
            doc = asyncio.run(_bench(opts, Path(tmp), echo))
    doc["files"] = report.write_all(doc, opts.out, plots=opts.plots)
    return doc


__all__ = ["BenchOptions", "run_bench"]
