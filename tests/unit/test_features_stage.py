"""The stage adapters: declared tables, rows, and warm-then-apply equal to an unbroken run."""

from __future__ import annotations

import random
from typing import Any

import pytest
from test_features_golden import synthetic_trades

from tradepulse.config import Settings
from tradepulse.events import Trade
from tradepulse.process.feature_stage import AnomalyStage, BarStage, FeatureStage
from tradepulse.process.pipeline import WorkBatch

pytestmark = pytest.mark.unit


def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def stages() -> list[Any]:
    # The contamination cut-off flags a share of any input, so these short synthetic runs
    # always have anomalies to compare; the default fixed threshold may flag none of them.
    s = Settings(_env_file=None, anomaly_threshold=None)  # type: ignore[call-arg]
    return [FeatureStage(s), BarStage(s), AnomalyStage(s)]


def batches(trades: list[Trade], seed: int = 1) -> list[list[Trade]]:
    rnd = random.Random(seed)
    out, i = [], 0
    while i < len(trades):
        n = rnd.choice([5, 50, 200])
        out.append(trades[i : i + n])
        i += n
    return out


def apply_all(sts: list[Any], bs: list[list[Trade]], wm: int = 0) -> list[dict[str, list[Any]]]:
    outs = []
    for chunk in bs:
        wm = max([wm] + [t.timestamp for t in chunk])
        batch = WorkBatch(trades=list(chunk), watermark_ns=wm)
        for st in sts:
            st.apply(batch)
        outs.append(batch.derived)
    return outs


def test_declared_tables() -> None:
    tables = {t.name: t for st in stages() for t in st.tables}
    assert set(tables) == {"features", "features_latest", "bars", "anomalies"}
    assert tables["features"].key == ("ticker", "timestamp", "sequence_number")
    assert tables["features"].mode == "ignore" and tables["features"].cold
    assert tables["features_latest"].key == ("ticker",)
    assert tables["features_latest"].mode == "newer"
    assert tables["features_latest"].order_by == ("timestamp", "sequence_number")
    assert tables["bars"].mode == "replace" and tables["bars"].cold
    assert tables["anomalies"].key == ("ticker", "timestamp", "sequence_number")
    for t in tables.values():
        assert t.time_column in t.columns and set(t.key) <= set(t.columns)


def test_rows_are_plain_and_latest_is_the_newest_per_ticker() -> None:
    trades = synthetic_trades(minutes=3)
    st = FeatureStage(settings())
    batch = WorkBatch(trades=trades[::-1], watermark_ns=trades[-1].timestamp)
    st.apply(batch)
    rows, latest = batch.derived["features"], batch.derived["features_latest"]
    # anomaly_score stays None here: the anomaly stage fills it for the rows it scores.
    assert {type(v) for r in rows for v in r.values()} <= {str, int, float, bool, type(None)}
    assert {r["anomaly_score"] for r in rows} == {None}
    assert set(rows[0]) == set(st.tables[0].columns)
    assert len(latest) == len({r["ticker"] for r in rows})
    for r in latest:
        mine = [x for x in rows if x["ticker"] == r["ticker"]]
        assert r == max(mine, key=lambda x: (x["timestamp"], x["sequence_number"]))


def test_warm_then_apply_equals_an_unbroken_run() -> None:
    trades = synthetic_trades()
    bs = batches(trades)
    half = len(bs) // 2
    unbroken = apply_all(stages(), bs)

    restarted = stages()
    history = [t for chunk in bs[:half] for t in chunk]
    wm = max(t.timestamp for t in history)
    warm = WorkBatch(trades=history, watermark_ns=wm)
    for st in restarted:
        st.warm(warm)
    assert set(warm.derived) <= {"features"}  # scratch rows only, nothing to store
    resumed = apply_all(restarted, bs[half:], wm)

    assert resumed == unbroken[half:]
    anomalies = [r for d in unbroken for r in d.get("anomalies", [])]
    assert anomalies, "the run is long enough to train and flag"
    assert {type(v) for r in anomalies for v in r.values()} <= {str, int, float}
    assert any(d.get("bars") for d in resumed[1:])


def test_anomaly_stage_scores_every_scorable_feature_row() -> None:
    """Each trade the detector scores carries its score in the features table (for an AUC
    over all trades); rows before the ticker's first model keep None."""
    s = Settings(_env_file=None, anomaly_train_window=64, anomaly_retrain_every=32)  # type: ignore[call-arg]
    fs, an = FeatureStage(s), AnomalyStage(s)
    trades = synthetic_trades(minutes=40)
    batch = WorkBatch(trades=trades, watermark_ns=trades[-1].timestamp)
    fs.apply(batch)
    an.apply(batch)
    rows = batch.derived["features"]
    scored = [r for r in rows if r["anomaly_score"] is not None]
    assert scored and all(not r["warming_up"] for r in scored)
    assert all(-1.0 <= r["anomaly_score"] <= 0.0 for r in scored)
    flagged = {(r["ticker"], r["timestamp"], r["sequence_number"]): r for r in scored}
    for a in batch.derived.get("anomalies", []):
        row = flagged[(a["ticker"], a["timestamp"], a["sequence_number"])]
        assert row["anomaly_score"] == a["anomaly_score"]
    # Per ticker, the first 32 non-warming rows come before the first model: unscored.
    first = [r for r in rows if r["ticker"] == rows[0]["ticker"] and not r["warming_up"]][:32]
    assert all(r["anomaly_score"] is None for r in first)
