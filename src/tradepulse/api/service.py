"""What each endpoint returns, built from hot-store rows (and the cold store past 48 h).

Routes stay thin: they parse input, then call one function here. The row → model mappings
are pure functions so they are tested without a store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from tradepulse.api import tables
from tradepulse.api.convert import as_int, finite, json_object, ns_to_iso
from tradepulse.api.deps import ApiContext
from tradepulse.api.errors import not_found
from tradepulse.api.models import (
    Aggregations,
    Anomalies,
    Anomaly,
    Article,
    Features,
    FeatureVector,
    Quote,
    Sentiment,
)

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
STRENGTHS = ("strong", "moderate", "weak", "none")
MAX_ROWS = 1000

QUOTE_TTL_S = 1.0
AGGREGATIONS_TTL_S = 5.0
FEATURES_TTL_S = 1.0


def quote_from_rows(ticker: str, trade: Row, quote: Row | None) -> Quote:
    """Latest trade plus, when known, the NBBO; `volume` is the session volume when the store
    keeps it, else the trade's own size."""
    size = as_int(trade.get("size"))
    volume = as_int(trade.get("volume"))
    q = quote or {}
    ts = int(trade["timestamp"])
    return Quote(
        ticker=ticker,
        price=finite(trade.get("price")) or 0.0,
        volume=volume if volume is not None else (size or 0),
        size=size,
        timestamp=ns_to_iso(ts),
        timestamp_ns=ts,
        sequence_number=int(trade["sequence_number"]),
        bid=finite(q.get("bid_price")),
        ask=finite(q.get("ask_price")),
        bid_size=as_int(q.get("bid_size")),
        ask_size=as_int(q.get("ask_size")),
    )


def window_descriptions(volume_window_s: float, baseline_windows: int) -> dict[str, str]:
    return {
        "vwap": "trading session so far (Σ price·size / Σ size)",
        "vwap_1m": "last 60 s of event time",
        "vwap_5m": "last 300 s of event time",
        "avg_price_1m": "last 60 s of event time",
        "avg_price_5m": "last 300 s of event time",
        "avg_price_15m": "last 900 s of event time",
        "volume_zscore": (
            f"volume of the current {volume_window_s:g} s bucket vs the previous "
            f"{baseline_windows} buckets"
        ),
        "price_momentum": "relative price change over the momentum window of the features stage",
    }


def aggregations_from_row(ticker: str, row: Row, windows: dict[str, str]) -> Aggregations:
    ts = int(row["timestamp"])
    return Aggregations(
        ticker=ticker,
        timestamp=ns_to_iso(ts),
        timestamp_ns=ts,
        sequence_number=as_int(row.get("sequence_number")),
        vwap=finite(row.get("vwap")),
        vwap_1m=finite(row.get("vwap_1m")),
        vwap_5m=finite(row.get("vwap_5m")),
        avg_price_1m=finite(row.get("avg_price_1m")),
        avg_price_5m=finite(row.get("avg_price_5m")),
        avg_price_15m=finite(row.get("avg_price_15m")),
        volume_zscore=finite(row.get("volume_zscore")),
        price_momentum=finite(row.get("price_momentum")),
        warming_up=bool(row.get("warming_up")),
        windows=windows,
    )


def features_from_row(ticker: str, row: Row) -> Features:
    ts = int(row["timestamp"])
    return Features(
        ticker=ticker,
        timestamp=ns_to_iso(ts),
        timestamp_ns=ts,
        sequence_number=as_int(row.get("sequence_number")),
        warming_up=bool(row.get("warming_up")),
        features=FeatureVector(
            price=finite(row.get("price")),
            volume=finite(row.get("size")),
            volume_zscore=finite(row.get("volume_zscore")),
            price_momentum=finite(row.get("price_momentum")),
            vwap_deviation=finite(row.get("vwap_deviation")),
            trade_frequency=finite(row.get("trade_frequency")),
        ),
        anomaly_score=finite(row.get("anomaly_score")),
    )


def anomaly_from_row(row: Row) -> Anomaly:
    ts = int(row["timestamp"])
    version = row.get("model_version")
    return Anomaly(
        timestamp=ns_to_iso(ts),
        timestamp_ns=ts,
        sequence_number=as_int(row.get("sequence_number")),
        anomaly_score=finite(row.get("anomaly_score")),
        threshold=finite(row.get("threshold")),
        type=str(row.get("kind") or "isolation_forest"),
        model_version=None if version is None else str(version),
        features=json_object(row.get("features")),
    )


