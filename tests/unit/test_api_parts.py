"""The API's pure parts: health rules, rate-limit arithmetic, client address, broadcaster,
batch publishing, SSE framing and value conversions."""

from __future__ import annotations

import asyncio
import math

import pytest

from tradepulse.api import tables
from tradepulse.api.cache import cache_control
from tradepulse.api.convert import finite, json_object, ns_to_iso
from tradepulse.api.publish import publish_batch
from tradepulse.api.ratelimit import (
    OVERFLOW_KEY,
    FixedWindowLimiter,
    client_address,
    limit_key,
    parse_networks,
)
from tradepulse.api.routes.stream import sse, sse_events
from tradepulse.api.stream import Broadcaster
from tradepulse.events import Trade
from tradepulse.ops.health import HealthMonitor, percentile
from tradepulse.store.base import StoreBatch

pytestmark = pytest.mark.unit


# --- health ------------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    assert percentile([], 99) == 0.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([5.0], 99) == 5.0


def test_health_healthy_then_degraded_by_latency_then_lag() -> None:
    h = HealthMonitor(clock=lambda: 0.0)
    for i in range(100):
        h.record_batch(500, 0.004, 10, now=1.0 + i * 0.01)
    snap = h.snapshot(now=2.0)
    assert snap["status"] == "healthy" and snap["reasons"] == []
    assert snap["dynamo_latency_p99"] == pytest.approx(4.0)
    assert snap["events_per_s"] == pytest.approx(100 * 500 / 2.0)
    for i in range(5):
        h.record_batch(500, 0.250, 10, now=2.0 + i * 0.01)
    assert h.snapshot(now=2.1)["status"] == "degraded"
    # the slow batches age out of the 60 s window
    h.record_batch(10, 0.002, 20_000, now=70.0)
    snap = h.snapshot(now=70.0)
    assert snap["status"] == "degraded" and snap["consumer_lag"] == 20_000
    assert "consumer lag" in snap["reasons"][0]


def test_health_unhealthy_when_stalled_with_pending_events() -> None:
    h = HealthMonitor(clock=lambda: 0.0, stall_s=10.0)
    h.record_batch(100, 0.002, 0, now=1.0)
    assert h.snapshot(now=30.0)["status"] == "healthy"  # idle but nothing pending
    h.set_lag(50)
    assert h.snapshot(now=30.0)["status"] == "unhealthy"
    h.record_batch(50, 0.002, 0, now=31.0)
    assert h.snapshot(now=31.5)["status"] == "healthy"


def test_health_feed_down_degrades_then_unhealthy() -> None:
    h = HealthMonitor(clock=lambda: 0.0, stall_s=10.0)
    h.set_feed(False, now=5.0)
    assert h.snapshot(now=6.0)["status"] == "degraded"
    assert h.snapshot(now=16.0)["status"] == "unhealthy"
    h.set_feed(True, now=17.0)
    assert h.snapshot(now=17.0)["status"] == "healthy"


def test_health_ring_is_bounded() -> None:
    h = HealthMonitor(ring_size=16)
    for i in range(1000):
        h.record_batch(1, 0.001, 0, now=float(i))
    assert len(h._latencies) == 16 and len(h._counts) == 16


# --- rate limit --------------------------------------------------------------------------------


def test_fixed_window_counts_and_resets() -> None:
    now = [120.5]
    lim = FixedWindowLimiter(2, clock=lambda: now[0])
    a, b, c = lim.hit("x"), lim.hit("x"), lim.hit("x")
    assert (a.allowed, b.allowed, c.allowed) == (True, True, False)
    assert (a.remaining, b.remaining, c.remaining) == (1, 0, 0)
    assert c.reset_s == 60 and dict(c.headers())[b"retry-after"] == b"60"
    assert lim.hit("y").allowed  # per client
    now[0] = 180.0
    assert lim.hit("x").allowed


def test_client_address_only_trusts_configured_proxies() -> None:
    trusted = parse_networks(["10.0.0.0/8", "::1"])
    assert client_address("1.2.3.4", "9.9.9.9", trusted) == "1.2.3.4"
    assert client_address("1.2.3.4", "9.9.9.9", []) == "1.2.3.4"
    assert client_address("10.0.0.2", "9.9.9.9", trusted) == "9.9.9.9"
    # the client cannot prepend a fake hop: the rightmost untrusted entry wins
    assert client_address("10.0.0.2", "6.6.6.6, 9.9.9.9, 10.0.0.7", trusted) == "9.9.9.9"
    assert client_address("10.0.0.2", "garbage", trusted) == "garbage"
    assert client_address(None, None, trusted) == "unknown"


