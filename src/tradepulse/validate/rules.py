"""The validation rules of DESIGN.md, one function per record kind.

Each check returns `None` for a valid record or a reason code (the prefix before any `:` is what
the `tradepulse_dead_letters_total{reason}` metric counts). Codes:

| code | meaning |
| --- | --- |
| `unparseable_json` | the frame is not JSON (or not UTF-8) |
| `not_an_event` | a JSON element that is not an object with an `ev` field |
| `unknown_event` | an `ev` other than T (trade), Q (quote) or status |
| `missing_field:<f>` | a required field is absent |
| `wrong_type:<f>` | a field has the wrong JSON type or is out of the int64/float range |
| `bad_ticker` | the symbol does not match `^[A-Z][A-Z0-9.\\-]{0,9}$` |
| `non_finite` | a price is NaN or infinite |
| `non_positive_price` | a trade price ≤ 0 |
| `negative_price` | a quote price < 0 |
| `negative_size` | a size < 0 |
| `out_of_range` | an integer field beyond int64 (stores and Parquet hold int64) |
| `timestamp_skew` | event time further than the configured skew from the receive time |
| `frame_too_large` | a frame above the configured maximum size (never parsed) |
"""

from __future__ import annotations

import math

from tradepulse.config import TICKER_RE
from tradepulse.events import Quote, Trade

REASONS = (
    "unparseable_json",
    "not_an_event",
    "unknown_event",
    "missing_field",
    "wrong_type",
    "bad_ticker",
    "non_finite",
    "non_positive_price",
    "negative_price",
    "negative_size",
    "out_of_range",
    "timestamp_skew",
    "frame_too_large",
)

_match_ticker = TICKER_RE.match
INT64_MAX = 2**63 - 1


def _skewed(ts: int, now_ns: int, max_skew_ns: int) -> bool:
    return ts - now_ns > max_skew_ns or now_ns - ts > max_skew_ns


def check_trade(t: Trade, now_ns: int, max_skew_ns: int) -> str | None:
    if _match_ticker(t.ticker) is None:
        return "bad_ticker"
    if not math.isfinite(t.price):
        return "non_finite"
    if t.price <= 0:
        return "non_positive_price"
    if t.size < 0:
        return "negative_size"
    if max(t.size, t.sequence_number, t.exchange, t.tape, t.trf_id or 0) > INT64_MAX:
        return "out_of_range"
    if _skewed(t.timestamp, now_ns, max_skew_ns):
        return "timestamp_skew"
    return None


def check_quote(q: Quote, now_ns: int, max_skew_ns: int) -> str | None:
    if _match_ticker(q.ticker) is None:
        return "bad_ticker"
    if not (math.isfinite(q.bid_price) and math.isfinite(q.ask_price)):
        return "non_finite"
    # A zero price on one side is a legal "no bid"/"no offer"; a negative one is not.
    if q.bid_price < 0 or q.ask_price < 0:
        return "negative_price"
    if q.bid_size < 0 or q.ask_size < 0:
        return "negative_size"
    if max(q.bid_size, q.ask_size, q.sequence_number, q.bid_exchange, q.ask_exchange) > INT64_MAX:
        return "out_of_range"
    if _skewed(q.timestamp, now_ns, max_skew_ns):
        return "timestamp_skew"
    return None
