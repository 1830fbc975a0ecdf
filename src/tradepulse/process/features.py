"""Per-ticker trade features on event time, computed incrementally per micro-batch.

Definitions (t = the trade's SIP timestamp in ns, p its price, v its size; "the tape" is the
ticker's trades of the current session in (timestamp, sequence_number) order; a trade's row
sees the trades of the tape up to and including itself that had been delivered by the end of
its own micro-batch):

- ``vwap``          Σ pᵢ·vᵢ / Σ vᵢ over the session so far. A session runs from 04:00 ET of its
                    trading day to 04:00 ET of the next (`session_of`), so VWAP resets daily.
- ``vwap_1m/5m``    the same over the trailing window (t − W, t], W = 60 s / 300 s.
- ``avg_price_*``   Σ pᵢ / n over (t − W, t], W = 60 s / 300 s / 900 s.
- ``volume_zscore`` (V₀ − mean(V₁..Vₙ)) / max(std(V₁..Vₙ), floor), Vₖ = volume in
                    (t − (k+1)·W, t − k·W], W = `volume_window_s`; population std; n = the
                    number of baseline windows that exist (see `baseline_count`), at most
                    `volume_baseline_windows`. 0 while n < `volume_min_baseline`.
- ``price_momentum`` (p − p₋₆₀) / p₋₆₀ × 100, p₋₆₀ = price of the last trade of the session at
                    or before t − 60 s; 0 while there is none.
- ``vwap_deviation`` (p − vwap_5m) / vwap_5m × 100.
- ``trade_frequency`` trades in (t − 60 s, t], per minute.
- ``warming_up``    the z-score or the momentum is still undefined (and reported as 0).

Every window is restricted to the trade's session and, for trades sharing a timestamp, to
those at or before it in sequence order (a row reflects the tape up to itself, so the last of
several same-nanosecond prints sees them all).

Late trades: within a batch the trades of a ticker are processed in tape order, so only a
trade older than the last one already processed in an earlier batch is "late". It is merged
into the tape at its place; its own row is computed as of its own time over what has been
delivered so far, and later trades see it wherever their windows reach it. Rows already
emitted are not revised. A trade more than `late_allowance_s` older than the newest trade of
its session, or belonging to a session older than the previous one, is "too late": it gets
no row and does not enter any window (it is still stored; `FeatureEngine.too_late` counts
them). A trade whose (timestamp, sequence_number) was already processed is a duplicate
(re-delivery) and is skipped the same way (`FeatureEngine.duplicates`).

Numerics: each session keeps its tape in growable numpy buffers together with prefix sums of
p·v, p and v accumulated left to right in tape order, so a window sum is one subtraction and
the results depend on the set of trades, not on how they were batched. Volumes are integers
and exact; the float prefix sums carry a relative error of about (trades in session)·1e-16.
Memory per ticker is O(trades in the longest window + the late allowance).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from tradepulse.events import Trade
from tradepulse.market_time import session_start_ns, trading_day
from tradepulse.process.conditions import EXCLUDED_CONDITIONS

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

NS_PER_S = 1_000_000_000
_NS_PER_HOUR = 3600 * NS_PER_S
VWAP_WINDOWS_S = (60, 300)
AVG_WINDOWS_S = (60, 300, 900)
MOMENTUM_S = 60
FREQUENCY_S = 60

ROW_KEYS: tuple[str, ...] = (
    "ticker",
    "timestamp",
    "sequence_number",
    "price",
    "size",
    "vwap",
    "vwap_1m",
    "vwap_5m",
    "avg_price_1m",
    "avg_price_5m",
    "avg_price_15m",
    "volume_zscore",
    "price_momentum",
    "vwap_deviation",
    "trade_frequency",
    "warming_up",
)


# --- the math, as pure vectorised functions -----------------------------------------------


def vwap_of(pv_sum: F64, v_sum: I64, p_sum: F64, count: I64) -> F64:
    """VWAP = Σ p·v / Σ v; when Σ v = 0 (only zero-size prints) the plain mean Σ p / n.

    The window always holds the current trade, so n ≥ 1 and the result is always finite.
    """
    vol = v_sum.astype(np.float64)
    safe = np.where(v_sum > 0, vol, 1.0)
    return np.where(v_sum > 0, pv_sum / safe, p_sum / np.maximum(count, 1))


def mean_price(p_sum: F64, count: I64) -> F64:
    """avg_price = Σ p / n over the window (n ≥ 1: the current trade is in it)."""
    return p_sum / np.maximum(count, 1)


def baseline_count(t: I64, first_ts: int, window_ns: int, max_windows: int) -> I64:
    """Number of baseline windows that exist: n = clip(⌊(t − t_first) / W⌋ − 1, 0, N).

    Baseline window k covers (t − (k+1)·W, t − k·W]; it "exists" once the session's history
    reaches back that far, i.e. t − t_first ≥ (k+1)·W, t_first = the session's first trade.
    """
    n = (t - first_ts) // window_ns - 1
    return np.clip(n, 0, max_windows).astype(np.int64)


def volume_zscore(
    v0: I64, baseline: I64, n_baseline: I64, min_baseline: int, std_floor: float
) -> tuple[F64, B]:
    """z = (V₀ − μ) / max(σ, floor), μ and σ (population) over V₁..Vₙ, n = `n_baseline` per row.

    `baseline` is (m, N) with column k−1 = Vₖ; only the first n columns of a row count.
    Returns (z, warming) with z = 0 and warming = True where n < `min_baseline`.
    """
    width = baseline.shape[1]
    cols = np.arange(width)[None, :]
    mask = cols < n_baseline[:, None]
    n = np.maximum(n_baseline, 1).astype(np.float64)
    vals = baseline.astype(np.float64)
    mean = np.where(mask, vals, 0.0).sum(axis=1) / n
    dev = np.where(mask, vals - mean[:, None], 0.0)
    std = np.sqrt((dev * dev).sum(axis=1) / n)
    warming = n_baseline < min_baseline
    z = (v0.astype(np.float64) - mean) / np.maximum(std, std_floor)
    return np.where(warming, 0.0, z), warming


def price_momentum(price: F64, ref_price: F64, has_ref: B) -> F64:
    """momentum = (p − p₋₆₀) / p₋₆₀ × 100; 0 where no reference trade exists yet."""
    safe = np.where(has_ref, ref_price, 1.0)
    return np.where(has_ref, (price - safe) / safe * 100.0, 0.0)


def vwap_deviation(price: F64, vwap_5m: F64) -> F64:
    """deviation = (p − vwap_5m) / vwap_5m × 100 (percent, comparable across tickers)."""
    return (price - vwap_5m) / vwap_5m * 100.0


def trade_frequency(count: I64, window_ns: int) -> F64:
    """Trades per minute over the trailing window: n · 60 s / W."""
    return count.astype(np.float64) * (60.0 * NS_PER_S / window_ns)


@lru_cache(maxsize=4096)
def _session_of_hour(hour: int) -> int:
    # 04:00 ET always falls on a whole UTC hour, so one session per UTC hour bucket.
    ts = hour * _NS_PER_HOUR
    day = trading_day(ts)
    start = session_start_ns(day)
    if ts < start:
        day = trading_day(start - 12 * _NS_PER_HOUR)
    return day


def session_of(ts_ns: int) -> int:
    """The session (YYYYMMDD of its trading day) a timestamp belongs to: sessions start at
    04:00 ET, so 02:00 ET belongs to the previous day's session."""
    return _session_of_hour(ts_ns // _NS_PER_HOUR)


def sessions_of(ts: I64) -> I64:
    """`session_of` for a sorted or unsorted array of timestamps."""
    hours = ts // _NS_PER_HOUR
    if len(hours) and hours[0] == hours[-1] and hours.min() == hours.max():
        return np.full(len(ts), _session_of_hour(int(hours[0])), dtype=np.int64)
    uniq, inv = np.unique(hours, return_inverse=True)
    days = np.array([_session_of_hour(int(h)) for h in uniq], dtype=np.int64)
    return days[inv]


# --- the engine ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureParams:
    volume_window_s: float = 60.0
    volume_baseline_windows: int = 20
    volume_min_baseline: int = 5
    zscore_std_floor: float = 1.0
    late_allowance_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Any) -> FeatureParams:
        return cls(
            volume_window_s=settings.volume_window_s,
            volume_baseline_windows=settings.volume_baseline_windows,
            volume_min_baseline=settings.volume_min_baseline,
            zscore_std_floor=settings.zscore_std_floor,
            late_allowance_s=settings.bar_late_allowance_s,
        )


