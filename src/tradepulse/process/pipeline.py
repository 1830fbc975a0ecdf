"""The processing stage between the log and the stores, free of I/O.

`Processor.process(frames)` turns one micro-batch of log frames into one `StoreBatch`:
decode + validate → the analytic stages in order (features → bars → anomalies → news join) →
rows for the hot store. The same object runs behind the embedded queue, the Kafka consumer
and the replay reader, so live, replay and cluster runs compute identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tradepulse.events import DeadLetter, Disconnect, News, Quote, Trade
from tradepulse.log.embedded import Frame
from tradepulse.ops import metrics
from tradepulse.store.base import DerivedTable, StoreBatch
from tradepulse.validate import decode_frame


@dataclass(slots=True)
class WorkBatch:
    """What one micro-batch carries through the stages; stages add rows to `derived`."""

    trades: list[Trade] = field(default_factory=list)
    quotes: list[Quote] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    news: list[News] = field(default_factory=list)
    disconnects: list[Disconnect] = field(default_factory=list)
    derived: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)
    watermark_ns: int = 0  # the greatest event time seen so far, across tickers
    now_ns: int = 0

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self.derived.setdefault(table, [])


class Stage(Protocol):
    """One analytic step. Stages are deterministic functions of the event sequence so that a
    replay, a restart or a second processor computes the same rows."""

    tables: Sequence[DerivedTable]

    def apply(self, batch: WorkBatch) -> None: ...

    def warm(self, batch: WorkBatch) -> None:
        """Rebuild state from already-processed history (trades, news) without emitting."""
        ...


class Processor:
    def __init__(self, stages: Sequence[Stage], *, max_skew_ns: int) -> None:
        self.stages = list(stages)
        self.max_skew_ns = max_skew_ns
        self.watermark_ns = 0
        self._last_seq: dict[str, int] = {}

    @property
    def tables(self) -> list[DerivedTable]:
        return [t for s in self.stages for t in s.tables]

    def decode(self, frames: Sequence[Frame], now_ns: int) -> WorkBatch:
        batch = WorkBatch(now_ns=now_ns)
        for frame in frames:
            decoded = frame.decoded
            if decoded is None and frame.raw is not None:
                decoded = decode_frame(
                    frame.raw,
                    frame.recv_ts,
                    source=frame.source,
                    now_ns=now_ns,
                    max_skew_ns=self.max_skew_ns,
                )
            if decoded is not None and frame.decoded is None:
                self._check_sequence(decoded.trades)
            if decoded is not None:
                batch.trades.extend(decoded.trades)
                batch.quotes.extend(decoded.quotes)
                batch.dead_letters.extend(decoded.dead_letters)
            if frame.news:
                batch.news.extend(frame.news)
            if frame.disconnects:
                batch.disconnects.extend(frame.disconnects)
            if frame.position is not None:
                batch.positions[frame.position[0]] = frame.position[1]
        return batch

    def _check_sequence(self, trades: Sequence[Trade]) -> None:
        """Count live trades whose sequence number repeats or goes backwards for its ticker
        (holes are normal in Polygon's feed and are not counted)."""
        last = self._last_seq
        dup = back = 0
        for t in trades:
            prev = last.get(t.ticker, -1)
            seq = t.sequence_number
            if seq > prev:
                last[t.ticker] = seq
            elif seq == prev:
                dup += 1
            else:
                back += 1
        if dup:
            metrics.SEQUENCE_ISSUES.labels("duplicate").inc(dup)
        if back:
            metrics.SEQUENCE_ISSUES.labels("out_of_order").inc(back)

    def run_stages(self, batch: WorkBatch) -> StoreBatch:
        for trade in batch.trades:
            if trade.timestamp > self.watermark_ns:
                self.watermark_ns = trade.timestamp
        batch.watermark_ns = self.watermark_ns
        for stage in self.stages:
            stage.apply(batch)
        _count(batch)
        return StoreBatch(
            trades=batch.trades,
            quotes=batch.quotes,
            dead_letters=batch.dead_letters,
            disconnects=batch.disconnects,
            derived=batch.derived,
            positions=batch.positions,
        )

    def process(self, frames: Sequence[Frame], now_ns: int) -> StoreBatch:
        return self.run_stages(self.decode(frames, now_ns))

    def warm(self, trades: Sequence[Trade], news: Sequence[News] = ()) -> None:
        """Replay already-committed history through the stages without emitting rows, so a
        restarted processor continues with the state an uninterrupted one would have."""
        for trade in trades:
            if trade.timestamp > self.watermark_ns:
                self.watermark_ns = trade.timestamp
        batch = WorkBatch(trades=list(trades), news=list(news), watermark_ns=self.watermark_ns)
        for stage in self.stages:
            stage.warm(batch)


def _count(batch: WorkBatch) -> None:
    if batch.trades:
        metrics.EVENTS.labels("valid", "trade").inc(len(batch.trades))
    if batch.quotes:
        metrics.EVENTS.labels("valid", "quote").inc(len(batch.quotes))
    if batch.dead_letters:
        metrics.EVENTS.labels("dead_letter", "event").inc(len(batch.dead_letters))
        reasons: dict[str, int] = {}
        for d in batch.dead_letters:
            code = d.reason.split(":", 1)[0]
            reasons[code] = reasons.get(code, 0) + 1
        for code, n in reasons.items():
            metrics.DLQ.labels(code).inc(n)
