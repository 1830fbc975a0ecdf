"""Peer (a): the original's published design, done literally, on the same frames.

Per event, as the original describes it:
  1. validate the raw Polygon event dict with a Pydantic model;
  2. compute the six features and score them with scikit-learn's `IsolationForest.score_samples`
     (100 trees, fitted once on warm-up trades, as the original never retrains mid-stream);
  3. write it as a DynamoDB PutItem would: the event row `INSERT … ON CONFLICT DO NOTHING`, then
     the latest-per-ticker row `UPDATE … WHERE sequence_number < new`, then commit.

One commit per event (not one per statement) is the generous reading of "per item". The store is
SQLite with the same pragmas as our hot store, so the comparison is about the design, not the
engine. Everything runs in one thread as fast as it can: its events/s is its capacity.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator

from tradepulse.bench.feed import Recording
from tradepulse.config import TICKER_RE
from tradepulse.market_time import NS_PER_MS, NS_PER_S, trading_day

MAX_SKEW_MS = 24 * 3600 * 1000
WARMUP_TRADES = 1000
ANOMALY_THRESHOLD = -0.5  # DESIGN.md: a score below −0.5 is stored as an anomaly


class PolygonTrade(BaseModel):
    ev: Literal["T"]
    sym: Annotated[str, Field(pattern=TICKER_RE.pattern)]
    p: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    s: Annotated[int, Field(ge=0)]
    t: int
    q: int
    i: str = ""
    x: int = 0
    c: list[int] = []
    z: int = 0
    trfi: int | None = None
    trft: int | None = None

    @field_validator("t")
    @classmethod
    def _recent(cls, v: int) -> int:
        if abs(v - time.time_ns() // NS_PER_MS) > MAX_SKEW_MS:
            raise ValueError("timestamp out of range")
        return v


class PolygonQuote(BaseModel):
    ev: Literal["Q"]
    sym: Annotated[str, Field(pattern=TICKER_RE.pattern)]
    bp: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    bs: Annotated[int, Field(ge=0)]
    ap: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    as_: Annotated[int, Field(ge=0, alias="as")]
    t: int
    q: int
    bx: int = 0
    ax: int = 0
    c: int = 0
    z: int = 0

    @field_validator("t")
    @classmethod
    def _recent(cls, v: int) -> int:
        if abs(v - time.time_ns() // NS_PER_MS) > MAX_SKEW_MS:
            raise ValueError("timestamp out of range")
        return v


_SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (ticker TEXT, day INTEGER, sequence_number INTEGER,
  price REAL, size INTEGER, timestamp INTEGER, ingest_ts INTEGER, exchange INTEGER,
  conditions TEXT, trade_id TEXT, anomaly_score REAL,
  PRIMARY KEY (ticker, day, sequence_number));
CREATE TABLE IF NOT EXISTS quotes (ticker TEXT, day INTEGER, sequence_number INTEGER,
  bid_price REAL, bid_size INTEGER, ask_price REAL, ask_size INTEGER, timestamp INTEGER,
  ingest_ts INTEGER, PRIMARY KEY (ticker, day, sequence_number));
CREATE TABLE IF NOT EXISTS latest_trade (ticker TEXT PRIMARY KEY, sequence_number INTEGER,
  price REAL, size INTEGER, timestamp INTEGER);
CREATE TABLE IF NOT EXISTS latest_quote (ticker TEXT PRIMARY KEY, sequence_number INTEGER,
  bid_price REAL, ask_price REAL, timestamp INTEGER);
CREATE TABLE IF NOT EXISTS anomalies (ticker TEXT, sequence_number INTEGER, timestamp INTEGER,
  score REAL, PRIMARY KEY (ticker, sequence_number, timestamp));
"""


@dataclass
class TickerFeatures:
    """Per-ticker rolling state for the six features (60 s window on event time)."""

    window: deque[tuple[int, float, int]] = field(default_factory=deque)
    pv: float = 0.0
    v: float = 0.0
    vols: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    prices: deque[float] = field(default_factory=lambda: deque(maxlen=20))

    def update(self, ts: int, price: float, size: int) -> list[float]:
        self.window.append((ts, price, size))
        self.pv += price * size
        self.v += size
        while self.window and self.window[0][0] < ts - 60 * NS_PER_S:
            _, p0, s0 = self.window.popleft()
            self.pv -= p0 * s0
            self.v -= s0
        self.vols.append(float(size))
        self.prices.append(price)
        vwap = self.pv / self.v if self.v > 0 else price
        mean_v = sum(self.vols) / len(self.vols)
        var_v = sum((x - mean_v) ** 2 for x in self.vols) / len(self.vols)
        z = (size - mean_v) / max(math.sqrt(var_v), 1.0)
        momentum = (price - self.prices[0]) / self.prices[0] if self.prices[0] else 0.0
        deviation = (price - vwap) / vwap if vwap else 0.0
        return [price, float(size), z, momentum, deviation, float(len(self.window))]


