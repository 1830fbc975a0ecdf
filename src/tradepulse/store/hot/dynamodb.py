"""The cluster hot store on DynamoDB: the same `HotStore` + `HotReader` as `SQLiteHotStore`.

Tables (names `<prefix>-<name>`, on-demand billing, created idempotently):

- trades / quotes: ``pk = TICKER#<shard>`` with shard = crc32(ticker, timestamp) % 8 so one
  busy ticker spreads over 8 partitions, ``sk = <timestamp:020d>#<sequence_number:020d>`` so a
  key range is a time range; the columns of `TRADE_COLUMNS` / `QUOTE_COLUMNS` (with `day`)
  and ``ttl`` = event time + retention in epoch seconds (TTL enabled on the table).
- latest: ``pk = ticker``, ``sk`` = "trade" | "quote" | ``volume#<day>`` | the name of a
  derived table keyed by ticker alone (features_latest). Never expires, like SQLite's
  latest-per-ticker tables.
- one table per other derived table: ``pk`` = ticker (or "_" without a ticker in the key),
  ``sk`` = the rest of the declared key, an LSI ``by_time`` on ``_t`` (the time column) for
  `rows_since`/`latest_row`, ``_w`` (write order, SQLite's rowid tie-break) and ``ttl`` when
  SQLite would expire the table (cold and timed).
- dlq (``pk = "dlq"``, ``sk`` = write time + random suffix: never deduplicated), disconnects
  (``pk = source``, ``sk = started_at``), positions (``pk = key``).

Identity is (ticker, trading day, sequence_number), but the key is built from (ticker,
timestamp, sequence_number): both come from the trade itself, so re-writing a trade always hits
the same item, and the day is a function of the timestamp. Two different prints with the same
identity and different timestamps would be two items here and one in SQLite; Polygon's feed
cannot produce them (a sequence number names one SIP print per ticker and day, and a print's
SIP timestamp is part of that print), so the keys are equivalent for real data.

Atomicity. DynamoDB has no transaction across thousands of items (TransactWriteItems takes
100, costs double, and moto deep-copies every table per call, ~7 items/s), so a batch is not
all-or-nothing. Instead every write is idempotent — inserts skip existing keys, "replace" and
latest-per-ticker puts converge to the same item — and the source positions are written last,
after everything else succeeded. The cluster processor commits its Kafka offsets only after
`write` returns, so a crash mid-batch replays the batch and the store converges to the state a
single write would have left. The session volume (`latest_trade()["volume"]`) is the exception,
as an ADD cannot be idempotent: it is incremented after the trades are stored, from an account
kept in memory of the trades this store inserted (each BatchWriteItem call that took them,
UnprocessedItems excluded) and has not counted yet. An increment that fails — DynamoDB
throttling past every retry — stays owed and is applied by the next write, the batch's replay
included, which finds those trades stored and does not count them again. Documented rather than
hidden: a crash between the two steps loses the account (the replayed trades are duplicates and
their size is not added), and a 5xx returned after DynamoDB applied an increment, retried by
the SDK, adds it twice.

Counting inserts exactly. BatchWriteItem cannot be conditional, so each insert first reads the
batch's keys with BatchGetItem (100 per call, strongly consistent, keys only) and writes only the
missing ones with BatchWriteItem (25 per call), 8 calls in flight. Measured against moto on
2 cores: a whole `write` of 5,000 new trades runs at ~1,300-1,750 trades/s (the same batch
replayed, all duplicates, ~1,700-2,400/s); a conditional PutItem per item peaks at ~320 items/s
with 16 threads; TransactWriteItems is unusable on moto (above). On AWS the strongly consistent
read costs 1 RCU per item next to the 1 WCU of the write, half of a transaction's 2 WCU. The
count is exact as long as one writer owns a ticker at a time, which the Kafka partitioning by
ticker guarantees (a zombie writer could make an insert count as new twice, never store two
copies).

Reads filter expired rows by ``ttl`` on every read: DynamoDB deletes expired items only within
days, and the local servers not at all (dynalite does not even implement UpdateTimeToLive: the
store then logs one warning and goes on).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson

from tradepulse.config import Settings
from tradepulse.events import DeadLetter, Disconnect, News, Trade
from tradepulse.market_time import NS_PER_S, now_ns, trading_day
from tradepulse.store.base import DerivedTable, StoreBatch, WriteResult
from tradepulse.store.hot.sqlite import QUOTE_COLUMNS, TRADE_COLUMNS, decode_conditions

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = ["SHARDS", "DynamoHotStore", "DynamoWriteError", "trade_shard"]

log = logging.getLogger("tradepulse.hot")

SHARDS = 8
_BATCH_WRITE = 25  # BatchWriteItem's limit
_BATCH_GET = 100  # BatchGetItem's limit
_NO_TICKER = "_"
_LATEST = "latest"
_TIME_INDEX = "by_time"
_RESERVED = frozenset(
    {"trades", "quotes", _LATEST, "dlq", "disconnects", "positions", "trade", "quote"}
)

Item = dict[str, Any]
# Endpoints already warned about lacking UpdateTimeToLive.
_TTL_WARNED: set[str] = set()
_TTL_WARNED_LOCK = threading.Lock()
_T = TypeVar("_T")
_R = TypeVar("_R")


class DynamoWriteError(RuntimeError):
    """DynamoDB kept refusing part of a write after every retry."""


def trade_shard(ticker: str, timestamp: int) -> int:
    """Stable shard of a trade or quote (crc32, not Python's per-process salted `hash`)."""
    return zlib.crc32(f"{ticker}\x00{int(timestamp)}".encode()) % SHARDS


def _event_sk(timestamp: int, seq: int) -> str:
    return f"{int(timestamp):020d}#{int(seq):020d}"


# -- marshalling ---------------------------------------------------------------------------
# Hand-written instead of boto3's TypeSerializer: that one wants Decimal for every float and
# knows neither numpy scalars nor NaN. The rules follow SQLite's column affinities so that both
# stores read back the same values: NaN is stored as NULL (as SQLite does), ±inf (which a
# DynamoDB number cannot hold) as the strings "inf"/"-inf", nested values as JSON text.


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def _float_av(value: float) -> Item | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return {"S": "inf" if value > 0 else "-inf"}
    return {"N": repr(value)}


def _encode(value: Any, kind: str = "") -> Item | None:
    """One attribute value for a column of SQLite affinity `kind`; None means "store nothing"."""
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, dict | list | tuple):
        return {"S": _json_text(value)}
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, bytes):
        return {"B": value}
    if kind == "TEXT" and isinstance(value, int | float):
        # SQLite's TEXT affinity stores numbers as their text.
        if isinstance(value, float) and math.isnan(value):
            return None
        return {"S": str(value)}
    if isinstance(value, int):
        return {"N": repr(float(value))} if kind == "REAL" else {"N": str(value)}
    if isinstance(value, float):
        if kind == "INTEGER" and value.is_integer():
            return {"N": str(int(value))}
        return _float_av(value)
    return {"S": str(value)}


