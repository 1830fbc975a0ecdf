"""The records that flow between stages.

msgspec Structs because they are on the hot path (cheap to build, encode and decode).
All times are int64 nanoseconds since the Unix epoch: `timestamp` is event time (the SIP
timestamp) and `ingest_ts` is when TradePulse received the event; latency is their difference
and every window runs on event time. Field meanings follow Polygon's stocks feed.
"""

from __future__ import annotations

import msgspec


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One trade print. Identity: (ticker, trading day of `timestamp`, sequence_number)."""

    ticker: str
    price: float
    size: int
    timestamp: int  # SIP timestamp, ns
    ingest_ts: int  # receive time, ns
    sequence_number: int
    exchange: int = 0
    tape: int = 0
    conditions: tuple[int, ...] = ()
    trade_id: str = ""
    trf_id: int | None = None


class Quote(msgspec.Struct, frozen=True, gc=False):
    """One NBBO quote update. Identity: (ticker, trading day of `timestamp`, sequence_number)."""

    ticker: str
    bid_price: float
    bid_size: int
    ask_price: float
    ask_size: int
    timestamp: int
    ingest_ts: int
    sequence_number: int
    bid_exchange: int = 0
    ask_exchange: int = 0
    tape: int = 0
    conditions: tuple[int, ...] = ()


class DeadLetter(msgspec.Struct, frozen=True):
    """An input that failed validation or processing, kept with why and where it came from."""

    reason: str
    raw: str  # the offending payload, verbatim (JSON text of the single event where possible)
    source: str  # e.g. "polygon-ws", "replay:FILE", "finnhub"
    first_seen: int  # ns
    attempts: int = 1
    ticker: str | None = None


class News(msgspec.Struct, frozen=True):
    """One company-news article. Identity: (ticker, article_id)."""

    article_id: str
    ticker: str
    headline: str
    summary: str
    source: str
    url: str
    published_at: int  # ns
    ingest_ts: int  # ns


class Disconnect(msgspec.Struct, frozen=True):
    """An interval during which the live feed was not connected (to be backfilled)."""

    source: str
    started_at: int  # ns
    ended_at: int  # ns
    reason: str
