"""`tradepulse run --backend cluster`: every stage as its own process, against the stack.

    this process   the simulator (unless POLYGON_API_KEY is set): Polygon WebSocket + REST +
                   Finnhub on one port, ground truth under <data>/truth
    children       tradepulse processor × N, api, news, producer — each in its own process
                   group, logging to this terminal, summaries under <data>/cluster/

Start order: the processors first (they join the group), then the API, the news poller and
the producer, whose subscription starts the simulator's clock.

Stop order, for exactness: stop the news poller; stop the simulator, which sends everything it
generated and closes, so the producer reads to the close, waits for Kafka's acknowledgements
and exits; wait until the processor group has committed every input message (lag 0); then
stop the processors and the API. A processor that dies during the run is restarted under the
same instance id (it rebuilds its state from the log and resumes at the committed offsets);
any other child that dies ends the run with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradepulse.cluster.summary import read_summary, summary_path
from tradepulse.config import Settings
from tradepulse.runner import echo_err, install_signal_handlers

MAX_PROCESSOR_RESTARTS = 5
SUPERVISOR_ENV = "TRADEPULSE_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


class ClusterError(Exception):
    """The cluster run could not start or a child failed."""


def die_with_supervisor() -> None:
    """In a child of `spawn`: ask Linux for a SIGTERM when the supervisor dies, so a killed
    `tradepulse run` leaves no orphans behind (elsewhere, or outside a supervisor: nothing)."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the request was in place


