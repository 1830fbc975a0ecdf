"""Ground truth of a simulator run, for scoring the pipeline.

Files under `truth_dir` (each replaced atomically, so they can be rewritten while a run is
going and a reader never sees half a file):

* ``summary.json``: ``{valid_trades: {ticker: n}, valid_quotes: {ticker: n}, history_trades,
  malformed, malformed_by_kind, seed, rate, started_at_ns, ended_at_ns, ...}`` — counts of what
  was generated (and therefore sent, or recoverable from REST for trades). `valid_trades`
  includes the `history_trades` generated before the live start (REST only).
* ``anomalies.jsonl``: one injected anomaly a line: ``{ticker, sequence_number (first trade at
  or after start; null if none was generated), kind, start_ns, end_ns, magnitude, revert_s}``.
* ``news.jsonl``: one published article a line, the format `ops.evaluate_news` reads:
  ``{id, ticker, published_at, headline, spike, spike_start_ns, spike_end_ns, spike_mult, ...}``.

Only what happened by `ended_at_ns` is reported: articles published and anomalies started by
then, windows clipped to it; `spike` follows the overlap rule of `MarketGenerator.spike_truth`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from tradepulse.sim.config import SimConfig
from tradepulse.sim.market import MALFORMED_KINDS, MarketGenerator


def summary_doc(
    config: SimConfig, gen: MarketGenerator | None, started_at_ns: int | None, ended_at_ns: int
) -> dict[str, Any]:
    zeros = dict.fromkeys(config.tickers, 0)
    by_kind = dict(gen.malformed_by_kind) if gen else dict.fromkeys(MALFORMED_KINDS, 0)
    return {
        "valid_trades": dict(gen.valid_trades) if gen else zeros,
        "history_trades": dict(gen.history_trades) if gen else dict(zeros),
        "history_s": config.history_s,
        "valid_quotes": dict(gen.valid_quotes) if gen else dict(zeros),
        "malformed": sum(by_kind.values()),
        "malformed_by_kind": by_kind,
        "seed": config.seed,
        "rate": config.rate,
        "profile": config.profile,
        "tickers": list(config.tickers),
        "started_at_ns": started_at_ns,
        "ended_at_ns": ended_at_ns,
        "finished": bool(gen and gen.finished),
    }


def anomaly_lines(gen: MarketGenerator | None, ended_at_ns: int) -> list[dict[str, Any]]:
    if gen is None:
        return []
    rows = [a.to_json(ended_at_ns) for a in gen.anomalies if a.start_ns < ended_at_ns]
    rows.sort(key=lambda r: (r["start_ns"], r["ticker"]))
    return rows


def news_lines(gen: MarketGenerator | None, ended_at_ns: int) -> list[dict[str, Any]]:
    if gen is None:
        return []
    rows = []
    for art in gen.articles():
        if art.published_at > ended_at_ns:
            continue
        spike, window = gen.spike_truth(art, ended_at_ns)
        rows.append(
            {
                "id": art.id,
                "ticker": art.ticker,
                "published_at": art.published_at,
                "headline": art.headline,
                "summary": art.summary,
                "tone": art.tone,
                "spike": spike,
                "spike_start_ns": window.start_ns if window else None,
                "spike_end_ns": min(window.end_ns, ended_at_ns) if window else None,
                "spike_mult": round(window.volume_mult, 3) if window else None,
                "spike_kind": window.anomaly.kind if window else None,
            }
        )
    return rows


def write_truth(
    truth_dir: Path,
    config: SimConfig,
    gen: MarketGenerator | None,
    started_at_ns: int | None,
    ended_at_ns: int,
) -> None:
    truth_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_doc(config, gen, started_at_ns, ended_at_ns)
    _replace(truth_dir / "anomalies.jsonl", _jsonl(anomaly_lines(gen, ended_at_ns)))
    _replace(truth_dir / "news.jsonl", _jsonl(news_lines(gen, ended_at_ns)))
    # Written last: a summary implies the other two files are at least as recent.
    _replace(truth_dir / "summary.json", orjson.dumps(summary, option=orjson.OPT_INDENT_2))


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _replace(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
