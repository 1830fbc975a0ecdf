"""The small interfaces every store backend implements.

The pipeline hands a `StoreBatch` to `HotStore.write`, which must apply every part of it and
the source positions atomically and idempotently: writing the same batch twice leaves one copy,
and a duplicate is a success. The cold store is derived from the hot store's durable order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tradepulse.events import DeadLetter, Disconnect, Quote, Trade


@dataclass(slots=True)
class StoreBatch:
    trades: Sequence[Trade] = ()
    quotes: Sequence[Quote] = ()
    dead_letters: Sequence[DeadLetter] = ()
    disconnects: Sequence[Disconnect] = ()
    # Rows produced by the processing stages, keyed by table name (features, bars, anomalies,
    # news, sentiment); each row is a plain dict whose keys are the table's columns.
    derived: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    # Source positions (e.g. replay file offset) committed in the same transaction.
    positions: Mapping[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.trades) + len(self.quotes) + len(self.dead_letters)


@dataclass(slots=True, frozen=True)
class WriteResult:
    trades_inserted: int
    trades_duplicate: int
    quotes_inserted: int
    dead_letters: int
    latency_s: float


class HotStore(Protocol):
    def write(self, batch: StoreBatch) -> WriteResult: ...

    def latest_trade(self, ticker: str) -> dict[str, Any] | None: ...

    def latest_quote(self, ticker: str) -> dict[str, Any] | None: ...

    def known_tickers(self) -> list[str]: ...

    def position(self, key: str) -> str | None: ...

    def close(self) -> None: ...


class ColdStore(Protocol):
    def flush(self) -> int:
        """Copy everything the hot store holds beyond the last flushed position; return rows."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DerivedTable:
    """A table written by a processing stage, declared once by that stage.

    `mode` says what a second write with the same key does: "ignore" keeps the first copy
    (append-only facts such as anomalies), "replace" keeps the last (bars re-emitted by late
    trades), "newer" keeps the row whose `order_by` columns compare greater (latest-per-ticker).
    Column types are SQLite/DuckDB affinities: INTEGER, REAL, TEXT (JSON for nested values).
    """

    name: str
    columns: Mapping[str, str]
    key: tuple[str, ...]
    mode: str = "ignore"
    order_by: tuple[str, ...] = ()
    time_column: str | None = None  # event-time ns column used for hot retention and `since`
    cold: bool = False  # also flushed to the cold store under <name>/date=/ticker=/


class HotReader(Protocol):
    """What the API and the query layer read from any hot store."""

    def latest_trade(self, ticker: str) -> dict[str, Any] | None: ...

    def latest_quote(self, ticker: str) -> dict[str, Any] | None: ...

    def known_tickers(self) -> list[str]: ...

    def latest_row(self, table: str, ticker: str) -> dict[str, Any] | None:
        """Newest row of a derived table for `ticker` (by its time column)."""
        ...

    def rows_since(
        self, table: str, ticker: str, since_ns: int, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Rows of a derived table for `ticker` with time >= since_ns, newest first."""
        ...
