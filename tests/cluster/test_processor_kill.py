"""Exactly once through crashes and rebalances: `tradepulse processor` SIGKILLed mid-run (and
restarted), or joined by a second processor mid-run, stores and produces exactly what an
uninterrupted processor does over the same input.

The input is recorded once into Kafka (the simulator's generator, published the way the
producer and the news poller publish) and copied, message for message and partition for
partition, into one namespace per run; each run has its own topics, group, transactional ids
and DynamoDB tables. The uninterrupted run is the reference: the other runs must have the same
trades (and no trade of the input missing), the same feature rows value for value, the same
anomalies and news joins, and every output row exactly once in the read_committed output topics.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from cluster_pipeline import (
    FAST_WINDOWS,
    Namespace,
    Processors,
    RecordedInput,
    Stored,
    copy_input,
    iter_differences,
    output_keys,
    read_log,
    read_store,
    record_input,
    wait_drained,
    wait_for,
)
from confluent_kafka import KafkaError, KafkaException

from tradepulse.cluster.processor import make_processor_factory
from tradepulse.cluster.summary import read_summary
from tradepulse.config import Settings
from tradepulse.log import kafka
from tradepulse.log.transactional import TransactionalProcessor

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

INPUT_SECONDS = 100.0  # momentum needs 60 s of history, then scoring 50 trades a ticker
INPUT_RATE = 40.0  # base events/s over all tickers (news spikes and bursts add to it)
FEED_SECONDS = 20.0  # how long the copied input takes to arrive in a run under test


@dataclass
class Reference:
    source: Namespace
    recorded: RecordedInput
    input_messages: int
    trade_messages: int
    sent_trades: set[tuple[str, int, int]]
    stored: Stored
    outputs: dict[str, Counter[tuple[Any, ...]]]


@pytest.fixture(scope="module")
def namespaces(
    cluster_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Namespace]]:
    run = uuid.uuid4().hex[:8]
    made: list[Namespace] = []

    def make(name: str) -> Namespace:
        ns = Namespace.create(
            f"tp-test-{name}-{run}", tmp_path_factory.mktemp(name), **FAST_WINDOWS
        )
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.drop()


@pytest.fixture(scope="module")
def reference(namespaces: Callable[[str], Namespace]) -> Reference:
    """The input, recorded once, and what an uninterrupted processor makes of it."""
    source = namespaces("input")
    recorded = record_input(source, seconds=INPUT_SECONDS, rate=INPUT_RATE)
    sent: set[tuple[str, int, int]] = set()
    messages = trade_messages = 0
    for topic in source.topics.inputs:
        for msgs in read_log(source.settings, topic).values():
            messages += len(msgs)
            if topic == source.topics.trades:
                trade_messages += len(msgs)
                for _key, value, _ts in msgs:
                    for t in kafka.decode(kafka.TRADES, value):
                        sent.add((t.ticker, t.timestamp, t.sequence_number))
    assert len(sent) == recorded.trades

    ref = namespaces("ref")
    copier = copy_input(source, ref, seconds=0.0)
    procs = Processors(ref)
    procs.start("r0")
    try:
        wait_drained(ref, copier, 300)
    finally:
        codes = procs.stop_all()
    assert codes == {"r0": 0}, procs.log_text()
    stored = read_store(ref)
    print(
        f"\ninput: {recorded.trades:,} trades, {recorded.quotes:,} quotes, "
        f"{recorded.articles} articles in {messages:,} messages; reference stored "
        f"{sum(stored.trades.values()):,} trades, {len(stored.rows['features']):,} feature rows, "
        f"{len(stored.rows['anomalies'])} anomalies, "
        f"{len(stored.rows['market_sentiment'])} sentiment records"
    )
    # Without anomalies and joins the comparisons below could not fail.
    assert stored.rows["anomalies"] and stored.rows["market_sentiment"]
    return Reference(source, recorded, messages, trade_messages, sent, stored, output_keys(ref))


def reached(ns: Namespace, total: int, fraction: float) -> bool:
    """Whether the processors committed `fraction` of the input's trade messages (trades carry
    the state; with a backlog, quotes and news may well be consumed first)."""
    return ns.committed(ns.topics.trades) >= fraction * total


def assignments(procs: Processors, instance_id: str) -> int:
    """How many partition assignments an instance's log shows (restarts append to it)."""
    log = procs.logs[instance_id]
    text = log.read_text("utf-8", "replace") if log.exists() else ""
    return len(re.findall(r"assigned partitions \[\d", text))


