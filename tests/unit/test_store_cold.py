"""ParquetColdStore: Hive layout, rowid-range file names, repeatable flushes, retention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tradepulse.events import DeadLetter, Quote, Trade
from tradepulse.market_time import NS_PER_S
from tradepulse.store.base import DerivedTable, StoreBatch
from tradepulse.store.cold.parquet import ParquetColdStore, trading_days
from tradepulse.store.hot.sqlite import SQLiteHotStore, cold_position_key

pytestmark = pytest.mark.unit

T0 = 1_709_650_800 * NS_PER_S  # 2024-03-05 10:00 ET (15:00 UTC)
HOUR = 3600 * NS_PER_S

BARS = DerivedTable(
    name="bars_1m",
    columns={"ticker": "TEXT", "start": "INTEGER", "close": "REAL"},
    key=("ticker", "start"),
    mode="replace",
    time_column="start",
    cold=True,
)
HOT_ONLY = DerivedTable(
    name="features_latest",
    columns={"ticker": "TEXT", "timestamp": "INTEGER"},
    key=("ticker",),
    mode="newer",
    order_by=("timestamp",),
    time_column="timestamp",
)
TABLES = [BARS, HOT_ONLY]


def trade(seq: int, ticker: str = "AAPL", ts: int | None = None) -> Trade:
    ts = T0 + seq * NS_PER_S if ts is None else ts
    return Trade(ticker, 10.0 + seq, seq, ts, ts + 1, seq, conditions=(1,), trf_id=None)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SQLiteHotStore, ParquetColdStore]]:
    hot = SQLiteHotStore(tmp_path / "hot.sqlite3", TABLES, retention_ns=48 * HOUR)
    cold = ParquetColdStore(tmp_path / "cold", hot, TABLES, expire_hot=False)
    yield hot, cold
    cold.close()
    hot.close()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def parquet_rows(root: Path, table: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (root / table).rglob("*.parquet"))


def test_trading_days_vectorised() -> None:
    import numpy as np

    # 03:59 UTC on 2024-03-06 is still 2024-03-05 in New York (EST, UTC-5).
    ts = np.array([T0, T0 + 13 * HOUR - 1, T0 + 14 * HOUR], dtype=np.int64)
    assert trading_days(ts).tolist() == [20240305, 20240305, 20240306]


def test_flush_layout_and_names(stores: tuple[SQLiteHotStore, ParquetColdStore]) -> None:
    hot, cold = stores
    hot.write(
        StoreBatch(
            trades=[trade(1), trade(2, "MSFT"), trade(3), trade(4, ts=T0 + 14 * HOUR)],
            quotes=[Quote("AAPL", 1.0, 1, 2.0, 1, T0, T0, 1)],
            dead_letters=[DeadLetter("bad", "{", "ws", T0, 1, "../../etc")],
            derived={
                "bars_1m": [{"ticker": "AAPL", "start": T0, "close": 1.0}],
                "features_latest": [{"ticker": "AAPL", "timestamp": T0}],
            },
        )
    )
    assert cold.flush() == 4 + 1 + 1 + 1
    root = cold.root
    assert files(root) == [
        "bars_1m/date=2024-03-05/ticker=AAPL/part-1-1.parquet",
        "dlq/date=2024-03-05/part-1-1.parquet",
        "quotes/date=2024-03-05/ticker=AAPL/part-1-1.parquet",
        "trades/date=2024-03-05/ticker=AAPL/part-1-3.parquet",
        "trades/date=2024-03-05/ticker=MSFT/part-2-2.parquet",
        "trades/date=2024-03-06/ticker=AAPL/part-4-4.parquet",
    ]
    t = pq.read_table(root / "trades/date=2024-03-05/ticker=AAPL/part-1-3.parquet")
    assert "ticker" not in t.column_names  # lives in the path
    assert t.column("sequence_number").to_pylist() == [1, 3]
    assert t.column("conditions").to_pylist() == ["[1]", "[1]"]
    assert (
        pq.read_metadata(root / "trades/date=2024-03-05/ticker=AAPL/part-1-3.parquet")
        .row_group(0)
        .column(0)
        .compression
        == "SNAPPY"
    )
    d = pq.read_table(root / "dlq/date=2024-03-05/part-1-1.parquet")
    assert d.column("ticker").to_pylist() == ["../../etc"]  # a data column, not a path
    assert hot.position(cold_position_key("trades")) == "4"
    assert cold.flush() == 0  # nothing new


def test_second_flush_copies_only_new_rows(
    stores: tuple[SQLiteHotStore, ParquetColdStore],
) -> None:
    hot, cold = stores
    hot.write(StoreBatch(trades=[trade(1), trade(2)]))
    cold.flush()
    hot.write(StoreBatch(trades=[trade(2), trade(3)]))  # one duplicate, one new
    assert cold.flush() == 1
    first, second = files(cold.root)
    assert first == "trades/date=2024-03-05/ticker=AAPL/part-1-2.parquet"
    # Rowids may have gaps (an ignored duplicate can use one); they only ever grow.
    lo, hi = (int(x) for x in second.removesuffix(".parquet").split("part-")[1].split("-"))
    assert 2 < lo == hi


def test_repeated_flush_after_lost_position_rewrites_same_files(
    stores: tuple[SQLiteHotStore, ParquetColdStore],
) -> None:
    hot, cold = stores
    hot.write(StoreBatch(trades=[trade(i) for i in range(1, 6)] + [trade(1, "MSFT")]))
    cold.flush()
    before = files(cold.root)
    # A crash between writing the files and recording the position:
    hot.set_position(cold_position_key("trades"), "0")
    assert cold.flush() == 6
    assert files(cold.root) == before
    assert parquet_rows(cold.root, "trades") == 6


def test_lost_position_with_new_rows_does_not_duplicate(
    stores: tuple[SQLiteHotStore, ParquetColdStore],
) -> None:
    hot, cold = stores
    hot.write(StoreBatch(trades=[trade(1), trade(2)]))
    cold.flush()
    hot.set_position(cold_position_key("trades"), "0")
    hot.write(StoreBatch(trades=[trade(3)]))  # arrives before the retried flush
    cold.flush()
    assert files(cold.root) == ["trades/date=2024-03-05/ticker=AAPL/part-1-3.parquet"]
    assert parquet_rows(cold.root, "trades") == 3


def test_replaced_rows_are_flushed_again_with_their_rowid(
    stores: tuple[SQLiteHotStore, ParquetColdStore],
) -> None:
    hot, cold = stores
    bar: dict[str, Any] = {"ticker": "AAPL", "start": T0, "close": 1.0}
    hot.write(StoreBatch(derived={"bars_1m": [bar]}))
    cold.flush()
    hot.write(StoreBatch(derived={"bars_1m": [{**bar, "close": 2.0}]}))
    assert cold.flush() == 1
    tables = [pq.read_table(p) for p in sorted((cold.root / "bars_1m").rglob("*.parquet"))]
    assert [(t.column("_rid")[0].as_py(), t.column("close")[0].as_py()) for t in tables] == [
        (1, 1.0),
        (2, 2.0),
    ]


def test_flush_then_expire_keeps_unflushed_rows(tmp_path: Path) -> None:
    hot = SQLiteHotStore(tmp_path / "hot.sqlite3", TABLES, retention_ns=1)
    cold = ParquetColdStore(tmp_path / "cold", hot, TABLES)  # expires after each flush
    try:
        hot.write(StoreBatch(trades=[trade(1), trade(2)]))
        cold.flush()
        assert hot.count("trades") == 0  # all old and all in Parquet
        hot.write(StoreBatch(trades=[trade(3)]))
        assert hot.count("trades") == 1
        assert parquet_rows(cold.root, "trades") == 2
        assert hot.latest_trade("AAPL") is not None
    finally:
        hot.close()


def test_chunked_flush(
    stores: tuple[SQLiteHotStore, ParquetColdStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tradepulse.store.cold import parquet

    monkeypatch.setattr(parquet, "_CHUNK_ROWS", 2)
    hot, cold = stores
    hot.write(StoreBatch(trades=[trade(i) for i in range(1, 6)]))
    assert cold.flush() == 5
    assert len(files(cold.root)) == 3
    assert parquet_rows(cold.root, "trades") == 5


def test_failed_write_leaves_no_half_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import pyarrow as pa

    from tradepulse.store.cold import parquet

    def full_disk(table: Any, where: Any, **_kw: Any) -> None:
        where.write(b"PAR1 half a row group")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parquet.pq, "write_table", full_disk)
    target = tmp_path / "part-1-2.parquet"
    with pytest.raises(OSError, match="No space left"):
        parquet._write_atomic(pa.table({"x": [1, 2]}), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
