"""The simulator's REST side: Polygon's `/v3/trades/{ticker}` and Finnhub's company news.

Pure request → (status, JSON body) functions over the in-memory trade history and the
generator's articles; `server.py` puts them on the wire.

Trades history. Every valid trade generated is kept per ticker in generation order (which is
``(sip_timestamp, sequence_number)`` order) up to `max_per_ticker`; beyond that the oldest are
dropped, so memory stays bounded on long runs (default 5 M trades over all tickers, ~1 GB at
worst; a backfill older than that gets fewer trades than were generated).

Pagination. `next_url` carries an opaque cursor encoding the query (bounds, order, limit) and
the position after the last row returned, as a value ``(sip_timestamp, sequence_number)`` rather
than an index, so trimming the history between pages cannot skip or repeat rows.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tradepulse.config import TICKER_RE
from tradepulse.market_time import ET
from tradepulse.sim.market import NS_PER_S, Article, TradeRow

DEFAULT_LIMIT = 1000
MAX_LIMIT = 50_000
DEFAULT_HISTORY_TRADES = 5_000_000

Reply = tuple[int, Any]


class TradeHistory:
    def __init__(self, max_per_ticker: int) -> None:
        self.max_per_ticker = max(1, max_per_ticker)
        self._ts: dict[str, list[int]] = {}
        self._rows: dict[str, list[TradeRow]] = {}

    def extend(self, trades: list[tuple[str, TradeRow]]) -> None:
        for sym, row in trades:
            ts = self._ts.get(sym)
            if ts is None:
                ts = self._ts[sym] = []
                self._rows[sym] = []
            ts.append(row[0])
            self._rows[sym].append(row)
        for sym, ts in self._ts.items():
            # Trim in chunks so the O(n) deletion is amortised over many appends.
            excess = len(ts) - self.max_per_ticker
            if excess > self.max_per_ticker // 10:
                del ts[:excess]
                del self._rows[sym][:excess]

    def __len__(self) -> int:
        return sum(len(v) for v in self._ts.values())

    def query(
        self,
        ticker: str,
        gte: int | None,
        lt: int | None,
        desc: bool,
        limit: int,
        after: tuple[int, int] | None,
    ) -> tuple[list[TradeRow], bool]:
        """Rows in ``[gte, lt)`` in the requested order after the cursor; and whether more
        rows follow."""
        ts = self._ts.get(ticker)
        if not ts:
            return [], False
        rows = self._rows[ticker]
        lo = 0 if gte is None else bisect.bisect_left(ts, gte)
        hi = len(ts) if lt is None else bisect.bisect_left(ts, lt)
        if after is not None:
            t0, seq0 = after
            i = bisect.bisect_left(ts, t0)
            j = bisect.bisect_right(ts, t0)
            if desc:
                k = i
                while k < j and rows[k][1] < seq0:
                    k += 1
                hi = min(hi, k)
            else:
                k = i
                while k < j and rows[k][1] <= seq0:
                    k += 1
                lo = max(lo, k)
        if hi <= lo:
            return [], False
        if desc:
            start = max(lo, hi - limit)
            return rows[start:hi][::-1], start > lo
        end = min(hi, lo + limit)
        return rows[lo:end], end < hi


def trade_json(row: TradeRow) -> dict[str, Any]:
    sip, seq, price, size, exchange, conditions, tid, tape, trf_id, trf_ts, participant = row
    out: dict[str, Any] = {}
    if conditions:
        out["conditions"] = list(conditions)
    out.update(
        exchange=exchange,
        id=tid,
        participant_timestamp=participant,
        price=price,
        sequence_number=seq,
        sip_timestamp=sip,
        size=size,
        tape=tape,
    )
    if trf_id is not None:
        out["trf_id"] = trf_id
        out["trf_timestamp"] = trf_ts
    return out


class BadRequest(ValueError):
    pass


def _ts_param(value: str, name: str) -> int:
    """ns integer, or YYYY-MM-DD as midnight America/New_York (the trading-day start)."""
    v = value.strip()
    if v.isdigit():
        return int(v)
    try:
        day = dt.date.fromisoformat(v)
    except ValueError:
        raise BadRequest(f"{name}: expected a nanosecond timestamp or YYYY-MM-DD") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=ET).timestamp()) * NS_PER_S


def _encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        state = orjson.loads(raw)
        if not isinstance(state, dict):
            raise ValueError
        after = state["a"]
        state["a"] = (int(after[0]), int(after[1]))
        for k in ("gte", "lt"):
            if state.get(k) is not None:
                state[k] = int(state[k])
        state["desc"] = bool(state["desc"])
        state["limit"] = int(state["limit"])
    except (ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
        raise BadRequest("invalid cursor") from None
    return state


def _error(status: int, message: str) -> Reply:
    return status, {"status": "ERROR", "request_id": uuid.uuid4().hex, "error": message}


def polygon_key(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    key = query.get("apiKey")
    if key:
        return key
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


def trades_endpoint(
    history: TradeHistory,
    ticker: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    api_key: str,
    base_url: str,
) -> Reply:
    key = polygon_key(query, headers)
    if key is None:
        return _error(401, "API Key was not provided")
    if key != api_key:
        return _error(401, "Unknown API Key")
    if not TICKER_RE.match(ticker):
        return _error(400, f"invalid ticker: {ticker!r}")
    try:
        cursor = query.get("cursor")
        state = _decode_cursor(cursor) if cursor is not None else _parse_trades_query(query)
    except BadRequest as exc:
        return _error(400, str(exc))
    rows, more = history.query(
        ticker, state["gte"], state["lt"], state["desc"], state["limit"], state.get("a")
    )
    body: dict[str, Any] = {
        "status": "OK",
        "request_id": uuid.uuid4().hex,
        "results": [trade_json(r) for r in rows],
    }
    if more and rows:
        state["a"] = [rows[-1][0], rows[-1][1]]
        body["next_url"] = f"{base_url}/v3/trades/{ticker}?cursor={_encode_cursor(state)}"
    return 200, body


def _parse_trades_query(query: Mapping[str, str]) -> dict[str, Any]:
    lower = [
        _ts_param(query[name], name) + shift
        for name, shift in (("timestamp.gte", 0), ("timestamp.gt", 1), ("timestamp", 0))
        if name in query
    ]
    upper = [
        _ts_param(query[name], name) + shift
        for name, shift in (("timestamp.lt", 0), ("timestamp.lte", 1), ("timestamp", 1))
        if name in query
    ]
    gte = max(lower) if lower else None
    lt = min(upper) if upper else None
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("order must be asc or desc")
    sort = query.get("sort", "timestamp")
    if sort != "timestamp":
        raise BadRequest("sort must be timestamp")
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer within 1..{MAX_LIMIT}")
    return {"gte": gte, "lt": lt, "desc": order == "desc", "limit": int(raw_limit), "a": None}


def company_news_endpoint(
    published: Callable[[str, int], list[Article]],
    query: Mapping[str, str],
    headers: Mapping[str, str],
    now_ns: int,
) -> Reply:
    token = headers.get("x-finnhub-token") or query.get("token")
    if not token:
        return 401, {"error": "Please use an API key."}
    symbol = query.get("symbol", "").strip().upper()
    if not symbol:
        return 422, {"error": "Missing required parameter: symbol"}
    try:
        start = dt.date.fromisoformat(query["from"])
        end = dt.date.fromisoformat(query["to"])
    except KeyError as exc:
        return 422, {"error": f"Missing required parameter: {exc.args[0]}"}
    except ValueError:
        return 422, {"error": "Wrong date format: use YYYY-MM-DD"}
    rows = []
    for art in published(symbol, now_ns):
        day = dt.datetime.fromtimestamp(art.published_at // NS_PER_S, tz=dt.UTC).date()
        if start <= day <= end:
            rows.append(art.to_finnhub())
    rows.reverse()  # newest first, as Finnhub answers
    return 200, rows
