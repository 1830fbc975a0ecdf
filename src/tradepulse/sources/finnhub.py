"""Finnhub company-news poller: one ticker at a time, spread evenly, inside a rate budget.

Request: ``GET {base_url}/company-news?symbol=T&from=YYYY-MM-DD&to=YYYY-MM-DD`` with the key in
the ``X-Finnhub-Token`` header (never in the URL, so it cannot leak into access logs). The
answer is a JSON list of ``{category, datetime (Unix s), headline, id, image, related, source,
summary, url}``; each valid item becomes a `News`, each invalid one a `DeadLetter`.

Schedule. Ticker i of N is due every `interval_s`, offset by ``i·interval_s/N`` so requests are
spread evenly. Every request — retries included — first takes a token from a bucket refilled at
``calls_per_min/60`` per second with capacity 1, so in any 60 s window at most `calls_per_min`
requests are sent; when the budget is smaller than ``N·60/interval_s`` the cycle stretches
instead of bursting. A 429 pauses *all* polling (the budget is per account) for `Retry-After`
seconds when given (capped), else for a backoff delay; 5xx, timeouts, transport errors and
malformed JSON retry the same ticker after exponential backoff with full jitter
(``uniform(0, min(cap, base·2^(attempt−1)))``), up to `max_attempts`, then wait for the
ticker's next turn. Other 4xx (bad key) are not retried within the cycle.

Delivery. New items go to `out` (an async callable taking the list, or an `asyncio.Queue` of
single `News`); only after `out` accepted them are their (ticker, id) marked in the `SeenSet`
and the set persisted, so a crash in between re-delivers (duplicates are dropped downstream by
key) rather than loses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import hashlib
import inspect
import logging
import math
import os
import random
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from prometheus_client import Counter

from tradepulse.config import Settings
from tradepulse.events import DeadLetter, News
from tradepulse.ops import metrics

log = logging.getLogger(__name__)

SOURCE = "finnhub"
MAX_RAW_CHARS = 64 * 1024  # dead-letter payloads are truncated to this

NEWS_POLLS = Counter(
    "tradepulse_news_polls_total",
    "Finnhub company-news requests by outcome",
    ["outcome"],  # ok|rate_limited|server_error|timeout|transport_error|malformed|client_error
    registry=metrics.REGISTRY,
)
NEWS_BACKOFF_SECONDS = Counter(
    "tradepulse_news_backoff_seconds_total",
    "Seconds the news poller waited because of 429s and errors",
    registry=metrics.REGISTRY,
)

NewsSink = Callable[[list[News]], Awaitable[None]]
DeadLetterSink = Callable[[list[DeadLetter]], Awaitable[None] | None]


# --- time -----------------------------------------------------------------------------------


class Clock(Protocol):
    """Where the poller reads time and sleeps; tests pass a virtual clock."""

    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_TOKEN_EPS = 1e-9


class TokenBucket:
    """``tokens(t) = min(capacity, tokens(t₀) + rate·(t − t₀))``; a request takes one token.

    Starting full with capacity 1, requests are at least ``1/rate`` apart, so a half-open
    window of 60 s never holds more than ``60·rate`` of them.
    """

    def __init__(self, rate_per_s: float, now: float, capacity: float = 1.0) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError("rate must be positive and capacity at least 1")
        self.rate = rate_per_s
        self.capacity = capacity
        self._tokens = capacity
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available (0 when one is available now)."""
        self._refill(now)
        # The tolerance absorbs float rounding in the refill, which could otherwise ask for
        # waits shorter than the clock's resolution forever.
        missing = 1.0 - self._tokens
        return 0.0 if missing <= _TOKEN_EPS else missing / self.rate

    def take(self, now: float) -> None:
        self._refill(now)
        if 1.0 - self._tokens <= _TOKEN_EPS:
            self._tokens = max(self._tokens, 1.0)  # snap rounding error, never bank extra
        self._tokens -= 1.0


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base·2^(attempt−1)))``."""
    ceiling = min(cap_s, base_s * 2.0 ** max(attempt - 1, 0))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = when.timestamp() - now_s
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


# --- the persistent seen-set -------------------------------------------------------------------


class SeenSet:
    """Bounded set of (ticker, article id), evicting the oldest insertion first, persisted as
    JSON ``{"version": 1, "keys": [[ticker, id], ...]}`` (oldest first) by write-temp + fsync +
    `os.replace`, so a reader sees the old or the new file, never half of one."""

    def __init__(self, path: Path, capacity: int = 50_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = Path(path)
        self.capacity = capacity
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._load()

    def _load(self) -> None:
        try:
            data = orjson.loads(self.path.read_bytes())
            keys = data["keys"] if isinstance(data, dict) else None
            if not isinstance(keys, list):
                raise ValueError("no key list")
            for pair in keys[-self.capacity :]:
                if isinstance(pair, list) and len(pair) == 2:
                    self._keys[(str(pair[0]), str(pair[1]))] = None
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Starting empty only risks re-delivering articles, which downstream dedupes.
            log.warning("news seen-set %s unreadable (%s); starting empty", self.path, exc)
            self._keys.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add_many(self, keys: Iterable[tuple[str, str]]) -> int:
        """Mark keys seen (refreshing nothing: eviction is by first insertion); return #new."""
        added = 0
        for key in keys:
            if key not in self._keys:
                self._keys[key] = None
                added += 1
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return added

    def encode(self) -> bytes:
        return orjson.dumps({"version": 1, "keys": [list(k) for k in self._keys]})

    def write(self, payload: bytes) -> None:
        """Atomically replace the file with `payload` (from `encode`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable where supported
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def save(self) -> None:
        self.write(self.encode())


# --- parsing ---------------------------------------------------------------------------------


class MalformedResponse(ValueError):
    """The body is not a JSON list of articles."""


@dataclass(slots=True)
class ParsedNews:
    news: list[News]
    dead_letters: list[DeadLetter]
    dead_keys: list[tuple[str, str]]  # seen-set keys of the bad items, so they are reported once


def _raw(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text[:MAX_RAW_CHARS]


def _item_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "not an object"
    ident = item.get("id")
    if isinstance(ident, bool) or not (
        (isinstance(ident, int)) or (isinstance(ident, str) and ident.strip())
    ):
        return "missing or invalid id"
    when = item.get("datetime")
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        return "missing or invalid datetime"
    if when <= 0:
        return "non-positive datetime"
    headline = item.get("headline")
    if not isinstance(headline, str) or not headline.strip():
        return "missing headline"
    for name in ("summary", "source", "url"):
        value = item.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} is not a string"
    return None


def parse_company_news(body: bytes, ticker: str, ingest_ts: int) -> ParsedNews:
    """Turn a company-news body into `News` for `ticker`; bad items become dead letters.

    ``published_at = datetime·10⁹`` (Finnhub's datetime is Unix seconds). Raises
    `MalformedResponse` when the body is not JSON or not a list.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(f"not JSON: {exc}") from None
    if not isinstance(data, list):
        raise MalformedResponse(f"expected a JSON list, got {type(data).__name__}")
    parsed = ParsedNews([], [], [])
    seen_here: set[str] = set()
    for item in data:
        problem = _item_problem(item)
        if problem is not None:
            raw = _raw(item)
            parsed.dead_letters.append(
                DeadLetter(
                    reason=f"bad_news_item: {problem}",
                    raw=raw,
                    source=SOURCE,
                    first_seen=ingest_ts,
                    ticker=ticker,
                )
            )
            digest = hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()[:20]
            parsed.dead_keys.append((ticker, f"invalid:{digest}"))
            continue
        article_id = str(item["id"]).strip()
        if article_id in seen_here:
            continue
        seen_here.add(article_id)
        when = item["datetime"]
        published = when * 1_000_000_000 if isinstance(when, int) else round(when * 1e9)
        parsed.news.append(
            News(
                article_id=article_id,
                ticker=ticker,
                headline=item["headline"].strip(),
                summary=item.get("summary") or "",
                source=item.get("source") or "",
                url=item.get("url") or "",
                published_at=int(published),
                ingest_ts=ingest_ts,
            )
        )
    return parsed


# --- the poller ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Attempt:
    outcome: str  # a NEWS_POLLS label
    body: bytes = b""
    retry_after_s: float | None = None
    detail: str = ""


_RETRYABLE = {"rate_limited", "server_error", "timeout", "transport_error", "malformed"}


class FinnhubPoller:
    """Polls company news for `tickers` until `stop()`; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        tickers: Sequence[str],
        out: NewsSink | asyncio.Queue[News],
        *,
        seen: SeenSet,
        interval_s: float = 60.0,
        calls_per_min: int = 60,
        clock: Clock | None = None,
        timeout_s: float = 10.0,
        on_dead_letters: DeadLetterSink | None = None,
        lookback_s: float = 86_400.0,
        max_attempts: int = 4,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 60.0,
        max_retry_after_s: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        if not tickers:
            raise ValueError("at least one ticker is required")
        if interval_s <= 0 or calls_per_min < 1 or timeout_s <= 0 or max_attempts < 1:
            raise ValueError("interval_s, calls_per_min, timeout_s and max_attempts must be > 0")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.tickers = list(dict.fromkeys(tickers))
        self.out = out
        self.seen = seen
        self.interval_s = interval_s
        self.calls_per_min = calls_per_min
        self.clock: Clock = clock or SystemClock()
        self.timeout_s = timeout_s
        self.on_dead_letters = on_dead_letters
        self.lookback_s = lookback_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_retry_after_s = max_retry_after_s
        self.rng = rng or random.Random()
        self._bucket = TokenBucket(calls_per_min / 60.0, now=self.clock.monotonic())
        self._resume_at = -math.inf  # monotonic time before which nothing is sent (after a 429)
        self._stop = asyncio.Event()
        self._inflight: asyncio.Task[httpx.Response] | None = None
        self.requests_sent = 0

    # --- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to return; an in-flight request is abandoned, a delivery is finished."""
        self._stop.set()
        if self._inflight is not None:
            self._inflight.cancel()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["X-Finnhub-Token"] = self._api_key
        spacing = self.interval_s / len(self.tickers)
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=self.timeout_s,
            follow_redirects=False,
        ) as client:
            next_due = self.clock.monotonic()
            while not self.stopped:
                for ticker in self.tickers:
                    await self._sleep(next_due - self.clock.monotonic())
                    if self.stopped:
                        return
                    await self._poll(client, ticker)
                    # No catch-up bursts after a slow poll or a backoff: the next one is due
                    # `spacing` later, or now if that is already past.
                    next_due = max(next_due + spacing, self.clock.monotonic())

    # --- one ticker ------------------------------------------------------------------------

    async def _poll(self, client: httpx.AsyncClient, ticker: str) -> None:
        last: _Attempt | None = None
        for attempt in range(1, self.max_attempts + 1):
            await self._acquire()
            if self.stopped:
                return
            last = await self._request(client, ticker)
            if self.stopped and last.outcome != "ok":
                return  # a finished response is still delivered; an abandoned one is not
            if last.outcome == "ok":
                try:
                    parsed = parse_company_news(last.body, ticker, self.clock.time_ns())
                except MalformedResponse as exc:
                    last = _Attempt("malformed", body=last.body, detail=str(exc))
                else:
                    NEWS_POLLS.labels("ok").inc()
                    await self._deliver(ticker, parsed)
                    return
            NEWS_POLLS.labels(last.outcome).inc()
            if last.outcome not in _RETRYABLE:
                log.warning("finnhub %s: %s; skipping this cycle", ticker, last.detail)
                return
            delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s, self.rng)
            if last.outcome == "rate_limited":
                if last.retry_after_s is not None:
                    delay = min(last.retry_after_s, self.max_retry_after_s)
                # The budget is per account: hold every ticker, not just this one (also when
                # this ticker has no attempts left).
                self._resume_at = max(self._resume_at, self.clock.monotonic() + delay)
            if attempt == self.max_attempts:
                break
            log.warning(
                "finnhub %s: %s (attempt %d/%d); retrying in %.2fs",
                ticker,
                last.detail,
                attempt,
                self.max_attempts,
                delay,
            )
            NEWS_BACKOFF_SECONDS.inc(delay)
            await self._sleep(delay)
            if self.stopped:
                return
        if last is not None and last.outcome == "malformed":
            await self._dead_letters(
                [
                    DeadLetter(
                        reason=f"bad_news_response: {last.detail}",
                        raw=last.body.decode("utf-8", errors="replace")[:MAX_RAW_CHARS],
                        source=SOURCE,
                        first_seen=self.clock.time_ns(),
                        attempts=self.max_attempts,
                        ticker=ticker,
                    )
                ]
            )
        log.warning("finnhub %s: giving up until its next turn", ticker)

    async def _acquire(self) -> None:
        """Wait for the 429 pause to end and for a token; then take it."""
        while not self.stopped:
            now = self.clock.monotonic()
            wait = max(self._resume_at - now, self._bucket.wait_time(now))
            if wait <= 0:
                self._bucket.take(now)
                return
            await self._sleep(wait)

    async def _request(self, client: httpx.AsyncClient, ticker: str) -> _Attempt:
        now_ns = self.clock.time_ns()
        to_day = _utc_date(now_ns)
        from_day = _utc_date(now_ns - int(self.lookback_s * 1e9))
        params = {"symbol": ticker, "from": from_day, "to": to_day}
        self.requests_sent += 1
        self._inflight = asyncio.ensure_future(client.get("/company-news", params=params))
        try:
            response = await self._inflight
        except asyncio.CancelledError:
            if self.stopped:
                return _Attempt("transport_error", detail="stopped")
            raise
        except httpx.TimeoutException:
            return _Attempt("timeout", detail=f"timed out after {self.timeout_s}s")
        except httpx.HTTPError as exc:
            return _Attempt("transport_error", detail=type(exc).__name__)
        finally:
            self._inflight = None
        status = response.status_code
        if status == 200:
            return _Attempt("ok", body=response.content)
        if status == 429:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), self.clock.time_ns() / 1e9
            )
            return _Attempt("rate_limited", retry_after_s=retry_after, detail="HTTP 429")
        if status >= 500:
            return _Attempt("server_error", detail=f"HTTP {status}")
        return _Attempt("client_error", detail=f"HTTP {status}")

    async def _deliver(self, ticker: str, parsed: ParsedNews) -> None:
        fresh = [n for n in parsed.news if (n.ticker, n.article_id) not in self.seen]
        duplicates = len(parsed.news) - len(fresh)
        if duplicates:
            metrics.EVENTS.labels("duplicate", "news").inc(duplicates)
        bad = [
            (d, k)
            for d, k in zip(parsed.dead_letters, parsed.dead_keys, strict=True)
            if k not in self.seen
        ]
        marked: list[tuple[str, str]] = []
        if fresh:
            try:
                await self._send(fresh)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Not marked seen: the next poll offers them again.
                log.exception("finnhub %s: news sink failed; will retry next poll", ticker)
                return
            metrics.EVENTS.labels("received", "news").inc(len(fresh))
            marked.extend((n.ticker, n.article_id) for n in fresh)
        if bad and await self._dead_letters([d for d, _ in bad]):
            marked.extend(k for _, k in bad)
        if marked:
            self.seen.add_many(marked)
            payload = self.seen.encode()
            try:
                await asyncio.to_thread(self.seen.write, payload)
            except OSError:
                log.exception("finnhub: could not persist the seen-set to %s", self.seen.path)

    async def _send(self, items: list[News]) -> None:
        if isinstance(self.out, asyncio.Queue):
            for item in items:
                await self.out.put(item)
        else:
            await self.out(items)

    async def _dead_letters(self, letters: list[DeadLetter]) -> bool:
        """Hand dead letters to the callback; True when they were accepted (or no callback)."""
        if self.on_dead_letters is None:
            log.warning("finnhub: %d bad news items dropped (no dead-letter sink)", len(letters))
            return True
        try:
            result = self.on_dead_letters(letters)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("finnhub: dead-letter sink failed")
            return False
        return True

    async def _sleep(self, seconds: float) -> None:
        """Sleep on the clock, returning early when stopped."""
        if seconds <= 0 or self.stopped:
            await asyncio.sleep(0)
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                if not task.done():
                    task.cancel()
            for task in (sleeper, stopper):
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _utc_date(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d")


def poller_from_settings(
    settings: Settings,
    out: NewsSink | asyncio.Queue[News],
    *,
    seen_path: Path,
    base_url: str | None = None,
    api_key: str | None = None,
    on_dead_letters: DeadLetterSink | None = None,
) -> FinnhubPoller:
    """A poller for `settings.tickers` using the configured URL, key, interval and budget
    (`base_url` and `api_key` override them, e.g. with the simulator's address and key)."""
    key = settings.finnhub_api_key.get_secret_value() if settings.finnhub_api_key else api_key
    return FinnhubPoller(
        base_url or settings.finnhub_url,
        key,
        settings.tickers,
        out,
        seen=SeenSet(seen_path),
        interval_s=settings.news_poll_s,
        calls_per_min=settings.finnhub_calls_per_min,
        on_dead_letters=on_dead_letters,
    )
