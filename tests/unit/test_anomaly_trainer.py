"""The compiled Isolation Forest trainer (process/iforest.py) against scikit-learn's.

Same fitted trees → identical scores is tested in test_anomaly.py (`Forest.from_sklearn`);
here: the trainer grows valid isolation trees, is deterministic per seed, computes the cut-off
as scikit-learn does, and detects as well as scikit-learn (AUC within 0.01, several seeds).

Run as a script for the speed figures (fit, scoring, amortised cost at the engine's cadence,
JIT compile time); they are reported, not asserted:

    .venv/bin/python tests/unit/test_anomaly_trainer.py
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from tradepulse.process.anomaly import (
    AnomalyEngine,
    AnomalyParams,
    Forest,
    average_path_length,
    fit_forest,
    model_seed,
)
from tradepulse.process.iforest import features_major, max_depth_for, walk

pytestmark = pytest.mark.unit


def inliers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian and heavy-tailed columns, one of them a scale mixture."""
    return np.column_stack(
        [
            rng.normal(0, 1, n),
            rng.normal(0, 1, n),
            rng.standard_t(3, n),
            rng.standard_t(3, n),
            rng.normal(0, 1, n) * rng.choice([1.0, 3.0], n),
            rng.laplace(0, 1, n),
        ]
    )


