from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tradepulse.sources.replay import (
    TRADE_COLUMNS,
    ReplayError,
    detect_kind,
    read_flat_file,
)

HEADER = ",".join(TRADE_COLUMNS)
T0 = 1_763_000_000_000_000_000


def _write(path: Path, lines: list[str], gz: bool = True) -> Path:
    data = ("\n".join([HEADER, *lines]) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_reads_trades_with_conditions_and_trf(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "t.csv.gz",
        [
            f'AAPL,"12,37",,11,abc1,{T0},150.25,1001,{T0 + 100},5,3,,',
            f"MSFT,,,4,7,{T0},410.5,22,{T0 + 200},100,3,201,{T0 + 150}",
        ],
    )
    chunks = list(read_flat_file(f, ingest_ts=42))
    trades = [t for c in chunks for t in c.trades]
    assert [t.ticker for t in trades] == ["AAPL", "MSFT"]
    a, m = trades
    assert a.conditions == (12, 37) and a.timestamp == T0 + 100 and a.sequence_number == 1001
    assert a.trade_id == "abc1" and a.trf_id is None and a.ingest_ts == 42
    assert m.conditions == () and m.trf_id == 201 and m.size == 100 and m.price == 410.5
    assert chunks[-1].rows == 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (f"AAPL,,,11,x,1,-5,9,{T0},5,3,,", "non_positive_price"),
        (f"AAPL,,,11,x,1,0,9,{T0},5,3,,", "non_positive_price"),
        (f"AAPL,,,11,x,1,5,9,{T0},-1,3,,", "negative_size"),
        (f"aapl$,,,11,x,1,5,9,{T0},5,3,,", "bad_ticker"),
        (f"AAPL,,,11,x,1,abc,9,{T0},5,3,,", "wrong_type"),
        (f"AAPL,,,11,x,1,nan,9,{T0},5,3,,", "non_finite"),
        (f"AAPL,,,11,x,1,inf,9,{T0},5,3,,", "non_finite"),
        ("AAPL,,,11,x,1,5,9,,5,3,,", "missing_field:sip_timestamp"),
        (f",,,11,x,1,5,9,{T0},5,3,,", "missing_field:ticker"),
    ],
)
def test_each_bad_row_is_one_dead_letter_and_neighbours_survive(
    tmp_path: Path, line: str, reason: str
) -> None:
    good = f"AAPL,,,11,ok,1,10,1,{T0},5,3,,"
    f = _write(tmp_path / "t.csv.gz", [good, line, good.replace(",1,", ",2,", 1)])
    chunks = list(read_flat_file(f, ingest_ts=1))
    dead = [d for c in chunks for d in c.dead_letters]
    assert [d.reason for d in dead] == [reason]
    assert dead[0].source == "replay:t.csv.gz" and dead[0].raw.startswith("{")
    assert sum(len(c.trades) for c in chunks) == 2


def test_resume_skips_rows_already_read(tmp_path: Path) -> None:
    lines = [f"AAPL,,,11,x,1,10,{i},{T0 + i},5,3,," for i in range(1, 101)]
    f = _write(tmp_path / "t.csv", lines, gz=False)
    got = [
        t.sequence_number for c in read_flat_file(f, ingest_ts=1, start_row=60) for t in c.trades
    ]
    assert got == list(range(61, 101))


def test_streams_in_blocks(tmp_path: Path) -> None:
    lines = [f"AAPL,,,11,x,1,10,{i},{T0 + i},5,3,," for i in range(1, 20001)]
    f = _write(tmp_path / "t.csv.gz", lines)
    chunks = list(read_flat_file(f, ingest_ts=1, block_bytes=64 << 10))
    assert len(chunks) > 3
    assert sum(len(c.trades) for c in chunks) == 20000
    assert chunks[-1].bytes_read == f.stat().st_size


def test_rejects_a_file_that_is_not_a_flat_file(tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ReplayError, match="not a Polygon trades or quotes flat file"):
        detect_kind(f)


@pytest.mark.parametrize("third", ["correction", "correlation"])
def test_either_spelling_of_the_correction_column_is_a_trades_file(
    tmp_path: Path, third: str
) -> None:
    header = HEADER.replace("correction", third)
    f = tmp_path / "t.csv.gz"
    f.write_bytes(
        gzip.compress(f"{header}\nAAPL,12,0,11,9,{T0},150.0,7,{T0 + 5},10,3,0,0\n".encode())
    )
    assert detect_kind(f) == "trades"
    (t,) = [t for c in read_flat_file(f, ingest_ts=1) for t in c.trades]
    # Polygon's files write 0 for "no TRF"; stored as None, as live and REST trades are.
    assert t.trf_id is None and t.conditions == (12,) and t.sequence_number == 7
