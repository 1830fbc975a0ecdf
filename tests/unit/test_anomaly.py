"""Isolation Forest per ticker: compiled scores equal scikit-learn's, replay determinism,
sliding window and retrain cadence, injected outliers flagged."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from tradepulse.process.anomaly import (
    AnomalyEngine,
    AnomalyParams,
    Forest,
    anomaly_rows,
    fit_forest,
    model_seed,
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
