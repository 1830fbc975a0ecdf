"""The analytic stages in pipeline order, each a thin adapter from a `WorkBatch` to the pure
engines in this package (features.py, bars.py, anomaly.py, sentiment.py, correlator.py).

Order matters: features first (the anomaly detector and the news join read their rows), then
bars, anomalies, and the news join last.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from tradepulse.config import Settings
from tradepulse.ops import metrics
from tradepulse.process import sentiment
from tradepulse.process.correlator import NEWS_TABLE, SENTIMENT_TABLE, Correlator
from tradepulse.process.pipeline import Stage, WorkBatch
from tradepulse.store.base import DerivedTable

FEATURE_ROWS = "features"  # the features stage's per-trade rows, read by later stages


class NewsStage:
    """VADER-scores new articles and joins them with volume z-score spikes (±window)."""

    tables: Sequence[DerivedTable] = (NEWS_TABLE, SENTIMENT_TABLE)

    def __init__(self, settings: Settings, *, lateness_s: float = 0.0) -> None:
        self.correlator = Correlator(window_s=settings.correlation_window_s, lateness_s=lateness_s)

    def _feed(self, batch: WorkBatch) -> None:
        by_ticker: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for row in batch.derived.get(FEATURE_ROWS, ()):
            times, zs = by_ticker[row["ticker"]]
            times.append(row["timestamp"])
            zs.append(0.0 if row.get("warming_up") else float(row["volume_zscore"]))
        for ticker, (times, zs) in by_ticker.items():
            self.correlator.add_zscores(ticker, np.asarray(times), np.asarray(zs))
        if batch.news:
            self.correlator.add_articles(sentiment.score_news(batch.news))

    def apply(self, batch: WorkBatch) -> None:
        if batch.news:
            news_rows = batch.rows(NEWS_TABLE.name)
            for n in batch.news:
                news_rows.append(
                    {
                        "ticker": n.ticker,
                        "article_id": n.article_id,
                        "headline": n.headline,
                        "summary": n.summary,
                        "source": n.source,
                        "url": n.url,
                        "published_at": n.published_at,
                        "ingest_ts": n.ingest_ts,
                    }
                )
        self._feed(batch)
        done = self.correlator.finalize(batch.watermark_ns, batch.now_ns or None)
        if done:
            batch.rows(SENTIMENT_TABLE.name).extend(done)
            counts: dict[str, int] = defaultdict(int)
            for row in done:
                counts[row["correlation_strength"]] += 1
            for strength, count in counts.items():
                metrics.SENTIMENT.labels(strength).inc(count)

    def warm(self, batch: WorkBatch) -> None:
        # Articles given here are the ones stored but not yet joined (pending at shutdown);
        # they are joined again once their window closes, as they would have been.
        self._feed(batch)


def build_stages(settings: Settings, *, news_lateness_s: float = 0.0) -> list[Stage]:
    """The stages in order. `news_lateness_s`: how far behind the watermark another ticker's
    events may still arrive before the news join closes a window on the watermark alone."""
    from tradepulse.process.feature_stage import AnomalyStage, BarStage, FeatureStage

    return [
        FeatureStage(settings),
        BarStage(settings),
        AnomalyStage(settings),
        NewsStage(settings, lateness_s=news_lateness_s),
    ]


def all_tables(settings: Settings | None = None) -> list[DerivedTable]:
    """Every derived table any stage writes (for the query layer and the stores)."""
    from tradepulse.config import load_settings

    return [t for s in build_stages(settings or load_settings()) for t in s.tables]


def rows_by_ticker(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r["ticker"]].append(r)
    return out
