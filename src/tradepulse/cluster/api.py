"""`tradepulse api`: the FastAPI app of `api/app.py` over the DynamoDB hot store.

Two background threads give it what the embedded runner hands it in-process:

- health: every few seconds the processor group's lag (`cluster/lag.py`) and the latency of a
  small DynamoDB read feed the `HealthMonitor` (/health's consumer_lag, dynamo_latency_p99);
  committed progress counts as written batches, so a stalled processor shows as unhealthy.
- live: a consumer of the committed trades and output topics (read_committed, its own group,
  from the end) publishes them to /stream, as the embedded writer does per batch.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from tradepulse.api.stream import Broadcaster
from tradepulse.config import Settings
from tradepulse.ops.health import HealthMonitor

HEALTH_INTERVAL_S = 5.0


def run_api(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's own handling)."""
    import uvicorn

    from tradepulse.api.app import create_app
    from tradepulse.cluster.names import table_prefix
    from tradepulse.cluster.processor import make_processor_factory
    from tradepulse.store.hot.dynamodb import DynamoHotStore

    tables = make_processor_factory(settings)().tables
    hot = DynamoHotStore(settings, tables, table_prefix=table_prefix(settings))
    health = HealthMonitor()
    broadcaster = Broadcaster()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_health_loop, args=(settings, hot, health, stop), daemon=True),
        threading.Thread(target=_live_loop, args=(settings, broadcaster, stop), daemon=True),
    ]
    for t in threads:
        t.start()
    app = create_app(settings, hot, health, broadcaster)
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        hot.close()


def _health_loop(
    settings: Settings, hot: Any, health: HealthMonitor, stop: threading.Event
) -> None:
    from tradepulse.cluster.lag import GroupLag

    lag = GroupLag(settings)
    last_committed: int | None = None
    try:
        while not stop.is_set():
            measured = lag.try_measure()
            began = time.perf_counter()
            try:
                hot.latest_quote(settings.tickers[0])  # one GetItem: the store's latency
                read_s: float | None = time.perf_counter() - began
            except Exception:
                read_s = None
            if measured is not None:
                progressed = last_committed is None or measured.committed > last_committed
                if progressed and read_s is not None:
                    done = 0 if last_committed is None else measured.committed - last_committed
                    health.record_batch(done, read_s, measured.total)
                else:
                    health.set_lag(measured.total)
                last_committed = measured.committed
            stop.wait(HEALTH_INTERVAL_S)
    finally:
        lag.close()


def _live_loop(settings: Settings, broadcaster: Broadcaster, stop: threading.Event) -> None:
    from confluent_kafka import Consumer

    from tradepulse.api import tables
    from tradepulse.api.publish import publish_batch
    from tradepulse.log import kafka
    from tradepulse.store.base import StoreBatch

    topics = kafka.Topics.of(settings)
    # Output topic → the table name publish_batch reads (features: the newest row per ticker).
    readers = {
        topics.outputs["features"]: tables.FEATURES,
        topics.outputs["anomalies"]: tables.ANOMALIES,
        topics.outputs["market_sentiment"]: tables.SENTIMENT,
    }
    consumer = Consumer(
        {
            **kafka.client_config(settings),
            "group.id": settings.namespaced(f"tradepulse-api-{uuid.uuid4().hex[:8]}"),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        }
    )
    consumer.subscribe([topics.trades, *readers])
    try:
        while not stop.is_set():
            msgs = consumer.consume(500, 0.5)
            if not broadcaster.subscribers:
                continue  # keep up with the log, but decode nothing nobody watches
            trades: list[Any] = []
            derived: dict[str, list[Any]] = {}
            for m in msgs:
                topic = m.topic()
                if m.error() is not None or topic is None:
                    continue
                if topic == topics.trades:
                    trades.extend(kafka.decode(kafka.TRADES, m.value()))
                elif topic in readers:
                    derived.setdefault(readers[topic], []).extend(kafka.decode(topic, m.value()))
            if trades or derived:
                publish_batch(broadcaster, StoreBatch(trades=trades, derived=derived))
    finally:
        consumer.close()
