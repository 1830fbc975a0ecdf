"""Shared pieces of the fault-injection suite: ground truth, what the stores hold, the
sent/stored/lost/duplicated tally every scenario prints, and the `tradepulse` processes.

Durations are short by default so the suite fits in `make test`; `make soak` sets
TRADEPULSE_SOAK=1 and every scenario runs longer (more kills, longer outages, more load)
through `scaled`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import duckdb
import orjson

from tradepulse.process.stages import all_tables
from tradepulse.store.query import QueryEngine

SOAK = os.environ.get("TRADEPULSE_SOAK") == "1"
TP = [sys.executable, "-m", "tradepulse"]
SECRET_ENV = ("POLYGON_API_KEY", "FINNHUB_API_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")


def scaled(short: float, soak: float) -> float:
    return soak if SOAK else short


@dataclass
class Tally:
    """One scenario's figures against the simulator's ground truth."""

    scenario: str
    kind: str
    sent: int
    stored: int
    duplicated: int

    @property
    def lost(self) -> int:
        return max(self.sent - self.stored, 0)

    @property
    def extra(self) -> int:
        """Stored but never sent: only a corrupt store or a wrong identity produces these."""
        return max(self.stored - self.sent, 0)

    def report(self) -> Tally:
        print(
            f"[fault] {self.scenario} {self.kind}: sent={self.sent} stored={self.stored} "
            f"lost={self.lost} duplicated={self.duplicated}"
            + (f" extra={self.extra}" if self.extra else ""),
            flush=True,
        )
        return self


def truth(truth_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((truth_dir / "summary.json").read_bytes())
    return doc


def truth_news(truth_dir: Path) -> list[dict[str, Any]]:
    path = truth_dir / "news.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def engine(data: Path) -> QueryEngine:
    return QueryEngine(data, all_tables())


def stored_per_ticker(data: Path, view: str = "trades") -> dict[str, int]:
    """Distinct identities per ticker over hot ∪ cold (the query layer's deduplicated view)."""
    rows = engine(data).sql(f"select ticker, count(*) from {view} group by 1").rows
    return {str(t): int(n) for t, n in rows}


def hot_duplicates(data: Path, table: str, key: Sequence[str]) -> int:
    """Rows beyond the first per identity inside the hot SQLite file."""
    path = data / "hot.sqlite3"
    if not path.exists():
        return 0
    cols = ", ".join(key)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            (n,) = conn.execute(
                f"select coalesce(sum(c - 1), 0) from (select count(*) c from {table} "
                f"group by {cols})"
            ).fetchone()
        except sqlite3.OperationalError:  # the table does not exist (yet)
            return 0
    return int(n)


def cold_duplicates(data: Path, table: str, key: Sequence[str]) -> int:
    """Rows beyond the first per identity across the table's raw Parquet files: a flush
    repeated after a kill must rewrite its files, never add a second copy."""
    files = list((data / "cold" / table).glob("**/*.parquet"))
    if not files:
        return 0
    cols = ", ".join(key)
    paths = ", ".join(f"'{f}'" for f in files)
    con = duckdb.connect()
    try:
        (n,) = con.execute(
            f"select coalesce(sum(c - 1), 0) from (select count(*) c from "
            f"read_parquet([{paths}], hive_partitioning = true) group by {cols})"
        ).fetchone() or (0,)
    finally:
        con.close()
    return int(n)


def duplicates(data: Path, table: str, key: Sequence[str]) -> int:
    return hot_duplicates(data, table, key) + cold_duplicates(data, table, key)


TRADE_KEY = ("ticker", "day", "sequence_number")
COLD_TRADE_KEY = ("ticker", "date", "sequence_number")


def trade_tally(scenario: str, data: Path, truth_dir: Path) -> Tally:
    sent = sum(truth(truth_dir)["valid_trades"].values())
    stored = sum(stored_per_ticker(data).values())
    dup = hot_duplicates(data, "trades", TRADE_KEY) + cold_duplicates(
        data, "trades", COLD_TRADE_KEY
    )
    return Tally(scenario, "trades", sent, stored, dup).report()


def hot_count(data: Path, table: str) -> int:
    path = data / "hot.sqlite3"
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute(f"select count(*) from {table}").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return 0


def eventually(cond: Any, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll `cond` until it holds (True) or `timeout_s` passes (False); bounded in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval_s)
    return bool(cond())


def wait_until(cond: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    if not eventually(cond, timeout_s, interval_s):
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def base_env(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment of a `tradepulse` child: no developer settings or keys leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRADEPULSE_", "AWS_")) and k not in SECRET_ENV
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


_STARTED: list[Proc] = []


def reap() -> None:
    """Kill every child a test started and left running (a failed assertion mid-test)."""
    while _STARTED:
        proc = _STARTED.pop()
        if proc.alive():
            proc.kill()


class Proc:
    """A `tradepulse` child with stdout/stderr in files (a pipe nobody reads can block it)."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        cwd: Path,
        name: str,
        *,
        argv: Sequence[str] | None = None,
    ) -> None:
        """Runs `tradepulse <args>`, or `argv` as given (e.g. the CLI behind a fault)."""
        self.name = name
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.err"
        self._out: IO[bytes] = self.out_path.open("wb")
        self._err: IO[bytes] = self.err_path.open("wb")
        self.popen = subprocess.Popen(
            list(argv) if argv is not None else [*TP, *args],
            env=env,
            cwd=cwd,
            stdout=self._out,
            stderr=self._err,
        )
        _STARTED.append(self)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, no drain, no flush — a power cut for this process."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._close_files()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.alive():
            self.popen.send_signal(sig)
        try:
            rc = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=30)
            raise AssertionError(f"{self.name} did not stop within {timeout_s:.0f} s") from None
        finally:
            self._close_files()
        return rc

    def wait(self, timeout_s: float) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        finally:
            if not self.alive():
                self._close_files()

    def _close_files(self) -> None:
        for fh in (self._out, self._err):
            with contextlib.suppress(OSError):
                fh.close()


@contextlib.contextmanager
def sim_process(cwd: Path, env: dict[str, str], *args: str) -> Iterator[tuple[Proc, str]]:
    """`tradepulse sim` on a free port; yields the process and its base URL; stops it with
    SIGINT (which writes the final ground truth) on exit."""
    sim = Proc(["sim", "--port", "0", *args], env, cwd, "sim")
    try:
        url = ""

        def listening() -> bool:
            nonlocal url
            m = re.search(r"simulator REST (http://\S+)", sim.stdout)
            if m:
                url = m.group(1)
            return bool(url) or not sim.alive()

        wait_until(listening, 30, "the simulator to listen")
        assert url, f"simulator did not start:\n{sim.stderr}"
        yield sim, url
    finally:
        if sim.alive():
            sim.stop(signal.SIGINT)
