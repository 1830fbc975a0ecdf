"""Scenario 7: secrets never appear in logs, errors, /health or /metrics (and a refused key
stops the run at once).

tests/unit/test_config.py checks configuration errors and tests/unit/test_api_endpoints.py
every API response of an app over an in-memory reader. This runs the real processes with
distinctive fake keys — a live run against a simulator that demands the Polygon key, polling
a fake Finnhub that fails (5xx, 401, malformed), with the API up — and a run refused for a
wrong key and a REST backfill refused, then greps everything they wrote: stdout, stderr,
every API response and header, `tradepulse config`, and every file in the data dir.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest
from fakes import FakeFinnhub, Reply, article
from fault_harness import Proc, base_env

from tradepulse.sim import MarketSimulator, SimConfig

POLYGON = "pk-SECRET-7f3a9c1e55"
FINNHUB = "fh-SECRET-0b8d2e4a91"
AWS = "aws-SECRET-c6e1f70d3b"
SECRETS = (POLYGON, FINNHUB, AWS)
TICKERS = "AAPL,MSFT"

pytestmark = pytest.mark.timeout(150)


def _finnhub(n: int, ticker: str) -> Reply:
    faults = [Reply(500, b"internal"), Reply(401, b'{"error": "Invalid API key"}'),
              Reply(body=b"<html>oops</html>")]  # fmt: skip
    if n < len(faults):
        return faults[n]
    return Reply(body=orjson.dumps([article(ticker, 1, int(time.time()) - 5)]))


def _leaks(text: str | bytes, where: str) -> list[str]:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [f"{where}: {s}" for s in SECRETS if s.encode() in blob]


async def _wait(proc: Proc, timeout_s: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout_s)


async def test_no_output_anywhere_carries_a_secret(tmp_path: Path, port: int) -> None:
    data = tmp_path / "data"
    leaks: list[str] = []
    sim = MarketSimulator(SimConfig(tickers=TICKERS.split(","), rate=400, api_key=POLYGON))
    await sim.start()
    try:
        with FakeFinnhub(_finnhub) as fake:
            env = base_env(
                tmp_path,
                POLYGON_API_KEY=POLYGON,
                FINNHUB_API_KEY=FINNHUB,
                AWS_SECRET_ACCESS_KEY=AWS,
                AWS_ACCESS_KEY_ID="AKIATESTONLY",
                TRADEPULSE_POLYGON_WS_URL=sim.ws_url,
                TRADEPULSE_POLYGON_REST_URL=sim.http_url,
                TRADEPULSE_FINNHUB_URL=fake.url,
                TRADEPULSE_NEWS_POLL_S="1",
                TRADEPULSE_TICKERS=TICKERS,
                TRADEPULSE_LOG_LEVEL="DEBUG",
                TRADEPULSE_COLD_FLUSH_S="2",
                TRADEPULSE_RATE_LIMIT_PER_MIN="1000",
            )
            run = Proc(["run", "--data-dir", str(data), "--port", str(port)], env, tmp_path, "run")
            # Alongside it: a refused Polygon key, a refused REST key and the configuration
            # printout. Errors must not echo what was sent.
            wrong = base_env(tmp_path, POLYGON_API_KEY=POLYGON + "-wrong",
                             TRADEPULSE_POLYGON_WS_URL=sim.ws_url,
                             TRADEPULSE_POLYGON_REST_URL=sim.http_url, TRADEPULSE_WARMUP_S="0",
                             TRADEPULSE_TICKERS=TICKERS)  # fmt: skip
            refused = Proc(["run", "--data-dir", str(tmp_path / "d2"), "--no-api", "--duration",
                            "600"], wrong, tmp_path, "refused")  # fmt: skip
            backfill = Proc(["backfill", "--ticker", "AAPL", "--from", "2026-01-02", "--to",
                             "2026-01-03", "--url", sim.http_url, "--data-dir",
                             str(tmp_path / "d3")], wrong, tmp_path, "backfill")  # fmt: skip
            config = Proc(["config"], env, tmp_path, "config")
            base = f"http://127.0.0.1:{port}"
            responses: list[httpx.Response] = []
            async with httpx.AsyncClient(timeout=5) as client:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    assert run.alive(), run.stderr
                    try:
                        r = await client.get(f"{base}/quotes/AAPL")
                        if r.status_code == 200 and len(fake.requests) >= 4:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.3)
                for path in ("/health", "/metrics", "/openapi.json", "/docs", "/",
                             "/quotes/AAPL", "/features/AAPL", "/aggregations/MSFT",
                             "/anomalies/AAPL?hours=100", "/sentiment/AAPL", "/quotes/ZZZZ",
                             "/quotes/1BAD", "/anomalies/AAPL?hours=999"):  # fmt: skip
                    responses.append(await client.get(base + path))
            assert any(r.status_code == 200 for r in responses)
            # In a thread: the simulator on this loop must answer the run's closing handshake.
            rc = await asyncio.to_thread(run.stop)
            assert rc == 0, run.stderr
            requests = list(fake.requests)

        # Checked while the other processes finish (they ran alongside the live run).
        # A refused key ends the run at once, not after its (long) duration.
        assert await _wait(refused, 60) == 2, refused.stderr
        assert "authentication failed" in refused.stderr
        assert await _wait(backfill, 60) == 1, backfill.stderr
        assert await _wait(config, 60) == 0
    finally:
        await sim.stop()

    # The Finnhub key went in a header on every request and never into a URL.
    assert requests and all(r.headers.get("X-Finnhub-Token") == FINNHUB for r in requests)
    assert not any(FINNHUB in r.target for r in requests)
    for proc in (run, refused, backfill, config):
        leaks += _leaks(proc.stdout, f"{proc.name} stdout")
        leaks += _leaks(proc.stderr, f"{proc.name} stderr")
    for r in responses:
        headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        leaks += _leaks(r.content + headers.encode(), f"GET {r.request.url.path}")
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "hot.sqlite3" for p in files)
    for f in files:
        leaks += _leaks(f.read_bytes(), str(f.relative_to(tmp_path)))
    print(f"[fault] secrets: {len(responses)} responses, {len(files)} files and the output of "
          f"4 processes checked, {len(leaks)} leaks")  # fmt: skip
    assert not leaks, leaks
