"""`tradepulse bench` end to end at a toy size: the report is produced and sane.

No timing thresholds (the machine is shared): only that every file exists, that the store holds
exactly what the simulator says it sent, and that the figures are internally consistent.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest

from tradepulse.bench import BenchOptions, run_bench

PERCENTILE_KEYS = ("p50", "p90", "p99", "p99.9", "max")


def _ordered(lat: dict[str, float]) -> bool:
    values = [lat[k] for k in PERCENTILE_KEYS]
    return all(a <= b for a, b in itertools.pairwise(values))


@pytest.mark.usefixtures("clean_env")
def test_quick_bench_writes_a_sane_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    opts = BenchOptions(
        scenario="market-open",
        duration_s=3.0,
        burst_s=2.0,
        recovery_s=2.0,
        rate=2000.0,
        tickers=3,
        quick=True,
        out=out,
        peer_events=15_000,
        ours_max_s=5.0,
        baseline_max_s=1.5,
        vader_headlines=200,
        retrain_s=3.0,
        retrain_rate=2000.0,
    )
    doc = run_bench(opts, echo=lambda _line: None)

    for name in ("bench.json", "bench.md", "throughput_lag.png", "latency.png", "retrain.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = orjson.loads((out / "bench.json").read_bytes())
    assert on_disk["machine"]["cpu_count"] >= 1
    assert on_disk["versions"]["tradepulse"]

    live = doc["live"]
    ex = live["exactness"]
    assert ex["stored_trades"] == ex["truth_valid_trades"] > 0
    assert ex["stored_quotes"] == ex["truth_valid_quotes"] > 0
    # Every delivered event is measured; a re-delivered one (a reconnect's gap fill) is
    # stored once and reported as a duplicate.
    delivered = ex["stored_trades"] + ex["stored_quotes"] + ex["duplicates"]
    assert ex["measured_events"] + ex["unmeasured_events"] == delivered
    assert ex["ok"]

    assert _ordered(live["latency_ms"]) and _ordered(live["store_write_ms"])
    assert live["latency_ms"]["count"] == ex["measured_events"]
    phases = [p["phase"] for p in live["phases"]]
    assert phases == ["sustained", "burst", "recovery"]
    for p in live["phases"]:
        if p["latency_ms"].get("count"):
            assert _ordered(p["latency_ms"])
    assert sum(n for _, n in live["timeline"]["throughput"]) == ex["measured_events"]
    assert live["timeline"]["samples"] and live["rss_mb_max"] > 0

    peers = doc["peers"]
    assert peers["ours"]["exact"] and peers["baseline"]["exact"]
    assert peers["baseline"]["events"] > 0 and peers["ours"]["events"] > 0
    assert peers["ratio_ours_over_baseline"] > 0
    assert doc["anomaly"]["us_per_vector_amortized"] > 0
    assert doc["vader"]["us_per_headline"] > 0

    # Retraining on vs off: both runs measured every event, the detector scored live trades
    # in both, and only the first run refitted.
    rt = doc["retrain"]
    assert rt["history_trades"] > 0
    on, off = rt["on"], rt["off"]
    assert on["retrain"] is True and off["retrain"] is False
    assert on["retrains"] > 0 and off["retrains"] == 0
    for r in (on, off):
        assert r["exact"] and r["trades_scored"] > 0 and r["measured_s"] > 0
        lat = r["latency_ms"]
        assert lat["count"] == r["events"] > 0 and _ordered(lat)
        assert sum(n for _, n in r["latency_histogram"]) == lat["count"]
        assert r["batch_process_ms"]["count"] > 0
        assert _ordered(r["batch_process_ms"]) and _ordered(r["event_loop_stall_ms"])

    targets = {t["target"]: t for t in doc["targets"]}
    assert targets["retraining never stalls ingestion"]["met"] in (True, False)
    assert (
        targets["throughput vs baseline (a), same run"]["measured"]
        == (peers["ratio_ours_over_baseline"])
    )
    assert all(t["met"] in (True, False, None) for t in doc["targets"])
    md = (out / "bench.md").read_text()
    assert "Ratio ours / baseline" in md and "Targets" in md
    assert "## Retraining on vs off" in md and "![retrain.png](retrain.png)" in md