@dataclass(slots=True)
class FeatureBlock:
    """The rows of one ticker from one micro-batch, column-wise, in tape order."""

    ticker: str
    timestamp: I64
    sequence_number: I64
    price: F64
    size: I64
    vwap: F64
    vwap_1m: F64
    vwap_5m: F64
    avg_price_1m: F64
    avg_price_5m: F64
    avg_price_15m: F64
    volume_zscore: F64
    price_momentum: F64
    vwap_deviation: F64
    trade_frequency: F64
    warming_up: B

    def __len__(self) -> int:
        return len(self.timestamp)

    def rows(self) -> list[dict[str, Any]]:
        """Plain-Python rows (ints, floats, bools, str) keyed by `ROW_KEYS`."""
        tk = self.ticker
        # A dict display per row is markedly cheaper than dict(zip(...)) on this hot path.
        return [
            {
                "ticker": tk,
                "timestamp": ts,
                "sequence_number": sq,
                "price": p,
                "size": v,
                "vwap": vw,
                "vwap_1m": vw1,
                "vwap_5m": vw5,
                "avg_price_1m": a1,
                "avg_price_5m": a5,
                "avg_price_15m": a15,
                "volume_zscore": z,
                "price_momentum": mom,
                "vwap_deviation": dev,
                "trade_frequency": fq,
                "warming_up": w,
                "anomaly_score": None,  # set by the anomaly stage once a model scores it
            }
            for ts, sq, p, v, vw, vw1, vw5, a1, a5, a15, z, mom, dev, fq, w in zip(
                *(getattr(self, k).tolist() for k in ROW_KEYS[1:]), strict=True
            )
        ]

    def last_row(self) -> dict[str, Any]:
        i = len(self.timestamp) - 1
        row: dict[str, Any] = {"ticker": self.ticker}
        for k in ROW_KEYS[1:]:
            row[k] = getattr(self, k)[i].item()
        return row


