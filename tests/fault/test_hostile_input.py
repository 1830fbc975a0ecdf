"""Scenario 6: hostile input. What tests/unit/test_validate.py already covers (each rule with
its reason, arbitrary JSON values and bytes, 1e400, a huge frame with a size limit) is not
repeated; this adds adversarial values in every field of otherwise valid events, deep
nesting, and the same input through a whole run from a hostile WebSocket peer — including a
frame over the size limit and a flood that must not exhaust memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import inject
import psutil
import pytest
from fault_harness import Tally
from hostile import HOSTILE_VALUES, HostilePeer, dumps, nested, trade
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve

from tradepulse.config import TICKER_RE, load_settings
from tradepulse.market_time import NS_PER_S
from tradepulse.runner import Pipeline, run_embedded
from tradepulse.validate import REASONS, decode_frame

FIELDS = ("ev", "sym", "p", "s", "t", "q", "x", "c", "i", "z")
SKEW_NS = 3600 * NS_PER_S


def _check(raw: str | bytes, good: list[int], n_elements: int) -> None:
    """No exception; the sentinel trades intact; every element one outcome; every dead letter
    a known reason; every accepted trade valid by the rules."""
    now = time.time_ns()
    d = decode_frame(raw, now, now_ns=now, max_skew_ns=SKEW_NS)
    seqs = [t.sequence_number for t in d.trades]
    for q in good:
        assert q in seqs, (q, seqs)
    outcomes = len(d.trades) + len(d.quotes) + len(d.dead_letters) + len(d.statuses)
    assert outcomes == n_elements, (outcomes, n_elements, [x.reason for x in d.dead_letters])
    for dl in d.dead_letters:
        assert dl.reason.split(":", 1)[0] in REASONS, dl.reason
        assert dl.raw and len(dl.raw) < 70 * 1024
    for t in d.trades:
        assert TICKER_RE.match(t.ticker) and t.price > 0 and t.size >= 0
        assert abs(t.timestamp - now) <= SKEW_NS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(FIELDS), st.sampled_from(HOSTILE_VALUES) | st.text()),
        min_size=1,
        max_size=5,
    )
)
def test_hostile_field_values_never_crash_or_take_neighbours(
    mutations: list[tuple[str, Any]],
) -> None:
    bad = []
    for i, (name, value) in enumerate(mutations):
        bad.append(trade(1000 + i, **{name: value}))
    _check(dumps([trade(1), *bad, trade(2)]), [1, 2], len(bad) + 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=5000), st.sampled_from(FIELDS))
def test_deep_nesting_in_one_element_never_crashes(depth: int, name: str) -> None:
    bad = json.dumps(trade(9, **{name: 0}))[:-1] + f', "{name}": {nested(depth)}' + "}"
    frame = "[" + json.dumps(trade(1)) + "," + bad + "," + json.dumps(trade(2)) + "]"
    now = time.time_ns()
    d = decode_frame(frame, now, now_ns=now, max_skew_ns=SKEW_NS)
    assert all(dl.reason.split(":", 1)[0] in REASONS for dl in d.dead_letters)
    assert d.dead_letters, "a nested value where a scalar belongs was accepted"


def test_deep_nesting_as_the_frame_is_one_dead_letter() -> None:
    for depth in (10, 999, 1000, 5000, 100_000):
        d = decode_frame(nested(depth), 0, now_ns=0)
        assert [x.reason for x in d.dead_letters] in ([], ["not_an_event"], ["unparseable_json"])


# --- through a whole run, from a hostile peer ------------------------------------------------

TICKERS = ["AAPL", "MSFT"]


BAD_ELEMENTS: list[Any] = [
    trade(901, p="12.5"),
    trade(902, p=float("nan")),
    trade(903, s=-5),
    trade(904, sym="ÅAPL"),
    trade(905, p=float("inf")),
    trade(906, q=2**70),
    trade(907, sym="ＡＡＰＬ"),
    {"ev": "T"},
    "string",
    [1, [2, [3]]],
]


def _script() -> list[str | bytes]:
    return [
        dumps([trade(1), trade(2), trade(3, sym="MSFT")]),
        "not json at all",
        b"\xff\xfe\x00\x01 binary garbage",
        dumps([trade(4), *BAD_ELEMENTS, trade(5, sym="MSFT")]),
        nested(100_000),  # too deep for any parser: one dead letter for the frame
        dumps([{"ev": "status", "status": "info", "message": "hello"}, trade(6)]),
        "[" + ",".join([json.dumps(trade(7))] * 3) + "]",  # the same event three times
        '["' + "x" * (10 * 1024 * 1024) + '"]',  # 10 MiB, over ws_max_frame_bytes (4 MiB)
        dumps([trade(8), trade(9, sym="MSFT")]),
    ]


GOOD = {("AAPL", q) for q in (1, 2, 4, 6, 7, 8)} | {("MSFT", q) for q in (3, 5, 9)}
# not json, binary garbage, each bad element, the too-deep frame, the oversized frame
BAD = 1 + 1 + len(BAD_ELEMENTS) + 1 + 1


@pytest.mark.usefixtures("clean_env")
async def test_hostile_peer_through_a_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    peer = HostilePeer(_script())
    async with serve(peer.handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings = load_settings(
            data_dir=data,
            tickers=",".join(TICKERS),
            source="polygon",
            polygon_api_key="hostile",
            polygon_ws_url=f"ws://127.0.0.1:{port}",
            # No REST history here: any fill of the outage fails fast, locally.
            polygon_rest_url=f"http://127.0.0.1:{port}",
            reconnect_base_s=0.1,
            reconnect_max_s=0.5,
            warmup_s=0,
        )

        async def stop_when_sent() -> None:
            await asyncio.wait_for(peer.done.wait(), 60)

        run = asyncio.create_task(
            run_embedded(settings, duration_s=20, serve_api=False, out=lambda _l: None)
        )
        await stop_when_sent()
        await asyncio.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)  # the run's own handler: an orderly stop
        summary = await asyncio.wait_for(run, 60)

    with contextlib.closing(sqlite3.connect(data / "hot.sqlite3")) as conn:
        stored = set(conn.execute("select ticker, sequence_number from trades").fetchall())
        dead = conn.execute("select reason, length(raw) from dlq").fetchall()
    reasons = Counter(r.split(":", 1)[0] for r, _ in dead)
    Tally("hostile-peer", "good trades", len(GOOD), len(stored & GOOD), 0).report()
    print(f"[fault] hostile-peer: {len(dead)} dead letters {dict(reasons)}, "
          f"{peer.connections} connections")  # fmt: skip
    assert stored == GOOD
    assert summary.duplicates == 2  # trade 7's repeats: counted, not stored
    assert all(n and n < 70 * 1024 for _, n in dead)
    assert set(reasons) <= set(REASONS)
    assert reasons["frame_too_large"] == 1, "the oversized frame left no dead letter"
    assert len(dead) == BAD, dead


FLOOD_FRAMES = 400
FLOOD_FRAME_BYTES = 1024 * 1024
QUEUE_BYTES = 8 * 1024 * 1024
# Stated ceiling on RSS growth during the 400 MiB flood: below the flood's volume, so no
# buffer on the path may hold it. RSS also carries native memory that does not scale with
# the log (SQLite's page cache, Arrow's pool at the shutdown flush, allocator high-water of
# transient copies), so it is a coarse bound; the precise one is the log's own content,
# checked separately — a log bounded only in frames (4096) could hold 16 GiB of 4 MiB frames.
FLOOD_RSS_BOUND = 320 * 1024 * 1024


@pytest.mark.usefixtures("clean_env")
async def test_flooding_peer_cannot_exhaust_memory(tmp_path: Path) -> None:
    """A peer sends 1 MiB frames (under the size limit) as fast as the socket takes them
    while the store is slow (`inject.slow_commits`), so the processor is the bottleneck and
    the log fills: memory must stay bounded by the log's byte budget, and every frame must
    still be accounted for (each one a dead letter)."""
    data = tmp_path / "data"
    junk = '["' + "x" * (FLOOD_FRAME_BYTES - 4) + '"]'
    peer = HostilePeer([dumps([trade(1)])], flood=[junk] * FLOOD_FRAMES)
    proc = psutil.Process()
    samples: list[int] = []
    held: list[int] = []  # frames in the log
    base: list[int] = []
    pipelines: list[Pipeline] = []

    def on_start(pipeline: Pipeline) -> None:
        base.append(proc.memory_info().rss)
        pipelines.append(pipeline)

    async def sample() -> None:
        while True:
            samples.append(proc.memory_info().rss)
            if pipelines:
                held.append(pipelines[0].log.depth())
            await asyncio.sleep(0.02)

    inject.slow_commits(0.12)
    sampler = asyncio.create_task(sample())
    try:
        async with serve(peer.handler, "127.0.0.1", 0, max_size=None, compression=None) as srv:
            port = next(iter(srv.sockets)).getsockname()[1]
            settings = load_settings(
                data_dir=data,
                tickers="AAPL",
                source="polygon",
                polygon_api_key="flood",
                polygon_ws_url=f"ws://127.0.0.1:{port}",
                polygon_rest_url=f"http://127.0.0.1:{port}",
                ws_queue_bytes=QUEUE_BYTES,
                backpressure_pause_ms=100,
                warmup_s=0,
            )
            run = asyncio.create_task(
                run_embedded(
                    settings, duration_s=120, serve_api=False, out=lambda _l: None,
                    on_start=on_start,
                )
            )  # fmt: skip

            def dead() -> int:
                try:
                    with contextlib.closing(sqlite3.connect(data / "hot.sqlite3")) as conn:
                        return int(conn.execute("select count(*) from dlq").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0

            deadline = time.monotonic() + 90
            while dead() < FLOOD_FRAMES and time.monotonic() < deadline:
                assert not run.done(), run.exception()
                await asyncio.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(run, 60)
    finally:
        inject.restore()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    growth = max(samples) - base[0]
    print(f"[fault] flood: {FLOOD_FRAMES} x {FLOOD_FRAME_BYTES // 1024} KiB frames, at most "
          f"{max(held)} in the log, RSS +{growth / 2**20:.0f} MiB (bound "
          f"{FLOOD_RSS_BOUND / 2**20:.0f} MiB), {dead()} dead letters")  # fmt: skip
    assert dead() == FLOOD_FRAMES
    # The log never holds more than its byte budget (plus the one frame that may exceed it).
    assert max(held) <= QUEUE_BYTES // FLOOD_FRAME_BYTES + 1
    assert growth < FLOOD_RSS_BOUND
