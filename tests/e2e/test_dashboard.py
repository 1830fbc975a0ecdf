"""The dashboard in headless Chromium: it loads, the chart receives live points from /stream,
another ticker can be selected, and a screenshot is saved.

The app is served by uvicorn in a thread over a hot-store reader fed by a background thread
that also publishes each batch the way the pipeline does (`publish_batch`). Debian's chromium
is driven by Playwright through its executable path; no browser is ever downloaded. Without
/usr/bin/chromium the test is skipped locally and fails in CI (env CI set).
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn

from browser import CHROMIUM, CHROMIUM_ARGS, chromium_missing
from tradepulse.api import tables
from tradepulse.api.app import create_app
from tradepulse.api.publish import publish_batch
from tradepulse.api.stream import Broadcaster
from tradepulse.config import Settings
from tradepulse.events import Trade
from tradepulse.ops.health import HealthMonitor
from tradepulse.store.base import StoreBatch

TICKERS = ["AAPL", "MSFT", "NVDA"]

if chromium_missing():
    pytest.skip(f"{CHROMIUM} not installed (required in CI)", allow_module_level=True)


class FeedReader:
    """A hot-store reader whose rows a feeder thread updates (thread-safe by a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.trades: dict[str, dict[str, Any]] = {}
        self.features: dict[str, dict[str, Any]] = {}
        self.anomalies: dict[str, list[dict[str, Any]]] = {t: [] for t in TICKERS}

    def latest_trade(self, ticker: str) -> dict[str, Any] | None:
        with self.lock:
            return self.trades.get(ticker)

    def latest_quote(self, ticker: str) -> dict[str, Any] | None:
        return None

    def known_tickers(self) -> list[str]:
        with self.lock:
            return sorted(self.trades)

    def latest_row(self, table: str, ticker: str) -> dict[str, Any] | None:
        with self.lock:
            return self.features.get(ticker) if table == tables.FEATURES else None

    def rows_since(
        self, table: str, ticker: str, since_ns: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        if table != tables.ANOMALIES:
            return []
        with self.lock:
            rows = [r for r in self.anomalies.get(ticker, []) if r["timestamp"] >= since_ns]
        return sorted(rows, key=lambda r: r["timestamp"], reverse=True)[:limit]


def feed(
    reader: FeedReader, broadcaster: Broadcaster, health: HealthMonitor, stop: threading.Event
) -> None:
    """Write a batch every 250 ms: a random-walk trade per ticker, its features, sometimes an
    anomaly; then publish it like the pipeline does."""
    rng = random.Random(7)
    price = {t: 100.0 + 50 * i for i, t in enumerate(TICKERS)}
    seq = dict.fromkeys(TICKERS, 0)
    vol = dict.fromkeys(TICKERS, 0)
    while not stop.is_set():
        now = time.time_ns()
        trades, feats, anomalies = [], [], []
        for t in TICKERS:
            price[t] *= math.exp(rng.gauss(0, 0.002))
            seq[t] += 1
            size = rng.randint(1, 500)
            vol[t] += size
            trades.append(Trade(t, round(price[t], 2), size, now, now, seq[t]))
            feats.append(
                {
                    "ticker": t,
                    "timestamp": now,
                    "sequence_number": seq[t],
                    "price": price[t],
                    "size": size,
                    "vwap": price[t] * (1 + rng.gauss(0, 0.001)),
                    "volume_zscore": rng.gauss(0, 1.5),
                    "warming_up": 0,
                    "price_momentum": rng.gauss(0, 0.001),
                    "vwap_deviation": rng.gauss(0, 0.001),
                    "trade_frequency": 4.0,
                }
            )
            if seq[t] % 12 == 0:
                anomalies.append(
                    {
                        "ticker": t,
                        "timestamp": now,
                        "sequence_number": seq[t],
                        "anomaly_score": -0.62,
                        "threshold": -0.5,
                        "features": orjson.dumps(
                            {"price": price[t], "volume_zscore": 3.5}
                        ).decode(),
                        "model_version": "1",
                        "kind": "isolation_forest",
                    }
                )
        with reader.lock:
            for tr in trades:
                reader.trades[tr.ticker] = {
                    "ticker": tr.ticker,
                    "price": tr.price,
                    "size": tr.size,
                    "volume": vol[tr.ticker],
                    "timestamp": tr.timestamp,
                    "sequence_number": tr.sequence_number,
                }
            for f in feats:
                reader.features[f["ticker"]] = f
            for a in anomalies:
                reader.anomalies[a["ticker"]].append(a)
        batch = StoreBatch(
            trades=trades, derived={tables.FEATURES: feats, tables.ANOMALIES: anomalies}
        )
        publish_batch(broadcaster, batch)
        health.record_batch(len(trades), 0.002, 0)
        stop.wait(0.25)


@pytest.fixture
def server(port: int, clean_env: None) -> Iterator[str]:
    settings = Settings(tickers=TICKERS, _env_file=None)  # type: ignore[call-arg]
    reader, broadcaster, health = FeedReader(), Broadcaster(), HealthMonitor()
    app = create_app(settings, reader, health, broadcaster)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    stop = threading.Event()
    threads = [
        threading.Thread(target=srv.run, daemon=True),
        threading.Thread(target=feed, args=(reader, broadcaster, health, stop), daemon=True),
    ]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        srv.should_exit = True
        for th in threads:
            th.join(timeout=10)


@pytest.mark.timeout(90)
def test_dashboard_live_chart_and_ticker_switch(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    # Absolute: the clean_env fixture has moved the working directory into tmp_path.
    repo = Path(__file__).resolve().parents[2]
    out = Path(os.environ.get("TEST_OUTPUT_DIR", repo / "test-output")) / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/", wait_until="domcontentloaded")

            buttons = page.locator("#tickers button")
            expect(buttons).to_have_count(len(TICKERS), timeout=10_000)
            expect(page.locator("#q-ticker")).to_have_text("AAPL", timeout=10_000)

            chart = page.locator("#price-chart")
            page.wait_for_function(
                "() => Number(document.querySelector('#price-chart').dataset.points) >= 2",
                timeout=15_000,
            )
            first = int(chart.get_attribute("data-points") or 0)
            page.wait_for_function(
                f"() => Number(document.querySelector('#price-chart').dataset.points) > {first}",
                timeout=15_000,
            )
            expect(page.locator("#health-status")).to_have_text("healthy", timeout=10_000)
            expect(page.locator("#q-price")).not_to_have_text("–")
            expect(page.locator("#anomalies li:not(.empty)").first).to_be_visible(timeout=15_000)

            page.locator("#tickers button", has_text="MSFT").click()
            expect(page.locator("#q-ticker")).to_have_text("MSFT")
            expect(page.locator("#tickers button", has_text="MSFT")).to_have_attribute(
                "aria-pressed", "true"
            )
            page.wait_for_function(
                "() => Number(document.querySelector('#price-chart').dataset.points) >= 2",
                timeout=15_000,
            )
            price = float(page.locator("#q-price").inner_text().replace(",", ""))
            assert 140 < price < 160  # MSFT's walk starts at 150, AAPL's at 100
            shot = out / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == []
