"""Prometheus metrics, one registry for the process.

Stages update these per batch (`inc(n)`), never per event, so the hot path stays cheap.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

EVENTS = Counter(
    "tradepulse_events_total",
    "Events seen per pipeline stage and kind",
    [
        "stage",
        "kind",
    ],  # stage: received|valid|dead_letter|stored|duplicate ; kind: trade|quote|news
    registry=REGISTRY,
)
DLQ = Counter(
    "tradepulse_dead_letters_total",
    "Events sent to the dead-letter queue",
    ["reason"],
    registry=REGISTRY,
)
LAG = Gauge(
    "tradepulse_consumer_lag",
    "Events received but not yet stored (or Kafka consumer lag)",
    registry=REGISTRY,
)
E2E_LATENCY = Histogram(
    "tradepulse_e2e_latency_seconds",
    "WebSocket receive to hot-store write confirmed",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STORE_WRITE = Histogram(
    "tradepulse_store_write_seconds",
    "Hot/cold store batch write latency",
    ["store"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ANOMALIES = Counter(
    "tradepulse_anomalies_total", "Anomalies flagged", ["ticker"], registry=REGISTRY
)
SENTIMENT = Counter(
    "tradepulse_sentiment_total",
    "Articles scored and joined, by correlation strength",
    ["strength"],
    registry=REGISTRY,
)
WS_RECONNECTS = Counter(
    "tradepulse_ws_reconnects_total", "WebSocket reconnect attempts", registry=REGISTRY
)
WS_DISCONNECTED = Counter(
    "tradepulse_ws_disconnected_seconds_total",
    "Seconds the live feed was disconnected",
    registry=REGISTRY,
)
SEQUENCE_ISSUES = Counter(
    "tradepulse_sequence_issues_total",
    "Per-ticker sequence numbers seen again or going backwards",
    ["kind"],  # duplicate|out_of_order
    registry=REGISTRY,
)
BACKPRESSURE_PAUSES = Counter(
    "tradepulse_backpressure_pauses_total",
    "Times consumption paused for a slow store",
    registry=REGISTRY,
)
