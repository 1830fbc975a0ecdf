"""Response models: the API's contract and the source of its OpenAPI schema.

Every time is given twice: ISO-8601 UTC (``timestamp``) and raw Unix nanoseconds
(``timestamp_ns``), so clients can display one and compute with the other exactly.
Numbers a stage could not compute yet (warm-up) are ``null``, never NaN.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Strength = Literal["strong", "moderate", "weak", "none"]


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong, in one sentence")


class Quote(BaseModel):
    ticker: str
    price: float = Field(description="Price of the latest trade")
    volume: int = Field(description="Shares traded this session up to the latest trade")
    size: int | None = Field(description="Shares in the latest trade")
    timestamp: str = Field(description="SIP time of the latest trade, ISO-8601 UTC")
    timestamp_ns: int
    sequence_number: int
    bid: float | None = None
    ask: float | None = None
    bid_size: int | None = None
    ask_size: int | None = None


class Aggregations(BaseModel):
    ticker: str
    timestamp: str = Field(description="Event time of the trade these values include, ISO UTC")
    timestamp_ns: int
    sequence_number: int | None
    vwap: float | None = Field(description="Session VWAP: Σ price·size / Σ size since the open")
    vwap_1m: float | None
    vwap_5m: float | None
    avg_price_1m: float | None
    avg_price_5m: float | None
    avg_price_15m: float | None
    volume_zscore: float | None
    price_momentum: float | None
    warming_up: bool = Field(description="True while the z-score baseline is still filling")
    windows: dict[str, str] = Field(description="The window each value covers")


class FeatureVector(BaseModel):
    price: float | None
    volume: float | None = Field(description="Size of the trade the vector was computed at")
    volume_zscore: float | None
    price_momentum: float | None
    vwap_deviation: float | None
    trade_frequency: float | None


class Features(BaseModel):
    ticker: str
    timestamp: str
    timestamp_ns: int
    sequence_number: int | None
    warming_up: bool
    features: FeatureVector
    anomaly_score: float | None = Field(
        default=None,
        description="This trade's Isolation Forest score (lower = stranger); null before the "
        "ticker's first model",
    )


class Anomaly(BaseModel):
    timestamp: str
    timestamp_ns: int
    sequence_number: int | None
    anomaly_score: float | None = Field(description="Isolation Forest score; lower = stranger")
    threshold: float | None
    type: str = Field(description="What the detector flagged (e.g. isolation_forest)")
    model_version: str | None
    features: dict[str, float | None]


class Anomalies(BaseModel):
    ticker: str
    hours: int
    source: Literal["hot", "hot+cold"] = Field(description="hot: last 48 h; hot+cold: beyond")
    count: int
    anomalies: list[Anomaly] = Field(description="Newest first")


class Article(BaseModel):
    article_id: str
    headline: str
    source: str | None
    url: str | None
    published_at: str
    published_at_ns: int
    sentiment: float | None = Field(description="VADER compound, -1..+1")
    label: str | None
    correlation_strength: Strength
    max_zscore: float | None = Field(description="Highest volume z-score within ±60 s")
    zscore_offset_s: float | None = Field(description="Seconds from publication to that z-score")


class Sentiment(BaseModel):
    ticker: str
    hours: int
    source: Literal["hot", "hot+cold"]
    count: int
    articles: list[Article] = Field(description="Newest first")


class Health(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    consumer_lag: int
    dynamo_latency_p99: float = Field(description="Hot-store write p99 over the last minute, ms")
    uptime_seconds: float
    checked_at: str
    events_per_s: float
    reasons: list[str] = Field(description="Why the status is not healthy (empty when healthy)")


def _err(description: str) -> dict[str, object]:
    return {"model": ErrorResponse, "description": description}


# Declared on every data route so the OpenAPI schema documents (and fuzzers check) the errors.
DATA_ERRORS: dict[int | str, dict[str, object]] = {
    401: _err("Missing or invalid X-API-Key (only when API keys are configured)"),
    404: _err("Unknown ticker, or no data for it yet"),
    422: _err("Malformed ticker or parameter out of range"),
    429: _err("Rate limit exceeded; see Retry-After"),
}