def compare(ref: Reference, ns: Namespace, label: str) -> None:
    """Print sent/stored/lost/duplicated per record kind; assert 0 lost, 0 duplicated and
    feature rows identical to the reference."""
    got = read_store(ns)
    outputs = output_keys(ns)
    stored_trades = set(got.trades)
    lines = [f"{label}:"]
    lost_trades = len(ref.sent_trades - stored_trades)
    dup_trades = sum(n - 1 for n in got.trades.values())
    lines.append(
        f"  trades     sent {len(ref.sent_trades):>6,}  stored {len(stored_trades):>6,}  "
        f"lost {lost_trades}  duplicated {dup_trades}"
    )
    failures: list[str] = []
    if lost_trades or dup_trades or stored_trades != ref.sent_trades:
        failures.append("trades differ from the input")
    if got.quotes != ref.recorded.quotes:
        failures.append(f"quotes: {got.quotes} stored, {ref.recorded.quotes} sent")
    for table, ignore in (
        ("features", ()),
        ("anomalies", ()),
        ("market_sentiment", ("processed_at",)),
        ("news", ("ingest_ts",)),
        ("features_latest", ()),
    ):
        want, have = ref.stored.rows[table], got.rows[table]
        lost = len(want.keys() - have.keys())
        extra = len(have.keys() - want.keys())
        topic = outputs.get(table)
        dup = sum(n - 1 for n in topic.values()) if topic is not None else 0
        in_topic = "" if topic is None else f"  in topic {sum(topic.values()):>6,}"
        lines.append(
            f"  {table:<16} reference {len(want):>6,}  stored {len(have):>6,}{in_topic}  "
            f"lost {lost}  extra {extra}  duplicated {dup}"
        )
        if lost or extra or dup:
            failures.append(f"{table}: lost {lost}, extra {extra}, duplicated {dup}")
        if topic is not None and set(topic) != set(have):
            failures.append(f"{table}: the output topic and the store hold different rows")
        diffs = list(iter_differences(want, have, ignore))
        if diffs:
            failures.append(f"{table}: {len(diffs)} rows differ, e.g. {diffs[0]}")
    print("\n".join(lines))
    assert not failures, failures


KILL_AT = (0.15, 0.3, 0.45, 0.6, 0.75)  # fractions of the trade messages committed


@pytest.mark.fault
def test_sigkill_mid_run_loses_and_duplicates_nothing(
    reference: Reference, namespaces: Callable[[str], Namespace]
) -> None:
    """The cluster half of the fault suite's SIGKILL scenario: five kills in one run."""
    ns = namespaces("kill")
    copier = copy_input(reference.source, ns, seconds=FEED_SECONDS)
    procs = Processors(ns)
    procs.start("k0")
    kills = 0
    try:
        since_start = assigned = 0
        for fraction in KILL_AT:
            # Each kill lands on an instance that has committed work of its own, not one still
            # starting up, so every restart rebuilds state that moved on.
            wait_for(
                lambda f=fraction, s=since_start: (
                    reached(ns, reference.trade_messages, f) and ns.committed(ns.topics.trades) > s
                ),
                180,
                f"{fraction:.0%} of the input committed",
            )
            procs.kill("k0")
            kills += 1
            since_start = ns.committed(ns.topics.trades)
            assigned = assignments(procs, "k0")
            procs.start("k0")  # same instance id: fences the dead one, aborts its transaction
        # The input may be all but drained by the last restart: without this wait the stop
        # below could reach the new instance before it has even installed its SIGTERM handler.
        wait_for(lambda: assignments(procs, "k0") > assigned, 180, "the last restart's assignment")
        wait_drained(ns, copier, 300)
    finally:
        codes = procs.stop_all()
    assert codes == {"k0": 0}, procs.log_text()
    assert kills == len(KILL_AT)
    summary = read_summary(ns.settings, "processor-k0")
    assert summary is not None and summary["rebuilds"] > 0, procs.log_text()
    print(
        f"\nSIGKILLed {kills} times; the last instance rebuilt {summary['rebuilds']} partitions "
        f"from {summary['rebuild_events']:,} events"
    )
    compare(reference, ns, "killed and restarted vs uninterrupted")