def outliers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Half pushed 3–5 σ out on one feature, half shifted ~1 σ on all six: hard enough that
    AUC stays near 0.8, where a weaker trainer would show."""
    x = inliers(rng, n)
    k = n // 2
    f = rng.integers(0, 6, k)
    x[np.arange(k), f] += rng.choice([-1.0, 1.0], k) * rng.uniform(3, 5, k)
    x[k:] += rng.choice([-1.0, 1.0], (n - k, 6)) * rng.uniform(0.8, 1.6, (n - k, 6))
    return x


def fit(x: np.ndarray, seed: int, n_trees: int = 100) -> Forest:
    return Forest.fit(x, seed, n_trees=n_trees, max_samples=256, contamination=0.01)


def test_auc_matches_scikit_learn() -> None:
    aucs = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        train = np.vstack([inliers(rng, 990), outliers(rng, 10)])
        rng.shuffle(train)
        test = np.vstack([inliers(rng, 2000), outliers(rng, 100)])
        y = np.r_[np.zeros(2000), np.ones(100)]
        ref = IsolationForest(
            n_estimators=100, max_samples=256, contamination=0.01, random_state=seed
        ).fit(train)
        ours = fit(train, model_seed("T", 0, seed))
        aucs.append(
            (roc_auc_score(y, -ref.score_samples(test)), roc_auc_score(y, -ours.score(test)))
        )
    sk, nb = np.mean(aucs, axis=0)
    assert 0.7 < sk < 0.95  # the task is neither trivial nor hopeless
    assert abs(nb - sk) <= 0.01, (sk, nb, aucs)


def test_same_seed_same_forest_and_scores() -> None:
    x = inliers(np.random.default_rng(1), 1000)
    a, b = fit(x, 7), fit(x, 7)
    for field in ("roots", "depth", "left", "feature", "threshold", "value", "n_node_samples"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.offset == b.offset
    np.testing.assert_array_equal(a.score(x), b.score(x))
    c = fit(x, 8)
    assert not np.array_equal(a.score(x), c.score(x))


def test_offset_is_the_contamination_quantile_of_training_scores() -> None:
    # The trainer sums training rows' path lengths while growing (in-bag rows from their
    # leaves, the rest walked); that must equal scoring them afterwards, bit for bit.
    for n in (1000, 300, 40):
        x = inliers(np.random.default_rng(n), n)
        forest = fit(x, 3)
        assert forest.offset == np.percentile(forest.score(x), 1.0)


def test_trees_are_isolation_trees() -> None:
    x = inliers(np.random.default_rng(2), 1000)
    x[:, 1] = np.round(x[:, 1])  # ties and constant nodes
    forest = fit(x, 11, n_trees=20)
    x32 = x.astype(np.float32).astype(np.float64)
    nodes = np.arange(len(forest.left))
    leaf = forest.left == nodes
    assert (forest.n_node_samples[forest.roots] == 256).all()
    assert (forest.depth <= max_depth_for(256)).all()
    # children adjacent and their sizes add up
    inner = nodes[~leaf]
    kids = forest.n_node_samples[forest.left[inner]] + forest.n_node_samples[forest.left[inner] + 1]
    np.testing.assert_array_equal(kids, forest.n_node_samples[inner])
    assert (forest.n_node_samples > 0).all()
    assert np.isinf(forest.threshold[leaf]).all()
    # each split lies inside the training range of its feature
    lo, hi = x32.min(axis=0), x32.max(axis=0)
    f = forest.feature[inner]
    assert ((forest.threshold[inner] >= lo[f]) & (forest.threshold[inner] < hi[f])).all()
    # path-length credit: depth + c(n) at each leaf
    depth = np.zeros(len(nodes), dtype=np.int64)
    for node in inner:  # parents come before their children
        depth[forest.left[node]] = depth[forest.left[node] + 1] = depth[node] + 1
    expect = [depth[i] + average_path_length(float(forest.n_node_samples[i])) for i in nodes]
    np.testing.assert_allclose(forest.value, expect, rtol=0, atol=1e-12)


def test_degenerate_inputs_match_scikit_learn() -> None:
    same = np.tile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (300, 1))
    ref = IsolationForest(n_estimators=10, random_state=0).fit(same)
    np.testing.assert_array_equal(fit(same, 0, 10).score(same[:5]), ref.score_samples(same[:5]))
    one = np.ones((1, 6))
    ref1 = IsolationForest(n_estimators=10, max_samples=1, random_state=0).fit(one)
    np.testing.assert_array_equal(fit(one, 0, 10).score(one), ref1.score_samples(one))
    with pytest.raises(ValueError):
        fit(np.full((10, 6), np.nan), 0)
    with pytest.raises(ValueError):
        fit(np.full((10, 6), 1e39), 0)  # beyond float32, as scikit-learn refuses


def test_scikit_learn_trainer_stays_selectable() -> None:
    x = inliers(np.random.default_rng(4), 400)
    params = AnomalyParams(trainer="sklearn", n_trees=10)
    ref = IsolationForest(n_estimators=10, max_samples=256, contamination=0.01, random_state=9).fit(
        x
    )
    got = fit_forest(x, 9, params)
    np.testing.assert_array_equal(got.score(x), ref.score_samples(x))
    assert got.offset == ref.offset_
    assert AnomalyParams().trainer == "numba"


def test_trained_trees_are_pinned() -> None:
    # Replays fit identical forests only while the trainer draws the same trees from the same
    # (rows, seed): a change to the random stream or to how nodes are split must show here
    # (and is then a deliberate, documented change). Inputs are exact in binary, so the pin
    # does not depend on the platform's libm (the leaf values, which use log, are left out).
    i = np.arange(1000)[:, None]
    f = np.arange(6)[None, :]
    x = ((i * 7919 + f * 104729) % 1009) / 7.0
    x[:, 1] = np.round(x[:, 1] / 20)  # ties and constant nodes
    forest = fit(x, 20240312)
    digest = hashlib.sha256()
    for field in ("roots", "depth", "left", "feature", "threshold", "n_node_samples"):
        digest.update(np.ascontiguousarray(getattr(forest, field)).tobytes())
    assert len(forest.left) == 20680
    assert digest.hexdigest() == (
        "9c690fd5ff5c84f380475b6b84138235d9cb18ebe8aaec4cf2b0c509aee595b2"
    )


def test_walk_equals_per_row_walk() -> None:
    # Walking the batch level by level is bookkeeping only: row by row gives the same sums.
    x = inliers(np.random.default_rng(5), 37)
    forest = fit(inliers(np.random.default_rng(6), 500), 1, n_trees=5)
    xt = features_major(x)
    args = (forest.roots, forest.depth, forest.left, forest.feature, forest.threshold)
    batch = walk(xt, *args, forest.value)
    single = [walk(xt[:, i : i + 1].copy(), *args, forest.value)[0] for i in range(len(x))]
    np.testing.assert_array_equal(batch, single)


# --- speed report (python tests/unit/test_anomaly_trainer.py) -----------------------------


def _market(n: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    return np.column_stack(
        [
            100 + np.cumsum(r.normal(0, 0.02, n)),
            r.choice([100, 200, 300, 500], n).astype(float),
            r.standard_t(3, n),
            r.normal(0, 0.05, n),
            r.normal(0, 0.05, n),
            r.poisson(60, n).astype(float),
        ]
    )


def _best_ms(fn: object, reps: int) -> tuple[float, float]:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3, float(np.median(ts)) * 1e3


def _compile_seconds() -> tuple[float, float]:
    """First fit + score in a fresh process (imports excluded): with an empty numba cache —
    what a CI run or a new container pays once — and then from the cache it wrote."""
    code = (
        "import time, numpy as np;"
        "from tradepulse.process.anomaly import Forest;"
        "x=np.random.default_rng(0).normal(size=(64,6)); t=time.perf_counter();"
        "Forest.fit(x,0,n_trees=2,max_samples=256,contamination=0.01).score(x);"
        "print(time.perf_counter()-t)"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    return float(cold.stdout), float(warm.stdout)


def report() -> None:
    cold, warm = _compile_seconds()
    print(f"JIT: first fit+score, empty numba cache {cold:.1f} s; from the cache {warm:.2f} s")
    x = _market(1000, 1)
    fit(x, 0)
    ms_min, ms_med = _best_ms(lambda: fit(x, 1), 30)
    print(f"fit 1000x6, 100 trees, 256 samples: {ms_min:.2f} ms (median {ms_med:.2f})")
    sk_min, sk_med = _best_ms(
        lambda: IsolationForest(n_estimators=100, contamination=0.01, random_state=0).fit(x), 5
    )
    print(f"scikit-learn fit, same data:       {sk_min:.1f} ms (median {sk_med:.1f})")
    forest = fit(x, 2)
    for n in (1, 20, 100, 500, 1000):
        s_min, s_med = _best_ms(lambda n=n: forest.score(x[:n]), 50)
        print(f"score batch {n:>4}: {s_min * 1e3 / n:7.2f} µs/event (median {s_med * 1e3 / n:.2f})")
    n_events = 20_000
    mats = {t: _market(n_events, i) for i, t in enumerate("ABCDE")}
    for chunk in (20, 100, 500):
        runs = []
        for _ in range(3):
            engine = AnomalyEngine(AnomalyParams())
            elapsed = 0.0
            for a in range(0, n_events, chunk):
                for ticker, m in mats.items():
                    t0 = time.perf_counter()
                    engine.update(ticker, 1, m[a : a + chunk])
                    elapsed += time.perf_counter() - t0
            runs.append(elapsed / (5 * n_events) * 1e6)
        print(
            f"engine, 5 tickers, {chunk:>3} rows/ticker/batch, window 1000, retrain every 500: "
            f"{min(runs):.2f} µs/event amortised incl. {engine.fits} fits "
            f"(runs: {', '.join(f'{r:.2f}' for r in runs)})"
        )


if __name__ == "__main__":
    report()
