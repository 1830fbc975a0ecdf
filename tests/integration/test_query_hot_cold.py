"""`tradepulse query` across the hot/cold boundary, its output formats and errors, and
partition pruning measured on a replayed two-day file."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flatfile_gen import et_ns, write_numpy_trades
from tradepulse.cli import app
from tradepulse.config import load_settings
from tradepulse.events import Trade
from tradepulse.market_time import now_ns
from tradepulse.process.stages import all_tables
from tradepulse.runner import run_embedded, run_replay
from tradepulse.sim import SimConfig
from tradepulse.store.base import StoreBatch
from tradepulse.store.hot.sqlite import SQLiteHotStore
from tradepulse.store.query import QueryEngine

TICKERS = ["AAPL", "MSFT"]
COUNT_SQL = "select ticker, count(*) as n from trades group by 1 order by 1"


def _cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.mark.usefixtures("clean_env")
async def test_query_matches_truth_across_hot_and_cold(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Retention 0.0003 h ≈ 1.1 s and a flush every second: most rows are expired from the
    # hot store once flushed, the last second's rows are in both.
    settings = load_settings(
        data_dir=data, tickers=",".join(TICKERS), hot_retention_h=0.0003, cold_flush_s=1.0
    )
    sim = SimConfig(tickers=TICKERS, rate=1500, seed=3, truth_dir=data / "truth")
    await run_embedded(
        settings, sim_config=sim, duration_s=4.0, serve_api=False, out=lambda _l: None
    )
    truth = orjson.loads((data / "truth" / "summary.json").read_bytes())["valid_trades"]

    # Rows written after the last flush (hot only): a few more trades per ticker.
    hot = SQLiteHotStore(data / "hot.sqlite3", all_tables(settings), retention_ns=10**18)
    t0 = now_ns()
    extra = [
        Trade(
            ticker=t, price=100.0, size=1, timestamp=t0 + i, ingest_ts=t0, sequence_number=10**8 + i
        )
        for t in TICKERS
        for i in range(5)
    ]
    hot.write(StoreBatch(trades=extra))
    hot_rows = hot.count("trades")
    hot.close()
    expected = {t: n + 5 for t, n in truth.items()}
    assert hot_rows < sum(expected.values())  # expiry really moved rows out of the hot store
    cold_rows = pq.read_table(data / "cold" / "trades").num_rows
    assert cold_rows < sum(expected.values())  # … and the newest rows are only in hot

    code, out, err = _cli("query", COUNT_SQL, "--data-dir", str(data), "--format", "json")
    assert code == 0, err
    assert {r["ticker"]: r["n"] for r in json.loads(out)} == expected

    code, out, _ = _cli("query", COUNT_SQL, "--data-dir", str(data))
    assert code == 0 and out.splitlines()[0].split() == ["ticker", "|", "n"]
    assert out.rstrip().endswith(f"({len(TICKERS)} rows)")
    code, out, _ = _cli("query", COUNT_SQL, "--data-dir", str(data), "--format", "csv")
    assert code == 0
    assert {r["ticker"]: int(r["n"]) for r in csv.DictReader(io.StringIO(out))} == expected
    dest = tmp_path / "out.parquet"
    code, _, _ = _cli(
        "query", COUNT_SQL, "--data-dir", str(data), "--format", "parquet", "-o", str(dest)
    )
    assert code == 0
    assert dict(zip(*pq.read_table(dest).to_pydict().values(), strict=True)) == expected

    code, out, err = _cli("query", "select nope from trades", "--data-dir", str(data))
    assert code == 2 and "tradepulse:" in err and "nope" in err
    code, _, err = _cli("query", "select * from no_such_view", "--data-dir", str(data))
    assert code == 2 and "views:" in err
    code, _, err = _cli("query", COUNT_SQL, "--data-dir", str(data), "--format", "xml")
    assert code == 2 and "--format" in err


@pytest.mark.usefixtures("clean_env")
async def test_partition_pruning_on_date_and_ticker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = []
    for day in ("2024-04-04", "2024-04-05"):
        f = tmp_path / f"{day}.csv.gz"
        write_numpy_trades(
            f, 20_000, tickers=["AAPL", "MSFT", "NVDA"], start_ns=et_ns(day, 10), seconds=600
        )
        files.append(f)
    settings = load_settings(data_dir=data)
    await run_replay(settings, files, progress=None)
    engine = QueryEngine(data, all_tables(settings))

    def scanned(where: str) -> tuple[int, int]:
        """(files, rows) DuckDB's Parquet scan read for `select count(*) … where …`."""
        plan = "\n".join(
            str(r[-1])
            for r in engine.sql(f"explain analyze select count(*) from trades where {where}").rows
        )
        files = [int(x) for x in re.findall(r"Scanning Files:\s*(\d+)/\d+", plan)]
        rows = [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) [Rr]ows", plan)]
        return (max(files) if files else -1), max(rows)

    total = engine.sql("select count(*) from trades").rows[0][0]
    assert total == 40_000
    all_files, all_rows = scanned("true")
    one_files, one_rows = scanned("date = DATE '2024-04-05' and ticker = 'AAPL'")
    n_aapl = engine.sql(
        "select count(*) from trades where date = DATE '2024-04-05' and ticker = 'AAPL'"
    ).rows[0][0]
    print(f"\nscan: all {all_files} files/{all_rows} rows; one partition {one_files}/{one_rows}")
    assert all_rows >= total
    assert one_rows == n_aapl < total / 4  # only the one partition's rows were read
    if all_files != -1:
        assert one_files == 1 < all_files