def test_second_processor_mid_run_takes_partitions_over_exactly(
    reference: Reference, namespaces: Callable[[str], Namespace]
) -> None:
    ns = namespaces("rebal")
    # The feed pauses at half until b holds partitions: under load, b's start-up (seconds of
    # imports) could otherwise outlast the feed and a would drain everything alone.
    joined = threading.Event()
    copier = copy_input(reference.source, ns, seconds=FEED_SECONDS, hold=(0.5, joined))
    procs = Processors(ns)
    procs.start("a")
    try:
        wait_for(partial(reached, ns, reference.trade_messages, 0.3), 180, "30% of the input")
        procs.start("b")
        wait_for(lambda: assignments(procs, "b") > 0, 180, "processor b's first assignment")
        joined.set()
        wait_drained(ns, copier, 300)
    finally:
        codes = procs.stop_all()
    assert codes == {"a": 0, "b": 0}, procs.log_text()
    first, second = (read_summary(ns.settings, f"processor-{i}") for i in ("a", "b"))
    assert first is not None and second is not None
    # The newcomer took partitions with committed offsets over and rebuilt their state.
    assert second["events"] > 0 and second["rebuilds"] > 0, procs.log_text()
    print(
        f"\nprocessor a committed {first['events']:,} events; b joined at 30% and committed "
        f"{second['events']:,}, rebuilding {second['rebuilds']} partitions from "
        f"{second['rebuild_events']:,} events"
    )
    compare(reference, ns, "rebalanced vs uninterrupted")


class FailingStore:
    """The namespace's DynamoDB store, except that writes number `fail_on` are applied and
    then reported as failed (a write that timed out after DynamoDB took it)."""

    def __init__(self, real: Any, fail_on: set[int]) -> None:
        self.real = real
        self.fail_on = fail_on
        self.writes = 0
        self.failed = 0

    def write(self, batch: Any) -> Any:
        self.writes += 1
        result = self.real.write(batch)
        if self.writes in self.fail_on:
            self.failed += 1
            raise OSError("injected: the write's answer was lost")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class AbortingProducer:
    """The processor's transactional producer, except that commits number `abort_on` fail
    with an abortable error after everything of the transaction was sent."""

    def __init__(self, real: Any, abort_on: set[int]) -> None:
        self.real = real
        self.abort_on = abort_on
        self.commits = 0
        self.aborted = 0

    def commit_transaction(self, *args: Any) -> None:
        self.commits += 1
        if self.commits in self.abort_on:
            self.aborted += 1
            raise KafkaException(
                KafkaError(KafkaError._TRANSPORT, "injected", txn_requires_abort=True)
            )
        self.real.commit_transaction(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_failed_store_write_and_aborted_transaction_are_retried_exactly(
    reference: Reference, namespaces: Callable[[str], Namespace]
) -> None:
    """In-process: a store write that fails after DynamoDB applied it, and a transaction
    aborted after its outputs and offsets were sent, are each retried from the committed
    offsets with rebuilt state; nothing is lost, duplicated or computed differently."""
    ns = namespaces("abort")
    copier = copy_input(reference.source, ns, seconds=0.0)
    copier.join(120)
    make = make_processor_factory(ns.settings)
    hot = ns.store()
    store = FailingStore(hot, fail_on={4, 9})
    proc = TransactionalProcessor(ns.settings, make, store, instance_id="t0", max_messages=400)
    producer = AbortingProducer(proc.producer, abort_on={6, 12})
    proc.producer = producer  # type: ignore[assignment]
    try:
        deadline = time.monotonic() + 300
        while ns.lag() != 0:
            assert time.monotonic() < deadline, "the input was not committed within 300 s"
            for _ in range(20):
                proc.run_once()
    finally:
        proc.close()
        hot.close()
    assert store.failed == 2 and producer.aborted == 2 and proc.stats.aborts == 2
    print(
        f"\n{store.failed} failed store writes and {producer.aborted} aborted transactions; "
        f"{proc.stats.rebuilds} partition rebuilds from {proc.stats.rebuild_events:,} events"
    )
    compare(reference, ns, "with failed writes and aborts vs uninterrupted")
