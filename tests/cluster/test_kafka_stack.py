"""Against the real Kafka broker from `tradepulse stack`: topics, idempotent transactional
producer, read_committed isolation and the consume → produce + offsets transaction."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tradepulse.config import Settings
from tradepulse.log import kafka


def tx_producer(settings: Settings, transactional_id: str) -> Producer:
    # The project's own configuration, unchanged: it must make a valid transactional producer
    # (docs/postmortem.md: its delivery timeout once exceeded the transaction timeout).
    return Producer(kafka.producer_config(settings, **{"transactional.id": transactional_id}))


# Short group timings: a join against one local broker then takes well under a second.
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


@pytest.fixture
def admin(cluster_settings: Settings) -> AdminClient:
    return AdminClient(kafka.client_config(cluster_settings))


@pytest.fixture
def topics(admin: AdminClient) -> Iterator[Callable[[str, int], str]]:
    """Create throwaway topics; delete them afterwards."""
    made: list[str] = []

    def make(name: str, partitions: int) -> str:
        fut = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        fut[name].result(30)
        made.append(name)
        return name

    yield make
    if made:
        for fut in admin.delete_topics(made, operation_timeout=30).values():
            fut.result(30)


def partition_counts(admin: AdminClient, names: list[str]) -> dict[str, int]:
    """Partition count per topic, waiting for new topics to show up in the broker's metadata
    (it lags the CreateTopics response by a moment)."""
    deadline = time.monotonic() + 10
    while True:
        md = admin.list_topics(timeout=30).topics
        if all(n in md for n in names) or time.monotonic() > deadline:
            return {n: len(md[n].partitions) for n in names if n in md}
        time.sleep(0.1)


def read_all(
    settings: Settings, topic: str, *, isolation: str, expect: int, timeout_s: float = 20.0
) -> list[str]:
    """Every readable value of `topic` from the beginning, stopping at the end of the log."""
    c = Consumer(
        {
            **kafka.client_config(settings),
            "group.id": f"reader-{topic}-{isolation}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        out: list[str] = []
        deadline = time.monotonic() + timeout_s
        idle = 0
        while time.monotonic() < deadline and (len(out) < expect or idle < 1):
            msgs = c.consume(100, 0.5)
            idle = 0 if msgs else idle + 1
            for m in msgs:
                value = m.value()
                if m.error() is None and value is not None:
                    out.append(value.decode())
        return out
    finally:
        c.close()


def test_ensure_topics_creates_once_with_configured_partitions(
    cluster_settings: Settings,
    admin: AdminClient,
    unique: Callable[[str], str],
) -> None:
    # A fresh namespace exercises creation on every run, even on a long-lived stack.
    fresh = cluster_settings.model_copy(update={"cluster_namespace": unique("topics")})
    names = kafka.Topics.of(fresh).all
    try:
        assert sorted(kafka.ensure_topics(fresh)) == sorted(names)
        assert kafka.ensure_topics(fresh) == []
        counts = partition_counts(admin, list(names))
        assert counts == {t: cluster_settings.kafka_trades_partitions for t in names}
    finally:
        admin.delete_topics(list(names), operation_timeout=30)

    # The real names: whatever the first call creates, the second creates nothing.
    kafka.ensure_topics(cluster_settings)
    assert kafka.ensure_topics(cluster_settings) == []
    assert partition_counts(admin, [kafka.TRADES])[kafka.TRADES] == 6


def test_committed_transaction_visible_aborted_never(
    cluster_settings: Settings, topics: Callable[[str, int], str], unique: Callable[[str], str]
) -> None:
    topic = topics(unique("txn"), 3)
    p = tx_producer(cluster_settings, unique("tx"))
    p.init_transactions(30)

    def txn(values: list[str], *, commit: bool) -> None:
        p.begin_transaction()
        for v in values:
            p.produce(topic, key=v[-1:].encode(), value=v.encode())
        p.flush(10)  # the aborted records really reach the log before the abort marker
        if commit:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)

    txn(["c0", "c1", "c2"], commit=True)
    txn(["a0", "a1"], commit=False)
    txn(["c3"], commit=True)

    committed = read_all(cluster_settings, topic, isolation="read_committed", expect=4)
    assert sorted(committed) == ["c0", "c1", "c2", "c3"]
    everything = read_all(cluster_settings, topic, isolation="read_uncommitted", expect=6)
    assert sorted(everything) == ["a0", "a1", "c0", "c1", "c2", "c3"]


def test_consume_produce_and_offsets_in_one_transaction(
    cluster_settings: Settings, topics: Callable[[str, int], str], unique: Callable[[str], str]
) -> None:
    """The processor's protocol: an aborted batch leaves neither outputs nor offsets behind,
    the retried batch commits both, so every input yields exactly one output."""
    src, dst = topics(unique("in"), 2), topics(unique("out"), 2)
    group = unique("group")
    feeder = Producer(kafka.producer_config(cluster_settings))
    for i in range(20):
        feeder.produce(src, key=str(i % 4).encode(), value=str(i).encode())
    assert feeder.flush(10) == 0

    consumer = Consumer(
        {
            **kafka.client_config(cluster_settings),
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **FAST_GROUP,
        }
    )
    producer = tx_producer(cluster_settings, unique("proc"))
    producer.init_transactions(30)
    consumer.subscribe([src])
    try:
        aborted_once = False
        done = 0
        deadline = time.monotonic() + 30
        while done < 20 and time.monotonic() < deadline:
            msgs = [m for m in consumer.consume(10, 0.5) if m.error() is None]
            if not msgs:
                continue
            producer.begin_transaction()
            for m in msgs:
                producer.produce(dst, key=m.key(), value=str(int(m.value() or b"0") * 10).encode())
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
            )
            if not aborted_once:
                aborted_once = True
                producer.abort_transaction(30)
                # Rewind to the committed offsets, as TransactionalProcessor._rewind does.
                for tp in consumer.committed(consumer.assignment(), timeout=10):
                    off = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                    consumer.seek(TopicPartition(tp.topic, tp.partition, off))
                continue
            producer.commit_transaction(30)
            done += len(msgs)
        assert done == 20
        committed = consumer.committed([TopicPartition(src, p) for p in (0, 1)], timeout=10)
        assert sum(max(tp.offset, 0) for tp in committed) == 20  # -1001: nothing committed
    finally:
        consumer.close()

    out = read_all(cluster_settings, dst, isolation="read_committed", expect=20)
    assert sorted(int(v) for v in out) == [i * 10 for i in range(20)]


def test_transactional_id_fences_a_zombie(
    cluster_settings: Settings, topics: Callable[[str, int], str], unique: Callable[[str], str]
) -> None:
    """A restarted processor (same transactional.id) fences the old instance's producer."""
    topic = topics(unique("fence"), 1)
    tid = unique("zombie")
    old = tx_producer(cluster_settings, tid)
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(topic, value=b"zombie")
    old.flush(10)
    new = tx_producer(cluster_settings, tid)
    new.init_transactions(30)  # aborts the old instance's open transaction
    new.begin_transaction()
    new.produce(topic, value=b"live")
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as info:
        old.commit_transaction(10)
    assert info.value.args[0].fatal() or info.value.args[0].txn_requires_abort()
    assert read_all(cluster_settings, topic, isolation="read_committed", expect=1) == ["live"]
