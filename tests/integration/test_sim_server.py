"""The simulator over loopback: a real websockets client and the project's own REST clients."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tradepulse.config import TICKER_RE
from tradepulse.sim import MarketSimulator, SimConfig
from tradepulse.sources.finnhub import parse_company_news
from tradepulse.sources.polygon_rest import RestError, convert_results, fetch_trades

KEY = "simulator"


def valid_event(ev: Any, now_ns: int) -> bool:
    """What the pipeline's validation accepts, restated independently of it."""
    if not isinstance(ev, dict) or ev.get("ev") not in ("T", "Q"):
        return False
    sym, t = ev.get("sym"), ev.get("t")
    if not isinstance(sym, str) or not TICKER_RE.match(sym):
        return False
    if not isinstance(t, int) or abs(t * 1_000_000 - now_ns) > 86_400 * 10**9:
        return False
    keys = (("p",), ("s",)) if ev["ev"] == "T" else (("bp", "ap"), ("bs", "as"))
    for k in keys[0]:
        p = ev.get(k)
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or p <= 0:
            return False
    for k in keys[1]:
        s = ev.get(k)
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            return False
    return isinstance(ev.get("q"), int)


def config(tmp_path: Path, **kw: Any) -> SimConfig:
    base: dict[str, Any] = {
        "tickers": ["AAPL", "MSFT"],
        "rate": 3000.0,
        "profile": "flat",
        "truth_dir": tmp_path / "truth",
    }
    base.update(kw)
    return SimConfig(**base)


async def recv_json(ws: ClientConnection) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))


async def login(ws: ClientConnection, params: str = "T.*,Q.*") -> None:
    assert await recv_json(ws) == [
        {"ev": "status", "status": "connected", "message": "Connected Successfully"}
    ]
    await ws.send(orjson.dumps({"action": "auth", "params": KEY}).decode())
    assert await recv_json(ws) == [
        {"ev": "status", "status": "auth_success", "message": "authenticated"}
    ]
    await ws.send(orjson.dumps({"action": "subscribe", "params": params}).decode())


async def test_handshake_subscribe_and_trade_fields(tmp_path: Path) -> None:
    sim = MarketSimulator(config(tmp_path))
    await sim.start()
    try:
        assert sim.ws_url.startswith("ws://127.0.0.1:") and sim.ws_url.endswith("/stocks")
        await asyncio.sleep(0.2)
        assert sim.generator is None  # nothing is generated before a client subscribed
        async with connect(sim.ws_url) as ws:
            await login(ws, "T.AAPL,Q.AAPL")
            for channel in ("T.AAPL", "Q.AAPL"):
                assert await recv_json(ws) == [
                    {"ev": "status", "status": "success", "message": f"subscribed to: {channel}"}
                ]
            trades: list[dict[str, Any]] = []
            while len(trades) < 50:
                for ev in await recv_json(ws):
                    assert ev["sym"] == "AAPL"
                    if ev["ev"] == "T":
                        trades.append(ev)
            now_ms = time.time_ns() // 1_000_000
            for t in trades:
                assert {"ev", "sym", "i", "x", "p", "s", "c", "t", "q", "z"} <= t.keys()
                assert isinstance(t["i"], str) and isinstance(t["s"], int)
                assert isinstance(t["c"], list) and t["z"] in (1, 2, 3)
                assert now_ms - 5000 < t["t"] <= now_ms  # Unix ms, wall clock
            await ws.send(orjson.dumps({"action": "unsubscribe", "params": "Q.AAPL"}).decode())
    finally:
        await sim.stop()


async def test_wrong_key_gets_auth_failed_and_close(tmp_path: Path) -> None:
    sim = MarketSimulator(config(tmp_path))
    await sim.start()
    try:
        async with connect(sim.ws_url) as ws:
            await recv_json(ws)
            await ws.send(orjson.dumps({"action": "auth", "params": "wrong"}).decode())
            assert await recv_json(ws) == [
                {"ev": "status", "status": "auth_failed", "message": "authentication failed"}
            ]
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
    finally:
        await sim.stop()


