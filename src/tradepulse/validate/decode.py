"""Polygon stocks WebSocket frames → `Trade`/`Quote` records + dead letters.

Hot path: one typed msgspec decode of the whole frame (a JSON array of events tagged by `ev`).
Only when that fails does the frame take the slow path, element by element, so that one bad
element becomes one dead letter and its valid neighbours still pass. WebSocket timestamps are
Unix milliseconds; records carry nanoseconds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from tradepulse.events import DeadLetter, Quote, Trade
from tradepulse.market_time import NS_PER_MS
from tradepulse.validate.rules import check_quote, check_trade

# A dead letter keeps the payload verbatim, but not without bound: a 10 MB garbage frame is
# kept as its first 64 KiB plus a note of its size.
MAX_RAW_CHARS = 64 * 1024


class TradeMsg(msgspec.Struct, tag_field="ev", tag="T"):
    sym: str
    p: float
    s: int
    t: int  # SIP timestamp, Unix ms
    q: int
    i: str = ""
    x: int = 0
    c: list[int] = []
    z: int = 0
    trfi: int | None = None


class QuoteMsg(msgspec.Struct, tag_field="ev", tag="Q"):
    sym: str
    bp: float
    bs: int
    ap: float
    as_: int = msgspec.field(name="as")
    t: int = 0
    q: int = 0
    bx: int = 0
    ax: int = 0
    c: int = 0
    z: int = 0


class StatusMsg(msgspec.Struct, tag_field="ev", tag="status"):
    status: str
    message: str = ""


Msg = TradeMsg | QuoteMsg | StatusMsg
_frame_decoder = msgspec.json.Decoder(list[Msg])
_any_decoder = msgspec.json.Decoder()

_MISSING = re.compile(r"missing required field `([^`]+)`")
_AT = re.compile(r"at `\$(?:\[\d+\])?\.?([^`]*)`")


class RefusedFrame(str):
    """What the socket reader puts on the log in place of a frame it refused to read (over
    its size limit), saying what was refused. It decodes to one `frame_too_large` dead letter,
    so a refused frame is counted like any other rejected input instead of vanishing with
    the connection it made the reader close."""

    __slots__ = ()


@dataclass(slots=True)
class Decoded:
    trades: list[Trade] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    statuses: list[dict[str, str]] = field(default_factory=list)


def _raw_text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if len(text) > MAX_RAW_CHARS:
        return f"{text[:MAX_RAW_CHARS]}…[truncated, {len(text):,} chars]"
    return text


def _element_text(elem: Any, frame: bytes | str = b"") -> str:
    """The element as JSON text; for one nested too deep to serialise, the frame holding it."""
    try:
        return _raw_text(orjson.dumps(elem))
    except TypeError:
        try:
            return _raw_text(json.dumps(elem))
        except RecursionError:
            return _raw_text(frame) if frame else "<element nested too deep to show>"


def _reason(exc: msgspec.ValidationError, elem: Any) -> str:
    msg = str(exc)
    if not isinstance(elem, dict) or "ev" not in elem:
        return "not_an_event"
    if "`$.ev`" in msg or msg.endswith("at `$.ev`"):
        return "unknown_event"
    m = _MISSING.search(msg)
    if m:
        return f"missing_field:{m.group(1)}"
    at = _AT.search(msg)
    return f"wrong_type:{at.group(1) if at else '?'}"


class _Builder:
    """Turns typed messages into records, applying the semantic rules."""

    __slots__ = ("_elements", "max_skew_ns", "now_ns", "out", "raw_frame", "recv_ts", "source")

    def __init__(self, recv_ts: int, source: str, now_ns: int, max_skew_ns: int) -> None:
        self.recv_ts = recv_ts
        self.source = source
        self.now_ns = now_ns
        self.max_skew_ns = max_skew_ns
        self.out = Decoded()
        self.raw_frame: bytes | str = b""
        self._elements: list[Any] | None = None

    def dead(self, reason: str, raw: str, ticker: str | None = None) -> None:
        self.out.dead_letters.append(
            DeadLetter(
                reason=reason,
                raw=raw,
                source=self.source,
                first_seen=self.recv_ts,
                ticker=ticker,
            )
        )

    def add(self, m: Msg, raw_elem: Any) -> None:
        """`raw_elem` is the element itself (slow path) or its index in the frame (fast path,
        where the verbatim element is recovered only if the message is rejected)."""
        if type(m) is TradeMsg:
            t = Trade(
                ticker=m.sym,
                price=m.p,
                size=m.s,
                timestamp=m.t * NS_PER_MS,
                ingest_ts=self.recv_ts,
                sequence_number=m.q,
                exchange=m.x,
                tape=m.z,
                conditions=tuple(m.c),
                trade_id=m.i,
                trf_id=m.trfi,
            )
            reason = check_trade(t, self.now_ns, self.max_skew_ns)
            if reason is None:
                self.out.trades.append(t)
            else:
                self.dead(reason, self._text(m, raw_elem), m.sym)
        elif type(m) is QuoteMsg:
            q = Quote(
                ticker=m.sym,
                bid_price=m.bp,
                bid_size=m.bs,
                ask_price=m.ap,
                ask_size=m.as_,
                timestamp=m.t * NS_PER_MS,
                ingest_ts=self.recv_ts,
                sequence_number=m.q,
                bid_exchange=m.bx,
                ask_exchange=m.ax,
                tape=m.z,
                conditions=(m.c,) if m.c else (),
            )
            reason = check_quote(q, self.now_ns, self.max_skew_ns)
            if reason is None:
                self.out.quotes.append(q)
            else:
                self.dead(reason, self._text(m, raw_elem), m.sym)
        else:
            assert isinstance(m, StatusMsg)
            self.out.statuses.append({"status": m.status, "message": m.message})

    def _text(self, m: Msg, raw_elem: Any) -> str:
        if isinstance(raw_elem, int) and not isinstance(raw_elem, bool):
            if self._elements is None:
                data = _any_decoder.decode(self.raw_frame)
                self._elements = data if isinstance(data, list) else [data]
            raw_elem = self._elements[raw_elem]
        return _element_text(raw_elem)


def decode_frame(
    raw: bytes | str,
    recv_ts: int,
    *,
    source: str = "polygon-ws",
    now_ns: int | None = None,
    max_skew_ns: int = 24 * 3600 * 1_000_000_000,
    max_frame_bytes: int | None = None,
) -> Decoded:
    """Decode one frame. `now_ns` is the reference for the clock-skew rule (default: recv_ts)."""
    b = _Builder(recv_ts, source, recv_ts if now_ns is None else now_ns, max_skew_ns)
    if isinstance(raw, RefusedFrame) or (
        max_frame_bytes is not None and len(raw) > max_frame_bytes
    ):
        b.dead("frame_too_large", _raw_text(raw))
        return b.out
    try:
        msgs = _frame_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        # RecursionError: msgspec recurses into nested values, even ones it skips, and a
        # hostile frame can nest deeper than the interpreter's limit.
        _slow_path(raw, b)
        return b.out
    b.raw_frame = raw
    for i, m in enumerate(msgs):
        b.add(m, i)
    return b.out


def _slow_path(raw: bytes | str, b: _Builder) -> None:
    try:
        data = _any_decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        # msgspec refuses numbers outside int64/float64; the standard parser reads them (as
        # big ints or inf) so only the element holding one is rejected, not its neighbours.
        # Nesting beyond the recursion limit defeats both: then the frame is one dead letter.
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            b.dead("unparseable_json", _raw_text(raw))
            return
    elements = data if isinstance(data, list) else [data]
    for elem in elements:
        try:
            m = msgspec.convert(elem, Msg)
        except (msgspec.ValidationError, RecursionError) as exc:
            ticker = elem.get("sym") if isinstance(elem, dict) else None
            if isinstance(exc, msgspec.ValidationError):
                reason = _reason(exc, elem)
            else:
                reason = "wrong_type:nested" if isinstance(elem, dict) else "not_an_event"
            b.dead(reason, _element_text(elem, raw), ticker if isinstance(ticker, str) else None)
            continue
        b.add(m, elem)
