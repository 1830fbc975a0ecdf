"""Isolation Forest per ticker: compiled scores equal scikit-learn's, replay determinism,
sliding window and retrain cadence, injected outliers flagged."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from tradepulse.process.anomaly import (
    FEATURES,
    KIND_BY_FEATURE,
    AnomalyEngine,
    AnomalyParams,
    Forest,
    _judge,
    anomaly_rows,
    fit_forest,
    model_seed,
    percentile,
    robust_scale,
)

pytestmark = pytest.mark.unit

SESSION = 20240312


def normal_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            100 + rng.normal(0, 0.2, n),  # price
            rng.choice([100, 200, 300, 500], n).astype(float),  # size
            rng.normal(0, 1, n),  # volume_zscore
            rng.normal(0, 0.05, n),  # price_momentum
            rng.normal(0, 0.05, n),  # vwap_deviation
            rng.poisson(60, n).astype(float),  # trade_frequency
        ]
    )


@pytest.mark.parametrize("n_train", [40, 300, 1000])
def test_compiled_scores_equal_scikit_learn(n_train: int) -> None:
    x = normal_vectors(n_train, seed=n_train)
    model = IsolationForest(
        n_estimators=100, max_samples=min(256, n_train), contamination=0.01, random_state=5
    ).fit(x)
    probe = np.vstack([normal_vectors(500, seed=99), x[:50], x[:50] * 3.0])
    forest = Forest.from_sklearn(model)
    np.testing.assert_array_equal(forest.score(probe), model.score_samples(probe))
    assert forest.offset == model.offset_


def test_fit_is_deterministic_per_seed() -> None:
    x = normal_vectors(1000)
    params = AnomalyParams()
    a = fit_forest(x, model_seed("AAPL", SESSION, 1), params)
    b = fit_forest(x, model_seed("AAPL", SESSION, 1), params)
    np.testing.assert_array_equal(a.score(x), b.score(x))
    assert model_seed("AAPL", SESSION, 1) != model_seed("MSFT", SESSION, 1)


def run(engine: AnomalyEngine, x: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Feed `x` in batches of the given sizes; return (score or NaN, version or -1) per row."""
    scores = np.full(len(x), np.nan)
    versions = np.full(len(x), -1)
    a = 0
    k = 0
    while a < len(x):
        b = min(len(x), a + sizes[k % len(sizes)])
        k += 1
        out = engine.update("AAPL", SESSION, x[a:b])
        if out is not None:
            scores[a + out.index] = out.score
            versions[a + out.index] = out.version
        a = b
    return scores, versions


def test_no_scores_before_first_model_and_cadence() -> None:
    params = AnomalyParams(train_window=1000, retrain_every=500)
    x = normal_vectors(2600)
    scores, versions = run(AnomalyEngine(params), x, [137])
    assert np.isnan(scores[:500]).all()
    assert not np.isnan(scores[500:]).any()
    # version v (trained on rows up to v·500) scores rows v·500+1 … (v+1)·500
    assert (versions[500:1000] == 1).all() and (versions[1000:1500] == 2).all()
    assert (versions[2500:] == 5).all()


def test_replay_is_identical_whatever_the_batching() -> None:
    x = normal_vectors(2200, seed=3)
    s1, v1 = run(AnomalyEngine(), x, [1, 7, 500, 33])
    s2, v2 = run(AnomalyEngine(), x, [2200])
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(v1, v2)


def test_sliding_window_holds_the_last_vectors() -> None:
    params = AnomalyParams(train_window=1000, retrain_every=500)
    engine = AnomalyEngine(params)
    x = normal_vectors(2500, seed=4)
    run(engine, x, [333])
    st = engine.state["AAPL"]
    np.testing.assert_array_equal(st.window(1000), x[-1000:])
    # the current model was fitted on exactly that window with the version's seed
    expected = fit_forest(x[-1000:], model_seed("AAPL", SESSION, 5), params)
    assert st.model is not None and st.model.version == 5
    np.testing.assert_array_equal(st.model.forest.score(x[:10]), expected.score(x[:10]))


def test_injected_outliers_are_flagged_with_a_kind() -> None:
    # Anomalies as the market shows them: several features move together. (One extreme
    # feature among six noisy ones is isolated only by the ~1/6 of splits that pick it and
    # scores near the cut-off; that limit of the 6-feature forest is measured by the eval.)
    x = normal_vectors(3000, seed=5)
    bursts, jumps = [1200, 2300], [1700, 2800]
    for i in bursts:
        x[i, 1] = 20_000.0  # a block print
        x[i, 2] = 12.0  # volume z-score
        x[i, 5] = 240.0  # trades per minute
    for i in jumps:
        x[i, 0] = 106.0  # +6 %
        x[i, 3] = 6.0  # momentum, %
        x[i, 4] = 5.5  # deviation from the 5-minute VWAP, %
    out = AnomalyEngine().update("AAPL", SESSION, x)
    assert out is not None
    flagged = set(out.index[out.is_anomaly].tolist())
    assert set(bursts + jumps) <= flagged
    assert len(flagged) < 0.03 * len(x)  # about the contamination rate otherwise
    kinds = {int(i): k for i, k, f in zip(out.index, out.kind, out.is_anomaly, strict=True) if f}
    assert {kinds[i] for i in jumps} == {"price_jump"}
    assert {kinds[i] for i in bursts} <= {"volume_spike", "large_trade", "trade_burst"}
    rows = anomaly_rows(out, list(range(len(x))), list(range(len(x))), x)
    assert {r["sequence_number"] for r in rows} == flagged
    row = next(r for r in rows if r["sequence_number"] == bursts[0])
    assert row["anomaly_score"] < row["threshold"] < 0
    assert '"volume_zscore":12.0' in row["features"]
    assert isinstance(row["model_version"], int)


