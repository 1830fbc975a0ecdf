"""Fault scenario: the Kafka broker stopped and restarted mid-run while the simulator keeps
trading, the producer keeps reading and the processor keeps committing.

The broker is a dedicated one (`Stack` with its own ports and state directory under the test's
tmp dir), so stopping it touches nobody else's; DynamoDB is the shared stack's, inside a
namespace of its own. Each outage lasts longer than librdkafka's reconnect backoff, and the
broker comes back on the same log directories: first after a SIGTERM (controlled shutdown),
then after a SIGKILL (log recovery, transaction coordinator reloaded from its log).

Expected: the producer holds what it reads in its local buffer and retries until the broker
is back (nothing expires, nothing is duplicated by the retries: the producer is idempotent);
the processor rides the outage out (its transactions abort and are retried); afterwards the
trades topic (read_committed) and DynamoDB hold every trade the simulator sent, once.

The second test bounds the producer's local buffer to a few seconds of traffic: while the
broker is down the buffer fills and the producer stops reading the WebSocket (backpressure)
instead of dropping or growing; whatever the feed dropped meanwhile comes back from REST.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson
import psutil
import pytest
from cluster_pipeline import TICKERS, Namespace, Processors, read_log, wait_for

from tradepulse.cluster.summary import read_summary
from tradepulse.config import Settings
from tradepulse.log import kafka
from tradepulse.market_time import now_ns
from tradepulse.ops.stack import Stack

pytestmark = [pytest.mark.cluster, pytest.mark.fault, pytest.mark.timeout(600)]

RATE = 120  # base events/s over all tickers (the intraday profile adds about half)
OUTAGE_S = 12.0  # longer than librdkafka's reconnect backoff (10 s at most)
RUN_S = 4.0  # live traffic between two outages, with the broker up

Identity = tuple[str, int, int]  # ticker, SIP timestamp (ns), sequence number


def _free_pair() -> int:
    """A port whose successor is free too: the broker listens on it, its controller on +1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free ports")


@dataclass
class Broker:
    """A Kafka broker of this module only, stopped and started by its own `Stack`."""

    stack: Stack
    bootstrap: str

    def stop(self) -> None:
        """SIGTERM (Kafka's controlled shutdown), SIGKILL after the stack's grace period."""
        assert self.stack.down(["kafka"]) == ["kafka"]

    def kill(self) -> None:
        """SIGKILL: no shutdown, the log and the transaction state recovered at the start."""
        pid = self.stack.pid("kafka")
        assert pid is not None
        proc = psutil.Process(pid)
        os.killpg(pid, signal.SIGKILL)  # its own process group: started with a new session
        proc.wait(30)

    def start(self) -> None:
        self.stack.up(["kafka"])  # same ports, same state dir: the same log dirs


