"""Run a dead letter's payload through its source's own validation again.

Each source keeps its raw payload in its own shape, so each goes back through the function
that rejected it: the WebSocket decoder for `polygon-ws`, the REST converter for
`polygon-rest`, the flat-file row rules for `replay:<file>`, the company-news parser for
`finnhub`. `ingest_ts` stays the first-seen time, so latency is not reset by a redrive; the
clock-skew rule is judged against now. A payload from a source with no validator here keeps
failing with its old reason, so it ends in the archive rather than being dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from tradepulse.events import News, Quote, Trade
from tradepulse.validate.decode import decode_frame
from tradepulse.validate.dlq.entry import DlqEntry

__all__ = ["Verdict", "revalidate"]


@dataclass(slots=True)
class Verdict:
    """The records a payload now yields, or why it still fails (`reason`)."""

    trades: list[Trade] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    news: list[News] = field(default_factory=list)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def records(self) -> int:
        return len(self.trades) + len(self.quotes) + len(self.news)


def revalidate(entry: DlqEntry, now_ns: int, max_skew_ns: int) -> Verdict:
    source = entry.source
    if source == "polygon-ws":
        return _websocket(entry, now_ns, max_skew_ns)
    if source == "polygon-rest":
        return _rest(entry)
    if source.startswith("replay:"):
        return _flat_file_row(entry)
    if source == "finnhub":
        return _news(entry)
    return Verdict(reason=entry.reason)


def _websocket(entry: DlqEntry, now_ns: int, max_skew_ns: int) -> Verdict:
    decoded = decode_frame(
        entry.raw, entry.first_seen, source=entry.source, now_ns=now_ns, max_skew_ns=max_skew_ns
    )
    if decoded.dead_letters:
        return Verdict(reason=decoded.dead_letters[0].reason)
    return Verdict(trades=decoded.trades, quotes=decoded.quotes)


def _rest(entry: DlqEntry) -> Verdict:
    from tradepulse.sources.polygon_rest import convert_results

    try:
        row = orjson.loads(entry.raw)
    except orjson.JSONDecodeError:
        return Verdict(reason="unparseable_json")
    trades, dead = convert_results(entry.ticker or "", [row], entry.first_seen, entry.source)
    if dead:
        return Verdict(reason=dead[0].reason)
    return Verdict(trades=trades)


def _flat_file_row(entry: DlqEntry) -> Verdict:
    # The row checks are replay's own; its reader hands them columns, so this row is a
    # one-row column set. Quotes files are recognised by their bid/ask columns.
    from tradepulse.sources.replay import ReplayChunk, _quotes, _trades

    try:
        row = orjson.loads(entry.raw)
    except orjson.JSONDecodeError:
        return Verdict(reason="unparseable_json")
    if not isinstance(row, dict):
        return Verdict(reason="not_an_event")
    cols = {k: [None if v is None else str(v)] for k, v in row.items()}
    chunk = ReplayChunk()
    check = _quotes if "bid_price" in row else _trades
    check(cols, 0, 1, entry.first_seen, entry.source, chunk)
    if chunk.dead_letters:
        return Verdict(reason=chunk.dead_letters[0].reason)
    return Verdict(trades=chunk.trades, quotes=chunk.quotes)


def _news(entry: DlqEntry) -> Verdict:
    from tradepulse.sources.finnhub import MalformedResponse, parse_company_news

    # A whole response that was not a list of articles is retried as a response; a single
    # bad article as a one-article response.
    whole = entry.reason.startswith("bad_news_response")
    body = entry.raw.encode() if whole else b"[" + entry.raw.encode() + b"]"
    try:
        parsed = parse_company_news(body, entry.ticker or "", entry.first_seen)
    except MalformedResponse as exc:
        return Verdict(reason=f"bad_news_response: {exc}")
    if parsed.dead_letters:
        return Verdict(reason=parsed.dead_letters[0].reason)
    return Verdict(news=parsed.news)
