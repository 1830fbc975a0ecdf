"""Each cluster process leaves a one-line JSON summary of its run under `<data>/cluster/`, so
`tradepulse run --backend cluster` can report what its children did without parsing logs.

A processor also rewrites its summary while it runs, with its latency histograms
(`LatencyRecorder`), so `tradepulse bench --backend cluster` reads latency and throughput out
of the processor processes without a side channel."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hdrh.histogram import HdrHistogram

from tradepulse.config import Settings
from tradepulse.events import Quote, Trade

US_MAX = 3_600_000_000  # one hour in µs: the histograms' ceiling
# Seconds of per-second counts a summary carries: a reader polling it more often than this
# sees every second; the summary stays small however long the process runs.
PER_SECOND_KEEP = 900


def new_histogram() -> HdrHistogram:
    # 3 significant digits: 0.1 % resolution from 1 µs to an hour, in a fixed ~180 KiB.
    return HdrHistogram(1, US_MAX, 3)


def decode_histogram(encoded: str) -> HdrHistogram | None:
    """A histogram from `LatencyRecorder.snapshot` (None for an empty one)."""
    return HdrHistogram.decode(encoded.encode()) if encoded else None


class LatencyRecorder:
    """Latency of every event a hot-store write confirmed, from its WebSocket receive time
    (`ingest_ts`, carried through Kafka inside each record) to the write's return, and of the
    write itself, in HDR histograms (µs); plus events confirmed per wall-clock second.

    The cost is per batch, not per event: the events of one WebSocket frame share their
    receive time and a batch shares its confirmation time, so a batch holds few distinct
    latencies; they are counted with numpy and recorded once per distinct value. A batch
    written again (a transaction that aborted) is measured again: `events` counts writes."""

    def __init__(self) -> None:
        self.e2e = new_histogram()
        self.store_write = new_histogram()
        self.events = 0
        self.batches = 0
        self.per_second: dict[int, int] = {}

    def record(
        self, trades: Sequence[Trade], quotes: Sequence[Quote], write_s: float, done_ns: int
    ) -> None:
        self.batches += 1
        self.store_write.record_value(max(1, min(US_MAX, int(write_s * 1e6))))
        n = len(trades) + len(quotes)
        if not n:
            return
        ingest = np.fromiter(
            (e.ingest_ts for seq in (trades, quotes) for e in seq), np.int64, count=n
        )
        lat_us = np.clip((done_ns - ingest) // 1000, 1, US_MAX)
        values, counts = np.unique(lat_us, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            self.e2e.record_value(v, c)
        self.events += n
        second = done_ns // 1_000_000_000
        self.per_second[second] = self.per_second.get(second, 0) + n
        if len(self.per_second) > PER_SECOND_KEEP:
            for s in sorted(self.per_second)[: len(self.per_second) - PER_SECOND_KEEP]:
                del self.per_second[s]

    def snapshot(self) -> dict[str, Any]:
        """The cumulative figures as summary fields (histograms HDR-encoded, base64 text)."""
        return {
            "updated_ns": time.time_ns(),
            "measured_events": self.events,
            "measured_batches": self.batches,
            "e2e_latency_us": self.e2e.encode().decode() if self.events else "",
            "store_write_us": self.store_write.encode().decode() if self.batches else "",
            "committed_per_s": [[s, n] for s, n in sorted(self.per_second.items())],
        }


def summary_path(settings: Settings, name: str) -> Path:
    return settings.data_dir / "cluster" / f"{name}.json"


def write_summary(settings: Settings, name: str, summary: Any) -> None:
    data = asdict(summary) if is_dataclass(summary) and not isinstance(summary, type) else summary
    path = summary_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)


def read_summary(settings: Settings, name: str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(summary_path(settings, name).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
