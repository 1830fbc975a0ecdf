"""The dead-letter lifecycle after the DLQ: redrive on a timer, then archive.

A redrive pass leases the queue in small chunks and, for every entry that is due (its last
attempt `dlq_retry_s` ago; `force` ignores that):

- re-validates the payload with its source's own rules (`revalidate.py`);
- now valid → its records are re-published (`republish.py`), then the entry leaves the queue;
- still failing → `retries` and `attempts` + 1 and the new reason; back in the queue, or, once
  `retries` reaches `dlq_max_retries`, archived (`archive.py`) and then removed.

Entries not yet due are released at the end of the pass. Every step writes before it removes
(publish, then delete; archive, then delete), so a crash repeats work instead of losing an
entry; repeats are harmless because stores are idempotent on identity and archive rows carry
`dlq_id`. An entry handled once in a pass is not touched again in that pass, so `force` cannot
spin one entry through all its retries at once.

`run(should_stop)` is the worker: a pass, then sleep until the earliest entry falls due (at
most `dlq_retry_s`). A new dead letter is thus first redriven between one and two intervals
after it arrived, and every `dlq_retry_s` after that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec

from tradepulse.config import Settings
from tradepulse.events import DeadLetter
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.validate.dlq.archive import DlqArchive
from tradepulse.validate.dlq.entry import DlqEntry
from tradepulse.validate.dlq.republish import Republisher
from tradepulse.validate.dlq.revalidate import Verdict, revalidate

__all__ = ["DeadLetterQueue", "RedriveReport", "Redriver", "open_queue"]

_CHUNK = 100
_MAX_PER_PASS = 50_000  # bounds one pass (and what it holds leased) on a flooded queue


class DeadLetterQueue(Protocol):
    """What the lifecycle needs from a DLQ backend (SQS, or SQLite on the embedded backend)."""

    @property
    def location(self) -> str: ...

    def send(self, dead: list[DeadLetter]) -> None: ...

    def count(self) -> tuple[int, int]: ...

    def peek(self, limit: int) -> list[DlqEntry]: ...

    def lease(self, limit: int, lease_s: float) -> list[DlqEntry]: ...

    def release(self, entries: Sequence[DlqEntry]) -> None: ...

    def requeue(self, entries: Sequence[DlqEntry]) -> None: ...

    def remove(self, entries: Sequence[DlqEntry], outcome: str) -> None: ...

    def close(self) -> None: ...


def open_queue(settings: Settings) -> DeadLetterQueue:
    """The configured backend's DLQ."""
    if settings.backend == "cluster":
        from tradepulse.validate.dlq.sqs import SqsDeadLetterQueue

        return SqsDeadLetterQueue(settings)
    from tradepulse.validate.dlq.sqlite import SqliteDeadLetterQueue

    return SqliteDeadLetterQueue(settings.data_dir / "hot.sqlite3")


@dataclass
class RedriveReport:
    redriven: int = 0  # entries whose payload now validated and was re-published
    records: int = 0  # records they yielded
    requeued: int = 0  # failed again, back in the queue
    archived: int = 0
    not_due: int = 0
    next_due_ns: int | None = None

    def add(self, other: RedriveReport) -> None:
        self.redriven += other.redriven
        self.records += other.records
        self.requeued += other.requeued
        self.archived += other.archived
        self.not_due += other.not_due
        if other.next_due_ns is not None:
            self.next_due_ns = min(self.next_due_ns or other.next_due_ns, other.next_due_ns)