async def test_count_run_matches_truth_and_rest(tmp_path: Path) -> None:
    cfg = config(tmp_path, count=6000, bad_rate=0.02, news_rate=30.0, anomaly_rate=10.0)
    sim = MarketSimulator(cfg)
    await sim.start()
    valid: Counter[tuple[str, str]] = Counter()
    bad_frames = 0
    ws_trades: dict[str, list[dict[str, Any]]] = {"AAPL": [], "MSFT": []}
    try:
        async with connect(sim.ws_url) as ws:
            await login(ws)

            async def read() -> None:
                nonlocal bad_frames
                async for raw in ws:
                    try:
                        data = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        bad_frames += 1
                        continue
                    if any(isinstance(e, dict) and e.get("ev") == "status" for e in data):
                        continue
                    good = [e for e in data if valid_event(e, time.time_ns())]
                    if len(good) != len(data):
                        assert len(data) == 1  # a malformed event travels alone
                        bad_frames += 1
                        continue
                    for e in good:
                        valid[(e["ev"], e["sym"])] += 1
                        if e["ev"] == "T":
                            ws_trades[e["sym"]].append(e)

            reader = asyncio.create_task(read())
            await asyncio.wait_for(sim.wait_finished(), 10)
            summary = orjson.loads((tmp_path / "truth" / "summary.json").read_bytes())
            async with httpx.AsyncClient() as http:
                for sym in ("AAPL", "MSFT"):
                    rows: list[dict[str, Any]] = []
                    async for page in fetch_trades(
                        http, sim.http_url, KEY, sym, 0, time.time_ns() + 10**9, limit=500
                    ):
                        rows += page
                    trades, dead = convert_results(sym, rows, time.time_ns(), "test")
                    assert not dead
                    assert len(trades) == summary["valid_trades"][sym] > 500
                    assert [(t.timestamp, t.sequence_number, t.price, t.size) for t in trades] == [
                        (e["t"] * 1_000_000, e["q"], e["p"], e["s"]) for e in ws_trades[sym]
                    ]
                news = await http.get(
                    f"{sim.http_url}/api/v1/company-news",
                    params={"symbol": "AAPL", "from": "2000-01-01", "to": "2100-01-01"},
                    headers={"X-Finnhub-Token": "x"},
                )
                assert news.status_code == 200
                parsed = parse_company_news(news.content, "AAPL", time.time_ns())
                assert not parsed.dead_letters
                assert all(n.published_at <= time.time_ns() for n in parsed.news)
                with pytest.raises(RestError):
                    async for _ in fetch_trades(http, sim.http_url, "bad", "AAPL", 0, 1):
                        pass
            await sim.stop()
            await asyncio.wait_for(reader, 5)  # the server closed the socket cleanly
    finally:
        await sim.stop()
    assert sum(valid.values()) + bad_frames == 6000
    for sym in ("AAPL", "MSFT"):
        assert valid[("T", sym)] == summary["valid_trades"][sym]
        assert valid[("Q", sym)] == summary["valid_quotes"][sym]
    assert bad_frames == summary["malformed"] > 0
    news_truth = [
        orjson.loads(x) for x in (tmp_path / "truth" / "news.jsonl").read_bytes().splitlines()
    ]
    ids = {str(n["id"]) for n in news_truth if n["ticker"] == "AAPL"}
    assert {n.article_id for n in parsed.news} <= ids


async def test_events_without_clients_are_counted_and_on_rest(tmp_path: Path) -> None:
    sim = MarketSimulator(config(tmp_path, duration_s=1.0, rate=2000.0))
    await sim.start()
    try:
        async with connect(sim.ws_url) as ws:
            await login(ws)
        await asyncio.wait_for(sim.wait_finished(), 5)
        summary = orjson.loads((tmp_path / "truth" / "summary.json").read_bytes())
        async with httpx.AsyncClient() as http:
            got = 0
            async for page in fetch_trades(http, sim.http_url, KEY, "MSFT", 0, time.time_ns()):
                got += len(page)
        assert got == summary["valid_trades"]["MSFT"] > 100
    finally:
        await sim.stop()


async def test_http_errors_and_health(tmp_path: Path) -> None:
    sim = MarketSimulator(config(tmp_path))
    await sim.start()
    try:
        async with httpx.AsyncClient(base_url=sim.http_url) as http:
            assert (await http.get("/health")).json()["status"] == "ok"
            assert (await http.get("/v3/trades/AAPL")).status_code == 401
            r = await http.get("/v3/trades/AAPL", params={"apiKey": KEY, "limit": "x"})
            assert r.status_code == 400 and r.json()["status"] == "ERROR"
            r = await http.get("/v3/trades/AAPL", headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200 and r.json()["results"] == []
            assert (
                await http.get("/api/v1/company-news", params={"symbol": "AAPL"})
            ).status_code == 401
            r = await http.get("/api/v1/company-news", params={"token": "t", "symbol": "AAPL"})
            assert r.status_code == 422
            assert (await http.get("/nowhere")).status_code == 404
    finally:
        await sim.stop()


async def test_slow_consumer_is_disconnected(tmp_path: Path) -> None:
    sim = MarketSimulator(config(tmp_path, rate=50_000.0), client_buffer_bytes=256 * 1024)
    await sim.start()
    try:
        async with connect(sim.ws_url, max_queue=1) as ws:
            await login(ws)
            await asyncio.sleep(3.0)  # not reading: TCP and then the server queue fill up
            assert sim.slow_consumers == 1
            last = None
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    last = await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert last is not None and "slow_consumer" in str(last)
    finally:
        await sim.stop()
