"""/stream over a real socket: uvicorn serves the app, a client reads Server-Sent Events while
another thread publishes batches the way the pipeline does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from tradepulse.api.app import create_app
from tradepulse.api.publish import publish_batch
from tradepulse.api.stream import Broadcaster
from tradepulse.config import Settings
from tradepulse.events import Trade
from tradepulse.ops.health import HealthMonitor
from tradepulse.store.base import StoreBatch

pytestmark = pytest.mark.integration


class EmptyReader:
    def latest_trade(self, ticker: str) -> dict[str, Any] | None:
        return None

    def latest_quote(self, ticker: str) -> dict[str, Any] | None:
        return None

    def known_tickers(self) -> list[str]:
        return []

    def latest_row(self, table: str, ticker: str) -> dict[str, Any] | None:
        return None

    def rows_since(
        self, table: str, ticker: str, since_ns: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def served(port: int, clean_env: None) -> Iterator[tuple[str, Broadcaster]]:
    settings = Settings(tickers=["AAPL", "MSFT"], _env_file=None)  # type: ignore[call-arg]
    broadcaster = Broadcaster()
    app = create_app(settings, EmptyReader(), HealthMonitor(), broadcaster)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}", broadcaster
    finally:
        srv.should_exit = True
        th.join(timeout=10)


def read_events(lines: Iterator[str], want: int) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, orjson.loads(line[6:])))
            if len(events) >= want:
                break
    return events


@pytest.mark.timeout(30)
def test_stream_delivers_filtered_coalesced_batches(served: tuple[str, Broadcaster]) -> None:
    base, broadcaster = served
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", f"{base}/stream?tickers=aapl") as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        assert "x-ratelimit-remaining" in r.headers
        lines = r.iter_lines()
        hello = read_events(lines, 2)
        assert hello[0] == ("hello", {"tickers": ["AAPL"]}) and hello[1][0] == "health"
        deadline = time.monotonic() + 5
        while broadcaster.subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.01)

        def publish() -> None:
            trades = [Trade("AAPL", 100.0 + i, 10, 1_000 + i, 1_000 + i, i + 1) for i in range(50)]
            trades.append(Trade("MSFT", 300.0, 10, 1_000, 1_000, 1))
            publish_batch(broadcaster, StoreBatch(trades=trades))

        threading.Thread(target=publish).start()
        quote = read_events(lines, 1)[0]
        while quote[0] == "health":
            quote = read_events(lines, 1)[0]
    # 50 AAPL trades in one batch → one coalesced quote, the newest; MSFT filtered out
    assert quote[0] == "quote" and quote[1]["ticker"] == "AAPL" and quote[1]["price"] == 149.0
    assert quote[1]["sequence_number"] == 50
    deadline = time.monotonic() + 5
    while broadcaster.subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broadcaster.subscribers == 0  # the server unsubscribed the closed client
