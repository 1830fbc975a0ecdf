"""One dead letter while it is in the DLQ: the `DeadLetter` plus its redrive bookkeeping."""

from __future__ import annotations

import uuid

import msgspec

from tradepulse.events import DeadLetter

__all__ = ["DlqEntry", "decode_entry", "encode_entry", "new_dlq_id"]


class DlqEntry(msgspec.Struct, frozen=True):
    """`attempts` counts every try (in-process ones and each DLQ redrive); `retries` counts
    the DLQ redrives that failed, which is what decides archiving. `reason` is the latest
    verdict. `dlq_id` stays the same from the first send to the archive."""

    dlq_id: str
    reason: str
    raw: str
    source: str
    first_seen: int  # ns
    attempts: int
    ticker: str | None = None
    retries: int = 0
    last_attempt: int = 0  # ns: when it entered the DLQ or was last redriven

    @classmethod
    def from_dead(cls, dead: DeadLetter, dlq_id: str, now_ns: int) -> DlqEntry:
        return cls(
            dlq_id=dlq_id,
            reason=dead.reason,
            raw=dead.raw,
            source=dead.source,
            first_seen=dead.first_seen,
            attempts=dead.attempts,
            ticker=dead.ticker,
            last_attempt=now_ns,
        )

    def due_at(self, retry_ns: int) -> int:
        return self.last_attempt + retry_ns

    def failed_again(self, reason: str, now_ns: int) -> DlqEntry:
        return msgspec.structs.replace(
            self,
            reason=reason,
            attempts=self.attempts + 1,
            retries=self.retries + 1,
            last_attempt=now_ns,
        )

    def dead_letter(self) -> DeadLetter:
        return DeadLetter(
            self.reason, self.raw, self.source, self.first_seen, self.attempts, self.ticker
        )


def new_dlq_id() -> str:
    return uuid.uuid4().hex


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(DlqEntry)


def encode_entry(entry: DlqEntry) -> bytes:
    return _ENC.encode(entry)


def decode_entry(body: bytes | str) -> DlqEntry:
    return _DEC.decode(body)