def test_limiter_memory_is_bounded_and_ipv6_grouped() -> None:
    lim = FixedWindowLimiter(5, clock=lambda: 10.0, max_clients=3)
    for i in range(10):
        lim.hit(f"10.0.0.{i}")
    assert len(lim._counts) == 4 and lim._counts[OVERFLOW_KEY] == 5  # then refused
    assert limit_key("2001:db8::1") == limit_key("2001:db8::ffff") == "2001:db8::/64"
    assert limit_key("::ffff:1.2.3.4") == "1.2.3.4" and limit_key("1.2.3.4") == "1.2.3.4"
    assert limit_key("testclient") == "testclient"


def test_cache_control_values() -> None:
    assert cache_control(0, private=False) == "no-store"
    assert cache_control(5, private=False) == "public, max-age=5"
    assert cache_control(1, private=True) == "private, max-age=1"


# --- conversions -------------------------------------------------------------------------------


def test_conversions() -> None:
    assert ns_to_iso(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert finite(math.nan) is None and finite(math.inf) is None and finite("1.5") == 1.5
    assert json_object('{"a": 1, "b": NaN}') == {"a": 1.0, "b": None}
    assert json_object("not json") == {} and json_object(None) == {}


# --- broadcaster -------------------------------------------------------------------------------


async def test_broadcaster_coalesces_latest_and_bounds_events() -> None:
    b = Broadcaster(max_events=3)
    sub = b.subscribe(["AAPL"])
    for i in range(10):
        b.publish("quote", "AAPL", {"price": i})
        b.publish("anomaly", "AAPL", {"n": i})
    b.publish("quote", "MSFT", {"price": 1})  # filtered out
    assert sub.wake.is_set()
    msgs = b.drain(sub)
    assert [m.payload["n"] for m in msgs if m.kind == "anomaly"] == [7, 8, 9]
    assert [m.payload for m in msgs if m.kind == "quote"] == [{"price": 9}]
    assert sub.dropped == 7 and not sub.wake.is_set() and b.drain(sub) == []
    b.unsubscribe(sub)
    assert b.subscribers == 0


async def test_broadcaster_wakes_from_another_thread() -> None:
    b = Broadcaster()
    sub = b.subscribe()
    await asyncio.to_thread(b.publish, "quote", "AAPL", {"price": 1.0})
    await asyncio.wait_for(sub.wake.wait(), 1.0)
    assert [m.kind for m in b.drain(sub)] == ["quote"]


async def test_publish_batch_coalesces_per_ticker() -> None:
    b = Broadcaster()
    sub = b.subscribe()
    trades = [Trade("AAPL", 10.0 + i, 100, 1_000 + i, 2_000 + i, i + 1) for i in range(5)] + [
        Trade("MSFT", 300.0, 10, 1_000, 2_000, 1)
    ]
    feats = [
        {"ticker": "AAPL", "timestamp": 1_000 + i, "vwap": 10.0 + i, "volume_zscore": math.nan}
        for i in range(5)
    ]
    anomaly = {
        "ticker": "AAPL",
        "timestamp": 1_003,
        "sequence_number": 4,
        "anomaly_score": -0.7,
        "threshold": -0.5,
        "features": '{"price": 13.0}',
        "model_version": "1",
        "kind": "isolation_forest",
    }
    batch = StoreBatch(trades=trades, derived={tables.FEATURES: feats, tables.ANOMALIES: [anomaly]})
    assert publish_batch(b, batch) == 4
    msgs = {(m.kind, m.ticker): m.payload for m in b.drain(sub)}
    assert msgs[("quote", "AAPL")]["price"] == 14.0
    assert msgs[("quote", "MSFT")]["sequence_number"] == 1
    assert msgs[("features", "AAPL")]["vwap"] == 14.0
    assert msgs[("features", "AAPL")]["volume_zscore"] is None
    assert msgs[("anomaly", "AAPL")]["features"] == {"price": 13.0}


async def test_sse_events_frames_and_unsubscribes() -> None:
    b = Broadcaster()
    sub = b.subscribe()
    calls = [0]

    async def disconnected() -> bool:
        calls[0] += 1
        return calls[0] > 2

    b.publish("quote", "AAPL", {"ticker": "AAPL", "price": 1.5})
    frames = [
        f
        async for f in sse_events(
            b, sub, HealthMonitor(), disconnected, tickers=["AAPL"], health_every_s=0.05
        )
    ]
    text = b"".join(frames).decode()
    assert text.startswith('retry: 2000\n\nevent: hello\ndata: {"tickers":["AAPL"]}\n\n')
    assert "event: health\n" in text
    assert 'event: quote\ndata: {"ticker":"AAPL","price":1.5}\n\n' in text
    assert b.subscribers == 0
    assert sse("x", {"v": math.nan}) == b'event: x\ndata: {"v":null}\n\n'
