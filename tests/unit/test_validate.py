"""Frame decoding and every validation rule, each with an input that breaks it."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradepulse.market_time import NS_PER_MS, NS_PER_S
from tradepulse.validate import decode_frame

NOW = 1_795_000_000 * NS_PER_S
MS = NOW // NS_PER_MS


def trade(**over: Any) -> dict[str, Any]:
    t = {"ev": "T", "sym": "AAPL", "i": "71675577320245", "x": 4, "p": 187.23, "s": 100,
         "c": [12, 37], "t": MS, "q": 1063, "z": 3}  # fmt: skip
    t.update(over)
    return t


def quote(**over: Any) -> dict[str, Any]:
    q = {"ev": "Q", "sym": "AAPL", "bx": 11, "bp": 187.2, "bs": 2, "ax": 12, "ap": 187.25,
         "as": 3, "c": 1, "t": MS, "q": 1064, "z": 3}  # fmt: skip
    q.update(over)
    return q


def decode(events: Any) -> Any:
    return decode_frame(orjson.dumps(events), NOW, now_ns=NOW, max_skew_ns=3600 * NS_PER_S)


def test_trade_and_quote_fields_and_units() -> None:
    d = decode([{"ev": "status", "status": "success", "message": "subscribed"}, trade(), quote()])
    assert not d.dead_letters
    (t,) = d.trades
    assert (t.ticker, t.price, t.size, t.sequence_number) == ("AAPL", 187.23, 100, 1063)
    assert t.timestamp == MS * NS_PER_MS  # WebSocket ms → ns
    assert t.ingest_ts == NOW
    assert (t.exchange, t.tape, t.conditions, t.trade_id) == (4, 3, (12, 37), "71675577320245")
    (q,) = d.quotes
    assert (q.bid_price, q.bid_size, q.ask_price, q.ask_size) == (187.2, 2, 187.25, 3)
    assert (q.bid_exchange, q.ask_exchange, q.conditions) == (11, 12, (1,))
    assert d.statuses == [{"status": "success", "message": "subscribed"}]


def test_single_object_frame_is_accepted() -> None:
    assert len(decode(trade()).trades) == 1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (trade(p=-1.0), "non_positive_price"),
        (trade(p=0), "non_positive_price"),
        (trade(s=-5), "negative_size"),
        (trade(sym="aapl"), "bad_ticker"),
        (trade(sym="TOOLONGSYMBOL"), "bad_ticker"),
        (trade(sym="AA$"), "bad_ticker"),
        (trade(t=MS + 2 * 3600 * 1000), "timestamp_skew"),
        (trade(t=MS - 2 * 3600 * 1000), "timestamp_skew"),
        (trade(s="abc"), "wrong_type:s"),
        (trade(p="NaN"), "wrong_type:p"),
        (trade(s=1.5), "wrong_type:s"),
        ({k: v for k, v in trade().items() if k != "p"}, "missing_field:p"),
        ({k: v for k, v in trade().items() if k != "sym"}, "missing_field:sym"),
        ({"ev": "XQ", "sym": "AAPL"}, "unknown_event"),
        ({"sym": "AAPL", "p": 1}, "not_an_event"),
        (42, "not_an_event"),
        (trade(q=2**63), "out_of_range"),
        (quote(bp=-0.01), "negative_price"),
        (quote(bs=-1), "negative_size"),
        (quote(sym="a b"), "bad_ticker"),
    ],
)
def test_each_rule_rejects_with_its_reason(bad: Any, reason: str) -> None:
    d = decode([trade(q=1), bad, trade(q=2)])
    assert [dl.reason for dl in d.dead_letters] == [reason]
    # The valid neighbours in the same frame survive.
    assert [t.sequence_number for t in d.trades] == [1, 2]
    dl = d.dead_letters[0]
    assert dl.source == "polygon-ws" and dl.first_seen == NOW and dl.attempts == 1
    assert orjson.loads(dl.raw) == bad  # the offending element, verbatim


def test_out_of_range_numbers_reject_only_their_element() -> None:
    # JSON has no NaN; an out-of-range literal is how an infinite price arrives.
    good = orjson.dumps(trade(q=1))
    raw = b'[%s,{"ev":"T","sym":"A","p":1e400,"s":1,"t":%d,"q":2},%s]' % (good, MS, good)
    raw2 = b'[{"ev":"T","sym":"A","p":1.0,"s":99999999999999999999999,"t":%d,"q":3}]' % MS
    d = decode_frame(raw, NOW, now_ns=NOW)
    assert [x.reason for x in d.dead_letters] == ["non_finite"]
    assert len(d.trades) == 2
    assert [x.reason for x in decode_frame(raw2, NOW, now_ns=NOW).dead_letters] == ["out_of_range"]


@pytest.mark.parametrize("raw", [b"not json", b'[{"ev":"T",', b"\xff\xfe", b""])
def test_unparseable_frame_is_one_dead_letter(raw: bytes) -> None:
    d = decode_frame(raw, NOW, now_ns=NOW)
    assert [x.reason for x in d.dead_letters] == ["unparseable_json"]
    assert not d.trades


def test_huge_frame_is_refused_without_parsing_and_truncated() -> None:
    raw = b"[" + b",".join([orjson.dumps(trade())] * 200_000) + b"]"
    d = decode_frame(raw, NOW, now_ns=NOW, max_frame_bytes=1024 * 1024)
    (dl,) = d.dead_letters
    assert dl.reason == "frame_too_large"
    assert len(dl.raw) < 70 * 1024 and "truncated" in dl.raw


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["ev", "sym", "p", "s", "t", "q", "x"]), children)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, max_size=6))
def test_arbitrary_elements_never_crash_and_are_all_accounted_for(elements: list[Any]) -> None:
    frame = [trade(q=1), *elements]
    d = decode_frame(json.dumps(frame), NOW, now_ns=NOW)
    assert d.trades and d.trades[0].sequence_number == 1
    assert len(d.trades) + len(d.quotes) + len(d.dead_letters) + len(d.statuses) == len(frame)
    assert all(dl.reason for dl in d.dead_letters)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    d = decode_frame(raw, NOW, now_ns=NOW)
    assert d.trades or d.quotes or d.dead_letters or d.statuses or raw.strip() in (b"[]",)
