"""Finnhub poller building blocks: parsing, rate bucket, backoff, Retry-After, seen-set."""

from __future__ import annotations

import os
import random
from pathlib import Path

import orjson
import pytest

from tradepulse.events import News
from tradepulse.sources.finnhub import (
    MalformedResponse,
    SeenSet,
    TokenBucket,
    backoff_delay,
    parse_company_news,
    parse_retry_after,
)

pytestmark = pytest.mark.unit

INGEST = 1_763_900_000_000_000_000


def item(ident: object = 1, **overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "category": "company",
        "datetime": 1_763_899_000,
        "headline": "Apple beats estimates",
        "id": ident,
        "image": "",
        "related": "AAPL",
        "source": "Wire",
        "summary": "Quarterly revenue rose.",
        "url": "https://example.invalid/1",
    }
    base.update(overrides)
    return base


def test_parse_valid_items() -> None:
    body = orjson.dumps([item(1), item("abc", datetime=1_763_899_001.5, summary=None)])
    parsed = parse_company_news(body, "AAPL", INGEST)
    assert parsed.dead_letters == []
    first, second = parsed.news
    assert first.article_id == "1" and first.ticker == "AAPL"
    assert first.published_at == 1_763_899_000 * 1_000_000_000
    assert first.ingest_ts == INGEST
    assert first.summary == "Quarterly revenue rose." and first.source == "Wire"
    assert second.article_id == "abc" and second.summary == ""
    assert second.published_at == 1_763_899_001_500_000_000


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("just a string", "not an object"),
        (item(None), "id"),
        (item(True), "id"),
        (item(""), "id"),
        (item(2, datetime="yesterday"), "datetime"),
        (item(3, datetime=0), "datetime"),
        (item(4, datetime=float("nan")), "datetime"),
        (item(5, headline=""), "headline"),
        (item(6, headline=None), "headline"),
        (item(7, url=5), "url"),
    ],
)
def test_parse_bad_items_become_dead_letters(bad: object, reason: str) -> None:
    body = orjson.dumps([item(100), bad])
    parsed = parse_company_news(body, "AAPL", INGEST)
    assert [n.article_id for n in parsed.news] == ["100"]
    (dead,) = parsed.dead_letters
    assert dead.source == "finnhub" and dead.ticker == "AAPL" and dead.first_seen == INGEST
    assert dead.reason.startswith("bad_news_item:") and reason in dead.reason
    assert len(parsed.dead_keys) == 1 and parsed.dead_keys[0][0] == "AAPL"


def test_parse_same_bad_item_gets_same_key() -> None:
    body = orjson.dumps([item(5, headline="")])
    a = parse_company_news(body, "AAPL", INGEST)
    b = parse_company_news(body, "AAPL", INGEST + 1)
    assert a.dead_keys == b.dead_keys


def test_parse_drops_repeats_within_a_response() -> None:
    parsed = parse_company_news(orjson.dumps([item(1), item(1), item(2)]), "AAPL", INGEST)
    assert [n.article_id for n in parsed.news] == ["1", "2"]


@pytest.mark.parametrize("body", [b"{not json", b'{"error": "limit"}', b"", b"null"])
def test_parse_malformed_body_raises(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        parse_company_news(body, "AAPL", INGEST)


def test_token_bucket_spacing_and_refill() -> None:
    bucket = TokenBucket(rate_per_s=0.5, now=0.0)  # 30/min
    assert bucket.wait_time(0.0) == 0.0
    bucket.take(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(2.0)
    assert bucket.wait_time(1.5) == pytest.approx(0.5)
    assert bucket.wait_time(2.0) == 0.0
    bucket.take(2.0)
    # A long idle period never banks more than `capacity` tokens.
    assert bucket.wait_time(1000.0) == 0.0
    bucket.take(1000.0)
    assert bucket.wait_time(1000.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        TokenBucket(0.0, now=0.0)


def test_backoff_delay_full_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (20, 30.0)]:
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # the jitter spans the range


def test_parse_retry_after() -> None:
    assert parse_retry_after(None, 0.0) is None
    assert parse_retry_after("7", 0.0) == 7.0
    assert parse_retry_after(" 1.5 ", 0.0) == 1.5
    assert parse_retry_after("-3", 0.0) == 0.0
    assert parse_retry_after("soon", 0.0) is None
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now) == pytest.approx(30.0)


def test_seen_set_bounded_fifo(tmp_path: Path) -> None:
    seen = SeenSet(tmp_path / "seen.json", capacity=3)
    assert seen.add_many([("A", "1"), ("A", "2"), ("A", "1")]) == 2
    seen.add_many([("A", "3"), ("B", "1")])
    assert len(seen) == 3
    assert ("A", "1") not in seen  # the oldest was evicted
    assert ("A", "2") in seen and ("B", "1") in seen


def test_seen_set_survives_restart_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state" / "seen.json"
    seen = SeenSet(path, capacity=10)
    seen.add_many([("AAPL", str(i)) for i in range(5)])
    seen.save()
    assert sorted(os.listdir(path.parent)) == ["seen.json"]  # no temp file left behind
    again = SeenSet(path, capacity=3)  # a smaller capacity keeps the newest
    assert len(again) == 3
    assert ("AAPL", "4") in again and ("AAPL", "1") not in again


@pytest.mark.parametrize("content", [b"{truncated", b'{"keys": 5}', b"[]"])
def test_seen_set_unreadable_file_starts_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "seen.json"
    path.write_bytes(content)
    seen = SeenSet(path)
    assert len(seen) == 0
    seen.add_many([("A", "1")])
    seen.save()
    assert ("A", "1") in SeenSet(path)


def test_token_bucket_never_stalls_on_float_rounding() -> None:
    # Waiting exactly the advertised time must always make a token available: rounding in
    # the refill must not produce endless sub-resolution waits (seen with a virtual clock).
    bucket = TokenBucket(rate_per_s=36 / 60, now=0.0)
    now = 0.0
    for _ in range(2000):
        wait = bucket.wait_time(now)
        assert wait == 0.0 or wait > 1e-6
        now += wait
        assert bucket.wait_time(now) == 0.0
        bucket.take(now)
    assert now == pytest.approx(1999 / 0.6)


def test_poller_from_settings(tmp_path: Path) -> None:
    from tradepulse.config import Settings
    from tradepulse.sources.finnhub import poller_from_settings

    async def sink(batch: list[News]) -> None:
        del batch

    settings = Settings(
        tickers=["AAPL", "MSFT"],
        finnhub_api_key="secret",
        news_poll_s=30.0,
        finnhub_calls_per_min=20,
    )
    poller = poller_from_settings(
        settings, sink, seen_path=tmp_path / "seen.json", base_url="http://127.0.0.1:9/api/v1"
    )
    assert poller.tickers == ["AAPL", "MSFT"]
    assert poller.base_url == "http://127.0.0.1:9/api/v1"
    assert poller.interval_s == 30.0 and poller.calls_per_min == 20
    assert poller.seen.path == tmp_path / "seen.json"
