"""`tradepulse run --backend cluster` end to end: the simulator in the parent, and producer,
news poller, processor (with its S3 cold sink) and API as child processes on the real stack.
Afterwards DynamoDB — and the cold store on S3 — hold exactly the trades the simulator's
ground truth says it sent, and the trades topic has the configured 6 partitions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pyarrow.dataset as pads
import pytest
from cluster_pipeline import Namespace
from confluent_kafka.admin import AdminClient

from tradepulse.config import Settings
from tradepulse.log import kafka
from tradepulse.store.cold.s3 import cold_root, s3_filesystem
from tradepulse.validate.dlq.sqs import SqsDeadLetterQueue

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

DURATION_S = 25
RATE = 150  # events/s: what moto, Kafka and four processes keep up with on 2 shared cores
BAD_RATE = 0.01  # malformed events, each alone in its frame: one dead letter each
WARMUP_S = 20.0  # calm history before the live start, which the producer pulls from REST


def cold_identities(settings: Settings, table: str) -> tuple[int, int]:
    """(rows, distinct identities) of a cold table: the warm-up overlaps the live feed in
    Kafka, and the cold sink copies Kafka (the query layer deduplicates on identity)."""
    fs = s3_filesystem(settings)
    path = f"{cold_root(settings)}/{table}"
    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    t = dataset.to_table(columns=["ticker", "timestamp", "sequence_number"]).to_pydict()
    keys = set(zip(t["ticker"], t["timestamp"], t["sequence_number"], strict=True))
    return len(t["ticker"]), len(keys)


def test_run_cluster_stores_exactly_what_the_simulator_sent(
    cluster_settings: Settings, unique: Callable[[str], str], tmp_path: Path, port: int
) -> None:
    ns = Namespace.create(unique("run"), tmp_path / "data", news_poll_s=2.0, warmup_s=WARMUP_S)
    env = {k: v for k, v in os.environ.items() if k not in {"POLYGON_API_KEY", "FINNHUB_API_KEY"}}
    cmd = [
        *(sys.executable, "-m", "tradepulse", "run", "--backend", "cluster"),
        *("--duration", str(DURATION_S), "--rate", str(RATE), "--port", str(port)),
        *("--bad-rate", str(BAD_RATE)),
    ]
    log = tmp_path / "run.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env | ns.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # While it runs, the API child answers from DynamoDB with the group's lag in /health.
        health: dict[str, object] = {}
        quote_status = 0
        deadline = time.monotonic() + DURATION_S + 30
        while time.monotonic() < deadline and proc.poll() is None and quote_status != 200:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                if r.status_code == 200:
                    health = r.json()
                    quote_status = httpx.get(
                        f"http://127.0.0.1:{port}/quotes/AAPL", timeout=5
                    ).status_code
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        # /stream carries the committed trades and output rows as they are committed.
        kinds: set[str] = set()
        until = time.monotonic() + 30
        if quote_status == 200:
            with httpx.stream("GET", f"http://127.0.0.1:{port}/stream?tickers=AAPL") as sse:
                for line in sse.iter_lines():
                    if line.startswith("event: "):
                        kinds.add(line.removeprefix("event: "))
                    if {"quote", "features"} <= kinds or time.monotonic() > until:
                        break
        code = proc.wait(420)
        seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        assert code == 0, text[-6000:]
        assert "Traceback" not in text, text[-6000:]
        assert "consumer_lag" in health and quote_status == 200, (health, quote_status)
        assert {"quote", "features"} <= kinds, kinds

        truth = orjson.loads((ns.data_dir / "truth" / "summary.json").read_bytes())
        want_trades = sum(truth["valid_trades"].values())  # history included
        history = sum(truth["history_trades"].values())
        want_quotes = sum(truth["valid_quotes"].values())
        dlq = SqsDeadLetterQueue(ns.settings)
        try:
            waiting, in_flight = dlq.count()
        finally:
            dlq.close()
        dead = waiting + in_flight
        hot = ns.store()
        try:
            trades, quotes = hot.count("trades"), hot.count("quotes")
        finally:
            hot.close()
        s3_trade_rows, s3_trades = cold_identities(ns.settings, "trades")
        _, s3_quotes = cold_identities(ns.settings, "quotes")
        admin = AdminClient(kafka.client_config(ns.settings))
        partitions = len(admin.list_topics(timeout=30).topics[ns.topics.trades].partitions)
        print(
            f"\n{DURATION_S} s at {RATE} ev/s, whole run {seconds:.0f} s: simulator sent "
            f"{want_trades:,} trades ({history:,} of them history, via the warm-up), "
            f"{want_quotes:,} quotes; DynamoDB holds {trades:,} trades, {quotes:,} quotes; "
            f"S3 cold store {s3_trades:,} distinct trades ({s3_trade_rows:,} rows), "
            f"{s3_quotes:,} quotes; {truth['malformed']} malformed sent, {dead} dead letters "
            f"on SQS; {ns.topics.trades} has {partitions} partitions; /health said {health}"
        )
        assert history > 0 and want_trades > history
        assert trades == want_trades, text[-4000:]
        assert quotes == want_quotes
        assert (s3_trades, s3_quotes) == (want_trades, want_quotes)
        assert partitions == 6
        assert truth["malformed"] > 0 and dead == truth["malformed"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        ns.drop()
