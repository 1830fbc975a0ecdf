"""Micro-benchmarks of the two model costs issue 8 asks for separately from the pipeline run.

* Anomaly detection: the engine of process/anomaly.py on a feature matrix of the recorded
  trades, fed in pipeline-sized chunks per ticker at the original's cadence (window 1000,
  retrain every 500), so the amortized cost per vector includes every retrain; then what one
  retrain costs and what inference alone costs, on a window the engine really trained on.
  The matrix is built here rather than taken from the pipeline's feature rows because those
  stay `warming_up` (and unscored) for the first minutes of event time, longer than a quick
  run lasts. Price and size are the recorded ones; the four derived features come from simple
  rolling formulas (same shape and scale as the pipeline's, not its exact values).
* VADER: `process.sentiment.bench_vader`, µs per headline.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from tradepulse.bench.baseline import TickerFeatures
from tradepulse.bench.feed import Recording
from tradepulse.market_time import NS_PER_MS
from tradepulse.process import sentiment


def compile_anomaly_kernels() -> None:
    """Compile (or load from numba's cache) every kernel the engine runs — fit, medians,
    scoring, flagging — outside any timed section: a fresh process pays that once, a start-up
    cost, not a per-event one. A tiny engine through two retrains with everything flagged."""
    from tradepulse.process.anomaly import AnomalyEngine, AnomalyParams

    x = np.random.default_rng(0).normal(size=(100, 6))
    params = AnomalyParams(train_window=64, retrain_every=32, n_trees=2, threshold=-0.01)
    AnomalyEngine(params).update("X", 0, x)


def anomaly_engine(rec: Recording, *, chunk: int, max_vectors: int) -> dict[str, Any]:
    """Amortized µs per vector of `AnomalyEngine.update` incl. retraining, and the engine."""
    from tradepulse.process.anomaly import AnomalyEngine, AnomalyParams

    feats: dict[str, TickerFeatures] = {}
    rows: dict[str, list[list[float]]] = {}
    n = 0
    for frame in rec.frames:
        for ev in orjson.loads(frame):
            if ev.get("ev") != "T":
                continue
            st = feats.setdefault(ev["sym"], TickerFeatures())
            rows.setdefault(ev["sym"], []).append(st.update(ev["t"] * NS_PER_MS, ev["p"], ev["s"]))
            n += 1
        if n >= max_vectors:
            break
    engine = AnomalyEngine(AnomalyParams())
    compile_anomaly_kernels()
    mats = {t: np.asarray(r, dtype=np.float64) for t, r in rows.items()}
    # Interleave tickers chunk by chunk, as micro-batches arrive.
    longest = max((len(m) for m in mats.values()), default=0)
    elapsed = 0.0
    scored = 0
    for a in range(0, longest, chunk):
        for ticker, m in mats.items():
            part = m[a : a + chunk]
            if not len(part):
                continue
            t0 = time.perf_counter()
            out = engine.update(ticker, 0, part)
            elapsed += time.perf_counter() - t0
            scored += 0 if out is None else len(out.index)
    total = sum(len(m) for m in mats.values())
    return {
        "vectors": total,
        "vectors_scored": scored,
        "chunk_per_ticker": chunk,
        "retrains": engine.fits,
        "seconds": round(elapsed, 4),
        "us_per_vector_amortized": round(elapsed / total * 1e6, 3) if total else None,
        "engine": engine,
    }


def anomaly_costs(engine: Any, *, fits: int = 10, score_rows: int = 50_000) -> dict[str, Any]:
    """Retrain ms and inference µs/vector from the richest training window in `engine`."""
    from tradepulse.process.anomaly import fit_forest, model_seed, robust_scale

    states = getattr(engine, "state", {}) if engine is not None else {}
    windows = [
        (name, st.window(engine.params.train_window))
        for name, st in states.items()
        if st.count >= engine.params.train_window
    ]
    if not windows:
        return {"measured": False, "why": "no ticker reached a full training window"}
    ticker, x = max(windows, key=lambda w: len(w[1]))
    forest = fit_forest(x, model_seed(ticker, 0, 0), engine.params)  # compile outside timing
    robust_scale(x)
    t0 = time.perf_counter()
    for v in range(fits):
        # What the engine does per retrain: the forest with its cut-off, and the medians/MAD
        # the anomaly kinds are named by.
        forest = fit_forest(x, model_seed(ticker, 0, v + 1), engine.params)
        robust_scale(x)
    fit_ms = (time.perf_counter() - t0) / fits * 1e3
    reps = max(1, score_rows // len(x))
    t0 = time.perf_counter()
    for _ in range(reps):
        forest.score(x)
    score_us = (time.perf_counter() - t0) / (reps * len(x)) * 1e6
    # One vector at a time, the way a per-event design calls it (the batch saving).
    t0 = time.perf_counter()
    single = min(2000, len(x))
    for i in range(single):
        forest.score(x[i : i + 1])
    single_us = (time.perf_counter() - t0) / single * 1e6
    return {
        "measured": True,
        "window_rows": len(x),
        "trees": engine.params.n_trees,
        "retrain_ms": round(fit_ms, 2),
        "inference_us_per_vector_batched": round(score_us, 3),
        "inference_us_per_vector_one_at_a_time": round(single_us, 2),
        "retrain_every": engine.params.retrain_every,
        "retrain_amortized_us_per_vector": round(fit_ms * 1e3 / engine.params.retrain_every, 3),
    }


def vader_cost(n: int) -> dict[str, Any]:
    return {"headlines": n, "us_per_headline": round(sentiment.bench_vader(n), 2)}


def sklearn_single_score_us(engine: Any, n: int = 200) -> float | None:
    """scikit-learn's own `score_samples` on one vector (the original's per-event call)."""
    from sklearn.ensemble import IsolationForest

    states = getattr(engine, "state", {}) if engine is not None else {}
    for st in states.values():
        if st.count >= engine.params.train_window:
            x = st.window(engine.params.train_window)
            model = IsolationForest(n_estimators=100, random_state=0).fit(x)
            model.score_samples(x[:1])
            t0 = time.perf_counter()
            for i in range(n):
                model.score_samples(x[i % len(x) : i % len(x) + 1])
            return round((time.perf_counter() - t0) / n * 1e6, 1)
    return None


__all__ = [
    "anomaly_costs",
    "anomaly_engine",
    "compile_anomaly_kernels",
    "sklearn_single_score_us",
    "vader_cost",
]
