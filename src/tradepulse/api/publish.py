"""Turn one written batch into coalesced push messages (called by the pipeline per batch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tradepulse.api import tables
from tradepulse.api.convert import finite, ns_to_iso
from tradepulse.api.service import anomaly_from_row, article_from_row
from tradepulse.api.stream import Broadcaster
from tradepulse.events import Trade
from tradepulse.store.base import StoreBatch

FEATURE_FIELDS = (
    "price",
    "size",
    "vwap",
    "vwap_1m",
    "vwap_5m",
    "volume_zscore",
    "price_momentum",
    "vwap_deviation",
    "trade_frequency",
)


def _newest_trades(trades: Sequence[Trade]) -> dict[str, Trade]:
    out: dict[str, Trade] = {}
    for t in trades:
        prev = out.get(t.ticker)
        if prev is None or (t.timestamp, t.sequence_number) >= (
            prev.timestamp,
            prev.sequence_number,
        ):
            out[t.ticker] = t
    return out


def _newest_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        prev = out.get(row["ticker"])
        if prev is None or row["timestamp"] >= prev["timestamp"]:
            out[row["ticker"]] = row
    return out


def publish_batch(broadcaster: Broadcaster, batch: StoreBatch) -> int:
    """Per ticker the newest trade (kind "quote") and feature row ("features"), plus every
    anomaly ("anomaly") and scored article ("news"). Returns the messages published."""
    n = 0
    for ticker, trade in _newest_trades(batch.trades).items():
        broadcaster.publish(
            "quote",
            ticker,
            {
                "ticker": ticker,
                "price": trade.price,
                "size": trade.size,
                "timestamp": ns_to_iso(trade.timestamp),
                "timestamp_ns": trade.timestamp,
                "sequence_number": trade.sequence_number,
            },
        )
        n += 1
    derived = batch.derived
    for ticker, row in _newest_rows(derived.get(tables.FEATURES, ())).items():
        payload: dict[str, Any] = {k: finite(row.get(k)) for k in FEATURE_FIELDS}
        payload.update(
            ticker=ticker,
            timestamp_ns=int(row["timestamp"]),
            warming_up=bool(row.get("warming_up")),
        )
        broadcaster.publish("features", ticker, payload)
        n += 1
    for row in derived.get(tables.ANOMALIES, ()):
        ticker = str(row["ticker"])
        broadcaster.publish(
            "anomaly", ticker, {"ticker": ticker, **anomaly_from_row(row).model_dump()}
        )
        n += 1
    for row in derived.get(tables.SENTIMENT, ()):
        ticker = str(row["ticker"])
        broadcaster.publish(
            "news", ticker, {"ticker": ticker, **article_from_row(row).model_dump()}
        )
        n += 1
    return n
