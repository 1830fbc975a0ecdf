"""Faults injected at the hot store's write boundary, in this process or in a `tradepulse`
child (`inject_cmd` starts the CLI with the fault named in the FAULT_INJECT variable).

* ``slow_commit:<s>``: every COMMIT of the store's writer connection sleeps first, inside
  the interval the store times (BEGIN → COMMIT), as a slow or saturated disk would;
* ``full_after:<pages>``: the writer connection may grow the database file by only <pages>
  more pages (SQLite's `PRAGMA max_page_count`); past it SQLite fails the write with
  SQLITE_FULL, "database or disk is full" — the same error and code path as a full disk.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from tradepulse.store.hot.sqlite import SQLiteHotStore

ENV = "FAULT_INJECT"
HERE = Path(__file__).resolve().parent


class SlowCommit(sqlite3.Connection):
    delay_s = 0.0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and SlowCommit.delay_s:
            time.sleep(SlowCommit.delay_s)
        return super().execute(sql, *args)


_original_connect = SQLiteHotStore._connect


def _slow_writer(self: SQLiteHotStore) -> sqlite3.Connection:
    # Only the writer's connection gets the slow class; readers stay as they are.
    real = sqlite3.connect
    sqlite3.connect = functools.partial(real, factory=SlowCommit)  # type: ignore[assignment]
    try:
        return _original_connect(self)
    finally:
        sqlite3.connect = real


def slow_commits(delay_s: float) -> None:
    SlowCommit.delay_s = delay_s
    SQLiteHotStore._connect = _slow_writer  # type: ignore[method-assign]


def full_after(pages: int) -> None:
    def connect(self: SQLiteHotStore) -> sqlite3.Connection:
        conn = _original_connect(self)
        (count,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count = {int(count) + pages}")
        return conn

    SQLiteHotStore._connect = connect  # type: ignore[method-assign]


def restore() -> None:
    SlowCommit.delay_s = 0.0
    SQLiteHotStore._connect = _original_connect  # type: ignore[method-assign]


def apply(spec: str) -> None:
    kind, _, arg = spec.partition(":")
    if kind == "slow_commit":
        slow_commits(float(arg))
    elif kind == "full_after":
        full_after(int(arg))
    else:
        raise ValueError(f"unknown fault {spec!r}")


def inject_cmd(*args: str) -> list[str]:
    """argv running `tradepulse <args>` with the fault in $FAULT_INJECT applied first."""
    boot = (
        f"import os, sys; sys.path.insert(0, {str(HERE)!r}); import inject; "
        f"inject.apply(os.environ[{ENV!r}]); sys.argv[0] = 'tradepulse'; "
        "from tradepulse.cli import main; main()"
    )
    return [sys.executable, "-c", boot, *args]


def env_with(env: dict[str, str], spec: str) -> dict[str, str]:
    return {**env, ENV: spec}
