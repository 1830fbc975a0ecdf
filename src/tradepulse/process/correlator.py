"""The news × volume join: was an article published within ±60 s of a volume spike?

An article published at `p` (ns) for ticker T is joined with T's volume z-score series over the
closed interval ``[p − W, p + W]`` (W = `window_s`, 60 s by default). A *spike* is a point with
``z > spike_z`` (2.0, strictly); `max_zscore` is the greatest spike z in the window and
`zscore_offset_s` is ``(t_max − p) / 1e9`` (positive: the spike came after the article; when
several points share the maximum, the earliest one). No spike in the window → strength "none".

The join is symmetric because nothing is decided when either side arrives: articles wait in
`pending` and spikes wait in a per-ticker history until the article's window has closed by
event time, i.e. until ``max(watermark − lateness, last z time of T) > p + W`` (strictly: more
points stamped exactly at the watermark may still come); only then
`finalize` emits the article, exactly once. An article that arrives after its window closed
(news is polled, so late by design) is joined against the history at the next `finalize`.

History is bounded: only spike points are kept (other points only advance the ticker's
coverage), points older than ``watermark − history_s`` are dropped, and at most `max_points`
per ticker are kept. `history_s` must cover two windows plus the lateness (an article is pending
until its window closes, so its whole window is still in history then) plus however late news
may arrive; an article whose window starts before the kept history (or before the first z-score
seen for its ticker) is still emitted and counted in `tradepulse_news_partial_join_total`.
Counting articles per strength (`tradepulse_sentiment_total`) is the calling stage's job.

`snapshot()`/`restore()` carry pending articles, history and the recently emitted keys across
a restart so that nothing is lost or emitted twice; the store's key (ticker, article_id) with
mode "ignore" is the last line of defence against duplicates.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import Counter

from tradepulse.ops import metrics
from tradepulse.store.base import DerivedTable

Strength = Literal["strong", "moderate", "weak", "none"]

SPIKE_Z = 2.0  # a point is a spike when z > SPIKE_Z (strictly)
STRONG_SENTIMENT = 0.5
STRONG_Z = 3.0
MODERATE_SENTIMENT = 0.2
MODERATE_Z = 2.0

PARTIAL_JOINS = Counter(
    "tradepulse_news_partial_join_total",
    "Articles joined while part of their window was older than the kept z-score history",
    registry=metrics.REGISTRY,
)

SENTIMENT_TABLE = DerivedTable(
    name="market_sentiment",
    columns={
        "ticker": "TEXT",
        "article_id": "TEXT",
        "headline": "TEXT",
        "summary": "TEXT",
        "source": "TEXT",
        "url": "TEXT",
        "published_at": "INTEGER",
        "sentiment": "REAL",
        "summary_sentiment": "REAL",
        "label": "TEXT",
        "max_zscore": "REAL",
        "zscore_offset_s": "REAL",
        "correlation_strength": "TEXT",
        "processed_at": "INTEGER",
    },
    key=("ticker", "article_id"),
    mode="ignore",
    time_column="published_at",
    cold=True,
)

NEWS_TABLE = DerivedTable(
    name="news",
    columns={
        "ticker": "TEXT",
        "article_id": "TEXT",
        "headline": "TEXT",
        "summary": "TEXT",
        "source": "TEXT",
        "url": "TEXT",
        "published_at": "INTEGER",
        "ingest_ts": "INTEGER",
    },
    key=("ticker", "article_id"),
    mode="ignore",
    time_column="published_at",
    cold=True,
)


def correlation_strength(
    sentiment: float, max_z: float | None, *, spike_z: float = SPIKE_Z
) -> Strength:
    """Classify an article by its headline sentiment and the greatest z-score in its window.

    - none:     no spike, i.e. `max_z` is None/NaN or ``max_z ≤ spike_z`` (z exactly 2.0 is
                *not* a spike: "correlated" needs z > 2.0, so it is tested first);
    - strong:   ``|sentiment| ≥ 0.5`` and ``max_z ≥ 3.0``;
    - moderate: ``|sentiment| ≥ 0.2`` and ``max_z ≥ 2.0`` (given the spike, effectively > 2.0);
    - weak:     a spike, but below both of the above.
    """
    if max_z is None or math.isnan(max_z) or max_z <= spike_z:
        return "none"
    magnitude = abs(sentiment)
    if magnitude >= STRONG_SENTIMENT and max_z >= STRONG_Z:
        return "strong"
    if magnitude >= MODERATE_SENTIMENT and max_z >= MODERATE_Z:
        return "moderate"
    return "weak"


def window_max(
    times_ns: npt.NDArray[np.int64],
    z: npt.NDArray[np.float64],
    center_ns: int,
    half_width_ns: int,
) -> tuple[float, int] | None:
    """Greatest z among points with ``center − w ≤ t ≤ center + w`` and its time (the earliest
    on ties), or None when there is no point. `times_ns` must be sorted ascending."""
    lo = int(np.searchsorted(times_ns, center_ns - half_width_ns, side="left"))
    hi = int(np.searchsorted(times_ns, center_ns + half_width_ns, side="right"))
    if hi <= lo:
        return None
    i = lo + int(np.argmax(z[lo:hi]))
    return float(z[i]), int(times_ns[i])


_EMPTY_T: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
_EMPTY_Z: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)


@dataclass(slots=True)
class _History:
    """Spike points of one ticker (sorted lazily) and how far its z-series has been seen."""

    times: npt.NDArray[np.int64] = field(default_factory=lambda: _EMPTY_T)
    z: npt.NDArray[np.float64] = field(default_factory=lambda: _EMPTY_Z)
    chunks: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = field(
        default_factory=list
    )
    first_ns: int | None = None  # earliest z time ever seen (coverage start)
    last_ns: int | None = None  # latest z time seen (coverage end)
    horizon_ns: int | None = None  # points before this were dropped

    def consolidate(self) -> None:
        if not self.chunks:
            return
        times = np.concatenate([self.times, *(c[0] for c in self.chunks)])
        z = np.concatenate([self.z, *(c[1] for c in self.chunks)])
        self.chunks.clear()
        if times.size > 1 and bool(np.any(times[1:] < times[:-1])):
            order = np.argsort(times, kind="stable")
            times, z = times[order], z[order]
        self.times, self.z = times, z

    def prune(self, cutoff_ns: int, max_points: int) -> None:
        self.consolidate()
        keep_from = int(np.searchsorted(self.times, cutoff_ns, side="left"))
        keep_from = max(keep_from, self.times.size - max_points)
        if keep_from > 0:
            dropped_last = int(self.times[keep_from - 1])
            self.times = self.times[keep_from:]
            self.z = self.z[keep_from:]
            horizon = max(cutoff_ns, dropped_last + 1)
            self.horizon_ns = horizon if self.horizon_ns is None else max(self.horizon_ns, horizon)
        elif self.horizon_ns is None or cutoff_ns > self.horizon_ns:
            self.horizon_ns = cutoff_ns


_ROW_FIELDS = ("headline", "summary", "source", "url")
_PRUNE_EVERY_NS = 1_000_000_000


class Correlator:
    """Per-ticker interval join of scored articles with the volume z-score series."""

    def __init__(
        self,
        window_s: float = 60.0,
        spike_z: float = SPIKE_Z,
        history_s: float | None = None,
        *,
        lateness_s: float = 0.0,
        max_points: int = 200_000,
        emitted_capacity: int = 100_000,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if lateness_s < 0:
            raise ValueError("lateness_s must be >= 0")
        min_history = 2 * window_s + lateness_s
        # Default: two windows plus ten minutes for news that is polled late.
        history = min_history + 600.0 if history_s is None else history_s
        if history < min_history:
            raise ValueError(f"history_s must be >= 2*window_s + lateness_s = {min_history}")
        self.window_ns = int(window_s * 1e9)
        self.spike_z = spike_z
        self.history_ns = int(history * 1e9)
        self.lateness_ns = int(lateness_s * 1e9)
        self.max_points = max_points
        self.emitted_capacity = emitted_capacity
        self._history: dict[str, _History] = {}
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._emitted: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pruned_at_ns = 0

    # --- input ---------------------------------------------------------------------------

    def add_zscores(
        self,
        ticker: str,
        times_ns: npt.ArrayLike,
        z: npt.ArrayLike,
    ) -> None:
        """Add one batch of (time ns, z) points of `ticker`'s volume z-score series."""
        t = np.asarray(times_ns, dtype=np.int64).reshape(-1)
        zz = np.asarray(z, dtype=np.float64).reshape(-1)
        if t.shape != zz.shape:
            raise ValueError("times_ns and z must have the same length")
        if t.size == 0:
            return
        hist = self._history.setdefault(ticker, _History())
        lo, hi = int(t.min()), int(t.max())
        hist.first_ns = lo if hist.first_ns is None else min(hist.first_ns, lo)
        hist.last_ns = hi if hist.last_ns is None else max(hist.last_ns, hi)
        spikes = np.isfinite(zz) & (zz > self.spike_z)
        if bool(spikes.any()):
            hist.chunks.append((t[spikes].copy(), zz[spikes].copy()))

    def add_articles(self, scored_rows: Iterable[Mapping[str, Any]]) -> int:
        """Queue scored articles (rows of `sentiment.score_news`); returns how many were new.
        An article already pending or recently emitted is ignored (the poller may re-deliver)."""
        added = 0
        for row in scored_rows:
            key = (str(row["ticker"]), str(row["article_id"]))
            if key in self._pending or key in self._emitted:
                continue
            self._pending[key] = dict(row)
            added += 1
        return added

    # --- output --------------------------------------------------------------------------

    def finalize(self, watermark_ns: int, now_ns: int | None = None) -> list[dict[str, Any]]:
        """Emit every pending article whose window has closed, each exactly once, ordered by
        (published_at, ticker, article_id); then drop history older than the bound."""
        processed_at = time.time_ns() if now_ns is None else now_ns
        closed_by_watermark = watermark_ns - self.lateness_ns
        ready: list[tuple[str, str]] = []
        for key, row in self._pending.items():
            hist = self._history.get(key[0])
            seen_until = closed_by_watermark
            if hist is not None and hist.last_ns is not None:
                seen_until = max(seen_until, hist.last_ns)
            # Strictly after the window's end: more points stamped exactly at the watermark
            # may still come, and the window includes its end.
            if int(row["published_at"]) + self.window_ns < seen_until:
                ready.append(key)
        ready.sort(key=lambda k: (int(self._pending[k]["published_at"]), k))
        out: list[dict[str, Any]] = []
        partial = 0
        for key in ready:
            record, covered = self._join(self._pending.pop(key), processed_at)
            self._remember(key)
            out.append(record)
            partial += not covered
        if partial:
            PARTIAL_JOINS.inc(partial)
        # Pruning copies the kept history, so do it at most once per event-time second.
        if watermark_ns - self._pruned_at_ns >= _PRUNE_EVERY_NS:
            self._pruned_at_ns = watermark_ns
            cutoff = watermark_ns - self.history_ns
            for hist in self._history.values():
                hist.prune(cutoff, self.max_points)
        return out

    def _join(self, row: dict[str, Any], processed_at: int) -> tuple[dict[str, Any], bool]:
        """The output record, and whether the ticker's z-series covered the whole window."""
        ticker = str(row["ticker"])
        published = int(row["published_at"])
        hist = self._history.get(ticker)
        hit: tuple[float, int] | None = None
        covered = False
        if hist is not None:
            hist.consolidate()
            hit = window_max(hist.times, hist.z, published, self.window_ns)
            start = published - self.window_ns
            covered = (hist.horizon_ns is None or start >= hist.horizon_ns) and (
                hist.first_ns is not None and start >= hist.first_ns
            )
        sentiment = float(row["sentiment"])
        summary_sentiment = row.get("summary_sentiment")
        max_z = None if hit is None else hit[0]
        record: dict[str, Any] = {
            "ticker": ticker,
            "article_id": str(row["article_id"]),
            **{name: str(row.get(name) or "") for name in _ROW_FIELDS},
            "published_at": published,
            "sentiment": sentiment,
            "summary_sentiment": None if summary_sentiment is None else float(summary_sentiment),
            "label": str(row["label"]),
            "max_zscore": max_z,
            "zscore_offset_s": None if hit is None else (hit[1] - published) / 1e9,
            "correlation_strength": correlation_strength(sentiment, max_z, spike_z=self.spike_z),
            "processed_at": processed_at,
        }
        return record, covered

    def _remember(self, key: tuple[str, str]) -> None:
        self._emitted[key] = None
        while len(self._emitted) > self.emitted_capacity:
            self._emitted.popitem(last=False)

    # --- introspection and persistence ------------------------------------------------------

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def history_points(self, ticker: str) -> int:
        hist = self._history.get(ticker)
        if hist is None:
            return 0
        return int(hist.times.size) + sum(int(c[0].size) for c in hist.chunks)

    def snapshot(self) -> bytes:
        """Pending articles, per-ticker spike history and recently emitted keys, as JSON."""
        history: dict[str, dict[str, Any]] = {}
        for ticker, hist in self._history.items():
            hist.consolidate()
            history[ticker] = {
                "t": hist.times.tolist(),
                "z": hist.z.tolist(),
                "first": hist.first_ns,
                "last": hist.last_ns,
                "horizon": hist.horizon_ns,
            }
        state = {
            "version": 1,
            "pending": list(self._pending.values()),
            "emitted": [list(k) for k in self._emitted],
            "history": history,
        }
        return orjson.dumps(state)

    def restore(self, data: bytes) -> None:
        """Replace this correlator's state with a `snapshot()`."""
        state = orjson.loads(data)
        if state.get("version") != 1:
            raise ValueError(f"unsupported correlator snapshot version {state.get('version')!r}")
        self._history = {}
        for ticker, h in state["history"].items():
            self._history[str(ticker)] = _History(
                times=np.asarray(h["t"], dtype=np.int64),
                z=np.asarray(h["z"], dtype=np.float64),
                first_ns=h["first"],
                last_ns=h["last"],
                horizon_ns=h["horizon"],
            )
        self._pending = {(str(r["ticker"]), str(r["article_id"])): r for r in state["pending"]}
        self._emitted = OrderedDict(((str(t), str(a)), None) for t, a in state["emitted"])
