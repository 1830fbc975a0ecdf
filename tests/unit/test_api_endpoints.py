"""Every endpoint's success and error contract, over an in-memory HotReader.

The same contract is checked against the real SQLite hot store in
tests/integration/test_api_sqlite.py; here the reader is a plain dict so each case is exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tradepulse.api import tables
from tradepulse.api.app import create_app
from tradepulse.api.cache import TTLCache
from tradepulse.api.stream import Broadcaster
from tradepulse.config import Settings
from tradepulse.ops.health import HealthMonitor

pytestmark = pytest.mark.unit

NOW_NS = time.time_ns()
HOUR_NS = 3600 * 1_000_000_000
POLYGON_SECRET = "pk_test_SECRET_polygon_123"
FINNHUB_SECRET = "fh_test_SECRET_finnhub_456"


class MemoryReader:
    """HotReader over dicts: latest rows per ticker and time-stamped derived rows."""

    def __init__(self) -> None:
        self.trades: dict[str, dict[str, Any]] = {}
        self.quotes: dict[str, dict[str, Any]] = {}
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.time_columns = {tables.ANOMALIES: "timestamp", tables.SENTIMENT: "published_at"}
        self.reads = 0

    def latest_trade(self, ticker: str) -> dict[str, Any] | None:
        self.reads += 1
        return self.trades.get(ticker)

    def latest_quote(self, ticker: str) -> dict[str, Any] | None:
        return self.quotes.get(ticker)

    def known_tickers(self) -> list[str]:
        return sorted(self.trades)

    def latest_row(self, table: str, ticker: str) -> dict[str, Any] | None:
        return self.latest.get((table, ticker))

    def rows_since(
        self, table: str, ticker: str, since_ns: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        col = self.time_columns[table]
        rows = [r for r in self.history.get((table, ticker), []) if r[col] >= since_ns]
        return sorted(rows, key=lambda r: r[col], reverse=True)[:limit]


def seeded_reader() -> MemoryReader:
    r = MemoryReader()
    r.trades["AAPL"] = {
        "ticker": "AAPL",
        "price": 189.5,
        "size": 100,
        "volume": 123_456,
        "timestamp": NOW_NS,
        "sequence_number": 42,
    }
    r.quotes["AAPL"] = {
        "ticker": "AAPL",
        "bid_price": 189.49,
        "bid_size": 3,
        "ask_price": 189.51,
        "ask_size": 5,
        "timestamp": NOW_NS,
    }
    r.latest[(tables.FEATURES, "AAPL")] = {
        "ticker": "AAPL",
        "timestamp": NOW_NS,
        "sequence_number": 42,
        "price": 189.5,
        "size": 100,
        "vwap": 189.2,
        "vwap_1m": 189.4,
        "vwap_5m": 189.3,
        "avg_price_1m": 189.45,
        "avg_price_5m": 189.3,
        "avg_price_15m": 189.1,
        "volume_zscore": math.nan,  # warming up: must become null, not NaN
        "warming_up": 1,
        "price_momentum": 0.0012,
        "vwap_deviation": 0.0016,
        "trade_frequency": 12.5,
    }
    r.history[(tables.ANOMALIES, "AAPL")] = [
        {
            "ticker": "AAPL",
            "timestamp": NOW_NS - h * HOUR_NS,
            "sequence_number": 40 - h,
            "anomaly_score": -0.61,
            "threshold": -0.5,
            "features": orjson.dumps({"price": 189.0, "volume_zscore": 3.4}).decode(),
            "model_version": "3",
            "kind": "isolation_forest",
        }
        for h in (1, 30, 60)
    ]
    r.history[(tables.SENTIMENT, "AAPL")] = [
        {
            "ticker": "AAPL",
            "article_id": f"a{h}",
            "headline": f"Apple headline {h}",
            "source": "Reuters",
            "url": "https://example.com/a",
            "published_at": NOW_NS - h * HOUR_NS,
            "sentiment": 0.62,
            "label": "positive",
            "max_zscore": 3.3,
            "zscore_offset_s": 12.0,
            "correlation_strength": "strong",
            "processed_at": NOW_NS,
        }
        for h in (2, 5)
    ]
    return r


def make_app(reader: MemoryReader, **overrides: Any) -> FastAPI:
    base: dict[str, Any] = {
        "tickers": ["AAPL", "MSFT"],
        "polygon_api_key": POLYGON_SECRET,
        "finnhub_api_key": FINNHUB_SECRET,
    }
    settings = Settings(**{**base, **overrides})
    return create_app(settings, reader, HealthMonitor(), Broadcaster(), overrides.get("_query"))


@pytest.fixture
def reader(clean_env: None) -> MemoryReader:
    return seeded_reader()


@pytest.fixture
def client(reader: MemoryReader) -> Iterator[TestClient]:
    with TestClient(make_app(reader)) as c:
        yield c


# --- success shapes ------------------------------------------------------------------------


def test_quote_fields_types_and_case(client: TestClient) -> None:
    r = client.get("/quotes/aapl")
    assert r.status_code == 200
    body = r.json()
    assert body["ticker"] == "AAPL"
    assert body["price"] == 189.5 and body["volume"] == 123_456 and body["size"] == 100
    assert body["sequence_number"] == 42 and body["timestamp_ns"] == NOW_NS
    assert body["timestamp"].endswith("Z") and body["timestamp"][:4].isdigit()
    assert (body["bid"], body["ask"]) == (189.49, 189.51)
    assert r.headers["cache-control"] == "public, max-age=1"


def test_aggregations_have_windows_and_null_for_nan(client: TestClient) -> None:
    r = client.get("/aggregations/AAPL")
    assert r.status_code == 200
    body = r.json()
    assert body["vwap"] == 189.2 and body["price_momentum"] == 0.0012
    assert body["volume_zscore"] is None and body["warming_up"] is True
    assert set(body["windows"]) >= {"vwap", "vwap_1m", "avg_price_15m", "volume_zscore"}
    assert r.headers["cache-control"] == "public, max-age=5"


def test_features_vector_has_the_six_inputs(client: TestClient) -> None:
    r = client.get("/features/AAPL")
    assert r.status_code == 200
    vec = r.json()["features"]
    assert set(vec) == {
        "price",
        "volume",
        "volume_zscore",
        "price_momentum",
        "vwap_deviation",
        "trade_frequency",
    }
    assert vec["volume"] == 100.0 and vec["trade_frequency"] == 12.5
    assert r.headers["cache-control"] == "public, max-age=1"


def test_anomalies_newest_first_within_hours(client: TestClient) -> None:
    r = client.get("/anomalies/AAPL")
    assert r.status_code == 200
    body = r.json()
    assert body["hours"] == 24 and body["source"] == "hot" and body["count"] == 1
    a = body["anomalies"][0]
    assert a["type"] == "isolation_forest" and a["anomaly_score"] == -0.61
    assert a["features"] == {"price": 189.0, "volume_zscore": 3.4}
    assert r.headers["cache-control"] == "no-store"
    hot = client.get("/anomalies/AAPL?hours=48").json()["anomalies"]
    assert [x["sequence_number"] for x in hot] == [39, 10]


def test_anomalies_beyond_hot_window_go_through_query(reader: MemoryReader) -> None:
    seen: list[str] = []

    def query(sql: str) -> list[dict[str, Any]]:
        seen.append(sql)
        return reader.rows_since(tables.ANOMALIES, "AAPL", 0)

    with TestClient(make_app(reader, _query=query)) as c:
        body = c.get("/anomalies/AAPL?hours=72").json()
    assert body["source"] == "hot+cold" and body["count"] == 3
    assert "ticker = 'AAPL'" in seen[0] and "ORDER BY timestamp DESC" in seen[0]
    stamps = [a["timestamp_ns"] for a in body["anomalies"]]
    assert stamps == sorted(stamps, reverse=True)


def test_failing_cold_query_falls_back_to_the_hot_window(reader: MemoryReader) -> None:
    def query(sql: str) -> list[dict[str, Any]]:
        raise OSError("parquet unreadable")

    with TestClient(make_app(reader, _query=query)) as c:
        r = c.get("/sentiment/AAPL?hours=100")
    assert r.status_code == 200 and r.json()["source"] == "hot" and r.json()["count"] == 2


def test_sentiment_articles(client: TestClient) -> None:
    r = client.get("/sentiment/Aapl?hours=3")
    assert r.status_code == 200
    body = r.json()
    assert body["ticker"] == "AAPL" and body["count"] == 1
    art = body["articles"][0]
    assert art["correlation_strength"] == "strong" and art["max_zscore"] == 3.3
    assert art["zscore_offset_s"] == 12.0 and art["published_at"].endswith("Z")
    assert r.headers["cache-control"] == "no-store"


def test_configured_ticker_without_data(client: TestClient) -> None:
    assert client.get("/anomalies/MSFT").json()["anomalies"] == []
    r = client.get("/quotes/MSFT")
    assert r.status_code == 404 and "no trades for MSFT" in r.json()["detail"]


def test_health_and_metrics(client: TestClient) -> None:
    h = client.get("/health")
    assert h.status_code == 200
    body = h.json()
    assert body["status"] in {"healthy", "degraded", "unhealthy"}
    for field in ("consumer_lag", "dynamo_latency_p99", "uptime_seconds", "checked_at"):
        assert field in body
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert "tradepulse_events_total" in m.text


def test_dashboard_docs_and_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "lightweight-charts" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/quotes/{ticker}", "/anomalies/{ticker}", "/health", "/stream"} <= set(paths)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/quotes/ZZZZ", "/aggregations/ZZZZ", "/features/zzzz", "/anomalies/ZZZZ", "/sentiment/ZZZZ"],
)
def test_unknown_ticker_is_404_json(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.json() == {"detail": "unknown ticker ZZZZ"}
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "path",
    [
        "/quotes/1ABC",
        "/quotes/TOOLONGTICKER",
        "/features/A$B",
        "/anomalies/AAPL?hours=0",
        "/anomalies/AAPL?hours=169",
        "/anomalies/AAPL?hours=abc",
        "/sentiment/AAPL?hours=-1",
        "/sentiment/AAPL?hours=1e3",
        "/stream?tickers=AAPL,%24%24",
    ],
)
def test_bad_input_is_422_json(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail


# --- caching ---------------------------------------------------------------------------------


def test_server_side_cache_serves_within_ttl(reader: MemoryReader) -> None:
    now = [100.0]
    app = make_app(reader)
    app.state.ctx.cache = TTLCache(clock=lambda: now[0])
    with TestClient(app) as c:
        first = c.get("/quotes/AAPL").json()
        reader.trades["AAPL"] = {**reader.trades["AAPL"], "price": 200.0, "sequence_number": 43}
        assert c.get("/quotes/AAPL").json() == first
        now[0] += 1.01
        assert c.get("/quotes/AAPL").json()["price"] == 200.0


# --- rate limit ------------------------------------------------------------------------------


def test_rate_limit_429_with_headers(reader: MemoryReader) -> None:
    with TestClient(make_app(reader, rate_limit_per_min=3)) as c:
        ok = [c.get("/quotes/AAPL") for _ in range(3)]
        assert [r.headers["x-ratelimit-remaining"] for r in ok] == ["2", "1", "0"]
        assert all(r.headers["x-ratelimit-limit"] == "3" for r in ok)
        refused = c.get("/features/AAPL")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert "x-ratelimit-reset" in refused.headers and "detail" in refused.json()
        # health, metrics and the dashboard stay reachable
        assert c.get("/health").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/").status_code == 200


def test_errors_count_against_the_limit_too(reader: MemoryReader) -> None:
    with TestClient(make_app(reader, rate_limit_per_min=2)) as c:
        assert c.get("/quotes/ZZZZ").headers["x-ratelimit-remaining"] == "1"
        assert c.get("/quotes/1BAD").headers["x-ratelimit-remaining"] == "0"
        assert c.get("/quotes/AAPL").status_code == 429


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxy(reader: MemoryReader) -> None:
    with TestClient(make_app(reader, rate_limit_per_min=2), client=("203.0.113.9", 5000)) as c:
        codes = [
            c.get("/quotes/AAPL", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(4)
        ]
    assert codes == [200, 200, 429, 429]


def test_forwarded_for_is_honoured_behind_a_trusted_proxy(reader: MemoryReader) -> None:
    app = make_app(reader, rate_limit_per_min=1, trusted_proxies=["10.0.0.0/8"])
    with TestClient(app, client=("10.1.2.3", 5000)) as c:
        a = c.get("/quotes/AAPL", headers={"X-Forwarded-For": "198.51.100.1"})
        b = c.get("/quotes/AAPL", headers={"X-Forwarded-For": "198.51.100.2, 10.9.9.9"})
        again = c.get("/quotes/AAPL", headers={"X-Forwarded-For": "198.51.100.1"})
    assert (a.status_code, b.status_code, again.status_code) == (200, 200, 429)


# --- API keys, CORS, secrets -----------------------------------------------------------------


def test_api_keys_off_by_default_and_enforced_when_set(reader: MemoryReader) -> None:
    with TestClient(make_app(reader, api_keys=["k1", "k2"])) as c:
        missing = c.get("/quotes/AAPL")
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert c.get("/quotes/AAPL", headers={"X-API-Key": "nope"}).status_code == 401
        ok = c.get("/quotes/AAPL", headers={"X-API-Key": "k2"})
        assert ok.status_code == 200 and ok.headers["cache-control"] == "private, max-age=1"
        assert c.get("/stream").status_code == 401
        # the page, its assets, health and metrics load without a key
        for path in ("/", "/static/app.css", "/health", "/metrics"):
            assert c.get(path).status_code == 200


def test_cors_closed_by_default_and_open_to_configured_origins(reader: MemoryReader) -> None:
    origin = {"Origin": "https://evil.example"}
    with TestClient(make_app(reader)) as c:
        assert "access-control-allow-origin" not in c.get("/quotes/AAPL", headers=origin).headers
    allowed = {"Origin": "https://ok.example"}
    with TestClient(make_app(reader, cors_origins=["https://ok.example"])) as c:
        r = c.get("/quotes/AAPL", headers=allowed)
        assert r.headers["access-control-allow-origin"] == "https://ok.example"
        assert "access-control-allow-origin" not in c.get("/quotes/AAPL", headers=origin).headers


def test_cors_wraps_rate_limited_responses(reader: MemoryReader) -> None:
    allowed = {"Origin": "https://ok.example"}
    app = make_app(reader, cors_origins=["https://ok.example"], rate_limit_per_min=1)
    with TestClient(app) as c:
        preflight = {**allowed, "Access-Control-Request-Method": "GET"}
        assert c.options("/quotes/AAPL", headers=preflight).status_code == 200
        assert c.get("/quotes/AAPL", headers=allowed).status_code == 200  # preflight was free
        refused = c.get("/quotes/AAPL", headers=allowed)
        assert refused.status_code == 429
        assert refused.headers["access-control-allow-origin"] == "https://ok.example"


def test_secrets_never_appear_in_any_response(reader: MemoryReader) -> None:
    with TestClient(make_app(reader, api_keys=["user-key"])) as c:
        key = {"X-API-Key": "user-key"}
        responses = [
            c.get(p, headers=key)
            for p in (
                "/",
                "/health",
                "/metrics",
                "/openapi.json",
                "/docs",
                "/quotes/AAPL",
                "/aggregations/AAPL",
                "/features/AAPL",
                "/anomalies/AAPL?hours=100",
                "/sentiment/AAPL",
                "/quotes/ZZZZ",
                "/quotes/1BAD",
                "/anomalies/AAPL?hours=999",
            )
        ]
        responses.append(c.get("/quotes/AAPL"))  # 401 without the key
    for r in responses:
        blob = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        for secret in (POLYGON_SECRET, FINNHUB_SECRET, "user-key"):
            assert secret not in blob, (r.url, secret)


def test_store_failure_is_a_plain_500_without_details(
    reader: MemoryReader, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(ticker: str) -> None:
        raise RuntimeError(f"db at /secret/path with {POLYGON_SECRET}")

    reader.latest_trade = broken  # type: ignore[method-assign, assignment]
    with TestClient(make_app(reader), raise_server_exceptions=False) as c:
        r = c.get("/quotes/AAPL")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert POLYGON_SECRET not in r.text
    assert "RuntimeError" in caplog.text and "<redacted>" in caplog.text
    assert POLYGON_SECRET not in caplog.text
