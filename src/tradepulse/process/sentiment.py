"""VADER sentiment for news articles.

VADER's compound score is the sum of the valence of every lexicon word in the text (after its
rules for negation, intensifiers, "but", capitals and punctuation), normalised into −1..+1 by
``x / sqrt(x² + 15)``. We score the headline and, separately, the summary, because headlines are
written to move readers and summaries are not; the headline score is the article's sentiment.

Label thresholds are VADER's conventional ones (Hutto & Gilbert, 2014):
``compound ≥ +0.05`` → bullish, ``compound ≤ −0.05`` → bearish, otherwise neutral.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tradepulse.events import News

BULLISH_MIN = 0.05
BEARISH_MAX = -0.05

Label = Literal["bullish", "bearish", "neutral"]


@cache
def analyzer() -> SentimentIntensityAnalyzer:
    """The one analyzer of the process (loading its lexicon costs ~10 ms, scoring ~25 µs)."""
    return SentimentIntensityAnalyzer()


def compound(text: str) -> float:
    """VADER compound score of `text` in −1..+1; 0.0 for empty text."""
    if not text:
        return 0.0
    return float(analyzer().polarity_scores(text)["compound"])


def label(score: float) -> Label:
    """bullish if score ≥ 0.05, bearish if score ≤ −0.05, neutral in between."""
    if score >= BULLISH_MIN:
        return "bullish"
    if score <= BEARISH_MAX:
        return "bearish"
    return "neutral"


def score_news(items: Sequence[News]) -> list[dict[str, Any]]:
    """One row per article: the article's fields plus `sentiment` (headline compound),
    `summary_sentiment` (None when the article has no summary) and `label` (of the headline)."""
    rows: list[dict[str, Any]] = []
    for item in items:
        headline_score = compound(item.headline)
        summary_score = compound(item.summary) if item.summary.strip() else None
        rows.append(
            {
                "ticker": item.ticker,
                "article_id": item.article_id,
                "headline": item.headline,
                "summary": item.summary,
                "source": item.source,
                "url": item.url,
                "published_at": item.published_at,
                "ingest_ts": item.ingest_ts,
                "sentiment": headline_score,
                "summary_sentiment": summary_score,
                "label": label(headline_score),
            }
        )
    return rows


_BENCH_HEADLINES = (
    "Apple shares surge after record quarterly earnings beat estimates",
    "Tesla recalls 200,000 vehicles over faulty brakes; stock plunges",
    "Microsoft announces new cloud partnership, analysts cautiously optimistic",
    "NVIDIA falls as chip export restrictions tighten",
    "Amazon holds steady ahead of Fed decision",
    "Regulators open probe into accounting at retailer, shares not yet affected",
    "Strong demand lifts outlook; company raises full-year guidance",
    "Bankruptcy fears grow after lender pulls credit line",
)


def bench_vader(n: int = 5000) -> float:
    """Mean wall time in µs to score one headline (typical news headlines, warm analyzer)."""
    if n <= 0:
        raise ValueError("n must be positive")
    compound(_BENCH_HEADLINES[0])  # load the lexicon outside the timed loop
    k = len(_BENCH_HEADLINES)
    start = time.perf_counter()
    for i in range(n):
        compound(_BENCH_HEADLINES[i % k])
    return (time.perf_counter() - start) / n * 1e6