class Redriver:
    def __init__(
        self,
        queue: DeadLetterQueue,
        archive: DlqArchive,
        republisher: Republisher,
        *,
        retry_s: float,
        max_retries: int,
        max_skew_ns: int,
        lease_s: float = 900.0,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self.queue = queue
        self.archive = archive
        self.republisher = republisher
        self.retry_ns = int(retry_s * NS_PER_S)
        self.max_retries = max_retries
        self.max_skew_ns = max_skew_ns
        self.lease_s = lease_s
        self.clock = clock

    @classmethod
    def for_settings(cls, settings: Settings, queue: DeadLetterQueue | None = None) -> Redriver:
        from tradepulse.validate.dlq.republish import EmbeddedRepublisher, KafkaRepublisher

        republisher: Republisher
        if settings.backend == "cluster":
            republisher = KafkaRepublisher(settings)
        else:
            republisher = EmbeddedRepublisher(settings)
        return cls(
            queue if queue is not None else open_queue(settings),
            DlqArchive.for_settings(settings),
            republisher,
            retry_s=settings.dlq_retry_s,
            max_retries=settings.dlq_max_retries,
            max_skew_ns=int(settings.max_clock_skew_s * NS_PER_S),
        )

    # -- redrive -----------------------------------------------------------------------------

    def run_once(self, *, force: bool = False) -> RedriveReport:
        """One pass over the queue (module docstring)."""
        report = RedriveReport()
        held: list[DlqEntry] = []  # leased but not due: released when the pass ends
        seen: set[str] = set()
        try:
            while len(seen) + len(held) < _MAX_PER_PASS:
                chunk = self.queue.lease(_CHUNK, self.lease_s)
                if not chunk:
                    break
                now = self.clock()
                due: list[DlqEntry] = []
                for e in chunk:
                    if e.dlq_id in seen or not (force or e.due_at(self.retry_ns) <= now):
                        # Only the id matters for the release: keep the payload out of memory.
                        held.append(msgspec.structs.replace(e, raw=""))
                        if e.dlq_id not in seen:
                            report.not_due += 1
                            at = e.due_at(self.retry_ns)
                            report.next_due_ns = min(report.next_due_ns or at, at)
                    else:
                        due.append(e)
                seen.update(e.dlq_id for e in due)
                report.add(self._redrive(due, now))
        finally:
            self.queue.release(held)
        return report

    def _redrive(self, due: list[DlqEntry], now: int) -> RedriveReport:
        report = RedriveReport()
        passed: list[tuple[DlqEntry, Verdict]] = []
        back: list[DlqEntry] = []
        done: list[DlqEntry] = []
        for e in due:
            if e.retries >= self.max_retries:  # e.g. the limit was lowered since
                done.append(e)
                continue
            verdict = revalidate(e, now, self.max_skew_ns)
            if verdict.ok:
                passed.append((e, verdict))
                continue
            again = e.failed_again(verdict.reason or e.reason, now)
            (done if again.retries >= self.max_retries else back).append(again)
        if passed:
            self.republisher.publish([v for _, v in passed])
            self.queue.remove([e for e, _ in passed], "redriven")
            report.redriven = len(passed)
            report.records = sum(v.records for _, v in passed)
        if back:
            self.queue.requeue(back)
            report.requeued = len(back)
        if done:
            self.archive.write(done, now)
            self.queue.remove(done, "archived")
            report.archived = len(done)
        return report

    def run(
        self,
        should_stop: Callable[[], bool],
        on_pass: Callable[[RedriveReport], None] | None = None,
    ) -> None:
        """The redrive worker: passes until `should_stop()` (module docstring)."""
        while not should_stop():
            report = self.run_once()
            if on_pass is not None:
                on_pass(report)
            wait_ns = self.retry_ns
            if report.next_due_ns is not None:
                wait_ns = min(wait_ns, report.next_due_ns - self.clock())
            _sleep_unless(should_stop, max(0.2, wait_ns / NS_PER_S))

    # -- archive by hand ---------------------------------------------------------------------

    def archive_now(self, *, everything: bool = False, reason: str | None = None) -> int:
        """Archive entries at once: those whose reason starts with `reason`, all of them
        (`everything`), or by default those that have used up their retries."""
        leased: list[DlqEntry] = []
        while len(leased) < _MAX_PER_PASS:
            chunk = self.queue.lease(_CHUNK, self.lease_s)
            if not chunk:
                break
            leased.extend(chunk)
        chosen: list[DlqEntry] = []
        keep: list[DlqEntry] = []
        for e in leased:
            if (
                everything
                or (reason is not None and e.reason.startswith(reason))
                or (reason is None and e.retries >= self.max_retries)
            ):
                chosen.append(e)
            else:
                keep.append(e)
        try:
            if chosen:
                self.archive.write(chosen, self.clock())
                self.queue.remove(chosen, "archived")
        finally:
            self.queue.release(keep)
        return len(chosen)

    def close(self) -> None:
        self.republisher.close()
        self.queue.close()


def _sleep_unless(should_stop: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
