"""The embedded cold store: Snappy Parquet files in a Hive layout, copied from the hot store.

Layout (one directory per table, partitioned by the ET trading day of the row's event time)::

    <root>/trades/date=YYYY-MM-DD/ticker=T/part-<first_rowid>-<last_rowid>.parquet
    <root>/quotes/date=YYYY-MM-DD/ticker=T/part-….parquet
    <root>/<derived>/date=YYYY-MM-DD/ticker=T/part-….parquet     (DerivedTable.cold=True)
    <root>/dlq/date=YYYY-MM-DD/part-….parquet

Partition columns live in the path only (the Hive convention; DuckDB's hive_partitioning and
pyarrow datasets put them back as columns). The dlq is partitioned by date only: a dead
letter's ticker is often the malformed value that got it rejected, so it must never become a
path component; it stays a data column. A derived table without a `ticker` column is
partitioned by date only, one without a time column by ticker only.

Exactly-once copy: each flush reads the rows above the table's position (`cold:<table>` in
the hot store's `positions`, the last rowid copied), writes them to a temp file, fsyncs,
renames, and only then records the new position. File names are the rowid range they cover.
A flush that died before recording its position left files whose first rowid is above the
recorded position; the next flush deletes those in every partition it writes to before
writing, and re-reads the same rows (rowids only grow, and retention never deletes rows above
the position), so a repeated flush rewrites the same rows instead of duplicating them.

Derived tables written with mode "replace"/"newer" get a fresh rowid for every new version,
so a later version is flushed again; their files keep the rowid in a `_rid` column and the
query layer keeps the highest `_rid` per key.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tradepulse.market_time import NS_PER_S, day_iso, now_ns, trading_day
from tradepulse.store.base import DerivedTable
from tradepulse.store.hot.sqlite import (
    DLQ_COLUMNS,
    QUOTE_COLUMNS,
    TRADE_COLUMNS,
    SQLiteHotStore,
    cold_position_key,
)

__all__ = [
    "ColdTable",
    "ParquetColdStore",
    "arrow_type",
    "cold_tables",
    "column_arrays",
    "partition_groups",
    "quote_ident",
    "to_array",
    "trading_days",
]

_NS_PER_HOUR = 3600 * NS_PER_S
_CHUNK_ROWS = 250_000
PART_RE = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")


@dataclass(frozen=True, slots=True)
class ColdTable:
    """How one hot table is laid out in Parquet (shared with the query layer)."""

    name: str
    columns: Mapping[str, str]  # hot data columns and their SQLite affinities
    rid: str  # the hot table's AUTOINCREMENT rowid column
    key: tuple[str, ...]  # identity: a row present in several places counts once
    time_column: str | None  # event time (ns) → the date partition
    day_column: str | None = None  # a YYYYMMDD column equal to the trading day, if any
    by_ticker: bool = True
    keep_rid: bool = False  # files carry `_rid` so the newest version of a key wins

    @property
    def partitions(self) -> tuple[str, ...]:
        parts = ("date",) if self.time_column else ()
        return (*parts, "ticker") if self.by_ticker else parts

    @property
    def file_columns(self) -> list[str]:
        cols = [c for c in self.columns if not (self.by_ticker and c == "ticker")]
        return [*cols, "_rid"] if self.keep_rid else cols


TRADES = ColdTable(
    "trades", TRADE_COLUMNS, "_rid", ("ticker", "day", "sequence_number"), "timestamp", "day"
)
QUOTES = ColdTable(
    "quotes", QUOTE_COLUMNS, "_rid", ("ticker", "day", "sequence_number"), "timestamp", "day"
)
DLQ = ColdTable("dlq", DLQ_COLUMNS, "id", ("id",), "first_seen", by_ticker=False)


def cold_tables(tables: Sequence[DerivedTable]) -> list[ColdTable]:
    """trades, quotes, dlq and every derived table declared with cold=True."""
    out = [TRADES, QUOTES, DLQ]
    for t in tables:
        if t.cold:
            out.append(
                ColdTable(
                    t.name,
                    dict(t.columns),
                    "_rid",
                    tuple(t.key),
                    t.time_column,
                    by_ticker="ticker" in t.columns,
                    keep_rid=True,
                )
            )
    return out


def arrow_type(affinity: str) -> pa.DataType:
    """SQLite affinity rules (INT → integer, REAL/FLOA/DOUB → real, else text)."""
    a = affinity.upper()
    if "INT" in a:
        return pa.int64()
    if "REAL" in a or "FLOA" in a or "DOUB" in a:
        return pa.float64()
    return pa.string()


def trading_days(ts_ns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """trading_day() over an array, computed once per distinct UTC hour."""
    hours = ts_ns // _NS_PER_HOUR
    uniq, inverse = np.unique(hours, return_inverse=True)
    days = np.fromiter(
        (trading_day(int(h) * _NS_PER_HOUR) for h in uniq), dtype=np.int64, count=len(uniq)
    )
    return days[inverse.reshape(-1)]


def to_array(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    """Values read from SQLite → an Arrow array of the declared type.

    SQLite affinity is advisory, so a column may hold a stray type (e.g. a REAL in an
    INTEGER column); such columns are cast leniently, then stringified, never dropped.
    """
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    try:
        return pc.cast(pa.array(values), typ, safe=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _partition_value(value: Any) -> str:
    text = "_" if value is None else str(value)
    # Tickers are validated upstream; anything else is escaped so it cannot leave its dir.
    return text if _SAFE_VALUE.match(text) else quote(text, safe="") or "_"


def column_arrays(spec: ColdTable, data: Mapping[str, Sequence[Any]]) -> dict[str, pa.Array]:
    """Each data column of `spec` as an Arrow array of its declared type."""
    return {c: to_array(data[c], arrow_type(t)) for c, t in spec.columns.items()}


def partition_groups(
    spec: ColdTable, data: Mapping[str, Sequence[Any]]
) -> list[tuple[str, npt.NDArray[np.intp]]]:
    """Rows grouped by Hive partition: (directory relative to the table, e.g.
    `date=2024-03-05/ticker=AAPL`, or "" when unpartitioned; row indices in input order)."""
    n = len(next(iter(data.values()))) if data else 0
    if n == 0:
        return []
    dates = np.zeros(n, dtype=np.int64)
    if spec.day_column:
        dates = np.asarray([d or 0 for d in data[spec.day_column]], dtype=np.int64)
    elif spec.time_column:
        ts = np.asarray([t or 0 for t in data[spec.time_column]], dtype=np.int64)
        dates = trading_days(ts)
    tick_idx = np.zeros(n, dtype=np.int64)
    tick_values: list[Any] = [None]
    if spec.by_ticker:
        enc = pc.dictionary_encode(to_array(data["ticker"], pa.string()))
        tick_values = enc.dictionary.to_pylist()
        tick_idx = np.asarray(enc.indices.fill_null(len(tick_values)), dtype=np.int64)
        tick_values.append(None)
    group_key = dates * (len(tick_values) + 1) + tick_idx
    uniq, inverse = np.unique(group_key, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")  # stable: input order within a group
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
    out = []
    for idx in np.split(order, bounds):
        first = int(idx[0])
        parts = []
        if spec.time_column:
            parts.append(f"date={day_iso(int(dates[first]))}")
        if spec.by_ticker:
            parts.append(f"ticker={_partition_value(tick_values[tick_idx[first]])}")
        out.append(("/".join(parts), idx))
    return out


class ParquetColdStore:
    """ColdStore copying the hot store's rows to Parquet by rowid range (module docstring)."""

    def __init__(
        self,
        root: Path,
        hot: SQLiteHotStore,
        tables: Sequence[DerivedTable],
        *,
        expire_hot: bool = True,
    ) -> None:
        self.root = Path(root)
        self.hot = hot
        self.tables = cold_tables(tables)
        # Retention is driven from here because only after a flush are rows safe to delete.
        self.expire_hot = expire_hot
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    def flush(self) -> int:
        """Copy every row above each table's cold position to Parquet; return rows copied."""
        with self._lock:
            conn = self.hot.connect_reader()
            try:
                total = sum(self._flush_table(conn, spec) for spec in self.tables)
            finally:
                conn.close()
            if self.expire_hot:
                self.hot.expire(now_ns())
            return total

    def _flush_table(self, conn: sqlite3.Connection, spec: ColdTable) -> int:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (spec.name,)
        ).fetchone():
            return 0
        key = cold_position_key(spec.name)
        base = pos = int(self.hot.position(key) or 0)
        cols = list(spec.columns)
        rid, name = quote_ident(spec.rid), quote_ident(spec.name)
        sql = (
            f"SELECT {rid}, {', '.join(map(quote_ident, cols))} FROM {name} "
            f"WHERE {rid} > ? ORDER BY {rid} LIMIT ?"
        )
        cleaned: set[Path] = set()
        total = 0
        while True:
            rows = conn.execute(sql, (pos, _CHUNK_ROWS)).fetchall()
            if not rows:
                break
            self._write_chunk(spec, cols, rows, base, cleaned)
            pos = int(rows[-1][0])
            self.hot.set_position(key, str(pos))
            total += len(rows)
            if len(rows) < _CHUNK_ROWS:
                break
        return total

    def _write_chunk(
        self,
        spec: ColdTable,
        cols: list[str],
        rows: list[tuple[Any, ...]],
        base: int,
        cleaned: set[Path],
    ) -> None:
        by_col = list(zip(*rows, strict=True))
        rids = np.asarray(by_col[0], dtype=np.int64)
        data = {c: by_col[i + 1] for i, c in enumerate(cols)}
        arrays = column_arrays(spec, data)
        if spec.keep_rid:
            arrays["_rid"] = pa.array(rids, type=pa.int64())
        table = pa.table({c: arrays[c] for c in spec.file_columns})
        for rel, idx in partition_groups(spec, data):
            directory = self.root / spec.name / rel if rel else self.root / spec.name
            directory.mkdir(parents=True, exist_ok=True)
            if directory not in cleaned:
                _remove_unrecorded(directory, base)
                cleaned.add(directory)
            name = f"part-{int(rids[idx[0]])}-{int(rids[idx[-1]])}.parquet"
            _write_atomic(table.take(pa.array(idx)), directory / name)

    def close(self) -> None:
        """Nothing is buffered between flushes; waits for a running flush to finish."""
        with self._lock:
            pass


def _remove_unrecorded(directory: Path, position: int) -> None:
    """Delete files a crashed flush wrote beyond the recorded position (they are rewritten)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            m = PART_RE.match(entry.name)
            if m and int(m.group(1)) > position:
                os.unlink(entry.path)


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="snappy")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A half-written file (disk full, unwritable dir) would otherwise hold its space
        # until the next successful flush of the same name.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
