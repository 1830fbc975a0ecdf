"""The dead-letter lifecycle on the real stack: SQS (ElasticMQ) → redrive → Kafka / S3 archive.

The redrive interval is 2 s and the retry limit 2, so the whole lifecycle runs in seconds.
Each test has its own queue, S3 prefix and cluster namespace (hence its own Kafka topics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pyarrow.fs as pafs
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from typer.testing import CliRunner

from tradepulse.cli import app
from tradepulse.config import Settings
from tradepulse.events import DeadLetter, Trade
from tradepulse.log import kafka
from tradepulse.market_time import NS_PER_MS, NS_PER_S, now_ns
from tradepulse.store.cold.s3 import cold_root, s3_filesystem
from tradepulse.validate import decode_frame
from tradepulse.validate.dlq.archive import DlqArchive
from tradepulse.validate.dlq.entry import DlqEntry
from tradepulse.validate.dlq.redrive import Redriver, RedriveReport
from tradepulse.validate.dlq.sqs import SqsDeadLetterQueue

Kwargs = Callable[[str], dict[str, Any]]


@pytest.fixture
def settings(
    cluster_settings: Settings,
    unique: Callable[[str], str],
    aws_kwargs: Kwargs,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    namespace = unique("ns")
    s = cluster_settings.model_copy(
        update={
            "cluster_namespace": namespace,
            "sqs_dlq_queue": "dlq",
            "s3_prefix": unique("cold"),
            "dlq_retry_s": 2.0,
            "dlq_max_retries": 2,
            # Raised since the dead letters below were rejected: one of them now passes.
            "max_clock_skew_s": 7200.0,
        }
    )
    # The same settings for `tradepulse dlq ...` run through CliRunner.
    for name, value in {
        "TRADEPULSE_BACKEND": "cluster",
        "TRADEPULSE_CLUSTER_NAMESPACE": namespace,
        "TRADEPULSE_SQS_DLQ_QUEUE": "dlq",
        "TRADEPULSE_S3_PREFIX": s.s3_prefix,
        "TRADEPULSE_DLQ_RETRY_S": "2",
        "TRADEPULSE_DLQ_MAX_RETRIES": "2",
    }.items():
        monkeypatch.setenv(name, value)
    admin = AdminClient(kafka.client_config(s))
    trades_topic = kafka.Topics.of(s).trades
    admin.create_topics([NewTopic(trades_topic, num_partitions=1, replication_factor=1)])[
        trades_topic
    ].result(30)
    yield s
    sqs = boto3.client("sqs", **aws_kwargs("sqs"))
    for url in sqs.list_queues(QueueNamePrefix=namespace).get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)
    s3_filesystem(s).delete_dir_contents(cold_root(s), missing_dir_ok=True)
    admin.delete_topics([trades_topic], operation_timeout=30)[trades_topic].result(30)


def rejected(recv_ns: int) -> list[DeadLetter]:
    """What the producer rejects from one frame: a negative price (bad for good) and a trade
    an hour ahead of the receive time, over the 60 s skew the producer then allowed."""
    ahead_ms = (recv_ns + 3600 * NS_PER_S) // NS_PER_MS
    frame = (
        b'[{"ev":"T","sym":"AAPL","p":-3.5,"s":10,"t":%d,"q":7},'
        b'{"ev":"T","sym":"MSFT","p":412.25,"s":3,"t":%d,"q":8,"x":4,"c":[12]}]'
        % (recv_ns // NS_PER_MS, ahead_ms)
    )
    dead = decode_frame(frame, recv_ns, max_skew_ns=60 * NS_PER_S).dead_letters
    assert [d.reason for d in dead] == ["non_positive_price", "timestamp_skew"]
    return dead


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, ["dlq", *args])
    assert result.exit_code == 0, result.output
    return result.output


def published_trades(settings: Settings, expect: int, timeout_s: float = 20.0) -> list[Trade]:
    topic = kafka.Topics.of(settings).trades
    c = Consumer({**kafka.client_config(settings), "group.id": f"{topic}-check"})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[Trade] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for m in c.consume(10, 0.5):
                if m.error() is None:
                    out.extend(kafka.decode(kafka.TRADES, m.value()))
        for m in c.consume(10, 1.0):  # and nothing more
            if m.error() is None:
                out.extend(kafka.decode(kafka.TRADES, m.value()))
    finally:
        c.close()
    return out


def test_fail_dlq_redrive_archive_on_sqs_and_s3(settings: Settings) -> None:
    recv = now_ns()
    bad_price, skewed = rejected(recv)
    queue = SqsDeadLetterQueue(settings)
    assert SqsDeadLetterQueue(settings).url == queue.url  # created once, found after
    queue.send([bad_price, skewed])

    redriver = Redriver.for_settings(settings, queue)
    first = redriver.run_once()
    assert (first.not_due, first.redriven, first.requeued) == (2, 0, 0)  # 2 s not yet up
    assert first.next_due_ns is not None

    listed = cli("list")
    assert "non_positive_price" in listed and "timestamp_skew" in listed
    assert "polygon-ws" in listed
    assert "2 waiting and 0 being redriven" in listed
    assert queue.url in listed

    time.sleep(max(0.0, (first.next_due_ns - now_ns()) / NS_PER_S) + 0.1)
    second = redriver.run_once()
    assert (second.redriven, second.records, second.requeued, second.archived) == (1, 1, 1, 0)
    [trade] = published_trades(settings, expect=1)
    assert (trade.ticker, trade.price, trade.size, trade.sequence_number) == ("MSFT", 412.25, 3, 8)
    assert trade.ingest_ts == recv  # the first-seen time, not the redrive time
    [back] = queue.peek(10)
    assert (back.reason, back.retries, back.attempts) == ("non_positive_price", 1, 2)

    # The worker takes it from here: one more failed redrive, then the archive.
    stop = threading.Event()
    passes: list[RedriveReport] = []

    def on_pass(report: RedriveReport) -> None:
        passes.append(report)
        if report.archived:
            stop.set()

    worker = threading.Thread(target=redriver.run, args=(stop.is_set, on_pass))
    worker.start()
    worker.join(timeout=30)
    stop.set()
    worker.join()
    assert sum(p.archived for p in passes) == 1
    assert queue.peek(10) == []
    assert queue.count() == (0, 0)

    fs, root = s3_filesystem(settings), cold_root(settings)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    keys = [i.path.removeprefix(root + "/") for i in infos if i.is_file]
    assert len(keys) == 1 and keys[0].startswith("dlq-archive/date=")
    [row] = DlqArchive.for_settings(settings).read().to_pylist()
    assert row["reason"] == "non_positive_price"
    assert (row["retries"], row["attempts"]) == (2, 3)
    assert (row["raw"], row["source"], row["ticker"]) == (bad_price.raw, "polygon-ws", "AAPL")
    assert row["first_seen"] == bad_price.first_seen
    assert "0 waiting and 0 being redriven" in cli("list")
    redriver.close()


def test_cli_archive_and_redrive_now(settings: Settings) -> None:
    queue = SqsDeadLetterQueue(settings)
    bad_price, _ = rejected(now_ns())
    queue.send([bad_price, bad_price])
    # --now ignores the interval: one failed redrive each, both back in the queue.
    assert "back in the queue 2, archived 0" in cli("redrive", "--now")
    assert "archived 0 dead letters" in cli("archive")  # none has used up its retries
    assert "archived 2 dead letters" in cli("archive", "--reason", "non_positive")
    assert len(DlqArchive.for_settings(settings).read()) == 2
    assert queue.count() == (0, 0)

    bad = CliRunner().invoke(app, ["dlq", "archive", "--all", "--reason", "x"])
    assert bad.exit_code == 2 and "exclude each other" in bad.output
    bad = CliRunner().invoke(app, ["dlq", "list", "--backend", "mongo"])
    assert bad.exit_code == 2 and "embedded or cluster" in bad.output


def test_lease_keeps_one_copy_of_an_entry_a_crash_duplicated(settings: Settings) -> None:
    queue = SqsDeadLetterQueue(settings)
    entry = DlqEntry("same-id", "negative_size", "{}", "polygon-ws", 1, 2, "AAPL", retries=1)
    # A crash between sending the new version and deleting the old one leaves both.
    queue.put([entry, DlqEntry("same-id", "negative_size", "{}", "polygon-ws", 1, 3, retries=2)])
    leased = queue.lease(10, lease_s=30)
    assert [(e.dlq_id, e.retries) for e in leased] == [("same-id", 2)]
    queue.release(leased)
    assert [e.retries for e in queue.peek(10)] == [2]


def test_oversized_payload_is_cut_to_fit_sqs(settings: Settings) -> None:
    queue = SqsDeadLetterQueue(settings)
    huge = "\x01" * (200 * 1024)  # six bytes each once JSON-escaped
    queue.send([DeadLetter("frame_too_large", huge, "polygon-ws", now_ns())])
    [entry] = queue.peek(10)
    assert entry.raw.endswith("[truncated to fit an SQS message]")
    assert huge.startswith(entry.raw.removesuffix("…[truncated to fit an SQS message]"))
