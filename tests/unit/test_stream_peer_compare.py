"""The row comparison behind the stream-peer benchmark's `rows_match` (bench/stream_peer.py)."""

from __future__ import annotations

from typing import Any

from tradepulse.bench.stream_peer import compare_rows
from tradepulse.process.features import ROW_KEYS


def _row(seq: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {k: 1.5 for k in ROW_KEYS}
    row |= {"ticker": "AAPL", "timestamp": 1_000 + seq, "sequence_number": seq}
    row |= {"size": 100, "warming_up": False, "anomaly_score": None}
    return row | changes


ROWS = [_row(i) for i in range(5)]


def test_identical_rows_match() -> None:
    got = compare_rows(ROWS, list(reversed(ROWS)), complete=(True, True))
    assert got.match and got.compared == 5 and got.mismatched == 0 and got.max_abs_diff == 0


def test_a_differing_value_is_a_mismatch() -> None:
    other = [*ROWS[:2], _row(2, vwap=1.5 + 1e-6), *ROWS[3:]]
    got = compare_rows(ROWS, other, complete=(True, True))
    assert not got.match and got.mismatched == 1
    assert abs(got.max_abs_diff - 1e-6) < 1e-12


def test_a_differing_flag_is_a_mismatch() -> None:
    other = [*ROWS[:4], _row(4, warming_up=True)]
    assert compare_rows(ROWS, other, complete=(True, True)).mismatched == 1


def test_a_missing_row_fails_when_both_sides_are_complete() -> None:
    got = compare_rows(ROWS, ROWS[:4], complete=(True, True))
    assert not got.match and got.compared == 4 and got.mismatched == 0


def test_a_side_stopped_early_may_hold_a_subset_but_nothing_else() -> None:
    assert compare_rows(ROWS, ROWS[:3], complete=(True, False)).match
    assert not compare_rows(ROWS[:3], ROWS, complete=(True, False)).match
    assert not compare_rows(ROWS[:3], [*ROWS[:3], _row(9)], complete=(True, False)).match


def test_a_row_committed_twice_fails() -> None:
    got = compare_rows(ROWS, [*ROWS, ROWS[2]], complete=(True, True))
    assert not got.match and got.duplicates == 1
