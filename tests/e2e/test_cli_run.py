"""The product through its public surface: `tradepulse run` serving the API while it runs,
then `tradepulse query` agreeing with the simulator's ground truth; bad configuration exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, chromium_missing

TP = [sys.executable, "-m", "tradepulse"]
REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRADEPULSE_") and k not in {"POLYGON_API_KEY", "FINNHUB_API_KEY"}
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _query(data: Path, sql: str, env: dict[str, str], cwd: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        [*TP, "query", "--data-dir", str(data), "--json", sql],
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=True,
    )
    rows: list[dict[str, object]] = orjson.loads(out.stdout)
    return rows


def test_run_serves_the_api_and_stores_exactly_the_truth(tmp_path: Path, port: int) -> None:
    data, env = tmp_path / "data", _env(tmp_path)
    # A short warm-up history keeps this fast; the warm-up itself has its own test.
    env["TRADEPULSE_WARMUP_S"] = "120"
    cmd = [*TP, "run", "--duration", "30", "--data-dir", str(data), "--port", str(port),
           "--bad-rate", "0.001", "--rate", "2000"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        quote = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{base}/quotes/AAPL", timeout=2)
                if r.status_code == 200:
                    quote = r.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        assert quote is not None, "the API never served a quote"
        assert quote["ticker"] == "AAPL"
        for field in ("price", "volume", "timestamp", "sequence_number"):
            assert field in quote
        # The live push carries the run's own trades (the dashboard draws from it).
        kinds: set[str] = set()
        with httpx.stream("GET", f"{base}/stream?tickers=AAPL", timeout=10) as sse:
            for line in sse.iter_lines():
                if line.startswith("event: "):
                    kinds.add(line.removeprefix("event: "))
                if {"quote", "features"} <= kinds:
                    break
        assert {"quote", "features"} <= kinds
        _dashboard_draws_live_points(base)
        health = httpx.get(f"{base}/health", timeout=2)
        assert health.status_code == 200
        assert health.json()["status"] in {"healthy", "degraded"}
        missing = httpx.get(f"{base}/quotes/ZZZZ", timeout=2)
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/json")
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"[tradepulse]" in err  # the status line

    truth = orjson.loads((data / "truth" / "summary.json").read_bytes())
    trades = _query(data, "select count(*) as n from trades", env, tmp_path)[0]["n"]
    dlq = _query(data, "select count(*) as n from dlq", env, tmp_path)[0]["n"]
    assert trades == sum(truth["valid_trades"].values())
    assert dlq == truth["malformed"]
    assert list((data / "cold" / "trades").glob("date=*/ticker=AAPL/*.parquet"))


def _dashboard_draws_live_points(base: str) -> None:
    """Debian's chromium through Playwright's executable path (never a downloaded browser):
    the chart of the real run gains points, another ticker can be picked, a screenshot is kept."""
    from playwright.sync_api import expect, sync_playwright

    if chromium_missing():
        return
    out = REPO / "test-output" / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    points = "() => Number(document.querySelector('#price-chart').dataset.points)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(base + "/", wait_until="domcontentloaded")
            expect(page.locator("#q-ticker")).to_have_text("AAPL", timeout=10_000)
            page.wait_for_function(f"{points} >= 2", timeout=15_000)
            first = int(page.locator("#price-chart").get_attribute("data-points") or 0)
            page.wait_for_function(f"{points} > {first}", timeout=15_000)
            page.locator("#tickers button", has_text="MSFT").click()
            expect(page.locator("#q-ticker")).to_have_text("MSFT")
            page.wait_for_function(f"{points} >= 2", timeout=15_000)
            page.screenshot(path=str(out / "dashboard-run.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.parametrize(
    ("env_over", "needle"),
    [
        ({"TRADEPULSE_PORT": "not-a-port"}, "TRADEPULSE_PORT"),
        ({"TRADEPULSE_TICKERS": "aapl,$$$"}, "TRADEPULSE_TICKERS"),
        ({"TRADEPULSE_BACKEND": "mainframe"}, "TRADEPULSE_BACKEND"),
    ],
)
def test_bad_configuration_is_one_clear_message_and_exit_2(
    tmp_path: Path, env_over: dict[str, str], needle: str
) -> None:
    env = {**_env(tmp_path), **env_over}
    r = subprocess.run([*TP, "run", "--duration", "1"], capture_output=True, env=env,
                       cwd=tmp_path, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert needle in r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()


def test_query_without_data_is_a_clear_error(tmp_path: Path) -> None:
    cmd = [*TP, "query", "--data-dir", str(tmp_path / "none"), "select 1"]
    r = subprocess.run(cmd, capture_output=True, env=_env(tmp_path), cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert "no data" in r.stderr.decode()


def test_replay_into_an_unusable_data_dir_is_one_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    sample = REPO / "tests" / "data" / "sample_trades.csv.gz"
    cmd = [*TP, "replay", "--data-dir", str(not_a_dir), str(sample)]
    r = subprocess.run(cmd, capture_output=True, env=_env(tmp_path), cwd=tmp_path, timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "cannot use the data dir" in err and "Traceback" not in err
