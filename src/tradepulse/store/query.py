"""SQL over the hot and cold stores together (DuckDB), deduplicated.

Views, each hot ∪ cold with a row present in both counted once:

- `trades`, `quotes`: identity (ticker, day, sequence_number); columns as in the design's
  trades view, plus `day` (YYYYMMDD int) and `date` (DATE, the ET trading day);
- `dlq`: identity `id`; plus `date` (trading day of `first_seen`);
- one per DerivedTable: identity its key; `date` when it has a time column and is cold.
  For "replace"/"newer" tables the newest version of a key wins.

Tables with no hot rows and no files are still there, empty, with their declared columns, so
queries never fail on a fresh data dir.

How the two sides meet: DuckDB cannot load its sqlite extension here, so each query takes one
read snapshot of the hot SQLite file through Python and hands DuckDB only the hot rows the
cold store does not already hold (rowid above the table's cold position, usually the last few
minutes). Cold files are read in place with read_parquet(hive_partitioning=true); the `date`
and `ticker` partition columns stay visible and typed (DATE, VARCHAR) so filters on them prune
whole directories. Rows in both places (a flush that landed between our snapshot and the file
listing, or files a crashed flush left behind) are removed by an anti-join on identity.
The helper relations behind the views are named `__hot_<table>` and `__cold_<table>`.

Each `sql()` call opens its own DuckDB and SQLite connections, so an engine can be shared
between threads and used while the pipeline writes.

Cluster backend (`QueryEngine.for_settings` with backend=cluster): the same views over the S3
cold store (`store/cold/s3.py`) and nothing else — the hot side there is DynamoDB, read by the
API directly. The objects of each table a query names are listed once per query and handed to
DuckDB as a pyarrow dataset with the table's declared schema and Hive partitioning (DuckDB's
httpfs extension cannot be installed here), so filters and projections still reach the
Parquet scan. Kafka can
carry the same trade twice (a backfill overlapping the live feed, a re-published dead letter),
so these views keep one row per identity, the earliest ingested; the identity's `date` is part
of the window partition so date filters still prune objects.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tradepulse.config import Settings
from tradepulse.events import Quote, Trade
from tradepulse.market_time import day_iso
from tradepulse.store.base import DerivedTable
from tradepulse.store.cold.parquet import (
    DLQ,
    QUOTES,
    TRADES,
    ColdTable,
    arrow_type,
    quote_ident,
    to_array,
    trading_days,
)
from tradepulse.store.hot.sqlite import cold_position_key

__all__ = ["QueryEngine", "QueryError", "QueryResult", "S3Cold", "format_result"]

FORMATS = ("table", "json", "csv", "parquet")

# The views' column order is the records' own field order (DESIGN.md's `trades` view), plus
# the trading day that is part of a row's identity.
_TRADE_VIEW = (*(f.name for f in msgspec.structs.fields(Trade)), "day")
_QUOTE_VIEW = (*(f.name for f in msgspec.structs.fields(Quote)), "day")


class QueryError(Exception):
    """A query that cannot run: bad SQL, an unknown table or column, unreadable data."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    table: pa.Table

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        cols = [c.to_pylist() for c in self.table.columns]
        return list(zip(*cols, strict=True)) if cols else []

    def to_dicts(self) -> list[dict[str, Any]]:
        return list(self.table.to_pylist())

    def __len__(self) -> int:
        return int(self.table.num_rows)


@dataclass(frozen=True, slots=True)
class _View:
    name: str
    columns: dict[str, str]  # view columns (without `date`) → SQLite affinity
    key: tuple[str, ...]
    cold: ColdTable | None
    newest_wins: bool  # mutable derived table: keep the highest _rid per key

    @property
    def has_date(self) -> bool:
        return self.cold is not None and self.cold.time_column is not None

    def schema(self) -> pa.Schema:
        fields = [pa.field(c, arrow_type(t)) for c, t in self.columns.items()]
        if self.has_date:
            fields.append(pa.field("date", pa.date32()))
        if self.newest_wins:
            fields.append(pa.field("_rid", pa.int64()))
        return pa.schema(fields)


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_date(t):
        return "DATE"
    return "VARCHAR"


