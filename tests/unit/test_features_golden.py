"""Golden test: every feature of every trade, and every bar, against DuckDB SQL over the trades.

The reference is written independently of the engine: plain window functions over the
tape (ticker, session) ordered by timestamp, with RANGE frames in nanoseconds. A frame
``RANGE BETWEEN W−1 PRECEDING AND CURRENT ROW`` is the half-open window (t − W, t]; prints
stamped with the same nanosecond but a later sequence number are not yet on the tape for a
row, so their sums (the ``after_*`` columns) are subtracted.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tradepulse.config import Settings
from tradepulse.events import Trade
from tradepulse.process.conditions import EXCLUDED_CONDITIONS
from tradepulse.process.feature_stage import BarStage, FeatureStage
from tradepulse.process.features import ROW_KEYS, session_of
from tradepulse.process.pipeline import WorkBatch

pytestmark = pytest.mark.unit

S = 1_000_000_000
W = 60 * S
N_BASELINE = 20
MIN_BASELINE = 5
STD_FLOOR = 1.0
# 03:40 ET (EDT) on a Tuesday: the run crosses the 04:00 ET session boundary.
START = int(datetime(2024, 3, 12, 7, 40, tzinfo=UTC).timestamp()) * S
TICKERS = ("AAPL", "MSFT", "AMZN", "TSLA", "NVDA")


def synthetic_trades(seed: int = 7, minutes: int = 40) -> list[Trade]:
    """A few thousand trades: bursts and quiet spells, ms-stamped (so ties), zero sizes,
    excluded and harmless condition codes, sequence numbers with holes."""
    rng = np.random.default_rng(seed)
    out: list[Trade] = []
    for k, ticker in enumerate(TICKERS):
        t = START + int(rng.integers(0, 20 * S))
        end = START + minutes * W
        seq = 1000 * k
        price = 50.0 + 40 * k
        while t < end:
            rate = 1.2 if (t - START) // (4 * W) % 3 else 0.15  # trades/s, bursty
            if k == 1 and START + 12 * W < t < START + 15 * W:
                t = START + 15 * W  # a three-minute silence: empty windows
            t += int(rng.exponential(1 / rate) * 1000) * 1_000_000  # ms stamps → ties
            seq += int(rng.integers(1, 4))
            price = max(1.0, price * (1 + rng.normal(0, 0.001)))
            size = int(rng.choice([0, 1, 50, 100, 100, 200, 500, 1000, 2500]))
            r = rng.random()
            conds: tuple[int, ...] = ()
            if r < 0.05:
                conds = (int(rng.choice(sorted(EXCLUDED_CONDITIONS))),)
            elif r < 0.15:
                conds = (14, 41)  # intermarket sweep, trade-through exempt: eligible
            out.append(
                Trade(ticker, round(price, 4), size, t, t + 5_000_000, seq, conditions=conds)
            )
    out.sort(key=lambda tr: tr.timestamp)
    return out


def run_stages(
    trades: list[Trade], seed: int = 3
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Feed trades in random-sized batches (shuffled inside each batch) through the stages."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    fs, bs = FeatureStage(settings), BarStage(settings)
    rnd = random.Random(seed)
    feats: list[dict[str, Any]] = []
    bars: dict[tuple[str, int], dict[str, Any]] = {}
    i, wm = 0, 0
    while i < len(trades):
        n = rnd.choice([1, 3, 17, 100, 400])
        chunk = trades[i : i + n]
        rnd.shuffle(chunk)
        i += n
        wm = max([wm] + [t.timestamp for t in chunk])
        batch = WorkBatch(trades=chunk, watermark_ns=wm)
        fs.apply(batch)
        bs.apply(batch)
        feats.extend(batch.derived.get("features", []))
        for b in batch.derived.get("bars", []):
            bars[(b["ticker"], b["minute_start"])] = b  # mode "replace"
    flush = WorkBatch(watermark_ns=wm + 10 * W)
    bs.apply(flush)
    for b in flush.derived.get("bars", []):
        bars[(b["ticker"], b["minute_start"])] = b
    return feats, list(bars.values())


def load(con: duckdb.DuckDBPyConnection, trades: list[Trade]) -> None:
    table = pa.table(
        {
            "ticker": [t.ticker for t in trades],
            "ts": pa.array([t.timestamp for t in trades], pa.int64()),
            "seq": pa.array([t.sequence_number for t in trades], pa.int64()),
            "price": pa.array([t.price for t in trades], pa.float64()),
            "size": pa.array([t.size for t in trades], pa.int64()),
            "conditions": pa.array([list(t.conditions) for t in trades], pa.list_(pa.int32())),
        }
    )
    con.register("trades_arrow", table)
    con.execute("CREATE TABLE trades AS SELECT * FROM trades_arrow")
    # The tape: eligible prints only, each in its session (04:00 ET to 04:00 ET).
    con.execute(
        """
        CREATE TABLE tape AS
        SELECT ticker, ts, seq, price, size,
               CAST(strftime(timezone('America/New_York', to_timestamp(ts // 1000000000))
                             - INTERVAL 4 HOUR, '%Y%m%d') AS BIGINT) AS session,
               row_number() OVER (PARTITION BY ticker, session ORDER BY ts, seq) AS pos
        FROM trades
        WHERE NOT list_has_any(conditions, ?)
        """,
        [sorted(EXCLUDED_CONDITIONS)],
    )


def reference_sql() -> str:
    def frame(width_ns: int) -> str:
        return f"(t RANGE BETWEEN {width_ns - 1} PRECEDING AND CURRENT ROW)"

    def sums(name: str, frame_sql: str) -> str:
        return (
            f"sum(price * size) OVER {frame_sql} - after_pv AS pv_{name},\n"
            f"sum(size) OVER {frame_sql} - after_v AS v_{name},\n"
            f"sum(price) OVER {frame_sql} - after_p AS p_{name},\n"
            f"count(*) OVER {frame_sql} - after_n AS n_{name},\n"
        )

    baseline = ",\n".join(
        f"coalesce(sum(size) OVER (t RANGE BETWEEN {(k + 1) * W - 1} PRECEDING"
        f" AND {k * W} PRECEDING), 0) AS v{k}"
        for k in range(1, N_BASELINE + 1)
    )
    vlist = ", ".join(f"v{k}" for k in range(1, N_BASELINE + 1))

    def vwap(name: str) -> str:
        return f"CASE WHEN v_{name} > 0 THEN pv_{name} / v_{name} ELSE p_{name} / n_{name} END"

    return f"""
    WITH peers AS (
        SELECT *,
            coalesce(sum(price * size) OVER later, 0) AS after_pv,
            coalesce(sum(size) OVER later, 0) AS after_v,
            coalesce(sum(price) OVER later, 0) AS after_p,
            count(*) OVER later AS after_n
        FROM tape
        WINDOW later AS (PARTITION BY ticker, session, ts ORDER BY seq
                         ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
    ), w AS (
        SELECT *,
            {sums("s", "(t RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)")}
            {sums("1m", frame(60 * S))}
            {sums("5m", frame(300 * S))}
            {sums("15m", frame(900 * S))}
            min(ts) OVER (PARTITION BY ticker, session) AS first_ts,
            max(pos) OVER (t RANGE BETWEEN UNBOUNDED PRECEDING AND {60 * S} PRECEDING) AS ref_pos,
            {baseline}
        FROM peers
        WINDOW t AS (PARTITION BY ticker, session ORDER BY ts)
    ), z AS (
        SELECT w.*,
            least({N_BASELINE}, greatest(0, (w.ts - first_ts) // {W} - 1)) AS n_b,
            list_slice([{vlist}], 1, least({N_BASELINE}, greatest(0, (w.ts - first_ts) // {W} - 1)))
                AS base,
            r.price AS ref_price
        FROM w LEFT JOIN tape r
          ON r.ticker = w.ticker AND r.session = w.session AND r.pos = w.ref_pos
    )
    SELECT ticker, ts AS timestamp, seq AS sequence_number, price, size,
        {vwap("s")} AS vwap,
        {vwap("1m")} AS vwap_1m,
        {vwap("5m")} AS vwap_5m,
        p_1m / n_1m AS avg_price_1m,
        p_5m / n_5m AS avg_price_5m,
        p_15m / n_15m AS avg_price_15m,
        CASE WHEN n_b < {MIN_BASELINE} THEN 0.0
             ELSE (v_1m - list_avg(base))
                  / greatest(list_aggregate(base, 'stddev_pop'), {STD_FLOOR}) END AS volume_zscore,
        CASE WHEN ref_price IS NULL THEN 0.0
             ELSE (price - ref_price) / ref_price * 100 END AS price_momentum,
        (price - {vwap("5m")}) / {vwap("5m")} * 100 AS vwap_deviation,
        CAST(n_1m AS DOUBLE) AS trade_frequency,
        n_b < {MIN_BASELINE} OR ref_price IS NULL AS warming_up
    FROM z
    ORDER BY ticker, ts, seq
    """


BARS_SQL = f"""
SELECT ticker, ts - ts % {W} AS minute_start,
       first(price ORDER BY ts, seq) AS open, max(price) AS high, min(price) AS low,
       last(price ORDER BY ts, seq) AS close, sum(size) AS volume,
       CASE WHEN sum(size) > 0 THEN sum(price * size) / sum(size) ELSE avg(price) END AS vwap,
       count(*) AS trade_count
FROM tape
GROUP BY ALL
ORDER BY ticker, minute_start
"""


@pytest.fixture(scope="module")
def golden() -> tuple[
    list[Trade], list[dict[str, Any]], list[dict[str, Any]], duckdb.DuckDBPyConnection
]:
    trades = synthetic_trades()
    feats, bars = run_stages(list(trades))
    con = duckdb.connect()
    load(con, trades)
    return trades, feats, bars, con


def test_dataset_covers_the_edge_cases(golden: Any) -> None:
    trades, feats, _, _ = golden
    assert 3000 < len(trades) < 20000
    stamps = [(t.ticker, t.timestamp) for t in trades]
    assert len(set(stamps)) < len(stamps)  # same-ns prints
    assert any(set(t.conditions) & EXCLUDED_CONDITIONS for t in trades)
    assert any(r["warming_up"] for r in feats) and not all(r["warming_up"] for r in feats)
    assert any(r["size"] == 0 for r in feats)
    assert len({session_of(t.timestamp) for t in trades}) == 2  # crosses 04:00 ET
    assert max(abs(r["volume_zscore"]) for r in feats) > 2
    assert sum(r["price_momentum"] != 0 for r in feats) > len(feats) / 2


def test_every_feature_matches_duckdb(golden: Any) -> None:
    _, feats, _, con = golden
    ref = con.execute(reference_sql()).fetchnumpy()
    got = sorted(feats, key=lambda r: (r["ticker"], r["timestamp"], r["sequence_number"]))
    assert len(got) == len(ref["timestamp"])
    assert [r["ticker"] for r in got] == list(ref["ticker"])
    for key in ROW_KEYS[1:]:
        mine = np.array([r[key] for r in got])
        theirs = np.asarray(ref[key])
        if key in ("timestamp", "sequence_number", "size", "warming_up"):
            np.testing.assert_array_equal(mine, theirs.astype(mine.dtype), err_msg=key)
        else:
            np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-9, err_msg=key)


def test_every_bar_matches_duckdb(golden: Any) -> None:
    _, _, bars, con = golden
    ref = con.execute(BARS_SQL).fetchnumpy()
    got = sorted(bars, key=lambda r: (r["ticker"], r["minute_start"]))
    assert len(got) == len(ref["minute_start"])
    for key in ("minute_start", "volume", "trade_count"):
        np.testing.assert_array_equal([r[key] for r in got], ref[key], err_msg=key)
    for key in ("open", "high", "low", "close", "vwap"):
        np.testing.assert_allclose([r[key] for r in got], ref[key], rtol=1e-9, err_msg=key)
