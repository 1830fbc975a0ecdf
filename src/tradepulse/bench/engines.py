"""The cluster's engines alone, on the recorded input: what each can take without the rest.

If the cluster's committed rate sits near one of these, that engine caps it. Each measurement
is bounded in count and time and writes inside the bench's cluster namespace (dropped with it):

* Kafka: the recorded frames decoded and published as the producer publishes them (one
  msgpack message per ticker per frame, idempotent, acks=all), acknowledged; then read back
  from the start and decoded as the processor decodes them.
* DynamoDB: raw `BatchWriteItem` of trade items (25 per request, as many requests in flight as
  the store's pool), then the hot store's own `write` of the recorded trades and quotes (the
  processor's store path without the derived rows).
* S3: the cold sink's Parquet objects (Snappy, one per ticker per flush) of recorded trades,
  then small PUTs.

The bench runs them before its live run, so the engines hold none of the live run's data, and
each removes its topics or tables when done.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from tradepulse.bench.feed import Recording
from tradepulse.config import Settings
from tradepulse.events import Quote, Trade
from tradepulse.log import kafka
from tradepulse.validate import Decoded, decode_frame

DYNAMO_WORKERS = 8  # DynamoHotStore's default pool: the same concurrency as the processor's
STORE_BATCH_EVENTS = 1000  # a processor micro-batch when it is behind
SMALL_BATCH_EVENTS = 25  # one when it keeps up at a few hundred events/s


def decoded_frames(rec: Recording, max_events: int) -> list[Decoded]:
    out: list[Decoded] = []
    n = 0
    now = time.time_ns()
    for frame in rec.frames:
        d = decode_frame(frame, now, source="bench", now_ns=now)
        out.append(d)
        n += len(d.trades) + len(d.quotes)
        if n >= max_events:
            break
    return out


def _rate(n: float, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else 0.0


# --- Kafka ------------------------------------------------------------------------------------


def kafka_alone(settings: Settings, frames: Sequence[Decoded], *, max_s: float) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as TP
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topics = kafka.Topics(
        trades=settings.namespaced("bench-engine.trades"),
        quotes=settings.namespaced("bench-engine.quotes"),
        news=settings.namespaced("bench-engine.news"),
        outputs={},
    )
    admin = AdminClient(kafka.client_config(settings))
    parts = settings.kafka_trades_partitions
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=parts, replication_factor=1) for t in topics.inputs[:2]],
        operation_timeout=30,
    )
    for fut in futures.values():
        fut.result(30)
    from tradepulse.cluster.producer import publish_decoded

    producer = kafka.EventProducer(settings)
    events = 0
    t0 = time.perf_counter()
    deadline = t0 + max_s
    for d in frames:
        if time.perf_counter() > deadline:
            break
        n_t, n_q = publish_decoded(producer, topics, d)
        events += n_t + n_q
    left = producer.flush(60)
    produce_s = time.perf_counter() - t0
    messages = producer.stats.delivered
    if left or producer.stats.failed:
        raise RuntimeError(f"Kafka alone: {left + producer.stats.failed} messages not delivered")

    consumer = Consumer(
        {
            **kafka.client_config(settings),
            "group.id": settings.namespaced("bench-engine-reader"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    got_msgs = got_events = 0
    try:
        consumer.assign(
            [TP(t, p, OFFSET_BEGINNING) for t in topics.inputs[:2] for p in range(parts)]
        )
        deadline = time.perf_counter() + max(max_s, 10.0)
        t1: float | None = None  # from the first message: the fetchers' start is not timed
        while got_msgs < messages and time.perf_counter() < deadline:
            for m in consumer.consume(1000, 0.5):
                if m.error() is not None:
                    continue
                t1 = t1 or time.perf_counter()
                got_msgs += 1
                got_events += len(kafka.decode(topics.base(m.topic()), m.value()))
        consume_s = time.perf_counter() - t1 if t1 is not None else 0.0
    finally:
        consumer.close()
        for fut in admin.delete_topics(list(topics.inputs[:2]), operation_timeout=30).values():
            fut.result(30)
    return {
        "events": events,
        "messages": messages,
        "produce_s": round(produce_s, 3),
        "produce_events_per_s": _rate(events, produce_s),
        "consumed_events": got_events,
        "consume_s": round(consume_s, 3),
        "consume_events_per_s": _rate(got_events, consume_s),
        # What one event costs the log on its way through: produced, then read back.
        "events_per_s": _rate(events, produce_s + consume_s),
        "complete": got_events == events,
    }


# --- DynamoDB ---------------------------------------------------------------------------------


def dynamodb_alone(
    settings: Settings, frames: Sequence[Decoded], *, max_s: float
) -> dict[str, Any]:
    from tradepulse.store.hot.dynamodb import DynamoHotStore

    # Trades and quotes only: the derived tables' items are not part of this measurement.
    store = DynamoHotStore(
        settings, [], table_prefix=settings.namespaced("bench-engine"), workers=DYNAMO_WORKERS
    )
    try:
        trades = [t for d in frames for t in d.trades]
        quotes = [q for d in frames for q in d.quotes]
        raw = _raw_batch_writes(store, trades, max_s=max_s / 3)
        # Throughput from large batches (round trips amortised), latency from small ones.
        done, store_s, _ = _store_writes(store, trades, quotes, STORE_BATCH_EVENTS, max_s / 3)
        small_n, _, small = _store_writes(store, trades, quotes, SMALL_BATCH_EVENTS, max_s / 3)
    finally:
        store.drop_tables()  # what the live run writes next shares the engine with nothing
        store.close()
    small.sort()
    return {
        **raw,
        "store_events": done,
        "store_s": round(store_s, 3),
        "store_batch_events": STORE_BATCH_EVENTS,
        # The hot store's path per event: existence check, insert, latest row, volume.
        "events_per_s": _rate(done, store_s),
        # A floor under the cluster's latency: one small write, nothing else running.
        "small_batch_events": SMALL_BATCH_EVENTS,
        "small_writes": len(small),
        "small_write_ms_p50": round(1000 * small[len(small) // 2], 1) if small else None,
        "small_write_ms_max": round(1000 * small[-1], 1) if small else None,
        "small_events": small_n,
    }


def _store_writes(
    store: Any, trades: Sequence[Trade], quotes: Sequence[Quote], size: int, max_s: float
) -> tuple[int, float, list[float]]:
    """Hot-store writes of `size`-event batches for up to `max_s` (at least one); return
    (events, seconds, each write's latency)."""
    from tradepulse.store.base import StoreBatch

    done = 0
    writes: list[float] = []
    t0 = time.perf_counter()
    deadline = t0 + max_s
    for chunk_t, chunk_q in _event_chunks(trades, quotes, size):
        if writes and time.perf_counter() > deadline:
            break
        writes.append(store.write(StoreBatch(trades=chunk_t, quotes=chunk_q)).latency_s)
        done += len(chunk_t) + len(chunk_q)
    return done, time.perf_counter() - t0, writes


def _raw_batch_writes(store: Any, trades: Sequence[Trade], *, max_s: float) -> dict[str, Any]:
    """BatchWriteItem of 25 trade items per request, DYNAMO_WORKERS requests in flight, into
    the trades table under keys of their own (the store's rows are not touched)."""
    client = store._client
    table = store.trades_table
    items = [
        {
            "pk": {"S": f"raw#{t.ticker}#{i % 8}"},
            "sk": {"S": f"{t.timestamp:020d}#{t.sequence_number:012d}#{i}"},
            "price": {"N": repr(t.price)},
            "size": {"N": str(t.size)},
            "ingest_ts": {"N": str(t.ingest_ts)},
        }
        for i, t in enumerate(trades)
    ]
    chunks = [items[i : i + 25] for i in range(0, len(items), 25)]
    deadline = time.perf_counter() + max_s
    written = [0] * DYNAMO_WORKERS

    def worker(w: int) -> None:
        for chunk in itertools.islice(chunks, w, None, DYNAMO_WORKERS):
            if time.perf_counter() > deadline:
                return
            pending: dict[str, Any] = {table: [{"PutRequest": {"Item": it}} for it in chunk]}
            while pending:
                resp = client.batch_write_item(RequestItems=pending)
                pending = {k: v for k, v in (resp.get("UnprocessedItems") or {}).items() if v}
            written[w] += len(chunk)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(DYNAMO_WORKERS, thread_name_prefix="bench-dynamo") as pool:
        list(pool.map(worker, range(DYNAMO_WORKERS)))
    seconds = time.perf_counter() - t0
    return {
        "raw_items": sum(written),
        "raw_s": round(seconds, 3),
        "raw_items_per_s": _rate(sum(written), seconds),
        "raw_workers": DYNAMO_WORKERS,
    }


def _event_chunks(
    trades: Sequence[Trade], quotes: Sequence[Quote], size: int
) -> Iterator[tuple[list[Trade], list[Quote]]]:
    """Trades and quotes in chunks of about `size` events, in the recording's proportion."""
    total = len(trades) + len(quotes)
    if total == 0:
        return
    share = len(trades) / total
    ti = qi = 0
    while ti < len(trades) or qi < len(quotes):
        nt = max(1, round(size * share)) if ti < len(trades) else 0
        nq = size - nt if qi < len(quotes) else 0
        yield list(trades[ti : ti + nt]), list(quotes[qi : qi + nq])
        ti, qi = ti + nt, qi + nq


# --- S3 ---------------------------------------------------------------------------------------


def s3_alone(
    settings: Settings, frames: Sequence[Decoded], *, max_s: float, puts: int = 200
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tradepulse.store.cold.parquet import TRADES, column_arrays
    from tradepulse.store.cold.s3 import cold_root, record_columns, s3_filesystem

    fs = s3_filesystem(settings)
    root = f"{cold_root(settings)}/_bench-engine"
    by_ticker = kafka.group_by_ticker(t for d in frames for t in d.trades)

    def put_parquet(ticker: str, trades: Sequence[Trade], name: str) -> int:
        arrays = column_arrays(TRADES, record_columns(TRADES, trades))
        table = pa.table({c: arrays[c] for c in TRADES.file_columns})
        path = f"{root}/trades/ticker={ticker}/{name}.parquet"
        pq.write_table(table, path, filesystem=fs, compression="snappy")
        return int(fs.get_file_info(path).size or 0)

    # The first object pays for the client's set-up, the bucket's creation and the writer's
    # first use (seconds on a cold start): written once before the clock starts.
    for ticker, trades in itertools.islice(by_ticker.items(), 1):
        put_parquet(ticker, trades, "warm-up")
    rows = objects = 0
    nbytes = 0
    t0 = time.perf_counter()
    deadline = t0 + max_s / 2
    for ticker, trades in by_ticker.items():
        if time.perf_counter() > deadline:
            break
        nbytes += put_parquet(ticker, trades, "part-0")
        rows += len(trades)
        objects += 1
    parquet_s = time.perf_counter() - t0
    body = orjson.dumps({"start": 0, "end": 0, "keys": ["x" * 40] * 20})  # an intent marker
    done = 0
    t1 = time.perf_counter()
    deadline = t1 + max_s / 2
    for i in range(puts):
        if time.perf_counter() > deadline:
            break
        with fs.open_output_stream(f"{root}/puts/{i}.json") as fh:
            fh.write(body)
        done += 1
    put_s = time.perf_counter() - t1
    return {
        "parquet_rows": rows,
        "parquet_objects": objects,
        "parquet_mb": round(nbytes / 2**20, 2),
        "parquet_s": round(parquet_s, 3),
        # The cold sink's path per event: columns, Parquet, one PUT per ticker per flush.
        "events_per_s": _rate(rows, parquet_s),
        "small_puts": done,
        "small_put_bytes": len(body),
        "puts_per_s": _rate(done, put_s),
    }


# --- all three ---------------------------------------------------------------------------------


def engines_alone(
    settings: Settings,
    rec: Recording,
    *,
    max_events: int,
    max_s: float,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """Each engine alone on up to `max_events` recorded events, each within about `max_s`."""
    frames = decoded_frames(rec, max_events)
    out: dict[str, Any] = {"input_events": sum(len(d.trades) + len(d.quotes) for d in frames)}
    for name, fn in (("kafka", kafka_alone), ("dynamodb", dynamodb_alone), ("s3", s3_alone)):
        try:
            out[name] = fn(settings, frames, max_s=max_s)
        except Exception as exc:  # one engine failing must not lose the others' figures
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        echo(f"[bench] engine alone: {name} {_describe(name, out[name])}")
    rates = {n: out[n].get("events_per_s") for n in ("kafka", "dynamodb", "s3")}
    known = {n: r for n, r in rates.items() if r}
    if known:
        slowest = min(known, key=lambda n: known[n])
        out["slowest"] = {"engine": slowest, "events_per_s": known[slowest]}
    return out


def _describe(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    if name == "kafka":
        return (
            f"produce {r['produce_events_per_s']:,.0f} ev/s, consume "
            f"{r['consume_events_per_s']:,.0f} ev/s ({r['messages']:,} messages)"
        )
    if name == "dynamodb":
        return (
            f"BatchWriteItem {r['raw_items_per_s']:,.0f} items/s, hot-store write "
            f"{r['events_per_s']:,.0f} events/s in {r['store_batch_events']}-event writes, "
            f"{r['small_write_ms_p50']} ms per {r['small_batch_events']}-event write"
        )
    return (
        f"Parquet {r['events_per_s']:,.0f} rows/s ({r['parquet_objects']} objects), "
        f"{r['puts_per_s']:,.0f} small PUTs/s"
    )
