"""One-minute OHLCV bars per ticker, closed on an event-time watermark.

A bar covers [start, start + 60 s) of event time (minutes aligned to the Unix epoch, which are
also ET minutes). It holds the trades that have feature rows (so excluded conditions,
duplicates and too-late trades are out of bars exactly as they are out of features):

- open / close = price of the first / last trade in tape order ((timestamp, sequence_number));
- high / low = max / min price; volume = Σ size; trade_count = n;
- vwap = Σ price·size / Σ size (Σ price / n when every print had size 0).

Closing: a bar is emitted once the watermark (the greatest event time seen across all tickers,
so a quiet ticker's bars close as the market moves on) reaches ``start + 60 s + grace``. After
that it is kept for `late_allowance_s`: a late trade for it updates it and the bar is emitted
again (revision + 1; the table's mode is "replace", so the last revision wins). A trade for a
bar whose allowance has passed (watermark ≥ start + 60 s + grace + allowance, judged against
the watermark before the trade's batch) is not applied and is counted in `BarEngine.too_late`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tradepulse.store.base import DerivedTable

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

NS_PER_S = 1_000_000_000
BAR_NS = 60 * NS_PER_S

BARS_TABLE = DerivedTable(
    name="bars",
    columns={
        "ticker": "TEXT",
        "minute_start": "INTEGER",
        "open": "REAL",
        "high": "REAL",
        "low": "REAL",
        "close": "REAL",
        "volume": "INTEGER",
        "vwap": "REAL",
        "trade_count": "INTEGER",
        "revision": "INTEGER",
    },
    key=("ticker", "minute_start"),
    mode="replace",
    time_column="minute_start",
    cold=True,
)


@dataclass(slots=True)
class Bar:
    ticker: str
    start: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    pv: float
    p_sum: float
    count: int
    open_key: tuple[int, int]
    close_key: tuple[int, int]
    revision: int = -1  # -1: not emitted yet
    dirty: bool = True

    @property
    def vwap(self) -> float:
        """Σ p·v / Σ v, or Σ p / n when the bar's volume is 0."""
        return self.pv / self.volume if self.volume > 0 else self.p_sum / self.count

    def row(self) -> dict[str, Any]:
        return {
            "ticker": self.ticker,
            "minute_start": self.start,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "vwap": self.vwap,
            "trade_count": self.count,
            "revision": self.revision,
        }


def _seq_sum(start: float, values: F64) -> float:
    """start + v₀ + v₁ + … added left to right (not pairwise, as `np.sum` does), so the
    total does not depend on how the trades were split into micro-batches."""
    acc = np.empty(len(values) + 1)
    acc[0] = start
    acc[1:] = values
    return float(np.cumsum(acc)[-1])


class BarEngine:
    def __init__(self, grace_s: float = 2.0, late_allowance_s: float = 60.0) -> None:
        self.grace_ns = round(grace_s * NS_PER_S)
        self.late_ns = round(late_allowance_s * NS_PER_S)
        self.watermark_ns = 0
        self.open: dict[tuple[str, int], Bar] = {}  # not emitted yet
        self.closed: dict[tuple[str, int], Bar] = {}  # emitted, still taking late trades
        self.too_late = 0

    def add(self, ticker: str, ts: I64, seq: I64, price: F64, size: I64) -> None:
        """Apply one ticker's trades (any order) to their bars."""
        if len(ts) == 0:
            return
        order = np.lexsort((seq, ts))
        ts, seq, price, size = ts[order], seq[order], price[order], size[order]
        starts = ts - ts % BAR_NS
        cuts = np.flatnonzero(starts[1:] != starts[:-1]) + 1
        bounds = np.concatenate(([0], cuts, [len(ts)]))
        pv = price * size
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            start = int(starts[a])
            key = (ticker, start)
            bar = self.open.get(key)
            if bar is None:
                bar = self.closed.get(key)
            if bar is None:
                if start + BAR_NS + self.grace_ns + self.late_ns <= self.watermark_ns:
                    self.too_late += b - a
                    continue
                bar = Bar(
                    ticker=ticker,
                    start=start,
                    open=float(price[a]),
                    high=float(price[a:b].max()),
                    low=float(price[a:b].min()),
                    close=float(price[b - 1]),
                    volume=int(size[a:b].sum()),
                    pv=_seq_sum(0.0, pv[a:b]),
                    p_sum=_seq_sum(0.0, price[a:b]),
                    count=b - a,
                    open_key=(int(ts[a]), int(seq[a])),
                    close_key=(int(ts[b - 1]), int(seq[b - 1])),
                )
                self.open[key] = bar
                continue
            first = (int(ts[a]), int(seq[a]))
            last = (int(ts[b - 1]), int(seq[b - 1]))
            if first < bar.open_key:
                bar.open, bar.open_key = float(price[a]), first
            if last > bar.close_key:
                bar.close, bar.close_key = float(price[b - 1]), last
            bar.high = max(bar.high, float(price[a:b].max()))
            bar.low = min(bar.low, float(price[a:b].min()))
            bar.volume += int(size[a:b].sum())
            bar.pv = _seq_sum(bar.pv, pv[a:b])
            bar.p_sum = _seq_sum(bar.p_sum, price[a:b])
            bar.count += b - a
            bar.dirty = True

    def advance(self, watermark_ns: int, *, emit: bool = True) -> list[dict[str, Any]]:
        """Move the watermark; return rows of bars that closed or changed after closing."""
        if watermark_ns > self.watermark_ns:
            self.watermark_ns = watermark_ns
        wm = self.watermark_ns
        out: list[dict[str, Any]] = []
        for key, bar in list(self.closed.items()):
            if bar.dirty:
                bar.revision += 1
                bar.dirty = False
                if emit:
                    out.append(bar.row())
            if bar.start + BAR_NS + self.grace_ns + self.late_ns <= wm:
                del self.closed[key]
        ready = [k for k, bar in self.open.items() if bar.start + BAR_NS + self.grace_ns <= wm]
        for key in sorted(ready, key=lambda k: (k[1], k[0])):
            bar = self.open.pop(key)
            bar.revision += 1
            bar.dirty = False
            if emit:
                out.append(bar.row())
            if bar.start + BAR_NS + self.grace_ns + self.late_ns > wm:
                self.closed[key] = bar
        return out
