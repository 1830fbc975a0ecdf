"""The hot store under the runner's threading: a writer thread, event-loop readers, a flusher
thread and a query process, all at once. Every row ends up exactly once everywhere."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tradepulse.events import Trade
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.store.base import DerivedTable, StoreBatch
from tradepulse.store.cold.parquet import ParquetColdStore
from tradepulse.store.hot.sqlite import SQLiteHotStore
from tradepulse.store.query import QueryEngine

pytestmark = pytest.mark.integration

ANOMALIES = DerivedTable(
    name="anomalies",
    columns={"ticker": "TEXT", "timestamp": "INTEGER", "sequence_number": "INTEGER"},
    key=("ticker", "timestamp", "sequence_number"),
    time_column="timestamp",
    cold=True,
)
TICKERS = ("AAPL", "MSFT", "NVDA")
BATCHES = 60
PER_BATCH = 300


def batch(i: int, t0: int) -> StoreBatch:
    trades = [
        Trade(
            TICKERS[j % 3],
            100.0,
            1,
            t0 + (i * PER_BATCH + j) * 1000,
            t0,
            i * PER_BATCH + j,
            conditions=(1,),
        )
        for j in range(PER_BATCH)
    ]
    rows = [
        {"ticker": t.ticker, "timestamp": t.timestamp, "sequence_number": t.sequence_number}
        for t in trades[::10]
    ]
    return StoreBatch(trades=trades, derived={"anomalies": rows}, positions={"src": str(i)})


async def test_reads_flushes_and_queries_during_writes(tmp_path: Path) -> None:
    t0 = now_ns() - 60 * NS_PER_S
    hot = SQLiteHotStore(tmp_path / "hot.sqlite3", [ANOMALIES], retention_ns=3600 * NS_PER_S)
    cold = ParquetColdStore(tmp_path / "cold", hot, [ANOMALIES])
    engine = QueryEngine(tmp_path, [ANOMALIES])
    stop = threading.Event()
    errors: list[BaseException] = []
    flushed = 0

    def flusher() -> None:
        nonlocal flushed
        try:
            while not stop.is_set():
                flushed += cold.flush()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def querier() -> None:
        try:
            last = 0
            while not stop.is_set():
                n = engine.sql("SELECT count(*) FROM trades").rows[0][0]
                assert n >= last, "a committed row disappeared from the trades view"
                last = n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flusher), threading.Thread(target=querier)]
    for th in threads:
        th.start()
    reads = 0

    async def read_loop() -> None:
        nonlocal reads
        while not stop.is_set():
            for ticker in TICKERS:
                hot.latest_trade(ticker)
                hot.latest_quote(ticker)
                hot.rows_since("anomalies", ticker, t0, 50)
            hot.known_tickers()
            reads += 1
            await asyncio.sleep(0)

    reader = asyncio.create_task(read_loop())
    try:
        for i in range(BATCHES):
            result = await asyncio.to_thread(hot.write, batch(i, t0))
            assert result.trades_inserted == PER_BATCH
        # A replayed tail is all duplicates and changes nothing.
        again = await asyncio.to_thread(hot.write, batch(BATCHES - 1, t0))
        assert (again.trades_inserted, again.trades_duplicate) == (0, PER_BATCH)
    finally:
        stop.set()
        await reader
        for th in threads:
            th.join()
    assert not errors, errors
    assert reads > 0
    flushed += cold.flush()

    total = BATCHES * PER_BATCH
    assert flushed == total + total // 10
    parquet_rows = sum(
        pq.read_metadata(p).num_rows for p in (tmp_path / "cold" / "trades").rglob("*.parquet")
    )
    assert parquet_rows == total
    assert engine.sql("SELECT count(*), count(DISTINCT sequence_number) FROM trades").rows == [
        (total, total)
    ]
    assert engine.sql("SELECT count(*) FROM anomalies").rows == [(total // 10,)]
    assert hot.position("src") == str(BATCHES - 1)
    latest = hot.latest_trade("NVDA")
    assert latest is not None and latest["sequence_number"] == total - 1
    assert latest["volume"] == total // 3
    assert len(hot.trades_since(t0)) == total
    hot.close()
