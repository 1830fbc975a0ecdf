"""Hand-made edge cases for every feature (the golden test covers the bulk)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from tradepulse.events import Trade
from tradepulse.process.features import (
    FeatureEngine,
    FeatureParams,
    baseline_count,
    session_of,
    volume_zscore,
)

pytestmark = pytest.mark.unit

S = 1_000_000_000
W = 60 * S
# 10:00 ET on a Tuesday (EDT).
T0 = int(datetime(2024, 3, 12, 14, 0, tzinfo=UTC).timestamp()) * S


def tr(
    t: int, price: float = 100.0, size: int = 100, seq: int = 0, conds: tuple[int, ...] = ()
) -> Trade:
    return Trade("AAPL", price, size, t, t, seq or t // 1_000_000, conditions=conds)


def feed(engine: FeatureEngine, trades: list[Trade]) -> list[dict[str, Any]]:
    return [r for b in engine.process(trades) for r in b.rows()]


def test_single_trade() -> None:
    (row,) = feed(FeatureEngine(), [tr(T0, 101.5, 300)])
    for k in ("vwap", "vwap_1m", "vwap_5m", "avg_price_1m", "avg_price_5m", "avg_price_15m"):
        assert row[k] == 101.5
    assert row["volume_zscore"] == 0.0 and row["price_momentum"] == 0.0
    assert row["vwap_deviation"] == 0.0 and row["trade_frequency"] == 1.0
    assert row["warming_up"] is True
    assert type(row["timestamp"]) is int and type(row["size"]) is int


def test_zero_size_prints_fall_back_to_mean_price() -> None:
    rows = feed(FeatureEngine(), [tr(T0, 100.0, 0), tr(T0 + S, 102.0, 0)])
    assert rows[1]["vwap"] == rows[1]["vwap_1m"] == 101.0
    rows = feed(FeatureEngine(), [tr(T0, 100.0, 0), tr(T0 + S, 102.0, 10)])
    assert rows[1]["vwap"] == 102.0  # zero-size prints weigh nothing once volume exists


def test_empty_baseline_windows_use_the_std_floor() -> None:
    # One trade, then seven silent minutes: six baseline windows exist and all are empty.
    e = FeatureEngine(FeatureParams(zscore_std_floor=1.0))
    rows = feed(e, [tr(T0, size=500), tr(T0 + 7 * W, size=300)])
    assert rows[1]["warming_up"] is False
    assert rows[1]["volume_zscore"] == 300.0  # (300 − 0) / max(0, 1)


def test_identical_prices_and_volumes() -> None:
    e = FeatureEngine()
    trades = [tr(T0 + i * 10 * S, 50.0, 100) for i in range(6 * 8 + 1)]
    rows = feed(e, trades)
    last = rows[-1]
    assert last["price_momentum"] == 0.0 and last["vwap_deviation"] == 0.0
    assert last["vwap"] == last["avg_price_15m"] == 50.0
    # Windows (t−60 s, t] hold 6 trades each: V₀ = 600, baseline all 600, σ = 0 → floor.
    assert last["volume_zscore"] == 0.0 and last["warming_up"] is False
    assert last["trade_frequency"] == 6.0


def test_zscore_warm_up_counts_baseline_windows() -> None:
    t = np.array([T0 + 5 * W, T0 + 6 * W - 1, T0 + 6 * W, T0 + 30 * W], dtype=np.int64)
    np.testing.assert_array_equal(baseline_count(t, T0, W, 20), [4, 4, 5, 20])
    z, warm = volume_zscore(
        np.array([10, 10]),
        np.array([[1, 2, 3, 4, 5, 99], [1, 2, 3, 4, 5, 99]]),
        np.array([4, 5]),
        5,
        0.5,
    )
    assert warm.tolist() == [True, False] and z[0] == 0.0
    assert z[1] == pytest.approx((10 - 3) / np.sqrt(2.0))  # population std of 1..5


def test_momentum_uses_the_last_price_at_or_before_a_minute_ago() -> None:
    e = FeatureEngine()
    rows = feed(e, [tr(T0, 100.0), tr(T0 + 30 * S, 90.0), tr(T0 + W, 101.0)])
    assert rows[1]["price_momentum"] == 0.0 and rows[1]["warming_up"]
    assert rows[2]["price_momentum"] == pytest.approx(1.0)  # vs 100 at exactly t − 60 s
    rows = feed(e, [tr(T0 + W + 31 * S, 99.0)])
    assert rows[0]["price_momentum"] == pytest.approx((99 - 90) / 90 * 100)


def test_same_nanosecond_prints_see_the_tape_up_to_themselves() -> None:
    rows = feed(FeatureEngine(), [tr(T0, 100.0, 100, seq=2), tr(T0, 102.0, 300, seq=1)])
    assert [r["sequence_number"] for r in rows] == [1, 2]
    assert rows[0]["trade_frequency"] == 1.0 and rows[0]["vwap"] == 102.0
    assert rows[1]["trade_frequency"] == 2.0 and rows[1]["vwap"] == 101.5


def test_late_trade_is_placed_by_time() -> None:
    e = FeatureEngine()
    feed(e, [tr(T0, 100.0, 100), tr(T0 + 10 * S, 110.0, 100)])
    (late,) = feed(e, [tr(T0 + 5 * S, 104.0, 200)])
    # As of its own time: the trades at or before it, not the one 5 s later.
    assert late["vwap_1m"] == pytest.approx((100 * 100 + 104 * 200) / 300)
    assert late["trade_frequency"] == 2.0
    (after,) = feed(e, [tr(T0 + 20 * S, 120.0, 100)])
    assert after["trade_frequency"] == 4.0
    assert after["vwap"] == pytest.approx((10000 + 20800 + 11000 + 12000) / 500)


def test_too_late_and_duplicate_trades_get_no_row() -> None:
    e = FeatureEngine(FeatureParams(late_allowance_s=60))
    feed(e, [tr(T0), tr(T0 + 2 * W)])
    assert feed(e, [tr(T0 + 30 * S)]) == []  # 90 s behind the newest: too late
    assert e.too_late == 1
    assert feed(e, [tr(T0 + 2 * W)]) == []  # re-delivered
    assert e.duplicates == 1
    (row,) = feed(e, [tr(T0 + 2 * W + S)])
    assert row["trade_frequency"] == 2.0  # neither entered the windows


def test_excluded_conditions_are_out_of_every_feature() -> None:
    e = FeatureEngine()
    rows = feed(
        e, [tr(T0, 100.0), tr(T0 + S, 500.0, conds=(37,)), tr(T0 + 2 * S, 102.0, conds=(14,))]
    )
    assert [r["price"] for r in rows] == [100.0, 102.0]
    assert rows[1]["vwap"] == 101.0 and rows[1]["trade_frequency"] == 2.0
    assert e.excluded == 1


def test_session_resets_at_four_am_eastern() -> None:
    four = int(datetime(2024, 3, 12, 8, 0, tzinfo=UTC).timestamp()) * S  # 04:00 EDT
    assert session_of(four - 1) == 20240311 and session_of(four) == 20240312
    winter = int(datetime(2024, 1, 9, 9, 0, tzinfo=UTC).timestamp()) * S  # 04:00 EST
    assert session_of(winter - 1) == 20240108 and session_of(winter) == 20240109
    e = FeatureEngine()
    rows = feed(e, [tr(four - 2 * W, 100.0), tr(four - S, 100.0), tr(four + S, 110.0)])
    assert rows[2]["vwap"] == rows[2]["vwap_1m"] == 110.0
    assert rows[2]["trade_frequency"] == 1.0
    assert rows[2]["price_momentum"] == 0.0 and rows[2]["warming_up"]


def test_batching_does_not_change_results() -> None:
    rng = np.random.default_rng(1)
    ts = T0 + np.cumsum(rng.integers(0, 3 * S, 3000))
    trades = [tr(int(t), float(100 + rng.normal()), int(rng.integers(1, 500))) for t in ts]
    whole = feed(FeatureEngine(), trades)
    e = FeatureEngine()
    parts: list[dict[str, Any]] = []
    for i in range(0, len(trades), 37):
        parts.extend(feed(e, trades[i : i + 37]))
    assert parts == whole