def spawn(
    args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `tradepulse ARGS` as a child in its own process group, so Ctrl-C reaches only
    the supervisor, which stops the children in order. Call it from the main thread: the
    death signal of `die_with_supervisor` follows the thread that forked."""
    stdout = open(log_path, "ab") if log_path else None  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "tradepulse", *args],
            env={**os.environ, **(env or {}), SUPERVISOR_ENV: str(os.getpid())},
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            start_new_session=True,
        )
    finally:
        if stdout is not None:
            stdout.close()


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> int:
    """SIGTERM the child's process group; SIGKILL it after `grace_s`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return int(proc.returncode)


def child_env(settings: Settings) -> dict[str, str]:
    """What the children must agree on, whether it came from flags, the environment or .env."""
    return {
        "TRADEPULSE_BACKEND": "cluster",
        "TRADEPULSE_DATA_DIR": str(settings.data_dir.resolve()),
        "TRADEPULSE_TICKERS": ",".join(settings.tickers),
        "TRADEPULSE_PORT": str(settings.port),
        "TRADEPULSE_HOST": settings.host,
        "TRADEPULSE_CLUSTER_NAMESPACE": settings.cluster_namespace,
    }


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        self.proc = spawn(self.args, self.env)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM it (SIGKILL after `grace_s`); its exit code, None if it never started."""
        if self.proc is None:
            return None
        return terminate(self.proc, grace_s)


@dataclass
class ClusterRunSummary:
    trades_published: int  # from the live feed (the producer's summary)
    quotes_published: int
    rest_trades: int  # from the warm-up and gap fills
    dead_letters: int
    processor_restarts: int
    seconds: float
    truth_dir: Path | None


async def run_cluster(
    settings: Settings,
    *,
    sim_config: Any | None = None,
    duration_s: float | None = None,
    processors: int = 1,
    serve_api: bool = True,
    drain_timeout_s: float = 600.0,
    out: Callable[[str], None] = echo_err,
) -> ClusterRunSummary:
    from tradepulse.log import kafka

    await asyncio.to_thread(_require_stack, settings)
    await asyncio.to_thread(kafka.ensure_topics, settings)
    for name in ("producer", "news", *(f"processor-p{i}" for i in range(processors))):
        summary_path(settings, name).unlink(missing_ok=True)

    sim = None
    ws_url = settings.polygon_ws_url
    news_url: str | None = None
    if settings.resolved_source == "sim":
        from tradepulse.sim import MarketSimulator, SimConfig

        cfg = sim_config or SimConfig(
            tickers=list(settings.tickers), rate=1000.0, truth_dir=settings.data_dir / "truth"
        )
        sim = MarketSimulator(cfg)
        await sim.start()
        ws_url = sim.ws_url
        if not settings.finnhub_api_key:
            news_url = f"{sim.http_url}/api/v1"
        out(f"[tradepulse] simulator on {sim.ws_url} (REST {sim.http_url})")

    env = child_env(settings)
    workers = [
        Child(f"processor p{i}", ["processor", "--instance-id", f"p{i}"], env)
        for i in range(processors)
    ]
    news = Child("news", ["news", *(["--url", news_url] if news_url else [])], env)
    producer_args = ["producer", "--url", ws_url]
    producer_env = dict(env)
    if sim is not None:
        producer_args += ["--rest-url", sim.http_url, "--until-feed-closes"]
        # The producer starts seconds after the simulator's clock: reach back past the start
        # of its history, so the warm-up delivers all of it (and nothing when it has none).
        history = float(sim.config.history_s)
        producer_env["TRADEPULSE_WARMUP_S"] = str(history + 60.0 if history > 0 else 0.0)
    producer = Child("producer", producer_args, producer_env)
    api = Child("api", ["api"], env) if serve_api else None
    others = [c for c in (api, news, producer) if c is not None]
    for c in [*workers, *others]:
        c.start()
    if api is not None:
        out(f"[tradepulse] dashboard and API on http://{settings.host}:{settings.port}")
    try:
        return await _supervise(
            settings, sim, workers, others, news, producer, duration_s, drain_timeout_s, out
        )
    except BaseException:
        for c in [*workers, *others]:
            await asyncio.to_thread(c.stop, 10.0)
        if sim is not None:
            await sim.stop()
        raise


async def _supervise(
    settings: Settings,
    sim: Any,
    workers: list[Child],
    others: list[Child],
    news: Child,
    producer: Child,
    duration_s: float | None,
    drain_timeout_s: float,
    out: Callable[[str], None],
) -> ClusterRunSummary:
    from tradepulse.cluster.lag import GroupLag

    started = time.monotonic()
    stop = asyncio.Event()
    install_signal_handlers(stop)
    failure: str | None = None

    def check(expected_exit: set[str]) -> str | None:
        """Restart dead processors; name any other child that died unexpectedly."""
        for w in workers:
            code = w.exited()
            if code is None:
                continue
            if w.restarts >= MAX_PROCESSOR_RESTARTS:
                return f"{w.name} exited with {code} after {w.restarts} restarts"
            w.restarts += 1
            out(f"[tradepulse] {w.name} exited with {code}; restarting it")
            w.start()
        for c in others:
            code = c.exited()
            if code is not None and (c.name not in expected_exit or code != 0):
                return f"{c.name} exited with {code}"
        return None

    deadline = None if duration_s is None else time.monotonic() + duration_s
    finished = asyncio.create_task(sim.wait_finished()) if sim is not None else None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        if finished is not None and finished.done():
            break
        failure = check(set())
        if failure:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    stop.set()

    # Orderly drain: sources first, then wait for the processors to commit everything. The
    # simulator runs on this loop, so waiting for children happens in threads.
    await asyncio.to_thread(news.stop)
    if sim is not None:
        await sim.stop()
    else:
        await asyncio.to_thread(producer.stop, 120.0)
    if producer.proc is not None:
        code = await asyncio.to_thread(_wait, producer.proc, 180.0)
        if code != 0:
            failure = failure or f"producer exited with {code}"
    lag = GroupLag(settings)
    lag_left = -1
    try:
        drain_until = time.monotonic() + drain_timeout_s
        next_report = 0.0
        while failure is None and time.monotonic() < drain_until:
            failure = check({"news", "producer"})
            measured = await asyncio.to_thread(lag.try_measure)
            if measured is not None:
                lag_left = measured.total
                if lag_left == 0:
                    break
                if time.monotonic() >= next_report:
                    out(f"[tradepulse] waiting for the processors: lag {lag_left:,} messages")
                    next_report = time.monotonic() + 5.0
            await asyncio.sleep(0.5)
    finally:
        lag.close()
        for c in [*workers, *(c for c in others if c is not producer)]:
            stopped = await asyncio.to_thread(c.stop, 60.0)
            # Dying of our SIGTERM is a clean stop too (uvicorn re-raises it once shut down).
            if stopped not in (None, 0, -signal.SIGTERM) and failure is None:
                failure = f"{c.name} exited with {stopped} when stopped"
        if finished is not None:
            finished.cancel()
    if failure is not None:
        raise ClusterError(failure)
    if lag_left != 0:
        raise ClusterError(f"the processors did not catch up within {drain_timeout_s:.0f} s")
    prod = read_summary(settings, "producer") or {}
    return ClusterRunSummary(
        trades_published=int(prod.get("trades", 0)),
        quotes_published=int(prod.get("quotes", 0)),
        rest_trades=int(prod.get("rest_trades", 0)),
        dead_letters=int(prod.get("dead_letters", 0)),
        processor_restarts=sum(w.restarts for w in workers),
        seconds=time.monotonic() - started,
        truth_dir=settings.data_dir / "truth" if sim is not None else None,
    )


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return int(proc.wait(timeout_s))
    except subprocess.TimeoutExpired:
        return terminate(proc, 10.0)


def _require_stack(settings: Settings) -> None:
    from tradepulse.ops.stack import SERVICES, Stack

    bad = [st for st in Stack(settings).status(SERVICES) if not st.healthy]
    if bad:
        names = ", ".join(f"{st.service} ({st.state})" for st in bad)
        raise ClusterError(f"the cluster engines are not running: {names}; `tradepulse stack up`")
