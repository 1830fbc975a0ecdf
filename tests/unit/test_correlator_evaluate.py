"""Precision/recall and confusion of the news join against ground truth."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tradepulse.events import News
from tradepulse.ops.evaluate_news import evaluate_correlation, format_report
from tradepulse.process.correlator import Correlator
from tradepulse.process.sentiment import score_news

pytestmark = pytest.mark.unit

S = 1_000_000_000
T0 = 1_700_000_000 * S


def write_truth(path: Path, rows: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n" + extra.encode())
    return path


def truth_row(ident: int, spike: bool, ticker: str = "AAPL") -> dict[str, Any]:
    return {
        "id": ident,
        "ticker": ticker,
        "published_at": T0 + ident * S,
        "spike": spike,
        "spike_start_ns": T0 if spike else None,
        "spike_end_ns": T0 + 10 * S if spike else None,
        "spike_mult": 5.0 if spike else None,
    }


def scored(ident: int, strength: str, ticker: str = "AAPL") -> dict[str, Any]:
    return {"ticker": ticker, "article_id": str(ident), "correlation_strength": strength}


def test_counts_precision_recall_and_confusion(tmp_path: Path) -> None:
    truth = write_truth(
        tmp_path / "news.jsonl",
        [truth_row(i, spike=i < 5) for i in range(10)],
        extra="{broken\n",
    )
    rows = [
        scored(0, "strong"),
        scored(1, "moderate"),
        scored(2, "weak"),
        scored(3, "none"),  # FN
        # 4 never emitted: missing
        scored(5, "weak"),  # FP
        scored(6, "none"),
        scored(7, "none"),
        scored(8, "none"),
        scored(9, "none"),
        scored(9, "none"),  # duplicate row: counted once
        scored(99, "strong"),  # no truth
    ]
    r = evaluate_correlation(rows, truth)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (3, 1, 1, 4)
    assert r["precision"] == pytest.approx(0.75)
    assert r["recall"] == pytest.approx(0.75)
    assert r["f1"] == pytest.approx(0.75)
    assert r["matched"] == 9 and r["missing"] == 1 and r["unknown"] == 1
    assert r["bad_truth_lines"] == 1
    assert r["coverage"] == pytest.approx(0.9)
    assert r["confusion"]["spike"] == {"none": 1, "weak": 1, "moderate": 1, "strong": 1}
    assert r["confusion"]["no_spike"] == {"none": 4, "weak": 1, "moderate": 0, "strong": 0}
    text = format_report(r)
    assert "precision 0.750" in text and "recall 0.750" in text


def test_undefined_ratios_are_none(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "news.jsonl", [truth_row(1, spike=False)])
    r = evaluate_correlation([scored(1, "none")], truth)
    assert r["precision"] is None and r["recall"] is None and r["f1"] is None
    assert "n/a" in format_report(r)


def test_tickers_are_part_of_the_key(tmp_path: Path) -> None:
    truth = write_truth(tmp_path / "news.jsonl", [truth_row(1, spike=True, ticker="MSFT")])
    r = evaluate_correlation([scored(1, "strong", ticker="AAPL")], truth)
    assert r["matched"] == 0 and r["unknown"] == 1


def test_join_recovers_injected_spikes_end_to_end(tmp_path: Path) -> None:
    """Synthetic market: quiet z-scores with injected spikes; articles near some spikes.
    Scored through VADER and the correlator, the join must match the truth exactly."""
    rng = random.Random(11)
    tickers = ["AAPL", "MSFT", "TSLA"]
    duration = 1800
    corr = Correlator()
    truth: list[dict[str, Any]] = []
    news: list[News] = []
    headlines = ["Shares surge on record profit", "Stock plunges after fraud probe", "Board meets"]
    ident = 0
    for ticker in tickers:
        times = np.arange(0, duration, 0.5)
        z = np.array([rng.uniform(-1.5, 1.5) for _ in times])
        spike_starts = [200.0, 700.0, 1300.0]
        for start in spike_starts:
            inside = (times >= start) & (times < start + 10)
            z[inside] = rng.uniform(2.5, 6.0)
        # Articles: some 30 s before/after a spike, others far (>= 200 s) from every spike.
        offsets = [start + d for start in spike_starts for d in (-30.0, 35.0)]
        offsets += [450.0, 1000.0, 1600.0]
        for pub in offsets:
            ident += 1
            near = any(s - 60 <= pub <= s + 10 + 60 for s in spike_starts)
            truth.append(
                {"id": ident, "ticker": ticker, "published_at": T0 + int(pub * S), "spike": near}
            )
            news.append(
                News(
                    article_id=str(ident),
                    ticker=ticker,
                    headline=headlines[ident % 3],
                    summary="",
                    source="sim",
                    url="",
                    published_at=T0 + int(pub * S),
                    ingest_ts=T0 + int((pub + 40) * S),
                )
            )
        t_ns = T0 + (times * S).astype(np.int64)
        for lo in range(0, len(times), 200):  # batches, as the pipeline delivers them
            corr.add_zscores(ticker, t_ns[lo : lo + 200], z[lo : lo + 200])
    corr.add_articles(score_news(news))
    out = corr.finalize(T0 + duration * S)
    path = write_truth(tmp_path / "news.jsonl", truth)
    r = evaluate_correlation(out, path)
    assert r["matched"] == len(truth)
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert sum(r["confusion"]["spike"].values()) == sum(t["spike"] for t in truth)
