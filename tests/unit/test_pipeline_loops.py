"""The log → processor → writer loops: exact accounting, and a failing store ends the run with
the error instead of hanging it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tradepulse.config import Settings
from tradepulse.log.embedded import Frame
from tradepulse.market_time import NS_PER_MS
from tradepulse.process.pipeline import Processor
from tradepulse.runner import Pipeline, StoreWriteError
from tradepulse.store.base import StoreBatch, WriteResult


def _frame(seq: int) -> Frame:
    now = time.time_ns()
    ev = {"ev": "T", "sym": "AAPL", "p": 10.0, "s": 5, "t": now // NS_PER_MS, "q": seq}
    return Frame(recv_ts=now, raw=orjson.dumps([ev, {"ev": "T", "sym": "bad!"}]))


def _pipeline(write: Any) -> Pipeline:
    settings = Settings(batch_max_events=64, batch_max_ms=5.0, ws_queue_frames=32)
    return Pipeline(settings, Processor([], max_skew_ns=3600 * 10**9), write)


@pytest.mark.usefixtures("clean_env")
async def test_every_event_is_written_once_and_counted() -> None:
    written: list[StoreBatch] = []

    def write(batch: StoreBatch) -> WriteResult:
        written.append(batch)
        return WriteResult(len(batch.trades), 0, 0, len(batch.dead_letters), 0.001)

    p = _pipeline(write)
    loops = [asyncio.create_task(p.process_loop()), asyncio.create_task(p.write_loop())]
    for i in range(200):
        await p.log.put(_frame(i))
    await p.close_log()
    await asyncio.wait_for(asyncio.gather(*loops), 10)
    seqs = [t.sequence_number for b in written for t in b.trades]
    assert seqs == list(range(200))
    assert p.stats.trades_stored == 200 and p.stats.dead_letters == 200
    assert p.lag() == 0


@pytest.mark.usefixtures("clean_env")
async def test_a_failing_store_stops_the_loops_with_the_error() -> None:
    calls = 0

    def write(batch: StoreBatch) -> WriteResult:
        nonlocal calls
        calls += 1
        raise OSError(28, "No space left on device")

    p = _pipeline(write)
    loops = [asyncio.create_task(p.process_loop()), asyncio.create_task(p.write_loop())]
    for i in range(100):  # more frames than the log holds: nothing may block forever
        put = asyncio.create_task(p.log.put(_frame(i)))
        await asyncio.wait([put, asyncio.create_task(p.failed.wait())], timeout=5,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if p.failed.is_set():
            put.cancel()
            break
    await asyncio.wait_for(p.failed.wait(), 5)
    await p.close_log()
    await asyncio.wait_for(asyncio.gather(*loops), 10)
    assert calls == 1
    with pytest.raises(StoreWriteError, match="No space left"):
        p.raise_if_failed()
