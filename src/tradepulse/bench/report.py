"""The benchmark's outputs: bench.json (everything), bench.md (tables), PNG plots.

Targets are issue 8's, each with the figure that decides it and `met` true/false, or null when
this run did not measure it (e.g. 100k events/s outside `--scenario max`): an unmeasured target
is reported as such, never as met. A cluster run (bench/cluster.py) decides the cluster's
targets and the ones that do not depend on the backend's engines; the embedded-only ones are
listed as not measured.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import psutil

from tradepulse.bench.retrain import verdict

TARGET_RATE = 15_000.0  # the rate the latency targets are quoted at
RSS_BOUND_MB = 1024.0  # the stated memory bound for the burst target (per process)
CLUSTER_RATE = 30_000.0  # issue 8: cluster sustained events/s
CLUSTER_P99_MS = 50.0  # issue 8: cluster e2e p99 at TARGET_RATE

ORIGINAL = {
    "sustained_events_per_s": 14_800,
    "peak_events_per_s": 31_200,
    "e2e_p50_ms": 12.0,
    "e2e_p99_ms": 67.0,
    "store_write_p99_ms": 18.0,
    "consumer_lag_max": 50,
    "anomaly_ms_per_event": 0.3,
}

PACKAGES = (
    "tradepulse",
    "numpy",
    "numba",
    "scikit-learn",
    "msgspec",
    "orjson",
    "pydantic",
    "websockets",
    "vaderSentiment",
    "hdrhistogram",
    "psutil",
    "matplotlib",
)


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 0
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["git_commit"] = _git("rev-parse", "HEAD")
    out["git_dirty"] = "yes" if _git("status", "--porcelain") else "no"
    return out


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


# --- targets ----------------------------------------------------------------------------------


def _target(
    name: str, goal: str, measured: Any, met: bool | None, note: str = ""
) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": met, "note": note}


def _phase(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    for p in doc.get("live", {}).get("phases", []):
        if p["phase"] == name:
            return dict(p)
    return None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("backend") == "cluster":
        return cluster_targets(doc)
    out: list[dict[str, Any]] = []
    mx = doc.get("max")
    if mx is not None:
        rate = mx.get("max_bounded_committed_rate")
        note = f"search stopped by {mx.get('stopped_by')}"
        out.append(
            _target(
                "embedded sustained throughput, lag bounded",
                ">= 100,000 events/s",
                rate,
                None if rate is None else rate >= 100_000,
                note,
            )
        )
    else:
        out.append(
            _target(
                "embedded sustained throughput, lag bounded",
                ">= 100,000 events/s",
                None,
                None,
                "not measured by this scenario (run --scenario max)",
            )
        )
    sus = _phase(doc, "sustained")
    if sus is not None and sus["latency_ms"].get("count"):
        at = sus["offered_rate"]
        comparable = abs(at - TARGET_RATE) <= 0.01 * TARGET_RATE
        note = "" if comparable else f"measured at {at:,.0f} events/s, not 15,000: not decided"
        p50, p99 = sus["latency_ms"]["p50"], sus["latency_ms"]["p99"]
        out.append(
            _target(
                "e2e p50 at 15,000 events/s",
                "<= 3 ms",
                p50,
                (p50 <= 3.0) if comparable else None,
                note,
            )
        )
        out.append(
            _target(
                "e2e p99 at 15,000 events/s",
                "<= 15 ms",
                p99,
                (p99 <= 15.0) if comparable else None,
                note,
            )
        )
    else:
        for goal, name in (("<= 3 ms", "e2e p50"), ("<= 15 ms", "e2e p99")):
            out.append(
                _target(f"{name} at 15,000 events/s", goal, None, None, "no sustained phase")
            )
    burst = _phase(doc, "burst")
    live = doc.get("live", {})
    if burst is not None:
        exact = live["exactness"]["ok"]
        out.append(
            _target(
                "30 s burst at 3x: absorbed without loss",
                "stored == sent",
                exact,
                exact,
                f"burst of {burst['seconds']:g} s at {burst['offered_rate']:,.0f}/s",
            )
        )
        drain = live.get("burst_drain_s")
        # A lossy run "drains" by dropping its backlog: only an exact run can meet this.
        out.append(
            _target(
                "burst: lag drains",
                "<= 60 s after the burst",
                drain,
                None if drain is None else (drain <= 60.0 and exact),
                "" if drain is not None else "did not drain within the run",
            )
        )
        rss = live.get("rss_mb_max")
        out.append(
            _target(
                "burst: RSS bounded",
                f"peak RSS <= {RSS_BOUND_MB:,.0f} MiB",
                rss,
                None if rss is None else rss <= RSS_BOUND_MB,
                "RSS of the whole process (simulator + pipeline)",
            )
        )
    else:
        out.append(
            _target(
                "30 s burst at 3x",
                "absorbed, drains <= 60 s, RSS bounded",
                None,
                None,
                "no burst phase in this scenario",
            )
        )
    an = doc.get("anomaly", {})
    amort = an.get("us_per_vector_amortized")
    eng = an.get("engine", {})
    out.append(
        _target(
            "anomaly detection incl. retraining, amortized",
            "<= 5 µs/event",
            amort,
            None if amort is None else amort <= 5.0,
            f"engine on {eng.get('vectors')} recorded trades, {eng.get('retrains')} "
            f"retrains (window 1000, every 500), {eng.get('chunk_per_ticker')} "
            "trades per ticker per call",
        )
    )
    out.append(_retrain_target(doc.get("retrain")))
    ratio = doc.get("peers", {}).get("ratio_ours_over_baseline")
    out.append(
        _target(
            "throughput vs baseline (a), same run",
            ">= 10x",
            ratio,
            None if ratio is None else ratio >= 10.0,
        )
    )
    out.append(
        _target(
            "cluster: sustained, p99 at 15,000/s",
            ">= 30,000 events/s, p99 <= 50 ms",
            None,
            None,
            "cluster backend not benchmarked yet",
        )
    )
    return out


def engine_cap_note(doc: dict[str, Any]) -> str:
    slow = doc.get("engines", {}).get("slowest")
    if not slow:
        return "engines alone not measured"
    return f"slowest engine alone: {slow['engine']} at {slow['events_per_s']:,.0f} events/s"


def cluster_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's cluster targets, plus the backend-independent ones this run measures.

    A target the run could not offer the load for is still decided when the engines alone
    decide it: if the slowest engine alone takes fewer events/s than the target rate, the
    cluster cannot sustain that rate, and at a rate it cannot sustain its backlog and latency
    grow without bound."""
    out: list[dict[str, Any]] = []
    cap = engine_cap_note(doc)
    slow = doc.get("engines", {}).get("slowest") or {}
    cap_rate = slow.get("events_per_s")
    mx = doc.get("max")
    sus = _phase(doc, "sustained")
    goal = ">= 30,000 events/s"
    name = "cluster sustained throughput"
    met: bool | None
    if mx is not None:
        rate = mx.get("max_bounded_committed_rate")
        if rate is not None and rate >= CLUSTER_RATE:
            met, note = True, f"max search stopped by {mx.get('stopped_by')}"
        elif cap_rate is not None and cap_rate < CLUSTER_RATE:
            met, note = False, f"capped: {cap}"
        elif rate is None and mx.get("steps"):
            met, note = False, f"no step bounded (lowest {mx['steps'][0]['offered_rate']:,.0f}/s)"
        else:
            met, note = None, f"max search stopped by {mx.get('stopped_by')}; {cap}"
        out.append(_target(name, goal, rate, met, note))
    elif sus is not None:
        committed, offered = sus["committed_rate_mean"], sus["offered_rate"]
        at = f"{committed or 0:,.0f}/s committed at {offered:,.0f}/s offered"
        if sus.get("bounded") and committed is not None and committed >= CLUSTER_RATE:
            met, note = True, f"lag bounded; {cap}"
        elif cap_rate is not None and cap_rate < CLUSTER_RATE:
            met, note = False, f"capped: {cap} ({at})"
        elif not sus.get("bounded"):
            met, note = False, f"lag grew at {offered:,.0f}/s offered; {cap}"
        else:
            met, note = None, f"bounded at {offered:,.0f}/s offered; offer >= 30,000 to decide"
        out.append(_target(name, goal, committed, met, note))
    else:
        out.append(_target(name, goal, None, None, cap))
    name, goal = "cluster e2e p99 at 15,000 events/s", "<= 50 ms"
    floor = doc.get("engines", {}).get("dynamodb", {}).get("small_write_ms_p50")
    if sus is not None and sus["latency_ms"].get("count"):
        at, p99 = sus["offered_rate"], sus["latency_ms"]["p99"]
        measured_at = f"measured at {at:,.0f}/s"
        if abs(at - TARGET_RATE) <= 0.01 * TARGET_RATE:
            met, note = p99 <= CLUSTER_P99_MS, cap
        elif cap_rate is not None and cap_rate < TARGET_RATE:
            met = False
            note = (
                f"{measured_at}; 15,000/s is above the {slow['engine']} cap "
                f"({cap_rate:,.0f}/s alone): the backlog, and the latency with it, grows "
                "without bound"
            )
        elif at < TARGET_RATE and not sus.get("bounded"):
            met = False
            note = f"{measured_at}, where the lag already grew: at 15,000/s it grows faster"
        elif floor is not None and floor > CLUSTER_P99_MS:
            met = False
            note = f"{measured_at}; one small hot-store write alone takes {floor:,.1f} ms"
        else:
            met, note = None, f"{measured_at}, not 15,000: not decided"
        out.append(_target(name, goal, p99, met, note))
    elif cap_rate is not None and cap_rate < TARGET_RATE:
        note = f"no sustained phase; 15,000/s is above the {slow['engine']} cap ({cap_rate:,.0f}/s)"
        out.append(_target(name, goal, None, False, note))
    else:
        out.append(_target(name, goal, None, None, "no sustained phase"))
    live = doc.get("live", {})
    burst = _phase(doc, "burst")
    if burst is not None:
        exact = live["exactness"]["ok"]
        drained = live["exactness"]["drained"]
        out.append(
            _target(
                "30 s burst at 3x: absorbed without loss",
                "stored == sent",
                exact,
                exact,
                f"burst of {burst['seconds']:g} s at {burst['offered_rate']:,.0f}/s"
                + ("" if drained else "; the drain was cut off, backlog left"),
            )
        )
        drain = live.get("burst_drain_s")
        out.append(
            _target(
                "burst: lag drains",
                "<= 60 s after the burst",
                drain,
                None if drain is None else (drain <= 60.0 and exact),
                "backlog in events (sent - confirmed at the store)"
                if drain is not None
                else "did not drain within the run",
            )
        )
        # The pipeline's own processes: not the shared engines, not the load generator.
        pipeline = {
            n: f["rss_mb_max"]
            for n, f in live.get("processes", {}).items()
            if f["role"] not in ("engine", "bench") and f["rss_mb_max"] is not None
        }
        worst = max(pipeline, key=lambda n: pipeline[n]) if pipeline else None
        out.append(
            _target(
                "burst: RSS bounded",
                f"peak RSS <= {RSS_BOUND_MB:,.0f} MiB per process",
                pipeline[worst] if worst else None,
                None if worst is None else pipeline[worst] <= RSS_BOUND_MB,
                f"largest: {worst}" if worst else "",
            )
        )
    ratio = doc.get("peers", {}).get("ratio_ours_over_baseline")
    out.append(
        _target(
            "throughput vs baseline (a), same run",
            ">= 10x",
            ratio,
            None if ratio is None else ratio >= 10.0,
            "embedded pipeline vs the original's design, saturated on the recorded frames",
        )
    )
    out.append(
        _target(
            "embedded targets (100k/s, p50/p99 at 15k/s), anomaly cost, retraining",
            "see the embedded bench",
            None,
            None,
            "not measured by a cluster run",
        )
    )
    return out