def _views(tables: Sequence[DerivedTable]) -> list[_View]:
    views = [
        _View("trades", {c: TRADES.columns[c] for c in _TRADE_VIEW}, TRADES.key, TRADES, False),
        _View("quotes", {c: QUOTES.columns[c] for c in _QUOTE_VIEW}, QUOTES.key, QUOTES, False),
        _View("dlq", dict(DLQ.columns), DLQ.key, DLQ, False),
    ]
    for t in tables:
        cold = None
        if t.cold:
            cold = ColdTable(
                t.name,
                dict(t.columns),
                "_rid",
                tuple(t.key),
                t.time_column,
                by_ticker="ticker" in t.columns,
                keep_rid=True,
            )
        views.append(_View(t.name, dict(t.columns), tuple(t.key), cold, t.mode != "ignore"))
    return views


@dataclass(frozen=True, slots=True)
class S3Cold:
    """Where the cluster's cold store is: a pyarrow filesystem and the root on it
    (`store/cold/s3.py`'s `cold_root`)."""

    filesystem: pafs.FileSystem
    root: str

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Cold:
        from tradepulse.store.cold.s3 import cold_root, s3_filesystem

        return cls(s3_filesystem(settings), cold_root(settings))


class QueryEngine:
    """DuckDB SQL over `<data_dir>/hot.sqlite3` and `<data_dir>/cold/`, or over the S3 cold
    store when `s3` is given (module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        tables: Sequence[DerivedTable],
        *,
        hot_path: Path | None = None,
        cold_root: Path | None = None,
        s3: S3Cold | None = None,
    ) -> None:
        self.hot_path = Path(hot_path) if hot_path else Path(data_dir) / "hot.sqlite3"
        self.cold_root = Path(cold_root) if cold_root else Path(data_dir) / "cold"
        self.s3 = s3
        self.views = _views(tables)

    @classmethod
    def for_settings(cls, settings: Settings, tables: Sequence[DerivedTable]) -> QueryEngine:
        """The engine for the configured backend: embedded files, or the S3 cold store."""
        if settings.backend == "cluster":
            return cls(settings.data_dir, tables, s3=S3Cold.from_settings(settings))
        return cls(settings.data_dir, tables)

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.views]

    def sql(self, sql: str) -> QueryResult:
        """Run one SQL statement over the views; raises QueryError with DuckDB's reason."""
        if not sql.strip():
            raise QueryError("empty query")
        wanted = {v.name for v in self.views if re.search(rf"\b{re.escape(v.name)}\b", sql, re.I)}
        con = duckdb.connect()
        try:
            hot = self._hot_snapshot(wanted)
            for view in self.views:
                # Listing S3 costs a round trip per page of objects: only for tables the
                # query names (the others stay empty views, so the SQL still binds).
                scan = self.s3 is None or view.name in wanted
                self._create_view(con, view, hot.get(view.name), scan_cold=scan)
            try:
                rel = con.sql(sql)
                if rel is None:
                    return QueryResult(pa.table({}))
                to_table = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
                table: pa.Table = to_table()
                return QueryResult(table)
            except duckdb.CatalogException as exc:
                raise QueryError(f"{exc} (views: {', '.join(self.view_names)})") from None
            except duckdb.Error as exc:
                raise QueryError(str(exc)) from None
        except OSError as exc:
            raise QueryError(f"cannot read the store: {exc}") from None
        finally:
            con.close()

    def query_rows(self, sql: str) -> list[dict[str, Any]]:
        """`sql` as a list of {column: value} (the API's path past the hot window)."""
        return self.sql(sql).to_dicts()

    # -- hot side ----------------------------------------------------------------------

    def _hot_snapshot(self, wanted: set[str]) -> dict[str, pa.Table]:
        if self.s3 is not None or not self.hot_path.exists() or not wanted:
            return {}
        try:
            conn = sqlite3.connect(
                f"file:{self.hot_path}?mode=rw", uri=True, isolation_level=None, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise QueryError(f"cannot open the hot store {self.hot_path}: {exc}") from None
        try:
            conn.execute("PRAGMA query_only=ON")
            # One read transaction: positions and rows come from the same committed state.
            conn.execute("BEGIN")
            present = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            positions: dict[str, int] = {}
            if "positions" in present:
                positions = {
                    str(k): int(v)
                    for k, v in conn.execute(
                        "SELECT key, value FROM positions WHERE key LIKE 'cold:%'"
                    )
                }
            out: dict[str, pa.Table] = {}
            for view in self.views:
                if view.name in wanted and view.name in present:
                    pos = positions.get(cold_position_key(view.name), 0) if view.cold else 0
                    out[view.name] = _load_hot(conn, view, pos)
            conn.execute("COMMIT")
            return out
        except sqlite3.Error as exc:
            raise QueryError(f"cannot read the hot store {self.hot_path}: {exc}") from None
        finally:
            conn.close()

    # -- views -------------------------------------------------------------------------

    def _create_view(
        self,
        con: duckdb.DuckDBPyConnection,
        view: _View,
        hot: pa.Table | None,
        *,
        scan_cold: bool = True,
    ) -> None:
        schema = view.schema()
        hot_name = f"__hot_{view.name}"
        con.register(hot_name, hot if hot is not None else schema.empty_table())
        has_hot = hot is not None and hot.num_rows > 0
        cold_sql = self._cold_select(con, view, schema) if scan_cold else None
        name = quote_ident(view.name)
        cols = ", ".join(quote_ident(c) for c in schema.names if c != "_rid")
        hot_ref = quote_ident(hot_name)
        if cold_sql is None:
            body = f"SELECT {cols} FROM {hot_ref}"
        else:
            cold_name = quote_ident(f"__cold_{view.name}")
            con.execute(f"CREATE VIEW {cold_name} AS {cold_sql}")
            if view.newest_wins:
                part = ", ".join(quote_ident(k) for k in view.key)
                src = f"SELECT * FROM {cold_name}"
                if has_hot:
                    src += f" UNION ALL BY NAME SELECT * FROM {hot_ref}"
                body = (
                    f"SELECT {cols} FROM ({src}) "
                    f"QUALIFY row_number() OVER (PARTITION BY {part} ORDER BY _rid DESC) = 1"
                )
            elif self.s3 is not None:
                body = f"SELECT {cols} FROM {cold_name}" + _one_per_identity(view, schema)
            elif not has_hot:
                body = f"SELECT {cols} FROM {cold_name}"
            else:
                same = [*view.key, "date"] if view.has_date else list(view.key)
                match = " AND ".join(f"c.{quote_ident(k)} = h.{quote_ident(k)}" for k in same)
                h_cols = ", ".join(f"h.{quote_ident(c)}" for c in schema.names)
                keys = ", ".join(quote_ident(k) for k in same)
                # A LEFT JOIN … IS NULL anti-join, not NOT EXISTS: DuckDB then carries the
                # outer date/ticker filters into this second cold scan, which keeps it pruned.
                body = (
                    f"SELECT {cols} FROM {cold_name} UNION ALL SELECT {h_cols} FROM {hot_ref} h "
                    f"LEFT JOIN (SELECT {keys}, true AS __hit FROM {cold_name}) c ON {match} "
                    "WHERE c.__hit IS NULL"
                )
        con.execute(f"CREATE VIEW {name} AS {body}")

    def _cold_select(
        self, con: duckdb.DuckDBPyConnection, view: _View, schema: pa.Schema
    ) -> str | None:
        spec = view.cold
        if spec is None:
            return None
        if self.s3 is not None:
            return self._s3_select(con, view, spec, schema)
        directory = self.cold_root / spec.name
        if not directory.is_dir() or next(directory.rglob("*.parquet"), None) is None:
            return None
        glob = str(directory / "**" / "*.parquet").replace("'", "''")
        types = {"date": "DATE", "ticker": "VARCHAR"}
        hive_types = ", ".join(f"'{p}': {types[p]}" for p in spec.partitions)
        source = (
            f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true"
            + (f", hive_types = {{{hive_types}}}" if hive_types else "")
            + ")"
        )
        present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
        return f"SELECT {_cast_columns(schema, present)} FROM {source}"

    def _s3_select(
        self, con: duckdb.DuckDBPyConnection, view: _View, spec: ColdTable, schema: pa.Schema
    ) -> str | None:
        assert self.s3 is not None
        fs, base = self.s3.filesystem, f"{self.s3.root}/{spec.name}"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))
        if not files:
            return None
        kinds = {"date": pa.date32(), "ticker": pa.string()}
        parts = pa.schema([pa.field(p, kinds[p]) for p in spec.partitions])
        stored = [
            pa.field(c, pa.int64() if c == "_rid" else arrow_type(spec.columns[c]))
            for c in spec.file_columns
        ]
        dataset = ds.dataset(
            files,
            schema=pa.schema([*stored, *parts]),
            format="parquet",
            filesystem=fs,
            partitioning=ds.partitioning(parts, flavor="hive") if len(parts) else None,
            partition_base_dir=base,
        )
        name = f"__s3_{view.name}"
        con.register(name, dataset)
        return f"SELECT {_cast_columns(schema, set(dataset.schema.names))} FROM {quote_ident(name)}"