@pytest.fixture(scope="module")
def broker(
    cluster_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    bootstrap = f"127.0.0.1:{_free_pair()}"
    settings = cluster_settings.model_copy(update={"kafka_bootstrap": bootstrap})
    state = tmp_path_factory.mktemp("kafka-stack")
    stack = Stack(settings, state=state, echo=lambda line: print(f"[broker] {line}", flush=True))
    try:
        stack.up(["kafka"])
        yield Broker(stack, bootstrap)
    finally:
        stack.down(["kafka"])


class Child:
    """A `tradepulse` process in its own process group, output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tradepulse", *args],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(30)
            raise AssertionError(f"{self.log.name} did not exit within {timeout_s:.0f} s") from None
        finally:
            if self.proc.poll() is not None:
                self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(30)
        self._out.close()


def child_env(ns: Namespace) -> dict[str, str]:
    """No developer keys (the producer would offer a Polygon key to the simulator)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRADEPULSE_") and k not in {"POLYGON_API_KEY", "FINNHUB_API_KEY"}
    }
    return env | ns.env | {"PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def simulator(env: dict[str, str], work: Path, truth: Path) -> Iterator[tuple[Child, str]]:
    """`tradepulse sim` on a free port: live trades only (no history, no news); yields the
    process and its WebSocket URL. Stopped with SIGINT, which writes the final truth."""
    sim = Child(
        [
            *("sim", "--port", "0", "--rate", str(RATE), "--seed", "9"),
            *("--tickers", ",".join(TICKERS), "--news-rate", "0", "--truth-dir", str(truth)),
        ],
        env,
        work / "sim.log",
    )
    try:
        url = ""

        def listening() -> bool:
            nonlocal url
            m = re.search(r"simulator WebSocket (ws://\S+)", sim.text)
            url = m.group(1) if m else ""
            return bool(url) or sim.proc.poll() is not None

        wait_for(listening, 60, "the simulator to listen")
        assert url, sim.text
        yield sim, url
    finally:
        sim.kill()


@dataclass
class Tally:
    where: str
    sent: int
    stored: int  # distinct identities
    lost: int
    duplicated: int  # copies beyond the first

    def report(self) -> Tally:
        print(
            f"[fault] kafka-restart {self.where}: sent={self.sent} stored={self.stored} "
            f"lost={self.lost} duplicated={self.duplicated}",
            flush=True,
        )
        return self


def tally(where: str, sent: dict[str, int], copies: Counter[Identity]) -> Tally:
    per_ticker = Counter(ticker for ticker, _ts, _seq in copies)
    lost = sum(max(0, n - per_ticker.get(t, 0)) for t, n in sent.items())
    extra = sum(max(0, n - sent.get(t, 0)) for t, n in per_ticker.items())
    assert extra == 0, f"{where}: {extra} trades stored that the simulator never sent"
    dup = sum(n - 1 for n in copies.values())
    return Tally(where, sum(sent.values()), len(copies), lost, dup).report()


def kafka_trades(ns: Namespace) -> Counter[Identity]:
    copies: Counter[Identity] = Counter()
    for msgs in read_log(ns.settings, ns.topics.trades).values():
        for _key, value, _ts in msgs:
            for t in kafka.decode(kafka.TRADES, value):
                copies[(t.ticker, t.timestamp, t.sequence_number)] += 1
    return copies


def dynamo_trades(ns: Namespace) -> Counter[Identity]:
    hot = ns.store()
    try:
        return Counter((t.ticker, t.timestamp, t.sequence_number) for t in hot.trades_since(0))
    finally:
        hot.close()


def sent_trades(truth: Path) -> dict[str, int]:
    doc = orjson.loads((truth / "summary.json").read_bytes())
    assert doc["history_trades"] == dict.fromkeys(TICKERS, 0)
    return {str(t): int(n) for t, n in doc["valid_trades"].items()}


@pytest.fixture
def namespace(
    broker: Broker, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[..., Namespace]]:
    made: list[Namespace] = []

    def make(name: str, **overrides: object) -> Namespace:
        ns = Namespace.create(
            unique(name),
            tmp_path / name,
            kafka_bootstrap=broker.bootstrap,
            warmup_s=0.0,  # the simulator has no history: every trade comes live
            **overrides,
        )
        made.append(ns)
        return ns

    yield make
    for ns in made:
        with contextlib.suppress(Exception):
            ns.drop()


def committed_trades(ns: Namespace) -> int:
    return ns.committed(ns.topics.trades)


def start_producer(ns: Namespace, env: dict[str, str], ws_url: str) -> Child:
    """`tradepulse producer` on the simulator, until the simulator closes the feed."""
    return Child(
        ["producer", "--url", ws_url, "--until-feed-closes"], env, ns.data_dir / "producer.log"
    )


def outage(broker: Broker, how: str) -> tuple[str, int, int]:
    """Stop (SIGTERM) or kill (SIGKILL) the broker, keep it down for OUTAGE_S, start it again
    on the same log dirs; returns (how, down at, up again at) in wall-clock ns."""
    down_at = now_ns()
    if how == "SIGTERM":
        broker.stop()
    else:
        broker.kill()
    print(f"[fault] broker down ({how}, stopped in {(now_ns() - down_at) / 1e9:.1f} s)", flush=True)
    time.sleep(OUTAGE_S)
    broker.start()
    up_at = now_ns()
    print(f"[fault] broker back after {(up_at - down_at) / 1e9:.1f} s", flush=True)
    return how, down_at, up_at


def made_during(copies: Counter[Identity], lo: int, hi: int) -> int:
    return sum(1 for _t, ts, _s in copies if lo <= ts <= hi)


def finish(sim: Child, producer: Child) -> None:
    """The simulator sends what it generated and closes normally (1000); the producer reads to
    the close, waits for Kafka's acknowledgements and exits 0."""
    sim.signal(signal.SIGINT)
    assert sim.wait(60) == 0, sim.text
    assert producer.wait(180) == 0, producer.text[-6000:]


def test_broker_stopped_and_killed_mid_run_loses_and_duplicates_nothing(
    broker: Broker, namespace: Callable[..., Namespace], tmp_path: Path
) -> None:
    ns = namespace("restart")
    env = child_env(ns)
    truth = tmp_path / "truth"
    kafka.ensure_topics(ns.settings)
    procs = Processors(ns)
    procs.start("k0")
    outages: list[tuple[str, int, int]] = []
    producer: Child | None = None
    try:
        with simulator(env, tmp_path, truth) as (sim, ws_url):
            producer = start_producer(ns, env, ws_url)
            wait_for(lambda: committed_trades(ns) > 0, 120, "the first committed trades")
            time.sleep(RUN_S)
            for how in ("SIGTERM", "SIGKILL"):
                before = committed_trades(ns)
                outages.append(outage(broker, how))
                assert producer.proc.poll() is None, producer.text[-4000:]
                wait_for(
                    lambda b=before: committed_trades(ns) > b,  # type: ignore[misc]
                    180,
                    f"the processor to commit again after the {how} restart",
                )
                back = (now_ns() - outages[-1][2]) / 1e9
                print(f"[fault] the processor commits again {back:.1f} s later", flush=True)
                time.sleep(RUN_S)
            finish(sim, producer)
        wait_for(lambda: ns.lag() == 0, 180, "the processor to commit every input message")
    finally:
        codes = procs.stop_all()
        if producer is not None:
            producer.kill()
    # One processor process all along: it rode both outages out.
    assert codes == {"k0": 0}, procs.log_text()

    summary = read_summary(ns.settings, "producer")
    processor = read_summary(ns.settings, "processor-k0")
    assert summary is not None and processor is not None, producer.text[-4000:]
    sent = sent_trades(truth)
    in_kafka = kafka_trades(ns)
    in_dynamo = dynamo_trades(ns)
    shown = ("events", "aborts", "rebuilds", "consumers_replaced", "producers_replaced")
    print(f"\nproducer: {summary}\nprocessor: { ({k: processor.get(k) for k in shown}) }")
    k = tally("kafka trades topic (read_committed)", sent, in_kafka)
    d = tally("DynamoDB hot store", sent, in_dynamo)

    # The outages were real and the producer was live through them: librdkafka reported the
    # broker gone, and trades timed inside each window are in the log — read from the feed
    # while the broker was down and held until it was back (no disconnect, nothing from REST).
    assert summary["kafka_errors"] > 0, producer.text[-4000:]
    for how, lo, hi in outages:
        during = made_during(in_kafka, lo, hi)
        print(f"[fault] {how} outage of {(hi - lo) / 1e9:.1f} s: {during} trades made during it")
        assert during > 0, (how, lo, hi)
    assert summary["disconnects"] == 0 and summary["rest_trades"] == 0, summary
    assert k.lost == 0 and d.lost == 0, producer.text[-4000:] + procs.log_text()
    assert k.duplicated == 0 and d.duplicated == 0


def test_full_local_buffer_pauses_the_feed_and_loses_nothing(
    broker: Broker, namespace: Callable[..., Namespace], tmp_path: Path
) -> None:
    """Kafka's local buffer bounded to a few seconds of this feed (and the frame queue to its
    minimum): during the outage the buffer fills and the producer stops reading the socket.
    The feed waits in TCP and in the simulator's send buffer; if it drops us meanwhile (a
    keepalive timeout), the gap fill from REST brings back what it dropped."""
    ns = namespace("bounded", kafka_buffer_kb=64, ws_queue_frames=16)
    env = child_env(ns)
    truth = tmp_path / "truth"
    kafka.ensure_topics(ns.settings)
    with simulator(env, tmp_path, truth) as (sim, ws_url):
        producer = start_producer(ns, env, ws_url)
        try:
            wait_for(lambda: "ev/s" in producer.text, 60, "the producer's first status line")
            time.sleep(RUN_S)
            how, lo, hi = outage(broker, "SIGTERM")
            assert producer.proc.poll() is None, producer.text[-4000:]
            time.sleep(RUN_S)
            finish(sim, producer)
        finally:
            producer.kill()
    summary = read_summary(ns.settings, "producer")
    assert summary is not None, producer.text[-4000:]
    sent = sent_trades(truth)
    in_kafka = kafka_trades(ns)
    print(f"\nproducer: {summary}")
    k = tally("kafka trades topic, 64 KiB local buffer", sent, in_kafka)
    print(
        f"[fault] {how} outage of {(hi - lo) / 1e9:.1f} s: "
        f"{made_during(in_kafka, lo, hi)} trades made during it; the local buffer was full "
        f"{summary['buffer_full']} times for {summary['buffer_full_s']:.1f} s"
    )
    assert summary["buffer_full"] > 0 and summary["kafka_errors"] > 0, producer.text[-4000:]
    assert k.lost == 0, producer.text[-4000:]
    # Copies beyond the first come only from a gap fill overlapping what the feed delivered.
    assert k.duplicated <= summary["rest_trades"], summary