def _retrain_target(section: dict[str, Any] | None) -> dict[str, Any]:
    name = "retraining never stalls ingestion"
    goal = "adds < one batching wait to p99 batch time and loop stalls; histograms on/off"
    if not section:
        return _target(name, goal, None, None, "not measured in this run")
    met, note = verdict(section)
    p99 = [section[k].get("latency_ms", {}).get("p99") for k in ("on", "off")]
    measured = f"e2e p99 {_fmt(p99[0])} / {_fmt(p99[1])} ms (on / off)"
    return _target(name, goal, measured, met, note)


def versus_original(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Our figures next to the original's published ones (different machines: indicative)."""
    live = doc.get("live", {})
    sus = _phase(doc, "sustained")
    burst = _phase(doc, "burst")
    peers = doc.get("peers", {})
    mx = doc.get("max") or {}
    sustained = mx.get("max_bounded_committed_rate") or peers.get("ours", {}).get("events_per_s")
    how = "max search" if mx else "saturated on the recorded frames (peers run)"
    cluster = doc.get("backend") == "cluster"
    if cluster and not mx:
        sustained = sus["committed_rate_mean"] if sus else None
        how = "cluster, committed during the sustained phase"
    rows = [
        ("sustained events/s", ORIGINAL["sustained_events_per_s"], sustained, how),
        (
            "peak events/s (burst)",
            ORIGINAL["peak_events_per_s"],
            burst["committed_rate_mean"] if burst else None,
            "mean committed during the burst",
        ),
        (
            "e2e p50 ms",
            ORIGINAL["e2e_p50_ms"],
            sus["latency_ms"].get("p50") if sus else None,
            "sustained phase",
        ),
        (
            "e2e p99 ms",
            ORIGINAL["e2e_p99_ms"],
            sus["latency_ms"].get("p99") if sus else None,
            "sustained phase",
        ),
        (
            "store write p99 ms",
            ORIGINAL["store_write_p99_ms"],
            live.get("store_write_ms", {}).get("p99"),
            "per batch",
        ),
        (
            "consumer lag max",
            ORIGINAL["consumer_lag_max"],
            sus["lag_max"] if sus else live.get("lag_max"),
            "events, sustained phase" + (" (sent, not confirmed yet)" if cluster else ""),
        ),
        (
            "anomaly ms/event",
            ORIGINAL["anomaly_ms_per_event"],
            _ms(doc.get("anomaly", {}).get("us_per_vector_amortized")),
            "amortized incl. retraining",
        ),
    ]
    return [{"figure": f, "original": o, "ours": v, "note": n} for f, o, v, n in rows]


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 5)


