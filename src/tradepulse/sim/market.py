"""Pure market generation: prices, sizes, quotes, anomalies, news and malformed events.

No I/O and no clock: `MarketGenerator.advance(now_ns)` produces everything due in
``(previous now, now]``, so a generator is deterministic for a seed, a start time and the
sequence of `advance` times. The server calls it every few milliseconds with the wall clock.

Model, per ticker:

* Quotes move the price: a log random walk with Student-t(4) shocks scaled by a GARCH(1,1)
  variance multiplier (volatility clusters) and by √dt. Trades print at the bid, the ask or
  inside the current quote, so every trade lies within the last quote sent for its ticker.
* Sizes are lognormal (median 100), mostly rounded to round lots, with odd lots flagged (37)
  and rare Pareto-tailed block trades; ~25 % of prints are off-exchange (TRF, exchange 4).
* Events arrive as a Poisson process at ``rate · profile(t) · weight(ticker)``; 40 % trades.
* Injected anomalies (Poisson, `anomaly_rate` per minute): a price jump of ±`jump_pct` that
  stays or decays back, or a volume burst (sizes × `burst_mult` for 3–6 s).
* Articles (Poisson, `news_rate` per minute); with probability `news_spike_prob` one comes with
  a volume spike (trade rate × 3–5 and sizes × 3–5 for 15–20 s) starting within ±30 s of its
  publication. Volume windows (and block trades) and spike-free articles are kept
  `SEPARATION_NS` apart by pushing the later one back; the truth flag is nevertheless
  computed from the overlap rule.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from tradepulse.market_time import regular_close_ns, regular_open_ns, trading_day
from tradepulse.sim.config import SimConfig
from tradepulse.sim.news import (
    HEADLINES,
    SOURCES,
    SUMMARIES,
    TONE_WEIGHTS,
    TONES,
    company_name,
)

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000

P_TRADE = 0.4  # share of events that are trades (the rest are NBBO quote updates)
SEQ_HOLE_PROB = 0.02  # Polygon's sequence numbers have holes; a jump alone is not a loss

# (Polygon participant id, share of prints). 4 is the FINRA TRF (off-exchange prints).
EXCHANGES: tuple[tuple[int, float], ...] = (
    (4, 0.25),
    (12, 0.17),  # Nasdaq
    (10, 0.10),  # NYSE
    (11, 0.09),  # NYSE Arca
    (8, 0.09),  # Cboe EDGX
    (19, 0.08),  # Cboe BZX
    (15, 0.06),  # IEX
    (21, 0.06),  # MEMX
    (7, 0.05),  # Cboe EDGA
    (2, 0.05),  # Nasdaq BX
)
TRF_EXCHANGE = 4
TRF_IDS: tuple[int, ...] = (201, 202, 203)
QUOTE_EXCHANGES: tuple[int, ...] = (12, 10, 11, 8, 19, 15, 21, 7, 2)
QUOTE_CONDITION = 1  # regular two-sided quote

# Condition codes (Polygon's numbering) of ordinary prints.
INTERMARKET_SWEEP = 14
TRADE_THRU_EXEMPT = 41
ODD_LOT = 37
# Prints the consolidated tape keeps out of volume and/or the last price (a few % of trades,
# so a volume or VWAP computed naively over every print is measurably off):
#  2 Average Price Trade, 7 Cash Sale, 15 Market Center Official Close,
#  16 Market Center Official Open, 22 Prior Reference Price, 38 Corrected Consolidated Close.
EXCLUDED_CONDITIONS: tuple[int, ...] = (2, 7, 15, 16, 22, 38)
EXCLUDED_SHARE = 0.03
BLOCK_PROB = 0.0003  # genuine block trades: a real source of volume spikes without news

SIGMA_PER_S = 1.5e-4  # ≈ 37 % annualised over the regular session
GARCH_ALPHA = 0.08
GARCH_BETA = 0.90
T_DOF = 4.0

SPIKE_WINDOW_NS = 60 * NS_PER_S  # correlation window on either side of published_at
# Volume windows (and block trades) stay this far from spike-free articles: the article's
# ±60 s join window plus the 60 s the trailing volume window remembers a spike, plus a margin,
# so a spike-free article's ground truth ("no spike") is also what the z-score can see.
SEPARATION_NS = 150 * NS_PER_S
SCHEDULE_HORIZON_NS = 180 * NS_PER_S  # anomalies/articles are planned this far ahead
SESSION_S = 23_400.0  # 09:30–16:00

MALFORMED_KINDS: tuple[str, ...] = (
    "not_json",
    "truncated_json",
    "missing_field",
    "negative_price",
    "zero_price",
    "negative_size",
    "bad_ticker",
    "future_timestamp",
    "wrong_type",
    "nan_price",
)
FUTURE_SHIFT_MS = 7 * 86_400 * 1000

# Starting prices of well-known tickers, so charts look familiar; others are drawn.
START_PRICES: dict[str, float] = {
    "AAPL": 190.0,
    "MSFT": 420.0,
    "NVDA": 120.0,
    "AMZN": 180.0,
    "GOOGL": 170.0,
    "GOOG": 171.0,
    "META": 500.0,
    "TSLA": 250.0,
    "AMD": 160.0,
    "NFLX": 650.0,
    "SPY": 550.0,
    "QQQ": 470.0,
    "JPM": 200.0,
    "INTC": 30.0,
}
NASDAQ_LISTED = frozenset(
    {"AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "GOOG", "META", "TSLA", "AMD", "NFLX", "QQQ", "INTC"}
)

# sip_timestamp, sequence_number, price, size, exchange, conditions, id, tape, trf_id,
# trf_timestamp (ns or None), participant_timestamp
TradeRow = tuple[int, int, float, int, int, tuple[int, ...], str, int, int | None, int | None, int]


@dataclass(slots=True)
class AnomalyTruth:
    ticker: str
    kind: str  # price_jump | volume_burst | news_spike
    start_ns: int
    end_ns: int
    magnitude: float  # signed % for price_jump, volume multiplier otherwise
    sequence_number: int | None = None  # first trade at or after start_ns
    revert_s: float | None = None  # price_jump: e-folding time of the decay, None = stays

    def to_json(self, ended_ns: int) -> dict[str, Any]:
        return {
            "ticker": self.ticker,
            "sequence_number": self.sequence_number,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": min(self.end_ns, ended_ns),
            "magnitude": round(self.magnitude, 4),
            "revert_s": self.revert_s,
        }


@dataclass(slots=True)
class VolumeWindow:
    start_ns: int
    end_ns: int
    size_mult: float
    rate_mult: float
    anomaly: AnomalyTruth

    @property
    def volume_mult(self) -> float:
        return self.size_mult * self.rate_mult


@dataclass(slots=True)
class Article:
    id: int
    ticker: str
    published_at: int  # ns, whole seconds (Finnhub's datetime is Unix seconds)
    headline: str
    summary: str
    source: str
    url: str
    tone: str
    spike: VolumeWindow | None  # the spike injected for this article, if any

    def to_finnhub(self) -> dict[str, Any]:
        return {
            "category": "company",
            "datetime": self.published_at // NS_PER_S,
            "headline": self.headline,
            "id": self.id,
            "image": "",
            "related": self.ticker,
            "source": self.source,
            "summary": self.summary,
            "url": self.url,
        }


@dataclass(slots=True)
class Malformed:
    kind: str
    ticker: str
    raw: str  # the whole frame, sent alone


@dataclass(slots=True)
class Batch:
    """Everything generated for one `advance` call, in event-time order."""

    events: list[dict[str, Any]] = field(default_factory=list)  # valid T and Q wire events
    trades: list[tuple[str, TradeRow]] = field(default_factory=list)  # for the REST history
    malformed: list[Malformed] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.malformed)


@dataclass(order=True, slots=True)
class _Candidate:
    at_ns: int
    order: int
    kind: str = field(compare=False)  # article | price_jump | volume_burst
    draws: dict[str, Any] = field(compare=False, default_factory=dict)


@dataclass(slots=True)
class _Ticker:
    symbol: str
    index: int
    rng: random.Random
    sched_rng: random.Random
    weight: float
    tape: int
    log_base: float
    h: float = 1.0
    last_eps: float = 0.0
    last_move_ns: int = 0
    jumps: list[list[float]] = field(default_factory=list)  # [log offset, tau_s or inf]
    bid: float = 0.0
    ask: float = 0.0
    bid_size: int = 100
    ask_size: int = 100
    bx: int = 12
    ax: int = 12
    base_spread: int = 1
    seq: int = 0
    quoted: bool = False  # a quote has been sent, so trades have an NBBO to sit in
    day: int = 0
    trade_id: int = 0
    next_article_ns: float = math.inf
    next_anomaly_ns: float = math.inf
    candidates: list[_Candidate] = field(default_factory=list)
    candidate_order: int = 0
    article_count: int = 0
    windows: list[VolumeWindow] = field(default_factory=list)  # every accepted window
    live: list[VolumeWindow] = field(default_factory=list)  # not yet over
    calm_articles: list[int] = field(default_factory=list)  # published_at of spike-free ones
    articles: list[Article] = field(default_factory=list)  # sorted by published_at
    pending_jumps: list[tuple[int, float, float]] = field(default_factory=list)
    awaiting_seq: list[AnomalyTruth] = field(default_factory=list)  # by start_ns


def _student_t(rng: random.Random) -> float:
    """Unit-variance Student-t: heavier tails than a normal, as returns have."""
    chi2 = rng.gammavariate(T_DOF / 2, 2.0)
    return rng.gauss(0.0, 1.0) / math.sqrt(chi2 / T_DOF) * math.sqrt((T_DOF - 2) / T_DOF)


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 30:
        # Knuth: exact and cheap for the small means of a 5 ms tick.
        limit = math.exp(-lam)
        k = 0
        p = rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


def _weighted(rng: random.Random, items: tuple[tuple[int, float], ...]) -> int:
    u = rng.random() * sum(w for _, w in items)
    for value, w in items:
        u -= w
        if u <= 0:
            return value
    return items[-1][0]


def _ceil_s(ns: int) -> int:
    return -(-ns // NS_PER_S) * NS_PER_S


class MarketGenerator:
    """Deterministic event generator; see the module docstring."""

    def __init__(self, config: SimConfig, start_ns: int) -> None:
        """`start_ns` is when the live feed starts; with `config.history_s` the market has
        been trading since ``start_ns − history_s`` and `advance_history` generates that
        stretch (calm: no injected anomalies, articles or malformed events in it)."""
        self.config = config
        self.live_ns = start_ns
        self.start_ns = start_ns - int(config.history_s * NS_PER_S)
        self.now_ns = self.start_ns
        self.end_ns = (
            start_ns + int(config.duration_s * NS_PER_S) if config.duration_s is not None else None
        )
        self.finished = False
        self.total_events = 0
        self.history_events = 0  # generated by `advance_history`, never sent over the socket
        self.history_trades: dict[str, int] = dict.fromkeys(config.tickers, 0)
        self.valid_trades: dict[str, int] = dict.fromkeys(config.tickers, 0)
        self.valid_quotes: dict[str, int] = dict.fromkeys(config.tickers, 0)
        self.malformed_by_kind: dict[str, int] = dict.fromkeys(MALFORMED_KINDS, 0)
        self.anomalies: list[AnomalyTruth] = []
        self._article_ids: set[int] = set()
        self._phase0 = self._intraday_phase(self.start_ns)
        self.tickers: dict[str, _Ticker] = {}
        weights = []
        for i, sym in enumerate(config.tickers):
            static = random.Random(f"{config.seed}:{sym}:static")
            weights.append(static.lognormvariate(0.0, 0.4))
            price = START_PRICES.get(sym) or math.exp(static.uniform(math.log(10), math.log(400)))
            tape = (
                3 if sym in NASDAQ_LISTED else _weighted(static, ((1, 0.55), (2, 0.1), (3, 0.35)))
            )
            st = _Ticker(
                symbol=sym,
                index=i,
                rng=random.Random(f"{config.seed}:{sym}:events"),
                sched_rng=random.Random(f"{config.seed}:{sym}:schedule"),
                weight=0.0,
                tape=tape,
                log_base=math.log(price),
                last_move_ns=self.start_ns,
                base_spread=1 if price < 100 else 2 if price < 400 else 4,
                trade_id=static.randrange(10**13, 10**14),
                seq=static.randrange(1000, 5000),
                day=trading_day(self.start_ns),
            )
            # Anomalies and articles only from the live start: the history is the calm
            # baseline a detector warms up on, and the ground truth covers the live stretch.
            if config.news_rate > 0:
                st.next_article_ns = start_ns + self._gap(st, config.news_rate)
            if config.anomaly_rate > 0:
                st.next_anomaly_ns = start_ns + self._gap(st, config.anomaly_rate)
            self._requote(st, self.start_ns)
            self.tickers[sym] = st
        total = sum(weights)
        for st, w in zip(self.tickers.values(), weights, strict=True):
            st.weight = w / total
        self._schedule(start_ns + SCHEDULE_HORIZON_NS)

    # --- public ---------------------------------------------------------------------------

    @property
    def ended_ns(self) -> int:
        """The end of the generated stretch of event time."""
        return self.now_ns

    def profile_mult(self, ns: int) -> float:
        elapsed = max(0.0, (ns - self.start_ns) / NS_PER_S)
        profile = self.config.profile
        if profile == "flat":
            return 1.0
        if profile == "market-open":
            # The opening rush: 1× to 9× within 45 s of the live start, then sustained.
            return 1.0 + 8.0 * min(max(0.0, (ns - self.live_ns) / NS_PER_S) / 45.0, 1.0)
        x = (self._phase0 + elapsed / SESSION_S) % 1.0
        return 0.5 + (2.0 * x - 1.0) ** 2  # U shape: 1.5× at open/close, 0.5× at midday

    def advance_history(self) -> Batch:
        """Generate the trading before the live start (``config.history_s``): its trades are
        served by the REST endpoint only, its quotes are never sent, so `valid_quotes` does
        not count them and `history_trades` says how many of `valid_trades` it holds."""
        if self.now_ns >= self.live_ns:
            return Batch()
        batch = self.advance(self.live_ns)
        self.history_events = self.total_events
        self.history_trades = dict(self.valid_trades)
        self.valid_quotes = dict.fromkeys(self.config.tickers, 0)
        return batch

    def advance(self, now_ns: int) -> Batch:
        """Generate every event due in ``(self.now_ns, now_ns]`` (clipped to the end)."""
        batch = Batch()
        if self.finished:
            return batch
        t0, t1 = self.now_ns, now_ns
        if self.end_ns is not None:
            t1 = min(t1, self.end_ns)
        if t1 <= t0:
            self._check_finished(t0)
            return batch
        self._schedule(t1 + SCHEDULE_HORIZON_NS)
        mult = self.profile_mult(t1)
        items: list[tuple[int, int, int, Any]] = []
        for st in self.tickers.values():
            self._generate(st, t0, t1, mult, items)
        items.sort(key=lambda it: (it[0], it[1], it[2]))
        if self.config.count is not None and t1 > self.live_ns:
            remaining = self.config.count - (self.total_events - self.history_events)
            if len(items) >= remaining:
                del items[remaining:]
        self._commit(items, batch)
        self.now_ns = t1
        self._check_finished(t1)
        return batch

    def published(self, ticker: str, now_ns: int) -> list[Article]:
        """The ticker's articles published by `now_ns` (and by the end of the run)."""
        st = self.tickers.get(ticker)
        if st is None:
            return []
        limit = min(now_ns, self.now_ns) if self.finished else now_ns
        idx = bisect.bisect_right(st.articles, limit, key=lambda a: a.published_at)
        return st.articles[:idx]

    def articles(self) -> list[Article]:
        out = [a for st in self.tickers.values() for a in st.articles]
        out.sort(key=lambda a: (a.published_at, a.ticker))
        return out

    def spike_truth(self, article: Article, ended_ns: int) -> tuple[bool, VolumeWindow | None]:
        """True iff an injected volume window (started by `ended_ns`) overlaps the article's
        ±60 s window; also the window to report (the article's own one first)."""
        lo = article.published_at - SPIKE_WINDOW_NS
        hi = article.published_at + SPIKE_WINDOW_NS
        hits = [
            w
            for w in self.tickers[article.ticker].windows
            if w.start_ns < ended_ns and w.start_ns <= hi and min(w.end_ns, ended_ns) >= lo
        ]
        if not hits:
            return False, None
        own = article.spike
        return True, own if own is not None and own in hits else hits[0]

    # --- scheduling ------------------------------------------------------------------------

    @staticmethod
    def _gap(st: _Ticker, per_minute: float) -> int:
        return int(st.sched_rng.expovariate(per_minute / 60.0) * NS_PER_S) + 1

    def _push(self, st: _Ticker, at_ns: int, kind: str, draws: dict[str, Any]) -> None:
        st.candidate_order += 1
        heapq.heappush(st.candidates, _Candidate(at_ns, st.candidate_order, kind, draws))

    def _schedule(self, until_ns: int) -> None:
        cfg = self.config
        for st in self.tickers.values():
            r = st.sched_rng
            while st.next_article_ns <= until_ns:
                at = int(st.next_article_ns)
                draws = {
                    "spike": r.random() < cfg.news_spike_prob,
                    "tone": r.choices(TONES, TONE_WEIGHTS)[0],
                    "h": r.random(),
                    "s": r.random(),
                    "source": r.choice(SOURCES),
                    "offset_ns": int(r.uniform(-30, 30) * NS_PER_S),
                    "dur_ns": int(r.uniform(15, 20) * NS_PER_S),
                    "rate_mult": r.uniform(3, 5),
                    "size_mult": r.uniform(3, 5),
                    "jitter_ns": int(r.uniform(0, 60) * NS_PER_S),
                }
                self._push(st, at, "article", draws)
                st.next_article_ns += self._gap(st, cfg.news_rate)
            while st.next_anomaly_ns <= until_ns:
                at = int(st.next_anomaly_ns)
                kind = "price_jump" if r.random() < 0.5 else "volume_burst"
                draws = {
                    "sign": 1 if r.random() < 0.5 else -1,
                    "stays": r.random() < 0.5,
                    "tau_s": r.uniform(60, 180),
                    "dur_ns": int(r.uniform(3, 6) * NS_PER_S),
                    "jitter_ns": int(r.uniform(0, 60) * NS_PER_S),
                }
                self._push(st, at, kind, draws)
                st.next_anomaly_ns += self._gap(st, cfg.anomaly_rate)
            while st.candidates and st.candidates[0].at_ns <= until_ns:
                c = heapq.heappop(st.candidates)
                later = self._accept(st, c)
                if later is not None:
                    c.at_ns = later
                    heapq.heappush(st.candidates, c)

    def _calm_conflict(self, st: _Ticker, start: int, end: int) -> int | None:
        """A spike-free article too close to the volume window [start, end], if any."""
        for p in st.calm_articles:
            if start < p + SEPARATION_NS and end > p - SEPARATION_NS:
                return p
        return None

    @staticmethod
    def _near_calm_article(st: _Ticker, ts: int) -> bool:
        return any(abs(ts - p) < SEPARATION_NS for p in st.calm_articles)

    def _accept(self, st: _Ticker, c: _Candidate) -> int | None:
        """Accept the candidate, or return the later time it must be retried at (pushed past
        the conflict plus a random jitter, so pushed candidates do not pile up together)."""
        d = c.draws
        push = SEPARATION_NS + NS_PER_S + int(d["jitter_ns"])
        if c.kind == "price_jump":
            # On a whole ms, so the quote showing the jump carries the jump's own timestamp.
            c.at_ns = -(-c.at_ns // NS_PER_MS) * NS_PER_MS
            pct = d["sign"] * self.config.jump_pct
            tau = math.inf if d["stays"] else float(d["tau_s"])
            end = c.at_ns if d["stays"] else c.at_ns + int(3 * tau * NS_PER_S)
            revert = None if d["stays"] else float(d["tau_s"])
            a = AnomalyTruth(st.symbol, "price_jump", c.at_ns, end, pct, None, revert)
            self._add_anomaly(st, a)
            bisect.insort(st.pending_jumps, (c.at_ns, math.log1p(pct / 100), tau))
            return None
        if c.kind == "volume_burst":
            start, end = c.at_ns, c.at_ns + d["dur_ns"]
            p = self._calm_conflict(st, start, end)
            if p is not None:
                return p + push
            mult = self.config.burst_mult
            a = AnomalyTruth(st.symbol, "volume_burst", start, end, mult)
            self._add_window(st, VolumeWindow(start, end, mult, 1.0, a))
            return None
        published = _ceil_s(c.at_ns)
        if d["spike"]:
            start = max(published + d["offset_ns"], self.live_ns)
            end = start + d["dur_ns"]
            p = self._calm_conflict(st, start, end)
            if p is not None:
                return p + push - int(d["offset_ns"])
            a = AnomalyTruth(st.symbol, "news_spike", start, end, d["rate_mult"] * d["size_mult"])
            window = VolumeWindow(start, end, d["size_mult"], d["rate_mult"], a)
            self._add_window(st, window)
            self._add_article(st, published, d, window)
            return None
        for w in st.windows:
            if w.start_ns < published + SEPARATION_NS and w.end_ns > published - SEPARATION_NS:
                return w.end_ns + push
        st.calm_articles.append(published)
        self._add_article(st, published, d, None)
        return None

    def _add_anomaly(self, st: _Ticker, a: AnomalyTruth) -> None:
        self.anomalies.append(a)
        bisect.insort(st.awaiting_seq, a, key=lambda x: x.start_ns)

    def _add_window(self, st: _Ticker, w: VolumeWindow) -> None:
        self._add_anomaly(st, w.anomaly)
        st.windows.append(w)
        st.live.append(w)

    def _add_article(
        self, st: _Ticker, published: int, d: dict[str, Any], spike: VolumeWindow | None
    ) -> None:
        st.article_count += 1
        key = f"{self.config.seed}:{self.start_ns}:{st.symbol}:{st.article_count}"
        digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
        article_id = 100_000_000 + digest % 900_000_000
        while article_id in self._article_ids:
            article_id += 1
        self._article_ids.add(article_id)
        tone = d["tone"]
        name = company_name(st.symbol)
        heads, sums = HEADLINES[tone], SUMMARIES[tone]
        headline = heads[int(d["h"] * len(heads))].format(company=name, ticker=st.symbol)
        summary = sums[int(d["s"] * len(sums))].format(company=name, ticker=st.symbol)
        url_id = hashlib.sha256(str(article_id).encode()).hexdigest()[:40]
        article = Article(
            id=article_id,
            ticker=st.symbol,
            published_at=published,
            headline=headline,
            summary=summary,
            source=d["source"],
            url=f"https://finnhub.io/api/news?id={url_id}",
            tone=tone,
            spike=spike,
        )
        bisect.insort(st.articles, article, key=lambda a: a.published_at)

    # --- generation ------------------------------------------------------------------------

    def _intraday_phase(self, ns: int) -> float:
        """Where in the regular session the run starts (0 = the open when outside it)."""
        day = trading_day(ns)
        open_ns, close_ns = regular_open_ns(day), regular_close_ns(day)
        if open_ns <= ns < close_ns:
            return (ns - open_ns) / (close_ns - open_ns)
        return 0.0

    def _check_finished(self, t: int) -> None:
        if t <= self.live_ns:
            return
        sent = self.total_events - self.history_events
        if (self.config.count is not None and sent >= self.config.count) or (
            self.end_ns is not None and t >= self.end_ns
        ):
            self.finished = True

    def _window_mults(self, st: _Ticker, t0: int, t1: int) -> float:
        """Prune finished windows; the trade-rate multiplier at the end of the tick."""
        if st.live:
            st.live = [w for w in st.live if w.end_ns > t0]
        rate_mult = 1.0
        for w in st.live:
            if w.start_ns <= t1 < w.end_ns:
                rate_mult = max(rate_mult, w.rate_mult)
        return rate_mult

    def _size_mult(self, st: _Ticker, ts: int) -> float:
        mult = 1.0
        for w in st.live:
            if w.start_ns <= ts < w.end_ns:
                mult = max(mult, w.size_mult)
        return mult

    def _generate(
        self, st: _Ticker, t0: int, t1: int, mult: float, out: list[tuple[int, int, int, Any]]
    ) -> None:
        rng = st.rng
        span = t1 - t0
        lam = self.config.rate * mult * st.weight * span / NS_PER_S
        rate_mult = self._window_mults(st, t0, t1)
        # (ts, kind) with kind 0 = trade or quote at random, 1 = trade, 2 = quote
        times: list[tuple[int, int]] = [
            (t0 + 1 + int(rng.random() * (span - 1)), 0) for _ in range(poisson(rng, lam))
        ]
        if rate_mult > 1.0:
            extra = poisson(rng, lam * P_TRADE * (rate_mult - 1.0))
            times.extend((t0 + 1 + int(rng.random() * (span - 1)), 1) for _ in range(extra))
        # A price jump shows up in a quote at the jump's own time.
        for at, _, _ in st.pending_jumps:
            if at > t1:
                break
            times.append((max(at, t0 + 1), 2))
        if not times:
            return
        if not st.quoted:
            times.append((t0 + 1, 2))
        times.sort()
        day0 = trading_day(t0 + 1)
        if day0 != st.day:
            st.day, st.seq = day0, 0
        straddles = trading_day(t1) != day0
        bad_rate = self.config.bad_rate if t1 > self.live_ns else 0.0
        for k, (ts, kind) in enumerate(times, 1):
            if straddles:
                day = trading_day(ts)
                if day != st.day:
                    st.day, st.seq = day, 0
            while st.pending_jumps and st.pending_jumps[0][0] <= ts:
                _, offset, tau = st.pending_jumps.pop(0)
                st.jumps.append([offset, tau])
            is_trade = kind == 1 or (kind == 0 and rng.random() < P_TRADE)
            st.seq += 1 + (rng.randint(1, 4) if rng.random() < SEQ_HOLE_PROB else 0)
            if bad_rate > 0 and kind != 2 and rng.random() < bad_rate:
                out.append((ts, st.index, k, self._malformed(st, ts)))
            elif is_trade:
                ev, row = self._trade(st, ts)
                out.append((ts, st.index, k, (ev, row)))
            else:
                self._move(st, ts)
                self._requote(st, ts)
                st.quoted = True
                out.append((ts, st.index, k, (self._quote_event(st, ts), None)))

    def _move(self, st: _Ticker, ts: int) -> None:
        dt = max(ts - st.last_move_ns, 0) / NS_PER_S
        st.last_move_ns = ts
        st.h = (1 - GARCH_ALPHA - GARCH_BETA) + GARCH_ALPHA * st.last_eps**2 + GARCH_BETA * st.h
        eps = _student_t(st.rng)
        st.last_eps = eps
        st.log_base += SIGMA_PER_S * math.sqrt(st.h * dt) * eps
        if st.jumps:
            for j in st.jumps:
                if j[1] != math.inf:
                    j[0] *= math.exp(-dt / j[1])
            st.jumps = [j for j in st.jumps if j[1] == math.inf or abs(j[0]) > 1e-5]

    def _requote(self, st: _Ticker, ts: int) -> None:
        rng = st.rng
        mid = math.exp(st.log_base + sum(j[0] for j in st.jumps))
        ticks = st.base_spread * (1 if rng.random() < 0.6 else 2 if rng.random() < 0.75 else 3)
        if st.h > 2.0:
            ticks += st.base_spread  # spreads widen when volatility is high
        bid = max(0.01, math.floor((mid - ticks * 0.005) * 100) / 100)
        st.bid = round(bid, 2)
        st.ask = round(bid + ticks / 100, 2)
        st.bid_size = 100 * (1 + int(rng.expovariate(0.25)))
        st.ask_size = 100 * (1 + int(rng.expovariate(0.25)))
        st.bx = rng.choice(QUOTE_EXCHANGES)
        st.ax = rng.choice(QUOTE_EXCHANGES)

    def _quote_event(self, st: _Ticker, ts: int) -> dict[str, Any]:
        return {
            "ev": "Q",
            "sym": st.symbol,
            "bx": st.bx,
            "bp": st.bid,
            "bs": st.bid_size,
            "ax": st.ax,
            "ap": st.ask,
            "as": st.ask_size,
            "c": QUOTE_CONDITION,
            "t": ts // NS_PER_MS,
            "q": st.seq,
            "z": st.tape,
        }

    def _trade(self, st: _Ticker, ts: int) -> tuple[dict[str, Any], TradeRow]:
        rng = st.rng
        bid, ask = st.bid, st.ask
        u = rng.random()
        midpoint = False
        if u < 0.42:
            price = bid
        elif u < 0.84:
            price = ask
        else:
            inside = round((ask - bid) * 100) - 1
            if inside >= 1:
                price = round(bid + rng.randint(1, inside) / 100, 2)
            else:
                price = round((bid + ask) / 2, 4)  # sub-penny midpoint print, off-exchange
                midpoint = True
        raw = rng.lognormvariate(math.log(100), 1.0) * self._size_mult(st, ts)
        if rng.random() < BLOCK_PROB and not self._near_calm_article(st, ts):
            raw = 5000 * rng.paretovariate(2.0)
        size = max(1, int(raw))
        if size >= 100 and rng.random() < 0.75:
            size = max(100, round(size / 100) * 100)
        if rng.random() < EXCLUDED_SHARE:
            conditions: tuple[int, ...] = (rng.choice(EXCLUDED_CONDITIONS),)
        else:
            v = rng.random()
            conditions = (
                ()
                if v < 0.7
                else (INTERMARKET_SWEEP,)
                if v < 0.85
                else (TRADE_THRU_EXEMPT,)
                if v < 0.93
                else (INTERMARKET_SWEEP, TRADE_THRU_EXEMPT)
            )
        if size < 100:
            conditions = (*conditions, ODD_LOT)
        exchange = TRF_EXCHANGE if midpoint else _weighted(rng, EXCHANGES)
        st.trade_id += rng.randint(1, 9)
        t_ms = ts // NS_PER_MS
        sip_ns = t_ms * NS_PER_MS
        ev: dict[str, Any] = {
            "ev": "T",
            "sym": st.symbol,
            "i": str(st.trade_id),
            "x": exchange,
            "p": price,
            "s": size,
            "c": list(conditions),
            "t": t_ms,
            "q": st.seq,
            "z": st.tape,
        }
        trf_id: int | None = None
        trf_ns: int | None = None
        if exchange == TRF_EXCHANGE:
            trf_id = rng.choice(TRF_IDS)
            trf_ms = t_ms - rng.randint(0, 3)
            trf_ns = trf_ms * NS_PER_MS
            ev["trfi"] = trf_id
            ev["trft"] = trf_ms
        participant = sip_ns - rng.randint(20_000, 2_000_000)
        row: TradeRow = (
            sip_ns,
            st.seq,
            price,
            size,
            exchange,
            conditions,
            ev["i"],
            st.tape,
            trf_id,
            trf_ns,
            participant,
        )
        return ev, row

    def _malformed(self, st: _Ticker, ts: int) -> Malformed:
        """A trade-shaped event broken in one way; the quote state is left untouched."""
        rng = st.rng
        kind = rng.choice(MALFORMED_KINDS)
        ev: dict[str, Any] = {
            "ev": "T",
            "sym": st.symbol,
            "i": str(st.trade_id + 1),
            "x": rng.choice(QUOTE_EXCHANGES),
            "p": st.bid,
            "s": 100,
            "c": [],
            "t": ts // NS_PER_MS,
            "q": st.seq,
            "z": st.tape,
        }
        if kind == "not_json":
            return Malformed(kind, st.symbol, f"T {st.symbol} {st.bid} 100 @{ev['t']} <eof>")
        if kind == "truncated_json":
            full = orjson.dumps([ev]).decode()
            return Malformed(kind, st.symbol, full[: len(full) // 2])
        if kind == "missing_field":
            del ev[rng.choice(("p", "s", "t", "sym"))]
        elif kind == "negative_price":
            ev["p"] = -st.bid
        elif kind == "zero_price":
            ev["p"] = 0
        elif kind == "negative_size":
            ev["s"] = -rng.randint(1, 500)
        elif kind == "bad_ticker":
            ev["sym"] = rng.choice((st.symbol.lower(), "ABCDEFGHIJKL", st.symbol[:2] + "$#"))
        elif kind == "future_timestamp":
            ev["t"] += FUTURE_SHIFT_MS
        elif kind == "wrong_type":
            ev["s"] = "abc"
        else:  # nan_price
            ev["p"] = "NaN"
        return Malformed(kind, st.symbol, orjson.dumps([ev]).decode())

    def _commit(self, items: list[tuple[int, int, int, Any]], batch: Batch) -> None:
        """Count what is actually emitted (after a count limit cut the tick short)."""
        syms = self.config.tickers
        for ts, idx, _, item in items:
            if isinstance(item, Malformed):
                batch.malformed.append(item)
                self.malformed_by_kind[item.kind] += 1
                continue
            ev, row = item
            batch.events.append(ev)
            sym = syms[idx]
            if row is None:
                self.valid_quotes[sym] += 1
                continue
            self.valid_trades[sym] += 1
            batch.trades.append((sym, row))
            waiting = self.tickers[sym].awaiting_seq
            while waiting and waiting[0].start_ns <= ts:
                waiting.pop(0).sequence_number = row[1]
        self.total_events += len(items)

    @property
    def malformed(self) -> int:
        return sum(self.malformed_by_kind.values())