def _cast_columns(schema: pa.Schema, present: set[str]) -> str:
    """The select list casting each column of `schema` to its type; files written before a
    column was added lack it: NULL, not an error."""
    select = []
    for f in schema:
        ty = _duck_type(f.type)
        col = quote_ident(f.name)
        expr = f"CAST({col} AS {ty})" if f.name in present else f"CAST(NULL AS {ty})"
        select.append(f"{expr} AS {col}")
    return ", ".join(select)


def _one_per_identity(view: _View, schema: pa.Schema) -> str:
    """A QUALIFY clause keeping the earliest-ingested row per identity (plus its date)."""
    keys = [*view.key, "date"] if view.has_date else list(view.key)
    part = ", ".join(quote_ident(k) for k in keys)
    order = " ORDER BY ingest_ts" if "ingest_ts" in schema.names else ""
    return f" QUALIFY row_number() OVER (PARTITION BY {part}{order}) = 1"


def _load_hot(conn: sqlite3.Connection, view: _View, pos: int) -> pa.Table:
    spec = view.cold
    cols = list(view.columns)
    rid = spec.rid if spec is not None else "_rid"
    sql = f"SELECT {quote_ident(rid)}, {', '.join(map(quote_ident, cols))} FROM "
    sql += quote_ident(view.name)
    params: tuple[int, ...] = ()
    if spec is not None:
        sql += f" WHERE {quote_ident(rid)} > ?"
        params = (pos,)
    rows = conn.execute(sql, params).fetchall()
    schema = view.schema()
    if not rows:
        return schema.empty_table()
    by_col = list(zip(*rows, strict=True))
    data: dict[str, pa.Array] = {
        c: to_array(by_col[i + 1], arrow_type(view.columns[c])) for i, c in enumerate(cols)
    }
    if view.has_date and spec is not None:
        if spec.day_column:
            days = np.asarray([d or 0 for d in by_col[cols.index(spec.day_column) + 1]])
        else:
            assert spec.time_column is not None
            ts = np.asarray([t or 0 for t in by_col[cols.index(spec.time_column) + 1]])
            days = trading_days(ts.astype(np.int64))
        data["date"] = _days_to_dates(days)
    if view.newest_wins:
        data["_rid"] = pa.array(by_col[0], type=pa.int64())
    return pa.table({f.name: data[f.name] for f in schema})