class _Tape:
    """One ticker's trades of one session in tape order, with left-to-right prefix sums.

    Buffers hold entries [lo, hi); `cpv[i]`, `cp[i]`, `cv[i]` are the sums over all entries of
    the session before index i (entries dropped from the front included), so the session
    totals up to a trade are read directly and a window sum is a difference.
    """

    __slots__ = (
        "cp",
        "cpv",
        "cv",
        "dropped",
        "first_ts",
        "hi",
        "lo",
        "max_ts",
        "price",
        "seq",
        "size",
        "ts",
    )

    def __init__(self, capacity: int = 1024) -> None:
        self.ts = np.empty(capacity, dtype=np.int64)
        self.seq = np.empty(capacity, dtype=np.int64)
        self.price = np.empty(capacity, dtype=np.float64)
        self.size = np.empty(capacity, dtype=np.int64)
        self.cpv = np.zeros(capacity + 1, dtype=np.float64)
        self.cp = np.zeros(capacity + 1, dtype=np.float64)
        self.cv = np.zeros(capacity + 1, dtype=np.int64)
        self.lo = 0
        self.hi = 0
        self.dropped = 0  # entries removed from the front by compaction
        self.first_ts = 0
        self.max_ts = 0

    def _reserve(self, extra: int) -> None:
        need = self.hi + extra
        cap = len(self.ts)
        if need <= cap:
            return
        lo, hi = self.lo, self.hi
        live = hi - lo
        # Compact in place when the dead front alone frees enough room, else grow.
        fits = lo >= live and live + extra <= cap
        new_cap = cap if fits else max(2 * cap, live + extra + 1024)
        for name in ("ts", "seq", "price", "size"):
            old = getattr(self, name)
            buf = old if new_cap == cap else np.empty(new_cap, dtype=old.dtype)
            buf[:live] = old[lo:hi]
            setattr(self, name, buf)
        for name in ("cpv", "cp", "cv"):
            old = getattr(self, name)
            buf = old if new_cap == cap else np.zeros(new_cap + 1, dtype=old.dtype)
            buf[: live + 1] = old[lo : hi + 1]
            setattr(self, name, buf)
        self.dropped += lo
        self.lo = 0
        self.hi = live

    def _accumulate(self, start: int) -> None:
        """Recompute prefix sums for entries [start, hi), sequentially from cum[start]."""
        hi = self.hi
        k = hi - start
        if k <= 0:
            return
        p = self.price[start:hi]
        v = self.size[start:hi]
        tmp = np.empty(k + 1, dtype=np.float64)
        tmp[0] = self.cpv[start]
        np.multiply(p, v, out=tmp[1:])
        np.cumsum(tmp, out=self.cpv[start : hi + 1])
        tmp[0] = self.cp[start]
        tmp[1:] = p
        np.cumsum(tmp, out=self.cp[start : hi + 1])
        itmp = np.empty(k + 1, dtype=np.int64)
        itmp[0] = self.cv[start]
        itmp[1:] = v
        np.cumsum(itmp, out=self.cv[start : hi + 1])

    def insert(self, t: I64, q: I64, p: F64, v: I64) -> tuple[I64, B]:
        """Merge trades sorted by (t, q) into the tape.

        Returns (buffer index of each accepted trade, accepted mask); a trade whose (t, q) is
        already in the tape, or repeated in the batch, is not accepted.
        """
        k = len(t)
        self._reserve(k)
        lo, hi = self.lo, self.hi
        same = (t[1:] == t[:-1]) & (q[1:] == q[:-1])
        after = hi == lo or (t[0], q[0]) > (self.ts[hi - 1], self.seq[hi - 1])
        if after and not same.any():
            self.ts[hi : hi + k] = t
            self.seq[hi : hi + k] = q
            self.price[hi : hi + k] = p
            self.size[hi : hi + k] = v
            self.hi = hi + k
            self._accumulate(hi)
            return np.arange(hi, hi + k, dtype=np.int64), np.ones(k, dtype=np.bool_)
        # General path: merge the batch with the tail of the tape that sorts after its first
        # trade; only that tail moves and gets its prefix sums recomputed.
        pos = lo + int(np.searchsorted(self.ts[lo:hi], t[0], side="left"))
        while pos < hi and self.ts[pos] == t[0] and self.seq[pos] < q[0]:
            pos += 1
        tail = hi - pos
        ts_c = np.concatenate((self.ts[pos:hi], t))
        sq_c = np.concatenate((self.seq[pos:hi], q))
        pr_c = np.concatenate((self.price[pos:hi], p))
        sz_c = np.concatenate((self.size[pos:hi], v))
        order = np.lexsort((sq_c, ts_c))  # stable: the stored copy precedes a re-delivery
        ts_s, sq_s = ts_c[order], sq_c[order]
        dup = np.zeros(len(order), dtype=np.bool_)
        dup[1:] = (ts_s[1:] == ts_s[:-1]) & (sq_s[1:] == sq_s[:-1])
        keep = order[~dup]
        n = len(keep)
        self.ts[pos : pos + n] = ts_c[keep]
        self.seq[pos : pos + n] = sq_c[keep]
        self.price[pos : pos + n] = pr_c[keep]
        self.size[pos : pos + n] = sz_c[keep]
        self.hi = pos + n
        self._accumulate(pos)
        index = np.full(len(ts_c), -1, dtype=np.int64)
        index[keep] = np.arange(pos, pos + n, dtype=np.int64)
        new_index = index[tail:]
        accepted = new_index >= 0
        return new_index[accepted], accepted

    def trim(self, retain_ns: int) -> None:
        """Forget entries older than max_ts − retain_ns, keeping the newest of them (it is
        the momentum reference of a trade right after a quiet spell)."""
        cutoff = self.max_ts - retain_ns
        lo, hi = self.lo, self.hi
        first = lo + int(np.searchsorted(self.ts[lo:hi], cutoff, side="left"))
        self.lo = max(lo, first - 1)


