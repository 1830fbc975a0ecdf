"""The embedded dead-letter queue: the hot store's `dlq` table plus a side table of state.

The pipeline writes each dead letter into `dlq` in the same transaction as its batch
(`store/hot/sqlite.py`), and the cold flusher copies that table to Parquet: it is the history
of everything ever rejected and is never rewritten here. What the lifecycle changes lives in
`dlq_redrive` (id → state, retries, latest reason and attempts, last attempt, lease), in the
same file: a dead letter is in the queue while it has no row there or its row says `queued`.
Leaving the queue (`redriven`, `archived`) only flips that state, so history and the cold
copy stay as they were.

Hot retention deletes `dlq` rows older than 48 h once they are in Parquet; a dead letter left
in the queue that long (no redrive worker running) leaves the queue with its row, and stays in
the cold store's `dlq/` history.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tradepulse.events import DeadLetter
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.validate.dlq.entry import DlqEntry

__all__ = ["SqliteDeadLetterQueue"]

_SIDE = """
CREATE TABLE IF NOT EXISTS dlq_redrive (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'queued',
    retries INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER,
    reason TEXT,
    last_attempt INTEGER,
    lease_until INTEGER
)
"""

# The columns of a queued entry: the history row overlaid with its latest state.
_SELECT = """
SELECT d.id, coalesce(r.reason, d.reason), d.raw, d.source, d.first_seen,
       coalesce(r.attempts, d.attempts), d.ticker, coalesce(r.retries, 0),
       coalesce(r.last_attempt, d.first_seen)
FROM dlq d LEFT JOIN dlq_redrive r ON r.id = d.id
WHERE coalesce(r.state, 'queued') = 'queued'
"""


class SqliteDeadLetterQueue:
    """The DLQ of the embedded backend over `<data_dir>/hot.sqlite3` (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        has_dlq = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dlq'"
        ).fetchone()
        if not has_dlq:
            # A fresh file gets the hot store's whole schema, so the pipeline can open it later.
            from tradepulse.store.hot.sqlite import SQLiteHotStore

            SQLiteHotStore(self.path, [], retention_ns=48 * 3600 * NS_PER_S).close()
        self._conn.execute(_SIDE)

    @property
    def location(self) -> str:
        return str(self.path)

    def send(self, dead: list[DeadLetter]) -> None:
        with self._lock:
            self._conn.executemany(
                "INSERT INTO dlq (reason, raw, source, first_seen, attempts, ticker) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(d.reason, d.raw, d.source, d.first_seen, d.attempts, d.ticker) for d in dead],
            )

    def count(self) -> tuple[int, int]:
        """(waiting, leased) entries."""
        now = now_ns()
        with self._lock:
            row = self._conn.execute(
                "SELECT coalesce(sum(coalesce(r.lease_until, 0) <= ?), 0), "
                "coalesce(sum(coalesce(r.lease_until, 0) > ?), 0) "
                "FROM dlq d LEFT JOIN dlq_redrive r ON r.id = d.id "
                "WHERE coalesce(r.state, 'queued') = 'queued'",
                (now, now),
            ).fetchone()
        return int(row[0]), int(row[1])

    def peek(self, limit: int) -> list[DlqEntry]:
        with self._lock:
            rows = self._conn.execute(_SELECT + " ORDER BY d.id LIMIT ?", (limit,)).fetchall()
        return [_entry(r) for r in rows]

    def lease(self, limit: int, lease_s: float) -> list[DlqEntry]:
        now = now_ns()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = self._conn.execute(
                    _SELECT + " AND coalesce(r.lease_until, 0) <= ? ORDER BY d.id LIMIT ?",
                    (now, limit),
                ).fetchall()
                until = now + int(lease_s * NS_PER_S)
                self._conn.executemany(
                    "INSERT INTO dlq_redrive (id, lease_until) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
                    [(r[0], until) for r in rows],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return [_entry(r) for r in rows]

    def release(self, entries: Sequence[DlqEntry]) -> None:
        self._update(
            "UPDATE dlq_redrive SET lease_until = NULL WHERE id = ?",
            [(int(e.dlq_id),) for e in entries],
        )

    def requeue(self, entries: Sequence[DlqEntry]) -> None:
        self._update(
            "UPDATE dlq_redrive SET retries = ?, attempts = ?, reason = ?, last_attempt = ?, "
            "lease_until = NULL WHERE id = ?",
            [(e.retries, e.attempts, e.reason, e.last_attempt, int(e.dlq_id)) for e in entries],
        )

    def remove(self, entries: Sequence[DlqEntry], outcome: str) -> None:
        self._update(
            "UPDATE dlq_redrive SET state = ?, retries = ?, attempts = ?, reason = ?, "
            "last_attempt = ?, lease_until = NULL WHERE id = ?",
            [
                (outcome, e.retries, e.attempts, e.reason, e.last_attempt, int(e.dlq_id))
                for e in entries
            ],
        )

    def states(self) -> dict[str, int]:
        """How many dead letters are in each state (queued, redriven, archived)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT coalesce(r.state, 'queued'), count(*) FROM dlq d "
                "LEFT JOIN dlq_redrive r ON r.id = d.id GROUP BY 1"
            ).fetchall()
        return {str(state): int(n) for state, n in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _update(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        if not params:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise


def _entry(row: tuple[Any, ...]) -> DlqEntry:
    return DlqEntry(
        dlq_id=str(row[0]),
        reason=str(row[1]),
        raw=str(row[2] or ""),
        source=str(row[3] or ""),
        first_seen=int(row[4] or 0),
        attempts=int(row[5] or 1),
        ticker=None if row[6] is None else str(row[6]),
        retries=int(row[7] or 0),
        last_attempt=int(row[8] or 0),
    )
