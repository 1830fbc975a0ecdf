"""The cluster's dead-letter queue on SQS (ElasticMQ in tests).

One message per dead letter; the body is the JSON `DlqEntry` (the dead letter, its `dlq_id`,
its redrive count and last attempt), so the queue alone carries the whole lifecycle. The
queue is created on first use (idempotently) with the longest retention SQS allows, 14 days;
an entry nobody redrives for that long is lost to SQS, so run the redrive worker.

Reading without consuming: SQS has no peek, so `peek` receives with a short visibility timeout
and at once makes what it saw visible again. `lease` hides entries for the redrive pass that
handles them; they come back by themselves if that pass dies. Moving an entry back after a
failed redrive sends its new version and then deletes the old message; a crash in between
leaves two messages with one `dlq_id`, and the next `lease` keeps the one with more retries.
Sending is retried per SQS batch (throttling, 5xx, entries reported `Failed`); a `send` that
SQS still refused in part raises `DlqError` and remembers what it did not store, so the caller's
retry of the same dead letters sends exactly those, under their first ids: no duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from tradepulse.config import Settings
from tradepulse.events import DeadLetter
from tradepulse.market_time import now_ns
from tradepulse.validate.dlq.entry import DlqEntry, decode_entry, encode_entry, new_dlq_id

__all__ = ["DlqError", "SqsDeadLetterQueue", "queue_name"]

_MAX_BODY = 256 * 1024  # SQS's classic message (and batch) size limit
_BATCH = 10  # SQS's batch limit
_RETENTION_S = 14 * 24 * 3600
_TRUNCATED = "…[truncated to fit an SQS message]"


class DlqError(Exception):
    """The DLQ refused dead letters even after retries; `unsent` are the entries it did not
    store (the others of the same call were stored)."""

    def __init__(self, message: str, unsent: Sequence[DlqEntry] = ()) -> None:
        super().__init__(message)
        self.unsent = list(unsent)


def queue_name(settings: Settings) -> str:
    """The DLQ's name; inside the cluster namespace when one is set."""
    ns = settings.cluster_namespace
    name = f"{ns}-{settings.sqs_dlq_queue}" if ns else settings.sqs_dlq_queue
    if len(name) > 80:
        raise ValueError(f"SQS queue name {name!r} is longer than 80 characters")
    return name


