"""The embedded dead-letter queue (SQLite), the lifecycle on it, re-validation per source,
the local archive and `tradepulse dlq` on the embedded backend."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from tradepulse.cli import app
from tradepulse.config import Settings, load_settings
from tradepulse.events import DeadLetter
from tradepulse.market_time import NS_PER_MS, NS_PER_S
from tradepulse.store.base import StoreBatch
from tradepulse.store.hot.sqlite import SQLiteHotStore
from tradepulse.validate import decode_frame
from tradepulse.validate.dlq.archive import DlqArchive
from tradepulse.validate.dlq.entry import DlqEntry
from tradepulse.validate.dlq.redrive import Redriver
from tradepulse.validate.dlq.republish import EmbeddedRepublisher
from tradepulse.validate.dlq.revalidate import revalidate
from tradepulse.validate.dlq.sqlite import SqliteDeadLetterQueue

T0 = 1_736_866_800 * NS_PER_S  # 2025-01-14 10:00 ET
MIN = 60 * NS_PER_S
DAY = 24 * 3600 * NS_PER_S


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def ws_rejects(recv_ns: int, skew_ns: int = DAY) -> list[DeadLetter]:
    """The WebSocket decoder's verdict on one frame: a negative price, and a trade two hours
    ahead of its receive time (rejected under a skew limit below that)."""
    ahead = (recv_ns + 2 * 3600 * NS_PER_S) // NS_PER_MS
    frame = (
        b'[{"ev":"T","sym":"AAPL","p":-1.0,"s":5,"t":%d,"q":1},'
        b'{"ev":"T","sym":"MSFT","p":410.5,"s":7,"t":%d,"q":2}]' % (recv_ns // NS_PER_MS, ahead)
    )
    return decode_frame(frame, recv_ns, max_skew_ns=skew_ns).dead_letters


@pytest.fixture
def settings(tmp_path: Path, clean_env: None) -> Settings:
    return load_settings(data_dir=tmp_path / "data", dlq_retry_s=900, dlq_max_retries=5)


@pytest.fixture
def hot(settings: Settings) -> Iterator[SQLiteHotStore]:
    store = SQLiteHotStore(settings.data_dir / "hot.sqlite3", [], retention_ns=48 * 3600 * NS_PER_S)
    yield store
    store.close()


@pytest.fixture
def queue(settings: Settings, hot: SQLiteHotStore) -> Iterator[SqliteDeadLetterQueue]:
    q = SqliteDeadLetterQueue(settings.data_dir / "hot.sqlite3")
    yield q
    q.close()


def redriver(settings: Settings, queue: SqliteDeadLetterQueue, clock: Clock) -> Redriver:
    return Redriver(
        queue,
        DlqArchive.for_settings(settings),
        EmbeddedRepublisher(settings),
        retry_s=settings.dlq_retry_s,
        max_retries=settings.dlq_max_retries,
        max_skew_ns=int(settings.max_clock_skew_s * NS_PER_S),
        clock=clock,
    )


def test_queue_is_the_dlq_table_plus_its_state(
    queue: SqliteDeadLetterQueue, hot: SQLiteHotStore
) -> None:
    piped, sent = ws_rejects(T0, skew_ns=MIN)
    hot.write(StoreBatch(dead_letters=[piped]))  # how the pipeline stores a dead letter
    queue.send([sent])
    entries = queue.peek(10)
    assert [(e.dlq_id, e.reason, e.retries, e.last_attempt) for e in entries] == [
        ("1", "non_positive_price", 0, T0),
        ("2", "timestamp_skew", 0, T0),
    ]
    assert queue.count() == (2, 0)

    leased = queue.lease(10, lease_s=60)
    assert len(leased) == 2 and queue.lease(10, lease_s=60) == []
    assert queue.count() == (0, 2)
    queue.release(leased[1:])
    assert [e.dlq_id for e in queue.lease(10, lease_s=60)] == ["2"]

    queue.requeue([leased[0].failed_again("still_bad", T0 + 15 * MIN)])
    queue.remove([leased[1]], "redriven")
    [left] = queue.peek(10)
    assert (left.reason, left.retries, left.attempts) == ("still_bad", 1, 2)
    assert queue.states() == {"queued": 1, "redriven": 1}
    # The history the cold store copies is never rewritten.
    assert [(d.reason, d.attempts) for d in reversed(hot.dead_letters())] == [
        ("non_positive_price", 1),
        ("timestamp_skew", 1),
    ]


def test_fails_every_interval_then_lands_in_the_archive(
    settings: Settings, queue: SqliteDeadLetterQueue
) -> None:
    [bad] = ws_rejects(T0)  # the skewed trade is within the default day
    queue.send([bad])
    clock = Clock(T0 + 5 * MIN)
    r = redriver(settings, queue, clock)
    assert r.run_once().not_due == 1  # 15 minutes not yet up
    for retry in range(1, 5):
        clock.now = T0 + retry * 15 * MIN
        report = r.run_once()
        assert (report.requeued, report.archived) == (1, 0)
        assert r.run_once(force=False).not_due == 1  # once per interval, not per pass
        [entry] = queue.peek(1)
        assert (entry.retries, entry.attempts, entry.last_attempt) == (retry, retry + 1, clock.now)
    clock.now = T0 + 75 * MIN
    assert r.run_once().archived == 1
    assert queue.peek(10) == [] and queue.states() == {"archived": 1}

    [row] = DlqArchive.for_settings(settings).read().to_pylist()
    assert (row["reason"], row["retries"], row["attempts"]) == ("non_positive_price", 5, 6)
    assert (row["raw"], row["source"], row["first_seen"]) == (bad.raw, "polygon-ws", T0)
    assert (row["archived_at"], str(row["date"])) == (T0 + 75 * MIN, "2025-01-14")
    root = settings.data_dir / "cold" / "dlq-archive"
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    assert len(files) == 1 and re.fullmatch(r"date=2025-01-14/part-[0-9a-f]{20}\.parquet", files[0])


def test_a_payload_that_now_validates_goes_through_the_pipeline_into_the_store(
    settings: Settings, queue: SqliteDeadLetterQueue
) -> None:
    # Rejected under a 1-minute skew limit; the operator then raised it to a day (settings).
    bad, skewed = ws_rejects(T0, skew_ns=MIN)
    queue.send([bad, skewed])
    report = redriver(settings, queue, Clock(T0 + 16 * MIN)).run_once()
    assert (report.redriven, report.records, report.requeued) == (1, 1, 1)
    assert queue.states() == {"queued": 1, "redriven": 1}

    store = SQLiteHotStore(settings.data_dir / "hot.sqlite3", [], retention_ns=DAY)
    try:
        latest = store.latest_trade("MSFT")
        assert latest is not None
        assert (latest["price"], latest["size"], latest["ingest_ts"]) == (410.5, 7, T0)
        assert store.count("trades") == 1
    finally:
        store.close()


def test_now_retries_each_entry_once_per_pass(
    settings: Settings, queue: SqliteDeadLetterQueue
) -> None:
    [bad] = ws_rejects(T0)  # the skewed trade is within the default day
    queue.send([bad])
    report = redriver(settings, queue, Clock(T0)).run_once(force=True)
    assert (report.requeued, report.archived) == (1, 0)
    assert [e.retries for e in queue.peek(1)] == [1]


def test_lowered_retry_limit_archives_on_demand(
    settings: Settings, queue: SqliteDeadLetterQueue
) -> None:
    [bad] = ws_rejects(T0)  # the skewed trade is within the default day
    queue.send([bad, bad])
    r = redriver(settings, queue, Clock(T0))
    r.run_once(force=True)
    assert r.archive_now() == 0  # 1 of 5 retries used
    r.max_retries = 1
    assert r.archive_now() == 2
    assert r.archive_now(everything=True) == 0


def entry(source: str, raw: object, reason: str = "r", ticker: str | None = None) -> DlqEntry:
    text = raw if isinstance(raw, str) else orjson.dumps(raw).decode()
    return DlqEntry("1", reason, text, source, T0, 1, ticker)


def test_revalidation_uses_each_sources_own_rules() -> None:
    rest_row = {"price": 10.5, "size": 3, "sip_timestamp": T0, "sequence_number": 9, "id": "x"}
    ok = revalidate(entry("polygon-rest", rest_row, ticker="AAPL"), T0, DAY)
    assert ok.ok and [(t.ticker, t.price, t.ingest_ts) for t in ok.trades] == [("AAPL", 10.5, T0)]
    bad = revalidate(entry("polygon-rest", {**rest_row, "price": 0}, ticker="AAPL"), T0, DAY)
    assert bad.reason == "non_positive_price"
    assert revalidate(entry("polygon-rest", "{nope"), T0, DAY).reason == "unparseable_json"

    trade_row = {
        "ticker": "MSFT",
        "price": "12.5",
        "size": "4",
        "sip_timestamp": str(T0),
        "sequence_number": "3",
        "conditions": "12,37",
    }
    got = revalidate(entry("replay:trades.csv.gz", trade_row), T0, DAY)
    assert [(t.ticker, t.conditions) for t in got.trades] == [("MSFT", (12, 37))]
    bad_row = revalidate(entry("replay:x", {**trade_row, "size": "-1"}), T0, DAY)
    assert bad_row.reason == "negative_size"
    quote_row = {
        "ticker": "MSFT",
        "bid_price": "1.0",
        "ask_price": "1.1",
        "sip_timestamp": str(T0),
        "sequence_number": "4",
    }
    assert len(revalidate(entry("replay:q", quote_row), T0, DAY).quotes) == 1

    article = {"id": 7, "datetime": T0 // NS_PER_S, "headline": "Up", "summary": "", "url": ""}
    news = revalidate(entry("finnhub", article, ticker="AAPL"), T0, DAY)
    assert [(n.article_id, n.ticker) for n in news.news] == [("7", "AAPL")]
    no_headline = revalidate(entry("finnhub", {**article, "headline": ""}, ticker="AAPL"), T0, DAY)
    assert no_headline.reason == "bad_news_item: missing headline"
    response = entry("finnhub", '{"error": 1}', reason="bad_news_response: x", ticker="AAPL")
    assert (revalidate(response, T0, DAY).reason or "").startswith("bad_news_response")

    unknown = revalidate(entry("somewhere", "{}", reason="odd"), T0, DAY)
    assert unknown.reason == "odd"  # kept failing with its reason, so it ends archived


def test_archive_names_follow_content_and_never_leave_temp_files(tmp_path: Path) -> None:
    archive = DlqArchive(pafs.LocalFileSystem(), str(tmp_path))
    entries = [entry("polygon-ws", "{}"), DlqEntry("2", "r", "{}", "x", T0 + DAY, 1)]
    first = archive.write(entries, T0)
    assert archive.write(list(reversed(entries)), T0) == sorted(first)
    assert [Path(p).parent.name for p in sorted(first)] == ["date=2025-01-14", "date=2025-01-15"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        Path(p).name for p in first
    )
    assert len(archive.read()) == 2


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["dlq", *args])
    return result.exit_code, result.output


def test_cli_lists_and_archives_on_the_embedded_backend(
    settings: Settings, queue: SqliteDeadLetterQueue
) -> None:
    queue.send(ws_rejects(T0, skew_ns=MIN))
    data = str(settings.data_dir)
    code, out = cli("list", "--data-dir", data)
    assert code == 0
    assert "non_positive_price" in out and "timestamp_skew" in out
    assert "2 waiting and 0 being redriven" in out
    assert "archived after 5 failed redrives" in out
    code, out = cli("list", "--data-dir", data, "--json")
    assert code == 0 and [e["retries"] for e in orjson.loads(out)["entries"]] == [0, 0]
    code, out = cli("archive", "--data-dir", data, "--reason", "timestamp")
    assert (code, out.strip()) == (
        0,
        f"archived 1 dead letter to {(settings.data_dir / 'cold' / 'dlq-archive').resolve()}",
    )
    assert queue.states() == {"queued": 1, "archived": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--backend", "mongo"], "--backend must be embedded or cluster"),
        (["list", "--limit", "0"], "--limit"),
        (["archive", "--all", "--reason", "x"], "exclude each other"),
        (["archive", "--reason", " "], "must not be empty"),
        (["redrive", "--data-dir", "nowhere"], "no data in nowhere"),
    ],
)
def test_cli_bad_input_exits_2(
    clean_env: None, args: list[str], message: str, tmp_path: Path
) -> None:
    code, out = cli(*args)
    assert code == 2
    assert message in out
