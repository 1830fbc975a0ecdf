"""Score stored anomalies against the simulator's injected ones.

Truth (``<data>/truth/anomalies.jsonl``): ``{ticker, sequence_number, kind, start_ns, end_ns,
magnitude}`` per injected anomaly. An injected anomaly is *detected* when a stored anomaly of
the same ticker has its event time in ``[start_ns, end_ns + allowance]``. A stored anomaly is a
*true positive* when it falls in such an interval of any injected anomaly of its ticker, else
a false positive. The allowance defaults to 60 s, the memory of the features: the volume
z-score, momentum and trade frequency of a trade are computed over the trailing 60 s, so an
injected burst or jump is part of every trade's feature vector for 60 s after it ended, and
flagging such a trade is right. (The detection delay below shows how soon the first flag
came; it is what a shorter allowance would measure.)

    recall(kind) = detected / injected          precision = true positives / stored anomalies
    delay        = first detection time − start_ns (median and p90 over detected anomalies)

AUC (when per-trade scores are available): trades inside an injected interval are positives,
the rest negatives, and the score is ``−anomaly_score`` (more negative = more anomalous), so
AUC is the probability that a random positive outranks a random negative (ties count ½).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tradepulse.market_time import NS_PER_S
from tradepulse.ops.evaluate_news import fmt, ratio

DEFAULT_ALLOWANCE_NS = 60 * NS_PER_S  # = the features' trailing windows


def load_truth(path: Path) -> list[dict[str, Any]]:
    rows = []
    with Path(path).open("rb") as fh:
        for line in fh:
            if line.strip():
                rows.append(orjson.loads(line))
    return rows


def _intervals(
    truth: Sequence[Mapping[str, Any]], allowance_ns: int
) -> dict[str, list[tuple[int, int, int]]]:
    """Per ticker: sorted (start, end + allowance, index into truth)."""
    out: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for i, t in enumerate(truth):
        out[str(t["ticker"])].append((int(t["start_ns"]), int(t["end_ns"]) + allowance_ns, i))
    for v in out.values():
        v.sort()
    return out


def _covering(spans: list[tuple[int, int, int]], ts: int) -> list[int]:
    # Spans are few per ticker; a bisect bounds the scan to those starting at or before ts.
    hi = bisect.bisect_right(spans, (ts, 2**63, 2**63))
    return [i for start, end, i in spans[:hi] if start <= ts <= end]


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Mann–Whitney AUC of `scores` (higher = more anomalous) for boolean `labels`."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def evaluate_anomalies(
    anomaly_rows: Iterable[Mapping[str, Any]],
    truth: Sequence[Mapping[str, Any]],
    *,
    scored_rows: Iterable[Mapping[str, Any]] | None = None,
    allowance_ns: int = DEFAULT_ALLOWANCE_NS,
) -> dict[str, Any]:
    spans = _intervals(truth, allowance_ns)
    first_hit: dict[int, int] = {}
    stored = tp = 0
    for row in anomaly_rows:
        stored += 1
        ts = int(row["timestamp"])
        hits = _covering(spans.get(str(row["ticker"]), []), ts)
        if hits:
            tp += 1
        for i in hits:
            if i not in first_hit or ts < first_hit[i]:
                first_hit[i] = ts
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted({str(t["kind"]) for t in truth}):
        idx = [i for i, t in enumerate(truth) if t["kind"] == kind]
        found = [i for i in idx if i in first_hit]
        delays = [(first_hit[i] - int(truth[i]["start_ns"])) / NS_PER_S for i in found]
        by_kind[kind] = {
            "injected": len(idx),
            "detected": len(found),
            "recall": ratio(len(found), len(idx)),
            "delay_s_median": float(np.median(delays)) if delays else None,
            "delay_s_p90": float(np.percentile(delays, 90)) if delays else None,
        }
    result: dict[str, Any] = {
        "stored_anomalies": stored,
        "true_positives": tp,
        "precision": ratio(tp, stored),
        "recall": ratio(len(first_hit), len(truth)),
        "by_kind": by_kind,
        "auc": None,
        "scored_trades": 0,
    }
    if scored_rows is not None:
        scores, labels, hit_lists = [], [], []
        for row in scored_rows:
            s = row.get("anomaly_score")
            if s is None:
                continue
            hits = _covering(spans.get(str(row["ticker"]), []), int(row["timestamp"]))
            scores.append(float(s))
            labels.append(bool(hits))
            hit_lists.append(hits)
        result["scored_trades"] = len(scores)
        if scores:
            sc, lab = np.asarray(scores), np.asarray(labels, dtype=bool)
            result["auc"] = auc(-sc, lab)
            result["threshold_sweep"] = threshold_sweep(sc, lab, hit_lists, len(truth))
    return result


SWEEP_THRESHOLDS: tuple[float, ...] = (-0.5, -0.55, -0.6, -0.65, -0.7, -0.75)


def threshold_sweep(
    scores: np.ndarray,
    labels: np.ndarray,
    hits: Sequence[list[int]],
    injected: int,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
) -> list[dict[str, Any]]:
    """What a fixed threshold would have flagged, from the per-trade scores: for each
    threshold, flagged trades, precision (flagged inside an injected interval / flagged) and
    recall (injected anomalies with at least one flagged trade / injected)."""
    out = []
    for thr in thresholds:
        flagged = scores < thr
        n = int(flagged.sum())
        found = {i for j in np.flatnonzero(flagged & labels).tolist() for i in hits[j]}
        out.append(
            {
                "threshold": thr,
                "flagged": n,
                "precision": ratio(int((flagged & labels).sum()), n),
                "recall": ratio(len(found), injected),
            }
        )
    return out


def format_report(result: Mapping[str, Any]) -> str:
    lines = [
        "anomalies vs injected ground truth",
        f"  stored {result['stored_anomalies']:,}  true positives {result['true_positives']:,}"
        f"  precision {fmt(result['precision'])}  recall {fmt(result['recall'])}"
        f"  AUC {fmt(result['auc'])} (over {result['scored_trades']:,} scored trades)",
    ]
    sweep = result.get("threshold_sweep")
    if sweep:
        lines.append("  a fixed threshold instead of the contamination cut-off:")
        for r in sweep:
            lines.append(
                f"    score < {r['threshold']:+.2f}: flagged {r['flagged']:>7,}"
                f"  precision {fmt(r['precision'])}  recall {fmt(r['recall'])}"
            )
    for kind, k in result["by_kind"].items():
        lines.append(
            f"  {kind:<13} injected {k['injected']:>4}  detected {k['detected']:>4}"
            f"  recall {fmt(k['recall'])}  delay median {fmt(k['delay_s_median'])} s"
            f"  p90 {fmt(k['delay_s_p90'])} s"
        )
    return "\n".join(lines)