def _connect(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": settings.aws_retry_mode, "max_attempts": settings.aws_max_attempts}
    )
    kwargs: dict[str, Any] = {"region_name": settings.aws_region, "config": config}
    if settings.sqs_endpoint:
        from tradepulse.ops.stack import endpoints

        kwargs["endpoint_url"] = settings.sqs_endpoint
        # The local server accepts any signature; real endpoints use the normal chain.
        if endpoints(settings, ["sqs"])["sqs"].local:
            kwargs |= {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return boto3.client("sqs", **kwargs)


def _body(entry: DlqEntry) -> str:
    body = encode_entry(entry)
    while len(body) > _MAX_BODY:
        # JSON escaping can inflate the raw payload (control bytes become \\uXXXX), so cut in
        # proportion and check again.
        keep = max(0, int(len(entry.raw) * (_MAX_BODY - 4096) / len(body)))
        entry = msgspec.structs.replace(entry, raw=entry.raw[:keep] + _TRUNCATED)
        body = encode_entry(entry)
    return body.decode()


class SqsDeadLetterQueue:
    """Dead letters on SQS. `send` is what producers call; the rest serves redrive and the CLI."""

    def __init__(self, settings: Settings, *, client: Any | None = None) -> None:
        self.settings = settings
        self.name = queue_name(settings)
        self.attempts = settings.dlq_attempts
        self._client = client if client is not None else _connect(settings)
        self.url = self._ensure_queue()
        self._receipts: dict[str, str] = {}  # dlq_id → receipt handle of its current lease
        # The dead letters of the last `send` SQS refused in part, and the entries it did not
        # store: a retried `send` of the same letters resumes with those.
        self._unsent: tuple[list[DeadLetter], list[DlqEntry]] | None = None

    @property
    def location(self) -> str:
        return self.url

    def _ensure_queue(self) -> str:
        try:
            return str(self._client.get_queue_url(QueueName=self.name)["QueueUrl"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in {
                "QueueDoesNotExist",
                "AWS.SimpleQueueService.NonExistentQueue",
            }:
                raise
        try:
            attrs = {"MessageRetentionPeriod": str(_RETENTION_S)}
            return str(self._client.create_queue(QueueName=self.name, Attributes=attrs)["QueueUrl"])
        except ClientError as exc:
            # Another process created it between our two calls (possibly with other attributes).
            if exc.response["Error"]["Code"] not in {"QueueAlreadyExists", "QueueNameExists"}:
                raise
            return str(self._client.get_queue_url(QueueName=self.name)["QueueUrl"])

    # -- producing ---------------------------------------------------------------------------

    def send(self, dead: list[DeadLetter]) -> None:
        """Enqueue new dead letters; raise DlqError if SQS keeps refusing some of them.

        Calling `send` again with the same letters after a DlqError (what the producer's
        retry does) sends only the entries SQS did not take, under the ids they were given the
        first time: a new id for an entry already stored would be a duplicate that the lease
        cannot recognise."""
        letters = list(dead)
        if self._unsent is not None and self._unsent[0] == letters:
            entries = self._unsent[1]
        else:
            now = now_ns()
            entries = [DlqEntry.from_dead(d, new_dlq_id(), now) for d in letters]
        self._unsent = None
        try:
            self.put(entries)
        except DlqError as exc:
            self._unsent = (letters, exc.unsent)
            raise

    def put(self, entries: Sequence[DlqEntry]) -> None:
        """Send entries in SQS batches; on a batch SQS keeps refusing, raise DlqError with
        every entry not stored (that batch's rest and all later ones)."""
        batches: list[list[tuple[DlqEntry, str]]] = []
        batch: list[tuple[DlqEntry, str]] = []
        size = 0
        for entry in entries:
            body = _body(entry)
            n = len(body.encode())
            if batch and (len(batch) == _BATCH or size + n > _MAX_BODY):
                batches.append(batch)
                batch, size = [], 0
            batch.append((entry, body))
            size += n
        if batch:
            batches.append(batch)
        for i, b in enumerate(batches):
            try:
                self._send_batch(b)
            except DlqError as exc:
                later = [entry for rest in batches[i + 1 :] for entry, _ in rest]
                raise DlqError(str(exc), [*exc.unsent, *later]) from None

    def _send_batch(self, batch: list[tuple[DlqEntry, str]]) -> None:
        pending = {str(i): pair for i, pair in enumerate(batch)}
        error = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 5.0))
            entries = [{"Id": i, "MessageBody": body} for i, (_, body) in pending.items()]
            try:
                resp = self._client.send_message_batch(QueueUrl=self.url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                error = str(exc)
                continue
            failed = resp.get("Failed", [])
            for ok in resp.get("Successful", []):
                pending.pop(ok["Id"], None)
            if not pending:
                return
            error = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in failed)
        raise DlqError(
            f"SQS refused {len(pending)} dead letter(s) after {self.attempts} attempts: {error}",
            [entry for entry, _ in pending.values()],
        )

    # -- reading -----------------------------------------------------------------------------

    def count(self) -> tuple[int, int]:
        """(waiting, in flight) — SQS's approximate counts."""
        attrs = self._client.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def peek(self, limit: int) -> list[DlqEntry]:
        """Up to `limit` waiting entries, left in the queue."""
        got = self._receive(limit, visibility_s=30)
        self._change_visibility([receipt for _, receipt in got], 0)
        return [entry for entry, _ in got]

    def lease(self, limit: int, lease_s: float) -> list[DlqEntry]:
        """Up to `limit` entries, hidden from every other reader for `lease_s` seconds."""
        got = self._receive(limit, visibility_s=max(1, int(lease_s)))
        best: dict[str, tuple[DlqEntry, str]] = {}
        extra: list[str] = []
        for entry, receipt in got:
            old = best.get(entry.dlq_id)
            if old is None or entry.retries > old[0].retries:
                if old is not None:
                    extra.append(old[1])
                best[entry.dlq_id] = (entry, receipt)
            else:
                extra.append(receipt)
        self._delete(extra)  # copies left by a crash in the middle of a requeue
        for entry, receipt in best.values():
            self._receipts[entry.dlq_id] = receipt
        return [entry for entry, _ in best.values()]

    def release(self, entries: Sequence[DlqEntry]) -> None:
        """Leased entries back to waiting, unchanged."""
        self._change_visibility(self._take_receipts(entries), 0)

    def requeue(self, entries: Sequence[DlqEntry]) -> None:
        """Replace leased entries by their new versions (after another failed redrive)."""
        self.put(entries)
        self._delete(self._take_receipts(entries))

    def remove(self, entries: Sequence[DlqEntry], outcome: str) -> None:
        """Leased entries leave the queue (`outcome`: redriven or archived)."""
        self._delete(self._take_receipts(entries))

    def close(self) -> None:
        self._client.close()

    # -- SQS calls ---------------------------------------------------------------------------

    def _receive(self, limit: int, visibility_s: int) -> list[tuple[DlqEntry, str]]:
        out: list[tuple[DlqEntry, str]] = []
        wait = 0
        while len(out) < limit:
            resp = self._client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=min(_BATCH, limit - len(out)),
                VisibilityTimeout=visibility_s,
                WaitTimeSeconds=wait,
            )
            msgs = resp.get("Messages", [])
            if not msgs:
                if wait:
                    break
                # A short poll samples only some servers on real SQS: one long poll before
                # concluding that nothing more is waiting.
                wait = 1
                continue
            out.extend((_entry(m), m["ReceiptHandle"]) for m in msgs)
        return out

    def _take_receipts(self, entries: Sequence[DlqEntry]) -> list[str]:
        return [r for e in entries if (r := self._receipts.pop(e.dlq_id, None)) is not None]

    def _change_visibility(self, receipts: list[str], seconds: int) -> None:
        for i in range(0, len(receipts), _BATCH):
            chunk = receipts[i : i + _BATCH]
            self._client.change_message_visibility_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(j), "ReceiptHandle": r, "VisibilityTimeout": seconds}
                    for j, r in enumerate(chunk)
                ],
            )

    def _delete(self, receipts: list[str]) -> None:
        for i in range(0, len(receipts), _BATCH):
            chunk = receipts[i : i + _BATCH]
            resp = self._client.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(j), "ReceiptHandle": r} for j, r in enumerate(chunk)],
            )
            failed = resp.get("Failed", [])
            if failed:
                # The lease ran out and someone else holds the message now: it is theirs.
                raise DlqError(f"could not delete {len(failed)} DLQ message(s): {failed[0]}")


def _entry(message: dict[str, Any]) -> DlqEntry:
    body = message.get("Body", "")
    try:
        return decode_entry(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        # Not ours (someone put it on the queue by hand): it goes through the lifecycle like
        # any dead letter and ends in the archive instead of being dropped.
        return DlqEntry(
            dlq_id=str(message["MessageId"]),
            reason="undecodable_dlq_message",
            raw=str(body),
            source="sqs",
            first_seen=now_ns(),
            attempts=1,
            last_attempt=0,
        )
