"""`tradepulse dlq list|redrive|archive`: the dead-letter queue of either backend.

Same exit codes as the rest of the CLI: 0 success, 1 the queue or a store failed, 2 bad input.
"""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tradepulse.config import Settings
    from tradepulse.validate.dlq.redrive import DeadLetterQueue, Redriver, RedriveReport

dlq_app = typer.Typer(
    help="Dead letters: list them, redrive them now or as a worker, archive them.",
    no_args_is_help=True,
)

Backend = Annotated[
    str | None, typer.Option("--backend", help="embedded|cluster (TRADEPULSE_BACKEND).")
]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (TRADEPULSE_DATA_DIR).")
]
_RAW_CHARS = 60


def _settings(backend: str | None, data_dir: Path | None) -> Settings:
    # Imported here: cli.py imports this module while it is still being defined.
    from tradepulse.cli import fail, settings_or_exit

    if backend is not None and backend not in {"embedded", "cluster"}:
        raise fail(f"--backend must be embedded or cluster (got {backend!r})")
    settings = settings_or_exit(backend=backend, data_dir=data_dir)
    if settings.backend == "embedded" and not (settings.data_dir / "hot.sqlite3").exists():
        raise fail(f"no data in {settings.data_dir} (run `tradepulse run --data-dir ...` first)")
    return settings


def _failure(exc: Exception) -> typer.Exit:
    from tradepulse.cli import fail

    return fail(f"dead-letter queue: {type(exc).__name__}: {exc}", code=1)


def _runtime_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError
    from confluent_kafka import KafkaException

    from tradepulse.validate.dlq.sqs import DlqError

    return (BotoCoreError, ClientError, KafkaException, DlqError, OSError, RuntimeError)


def _queue(settings: Settings) -> DeadLetterQueue:
    from tradepulse.cli import fail
    from tradepulse.validate.dlq.redrive import open_queue

    try:
        return open_queue(settings)
    except ValueError as exc:  # e.g. a namespace + queue name over SQS's 80 characters
        raise fail(str(exc)) from None
    except _runtime_errors() as exc:
        raise _failure(exc) from None


def _redriver(settings: Settings) -> Redriver:
    from tradepulse.validate.dlq.redrive import Redriver

    queue = _queue(settings)
    try:
        return Redriver.for_settings(settings, queue)
    except _runtime_errors() as exc:
        queue.close()
        raise _failure(exc) from None


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


@dlq_app.command("list")
def list_entries(
    backend: Backend = None,
    data_dir: DataDir = None,
    limit: Annotated[int, typer.Option(help="Show at most N entries.", min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Entries as JSON.")] = False,
) -> None:
    """Show what is waiting in the dead-letter queue (oldest first on the embedded backend)."""
    import orjson
    import pyarrow as pa

    from tradepulse.market_time import NS_PER_S, now_ns
    from tradepulse.store.query import QueryResult, format_result
    from tradepulse.validate.dlq.archive import DlqArchive

    settings = _settings(backend, data_dir)
    queue = _queue(settings)
    try:
        entries = queue.peek(limit)
        waiting, in_flight = queue.count()
    except _runtime_errors() as exc:
        raise _failure(exc) from None
    finally:
        queue.close()
    retry_ns = int(settings.dlq_retry_s * NS_PER_S)
    if as_json:
        doc = {
            "queue": queue.location,
            "waiting": waiting,
            "in_flight": in_flight,
            "entries": [
                {
                    **{f: getattr(e, f) for f in e.__struct_fields__},
                    "next_redrive": e.due_at(retry_ns),
                }
                for e in entries
            ],
        }
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    now = now_ns()
    rows = {
        "id": [e.dlq_id for e in entries],
        "first_seen_utc": [_time(e.first_seen) for e in entries],
        "source": [e.source for e in entries],
        "reason": [e.reason for e in entries],
        "attempts": [e.attempts for e in entries],
        "retries": [e.retries for e in entries],
        "next_redrive_utc": [
            "due" if e.due_at(retry_ns) <= now else _time(e.due_at(retry_ns)) for e in entries
        ],
        "raw": [e.raw if len(e.raw) <= _RAW_CHARS else e.raw[:_RAW_CHARS] + "…" for e in entries],
    }
    if entries:
        typer.echo(str(format_result(QueryResult(pa.table(rows)), "table")).rstrip("\n"))
    shown = f"showing {len(entries)}; " if len(entries) < waiting else ""
    archive_at = DlqArchive.for_settings(settings).location
    typer.echo(
        f"{waiting:,} waiting and {in_flight:,} being redriven in {queue.location} ({shown}"
        f"redriven every {_duration(settings.dlq_retry_s)}, archived after "
        f"{settings.dlq_max_retries} failed redrives to {archive_at})"
    )


def _report_line(r: RedriveReport) -> str:
    return (
        f"redriven {r.redriven:,} ({r.records:,} records re-published), back in the queue "
        f"{r.requeued:,}, archived {r.archived:,}, not due yet {r.not_due:,}"
    )


@dlq_app.command("redrive")
def redrive(
    backend: Backend = None,
    data_dir: DataDir = None,
    now: Annotated[
        bool, typer.Option("--now", help="Retry every entry now, not only those due.")
    ] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Keep running as the redrive worker until Ctrl-C/SIGTERM."),
    ] = False,
) -> None:
    """Re-validate dead letters: valid ones are re-published, the rest go back or to the archive."""
    settings = _settings(backend, data_dir)
    redriver = _redriver(settings)
    try:
        if not watch:
            typer.echo(_report_line(redriver.run_once(force=now)))
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        if now:
            typer.echo(_report_line(redriver.run_once(force=True)))
        typer.echo(f"redrive worker on {redriver.queue.location}; Ctrl-C stops it")
        redriver.run(stop.is_set, on_pass=lambda r: typer.echo(_report_line(r)))
    except _runtime_errors() as exc:
        raise _failure(exc) from None
    finally:
        redriver.close()


@dlq_app.command("archive")
def archive(
    backend: Backend = None,
    data_dir: DataDir = None,
    everything: Annotated[bool, typer.Option("--all", help="Archive every entry.")] = False,
    reason: Annotated[
        str | None, typer.Option(help="Archive the entries whose reason starts with this.")
    ] = None,
) -> None:
    """Move dead letters to the cold store's dlq-archive/ now (default: those whose redrives
    are used up, e.g. after lowering TRADEPULSE_DLQ_MAX_RETRIES)."""
    from tradepulse.cli import fail

    if everything and reason is not None:
        raise fail("--all and --reason exclude each other")
    if reason is not None and not reason.strip():
        raise fail("--reason must not be empty")
    settings = _settings(backend, data_dir)
    redriver = _redriver(settings)
    try:
        n = redriver.archive_now(everything=everything, reason=reason)
    except _runtime_errors() as exc:
        raise _failure(exc) from None
    finally:
        redriver.close()
    typer.echo(f"archived {n:,} dead letter{'s' if n != 1 else ''} to {redriver.archive.location}")