# --- files ------------------------------------------------------------------------------------


def write_all(doc: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if plots:
        from tradepulse.bench import plots as plotting

        files.update(plotting.write_plots(doc, out))
    files["markdown"] = str(out / "bench.md")
    files["json"] = str(out / "bench.json")
    doc["files"] = files
    (out / "bench.md").write_text(markdown(doc))
    (out / "bench.json").write_bytes(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    return files


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


_LATENCY_KEYS = ("p50", "p90", "p99", "p99.9", "max")


def _latency_cells(h: dict[str, Any]) -> list[Any]:
    """A latency summary's percentile columns, in the order of the tables' headers."""
    return [h.get(k) for k in _LATENCY_KEYS]


def _whole_run_table(live: dict[str, Any]) -> str:
    rows = [
        [name, h.get("count"), *_latency_cells(h)]
        for name, h in (
            ("e2e latency", live["latency_ms"]),
            ("store write (per batch)", live["store_write_ms"]),
        )
    ]
    header = ["whole run", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]
    return _table(header, rows)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    v = doc.get("versions", {})
    parts = [
        f"# tradepulse bench — {doc['scenario']}{' (quick)' if doc.get('quick') else ''}",
        "",
        f"Command: `{doc.get('command') or 'tradepulse bench'}`  ",
        f"Machine: {m.get('cpu_count')} CPUs ({m.get('cpus_usable')} usable), "
        f"{m.get('cpu_model')}, {m.get('memory_gb')} GB; Python {m.get('python')}; "
        f"tradepulse {v.get('tradepulse')} @ {(v.get('git_commit') or '?')[:12]}"
        f"{' (dirty tree)' if v.get('git_dirty') == 'yes' else ''}  ",
        f"Backend: {doc['backend']}; tickers: {', '.join(doc['tickers'])}; seed {doc['seed']}. "
        "Latency = WebSocket receive → hot-store commit, every event (HDR histogram).",
        "",
    ]
    parts += ["## Targets (issue 8)", ""]
    parts.append(
        _table(
            ["target", "goal", "measured", "met", "note"],
            [
                [
                    t["target"],
                    t["goal"],
                    t["measured"],
                    "n/a" if t["met"] is None else ("**met**" if t["met"] else "not met"),
                    t["note"],
                ]
                for t in doc.get("targets", [])
            ],
        )
    )
    live = doc.get("live")
    cluster = doc.get("backend") == "cluster"
    if cluster:
        parts += _cluster_sections(doc)
    elif live:
        ex = live["exactness"]
        parts += ["", "## Live run (simulator → WebSocket → pipeline → SQLite)", ""]
        parts.append(
            f"Exactness: stored {ex['stored_trades']:,} trades / {ex['stored_quotes']:,} quotes; "
            f"simulator truth {ex['truth_valid_trades']:,} / {ex['truth_valid_quotes']:,}; "
            f"dead letters {ex['dead_letters']:,} (truth {ex['truth_malformed']:,}) → "
            f"**{'exact' if ex['ok'] else 'MISMATCH'}**"
        )
        parts.append("")
        parts.append(
            _table(
                [
                    "phase",
                    "s",
                    "offered/s",
                    "committed/s (mean)",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "max ms",
                    "lag max",
                    "lag end",
                    "RSS MiB",
                    "CPU %",
                ],
                [
                    [
                        p["phase"],
                        p["seconds"],
                        p["offered_rate"],
                        p["committed_rate_mean"],
                        *_latency_cells(p["latency_ms"]),
                        p["lag_max"],
                        p["lag_end"],
                        p["rss_max_mb"],
                        p["cpu_mean_pct"],
                    ]
                    for p in live["phases"]
                ],
            )
        )
        parts += [
            "",
            _whole_run_table(live),
            "",
            f"Event-loop stalls (50 ms heartbeat, lateness): p99 "
            f"{_fmt(live['event_loop_stall_ms'].get('p99'))} ms, max "
            f"{_fmt(live['event_loop_stall_ms'].get('max'))} ms. "
            f"Batches {live['batches']:,} (mean {live['mean_batch_events']} events, max "
            f"{live['max_batch_events']:,}); burst drain {_fmt(live['burst_drain_s'])} s; "
            f"RSS {_fmt(live['rss_mb_start'])} → max {_fmt(live['rss_mb_max'])} MiB; CPU mean "
            f"{_fmt(live['cpu_pct_mean'])} % (100 % = one core; the simulator runs in the same "
            f"process); measurement overhead "
            f"{_fmt(live['measurement_overhead']['us_per_event'])} µs/event.",
        ]
    rt = doc.get("retrain")
    if rt:
        parts += ["", *_retrain_section(rt)]
    mx = doc.get("max")
    if mx:
        # The cluster's steps are judged by their backlog's troughs (bench/cluster.py).
        trend, trend_name = (
            ("trough_last_quarter", "backlog trough, last quarter")
            if cluster
            else ("lag_slope_per_s", "lag slope/s")
        )
        parts += ["", "## Max sustainable rate", "", mx["definition"], ""]
        parts.append(
            _table(
                [
                    "offered/s",
                    "generated/s",
                    "committed/s",
                    "end lag",
                    trend_name,
                    "bounded",
                    "generator-limited",
                    "p50 ms",
                    "p99 ms",
                    "exact",
                ],
                [
                    [
                        s["offered_rate"],
                        s["generated_rate"],
                        s["committed_rate_mean"],
                        s["end_lag"],
                        s[trend],
                        s["bounded"],
                        s["generator_limited"],
                        s["latency_ms"].get("p50"),
                        s["latency_ms"].get("p99"),
                        s["exact"],
                    ]
                    for s in mx["steps"]
                ],
            )
        )
        parts.append(
            f"\nHighest bounded: {_fmt(mx['max_bounded_committed_rate'])} events/s committed "
            f"(stopped by {mx['stopped_by']})."
        )
    peers = doc.get("peers")
    if peers:
        o, b, i = peers["ours"], peers["baseline"], peers["input"]
        parts += [
            "",
            "## Peers on the same input (recorded simulator frames, each saturated)",
            "",
            f"Input: {i['events']:,} events in {i['frames']:,} frames "
            f"({i['trades']:,} trades); generating them cost "
            f"{i['generator_us_per_event']} µs/event.",
            "",
            _table(
                ["peer", "events", "seconds", "events/s", "exact", "notes"],
                [
                    [
                        "ours (embedded pipeline, all stages)",
                        o["events"],
                        o["seconds"],
                        o["events_per_s"],
                        o["exact"],
                        "",
                    ],
                    [
                        "baseline (a): per-event Pydantic + score_samples + conditional write",
                        b["events"],
                        b["seconds"],
                        b["events_per_s"],
                        b["exact"],
                        f"validate {b['validate_us_per_event']} µs/event, score "
                        f"{b['score_us_per_trade']} µs/trade, write {b['write_us_per_event']} "
                        "µs/event",
                    ],
                ],
            ),
            "",
            f"**Ratio ours / baseline: {peers['ratio_ours_over_baseline']:,}×**",
        ]
    if "stream_peers" in doc:
        parts += ["", *_stream_peers_section(doc["stream_peers"])]
    if cluster:
        parts += ["", "## Against the original's published figures (different hardware)", ""]
        parts.append(
            _table(
                ["figure", "original", "ours", "note"],
                [[r["figure"], r["original"], r["ours"], r["note"]] for r in doc["original"]],
            )
        )
        return "\n".join([*parts, *_plots_section(doc)]) + "\n"
    an, vd = doc.get("anomaly", {}), doc.get("vader", {})
    parts += ["", "## Model costs", ""]
    rows: list[list[Any]] = [
        [
            "anomaly engine, amortized incl. retraining",
            an.get("us_per_vector_amortized"),
            "µs/trade",
        ],
        [
            "anomaly stage in the peers run (rows past warm-up only)",
            an.get("pipeline_stage", {}).get("us_per_row"),
            "µs/row",
        ],
        [
            "anomaly retrain (fit 100 trees, cut-off, medians)",
            an.get("retrain_ms"),
            "ms/retrain",
        ],
        ["anomaly inference, batched", an.get("inference_us_per_vector_batched"), "µs/vector"],
        [
            "anomaly inference, one vector per call",
            an.get("inference_us_per_vector_one_at_a_time"),
            "µs/vector",
        ],
        [
            "scikit-learn score_samples, one vector",
            an.get("sklearn_score_samples_us_one_vector"),
            "µs/vector",
        ],
        ["VADER", vd.get("us_per_headline"), "µs/headline"],
    ]
    parts.append(_table(["cost", "value", "unit"], rows))
    parts += ["", "## Against the original's published figures (different hardware)", ""]
    parts.append(
        _table(
            ["figure", "original", "ours", "note"],
            [[r["figure"], r["original"], r["ours"], r["note"]] for r in doc.get("original", [])],
        )
    )
    return "\n".join([*parts, *_plots_section(doc)]) + "\n"


def _plots_section(doc: dict[str, Any]) -> list[str]:
    files = doc.get("files", {})
    pngs = [Path(p).name for k, p in files.items() if k.startswith("plot")]
    return ["", "## Plots", "", *(f"![{n}]({n})" for n in pngs)] if pngs else []


def _cluster_sections(doc: dict[str, Any]) -> list[str]:
    c = doc["cluster"]
    parts = [
        "",
        "## Cluster run",
        "",
        f"Simulator → WebSocket → `tradepulse producer` → Kafka (idempotent, acks=all) → "
        f"{c['processors']} × `tradepulse processor` (exactly-once transactions, "
        f"{c['partitions']} partitions) → DynamoDB hot store + S3 cold store; engines: Kafka "
        f"{c['kafka']}, DynamoDB {c['dynamodb']}, S3 {c['s3']}, SQS {c['sqs']}. Namespace "
        f"`{c['namespace']}` ({'dropped' if c.get('dropped') else 'NOT dropped'} at the end). "
        "Latency = the producer's WebSocket receive time (carried in every Kafka record) → "
        "the processor's hot-store write confirmed; phases split by commit time (processor "
        "summaries every 0.5 s). Lag = events the simulator sent that the store has not "
        "confirmed yet; Kafka lag = the processor group's uncommitted input messages.",
    ]
    live = doc.get("live")
    if live:
        ex = live["exactness"]
        drain = (
            f"drained {live['drain_s']:g} s after the feed stopped"
            if ex["drained"]
            else f"drain cut off after {ex['drain_limit_s']:g} s: backlog "
            f"{ex['backlog_left_events']:,} events ({_fmt(ex['lag_left_messages'])} Kafka "
            "messages) left"
        )
        sent = ex["truth_valid_trades"] + ex["truth_valid_quotes"]
        stored = (
            f"stored {ex['stored_trades']:,} trades / {ex['stored_quotes']:,} quotes in DynamoDB"
            f"{'' if ex['count_complete'] else ' (count cut off)'}"
            if ex["counted"]
            else f"not counted in DynamoDB (not drained); the processors confirmed "
            f"{ex['measured_events']:,} of {sent:,} events"
        )
        parts += [
            "",
            f"Exactness: {stored}; simulator truth {ex['truth_valid_trades']:,} / "
            f"{ex['truth_valid_quotes']:,}; published by the producer "
            f"{ex['published_trades']:,} / {ex['published_quotes']:,}; committed by the "
            f"processors {ex['committed_events']:,} events ({ex['aborted_transactions']} aborted "
            f"transactions); {drain} → **{'exact' if ex['ok'] else 'MISMATCH'}**",
        ]
        for failure in live.get("failures", []):
            parts.append(f"\nFailure: `{failure.splitlines()[0]}`")
        parts += [
            "",
            _table(
                [
                    "phase",
                    "s",
                    "offered/s",
                    "committed/s (mean)",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "max ms",
                    "lag max (events)",
                    "lag end",
                    "Kafka lag max (msgs)",
                    "bounded",
                ],
                [
                    [
                        p["phase"],
                        p["seconds"],
                        p["offered_rate"],
                        p["committed_rate_mean"],
                        *_latency_cells(p["latency_ms"]),
                        p["lag_max"],
                        p["lag_end"],
                        p["lag_messages_max"],
                        p["bounded"],
                    ]
                    for p in live["phases"]
                ],
            ),
        ]
        parts += [
            "",
            _whole_run_table(live),
            "",
            f"Batches {live['batches']:,} (mean {live['mean_batch_events']} events); burst "
            f"drain {_fmt(live['burst_drain_s'])} s; machine CPU mean "
            f"{_fmt(live['machine_cpu_pct_mean'])} % (100 % = one core).",
            "",
            "Processes (CPU: 100 % = one core; the engines are shared with anything else "
            "using the stack):",
            "",
            _table(
                ["process", "role", "pid", "RSS start MiB", "RSS max MiB", "CPU mean %", "max %"],
                [
                    [
                        name,
                        f["role"],
                        f["pid"],
                        f["rss_mb_start"],
                        f["rss_mb_max"],
                        f["cpu_pct_mean"],
                        f["cpu_pct_max"],
                    ]
                    for name, f in live["processes"].items()
                ],
            ),
        ]
    eng = doc.get("engines")
    if eng:
        parts += ["", "## Engines alone (same recorded input, one at a time)", ""]
        rows: list[list[Any]] = []
        k, d, s3 = eng.get("kafka", {}), eng.get("dynamodb", {}), eng.get("s3", {})
        if "error" not in k:
            rows += [
                [
                    "Kafka",
                    "produce (idempotent, acks=all), acknowledged",
                    k["produce_events_per_s"],
                    f"{k['events']:,} events in {k['messages']:,} messages",
                ],
                ["Kafka", "consume + decode (read_committed)", k["consume_events_per_s"], ""],
                ["Kafka", "produce then consume, per event", k["events_per_s"], ""],
            ]
        if "error" not in d:
            rows += [
                [
                    "DynamoDB",
                    "BatchWriteItem, items/s",
                    d["raw_items_per_s"],
                    f"{d['raw_items']:,} items, {d['raw_workers']} requests in flight",
                ],
                [
                    "DynamoDB",
                    "hot-store write (trades + quotes)",
                    d["events_per_s"],
                    f"{d['store_events']:,} events in batches of {d['store_batch_events']:,}",
                ],
                [
                    "DynamoDB",
                    f"hot-store write of {d['small_batch_events']} events: ms per write",
                    None,
                    f"p50 {_fmt(d['small_write_ms_p50'])} ms, max "
                    f"{_fmt(d['small_write_ms_max'])} ms over {d['small_writes']} writes",
                ],
            ]
        if "error" not in s3:
            rows += [
                [
                    "S3",
                    "Parquet objects (cold sink), rows/s",
                    s3["events_per_s"],
                    f"{s3['parquet_objects']} objects, {s3['parquet_mb']} MiB",
                ],
                ["S3", "small PUTs/s", s3["puts_per_s"], f"{s3['small_put_bytes']} B each"],
            ]
        rows += [
            [n, "failed", None, eng[n]["error"]]
            for n in ("kafka", "dynamodb", "s3")
            if "error" in eng.get(n, {})
        ]
        parts.append(_table(["engine", "measurement", "events/s", "notes"], rows))
        sus = _phase(doc, "sustained")
        slow = eng.get("slowest")
        if slow and sus and sus.get("committed_rate_mean"):
            parts.append(
                f"\nThe slowest engine alone is **{slow['engine']}** at "
                f"{slow['events_per_s']:,.0f} events/s; the cluster committed "
                f"{sus['committed_rate_mean']:,.0f} events/s in the sustained phase "
                f"({sus['committed_rate_mean'] / slow['events_per_s']:.0%} of it)."
            )
    return parts


def _stream_peers_section(sp: dict[str, Any]) -> list[str]:
    title = "## Peer (b): a Python stream framework, same broker, same input"
    if "ours" not in sp:
        return [title, "", f"Not run: {sp.get('skipped') or sp.get('error')}"]
    rows = [
        [r["name"], r["version"], r["events"], r["seconds"], r["feature_rows"], r["events_per_s"]]
        for r in (sp["ours"], sp["quix"])
    ]
    return [
        title,
        "",
        _table(["peer", "version", "events", "seconds", "feature rows", "events/s"], rows),
        "",
        f"Feature rows match: {_fmt(sp['rows_match'])} (max abs diff "
        f"{_fmt(sp['max_abs_diff'])}). **Ratio ours / {sp['quix']['name']}: "
        f"{sp['ratio_ours_over_quix']:,}×**",
    ]


def _retrain_section(rt: dict[str, Any]) -> list[str]:
    rows = []
    for name in ("on", "off"):
        r = rt[name]
        lat, proc, stall = r["latency_ms"], r["batch_process_ms"], r["event_loop_stall_ms"]
        rows.append(
            [
                name,
                r["retrains"],
                r["trades_scored"],
                r["trades_flagged"],
                r["events"],
                r["exact"],
                *_latency_cells(lat),
                proc.get("p99"),
                proc.get("max"),
                stall.get("p99"),
                stall.get("max"),
            ]
        )
    return [
        "## Retraining on vs off",
        "",
        f"{rt['definition']}. {rt['seconds']:g} s at {rt['rate']:,.0f} events/s in each "
        f"(measured: {rt['on']['measured_s']} / {rt['off']['measured_s']} s), warmed on "
        f"{rt['history_s']:g} s of history ({rt['history_trades']:,} trades, "
        f"volume window {rt['volume_window_s']:g} s). "
        "Histograms: `retrain.png`, and `retrain.on` / `retrain.off` in bench.json.",
        "",
        _table(
            [
                "retraining",
                "retrains",
                "trades scored",
                "flagged",
                "events",
                "exact",
                "e2e p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "batch processing p99 ms",
                "max ms",
                "loop stall p99 ms",
                "max ms",
            ],
            rows,
        ),
    ]


def _cluster_summary_lines(doc: dict[str, Any]) -> list[str]:
    live = doc["live"]
    ex, sw = live["exactness"], live["store_write_ms"]
    lines = [
        f"  store write p50 {_fmt(sw.get('p50'))} ms p99 {_fmt(sw.get('p99'))} ms; "
        + (
            f"drained {_fmt(live['drain_s'])} s after the feed"
            if ex["drained"]
            else f"drain cut off after {ex['drain_limit_s']:g} s, backlog "
            f"{ex['backlog_left_events']:,} events"
        )
        + f"; burst drain {_fmt(live['burst_drain_s'])} s"
    ]
    for name, f in live["processes"].items():
        lines.append(
            f"  {name:<22} RSS max {_fmt(f['rss_mb_max']):>8} MiB  CPU mean "
            f"{_fmt(f['cpu_pct_mean']):>6} %"
        )
    eng = doc.get("engines", {})
    for name in ("kafka", "dynamodb", "s3"):
        r = eng.get(name)
        if r is not None:
            shown = r.get("error") or f"{_fmt(r.get('events_per_s'))} events/s alone"
            lines.append(f"  engine {name:<9} {shown}")
    return lines


def summary_lines(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"tradepulse bench: {doc['scenario']}{' --quick' if doc.get('quick') else ''}, "
        f"{doc['machine']['cpus_usable']} usable CPUs"
    ]
    live = doc.get("live")
    if live:
        ex = live["exactness"]
        lines.append(
            f"  exactness: stored {_fmt(ex['stored_trades'])} trades + "
            f"{_fmt(ex['stored_quotes'])} quotes = truth {ex['truth_valid_trades']:,} + "
            f"{ex['truth_valid_quotes']:,}: {'OK' if ex['ok'] else 'MISMATCH'}"
            + ("" if ex.get("counted", True) else " (not drained, not counted)")
        )
        for p in live["phases"]:
            lat = p["latency_ms"]
            lines.append(
                f"  {p['phase']:<10} offered {p['offered_rate']:>9,.0f}/s committed "
                f"{_fmt(p['committed_rate_mean']):>9}/s  p50 {_fmt(lat.get('p50'))} ms  "
                f"p99 {_fmt(lat.get('p99'))} ms  p99.9 {_fmt(lat.get('p99.9'))} ms  "
                f"max {_fmt(lat.get('max'))} ms  lag max {p['lag_max']:,}"
            )
        sw = live["store_write_ms"]
        if doc.get("backend") == "cluster":
            lines += _cluster_summary_lines(doc)
        else:
            lines.append(
                f"  store write p50 {_fmt(sw.get('p50'))} ms p99 {_fmt(sw.get('p99'))} ms; "
                f"RSS max {_fmt(live['rss_mb_max'])} MiB; CPU mean "
                f"{_fmt(live['cpu_pct_mean'])} %; burst drain {_fmt(live['burst_drain_s'])} s"
            )
    rt = doc.get("retrain")
    if rt:
        for name in ("on", "off"):
            r = rt[name]
            lat = r["latency_ms"]
            lines.append(
                f"  retrain {name:<3}: {r['retrains']} retrains, e2e p50 {_fmt(lat.get('p50'))} "
                f"ms p90 {_fmt(lat.get('p90'))} ms p99 {_fmt(lat.get('p99'))} ms max "
                f"{_fmt(lat.get('max'))} ms; batch processing max "
                f"{_fmt(r['batch_process_ms'].get('max'))} ms"
            )
    mx = doc.get("max")
    if mx:
        lines.append(
            f"  max bounded rate: {_fmt(mx['max_bounded_committed_rate'])} events/s "
            f"(stopped by {mx['stopped_by']})"
        )
    peers = doc.get("peers")
    if peers:
        lines.append(
            f"  peers: ours {peers['ours']['events_per_s']:,.0f} ev/s vs baseline "
            f"{peers['baseline']['events_per_s']:,.0f} ev/s = "
            f"{peers['ratio_ours_over_baseline']:,}x"
        )
    sp = doc.get("stream_peers")
    if sp is not None:
        if "ours" in sp:
            lines.append(
                f"  peer (b): ours {sp['ours']['events_per_s']:,.0f} ev/s vs "
                f"{sp['quix']['name']} {sp['quix']['events_per_s']:,.0f} ev/s = "
                f"{sp['ratio_ours_over_quix']:,}x (rows match: {_fmt(sp['rows_match'])})"
            )
        else:
            lines.append(f"  peer (b): not run ({sp.get('skipped') or sp.get('error')})")
    an = doc.get("anomaly")
    if an is not None:
        lines.append(
            f"  anomaly {_fmt(an.get('us_per_vector_amortized'))} µs/trade amortized, "
            f"retrain {_fmt(an.get('retrain_ms'))} ms; VADER "
            f"{_fmt(doc.get('vader', {}).get('us_per_headline'))} µs/headline"
        )
    for t in doc.get("targets", []):
        mark = "n/a " if t["met"] is None else ("MET " if t["met"] else "MISS")
        lines.append(f"  [{mark}] {t['target']}: {_fmt(t['measured'])} ({t['goal']})")
    for k, p in doc.get("files", {}).items():
        lines.append(f"  {k}: {p}")
    return lines
