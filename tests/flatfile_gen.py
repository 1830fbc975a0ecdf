"""Writers of Polygon stocks flat files (gzipped CSV) for replay tests; nothing is downloaded.

Two sources, both streaming (a chunk at a time; a file is never held in memory whole):

- `write_sim_files`: the simulator's pure generator (`MarketGenerator.advance`) stepped over
  event time, so the rows are exactly what the simulator would have sent live (trades with
  their TRF fields and conditions, NBBO quotes). About 20 µs per event: fine for samples.
- `write_numpy_trades`: a vectorised random walk, for the million-row files (a few seconds).

Both write rows in event-time order across tickers. Column layout is Polygon's: trades
``ticker, conditions, correction, exchange, id, participant_timestamp, price,
sequence_number, sip_timestamp, size, tape, trf_id, trf_timestamp`` (real files say
`correction`; the issue's `correlation` spelling is accepted by the reader and can be written
with ``correction_column="correlation"``), quotes as in `sources.replay.QUOTE_COLUMNS`.
Real files write 0 for "no TRF" in trf_id/trf_timestamp and 0 for correction; so do these.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradepulse.market_time import ET, NS_PER_MS, NS_PER_S
from tradepulse.sim import MarketGenerator, SimConfig
from tradepulse.sources.replay import QUOTE_COLUMNS

# The conditions keep-out set of process/conditions.py, repeated for the DuckDB reference.
EXCLUDED = (2, 7, 10, 13, 15, 16, 20, 21, 29, 37, 38, 52, 53)


def trade_header(correction_column: str = "correction") -> list[str]:
    return [
        "ticker",
        "conditions",
        correction_column,
        "exchange",
        "id",
        "participant_timestamp",
        "price",
        "sequence_number",
        "sip_timestamp",
        "size",
        "tape",
        "trf_id",
        "trf_timestamp",
    ]


def et_ns(day: str, hh: int, mm: int = 0, ss: float = 0.0) -> int:
    """`day` (YYYY-MM-DD) at hh:mm:ss America/New_York, in ns."""
    y, m, d = (int(x) for x in day.split("-"))
    base = datetime(y, m, d, hh, mm, tzinfo=ET)
    return int(base.timestamp()) * NS_PER_S + int(ss * NS_PER_S)


@contextmanager
def _gz_text(path: Path) -> Iterator[IO[str]]:
    # mtime=0 and a fixed level: the same rows give the same bytes (the committed sample is
    # checked against a regeneration).
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as text,
    ):
        yield text


def write_sim_files(
    trades_path: Path,
    quotes_path: Path | None,
    *,
    tickers: Sequence[str],
    start_ns: int,
    seconds: float,
    rate: float = 200.0,
    seed: int = 7,
    step_s: float = 0.25,
    correction_column: str = "correction",
) -> dict[str, int]:
    """Step the simulator's generator over `seconds` of event time from `start_ns` and write
    its trades (and quotes) as flat files; return the valid trades per ticker."""
    cfg = SimConfig(tickers=list(tickers), rate=rate, seed=seed, news_rate=0.0)
    gen = MarketGenerator(cfg, start_ns)
    end = start_ns + int(seconds * NS_PER_S)
    step = int(step_s * NS_PER_S)
    qctx = _gz_text(quotes_path) if quotes_path is not None else None
    with _gz_text(trades_path) as tfh:
        qfh = qctx.__enter__() if qctx is not None else None
        try:
            tw = csv.writer(tfh, lineterminator="\n")
            tw.writerow(trade_header(correction_column))
            qw = csv.writer(qfh, lineterminator="\n") if qfh is not None else None
            if qw is not None:
                qw.writerow(QUOTE_COLUMNS)
            t = start_ns
            for _ in range(int(seconds / step_s) + 2):  # bounded: one pass over the span
                if t >= end:
                    break
                t = min(t + step, end)
                batch = gen.advance(t)
                for sym, row in batch.trades:
                    sip, seq, price, size, exch, conds, tid, tape, trf, trf_ts, part = row
                    tw.writerow(
                        [
                            sym,
                            ",".join(map(str, conds)),
                            0,
                            exch,
                            tid,
                            part,
                            price,
                            seq,
                            sip,
                            size,
                            tape,
                            trf if trf is not None else 0,
                            trf_ts if trf_ts is not None else 0,
                        ]
                    )
                if qw is None:
                    continue
                for ev in batch.events:
                    if ev["ev"] != "Q":
                        continue
                    sip = ev["t"] * NS_PER_MS
                    qw.writerow(
                        [
                            ev["sym"],
                            ev["ax"],
                            ev["ap"],
                            ev["as"],
                            ev["bx"],
                            ev["bp"],
                            ev["bs"],
                            ev["c"],
                            "",
                            sip - 50_000,
                            ev["q"],
                            sip,
                            ev["z"],
                            0,
                        ]
                    )
        finally:
            if qctx is not None:
                qctx.__exit__(None, None, None)
    return dict(gen.valid_trades)


def write_numpy_trades(
    path: Path,
    n: int,
    *,
    tickers: Sequence[str],
    start_ns: int,
    seconds: float,
    seed: int = 1,
    chunk: int = 250_000,
    correction_column: str = "correction",
) -> dict[str, int]:
    """`n` trades spread evenly over `seconds` from `start_ns`, tickers interleaved in time
    order; per ticker sequence numbers increase with holes and prices follow a random walk.
    Written `chunk` rows at a time. Returns trades per ticker."""
    rng = np.random.default_rng(seed)
    k = len(tickers)
    syms = np.array(list(tickers))
    prices = rng.uniform(20, 400, size=k)
    seqs = rng.integers(1000, 5000, size=k).astype(np.int64)
    trade_ids = rng.integers(10**12, 10**13, size=k).astype(np.int64)
    counts = np.zeros(k, dtype=np.int64)
    span = int(seconds * NS_PER_S)
    cond_choices = np.array(["", "", "", "", "", "14", "41", "14,41", "12,37", "2", "15"])
    cond_p = np.array([0.5, 0.1, 0.05, 0.05, 0.05, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01])
    cond_p /= cond_p.sum()
    header = trade_header(correction_column)
    # Level 1: at the default level compression, not the replay under test, dominates.
    with gzip.open(path, "wb", compresslevel=1) as out:
        done = 0
        while done < n:  # bounded: each pass writes min(chunk, n - done) > 0 rows
            m = min(chunk, n - done)
            idx = np.arange(done, done + m, dtype=np.int64)
            gap = max(span // n, 1)  # idx * span would overflow int64 for a day of ns
            ts = start_ns + idx * gap + rng.integers(0, gap, size=m)
            ts.sort()
            who = rng.integers(0, k, size=m)
            step = 1 + (rng.random(m) < 0.02) * rng.integers(1, 5, size=m)  # holes
            seq = np.empty(m, dtype=np.int64)
            tid = np.empty(m, dtype=np.int64)
            px = np.empty(m, dtype=np.float64)
            for j in range(k):
                mask = who == j
                c = int(mask.sum())
                if not c:
                    continue
                seq[mask] = seqs[j] + np.cumsum(step[mask])
                seqs[j] = seq[mask][-1]
                tid[mask] = trade_ids[j] + np.arange(1, c + 1)
                trade_ids[j] += c
                walk = prices[j] * np.exp(np.cumsum(rng.normal(0, 2e-4, size=c)))
                prices[j] = walk[-1]
                px[mask] = np.round(walk, 2)
                counts[j] += c
            size = np.maximum(1, rng.lognormal(np.log(100), 1.0, size=m).astype(np.int64))
            conds = rng.choice(cond_choices, size=m, p=cond_p)
            exch = rng.choice(np.array([4, 12, 10, 11, 8, 19]), size=m)
            is_trf = exch == 4
            trf = np.where(is_trf, rng.choice(np.array([201, 202, 203]), size=m), 0)
            cols = [
                syms[who],
                np.where(
                    np.char.find(conds, ",") >= 0, np.char.add(np.char.add('"', conds), '"'), conds
                ),
                np.zeros(m, dtype=np.int64),
                exch,
                tid,
                ts - 30_000,
                px,
                seq,
                ts,
                size,
                np.full(m, 3),
                trf,
                np.where(is_trf, ts - 1000, 0),
            ]
            # Joined column-wise in Arrow: the files look like Polygon's (no quotes
            # except around a multi-code conditions field), at ~1 s per million rows.
            text = [pc.cast(pa.array(c), pa.string()) for c in cols]
            lines = pc.binary_join_element_wise(*text, ",")
            if done == 0:
                out.write((",".join(header) + "\n").encode())
            out.write(("\n".join(lines.to_pylist()) + "\n").encode())
            done += m
    return {t: int(c) for t, c in zip(tickers, counts, strict=True)}
