"""Scenario 4: Finnhub answering 429, 5xx, timeouts and malformed JSON, seen through a whole
`tradepulse run` (the poller alone, on a virtual clock, is covered by
tests/integration/test_finnhub_poller.py; this adds the run around it and a real kill).

1. In one run, a local fake Finnhub answers with every fault in turn, then with overlapping
   article lists: the run survives, requests respect the rate budget and Retry-After, no
   article is written twice, every served article is stored, bad items are dead-lettered.
2. `tradepulse run` is SIGKILLed while the batch holding freshly polled articles is still
   being committed (the store's commits are slowed to make that window wide), then
   restarted: the dedupe state survives the restart, and the articles the killed process had
   polled but not committed are still stored, exactly once.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from fakes import FakeFinnhub, Reply, article
from fault_harness import Proc, Tally, base_env, duplicates, eventually, wait_until
from inject import env_with, inject_cmd

from tradepulse.config import load_settings
from tradepulse.runner import run_embedded
from tradepulse.sim import SimConfig
from tradepulse.store.base import StoreBatch, WriteResult

TICKERS = ["AAPL", "MSFT", "NVDA"]
CALLS_PER_MIN = 120
NEWS_KEY = ("ticker", "article_id")

pytestmark = pytest.mark.timeout(120)


T0 = int(time.time())


def _list(ticker: str, ids: range, bad: bool = False) -> bytes:
    items: list[object] = [article(ticker, i, T0 + i) for i in ids]
    if bad:
        items.append({"id": 999, "datetime": T0, "headline": ""})  # no headline: dead letter
    return orjson.dumps(items)


FAULTS = {
    0: Reply(429, b'{"error": "API limit reached"}', {"Retry-After": "1"}),
    1: Reply(500, b"oops"),
    2: Reply(hang_s=11.0),  # the poller's request timeout is 10 s
    3: Reply(body=b'[{"id": 1, "headline": "cut o'),
    4: Reply(503, b"unavailable"),
    5: Reply(body=b"<html>maintenance</html>"),
    6: Reply(body=b'{"error": "unexpected"}'),
}


def _script(n: int, ticker: str) -> Reply:
    if n in FAULTS:
        return FAULTS[n]
    # Every answer repeats what was sent before and adds a little: only dedupe keeps
    # articles from being stored and joined again and again.
    return Reply(body=_list(ticker, range(1, 3 + n // 2), bad=True))


@pytest.mark.usefixtures("clean_env")
async def test_faulty_finnhub_never_crashes_duplicates_or_overspends(tmp_path: Path) -> None:
    data = tmp_path / "data"
    written: Counter[tuple[str, str]] = Counter()

    def observe(batch: StoreBatch, result: WriteResult, done_ns: int) -> None:
        for row in batch.derived.get("news", ()):
            written[(str(row["ticker"]), str(row["article_id"]))] += 1

    with FakeFinnhub(_script) as fake:
        settings = load_settings(
            data_dir=data,
            tickers=",".join(TICKERS),
            finnhub_api_key="fake-finnhub-key",
            finnhub_url=fake.url,
            news_poll_s=1.0,
            finnhub_calls_per_min=CALLS_PER_MIN,
            warmup_s=0,
        )
        sim = SimConfig(tickers=TICKERS, rate=300, seed=2, duration_s=24.0, news_rate=0.0)
        await run_embedded(
            settings, sim_config=sim, serve_api=False, out=lambda _l: None, observers=[observe]
        )
        ended = time.monotonic()
        requests = list(fake.requests)
        served = dict(fake.served)

    assert len(requests) > len(FAULTS) + 3, "polling did not resume after the faults"
    at = [r.at for r in requests]
    # The token bucket spaces every request, retries included, by 60/budget seconds; seen
    # at the server, arrival jitter blurs single gaps, so count per window instead ...
    window = 5.0
    most = max(sum(1 for t in at if a <= t < a + window) for a in at)
    assert most <= window * CALLS_PER_MIN / 60 + 1, at
    # ... a 429's Retry-After holds every ticker, and a timeout holds its ticker's retry.
    assert at[1] - at[0] >= 1.0 - 0.05
    assert at[3] - at[2] >= 10.0 - 0.1
    # The key travels in a header only.
    assert all("fake-finnhub-key" not in r.target for r in requests)

    dup = sum(n - 1 for n in written.values())
    # An answer that arrives as the run stops may be cut off with it (the next run gets it).
    due = {k for k, t in served.items() if t < ended - 2.0}
    tally = Tally("finnhub-faults", "articles", len(due), len(due & set(written)), dup)
    tally.report()
    assert dup == 0, [k for k, n in written.items() if n > 1]
    assert duplicates(data, "news", NEWS_KEY) == 0
    assert set(written) <= set(served)
    assert tally.lost == 0, sorted(due - set(written))

    with contextlib.closing(sqlite3.connect(data / "hot.sqlite3")) as conn:
        dead = conn.execute(
            "select reason, ticker, count(*) from dlq where source = 'finnhub' group by 1, 2"
        ).fetchall()
    print(f"[fault] finnhub-faults: {len(requests)} requests, dead letters {dead}")
    # The bad item comes back in every answer but is dead-lettered once per ticker.
    items = [(r, t, n) for r, t, n in dead if r.startswith("bad_news_item")]
    assert items and all(n == 1 for _, _, n in items), dead


def _news_keys(seen_file: Path) -> set[tuple[str, str]]:
    try:
        doc = orjson.loads(seen_file.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return set()
    return {(str(t), str(i)) for t, i in doc.get("keys", []) if not str(i).startswith("invalid:")}


def _stored_news(data: Path) -> set[tuple[str, str]]:
    path = data / "hot.sqlite3"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = conn.execute("select ticker, article_id from news").fetchall()
    except sqlite3.OperationalError:
        return set()
    return {(str(t), str(i)) for t, i in rows}


def test_articles_polled_before_a_kill_are_stored_after_the_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seen_file = data / "news_seen.json"
    script = lambda n, ticker: Reply(body=_list(ticker, range(1, 4)))  # noqa: E731
    with FakeFinnhub(script) as fake:
        env = base_env(
            tmp_path,
            FINNHUB_API_KEY="fake-finnhub-key",
            TRADEPULSE_FINNHUB_URL=fake.url,
            TRADEPULSE_TICKERS=",".join(TICKERS),
            TRADEPULSE_NEWS_POLL_S="1",
            TRADEPULSE_WARMUP_S="0",
        )
        args = ["run", "--data-dir", str(data), "--no-api", "--rate", "200"]
        # Every commit takes 4 s, as on a busy disk: the articles' batch is still being
        # committed when the kill lands.
        slow = Proc(args, env_with(env, "slow_commit:4"), tmp_path, "slow", argv=inject_cmd(*args))
        try:
            wait_until(lambda: bool(fake.served) or not slow.alive(), 60, "a poll")
            assert slow.alive(), slow.stderr
            time.sleep(0.5)  # parsed and on the log, its batch well inside a 4 s commit
            polled, marked, stored = set(fake.served), _news_keys(seen_file), _stored_news(data)
        finally:
            slow.kill()
        print(
            f"[fault] finnhub-kill: at the kill {len(polled)} articles were polled, "
            f"{len(marked)} marked seen, {len(polled & stored)} committed"
        )
        assert polled - stored, "the kill did not land between delivery and commit"

        run = Proc(args, env, tmp_path, "restart")
        try:
            eventually(lambda: set(fake.served) <= _stored_news(data) or not run.alive(), 20, 0.3)
        finally:
            rc = run.stop(signal.SIGTERM)
        served = set(fake.served)

    stored = _stored_news(data)
    dup = duplicates(data, "news", NEWS_KEY)
    Tally("finnhub-kill", "articles", len(served), len(served & stored), dup).report()
    assert rc == 0, run.stderr
    assert dup == 0
    assert stored <= served
    assert served <= stored, f"lost after the kill: {sorted(served - stored)}"
    # The dedupe state survived: the restart did not have to take everything again.
    assert _news_keys(seen_file) >= served
