"""The Finnhub poller against a local fake Finnhub on 127.0.0.1.

The poller runs on a virtual clock (its sleeps advance time instantly) while HTTP is real, so
minutes of schedule run in well under a second and request times can be checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tradepulse.events import DeadLetter, News
from tradepulse.sources.finnhub import FinnhubPoller, SeenSet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

EPOCH_S = 1_763_900_000.0  # 2025-11-23 12:13:20 UTC


class FakeClock:
    """Virtual time: `sleep` advances it; past `until`, `on_limit` is called (to stop)."""

    def __init__(self, until: float) -> None:
        self.t = 0.0
        self.until = until
        self.on_limit: Callable[[], None] | None = None

    def monotonic(self) -> float:
        return self.t

    def time_ns(self) -> int:
        return int((EPOCH_S + self.t) * 1e9)

    async def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.0)
        if self.t >= self.until and self.on_limit is not None:
            self.on_limit()
        await asyncio.sleep(0)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"[]"
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0  # sleep (real time) before answering: provokes a client timeout


@dataclass
class Seen:
    at: float  # virtual time of arrival
    ticker: str
    params: dict[str, str]
    headers: dict[str, str]
    target: str


class FakeFinnhub:
    """A tiny HTTP/1.1 server speaking just enough of `GET /api/v1/company-news`."""

    def __init__(self, clock: FakeClock, reply: Callable[[int, str], Reply]) -> None:
        self.clock = clock
        self.reply = reply  # (request number from 0, ticker) -> Reply
        self.requests: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.arrived = asyncio.Event()  # set on every request

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/api/v1"

    async def __aenter__(self) -> FakeFinnhub:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            _, target, _ = request_line.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (h.split(":", 1) for h in header_lines if ":" in h)
            }
            parts = urlsplit(target)
            params = {k: v[0] for k, v in parse_qs(parts.query).items()}
            n = len(self.requests)
            ticker = params.get("symbol", "")
            self.requests.append(Seen(self.clock.t, ticker, params, headers, target))
            self.arrived.set()
            if parts.path != "/api/v1/company-news":
                reply = Reply(404, b'{"error": "not found"}')
            else:
                reply = self.reply(n, ticker)
            if reply.hang_s:
                await asyncio.sleep(reply.hang_s)
            status_text = {200: "OK", 429: "Too Many Requests"}.get(reply.status, "Error")
            lines = [f"HTTP/1.1 {reply.status} {status_text}"]
            hdrs = {"Content-Type": "application/json", **reply.headers}
            hdrs["Content-Length"] = str(len(reply.body))
            hdrs["Connection"] = "close"
            lines += [f"{k}: {v}" for k, v in hdrs.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def articles(ticker: str, ids: range) -> bytes:
    return orjson.dumps(
        [
            {
                "category": "company",
                "datetime": int(EPOCH_S) - 100 + i,
                "headline": f"{ticker} headline {i}",
                "id": i,
                "image": "",
                "related": ticker,
                "source": "Wire",
                "summary": f"{ticker} summary {i}",
                "url": f"https://example.invalid/{ticker}/{i}",
            }
            for i in ids
        ]
    )


class Sink:
    def __init__(self) -> None:
        self.items: list[News] = []
        self.dead: list[DeadLetter] = []

    async def __call__(self, batch: list[News]) -> None:
        self.items.extend(batch)

    def on_dead(self, letters: list[DeadLetter]) -> None:
        self.dead.extend(letters)

    def keys(self) -> list[tuple[str, str]]:
        return [(n.ticker, n.article_id) for n in self.items]


def make_poller(
    server: FakeFinnhub,
    clock: FakeClock,
    tickers: list[str],
    sink: Sink,
    seen: SeenSet,
    **kwargs: object,
) -> FinnhubPoller:
    poller = FinnhubPoller(
        server.url,
        "test-key",
        tickers,
        sink,
        seen=seen,
        clock=clock,
        on_dead_letters=sink.on_dead,
        **kwargs,  # type: ignore[arg-type]
    )
    clock.on_limit = poller.stop
    return poller


def max_in_any_window(times: list[float], width: float = 60.0) -> int:
    """Most requests in any half-open window [t, t + width)."""
    best, lo = 0, 0
    ordered = sorted(times)
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_429_with_retry_after_then_200_backs_off_and_resumes(tmp_path: Path) -> None:
    clock = FakeClock(until=180.0)

    def reply(n: int, ticker: str) -> Reply:
        if n == 1:
            return Reply(429, b'{"error": "API limit reached"}', {"Retry-After": "17"})
        return Reply(body=articles(ticker, range(1, 4)))

    sink = Sink()
    async with FakeFinnhub(clock, reply) as server:
        poller = make_poller(
            server,
            clock,
            ["AAPL", "MSFT"],
            sink,
            SeenSet(tmp_path / "seen.json"),
            interval_s=60.0,
            calls_per_min=60,
        )
        await asyncio.wait_for(poller.run(), 10)

    reqs = server.requests
    assert reqs[1].ticker == "MSFT"
    # The retry honours Retry-After exactly (nothing at all is sent during the pause) ...
    assert reqs[2].ticker == "MSFT" and reqs[2].at == pytest.approx(reqs[1].at + 17.0)
    # ... and then polling resumes on the even schedule (one ticker every 30 s).
    later = [r.at for r in reqs[2:]]
    assert len(later) >= 5
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert all(g == pytest.approx(30.0) for g in gaps[1:])
    assert max_in_any_window([r.at for r in reqs]) <= 60
    # Every article delivered exactly once despite being returned on every poll.
    assert sorted(sink.keys()) == [(t, str(i)) for t in ("AAPL", "MSFT") for i in (1, 2, 3)]
    # The key is sent as a header, never in the URL; from/to are UTC dates.
    assert reqs[0].headers["x-finnhub-token"] == "test-key"
    assert all("test-key" not in r.target for r in reqs)
    assert reqs[0].params["to"] == "2025-11-23" and reqs[0].params["from"] == "2025-11-22"


async def test_429_on_the_last_attempt_still_pauses_every_ticker(tmp_path: Path) -> None:
    clock = FakeClock(until=100.0)

    def reply(n: int, ticker: str) -> Reply:
        if n == 0:
            return Reply(429, b"{}", {"Retry-After": "20"})
        return Reply(body=articles(ticker, range(1, 2)))

    sink = Sink()
    async with FakeFinnhub(clock, reply) as server:
        poller = make_poller(
            server,
            clock,
            ["AAPL", "MSFT", "TSLA"],
            sink,
            SeenSet(tmp_path / "seen.json"),
            interval_s=3.0,
            calls_per_min=60,
            max_attempts=1,
        )
        await asyncio.wait_for(poller.run(), 10)
    first, second = server.requests[:2]
    assert (first.ticker, second.ticker) == ("AAPL", "MSFT")
    assert second.at == pytest.approx(first.at + 20.0)


async def test_rate_budget_never_exceeded_with_retries(tmp_path: Path) -> None:
    clock = FakeClock(until=600.0)
    tickers = [f"T{i}" for i in range(10)]

    def reply(n: int, ticker: str) -> Reply:
        if n % 4 == 3:
            return Reply(503, b"unavailable")
        if n % 9 == 5:
            return Reply(429, b"{}")  # no Retry-After: exponential backoff
        return Reply(body=articles(ticker, range(n % 3, n % 3 + 2)))

    sink = Sink()
    async with FakeFinnhub(clock, reply) as server:
        # Wants 10 tickers every 5 s (120/min) but the budget is 30/min.
        poller = make_poller(
            server,
            clock,
            tickers,
            sink,
            SeenSet(tmp_path / "seen.json"),
            interval_s=5.0,
            calls_per_min=30,
            backoff_base_s=0.5,
            backoff_cap_s=4.0,
        )
        await asyncio.wait_for(poller.run(), 20)

    times = [r.at for r in server.requests]
    assert max_in_any_window(times) <= 30
    assert len(times) >= 0.9 * 30 * 10  # the budget is used, not wasted (10 minutes)
    assert {r.ticker for r in server.requests} == set(tickers)  # everyone gets a turn
    assert len(sink.keys()) == len(set(sink.keys()))


async def test_errors_timeouts_and_bad_payloads_never_crash_or_duplicate(tmp_path: Path) -> None:
    clock = FakeClock(until=400.0)
    bad_items = orjson.dumps(
        [
            {"id": 50, "datetime": int(EPOCH_S), "headline": ""},
            "garbage",
            {
                "id": 51,
                "datetime": int(EPOCH_S),
                "headline": "fine",
                "summary": "",
                "source": "W",
                "url": "",
            },
        ]
    )
    script = {
        0: Reply(500, b"oops"),
        1: Reply(hang_s=1.0),  # > timeout_s
        2: Reply(body=b'[{"id": 1, "headline": "cut o'),
        3: Reply(body=bad_items),
    }

    def reply(n: int, ticker: str) -> Reply:
        if n in script:
            return script[n]
        body = orjson.loads(articles(ticker, range(1, 6)))
        body.extend(orjson.loads(bad_items))  # bad items keep coming back on every poll
        return Reply(body=orjson.dumps(body))

    sink = Sink()
    async with FakeFinnhub(clock, reply) as server:
        poller = make_poller(
            server,
            clock,
            ["AAPL"],
            sink,
            SeenSet(tmp_path / "seen.json"),
            interval_s=60.0,
            calls_per_min=60,
            timeout_s=0.2,
            backoff_base_s=1.0,
        )
        await asyncio.wait_for(poller.run(), 15)

    assert len(server.requests) >= 8
    keys = sink.keys()
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted([("AAPL", "51")] + [("AAPL", str(i)) for i in range(1, 6)])
    # The two bad items were dead-lettered once, not once per poll.
    assert len(sink.dead) == 2
    assert all(d.source == "finnhub" and d.reason.startswith("bad_news_item") for d in sink.dead)
    # Retries after errors wait (backoff) but stay within the budget.
    assert max_in_any_window([r.at for r in server.requests]) <= 60


async def test_malformed_until_attempts_exhausted_is_dead_lettered(tmp_path: Path) -> None:
    clock = FakeClock(until=50.0)
    sink = Sink()
    async with FakeFinnhub(clock, lambda n, t: Reply(body=b"<html>maintenance</html>")) as server:
        poller = make_poller(
            server,
            clock,
            ["AAPL"],
            sink,
            SeenSet(tmp_path / "seen.json"),
            interval_s=60.0,
            max_attempts=3,
            backoff_base_s=1.0,
        )
        await asyncio.wait_for(poller.run(), 10)
    assert len(server.requests) == 3
    (dead,) = sink.dead
    assert dead.reason.startswith("bad_news_response") and dead.attempts == 3
    assert "maintenance" in dead.raw
    assert sink.items == []


async def test_seen_set_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "seen.json"

    first_sink = Sink()
    clock = FakeClock(until=100.0)
    async with FakeFinnhub(clock, lambda n, t: Reply(body=articles(t, range(1, 4)))) as server:
        poller = make_poller(server, clock, ["AAPL"], first_sink, SeenSet(path))
        await asyncio.wait_for(poller.run(), 10)
    assert sorted(first_sink.keys()) == [("AAPL", "1"), ("AAPL", "2"), ("AAPL", "3")]

    # A new process: same file, the provider now also has articles 4 and 5.
    second_sink = Sink()
    clock = FakeClock(until=100.0)
    async with FakeFinnhub(clock, lambda n, t: Reply(body=articles(t, range(1, 6)))) as server:
        poller = make_poller(server, clock, ["AAPL"], second_sink, SeenSet(path))
        await asyncio.wait_for(poller.run(), 10)
    assert sorted(second_sink.keys()) == [("AAPL", "4"), ("AAPL", "5")]


async def test_failed_delivery_is_not_marked_seen(tmp_path: Path) -> None:
    clock = FakeClock(until=200.0)
    delivered: list[News] = []
    calls = 0

    async def flaky(batch: list[News]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("downstream full")
        delivered.extend(batch)

    async with FakeFinnhub(clock, lambda n, t: Reply(body=articles(t, range(1, 3)))) as server:
        poller = FinnhubPoller(
            server.url, None, ["AAPL"], flaky, seen=SeenSet(tmp_path / "s.json"), clock=clock
        )
        clock.on_limit = poller.stop
        await asyncio.wait_for(poller.run(), 10)
    assert "x-finnhub-token" not in server.requests[0].headers  # no key: no header
    assert sorted(n.article_id for n in delivered) == ["1", "2"]


async def test_queue_output_and_stop_interrupts_a_slow_request(tmp_path: Path) -> None:
    clock = FakeClock(until=1e9)
    queue: asyncio.Queue[News] = asyncio.Queue()

    def reply(n: int, ticker: str) -> Reply:
        return Reply(body=articles(ticker, range(1, 3))) if n == 0 else Reply(hang_s=5.0)

    async with FakeFinnhub(clock, reply) as server:
        poller = FinnhubPoller(
            server.url,
            "k",
            ["AAPL", "MSFT"],
            queue,
            seen=SeenSet(tmp_path / "s.json"),
            clock=clock,
            timeout_s=10.0,
        )
        task = asyncio.ensure_future(poller.run())
        while len(server.requests) < 2:
            server.arrived.clear()
            await asyncio.wait_for(server.arrived.wait(), 5.0)
        poller.stop()
        await asyncio.wait_for(task, 2.0)
    assert queue.qsize() == 2
