"""Validation: raw frames in, valid records and dead letters out.

`decode_frame` is the only way a raw WebSocket frame becomes `Trade`/`Quote` records. Every
element that is not a valid event becomes exactly one `DeadLetter` with its reason; it never
takes its valid neighbours in the same frame with it, and nothing is dropped silently.
"""

from tradepulse.validate.decode import Decoded, RefusedFrame, decode_frame
from tradepulse.validate.rules import REASONS, check_quote, check_trade

__all__ = ["REASONS", "Decoded", "RefusedFrame", "check_quote", "check_trade", "decode_frame"]