@dataclass
class BaselineResult:
    events: int
    trades: int
    quotes: int
    invalid: int
    seconds: float
    stored_trades: int
    stored_quotes: int
    anomalies: int
    # Mean µs per event spent in each step, to show where the time goes.
    validate_us: float  # per event
    score_us: float  # per trade (quotes are not scored)
    write_us: float  # per event

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _events(rec: Recording) -> list[dict[str, Any]]:
    return [ev for frame in rec.frames for ev in orjson.loads(frame)]


def _fit(rec: Recording) -> Any:
    from sklearn.ensemble import IsolationForest

    feats: dict[str, TickerFeatures] = {}
    rows: list[list[float]] = []
    for ev in _events(rec):
        if ev.get("ev") != "T":
            continue
        st = feats.setdefault(ev["sym"], TickerFeatures())
        rows.append(st.update(ev["t"] * NS_PER_MS, ev["p"], ev["s"]))
        if len(rows) >= WARMUP_TRADES:
            break
    model = IsolationForest(n_estimators=100, contamination=0.01, random_state=0)
    model.fit(np.asarray(rows))
    return model


def run_baseline(
    rec: Recording, db_path: Path, *, max_s: float, warmup: Recording | None = None
) -> BaselineResult:
    """Process `rec` frame by frame, event by event, until done or `max_s` elapsed."""
    model = _fit(warmup or rec)
    threshold = ANOMALY_THRESHOLD
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.executescript(_SCHEMA)
    feats: dict[str, TickerFeatures] = {}
    n = trades = quotes = invalid = anomalies = 0
    t_val = t_score = t_write = 0.0
    perf = time.perf_counter
    start = perf()
    deadline = start + max_s
    try:
        for frame in rec.frames:
            if perf() > deadline:
                break
            recv_ns = time.time_ns()
            for raw in orjson.loads(frame):
                t0 = perf()
                try:
                    msg: PolygonTrade | PolygonQuote = (
                        PolygonTrade.model_validate(raw)
                        if raw.get("ev") == "T"
                        else PolygonQuote.model_validate(raw)
                    )
                except ValidationError:
                    invalid += 1
                    n += 1
                    t_val += perf() - t0
                    continue
                t1 = perf()
                t_val += t1 - t0
                ts = msg.t * NS_PER_MS
                day = trading_day(ts)
                if isinstance(msg, PolygonTrade):
                    st = feats.setdefault(msg.sym, TickerFeatures())
                    x = np.asarray([st.update(ts, msg.p, msg.s)])
                    score = float(model.score_samples(x)[0])
                    t2 = perf()
                    t_score += t2 - t1
                    conn.execute("BEGIN")
                    conn.execute(
                        "INSERT INTO trades VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                        (
                            msg.sym,
                            day,
                            msg.q,
                            msg.p,
                            msg.s,
                            ts,
                            recv_ns,
                            msg.x,
                            orjson.dumps(msg.c).decode(),
                            msg.i,
                            score,
                        ),
                    )
                    conn.execute(
                        "INSERT INTO latest_trade VALUES (?,?,?,?,?) ON CONFLICT(ticker) DO "
                        "UPDATE SET sequence_number=excluded.sequence_number, "
                        "price=excluded.price, size=excluded.size, timestamp=excluded.timestamp "
                        "WHERE excluded.sequence_number > latest_trade.sequence_number",
                        (msg.sym, msg.q, msg.p, msg.s, ts),
                    )
                    if score < threshold:
                        anomalies += 1
                        conn.execute(
                            "INSERT INTO anomalies VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                            (msg.sym, msg.q, ts, score),
                        )
                    conn.execute("COMMIT")
                    t_write += perf() - t2
                    trades += 1
                else:
                    conn.execute("BEGIN")
                    conn.execute(
                        "INSERT INTO quotes VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                        (msg.sym, day, msg.q, msg.bp, msg.bs, msg.ap, msg.as_, ts, recv_ns),
                    )
                    conn.execute(
                        "INSERT INTO latest_quote VALUES (?,?,?,?,?) ON CONFLICT(ticker) DO "
                        "UPDATE SET sequence_number=excluded.sequence_number, "
                        "bid_price=excluded.bid_price, ask_price=excluded.ask_price, "
                        "timestamp=excluded.timestamp "
                        "WHERE excluded.sequence_number > latest_quote.sequence_number",
                        (msg.sym, msg.q, msg.bp, msg.ap, ts),
                    )
                    conn.execute("COMMIT")
                    t_write += perf() - t1
                    quotes += 1
                n += 1
        seconds = perf() - start
        stored_trades = int(conn.execute("SELECT count(*) FROM trades").fetchone()[0])
        stored_quotes = int(conn.execute("SELECT count(*) FROM quotes").fetchone()[0])
    finally:
        conn.close()
    per = 1e6 / max(n, 1)
    return BaselineResult(
        events=n,
        trades=trades,
        quotes=quotes,
        invalid=invalid,
        seconds=seconds,
        stored_trades=stored_trades,
        stored_quotes=stored_quotes,
        anomalies=anomalies,
        validate_us=round(t_val * per, 2),
        score_us=round(t_score * 1e6 / max(trades, 1), 2),
        write_us=round(t_write * per, 2),
    )
