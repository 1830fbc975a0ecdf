"""Scenario 5: the embedded backend's disk fails: the data dir cannot be used, the hot store
fills up mid-run, the cold store cannot write for a while.

How "disk full" is made without root (no small loop device or tmpfs): the hot store's
writer connection gets SQLite's `PRAGMA max_page_count` a few hundred pages above its size
(`inject.full_after`), so SQLite fails a write with SQLITE_FULL, "database or disk is full" —
the error and code path of a full disk; the cold store's file write raises
OSError(ENOSPC) at the write boundary while the test says the disk is full. An unwritable
data dir is a path a regular file already holds (permissions do not stop root).

Expected: a clear one-line error and exit code 1, no traceback; the SQLite file passes
`integrity_check` and its per-batch invariants hold (nothing half-written); after space
returns a restart catches up with every trade (filled from REST), and the cold flusher
resumes by itself during the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from fault_harness import (
    COLD_TRADE_KEY,
    Proc,
    base_env,
    cold_duplicates,
    hot_count,
    sim_process,
    trade_tally,
    wait_until,
)
from inject import env_with, inject_cmd

from tradepulse.config import load_settings
from tradepulse.runner import run_embedded
from tradepulse.sim import SimConfig
from tradepulse.store.cold import parquet

TICKERS = "AAPL,MSFT,NVDA"

pytestmark = pytest.mark.timeout(180)


def _assert_one_clear_line(proc: Proc, *needles: str) -> str:
    err = proc.stderr
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tradepulse: "), err
    for needle in needles:
        assert needle in last, last
    return last


def test_unusable_data_dir_is_one_clear_error(tmp_path: Path) -> None:
    """A data dir a regular file holds, and one whose store path is a directory."""
    file_dir = tmp_path / "file"
    file_dir.write_text("not a directory")
    dir_store = tmp_path / "dirstore"
    (dir_store / "hot.sqlite3").mkdir(parents=True)
    env = base_env(tmp_path, TRADEPULSE_WARMUP_S="0")
    args = ["run", "--duration", "30", "--no-api", "--data-dir"]
    runs = {
        data: Proc([*args, str(data)], env, tmp_path, data.name) for data in (file_dir, dir_store)
    }
    for data, run in runs.items():
        assert run.wait(120) == 1, run.stderr
        print(f"[fault] unusable data dir: {_assert_one_clear_line(run, str(data))}")


def _invariants(db: Path) -> None:
    """What one committed batch keeps consistent: a half-applied batch would break these."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        assert conn.execute("pragma integrity_check").fetchall() == [("ok",)]
        volume = conn.execute(
            "select count(*) from (select ticker, day, sum(size) v from trades group by 1, 2) t "
            "full join day_volume d using (ticker, day) where t.v is not d.volume"
        ).fetchone()[0]
        assert volume == 0, "day_volume disagrees with the stored trades"
        latest = conn.execute(
            "select count(*) from trade_latest l where l.sequence_number != (select "
            "t.sequence_number from trades t where t.ticker = l.ticker and t.day = l.day "
            "order by t.timestamp desc, t.sequence_number desc limit 1)"
        ).fetchone()[0]
        assert latest == 0, "trade_latest is not the newest stored trade"


def test_hot_store_full_mid_run_then_space_returns(tmp_path: Path) -> None:
    data, truth_dir = tmp_path / "data", tmp_path / "truth"
    sim_args = ["--rate", "1500", "--tickers", TICKERS, "--seed", "12",
                "--truth-dir", str(truth_dir), "--news-rate", "0"]  # fmt: skip
    with sim_process(tmp_path, base_env(tmp_path), *sim_args) as (sim, url):
        env = base_env(
            tmp_path,
            POLYGON_API_KEY="simulator",
            TRADEPULSE_POLYGON_WS_URL=url.replace("http://", "ws://") + "/stocks",
            TRADEPULSE_POLYGON_REST_URL=url,
            TRADEPULSE_TICKERS=TICKERS,
            TRADEPULSE_COLD_FLUSH_S="1",
        )
        args = ["run", "--data-dir", str(data), "--no-api"]
        full = Proc(args, env_with(env, "full_after:400"), tmp_path, "full", argv=inject_cmd(*args))
        assert full.wait(120) == 1
        line = _assert_one_clear_line(full, "database or disk is full")
        stored_at_failure = hot_count(data, "trades")
        print(f"[fault] disk-full: {line} ({stored_at_failure} trades committed before)")
        assert stored_at_failure > 0
        _invariants(data / "hot.sqlite3")

        # Space is back: the same data dir, no limit.
        again = Proc(args, env, tmp_path, "again")
        wait_until(
            lambda: hot_count(data, "trades") > stored_at_failure or not again.alive(),
            60,
            "the restarted run to commit",
        )
        time.sleep(3.0)
        assert sim.stop(signal.SIGINT) == 0
        time.sleep(1.0)
        assert again.stop(signal.SIGTERM) == 0, again.stderr

    _invariants(data / "hot.sqlite3")
    tally = trade_tally("disk-full", data, truth_dir)
    assert (tally.duplicated, tally.extra) == (0, 0)
    assert tally.lost == 0, f"{tally.lost} trades sent while the store was full were not filled"


@pytest.mark.usefixtures("clean_env")
async def test_cold_store_enospc_is_reported_and_flushing_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    disk_full = False
    real_write = parquet._write_atomic

    def write_atomic(table: Any, path: Path) -> None:
        if disk_full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(table, path)

    monkeypatch.setattr(parquet, "_write_atomic", write_atomic)
    settings = load_settings(
        data_dir=data, tickers=TICKERS, cold_flush_s=0.5, warmup_s=0, batch_max_ms=10.0
    )
    sim = SimConfig(
        tickers=TICKERS.split(","), rate=1500, seed=6, truth_dir=data / "truth", duration_s=9.0
    )
    caplog.set_level(logging.ERROR, logger="tradepulse.run")
    run = asyncio.create_task(run_embedded(settings, sim_config=sim, serve_api=False,
                                           out=lambda _l: None))  # fmt: skip

    def cold_position() -> int:
        path = data / "hot.sqlite3"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                row = conn.execute(
                    "select value from positions where key = 'cold:trades'"
                ).fetchone()
        except sqlite3.OperationalError:  # not created yet
            return 0
        return int(row[0]) if row else 0

    async def until(cond: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not cond() and time.monotonic() < deadline:
            assert not run.done(), run.exception()
            await asyncio.sleep(0.1)
        return bool(cond())

    assert await until(lambda: cold_position() > 0, 60), "no cold flush before the fault"
    disk_full = True
    await asyncio.sleep(2.0)
    stuck_at = cold_position()
    disk_full = False
    resumed = await until(lambda: cold_position() > stuck_at, 4.0)
    summary = await asyncio.wait_for(run, 60)

    failures = [r.getMessage() for r in caplog.records if "No space left" in r.getMessage()]
    print(f"[fault] cold-enospc: {len(failures)} failed flushes reported, resumed={resumed}")
    assert failures, "a failed cold flush was not reported"
    assert resumed, "the cold flusher did not resume when space returned (only at shutdown)"
    tally = trade_tally("cold-enospc", data, data / "truth")
    assert summary.trades_stored == tally.stored
    assert (tally.lost, tally.duplicated) == (0, 0)
    assert cold_duplicates(data, "trades", COLD_TRADE_KEY) == 0