def _days_to_dates(days: np.ndarray[Any, Any]) -> pa.Array:
    uniq, inverse = np.unique(days, return_inverse=True)
    iso = pa.array([day_iso(int(d)) for d in uniq], type=pa.string())
    dates = pc.cast(pc.strptime(iso, format="%Y-%m-%d", unit="s"), pa.date32())
    return dates.take(pa.array(inverse.reshape(-1)))


# -- rendering -------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return str(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value, default=_json_default).decode()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    return str(value)


def format_result(result: QueryResult, fmt: str) -> str | bytes:
    """Render as `table` (aligned text), `json` (array of objects), `csv` or `parquet` (bytes)."""
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(result.table, buf, compression="snappy")
        return buf.getvalue()
    if fmt == "json":
        return orjson.dumps(
            result.to_dicts(),
            default=_json_default,
            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        ).decode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([_cell(v) for v in row] for row in result.rows)
        return out.getvalue()
    if fmt == "table":
        return _text_table(result)
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _text_table(result: QueryResult) -> str:
    columns = result.columns
    numeric = [
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        for t in result.table.schema.types
    ]
    cells = [["NULL" if v is None else _cell(v) for v in row] for row in result.rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip()

    out = [line(columns), "-+-".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    n = len(cells)
    out.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(out) + "\n"
