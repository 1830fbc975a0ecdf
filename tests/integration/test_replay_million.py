"""`tradepulse replay --max` over a generated flat file of 1,000,000 trades, in a subprocess
whose peak RSS is measured (getrusage of the process itself), checked against DuckDB over the
same gzipped CSV: counts, volume and VWAP per ticker, and the session VWAP of the features.

Memory bound: peak RSS < 1.5 GiB for 1 M trades. Measured on the 2-core box: ~1.0 GB, of which
~0.5 GB is the interpreter with numpy/pyarrow/duckdb/scikit-learn loaded; the reader and the
log hold a few thousand events at a time (the file is 130 MB uncompressed, the 2.2 M rows
written to SQLite and Parquet several times that). Throughput is printed (~15-20k trades/s
end to end, including the final Parquet flush of trades and derived tables).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flatfile_gen import EXCLUDED, et_ns, write_numpy_trades
from tradepulse.config import load_settings
from tradepulse.process.stages import all_tables
from tradepulse.store.query import QueryEngine

N = 1_000_000
TICKERS = ["AAPL", "MSFT", "NVDA", "AMZN", "TSLA"]
RSS_BOUND_BYTES = 1536 * 1024 * 1024

_RUN = """
import resource, sys
from tradepulse.cli import main
try:
    main()
finally:
    print(f"maxrss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.usefixtures("clean_env")
def test_replay_of_a_million_trades_matches_duckdb_in_bounded_memory(tmp_path: Path) -> None:
    f = tmp_path / "2024-04-05.csv.gz"
    written = write_numpy_trades(
        f, N, tickers=TICKERS, start_ns=et_ns("2024-04-05", 9, 30), seconds=6.5 * 3600
    )
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEPULSE_")}
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, "replay", str(f), "--max", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(
        r"replayed ([\d,]+) rows: ([\d,]+) trades \(([\d,]+) new\).* in ([\d.]+) s", proc.stdout
    )
    assert m, proc.stdout
    rows, trades, new = (int(m[i].replace(",", "")) for i in (1, 2, 3))
    secs = float(m[4])
    assert rows == trades == new == N == sum(written.values())
    rss = int(re.findall(r"maxrss_kb=(\d+)", proc.stderr)[-1]) * 1024
    print(f"\nreplay: {N / secs:,.0f} trades/s over {secs:.1f} s; peak RSS {rss / 2**20:,.0f} MiB")
    assert rss < RSS_BOUND_BYTES, f"peak RSS {rss / 2**20:.0f} MiB"

    excluded = ", ".join(map(str, EXCLUDED))
    conds = "coalesce(string_split(conditions, ',')::INT[], [])"
    with duckdb.connect() as con:
        ref = con.sql(
            f"""select ticker, count(*) n, sum(size) v, sum(price * size) / sum(size) vwap,
                   sum(price * size) filter (where not list_has_any({conds}, [{excluded}]))
                 / sum(size) filter (where not list_has_any({conds}, [{excluded}])) vwap_ok
            from read_csv('{f}', types = {{'conditions': 'VARCHAR'}})
            group by 1 order by 1"""
        ).fetchall()
    engine = QueryEngine(data, all_tables(load_settings(data_dir=data)))
    got = engine.sql(
        "select ticker, count(*) n, sum(size) v, sum(price * size) / sum(size) vwap "
        "from trades group by 1 order by 1"
    ).rows
    assert [(t, n, int(v)) for t, n, v, _, _ in ref] == [(t, n, int(v)) for t, n, v, _ in got]
    for (t, _, _, vwap, _), (_, _, _, ours) in zip(ref, got, strict=True):
        assert ours == pytest.approx(vwap, rel=1e-9), t
    # The session VWAP of the last trade of the day = DuckDB's VWAP over eligible prints.
    latest = dict(engine.sql("select ticker, vwap from features_latest order by 1").rows)
    for t, _, _, _, vwap_ok in ref:
        assert latest[t] == pytest.approx(vwap_ok, rel=1e-9), t
