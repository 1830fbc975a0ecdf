"""Anomaly scoring against injected ground truth, on hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tradepulse.market_time import NS_PER_S
from tradepulse.ops.evaluate_anomalies import (
    DEFAULT_ALLOWANCE_NS,
    auc,
    evaluate_anomalies,
    format_report,
)

S = NS_PER_S
TRUTH = [
    {"ticker": "AAPL", "sequence_number": 10, "kind": "price_jump", "start_ns": 100 * S,
     "end_ns": 101 * S, "magnitude": 3.0},
    {"ticker": "AAPL", "sequence_number": 90, "kind": "volume_burst", "start_ns": 500 * S,
     "end_ns": 505 * S, "magnitude": 10.0},
    {"ticker": "MSFT", "sequence_number": 5, "kind": "price_jump", "start_ns": 100 * S,
     "end_ns": 101 * S, "magnitude": 3.0},
]  # fmt: skip


def test_recall_precision_and_delay() -> None:
    rows = [
        {"ticker": "AAPL", "timestamp": 102 * S},  # within the 5 s allowance: detects #0
        {"ticker": "AAPL", "timestamp": 103 * S},  # same anomaly again: a TP, not a 2nd detection
        {"ticker": "MSFT", "timestamp": 300 * S},  # nothing injected then: FP
        {"ticker": "NVDA", "timestamp": 100 * S},  # a ticker without truth: FP
    ]
    r = evaluate_anomalies(rows, TRUTH, allowance_ns=5 * S)
    assert r["stored_anomalies"] == 4 and r["true_positives"] == 2
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(1 / 3)
    pj = r["by_kind"]["price_jump"]
    assert (pj["injected"], pj["detected"], pj["recall"]) == (2, 1, 0.5)
    assert pj["delay_s_median"] == pytest.approx(2.0)
    assert r["by_kind"]["volume_burst"]["recall"] == 0.0
    assert "price_jump" in format_report(r)


def test_outside_the_allowance_is_not_a_detection() -> None:
    r = evaluate_anomalies([{"ticker": "AAPL", "timestamp": 107 * S}], TRUTH, allowance_ns=5 * S)
    assert r["true_positives"] == 0 and r["by_kind"]["price_jump"]["detected"] == 0
    # The default allowance is the features' 60 s memory: the same flag is a detection.
    assert DEFAULT_ALLOWANCE_NS == 60 * S
    r = evaluate_anomalies([{"ticker": "AAPL", "timestamp": 107 * S}], TRUTH)
    assert r["true_positives"] == 1 and r["by_kind"]["price_jump"]["detected"] == 1
    r = evaluate_anomalies([{"ticker": "AAPL", "timestamp": 162 * S}], TRUTH)
    assert r["true_positives"] == 0


def test_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, 500).astype(float)  # many ties
    labels = rng.random(500) < 0.2
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert auc(scores, np.zeros(500, dtype=bool)) is None


def test_auc_from_scored_trades() -> None:
    scored = [
        {"ticker": "AAPL", "timestamp": 100 * S, "anomaly_score": -0.8},
        {"ticker": "AAPL", "timestamp": 200 * S, "anomaly_score": -0.4},
        {"ticker": "AAPL", "timestamp": 201 * S, "anomaly_score": None},  # warm-up: skipped
        {"ticker": "MSFT", "timestamp": 300 * S, "anomaly_score": -0.3},
    ]
    r = evaluate_anomalies([], TRUTH, scored_rows=scored)
    assert r["scored_trades"] == 3 and r["auc"] == pytest.approx(1.0)


def test_threshold_sweep_counts_flags_and_detections() -> None:
    scored = [
        {"ticker": "AAPL", "timestamp": 100 * S, "anomaly_score": -0.72},  # in #0
        {"ticker": "AAPL", "timestamp": 501 * S, "anomaly_score": -0.58},  # in #1
        {"ticker": "AAPL", "timestamp": 300 * S, "anomaly_score": -0.62},  # outside: FP
        {"ticker": "MSFT", "timestamp": 400 * S, "anomaly_score": -0.45},  # outside, normal
    ]
    r = evaluate_anomalies([], TRUTH, scored_rows=scored)
    sweep = {row["threshold"]: row for row in r["threshold_sweep"]}
    assert (sweep[-0.5]["flagged"], sweep[-0.5]["precision"]) == (3, pytest.approx(2 / 3))
    assert sweep[-0.5]["recall"] == pytest.approx(2 / 3)
    assert (sweep[-0.6]["flagged"], sweep[-0.6]["precision"]) == (2, pytest.approx(0.5))
    assert sweep[-0.6]["recall"] == pytest.approx(1 / 3)
    assert (sweep[-0.75]["flagged"], sweep[-0.75]["precision"]) == (0, None)
    assert "score < -0.60" in format_report(r)
