"""One-minute bars: closed on the watermark after the grace, late trades re-emit, quiet
tickers close with the market."""

from __future__ import annotations

import numpy as np
import pytest

from tradepulse.process.bars import BarEngine

pytestmark = pytest.mark.unit

S = 1_000_000_000
M = 60 * S
T0 = 28_400_000 * M  # a minute boundary


def add(e: BarEngine, ticker: str, pts: list[tuple[int, int, float, int]]) -> None:
    """pts: (ts, seq, price, size)."""
    ts, seq, price, size = zip(*pts, strict=True)
    e.add(ticker, np.array(ts), np.array(seq), np.array(price, dtype=float), np.array(size))


def test_bar_closes_after_the_grace() -> None:
    e = BarEngine(grace_s=2, late_allowance_s=60)
    add(e, "AAPL", [(T0 + 5 * S, 2, 10.0, 100), (T0 + S, 1, 11.0, 100), (T0 + 50 * S, 3, 9.0, 200)])
    assert e.advance(T0 + M + S) == []
    (bar,) = e.advance(T0 + M + 2 * S)
    assert bar == {
        "ticker": "AAPL",
        "minute_start": T0,
        "open": 11.0,
        "high": 11.0,
        "low": 9.0,
        "close": 9.0,
        "volume": 400,
        "vwap": (1100 + 1000 + 1800) / 400,
        "trade_count": 3,
        "revision": 0,
    }
    assert e.advance(T0 + M + 3 * S) == []  # emitted once


def test_late_trade_within_allowance_re_emits() -> None:
    e = BarEngine(grace_s=2, late_allowance_s=60)
    add(e, "AAPL", [(T0 + S, 1, 10.0, 100), (T0 + 59 * S, 5, 12.0, 100)])
    e.advance(T0 + M + 10 * S)
    add(e, "AAPL", [(T0 + 30 * S, 3, 20.0, 100)])
    (bar,) = e.advance(T0 + M + 11 * S)
    assert bar["revision"] == 1 and bar["high"] == 20.0 and bar["close"] == 12.0
    assert bar["trade_count"] == 3
    e.advance(T0 + 2 * M + 2 * S + 1)  # past end + grace + allowance: forgotten
    add(e, "AAPL", [(T0 + 40 * S, 4, 30.0, 100)])
    assert e.too_late == 1
    assert e.advance(T0 + 3 * M) == []


def test_quiet_ticker_closes_with_the_market_watermark() -> None:
    e = BarEngine(grace_s=2, late_allowance_s=0)
    add(e, "QUIET", [(T0 + S, 1, 5.0, 10)])
    add(e, "BUSY", [(T0 + 2 * M, 1, 7.0, 10)])
    rows = e.advance(T0 + 2 * M)
    assert [r["ticker"] for r in rows] == ["QUIET"]
    assert e.open and not e.closed  # BUSY's bar open; QUIET's forgotten (no allowance)


def test_zero_volume_bar_vwap_is_mean_price() -> None:
    e = BarEngine()
    add(e, "AAPL", [(T0 + S, 1, 10.0, 0), (T0 + 2 * S, 2, 12.0, 0)])
    (bar,) = e.advance(T0 + 2 * M)
    assert bar["vwap"] == 11.0 and bar["volume"] == 0