class FeatureEngine:
    """Computes feature rows for micro-batches of trades; deterministic in the trade set."""

    def __init__(self, params: FeatureParams | None = None) -> None:
        self.params = params or FeatureParams()
        pr = self.params
        self.vol_window_ns = round(pr.volume_window_s * NS_PER_S)
        self.late_ns = round(pr.late_allowance_s * NS_PER_S)
        horizon = max(
            max(AVG_WINDOWS_S) * NS_PER_S,
            (pr.volume_baseline_windows + 1) * self.vol_window_ns,
            MOMENTUM_S * NS_PER_S,
        )
        self.retain_ns = horizon + self.late_ns + NS_PER_S
        # The newest two sessions per ticker: the previous one still takes late trades
        # around 04:00 ET; anything older is too late.
        self.sessions: dict[str, dict[int, _Tape]] = {}
        self.too_late = 0
        self.duplicates = 0
        self.excluded = 0
        n = pr.volume_baseline_windows
        self._offsets = np.concatenate(
            (
                np.array([w * NS_PER_S for w in AVG_WINDOWS_S], dtype=np.int64),
                np.array([MOMENTUM_S * NS_PER_S], dtype=np.int64),
                np.arange(1, n + 2, dtype=np.int64) * self.vol_window_ns,
            )
        )

    def process(self, trades: list[Trade]) -> list[FeatureBlock]:
        """Feature rows for a micro-batch: one block per ticker, tickers in first-seen order."""
        by_ticker: dict[str, list[Trade]] = {}
        excluded = 0
        for tr in trades:
            if tr.conditions and not EXCLUDED_CONDITIONS.isdisjoint(tr.conditions):
                excluded += 1
                continue
            lst = by_ticker.get(tr.ticker)
            if lst is None:
                by_ticker[tr.ticker] = [tr]
            else:
                lst.append(tr)
        self.excluded += excluded
        out: list[FeatureBlock] = []
        for ticker, lst in by_ticker.items():
            t = np.fromiter((tr.timestamp for tr in lst), dtype=np.int64, count=len(lst))
            q = np.fromiter((tr.sequence_number for tr in lst), dtype=np.int64, count=len(lst))
            p = np.fromiter((tr.price for tr in lst), dtype=np.float64, count=len(lst))
            v = np.fromiter((tr.size for tr in lst), dtype=np.int64, count=len(lst))
            block = self.update(ticker, t, q, p, v)
            if block is not None:
                out.append(block)
        return out

    def update(self, ticker: str, t: I64, q: I64, p: F64, v: I64) -> FeatureBlock | None:
        """Add one ticker's trades (any order) and return their rows in tape order."""
        if len(t) == 0:
            return None
        if len(t) > 1 and not np.all((t[1:] > t[:-1]) | ((t[1:] == t[:-1]) & (q[1:] >= q[:-1]))):
            order = np.lexsort((q, t))
            t, q, p, v = t[order], q[order], p[order], v[order]
        sess = sessions_of(t)
        parts: list[FeatureBlock] = []
        if sess[0] == sess[-1]:
            part = self._update_session(ticker, int(sess[0]), t, q, p, v)
            if part is not None:
                parts.append(part)
        else:
            cuts = np.flatnonzero(sess[1:] != sess[:-1]) + 1
            for a, b in zip(
                np.concatenate(([0], cuts)), np.concatenate((cuts, [len(t)])), strict=True
            ):
                part = self._update_session(ticker, int(sess[a]), t[a:b], q[a:b], p[a:b], v[a:b])
                if part is not None:
                    parts.append(part)
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return FeatureBlock(
            ticker,
            *(np.concatenate([getattr(x, k) for x in parts]) for k in ROW_KEYS[1:]),
        )

    def _tape(self, ticker: str, session: int) -> _Tape | None:
        tapes = self.sessions.setdefault(ticker, {})
        tape = tapes.get(session)
        if tape is not None:
            return tape
        if tapes and session < max(tapes):
            return None  # a session older than the newest one we hold has closed
        tape = _Tape()
        tapes[session] = tape
        while len(tapes) > 2:
            del tapes[min(tapes)]
        return tape

    def _update_session(
        self, ticker: str, session: int, t: I64, q: I64, p: F64, v: I64
    ) -> FeatureBlock | None:
        tape = self._tape(ticker, session)
        if tape is None:
            self.too_late += len(t)
            return None
        if tape.hi > tape.lo:
            fresh = t >= tape.max_ts - self.late_ns
            if not fresh.all():
                self.too_late += int((~fresh).sum())
                t, q, p, v = t[fresh], q[fresh], p[fresh], v[fresh]
                if len(t) == 0:
                    return None
            first_ts = min(tape.first_ts, int(t[0]))
        else:
            first_ts = int(t[0])
        idx, accepted = tape.insert(t, q, p, v)
        if not accepted.all():
            self.duplicates += int((~accepted).sum())
            t, q, p, v = t[accepted], q[accepted], p[accepted], v[accepted]
            if len(t) == 0:
                return None
        tape.first_ts = first_ts
        tape.max_ts = max(tape.max_ts, int(t[-1]))
        block = self._features(ticker, tape, idx, t, q, p, v)
        tape.trim(self.retain_ns)
        return block

    def _features(
        self, ticker: str, tape: _Tape, idx: I64, t: I64, q: I64, p: F64, v: I64
    ) -> FeatureBlock:
        pr = self.params
        lo, hi = tape.lo, tape.hi
        m = len(t)
        offs = self._offsets
        keys = (t[None, :] - offs[:, None]).ravel()
        # Column-major keys: each offset's keys are sorted, which searchsorted exploits.
        right = (np.searchsorted(tape.ts[lo:hi], keys, side="right") + lo).reshape(len(offs), m)
        e = idx + 1
        cpv, cp, cv = tape.cpv, tape.cp, tape.cv

        def window(s: I64) -> tuple[F64, I64, F64, I64]:
            return cpv[e] - cpv[s], cv[e] - cv[s], cp[e] - cp[s], e - s

        s1, s5, s15, s_mom = right[0], right[1], right[2], right[3]
        pv1, v1, p1, n1 = window(s1)
        pv5, v5, p5, n5 = window(s5)
        _, _, p15, n15 = window(s15)
        session_n = (tape.dropped + e).astype(np.int64)
        vwap = vwap_of(cpv[e], cv[e], cp[e], session_n)
        vwap_1m = vwap_of(pv1, v1, p1, n1)
        vwap_5m = vwap_of(pv5, v5, p5, n5)

        c = cv[right[4:]]  # (N+1, m): volume of trades at or before t − k·W, k = 1..N+1
        v0 = cv[e] - c[0]
        baseline = (c[:-1] - c[1:]).T
        nb = baseline_count(t, tape.first_ts, self.vol_window_ns, pr.volume_baseline_windows)
        z, z_warm = volume_zscore(v0, baseline, nb, pr.volume_min_baseline, pr.zscore_std_floor)

        ref = s_mom - 1
        has_ref = ref >= lo
        mom = price_momentum(p, tape.price[np.maximum(ref, lo)], has_ref)

        return FeatureBlock(
            ticker=ticker,
            timestamp=t,
            sequence_number=q,
            price=p,
            size=v,
            vwap=vwap,
            vwap_1m=vwap_1m,
            vwap_5m=vwap_5m,
            avg_price_1m=mean_price(p1, n1),
            avg_price_5m=mean_price(p5, n5),
            avg_price_15m=mean_price(p15, n15),
            volume_zscore=z,
            price_momentum=mom,
            vwap_deviation=vwap_deviation(p, vwap_5m),
            trade_frequency=trade_frequency(n1, FREQUENCY_S * NS_PER_S),
            warming_up=z_warm | ~has_ref,
        )
