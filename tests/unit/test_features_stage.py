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
    s = settings()
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
    assert {type(v) for r in rows for v in r.values()} <= {str, int, float, bool}
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
