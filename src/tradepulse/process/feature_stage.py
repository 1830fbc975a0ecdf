"""The features, bars and anomaly stages: thin adapters from a `WorkBatch` to the engines.

FeatureStage computes one row per eligible trade into ``batch.rows("features")`` — the table
"features" and, at the same time, the scratch rows the bars, anomaly and news stages read —
and the newest row per ticker into "features_latest". `warm` fills the same scratch rows (so
the later stages can warm from them) but declares nothing to store: `Processor.warm` drops
the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tradepulse.config import Settings
from tradepulse.ops import metrics
from tradepulse.process.anomaly import (
    ANOMALIES_TABLE,
    FEATURES,
    AnomalyEngine,
    AnomalyParams,
    anomaly_rows,
)
from tradepulse.process.bars import BARS_TABLE, BarEngine
from tradepulse.process.features import FeatureEngine, FeatureParams, session_of
from tradepulse.process.pipeline import WorkBatch
from tradepulse.store.base import DerivedTable

FEATURE_ROWS = "features"  # = stages.FEATURE_ROWS (not imported: stages imports this module)

_FEATURE_COLUMNS = {
    "ticker": "TEXT",
    "timestamp": "INTEGER",
    "sequence_number": "INTEGER",
    "price": "REAL",
    "size": "INTEGER",
    "vwap": "REAL",
    "vwap_1m": "REAL",
    "vwap_5m": "REAL",
    "avg_price_1m": "REAL",
    "avg_price_5m": "REAL",
    "avg_price_15m": "REAL",
    "volume_zscore": "REAL",
    "price_momentum": "REAL",
    "vwap_deviation": "REAL",
    "trade_frequency": "REAL",
    "warming_up": "INTEGER",
    # Every scored trade's Isolation Forest score (not only the flagged ones), so detection
    # quality can be measured as an AUC over all trades; NULL before the first model.
    "anomaly_score": "REAL",
}

FEATURES_TABLE = DerivedTable(
    name="features",
    columns=_FEATURE_COLUMNS,
    key=("ticker", "timestamp", "sequence_number"),
    mode="ignore",
    time_column="timestamp",
    cold=True,
)
FEATURES_LATEST_TABLE = DerivedTable(
    name="features_latest",
    columns=_FEATURE_COLUMNS,
    key=("ticker",),
    mode="newer",
    order_by=("timestamp", "sequence_number"),
    time_column="timestamp",
)


def _by_ticker(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        lst = out.get(r["ticker"])
        if lst is None:
            out[r["ticker"]] = [r]
        else:
            lst.append(r)
    return out


class FeatureStage:
    tables: Sequence[DerivedTable] = (FEATURES_TABLE, FEATURES_LATEST_TABLE)

    def __init__(self, settings: Settings) -> None:
        self.engine = FeatureEngine(FeatureParams.from_settings(settings))

    def _rows(self, batch: WorkBatch) -> list[dict[str, Any]]:
        blocks = self.engine.process(batch.trades)
        rows = batch.rows(FEATURE_ROWS)
        latest: list[dict[str, Any]] = []
        for block in blocks:
            block_rows = block.rows()
            rows.extend(block_rows)
            latest.append(max(block_rows, key=lambda r: (r["timestamp"], r["sequence_number"])))
        return latest

    def apply(self, batch: WorkBatch) -> None:
        latest = self._rows(batch)
        if latest:
            batch.rows(FEATURES_LATEST_TABLE.name).extend(latest)

    def warm(self, batch: WorkBatch) -> None:
        self._rows(batch)


class BarStage:
    tables: Sequence[DerivedTable] = (BARS_TABLE,)

    def __init__(self, settings: Settings) -> None:
        self.engine = BarEngine(settings.bar_grace_s, settings.bar_late_allowance_s)

    def _feed(self, batch: WorkBatch) -> None:
        for ticker, rows in _by_ticker(batch.derived.get(FEATURE_ROWS, ())).items():
            n = len(rows)
            self.engine.add(
                ticker,
                np.fromiter((r["timestamp"] for r in rows), dtype=np.int64, count=n),
                np.fromiter((r["sequence_number"] for r in rows), dtype=np.int64, count=n),
                np.fromiter((r["price"] for r in rows), dtype=np.float64, count=n),
                np.fromiter((r["size"] for r in rows), dtype=np.int64, count=n),
            )

    def apply(self, batch: WorkBatch) -> None:
        self._feed(batch)
        out = self.engine.advance(batch.watermark_ns)
        if out:
            batch.rows(BARS_TABLE.name).extend(out)

    def warm(self, batch: WorkBatch) -> None:
        self._feed(batch)
        self.engine.advance(batch.watermark_ns, emit=False)


class AnomalyStage:
    tables: Sequence[DerivedTable] = (ANOMALIES_TABLE,)

    def __init__(self, settings: Settings) -> None:
        self.engine = AnomalyEngine(AnomalyParams.from_settings(settings))

    def _run(self, batch: WorkBatch, *, emit: bool) -> None:
        rows = [r for r in batch.derived.get(FEATURE_ROWS, ()) if not r["warming_up"]]
        if not rows:
            return
        out = batch.rows(ANOMALIES_TABLE.name) if emit else None
        for ticker, trs in _by_ticker(rows).items():
            for session, grp in _by_session(trs):
                x = np.array([[r[f] for f in FEATURES] for r in grp], dtype=np.float64)
                scored = self.engine.update(ticker, session, x, score=emit)
                if scored is None or out is None:
                    continue
                for i, s in zip(scored.index.tolist(), scored.score.tolist(), strict=True):
                    grp[i]["anomaly_score"] = s
                new = anomaly_rows(
                    scored,
                    [r["timestamp"] for r in grp],
                    [r["sequence_number"] for r in grp],
                    x,
                )
                if new:
                    out.extend(new)
                    metrics.ANOMALIES.labels(ticker).inc(len(new))

    def apply(self, batch: WorkBatch) -> None:
        self._run(batch, emit=True)

    def warm(self, batch: WorkBatch) -> None:
        self._run(batch, emit=False)


def _by_session(rows: list[dict[str, Any]]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Split one ticker's rows by session (04:00 ET), oldest first: each session has its
    own anomaly state, so a batch spanning the boundary must not mix them."""
    first, last = session_of(rows[0]["timestamp"]), session_of(rows[-1]["timestamp"])
    if first == last:
        return [(first, rows)]
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(session_of(r["timestamp"]), []).append(r)
    return sorted(groups.items())
