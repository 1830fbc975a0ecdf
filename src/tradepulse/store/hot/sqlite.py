"""The embedded hot store: one SQLite file in WAL mode.

Every `write` is one transaction (trades, quotes, dead letters, disconnects, derived rows and
source positions together), so a batch is all-or-nothing and a restart resumes from the last
committed position. Writes are idempotent on identity: trades and quotes are unique on
(ticker, trading day, sequence_number), derived rows on their table's key.

Concurrency: the writer thread uses one connection (`_wconn`, guarded by `_wlock`); readers
(the API on the event loop, the cold flusher, the query layer in other processes) use other
connections. WAL lets readers see the last committed state without blocking the writer.

Every table the cold store copies has an AUTOINCREMENT rowid (`_rid`, `id` for dlq): rowids
only grow, even after retention deletes rows, and a transaction's rows are numbered above
everything committed before it. The cold flusher relies on that to copy by rowid range.

Retention (`expire`): rows older than now − retention_ns are deleted, but only when their
rowid is at or below the cold flush position of their table (`cold:<table>` in `positions`),
i.e. only rows already in Parquet. Tables that are never flushed (derived tables with
cold=False, disconnects, positions, the latest-per-ticker tables) are never expired: they are
either small by construction or not copied anywhere, so deleting them would lose data.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tradepulse.events import DeadLetter, Disconnect, News, Trade
from tradepulse.market_time import trading_day
from tradepulse.store.base import DerivedTable, StoreBatch, WriteResult

__all__ = [
    "DLQ_COLUMNS",
    "QUOTE_COLUMNS",
    "TRADE_COLUMNS",
    "SQLiteHotStore",
    "cold_position_key",
]

TRADE_COLUMNS: dict[str, str] = {
    "ticker": "TEXT",
    "day": "INTEGER",
    "sequence_number": "INTEGER",
    "price": "REAL",
    "size": "INTEGER",
    "timestamp": "INTEGER",
    "ingest_ts": "INTEGER",
    "exchange": "INTEGER",
    "tape": "INTEGER",
    "conditions": "TEXT",
    "trade_id": "TEXT",
    "trf_id": "INTEGER",
}

QUOTE_COLUMNS: dict[str, str] = {
    "ticker": "TEXT",
    "day": "INTEGER",
    "sequence_number": "INTEGER",
    "bid_price": "REAL",
    "bid_size": "INTEGER",
    "ask_price": "REAL",
    "ask_size": "INTEGER",
    "timestamp": "INTEGER",
    "ingest_ts": "INTEGER",
    "bid_exchange": "INTEGER",
    "ask_exchange": "INTEGER",
    "tape": "INTEGER",
    "conditions": "TEXT",
}

DLQ_COLUMNS: dict[str, str] = {
    "id": "INTEGER",
    "reason": "TEXT",
    "raw": "TEXT",
    "source": "TEXT",
    "first_seen": "INTEGER",
    "attempts": "INTEGER",
    "ticker": "TEXT",
}

_TRADE_FIELDS = tuple(c for c in TRADE_COLUMNS if c != "day")
_QUOTE_FIELDS = tuple(c for c in QUOTE_COLUMNS if c != "day")
_EXPIRE_CHUNK = 20_000


def cold_position_key(table: str) -> str:
    """The `positions` key holding the last rowid of `table` copied to the cold store."""
    return f"cold:{table}"


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def _as_int(value: Any) -> int:
    return int(value)


def _as_float(value: Any) -> float:
    return float(value)


def _register_adapters() -> None:
    # Adapters run inside sqlite3's C binding loop only for values that are not already a
    # SQLite type, so plain rows pay nothing; stages may hand us nested values and numpy
    # scalars (np.float64 is a float subclass and needs none). Registration is process-wide,
    # which is harmless: sqlite3 rejects these types otherwise.
    for container in (dict, list, tuple):
        sqlite3.register_adapter(container, _json_text)
    for np_int in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32):
        sqlite3.register_adapter(np_int, _as_int)
    sqlite3.register_adapter(np.uint64, _as_int)  # separate: mypy cannot type the mixed tuple
    for np_float in (np.float16, np.float32):
        sqlite3.register_adapter(np_float, _as_float)
    sqlite3.register_adapter(np.bool_, _as_int)


_register_adapters()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cols(names: Iterable[str]) -> str:
    return ", ".join(_q(n) for n in names)


def decode_conditions(text: Any) -> tuple[int, ...]:
    """The stored JSON array of condition codes (NULL or '' for none) as a tuple."""
    if not text:
        return ()
    value = orjson.loads(text)
    return tuple(value) if isinstance(value, list) else ()


class _Derived:
    """A declared derived table with its prepared SQL."""

    def __init__(self, spec: DerivedTable) -> None:
        self.spec = spec
        self.name = spec.name
        self.columns = tuple(spec.columns)
        self.has_ticker = "ticker" in spec.columns
        cols = _cols(self.columns)
        ph = ", ".join("?" * len(self.columns))
        t = _q(self.name)
        if spec.mode == "ignore":
            self.insert_sql = f"INSERT OR IGNORE INTO {t} ({cols}) VALUES ({ph})"
        elif spec.mode == "replace" or (spec.mode == "newer" and not spec.order_by):
            self.insert_sql = f"INSERT OR REPLACE INTO {t} ({cols}) VALUES ({ph})"
        elif spec.mode == "newer":
            # REPLACE (not DO UPDATE) so the winning row gets a fresh rowid: the cold flusher
            # copies by rowid, and an in-place update would never reach Parquet.
            idx = {c: i + 1 for i, c in enumerate(self.columns)}
            params = ", ".join(f"?{i}" for i in idx.values())
            same_key = " AND ".join(f"{_q(k)} = ?{idx[k]}" for k in spec.key)
            old = ", ".join(_q(c) for c in spec.order_by)
            new = ", ".join(f"?{idx[c]}" for c in spec.order_by)
            self.insert_sql = (
                f"INSERT OR REPLACE INTO {t} ({cols}) SELECT {params} "
                f"WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE {same_key} AND ({old}) >= ({new}))"
            )
        else:
            raise ValueError(f"derived table {spec.name}: unknown mode {spec.mode!r}")
        order = [c for c in (spec.time_column, *spec.order_by) if c]
        self.order_sql = ", ".join(f"{_q(c)} DESC" for c in dict.fromkeys(order))
        self.order_sql = (self.order_sql + ", " if self.order_sql else "") + "_rid DESC"
        self.since_column = spec.time_column or (spec.order_by[0] if spec.order_by else None)

    def ddl(self) -> list[str]:
        t = _q(self.name)
        body = ", ".join(f"{_q(c)} {ty}" for c, ty in self.spec.columns.items())
        stmts = [
            f"CREATE TABLE IF NOT EXISTS {t} (_rid INTEGER PRIMARY KEY AUTOINCREMENT, {body}, "
            f"UNIQUE ({_cols(self.spec.key)}))"
        ]
        tc = self.spec.time_column
        if self.has_ticker and tc:
            stmts.append(
                f"CREATE INDEX IF NOT EXISTS {_q(self.name + '_ticker_time')} ON {t} "
                f"(ticker, {_q(tc)})"
            )
        elif tc:
            stmts.append(f"CREATE INDEX IF NOT EXISTS {_q(self.name + '_time')} ON {t} ({_q(tc)})")
        return stmts


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS trades (
    _rid INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{c} {t}" for c, t in TRADE_COLUMNS.items())},
    UNIQUE (ticker, day, sequence_number)
);
CREATE INDEX IF NOT EXISTS trades_ticker_time ON trades (ticker, timestamp);
CREATE TABLE IF NOT EXISTS quotes (
    _rid INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{c} {t}" for c, t in QUOTE_COLUMNS.items())},
    UNIQUE (ticker, day, sequence_number)
);
CREATE INDEX IF NOT EXISTS quotes_ticker_time ON quotes (ticker, timestamp);
CREATE TABLE IF NOT EXISTS dlq (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reason TEXT, raw TEXT, source TEXT, first_seen INTEGER, attempts INTEGER, ticker TEXT
);
CREATE INDEX IF NOT EXISTS dlq_first_seen ON dlq (first_seen);
CREATE TABLE IF NOT EXISTS disconnects (
    source TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER, reason TEXT,
    PRIMARY KEY (source, started_at)
);
CREATE TABLE IF NOT EXISTS positions (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS trade_latest (
    {", ".join(f"{c} {t}" for c, t in TRADE_COLUMNS.items() if c != "ticker")},
    ticker TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS quote_latest (
    {", ".join(f"{c} {t}" for c, t in QUOTE_COLUMNS.items() if c != "ticker")},
    ticker TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS day_volume (
    ticker TEXT NOT NULL, day INTEGER NOT NULL, volume INTEGER NOT NULL,
    PRIMARY KEY (ticker, day)
) WITHOUT ROWID;
"""