def test_fixed_threshold_overrides_the_cutoff() -> None:
    x = normal_vectors(1500, seed=6)
    out = AnomalyEngine(AnomalyParams(threshold=-0.5)).update("AAPL", SESSION, x)
    assert out is not None
    assert (out.threshold == -0.5).all()
    np.testing.assert_array_equal(out.is_anomaly, out.score < -0.5)


def test_new_session_starts_fresh() -> None:
    engine = AnomalyEngine()
    engine.update("AAPL", SESSION, normal_vectors(1200))
    assert engine.update("AAPL", SESSION + 1, normal_vectors(100)) is None
    assert engine.state["AAPL"].count == 100


def test_retrain_off_keeps_the_first_model() -> None:
    x = normal_vectors(2600, seed=7)
    on_s, _ = run(AnomalyEngine(), x, [137])
    engine = AnomalyEngine(AnomalyParams(retrain=False))
    off_s, off_v = run(engine, x, [137])
    assert engine.fits == 1
    assert np.isnan(off_s[:500]).all() and (off_v[500:] == 1).all()
    # Until the second model would take over, both engines are the same engine.
    np.testing.assert_array_equal(off_s[:1000], on_s[:1000])
    assert not np.array_equal(off_s[1000:], on_s[1000:])


def reference_kinds(x: np.ndarray, med: np.ndarray, scale: np.ndarray) -> list[str]:
    """The definition of the kind, in numpy (ties: first feature; a NaN wins)."""
    idx = np.argmax(np.abs(x - med) / scale, axis=1)
    return [KIND_BY_FEATURE[FEATURES[i]] for i in idx.tolist()]


def test_flags_and_kinds_follow_their_numpy_definition() -> None:
    x = normal_vectors(3000, seed=8)
    x[2000:2300] *= 1.8  # a drift, so some batches hold many flagged rows
    engine = AnomalyEngine()
    a = 0
    seen = 0
    for size in [16, 7, 500, 1, 33] * 30:
        out = engine.update("AAPL", SESSION, x[a : a + size])
        if out is not None:
            np.testing.assert_array_equal(out.is_anomaly, out.score < out.threshold)
            st = engine.state["AAPL"]
            assert st.model is not None
            # Rows of the batch scored before its retrain point (if any) used the older model:
            # check the ones scored by the current model's version.
            cur = out.version == st.model.version
            rows = x[a + out.index[cur & out.is_anomaly]]
            got = [k for k, c, f in zip(out.kind, cur, out.is_anomaly, strict=True) if c and f]
            assert got == reference_kinds(rows, st.model.med, st.model.scale)
            assert all(k == "" for k, f in zip(out.kind, out.is_anomaly, strict=True) if not f)
            seen += int(out.is_anomaly.sum())
        a += size
        if a >= len(x):
            break
    assert seen > 20


def test_kind_ties_and_nan_as_numpy_argmax() -> None:
    med, scale = np.zeros(6), np.ones(6)
    x = np.array(
        [
            [1.0, -3.0, 3.0, 0.0, 0.0, 0.0],  # tie between features 1 and 2: the first
            [0.0, 0.0, np.nan, 9.0, 0.0, 0.0],  # NaN wins, wherever the maximum is
            [np.nan, 5.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all equal: feature 0
            [0.0, 0.0, 0.0, 0.0, 0.0, np.inf],
        ]
    )
    score = np.full(len(x), -0.9)
    index, thr, ver, flagged, kind, n = _judge(x, 0, score, -0.5, 3, med, scale)
    np.testing.assert_array_equal(kind, np.argmax(np.abs(x - med) / scale, axis=1))
    assert flagged.all() and n == len(x) and (ver == 3).all() and (thr == -0.5).all()
    np.testing.assert_array_equal(index, np.arange(len(x)))
    _, _, _, flagged, kind, n = _judge(x, 1, score[:3], -0.95, 1, med, scale)
    assert not flagged.any() and n == 0 and (kind == -1).all()


def test_robust_scale_equals_numpy_medians() -> None:
    rng = np.random.default_rng(9)
    for n in (1, 2, 3, 10, 999, 1000):
        x = np.round(rng.normal(size=(n, 6)) * 10, 1)  # ties
        x[:, 4] = 7.0  # a constant feature: the floor
        med = np.median(x, axis=0)
        mad = 1.4826 * np.median(np.abs(x - med), axis=0)
        want = np.maximum(mad, 1e-9 * np.maximum(np.abs(med), 1.0))
        got_med, got_scale = robust_scale(x)
        np.testing.assert_array_equal(got_med, med)
        np.testing.assert_array_equal(got_scale, want)


def test_percentile_equals_numpy() -> None:
    rng = np.random.default_rng(10)
    for _ in range(500):
        n = int(rng.integers(1, 1200))
        a = np.round(rng.normal(size=n), int(rng.integers(0, 4)))  # ties at some roundings
        for q in (1.0, 0.1, 0.7, 2.5, 50.0, 99.99, 100.0, float(rng.uniform(0, 100))):
            assert percentile(a, q) == np.percentile(a, q), (n, q)


def test_scores_of_float32_input_equal_scikit_learn() -> None:
    x = normal_vectors(400, seed=11)
    model = IsolationForest(n_estimators=20, random_state=1).fit(x)
    probe = normal_vectors(64, seed=12).astype(np.float32)
    np.testing.assert_array_equal(
        Forest.from_sklearn(model).score(probe), model.score_samples(probe)
    )
