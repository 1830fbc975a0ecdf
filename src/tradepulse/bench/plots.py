"""PNG plots of a bench report (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt


def _phase_lines(ax: Any, phases: list[dict[str, Any]]) -> None:
    for p in phases[1:]:
        ax.axvline(p["start_s"], color="grey", linestyle=":", linewidth=1)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return path


def write_plots(doc: dict[str, Any], out: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    live = doc.get("live")
    cluster = doc.get("backend") == "cluster"
    if live:
        files["plot_throughput_lag"] = str(_throughput_lag(live, out / "throughput_lag.png"))
        files["plot_latency"] = str(_latency(live, out / "latency.png"))
        resources = _process_resources if cluster else _resources
        files["plot_resources"] = str(resources(live, out / "resources.png"))
    if doc.get("engines"):
        files["plot_engines"] = str(_engines(doc, out / "engines.png"))
    if doc.get("retrain"):
        files["plot_retrain"] = str(_retrain(doc["retrain"], out / "retrain.png"))
    if doc.get("max"):
        files["plot_max"] = str(_max(doc["max"], out / "max_rate.png"))
    return files


def _throughput_lag(live: dict[str, Any], path: Path) -> Path:
    tl = live["timeline"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    tp = tl["throughput"]
    ax1.step([s for s, _ in tp], [n for _, n in tp], where="post", label="committed")
    offered_x: list[float] = []
    offered_y: list[float] = []
    for p in live["phases"]:
        offered_x += [p["start_s"], p["start_s"] + p["seconds"]]
        offered_y += [p["offered_rate"], p["offered_rate"]]
    ax1.plot(offered_x, offered_y, color="tab:orange", linestyle="--", label="offered")
    ax1.set_ylabel("events/s")
    ax1.legend(loc="upper left")
    ax1.set_title("Throughput (1 s buckets) and consumer lag")
    samples = tl["samples"]
    ax2.plot([s[0] for s in samples], [s[1] for s in samples], color="tab:red", label="events")
    ax2.set_ylabel("lag (events)")
    if "lag_messages" in tl["sample_columns"]:
        i = tl["sample_columns"].index("lag_messages")
        ax3 = ax2.twinx()
        pts = [(s[0], s[i]) for s in samples if s[i] is not None]
        ax3.plot([t for t, _ in pts], [m for _, m in pts], color="tab:purple", alpha=0.6)
        ax3.set_ylabel("Kafka lag (messages)", color="tab:purple")
    ax2.set_xlabel("seconds since start")
    for ax in (ax1, ax2):
        _phase_lines(ax, live["phases"])
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _latency(live: dict[str, Any], path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = ["p50", "p90", "p99", "p99.9", "max"]
    groups = [("all", live["latency_ms"])] + [(p["phase"], p["latency_ms"]) for p in live["phases"]]
    width = 0.8 / len(groups)
    for i, (name, lat) in enumerate(groups):
        if not lat.get("count"):
            continue
        xs = [k + i * width for k in range(len(keys))]
        ax1.bar(xs, [lat[k] for k in keys], width=width, label=name)
    ax1.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))], keys)
    ax1.set_yscale("log")
    ax1.set_ylabel("ms (log)")
    ax1.set_title("End-to-end latency percentiles")
    ax1.legend()
    ax1.grid(alpha=0.3, axis="y")
    hist = live.get("latency_histogram") or []
    if hist:
        # HDR buckets are 0.1 % wide: regroup them into log-spaced bins to show the shape.
        vals = [max(v, 1e-3) for v, _ in hist]
        edges = np.geomspace(min(vals), max(vals) * 1.001, 60)
        ax2.bar(edges[:-1], _log_binned(hist, edges), width=np.diff(edges), align="edge")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
    ax2.set_xlabel("latency ms (log)")
    ax2.set_ylabel("events")
    ax2.set_title("End-to-end latency histogram (whole run)")
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def _log_binned(hist: list[Any], edges: Any) -> Any:
    vals = np.array([max(v, 1e-3) for v, _ in hist])
    counts = np.array([c for _, c in hist])
    return np.histogram(vals, bins=edges, weights=counts)[0]


def _retrain(rt: dict[str, Any], path: Path) -> Path:
    """E2E latency and batch processing time, retraining on vs off, on shared log bins."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in (
        (axes[0], "latency_histogram", "End-to-end latency"),
        (axes[1], "batch_process_histogram", "Processor time per batch"),
    ):
        hists = {n: rt[n].get(key) or [] for n in ("on", "off")}
        every = [v for h in hists.values() for v, _ in h]
        if every:
            lo, hi = max(min(every), 1e-3), max(every) * 1.001
            edges = np.geomspace(lo, max(hi, lo * 1.01), 60)
            for name, color in (("on", "tab:red"), ("off", "tab:blue")):
                if hists[name]:
                    ax.stairs(
                        _log_binned(hists[name], edges),
                        edges,
                        color=color,
                        label=f"retraining {name} ({rt[name]['retrains']} retrains)",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend()
        ax.set_xlabel("ms (log)")
        ax.set_ylabel("events" if key == "latency_histogram" else "batches")
        ax.set_title(f"{title}, retraining on vs off")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _resources(live: dict[str, Any], path: Path) -> Path:
    samples = live["timeline"]["samples"]
    fig, ax1 = plt.subplots(figsize=(10, 3.5))
    ts = [s[0] for s in samples]
    ax1.plot(ts, [s[3] for s in samples], color="tab:blue", label="RSS MiB")
    ax1.set_ylabel("RSS MiB")
    ax2 = ax1.twinx()
    ax2.plot(ts, [s[4] for s in samples], color="tab:green", alpha=0.6, label="CPU %")
    ax2.set_ylabel("CPU % (100 = one core)")
    ax1.set_xlabel("seconds since start")
    ax1.set_title("Process RSS and CPU")
    _phase_lines(ax1, live["phases"])
    return _save(fig, path)


def _max(mx: dict[str, Any], path: Path) -> Path:
    steps = mx["steps"]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [s["offered_rate"] for s in steps]
    ax.plot(xs, xs, color="grey", linestyle=":", label="offered")
    ax.plot(xs, [s["committed_rate_mean"] or 0 for s in steps], marker="o", label="committed")
    for s in steps:
        if not s["bounded"]:
            ax.annotate("lag unbounded", (s["offered_rate"], s["committed_rate_mean"] or 0))
    ax.set_xlabel("offered events/s")
    ax.set_ylabel("committed events/s")
    ax.set_title("Rate steps (max search)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _process_resources(live: dict[str, Any], path: Path) -> Path:
    """RSS and CPU of every process of a cluster run, one line each."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for name, pts in live["timeline"]["processes"].items():
        if not pts:
            continue
        style = ":" if live["processes"][name]["role"] == "engine" else "-"
        ts = [p[0] for p in pts]
        ax1.plot(ts, [p[1] for p in pts], linestyle=style, label=name)
        ax2.plot(ts[1:], [p[2] for p in pts[1:]], linestyle=style, label=name)
    ax1.set_ylabel("RSS MiB")
    ax1.set_title("RSS and CPU per process (dotted: the shared engines)")
    ax2.set_ylabel("CPU % (100 = one core)")
    ax2.set_xlabel("seconds since start")
    ax1.legend(fontsize=7, ncol=2, loc="upper left")
    for ax in (ax1, ax2):
        _phase_lines(ax, live["phases"])
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _engines(doc: dict[str, Any], path: Path) -> Path:
    """Each engine alone next to what the cluster committed: which one caps it."""
    eng = doc["engines"]
    labels: list[str] = []
    values: list[float] = []
    for name, key, label in (
        ("kafka", "events_per_s", "Kafka produce+consume"),
        ("dynamodb", "raw_items_per_s", "DynamoDB BatchWriteItem (items)"),
        ("dynamodb", "events_per_s", "DynamoDB hot-store write"),
        ("s3", "events_per_s", "S3 Parquet rows"),
    ):
        v = eng.get(name, {}).get(key)
        if v:
            labels.append(label)
            values.append(float(v))
    for ph in doc.get("live", {}).get("phases", []):
        if ph["phase"] == "sustained" and ph.get("committed_rate_mean"):
            labels.append(f"cluster committed ({ph['offered_rate']:,.0f}/s offered)")
            values.append(float(ph["committed_rate_mean"]))
    fig, ax = plt.subplots(figsize=(9, 0.6 * max(len(labels), 2) + 1.5))
    colors = ["tab:red" if lab.startswith("cluster") else "tab:blue" for lab in labels]
    ax.barh(labels, values, color=colors)
    ax.axvline(30_000, color="grey", linestyle="--", label="target 30,000/s")
    ax.set_xscale("log")
    ax.set_xlabel("events/s (log)")
    ax.set_title("Engines alone vs the cluster")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)
