"""Polygon REST trades (`GET /v3/trades/{ticker}`): backfill of a time range.

Used by `tradepulse backfill` and to fill the intervals the live WebSocket was disconnected.
Pagination follows `next_url` (which carries a cursor but not the key, so the key is sent again);
429 and 5xx are retried with `Retry-After` when given, else exponential backoff with full
jitter, up to `max_retries` per page. Timestamps in the response are nanoseconds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tradepulse.config import TICKER_RE
from tradepulse.events import DeadLetter, Trade


class RestError(Exception):
    """The REST service refused the request for good (bad key, bad ticker, retries exhausted)."""


def _trade(ticker: str, r: dict[str, Any], ingest_ts: int) -> Trade:
    trf = r.get("trf_id")
    return Trade(
        ticker=ticker,
        price=float(r["price"]),
        size=int(r["size"]),
        timestamp=int(r["sip_timestamp"]),
        ingest_ts=ingest_ts,
        sequence_number=int(r["sequence_number"]),
        exchange=int(r.get("exchange") or 0),
        tape=int(r.get("tape") or 0),
        conditions=tuple(int(c) for c in r.get("conditions") or ()),
        trade_id=str(r.get("id") or ""),
        trf_id=int(trf) if trf is not None else None,
    )


def convert_results(
    ticker: str, results: list[Any], ingest_ts: int, source: str
) -> tuple[list[Trade], list[DeadLetter]]:
    """REST result rows → trades, one dead letter per row that does not make a valid trade."""
    import orjson

    trades: list[Trade] = []
    dead: list[DeadLetter] = []
    for r in results:
        try:
            t = _trade(ticker, r, ingest_ts)
            reason = None
            if not t.price > 0 or t.price != t.price:
                reason = "non_positive_price"
            elif t.size < 0:
                reason = "negative_size"
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            reason = f"wrong_type:{type(exc).__name__}"
        if reason is None:
            trades.append(t)
        else:
            dead.append(
                DeadLetter(
                    reason=reason,
                    raw=orjson.dumps(r, default=str).decode(),
                    source=source,
                    first_seen=ingest_ts,
                    ticker=ticker,
                )
            )
    return trades, dead


async def fetch_trades(
    client: httpx.AsyncClient,
    base_url: str,
    api_key: str,
    ticker: str,
    from_ns: int,
    to_ns: int,
    *,
    limit: int = 50_000,
    max_retries: int = 6,
    backoff_base_s: float = 0.5,
    backoff_cap_s: float = 30.0,
    rng: random.Random | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield pages of raw result rows for `from_ns <= sip_timestamp < to_ns`, ascending."""
    if not TICKER_RE.match(ticker):
        raise RestError(f"not a ticker symbol: {ticker!r}")
    rng = rng or random.Random()
    url: str | None = f"{base_url.rstrip('/')}/v3/trades/{ticker}"
    params: dict[str, Any] | None = {
        "timestamp.gte": str(from_ns),
        "timestamp.lt": str(to_ns),
        "order": "asc",
        "sort": "timestamp",
        "limit": str(limit),
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    while url is not None:
        body = await _get(
            client, url, params, headers, max_retries, backoff_base_s, backoff_cap_s, rng
        )
        results = body.get("results") or []
        if results:
            yield results
        url = body.get("next_url")
        params = None  # next_url carries every parameter and the cursor


async def _get(
    client: httpx.AsyncClient,
    url: str,
    params: dict[str, Any] | None,
    headers: dict[str, str],
    max_retries: int,
    base_s: float,
    cap_s: float,
    rng: random.Random,
) -> dict[str, Any]:
    for attempt in range(max_retries + 1):
        try:
            resp = await client.get(url, params=params, headers=headers)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            if attempt == max_retries:
                raise RestError(f"trades request failed after {attempt + 1} tries: {exc}") from None
            await asyncio.sleep(rng.uniform(0, min(cap_s, base_s * 2**attempt)))
            continue
        if resp.status_code in (401, 403):
            raise RestError(f"REST trades refused the API key (HTTP {resp.status_code})")
        if resp.status_code == 429 or resp.status_code >= 500:
            if attempt == max_retries:
                raise RestError(f"REST trades: HTTP {resp.status_code} after {attempt + 1} tries")
            retry_after = resp.headers.get("Retry-After")
            delay = (
                float(retry_after)
                if retry_after and retry_after.replace(".", "", 1).isdigit()
                else rng.uniform(0, min(cap_s, base_s * 2**attempt))
            )
            await asyncio.sleep(min(delay, cap_s))
            continue
        if resp.status_code != 200:
            raise RestError(f"REST trades: HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            body = resp.json()
        except ValueError:
            raise RestError("REST trades: response is not JSON") from None
        if not isinstance(body, dict):
            raise RestError("REST trades: response is not a JSON object")
        return body
    raise RestError("unreachable")
