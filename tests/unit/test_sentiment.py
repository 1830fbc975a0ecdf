"""VADER scoring, labels and the per-headline cost."""

from __future__ import annotations

import pytest

from tradepulse.events import News
from tradepulse.process import sentiment
from tradepulse.process.sentiment import bench_vader, compound, label, score_news

pytestmark = pytest.mark.unit


def _news(headline: str, summary: str = "", article_id: str = "1") -> News:
    return News(
        article_id=article_id,
        ticker="AAPL",
        headline=headline,
        summary=summary,
        source="wire",
        url="https://example.invalid/a",
        published_at=1_700_000_000_000_000_000,
        ingest_ts=1_700_000_001_000_000_000,
    )


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.05, "bullish"),
        (0.0499, "neutral"),
        (0.0, "neutral"),
        (-0.0499, "neutral"),
        (-0.05, "bearish"),
        (1.0, "bullish"),
        (-1.0, "bearish"),
    ],
)
def test_label_thresholds(score: float, expected: str) -> None:
    assert label(score) == expected


def test_compound_signs_and_range() -> None:
    good = compound("Apple shares surge after record earnings beat estimates")
    bad = compound("Tesla stock plunges as fraud probe widens")
    assert 0.05 <= good <= 1.0
    assert -1.0 <= bad <= -0.05
    assert compound("") == 0.0
    assert compound("Microsoft to report quarterly results on Tuesday") == pytest.approx(0.0)


def test_score_news_reports_headline_and_summary_separately() -> None:
    rows = score_news(
        [
            _news("Shares soar on great results", "Analysts warn of terrible risks ahead", "a"),
            _news("Company schedules annual meeting", "", "b"),
        ]
    )
    assert [r["article_id"] for r in rows] == ["a", "b"]
    first, second = rows
    assert first["sentiment"] > 0.05 and first["label"] == "bullish"
    assert first["summary_sentiment"] is not None and first["summary_sentiment"] < 0
    assert second["summary_sentiment"] is None and second["label"] == "neutral"
    for key in ("ticker", "headline", "summary", "source", "url", "published_at", "ingest_ts"):
        assert key in first


def test_one_analyzer_instance_is_reused() -> None:
    assert sentiment.analyzer() is sentiment.analyzer()


def test_bench_vader_within_budget() -> None:
    # Budget is 100 µs/headline; measured ~25 µs on the 2-core dev machine. Take the best of
    # three short runs so a noisy neighbour does not fail the check.
    best = min(bench_vader(1000) for _ in range(3))
    assert 0 < best <= 100.0


def test_bench_vader_rejects_nonpositive_n() -> None:
    with pytest.raises(ValueError):
        bench_vader(0)