_INSERT_TRADE = (
    f"INSERT OR IGNORE INTO trades ({_cols(TRADE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(TRADE_COLUMNS))})"
)
_INSERT_QUOTE = (
    f"INSERT OR IGNORE INTO quotes ({_cols(QUOTE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(QUOTE_COLUMNS))})"
)


def _latest_upsert(latest: str, columns: Sequence[str]) -> str:
    cols = _cols(columns)
    sets = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in columns if c != "ticker")
    return (
        f"INSERT INTO {latest} ({cols}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT (ticker) DO UPDATE SET {sets} "
        f"WHERE (excluded.timestamp, excluded.sequence_number) > "
        f"({latest}.timestamp, {latest}.sequence_number)"
    )


def _newest_per_ticker(rows: Sequence[tuple[Any, ...]], ts: int, seq: int) -> list[tuple[Any, ...]]:
    # One pass in Python over the batch is several times cheaper than a window-function sort
    # in SQLite. Duplicates may win here: they are the same event, so the row is the same.
    best: dict[str, tuple[Any, ...]] = {}
    for r in rows:
        b = best.get(r[0])
        if b is None or (r[ts], r[seq]) > (b[ts], b[seq]):
            best[r[0]] = r
    return list(best.values())


_UPSERT_TRADE_LATEST = _latest_upsert("trade_latest", tuple(TRADE_COLUMNS))
_UPSERT_QUOTE_LATEST = _latest_upsert("quote_latest", tuple(QUOTE_COLUMNS))
_TRADE_TS = list(TRADE_COLUMNS).index("timestamp")
_TRADE_SEQ = list(TRADE_COLUMNS).index("sequence_number")
_QUOTE_TS = list(QUOTE_COLUMNS).index("timestamp")
_QUOTE_SEQ = list(QUOTE_COLUMNS).index("sequence_number")
# Only rows this transaction inserted (rowid above the pre-insert maximum) are summed, so
# duplicates never count twice; NOT INDEXED keeps SQLite on that rowid range instead of
# walking a whole index to avoid the GROUP BY sort.
_ADD_DAY_VOLUME = (
    "INSERT INTO day_volume (ticker, day, volume) "
    "SELECT ticker, day, sum(size) FROM trades NOT INDEXED WHERE _rid > ? GROUP BY ticker, day "
    "ON CONFLICT (ticker, day) DO UPDATE SET volume = volume + excluded.volume"
)


