"""Replay Polygon stocks flat files (gzipped CSV) through the live pipeline's path.

Streaming: pyarrow's CSV reader decodes the file block by block, so memory is bounded by the
block size (not the file size) — a whole trading day never sits in memory. Each block becomes
trades/quotes plus one dead letter per invalid row, exactly as live frames do.

Trades columns: ticker, conditions, correction, exchange, id, participant_timestamp, price,
sequence_number, sip_timestamp, size, tape, trf_id, trf_timestamp (timestamps in ns). Polygon's
files name the third column `correction`; `correlation` (the spelling in our issue) is accepted
too. Neither is stored. Real files write 0 in trf_id / trf_timestamp for a print that did not
go through a TRF: that 0 becomes "no TRF" (None), as the WebSocket and REST express it.
Quotes columns: ticker, ask_exchange, ask_price, ask_size, bid_exchange, bid_price, bid_size,
conditions, indicators, participant_timestamp, sequence_number, sip_timestamp, tape,
trf_timestamp.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from tradepulse.config import TICKER_RE
from tradepulse.events import DeadLetter, Quote, Trade

TRADE_COLUMNS = (
    "ticker", "conditions", "correction", "exchange", "id", "participant_timestamp", "price",
    "sequence_number", "sip_timestamp", "size", "tape", "trf_id", "trf_timestamp",
)  # fmt: skip
QUOTE_COLUMNS = (
    "ticker", "ask_exchange", "ask_price", "ask_size", "bid_exchange", "bid_price", "bid_size",
    "conditions", "indicators", "participant_timestamp", "sequence_number", "sip_timestamp",
    "tape", "trf_timestamp",
)  # fmt: skip
# Every trade column but the correction indicator, whose name varies (see the docstring).
_TRADE_HEADER_CORE = frozenset(TRADE_COLUMNS) - {"correction"}
_TRADE_REQUIRED = ("ticker", "price", "size", "sip_timestamp", "sequence_number")
_QUOTE_REQUIRED = ("ticker", "bid_price", "ask_price", "sip_timestamp", "sequence_number")
# Read everything loosely typed as text where a bad row could break a typed column: a bad value
# must become one dead letter, not abort the whole block.
_STRING_TYPES = {name: pa.string() for name in (*TRADE_COLUMNS, *QUOTE_COLUMNS, "correlation")}

Kind = Literal["trades", "quotes"]


class ReplayError(Exception):
    """A file that is not a Polygon trades or quotes flat file."""


@dataclass(slots=True)
class ReplayChunk:
    trades: list[Trade] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    rows: int = 0  # rows read so far in this file, including this chunk
    bytes_read: int = 0  # compressed bytes consumed so far (for progress / ETA)
    first_ts: int = 0
    last_ts: int = 0


def detect_kind(path: Path) -> Kind:
    with _open(path) as fh:
        header = fh.readline().decode("utf-8", "replace").strip().split(",")
    if set(header) >= _TRADE_HEADER_CORE:
        return "trades"
    if set(QUOTE_COLUMNS) <= set(header):
        return "quotes"
    raise ReplayError(
        f"{path}: header {','.join(header)[:200]!r} is not a Polygon trades or quotes flat file"
    )


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_flat_file(
    path: Path,
    *,
    ingest_ts: int,
    start_row: int = 0,
    block_bytes: int = 4 << 20,
    source: str | None = None,
) -> Iterator[ReplayChunk]:
    """Yield the file's rows as validated events, block by block, skipping the first
    `start_row` rows (resume after a restart)."""
    kind = detect_kind(path)
    source = source or f"replay:{path.name}"
    raw = open(path, "rb")  # noqa: SIM115 - closed in finally; tell() gives progress
    try:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream = pa.CompressedInputStream(raw, "gzip") if compressed else pa.PythonFile(raw)
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(block_size=block_bytes),
            convert_options=pacsv.ConvertOptions(
                column_types=_STRING_TYPES, strings_can_be_null=True, null_values=[""]
            ),
        )
        rows = 0
        for batch in reader:
            n = batch.num_rows
            if rows + n <= start_row:
                rows += n
                continue
            cols = batch.to_pydict()
            skip = max(0, start_row - rows)
            rows += n
            chunk = ReplayChunk(rows=rows, bytes_read=raw.tell())
            if kind == "trades":
                _trades(cols, skip, n, ingest_ts, source, chunk)
            else:
                _quotes(cols, skip, n, ingest_ts, source, chunk)
            yield chunk
    finally:
        raw.close()


def _bad(reason: str, row: dict[str, Any], ts: int, source: str) -> DeadLetter:
    ticker = row.get("ticker")
    return DeadLetter(
        reason=reason,
        raw=orjson.dumps(row).decode(),
        source=source,
        first_seen=ts,
        ticker=ticker if isinstance(ticker, str) else None,
    )


def _int(v: str | None) -> int:
    if v is None or v == "":
        raise ValueError("empty")
    return int(v)


def _float(v: str | None) -> float:
    if v is None or v == "":
        raise ValueError("empty")
    f = float(v)
    if not math.isfinite(f):
        raise OverflowError("non-finite")
    return f


def _conditions(v: str | None) -> tuple[int, ...]:
    if not v:
        return ()
    return tuple(int(c) for c in v.split(","))


def _row(cols: dict[str, list[Any]], i: int) -> dict[str, Any]:
    return {k: v[i] for k, v in cols.items()}


def _check_required(row: dict[str, Any], required: tuple[str, ...]) -> str | None:
    for name in required:
        if row.get(name) in (None, ""):
            return f"missing_field:{name}"
    if not TICKER_RE.match(row["ticker"]):
        return "bad_ticker"
    return None


def _trades(
    cols: dict[str, list[Any]], skip: int, n: int, ts: int, source: str, out: ReplayChunk
) -> None:
    for i in range(skip, n):
        row = _row(cols, i)
        reason = _check_required(row, _TRADE_REQUIRED)
        if reason is None:
            try:
                price = _float(row["price"])
                size = _int(row["size"])
                sip = _int(row["sip_timestamp"])
                seq = _int(row["sequence_number"])
                conds = _conditions(row.get("conditions"))
                trf = row.get("trf_id")
                trade = Trade(
                    ticker=row["ticker"],
                    price=price,
                    size=size,
                    timestamp=sip,
                    ingest_ts=ts,
                    sequence_number=seq,
                    exchange=int(row.get("exchange") or 0),
                    tape=int(row.get("tape") or 0),
                    conditions=conds,
                    trade_id=row.get("id") or "",
                    trf_id=int(trf) if trf not in (None, "", "0") else None,
                )
            except OverflowError:
                reason = "non_finite"
            except ValueError:
                reason = "wrong_type"
            else:
                if price <= 0:
                    reason = "non_positive_price"
                elif size < 0:
                    reason = "negative_size"
                else:
                    out.trades.append(trade)
                    out.first_ts = out.first_ts or sip
                    out.last_ts = sip
                    continue
        out.dead_letters.append(_bad(reason, row, ts, source))


def _quotes(
    cols: dict[str, list[Any]], skip: int, n: int, ts: int, source: str, out: ReplayChunk
) -> None:
    for i in range(skip, n):
        row = _row(cols, i)
        reason = _check_required(row, _QUOTE_REQUIRED)
        if reason is None:
            try:
                bp, ap = _float(row["bid_price"]), _float(row["ask_price"])
                bs, as_ = _int(row.get("bid_size") or "0"), _int(row.get("ask_size") or "0")
                sip = _int(row["sip_timestamp"])
                quote = Quote(
                    ticker=row["ticker"],
                    bid_price=bp,
                    bid_size=bs,
                    ask_price=ap,
                    ask_size=as_,
                    timestamp=sip,
                    ingest_ts=ts,
                    sequence_number=_int(row["sequence_number"]),
                    bid_exchange=int(row.get("bid_exchange") or 0),
                    ask_exchange=int(row.get("ask_exchange") or 0),
                    tape=int(row.get("tape") or 0),
                    conditions=_conditions(row.get("conditions")),
                )
            except OverflowError:
                reason = "non_finite"
            except ValueError:
                reason = "wrong_type"
            else:
                if bp < 0 or ap < 0 or (bp == 0 and ap == 0):
                    reason = "non_positive_price"
                elif bs < 0 or as_ < 0:
                    reason = "negative_size"
                else:
                    out.quotes.append(quote)
                    out.first_ts = out.first_ts or sip
                    out.last_ts = sip
                    continue
        out.dead_letters.append(_bad(reason, row, ts, source))
