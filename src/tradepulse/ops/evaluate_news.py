"""Score the news × volume join against the simulator's ground truth.

Truth (``<data>/truth/news.jsonl``, one JSON object a line): ``{id, ticker, published_at (ns),
spike: bool, spike_start_ns, spike_end_ns, spike_mult}``. `spike` says the simulator injected a
volume spike within the correlation window of the article (before or after it).

Classes. Truth class: ``"spike"`` when `spike` is true, else ``"no_spike"``. Predicted:
*correlated* when ``correlation_strength != "none"``. Articles are matched on
``(ticker, str(id))``; precision and recall are computed over matched articles only:

    precision = TP / (TP + FP)     recall = TP / (TP + FN)     F1 = 2·P·R / (P + R)

(None when the denominator is 0). Truth articles the pipeline never emitted (e.g. published
after the run ended, or whose window had not closed yet) are reported as `missing`, and scored
rows without truth as `unknown`, so a low coverage cannot hide behind a high precision.
The confusion matrix counts strength classes (none/weak/moderate/strong) per truth class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

STRENGTHS = ("none", "weak", "moderate", "strong")
TRUTH_CLASSES = ("spike", "no_spike")


def truth_class(spike: bool) -> str:
    return "spike" if spike else "no_spike"


def load_truth(path: Path) -> tuple[dict[tuple[str, str], dict[str, Any]], int]:
    """Truth articles by (ticker, id) and the number of unreadable lines."""
    truth: dict[tuple[str, str], dict[str, Any]] = {}
    bad = 0
    with Path(path).open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
                key = (str(row["ticker"]), str(row["id"]))
                spike = row["spike"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                bad += 1
                continue
            if not isinstance(spike, bool):
                bad += 1
                continue
            truth[key] = row
    return truth, bad


def ratio(num: int, den: int) -> float | None:
    """num/den, or None when the denominator is 0 (undefined, not zero)."""
    return num / den if den else None


def evaluate_correlation(
    sentiment_rows: Iterable[Mapping[str, Any]], truth_news_path: Path
) -> dict[str, Any]:
    """Precision/recall of "correlated" and the strength × truth confusion matrix."""
    truth, bad_lines = load_truth(truth_news_path)
    confusion = {t: dict.fromkeys(STRENGTHS, 0) for t in TRUTH_CLASSES}
    tp = fp = fn = tn = 0
    matched: set[tuple[str, str]] = set()
    unknown = 0
    unknown_strength = 0
    for row in sentiment_rows:
        key = (str(row["ticker"]), str(row["article_id"]))
        fact = truth.get(key)
        if fact is None:
            unknown += 1
            continue
        if key in matched:  # a duplicate row must not count twice
            continue
        strength = str(row["correlation_strength"])
        if strength not in STRENGTHS:
            unknown_strength += 1
            continue
        matched.add(key)
        actual = bool(fact["spike"])
        confusion[truth_class(actual)][strength] += 1
        predicted = strength != "none"
        if predicted and actual:
            tp += 1
        elif predicted:
            fp += 1
        elif actual:
            fn += 1
        else:
            tn += 1
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    return {
        "truth_articles": len(truth),
        "matched": len(matched),
        "missing": len(truth) - len(matched),
        "unknown": unknown,
        "unknown_strength": unknown_strength,
        "bad_truth_lines": bad_lines,
        "coverage": ratio(len(matched), len(truth)),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion": confusion,
    }


def fmt(value: float | None) -> str:
    """A figure of a report: three decimals, or n/a when undefined."""
    return "n/a" if value is None else f"{value:.3f}"


def format_report(result: Mapping[str, Any]) -> str:
    """Human-readable text of an `evaluate_correlation` result."""
    lines = [
        "news × volume correlation vs ground truth",
        f"  articles: truth {result['truth_articles']}, matched {result['matched']}, "
        f"missing {result['missing']}, unknown {result['unknown']} "
        f"(coverage {fmt(result['coverage'])})",
        f"  correlated (strength != none): TP {result['tp']}  FP {result['fp']}  "
        f"FN {result['fn']}  TN {result['tn']}",
        f"  precision {fmt(result['precision'])}  recall {fmt(result['recall'])}  "
        f"F1 {fmt(result['f1'])}",
        "  confusion (truth \\ strength): " + "  ".join(f"{s:>8}" for s in STRENGTHS),
    ]
    for cls in TRUTH_CLASSES:
        counts = result["confusion"][cls]
        lines.append(f"  {cls:>28}: " + "  ".join(f"{counts[s]:>8}" for s in STRENGTHS))
    return "\n".join(lines)