class SQLiteHotStore:
    """HotStore + HotReader over one SQLite file (see the module docstring)."""

    def __init__(self, path: Path, tables: Sequence[DerivedTable], *, retention_ns: int) -> None:
        self.path = Path(path)
        self.retention_ns = int(retention_ns)
        self.tables: dict[str, DerivedTable] = {t.name: t for t in tables}
        self._derived = {t.name: _Derived(t) for t in tables}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wlock = threading.RLock()
        self._rlock = threading.Lock()
        self._closed = False
        self._wconn = self._connect()
        with self._wlock:
            self._wconn.executescript(_SCHEMA)
            for d in self._derived.values():
                for stmt in d.ddl():
                    self._wconn.execute(stmt)
                self._add_missing_columns(d)
        self._rconn = self.connect_reader()

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a batch is one transaction
        # and reads outside a transaction always see the latest commit.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL keeps the database consistent on power loss and only risks the
        # last transactions; each batch's fsync would otherwise dominate write latency.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def connect_reader(self) -> sqlite3.Connection:
        """A new connection for a reader on another thread (e.g. the cold flusher)."""
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA query_only=ON")
        return conn

    def _add_missing_columns(self, d: _Derived) -> None:
        # A stage that gained a column must not break an existing data dir.
        have = {r[1] for r in self._wconn.execute(f"PRAGMA table_info({_q(d.name)})")}
        for col, ty in d.spec.columns.items():
            if col not in have:
                self._wconn.execute(f"ALTER TABLE {_q(d.name)} ADD COLUMN {_q(col)} {ty}")

    # -- writes ------------------------------------------------------------------------

    def write(self, batch: StoreBatch) -> WriteResult:
        """Apply the whole batch and its positions in one transaction (all or nothing).

        `latency_s` spans BEGIN to COMMIT, i.e. how long the store held the batch (what
        backpressure reacts to); building the rows beforehand is not counted.
        """
        trade_rows = [
            (
                t.ticker,
                trading_day(t.timestamp),
                t.sequence_number,
                t.price,
                t.size,
                t.timestamp,
                t.ingest_ts,
                t.exchange,
                t.tape,
                t.conditions,
                t.trade_id,
                t.trf_id,
            )
            for t in batch.trades
        ]
        quote_rows = [
            (
                q.ticker,
                trading_day(q.timestamp),
                q.sequence_number,
                q.bid_price,
                q.bid_size,
                q.ask_price,
                q.ask_size,
                q.timestamp,
                q.ingest_ts,
                q.bid_exchange,
                q.ask_exchange,
                q.tape,
                q.conditions,
            )
            for q in batch.quotes
        ]
        derived: list[tuple[_Derived, list[tuple[Any, ...]]]] = []
        for name, rows in batch.derived.items():
            d = self._derived.get(name)
            if d is None or not rows:
                continue  # scratch rows passed between stages, not a stored table
            cols = d.columns
            derived.append((d, [tuple(map(r.get, cols)) for r in rows]))

        trade_latest = _newest_per_ticker(trade_rows, _TRADE_TS, _TRADE_SEQ)
        quote_latest = _newest_per_ticker(quote_rows, _QUOTE_TS, _QUOTE_SEQ)

        started = time.perf_counter()
        trades_inserted = quotes_inserted = 0
        with self._wlock:
            conn = self._wconn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if trade_rows:
                    before = conn.execute("SELECT coalesce(max(_rid), 0) FROM trades").fetchone()
                    trades_inserted = conn.executemany(_INSERT_TRADE, trade_rows).rowcount
                    if trades_inserted:
                        conn.executemany(_UPSERT_TRADE_LATEST, trade_latest)
                        conn.execute(_ADD_DAY_VOLUME, before)
                if quote_rows:
                    quotes_inserted = conn.executemany(_INSERT_QUOTE, quote_rows).rowcount
                    if quotes_inserted:
                        conn.executemany(_UPSERT_QUOTE_LATEST, quote_latest)
                if batch.dead_letters:
                    conn.executemany(
                        "INSERT INTO dlq (reason, raw, source, first_seen, attempts, ticker) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (d.reason, d.raw, d.source, d.first_seen, d.attempts, d.ticker)
                            for d in batch.dead_letters
                        ],
                    )
                if batch.disconnects:
                    conn.executemany(
                        "INSERT INTO disconnects (source, started_at, ended_at, reason) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (source, started_at) DO UPDATE SET "
                        "ended_at = max(ended_at, excluded.ended_at), reason = excluded.reason",
                        [(d.source, d.started_at, d.ended_at, d.reason) for d in batch.disconnects],
                    )
                for table, values in derived:
                    conn.executemany(table.insert_sql, values)
                if batch.positions:
                    conn.executemany(
                        "INSERT OR REPLACE INTO positions (key, value) VALUES (?, ?)",
                        list(batch.positions.items()),
                    )
                conn.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back by itself after some errors (SQLITE_FULL, some
                # I/O errors); a ROLLBACK then fails and its error would hide the real one.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        latency = time.perf_counter() - started
        return WriteResult(
            trades_inserted=trades_inserted,
            trades_duplicate=len(trade_rows) - trades_inserted,
            quotes_inserted=quotes_inserted,
            dead_letters=len(batch.dead_letters),
            latency_s=latency,
        )

    def set_position(self, key: str, value: str) -> None:
        with self._wlock:
            self._wconn.execute(
                "INSERT OR REPLACE INTO positions (key, value) VALUES (?, ?)", (key, value)
            )

    def expire(self, now_ns: int) -> int:
        """Delete rows older than now − retention that the cold store already holds.

        Deletes in chunks, each its own short transaction, so the writer is never held up
        for long. Returns the number of rows deleted.
        """
        cutoff = int(now_ns) - self.retention_ns
        targets: list[tuple[str, str, str, str | None]] = [
            ("trades", "_rid", "timestamp", "trade_latest"),
            ("quotes", "_rid", "timestamp", "quote_latest"),
            ("dlq", "id", "first_seen", None),
        ]
        for d in self._derived.values():
            if d.spec.cold and d.spec.time_column:
                targets.append((d.name, "_rid", d.spec.time_column, None))
        deleted = 0
        for table, rid, tcol, tickers in targets:
            pos = int(self.position(cold_position_key(table)) or 0)
            if pos <= 0:
                continue
            # Probing the (ticker, time) index per ticker touches only the expired rows,
            # where a plain range on time would scan every row in the table.
            scope = f"ticker IN (SELECT ticker FROM {tickers}) AND " if tickers else ""
            sql = (
                f"DELETE FROM {_q(table)} WHERE {rid} IN (SELECT {rid} FROM {_q(table)} "
                f"WHERE {scope}{_q(tcol)} < ? AND {rid} <= ? LIMIT {_EXPIRE_CHUNK})"
            )
            while True:
                with self._wlock:
                    n = self._wconn.execute(sql, (cutoff, pos)).rowcount
                deleted += n
                if n < _EXPIRE_CHUNK:
                    break
        with self._wlock:
            self._wconn.execute(
                "DELETE FROM day_volume WHERE day < ? AND NOT EXISTS (SELECT 1 FROM trade_latest "
                "l WHERE l.ticker = day_volume.ticker AND l.day = day_volume.day)",
                (trading_day(max(cutoff, 0)),),
            )
        return deleted

    # -- reads -------------------------------------------------------------------------

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._rlock:
            return self._rconn.execute(sql, params).fetchall()

    def position(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM positions WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    def latest_trade(self, ticker: str) -> dict[str, Any] | None:
        cols = tuple(TRADE_COLUMNS)
        rows = self._read(
            f"SELECT {', '.join('l.' + _q(c) for c in cols)}, v.volume FROM trade_latest l "
            "LEFT JOIN day_volume v ON v.ticker = l.ticker AND v.day = l.day WHERE l.ticker = ?",
            (ticker,),
        )
        if not rows:
            return None
        out = dict(zip((*cols, "volume"), rows[0], strict=True))
        out["conditions"] = list(decode_conditions(out["conditions"]))
        if out["volume"] is None:
            del out["volume"]
        return out

    def latest_quote(self, ticker: str) -> dict[str, Any] | None:
        cols = tuple(QUOTE_COLUMNS)
        rows = self._read(f"SELECT {_cols(cols)} FROM quote_latest WHERE ticker = ?", (ticker,))
        if not rows:
            return None
        out = dict(zip(cols, rows[0], strict=True))
        out["conditions"] = list(decode_conditions(out["conditions"]))
        return out

    def known_tickers(self) -> list[str]:
        rows = self._read(
            "SELECT ticker FROM trade_latest UNION SELECT ticker FROM quote_latest ORDER BY 1"
        )
        return [r[0] for r in rows]

    def latest_row(self, table: str, ticker: str) -> dict[str, Any] | None:
        d = self._derived.get(table)
        if d is None or not d.has_ticker:
            return None
        rows = self._read(
            f"SELECT {_cols(d.columns)} FROM {_q(d.name)} WHERE ticker = ? "
            f"ORDER BY {d.order_sql} LIMIT 1",
            (ticker,),
        )
        return dict(zip(d.columns, rows[0], strict=True)) if rows else None

    def rows_since(
        self, table: str, ticker: str, since_ns: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        d = self._derived.get(table)
        if d is None or not d.has_ticker or d.since_column is None:
            return []
        rows = self._read(
            f"SELECT {_cols(d.columns)} FROM {_q(d.name)} WHERE ticker = ? AND "
            f"{_q(d.since_column)} >= ? ORDER BY {d.order_sql} LIMIT ?",
            (ticker, int(since_ns), int(limit)),
        )
        return [dict(zip(d.columns, r, strict=True)) for r in rows]

    def trades_since(self, since_ns: int) -> list[Trade]:
        """Stored trades with timestamp >= since_ns in (timestamp, sequence_number) order."""
        # `ticker IN (...)` lets SQLite probe the (ticker, timestamp) index per ticker.
        rows = self._read(
            f"SELECT {_cols(_TRADE_FIELDS)} FROM trades "
            "WHERE ticker IN (SELECT ticker FROM trade_latest) AND timestamp >= ? "
            "ORDER BY timestamp, sequence_number",
            (int(since_ns),),
        )
        return [
            Trade(
                ticker=r[0],
                sequence_number=r[1],
                price=r[2],
                size=r[3],
                timestamp=r[4],
                ingest_ts=r[5],
                exchange=r[6],
                tape=r[7],
                conditions=decode_conditions(r[8]),
                trade_id=r[9] or "",
                trf_id=r[10],
            )
            for r in rows
        ]

    def unjoined_news(self) -> list[News]:
        """Articles stored in `news` with no row in `market_sentiment` (oldest first)."""
        if "news" not in self._derived:
            return []
        join = ""
        if "market_sentiment" in self._derived:
            join = (
                " WHERE NOT EXISTS (SELECT 1 FROM market_sentiment s "
                "WHERE s.ticker = n.ticker AND s.article_id = n.article_id)"
            )
        rows = self._read(
            "SELECT n.article_id, n.ticker, n.headline, n.summary, n.source, n.url, "
            f"n.published_at, n.ingest_ts FROM news n{join} ORDER BY n.published_at, n._rid"
        )
        return [
            News(
                article_id=str(r[0]),
                ticker=r[1],
                headline=r[2] or "",
                summary=r[3] or "",
                source=r[4] or "",
                url=r[5] or "",
                published_at=int(r[6] or 0),
                ingest_ts=int(r[7] or 0),
            )
            for r in rows
        ]

    def disconnects(self, since_ns: int = 0) -> list[Disconnect]:
        rows = self._read(
            "SELECT source, started_at, ended_at, reason FROM disconnects "
            "WHERE ended_at >= ? ORDER BY started_at",
            (int(since_ns),),
        )
        return [Disconnect(r[0], r[1], r[2], r[3] or "") for r in rows]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        rows = self._read(
            "SELECT reason, raw, source, first_seen, attempts, ticker FROM dlq "
            "ORDER BY id DESC LIMIT ?",
            (int(limit),),
        )
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def count(self, table: str) -> int:
        """Rows currently in a hot table (trades, quotes, dlq, disconnects or a derived one)."""
        allowed = {"trades", "quotes", "dlq", "disconnects", *self._derived}
        if table not in allowed:
            raise KeyError(table)
        return int(self._read(f"SELECT count(*) FROM {_q(table)}")[0][0])

    def close(self) -> None:
        with self._wlock, self._rlock:
            if self._closed:
                return
            self._closed = True
            self._rconn.close()
            self._wconn.close()