def _number(text: str, kind: str) -> int | float:
    if kind == "REAL":
        return float(text)
    if any(c in text for c in ".eE"):
        f = float(text)
        return int(f) if kind == "INTEGER" and f.is_integer() else f
    return int(text)


def _decode(av: Mapping[str, Any], kind: str = "") -> Any:
    if "N" in av:
        return _number(av["N"], kind)
    if "S" in av:
        s = av["S"]
        if kind == "REAL" and s in ("inf", "-inf"):
            return float(s)
        return s
    if "NULL" in av:
        return None
    if "BOOL" in av:
        return int(av["BOOL"])
    if "B" in av:
        return av["B"]
    if "L" in av:
        return [_decode(v) for v in av["L"]]
    if "M" in av:
        return {k: _decode(v) for k, v in av["M"].items()}
    raise ValueError(f"unsupported attribute value {av!r}")


def _row(item: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    return {c: (_decode(item[c], kind) if c in item else None) for c, kind in columns.items()}


def _key_part(value: Any) -> str:
    # Sortable text: ints zero-padded (negatives below all non-negatives, still in order),
    # strings escaped so the '#' separator cannot be forged by a value.
    value = _plain(value)
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return f"{value:020d}" if value >= 0 else f"-{10**20 + value:020d}"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "\x00"
    return str(value).replace("%", "%25").replace("#", "%23")


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _request_key(request: Mapping[str, Any]) -> tuple[str, str]:
    item = request["PutRequest"]["Item"]
    return item["pk"]["S"], item.get("sk", {}).get("S", "")


def _newer_condition(order_by: Sequence[str], item: Item) -> tuple[str, Item, Item]:
    """`attribute_not_exists(pk) OR (stored order_by) < (new order_by)`, lexicographically."""
    names: Item = {}
    values: Item = {}
    ors = ["attribute_not_exists(pk)", f"attribute_not_exists(#o{0})"]
    for i, col in enumerate(order_by):
        names[f"#o{i}"] = col
        values[f":o{i}"] = item[col]
        same = [f"#o{j} = :o{j}" for j in range(i)]
        ors.append("(" + " AND ".join([*same, f"#o{i} < :o{i}"]) + ")")
    return " OR ".join(ors), names, values


def _newest(
    rows: Iterable[_T], order: Callable[[_T], tuple[Any, ...]], key: Callable[[_T], Any]
) -> list[_T]:
    # The first row with the greatest order wins, as a sequence of SQLite's "replace only if
    # strictly newer" upserts would leave it.
    best: dict[Any, tuple[tuple[Any, ...], _T]] = {}
    for r in rows:
        k, o = key(r), order(r)
        b = best.get(k)
        if b is None or o > b[0]:
            best[k] = (o, r)
    return [r for _, r in best.values()]


class _Derived:
    """Where and how one declared derived table is stored."""

    def __init__(self, spec: DerivedTable, prefix: str) -> None:
        if spec.mode not in ("ignore", "replace", "newer"):
            raise ValueError(f"derived table {spec.name}: unknown mode {spec.mode!r}")
        if spec.name in _RESERVED:
            raise ValueError(f"derived table name {spec.name!r} is used by the store itself")
        self.spec = spec
        self.name = spec.name
        self.columns = dict(spec.columns)
        self.has_ticker = "ticker" in spec.columns
        self.ticker_in_key = "ticker" in spec.key
        # Tables keyed by ticker alone hold one row per ticker: they live in `latest`.
        self.in_latest = tuple(spec.key) == ("ticker",)
        self.table = f"{prefix}-{_LATEST}" if self.in_latest else f"{prefix}-{spec.name}"
        self.sk_columns = tuple(c for c in spec.key if c != "ticker")
        self.since_column = spec.time_column or (spec.order_by[0] if spec.order_by else None)
        self.expires = bool(spec.cold and spec.time_column)
        self.order = tuple(dict.fromkeys(c for c in (spec.time_column, *spec.order_by) if c))

    def key_of(self, row: Mapping[str, Any]) -> tuple[str, str]:
        pk = str(row.get("ticker")) if self.ticker_in_key else _NO_TICKER
        if self.in_latest:
            return pk, self.name
        return pk, "#".join(_key_part(row.get(c)) for c in self.sk_columns) or "-"

    def sort_key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        # SQLite orders by (time, order_by…) DESC NULLS LAST and then by rowid; `_w` is ours.
        present = [(row[c] is not None, row[c] if row[c] is not None else 0) for c in self.order]
        return (*present, row.get("_w", 0))


class DynamoHotStore:
    """HotStore + HotReader on DynamoDB (see the module docstring for layout and guarantees)."""

    def __init__(
        self,
        settings: Settings,
        tables: Sequence[DerivedTable],
        *,
        retention_ns: int | None = None,
        table_prefix: str = "tradepulse",
        client: DynamoDBClient | None = None,
        max_attempts: int = 8,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        workers: int = 8,
    ) -> None:
        self.settings = settings
        # Defaults to the settings' hot window, which is what every production caller passes.
        if retention_ns is None:
            retention_ns = int(settings.hot_retention_h * 3600 * NS_PER_S)
        self.retention_ns = int(retention_ns)
        self.prefix = table_prefix
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.tables: dict[str, DerivedTable] = {t.name: t for t in tables}
        self._derived = {t.name: _Derived(t, table_prefix) for t in tables}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dynamo")
        self._client = client if client is not None else self._connect(settings, workers)
        self._write_seq = 0
        self._seq_lock = threading.Lock()
        # (ticker, day) → size of trades stored by this store and not yet added to the volume.
        self._volume_owed: dict[tuple[str, int], int] = {}
        self._volume_lock = threading.Lock()
        self._closed = False
        self.trades_table = self._name("trades")
        self.quotes_table = self._name("quotes")
        self.latest_table = self._name(_LATEST)
        self.dlq_table = self._name("dlq")
        self.disconnects_table = self._name("disconnects")
        self.positions_table = self._name("positions")
        self._create_tables()

    # -- setup ---------------------------------------------------------------------------

    @staticmethod
    def _connect(settings: Settings, workers: int) -> DynamoDBClient:
        import boto3
        from botocore.config import Config

        from tradepulse.ops.stack import endpoints

        kwargs: dict[str, Any] = {"region_name": settings.aws_region}
        if settings.dynamodb_endpoint:
            kwargs["endpoint_url"] = settings.dynamodb_endpoint
            # The local servers accept any signature; real endpoints use the normal chain.
            if endpoints(settings, ["dynamodb"])["dynamodb"].local:
                kwargs |= {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
        config = Config(
            max_pool_connections=max(10, 2 * workers),
            retries={"mode": settings.aws_retry_mode, "max_attempts": settings.aws_max_attempts},
        )
        return boto3.client("dynamodb", config=config, **kwargs)

    def _name(self, table: str) -> str:
        return f"{self.prefix}-{table}"

    def _create_tables(self) -> None:
        # (name, ttl enabled, LSI on time, has a sort key)
        specs: list[tuple[str, bool, bool, bool]] = [
            (self.trades_table, True, False, True),
            (self.quotes_table, True, False, True),
            (self.latest_table, False, False, True),
            (self.dlq_table, True, False, True),
            (self.disconnects_table, False, False, True),
            (self.positions_table, False, False, False),
        ]
        for d in self._derived.values():
            if not d.in_latest:
                specs.append((d.table, d.expires, d.spec.time_column is not None, True))
        no_ttl = [name for name, ok in self._map(lambda spec: self._create(*spec), specs) if not ok]
        endpoint = self.settings.dynamodb_endpoint or "AWS"
        with _TTL_WARNED_LOCK:
            warn = bool(no_ttl) and endpoint not in _TTL_WARNED
            if warn:
                _TTL_WARNED.add(endpoint)
        if warn:
            # Local servers such as dynalite implement DescribeTimeToLive but not the update.
            # Nothing depends on the deletion: every read drops items past `ttl` itself, as
            # DynamoDB deletes expired items only eventually (module docstring). Once per
            # endpoint: every store of a process would say the same.
            log.warning(
                "DynamoDB at %s does not support UpdateTimeToLive: expired items stay stored "
                "(reads skip them); first seen on %s",
                endpoint,
                ", ".join(no_ttl),
            )

    def _create(self, name: str, ttl: bool, time_index: bool, range_key: bool) -> tuple[str, bool]:
        """Create the table if missing; return (name, False) when TTL could not be enabled."""
        c = self._client
        key_schema: list[Any] = [{"AttributeName": "pk", "KeyType": "HASH"}]
        attrs: list[Any] = [{"AttributeName": "pk", "AttributeType": "S"}]
        if range_key:
            key_schema.append({"AttributeName": "sk", "KeyType": "RANGE"})
            attrs.append({"AttributeName": "sk", "AttributeType": "S"})
        extra: dict[str, Any] = {}
        if time_index:
            attrs.append({"AttributeName": "_t", "AttributeType": "N"})
            extra["LocalSecondaryIndexes"] = [
                {
                    "IndexName": _TIME_INDEX,
                    "KeySchema": [
                        {"AttributeName": "pk", "KeyType": "HASH"},
                        {"AttributeName": "_t", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ]
        try:
            c.create_table(
                TableName=name,
                KeySchema=key_schema,
                AttributeDefinitions=attrs,
                BillingMode="PAY_PER_REQUEST",
                **extra,
            )
        except Exception as exc:
            if _error_code(exc) != "ResourceInUseException":
                raise
        c.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
        if ttl:
            status = c.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            if status.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                try:
                    c.update_time_to_live(
                        TableName=name,
                        TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
                    )
                except Exception as exc:
                    code = _error_code(exc)
                    if code == "UnknownOperationException":
                        return name, False
                    # Two stores starting together race here; the loser finds TTL on.
                    if code != "ValidationException":
                        raise
        return name, True

    # -- low-level batched I/O -------------------------------------------------------------

    def _sleep_backoff(self, attempt: int) -> None:
        # Full jitter: concurrent writers throttled together do not retry in lockstep.
        time.sleep(random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)))

    def _map(self, fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
        items = list(items)
        if len(items) <= 1:
            return [fn(i) for i in items]
        return list(self._pool.map(fn, items))

    def _batch_write_chunk(
        self,
        table: str,
        requests: Sequence[Item],
        on_written: Callable[[list[Item]], None] | None = None,
    ) -> None:
        """BatchWriteItem with UnprocessedItems retried; `on_written` gets the requests each
        call stored (what it sent minus what it left unprocessed)."""
        pending: dict[str, Any] = {table: list(requests)}
        for attempt in range(self.max_attempts):
            sent = pending[table]
            resp = self._client.batch_write_item(RequestItems=pending)
            pending = dict(resp.get("UnprocessedItems") or {})
            if on_written is not None:
                unprocessed = {_request_key(r) for r in pending.get(table, [])}
                on_written([r for r in sent if _request_key(r) not in unprocessed])
            if not any(pending.values()):
                return
            if attempt + 1 < self.max_attempts:
                self._sleep_backoff(attempt)
        left = sum(len(v) for v in pending.values())
        raise DynamoWriteError(
            f"BatchWriteItem on {table}: {left} item(s) still unprocessed after "
            f"{self.max_attempts} attempts (throttled?); the batch is not stored completely "
            "and is safe to retry"
        )

    def _put_all(
        self,
        table: str,
        items: Sequence[Item],
        on_written: Callable[[list[Item]], None] | None = None,
    ) -> None:
        requests = [{"PutRequest": {"Item": it}} for it in items]
        self._map(
            lambda ch: self._batch_write_chunk(table, ch, on_written),
            list(_chunks(requests, _BATCH_WRITE)),
        )

    def _existing_chunk(self, table: str, keys: Sequence[Item]) -> set[tuple[str, str]]:
        pending: dict[str, Any] = {
            table: {
                "Keys": list(keys),
                "ProjectionExpression": "pk, sk",
                "ConsistentRead": True,
            }
        }
        found: set[tuple[str, str]] = set()
        for attempt in range(self.max_attempts):
            resp = self._client.batch_get_item(RequestItems=pending)
            for it in resp.get("Responses", {}).get(table, []):
                found.add((it["pk"]["S"], it["sk"]["S"]))
            pending = dict(resp.get("UnprocessedKeys") or {})
            if not pending:
                return found
            if attempt + 1 < self.max_attempts:
                self._sleep_backoff(attempt)
        raise DynamoWriteError(
            f"BatchGetItem on {table}: keys still unprocessed after {self.max_attempts} attempts"
        )

    def _insert_new(
        self,
        table: str,
        items: Sequence[Item],
        on_written: Callable[[list[Item]], None] | None = None,
    ) -> list[Item]:
        """Store the items whose key is not in `table` yet; return those (keys unique in items)."""
        keys = [{"pk": it["pk"], "sk": it["sk"]} for it in items]
        found: set[tuple[str, str]] = set()
        for part in self._map(
            lambda ch: self._existing_chunk(table, ch), list(_chunks(keys, _BATCH_GET))
        ):
            found |= part
        new = [it for it in items if (it["pk"]["S"], it["sk"]["S"]) not in found]
        self._put_all(table, new, on_written)
        return new

    def _put_if(self, table: str, item: Item, condition: str, names: Item, values: Item) -> bool:
        """A conditional put; a failed condition is a success that changed nothing."""
        kwargs: dict[str, Any] = {"ConditionExpression": condition}
        if names:
            kwargs["ExpressionAttributeNames"] = names
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            self._client.put_item(TableName=table, Item=item, **kwargs)
        except Exception as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _put_newer(self, table: str, item: Item, order_by: Sequence[str]) -> bool:
        if any(c not in item for c in order_by):
            # SQLite compares a NULL order value as unknown, so its upsert replaces: same here.
            self._client.put_item(TableName=table, Item=item)
            return True
        cond, names, values = _newer_condition(order_by, item)
        return self._put_if(table, item, cond, names, values)

    def _next_write_order(self, n: int) -> int:
        # Strictly increasing across the store's writes, like SQLite's rowid; wall-clock based
        # so a restarted store continues above what an earlier one wrote.
        with self._seq_lock:
            base = max(time.time_ns(), self._write_seq + 1)
            self._write_seq = base + n
        return base

    # -- writes ----------------------------------------------------------------------------

    def _event_item(self, columns: Mapping[str, str], values: Mapping[str, Any]) -> Item:
        ts = int(values["timestamp"])
        item: Item = {
            "pk": {"S": f"{values['ticker']}#{trade_shard(values['ticker'], ts)}"},
            "sk": {"S": _event_sk(ts, values["sequence_number"])},
            "ttl": {"N": str((ts + self.retention_ns) // NS_PER_S)},
        }
        for col, kind in columns.items():
            av = _encode(values.get(col), kind)
            if av is not None:
                item[col] = av
        return item

    def _write_events(
        self,
        table: str,
        columns: Mapping[str, str],
        rows: Sequence[dict[str, Any]],
        on_written: Callable[[list[Item]], None] | None = None,
    ) -> tuple[int, list[dict[str, Any]], list[Item]]:
        """Insert trades or quotes; return (inserted, newest row per ticker, inserted items)."""
        unique: dict[tuple[str, int, int], dict[str, Any]] = {}
        for r in rows:
            unique.setdefault((r["ticker"], r["day"], r["sequence_number"]), r)
        items = [self._event_item(columns, r) for r in unique.values()]
        new = self._insert_new(table, items, on_written)
        latest = _newest(
            unique.values(),
            order=lambda r: (r["timestamp"], r["sequence_number"]),
            key=lambda r: r["ticker"],
        )
        return len(new), latest, new

    def _write_latest(
        self, kind: str, columns: Mapping[str, str], rows: Sequence[dict[str, Any]]
    ) -> None:
        def put(r: dict[str, Any]) -> None:
            item: Item = {"pk": {"S": r["ticker"]}, "sk": {"S": kind}}
            for col, ty in columns.items():
                av = _encode(r.get(col), ty)
                if av is not None and col != "ticker":
                    item[col] = av
            item["ticker"] = {"S": r["ticker"]}
            self._put_newer(self.latest_table, item, ("timestamp", "sequence_number"))

        self._map(put, rows)

    def _owe_volume(self, stored: list[Item]) -> None:
        """Account the size of trades just stored (PutRequests) until `_add_volume` counts it."""
        with self._volume_lock:
            for request in stored:
                it = request["PutRequest"]["Item"]
                k = (it["ticker"]["S"], int(it["day"]["N"]))
                size = int(it["size"]["N"]) if "size" in it else 0
                self._volume_owed[k] = self._volume_owed.get(k, 0) + size

    def _add_volume(self) -> None:
        """Add every owed volume, this batch's and what earlier failed writes left; what fails
        stays owed for the next write (module docstring)."""
        with self._volume_lock:
            owed = [(k, v) for k, v in self._volume_owed.items() if v]

        def add(entry: tuple[tuple[str, int], int]) -> None:
            (ticker, day), volume = entry
            self._client.update_item(
                TableName=self.latest_table,
                Key={"pk": {"S": ticker}, "sk": {"S": f"volume#{day}"}},
                UpdateExpression="ADD volume :v",
                ExpressionAttributeValues={":v": {"N": str(volume)}},
            )
            with self._volume_lock:
                left = self._volume_owed.get((ticker, day), 0) - volume
                if left:
                    self._volume_owed[(ticker, day)] = left
                else:
                    self._volume_owed.pop((ticker, day), None)

        self._map(add, owed)

    def _derived_item(self, d: _Derived, row: Mapping[str, Any], order: int) -> Item:
        pk, sk = d.key_of(row)
        item: Item = {"pk": {"S": pk}, "sk": {"S": sk}, "_w": {"N": str(order)}}
        for col, kind in d.columns.items():
            av = _encode(row.get(col), kind)
            if av is not None:
                item[col] = av
        tc = d.spec.time_column
        if tc and "N" in item.get(tc, {}):
            if not d.in_latest:
                item["_t"] = item[tc]  # sparse LSI key: rows without a time stay out of it
            if d.expires:
                t = int(float(item[tc]["N"]))
                item["ttl"] = {"N": str((t + self.retention_ns) // NS_PER_S)}
        return item

    def _write_derived(self, d: _Derived, rows: Sequence[Mapping[str, Any]]) -> None:
        base = self._next_write_order(len(rows))
        items = [self._derived_item(d, r, base + i) for i, r in enumerate(rows)]
        keyed = [((it["pk"]["S"], it["sk"]["S"]), it) for it in items]
        mode = d.spec.mode
        if mode == "ignore":
            first: dict[tuple[str, str], Item] = {}
            for k, it in keyed:
                first.setdefault(k, it)
            self._insert_new(d.table, list(first.values()))
        elif mode == "replace" or not d.spec.order_by:
            last = dict(keyed)  # the last row per key wins, with its own (newest) `_w`
            self._put_all(d.table, list(last.values()))
        else:
            order_by = d.spec.order_by

            def order(pair: tuple[tuple[str, str], Item]) -> tuple[Any, ...]:
                it = pair[1]
                return tuple(
                    _decode(it[c], d.columns.get(c, "")) if c in it else 0 for c in order_by
                )

            winners = _newest(keyed, order=order, key=lambda p: p[0])
            self._map(lambda p: self._put_newer(d.table, p[1], order_by), winners)

    def _write_disconnect(self, dc: Disconnect) -> None:
        key = {"pk": {"S": dc.source}, "sk": {"S": _key_part(int(dc.started_at))}}
        base = {
            ":s": {"N": str(int(dc.started_at))},
            ":r": {"S": dc.reason},
            ":e": {"N": str(int(dc.ended_at))},
        }
        try:
            # ended_at only grows (SQLite: max(ended_at, excluded.ended_at)); reason is the last.
            self._client.update_item(
                TableName=self.disconnects_table,
                Key=key,
                UpdateExpression="SET started_at = :s, ended_at = :e, reason = :r",
                ConditionExpression="attribute_not_exists(ended_at) OR ended_at <= :e",
                ExpressionAttributeValues=base,
            )
        except Exception as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":
                raise
            self._client.update_item(
                TableName=self.disconnects_table,
                Key=key,
                UpdateExpression="SET reason = :r",
                ExpressionAttributeValues={":r": base[":r"]},
            )

    def write(self, batch: StoreBatch) -> WriteResult:
        """Store every part of the batch idempotently, the source positions last.

        Not atomic (see the module docstring): a failure leaves some parts stored, and writing
        the same batch again completes it without duplicating anything. `latency_s` spans the
        whole call, building the items included.
        """
        started = time.perf_counter()
        trade_rows = [
            {
                "ticker": t.ticker,
                "day": trading_day(t.timestamp),
                "sequence_number": t.sequence_number,
                "price": t.price,
                "size": t.size,
                "timestamp": t.timestamp,
                "ingest_ts": t.ingest_ts,
                "exchange": t.exchange,
                "tape": t.tape,
                "conditions": list(t.conditions),
                "trade_id": t.trade_id,
                "trf_id": t.trf_id,
            }
            for t in batch.trades
        ]
        quote_rows = [
            {
                "ticker": q.ticker,
                "day": trading_day(q.timestamp),
                "sequence_number": q.sequence_number,
                "bid_price": q.bid_price,
                "bid_size": q.bid_size,
                "ask_price": q.ask_price,
                "ask_size": q.ask_size,
                "timestamp": q.timestamp,
                "ingest_ts": q.ingest_ts,
                "bid_exchange": q.bid_exchange,
                "ask_exchange": q.ask_exchange,
                "tape": q.tape,
                "conditions": list(q.conditions),
            }
            for q in batch.quotes
        ]
        trades_inserted = quotes_inserted = 0
        if trade_rows:
            trades_inserted, latest, _ = self._write_events(
                self.trades_table, TRADE_COLUMNS, trade_rows, self._owe_volume
            )
            self._add_volume()
            # Always applied (not only when something was new): a batch replayed after a crash
            # that stored the trades but not this update must still move `latest` forward.
            self._write_latest("trade", TRADE_COLUMNS, latest)
        if quote_rows:
            quotes_inserted, latest, _ = self._write_events(
                self.quotes_table, QUOTE_COLUMNS, quote_rows
            )
            self._write_latest("quote", QUOTE_COLUMNS, latest)
        if batch.dead_letters:
            self._write_dead_letters(batch.dead_letters)
        if batch.disconnects:
            self._map(self._write_disconnect, list(batch.disconnects))
        for name, rows in batch.derived.items():
            d = self._derived.get(name)
            if d is not None and rows:  # undeclared names are scratch rows between stages
                self._write_derived(d, rows)
        if batch.positions:
            # Last: a position says "everything before this is stored".
            self._put_all(
                self.positions_table,
                [{"pk": {"S": k}, "value": {"S": str(v)}} for k, v in batch.positions.items()],
            )
        return WriteResult(
            trades_inserted=trades_inserted,
            trades_duplicate=len(trade_rows) - trades_inserted,
            quotes_inserted=quotes_inserted,
            dead_letters=len(batch.dead_letters),
            latency_s=time.perf_counter() - started,
        )

    def _write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        base = self._next_write_order(len(letters))
        run = uuid.uuid4().hex[:12]
        items: list[Item] = []
        for i, dl in enumerate(letters):
            item: Item = {
                "pk": {"S": "dlq"},
                # Unique per write (never deduplicated, like SQLite's AUTOINCREMENT id) and
                # in write order, so "newest first" is a descending key query.
                "sk": {"S": f"{base + i:020d}#{run}"},
                "reason": {"S": dl.reason},
                "raw": {"S": dl.raw},
                "source": {"S": dl.source},
                "first_seen": {"N": str(int(dl.first_seen))},
                "attempts": {"N": str(int(dl.attempts))},
                "ttl": {"N": str((int(dl.first_seen) + self.retention_ns) // NS_PER_S)},
            }
            if dl.ticker is not None:
                item["ticker"] = {"S": dl.ticker}
            items.append(item)
        self._put_all(self.dlq_table, items)

    def set_position(self, key: str, value: str) -> None:
        self._client.put_item(
            TableName=self.positions_table, Item={"pk": {"S": key}, "value": {"S": str(value)}}
        )

    # -- reads -----------------------------------------------------------------------------

    def _alive(self, item: Mapping[str, Any], now_s: int) -> bool:
        ttl = item.get("ttl")
        return ttl is None or int(ttl["N"]) >= now_s

    @staticmethod
    def _now_s() -> int:
        return now_ns() // NS_PER_S

    def _get(self, table: str, pk: str, sk: str | None = None) -> Item | None:
        key: Item = {"pk": {"S": pk}}
        if sk is not None:
            key["sk"] = {"S": sk}
        resp = self._client.get_item(TableName=table, Key=key, ConsistentRead=True)
        item = resp.get("Item")
        return dict(item) if item is not None and self._alive(item, self._now_s()) else None

    def _query(self, limit: int | None = None, **kwargs: Any) -> Iterator[Item]:
        """Every live item of a query, page after page, at most `limit` of them."""
        now_s = self._now_s()
        n = 0
        while True:
            resp = self._client.query(ConsistentRead=True, **kwargs)
            for item in resp.get("Items", []):
                if self._alive(item, now_s):
                    yield dict(item)
                    n += 1
                    if limit is not None and n >= limit:
                        return
            last = resp.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def _scan(self, table: str, **kwargs: Any) -> Iterator[Item]:
        now_s = self._now_s()
        while True:
            resp = self._client.scan(TableName=table, ConsistentRead=True, **kwargs)
            for item in resp.get("Items", []):
                if self._alive(item, now_s):
                    yield dict(item)
            last = resp.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def position(self, key: str) -> str | None:
        item = self._get(self.positions_table, key)
        return None if item is None else str(item["value"]["S"])

    def _latest(self, ticker: str, kind: str, columns: Mapping[str, str]) -> dict[str, Any] | None:
        item = self._get(self.latest_table, ticker, kind)
        if item is None:
            return None
        out = _row(item, columns)
        out["conditions"] = list(decode_conditions(out["conditions"]))
        return out

    def latest_trade(self, ticker: str) -> dict[str, Any] | None:
        out = self._latest(ticker, "trade", TRADE_COLUMNS)
        if out is None:
            return None
        vol = self._get(self.latest_table, ticker, f"volume#{out['day']}")
        if vol is not None:
            out["volume"] = int(vol["volume"]["N"])
        return out

    def latest_quote(self, ticker: str) -> dict[str, Any] | None:
        return self._latest(ticker, "quote", QUOTE_COLUMNS)

    def _tickers_with(self, kinds: Sequence[str]) -> list[str]:
        found = {
            it["pk"]["S"]
            for it in self._scan(self.latest_table, ProjectionExpression="pk, sk")
            if it["sk"]["S"] in kinds
        }
        return sorted(found)

    def known_tickers(self) -> list[str]:
        return self._tickers_with(("trade", "quote"))

    def _event_query(
        self,
        table: str,
        tickers: Sequence[str],
        since_ns: int,
        *,
        newest_first: bool,
        limit: int | None,
    ) -> list[Item]:
        """Events of `tickers` since `since_ns` from every shard, merged in key (time) order."""

        def shard(job: tuple[str, int]) -> list[Item]:
            ticker, s = job
            return list(
                self._query(
                    limit=limit,
                    TableName=table,
                    KeyConditionExpression="pk = :pk AND sk >= :sk",
                    ExpressionAttributeValues={
                        ":pk": {"S": f"{ticker}#{s}"},
                        ":sk": {"S": f"{max(int(since_ns), 0):020d}"},
                    },
                    ScanIndexForward=not newest_first,
                    **({"Limit": min(limit, 1000)} if limit is not None else {}),
                )
            )

        # One flat map over (ticker, shard): pool tasks must never wait on other pool tasks,
        # or enough tickers would occupy every worker and deadlock.
        jobs = [(t, s) for t in tickers for s in range(SHARDS)]
        items = [it for part in self._map(shard, jobs) for it in part]
        items.sort(key=lambda it: it["sk"]["S"], reverse=newest_first)
        return items if limit is None else items[:limit]

    def _derived_rows(
        self, d: _Derived, ticker: str, since_ns: int | None, limit: int
    ) -> list[dict[str, Any]]:
        if d.in_latest:
            item = self._get(d.table, ticker, d.name)
            rows = [] if item is None else [_row(item, d.columns) | {"_w": _decode(item["_w"])}]
        else:
            pk = ticker if d.ticker_in_key else _NO_TICKER
            kwargs: dict[str, Any] = {
                "TableName": d.table,
                "ExpressionAttributeValues": {":pk": {"S": pk}},
                "KeyConditionExpression": "pk = :pk",
            }
            if not d.ticker_in_key:
                kwargs["FilterExpression"] = "ticker = :t"
                kwargs["ExpressionAttributeValues"][":t"] = {"S": ticker}
            rows = []
            if d.spec.time_column:
                # One more than needed per page: the tie check looks one row past `limit`.
                kwargs |= {
                    "IndexName": _TIME_INDEX,
                    "ScanIndexForward": False,
                    "Limit": min(limit + 1, 1000),
                }
                if since_ns is not None:
                    kwargs["KeyConditionExpression"] += " AND #t >= :since"
                    kwargs["ExpressionAttributeNames"] = {"#t": "_t"}
                    kwargs["ExpressionAttributeValues"][":since"] = {"N": str(int(since_ns))}
                # Read in time order until `limit` rows are in hand and the next row is older
                # than the last one taken, so ties on time are then ordered like SQLite's.
                for item in self._query(**kwargs):
                    row = _row(item, d.columns) | {"_w": _decode(item["_w"])}
                    if (
                        len(rows) >= limit
                        and "_t" in item
                        and _decode(item["_t"]) < rows[-1][d.spec.time_column]
                    ):
                        break
                    rows.append(row)
            else:
                rows = [
                    _row(item, d.columns) | {"_w": _decode(item["_w"])}
                    for item in self._query(**kwargs)
                ]
        if since_ns is not None and d.since_column is not None:
            rows = [
                r for r in rows if r[d.since_column] is not None and r[d.since_column] >= since_ns
            ]
        rows.sort(key=d.sort_key, reverse=True)
        for r in rows:
            del r["_w"]
        return rows[:limit]

    def latest_row(self, table: str, ticker: str) -> dict[str, Any] | None:
        d = self._derived.get(table)
        if d is None or not d.has_ticker:
            return None
        rows = self._derived_rows(d, ticker, None, 1)
        return rows[0] if rows else None

    def rows_since(
        self, table: str, ticker: str, since_ns: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Rows for `ticker` with time >= since_ns, newest first; derived tables, and also
        "trades"/"quotes" (all 8 shards merged), which SQLiteHotStore does not serve here."""
        if table in ("trades", "quotes"):
            name, cols = (
                (self.trades_table, TRADE_COLUMNS)
                if table == "trades"
                else (self.quotes_table, QUOTE_COLUMNS)
            )
            items = self._event_query(name, [ticker], since_ns, newest_first=True, limit=limit)
            out = [_row(it, cols) for it in items]
            for r in out:
                r["conditions"] = list(decode_conditions(r["conditions"]))
            return out
        d = self._derived.get(table)
        if d is None or not d.has_ticker or d.since_column is None:
            return []
        return self._derived_rows(d, ticker, int(since_ns), int(limit))

    def trades_since(self, since_ns: int) -> list[Trade]:
        """Stored trades with timestamp >= since_ns in (timestamp, sequence_number) order."""
        tickers = self._tickers_with(("trade",))
        items = self._event_query(
            self.trades_table, tickers, since_ns, newest_first=False, limit=None
        )
        out: list[Trade] = []
        for it in items:
            r = _row(it, TRADE_COLUMNS)
            out.append(
                Trade(
                    ticker=r["ticker"],
                    sequence_number=r["sequence_number"],
                    price=r["price"],
                    size=r["size"],
                    timestamp=r["timestamp"],
                    ingest_ts=r["ingest_ts"],
                    exchange=r["exchange"],
                    tape=r["tape"],
                    conditions=decode_conditions(r["conditions"]),
                    trade_id=r["trade_id"] or "",
                    trf_id=r["trf_id"],
                )
            )
        return out

    def unjoined_news(self) -> list[News]:
        """Articles stored in `news` with no row in `market_sentiment` (oldest first)."""
        news = self._derived.get("news")
        if news is None:
            return []
        joined: set[tuple[str, str]] = set()
        sentiment = self._derived.get("market_sentiment")
        if sentiment is not None:
            joined = {
                (it["pk"]["S"], it["sk"]["S"])
                for it in self._scan(
                    sentiment.table,
                    ProjectionExpression="pk, sk, #ttl",
                    ExpressionAttributeNames={"#ttl": "ttl"},
                )
            }
        rows = []
        for it in self._scan(news.table):
            if (it["pk"]["S"], it["sk"]["S"]) in joined:
                continue
            rows.append((_row(it, news.columns), _decode(it["_w"])))
        rows.sort(key=lambda p: (p[0]["published_at"] or 0, p[1]))
        return [
            News(
                article_id=str(r["article_id"]),
                ticker=r["ticker"],
                headline=r["headline"] or "",
                summary=r["summary"] or "",
                source=r["source"] or "",
                url=r["url"] or "",
                published_at=int(r["published_at"] or 0),
                ingest_ts=int(r["ingest_ts"] or 0),
            )
            for r, _ in rows
        ]

    def disconnects(self, since_ns: int = 0) -> list[Disconnect]:
        rows = [
            Disconnect(
                it["pk"]["S"],
                int(it["started_at"]["N"]),
                int(it["ended_at"]["N"]),
                it.get("reason", {}).get("S", ""),
            )
            for it in self._scan(self.disconnects_table)
        ]
        return sorted((d for d in rows if d.ended_at >= since_ns), key=lambda d: d.started_at)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters, newest first."""
        items = self._query(
            limit=int(limit),
            TableName=self.dlq_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "dlq"}},
            ScanIndexForward=False,
        )
        return [
            DeadLetter(
                it["reason"]["S"],
                it["raw"]["S"],
                it["source"]["S"],
                int(it["first_seen"]["N"]),
                int(it["attempts"]["N"]),
                it["ticker"]["S"] if "ticker" in it else None,
            )
            for it in items
        ]

    def count(self, table: str) -> int:
        """Live rows in a hot table (trades, quotes, dlq, disconnects or a derived one)."""
        names = {
            "trades": self.trades_table,
            "quotes": self.quotes_table,
            "dlq": self.dlq_table,
            "disconnects": self.disconnects_table,
        }
        d = self._derived.get(table)
        if d is not None and d.in_latest:
            return sum(
                1
                for it in self._scan(d.table, ProjectionExpression="pk, sk")
                if it["sk"]["S"] == d.name
            )
        name = names.get(table) or (d.table if d is not None else None)
        if name is None:
            raise KeyError(table)
        return sum(
            1
            for _ in self._scan(
                name, ProjectionExpression="pk, #ttl", ExpressionAttributeNames={"#ttl": "ttl"}
            )
        )

    def table_names(self) -> list[str]:
        """Every table this store uses (the latest table once, however many live in it)."""
        names = [
            self.trades_table,
            self.quotes_table,
            self.latest_table,
            self.dlq_table,
            self.disconnects_table,
            self.positions_table,
        ]
        return list(dict.fromkeys([*names, *(d.table for d in self._derived.values())]))

    def drop_tables(self) -> None:
        """Delete every table of this store (tests, and `prefix` clean-ups by an operator)."""
        for name in self.table_names():
            try:
                self._client.delete_table(TableName=name)
            except Exception as exc:
                if _error_code(exc) != "ResourceNotFoundException":
                    raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._volume_owed:
            # Stopped while a batch kept failing: its replay, in the next process, will find
            # the trades stored and not count them, so settle the account now if DynamoDB lets.
            try:
                self._add_volume()
            except Exception as exc:
                log.error("session volume not added for %s: %s", sorted(self._volume_owed), exc)
        self._pool.shutdown(wait=True)
        self._client.close()