def article_from_row(row: Row) -> Article:
    published = int(row["published_at"])
    strength = str(row.get("correlation_strength") or "none")
    return Article(
        article_id=str(row["article_id"]),
        headline=str(row.get("headline") or ""),
        source=None if row.get("source") is None else str(row["source"]),
        url=None if row.get("url") is None else str(row["url"]),
        published_at=ns_to_iso(published),
        published_at_ns=published,
        sentiment=finite(row.get("sentiment")),
        label=None if row.get("label") is None else str(row["label"]),
        correlation_strength=strength if strength in STRENGTHS else "none",  # type: ignore[arg-type]
        max_zscore=finite(row.get("max_zscore")),
        zscore_offset_s=finite(row.get("zscore_offset_s")),
    )


def history_sql(table: str, ticker: str, time_column: str, since_ns: int, limit: int) -> str:
    """SQL for rows of `table` newer than `since_ns`, newest first, over hot + cold.

    `ticker` has passed TICKER_RE (letters, digits, '.', '-'), so it cannot close the quote;
    the replace is a second guard. `table`/`time_column` come from our own constants.
    """
    safe = ticker.replace("'", "''")
    return (
        f"SELECT * FROM {table} WHERE ticker = '{safe}' AND {time_column} >= {int(since_ns)} "
        f"ORDER BY {time_column} DESC LIMIT {int(limit)}"
    )


def _history(
    ctx: ApiContext, table: str, time_column: str, ticker: str, hours: int, limit: int
) -> tuple[list[dict[str, Any]], str]:
    since_ns = time.time_ns() - hours * 3600 * 1_000_000_000
    if hours > ctx.settings.hot_retention_h and ctx.query is not None:
        sql = history_sql(table, ticker, time_column, since_ns, limit)
        try:
            return [dict(r) for r in ctx.query(sql)], "hot+cold"
        except Exception as exc:
            # The cold store being unreadable must not hide the hot data; "source" says so.
            log.warning("cold query for %s failed (%s); serving the hot window", table, exc)
    return ctx.reader.rows_since(table, ticker, since_ns, limit), "hot"


def get_quote(ctx: ApiContext, ticker: str) -> Quote:
    def compute() -> Quote | None:
        trade = ctx.reader.latest_trade(ticker)
        if trade is None:
            return None
        return quote_from_rows(ticker, trade, ctx.reader.latest_quote(ticker))

    result = ctx.cache.get_or_compute(("quote", ticker), QUOTE_TTL_S, compute)
    if result is None:
        ctx.require_known(ticker)
        raise not_found(f"no trades for {ticker} yet")
    return result


def get_aggregations(ctx: ApiContext, ticker: str) -> Aggregations:
    s = ctx.settings
    windows = window_descriptions(s.volume_window_s, s.volume_baseline_windows)

    def compute() -> Aggregations | None:
        row = ctx.reader.latest_row(tables.FEATURES, ticker)
        return None if row is None else aggregations_from_row(ticker, row, windows)

    result = ctx.cache.get_or_compute(("aggregations", ticker), AGGREGATIONS_TTL_S, compute)
    if result is None:
        ctx.require_known(ticker)
        raise not_found(f"no aggregations for {ticker} yet")
    return result


def get_features(ctx: ApiContext, ticker: str) -> Features:
    def compute() -> Features | None:
        row = ctx.reader.latest_row(tables.FEATURES, ticker)
        return None if row is None else features_from_row(ticker, row)

    result = ctx.cache.get_or_compute(("features", ticker), FEATURES_TTL_S, compute)
    if result is None:
        ctx.require_known(ticker)
        raise not_found(f"no features for {ticker} yet")
    return result


def get_anomalies(ctx: ApiContext, ticker: str, hours: int, limit: int) -> Anomalies:
    ctx.require_known(ticker)
    rows, source = _history(ctx, tables.ANOMALIES, "timestamp", ticker, hours, limit)
    items = sorted((anomaly_from_row(r) for r in rows), key=lambda a: a.timestamp_ns, reverse=True)
    return Anomalies(ticker=ticker, hours=hours, source=source, count=len(items), anomalies=items)  # type: ignore[arg-type]


def get_sentiment(ctx: ApiContext, ticker: str, hours: int, limit: int) -> Sentiment:
    ctx.require_known(ticker)
    rows, source = _history(ctx, tables.SENTIMENT, "published_at", ticker, hours, limit)
    items = sorted(
        (article_from_row(r) for r in rows), key=lambda a: a.published_at_ns, reverse=True
    )
    return Sentiment(ticker=ticker, hours=hours, source=source, count=len(items), articles=items)  # type: ignore[arg-type]
