"""Dead letters after validation: the queue, redrive and archive (DESIGN.md, "Dead letters").

    rejected ──▶ DLQ (reason, raw payload, source, first-seen time, attempts)
                  │  every dlq_retry_s (TRADEPULSE_DLQ_RETRY_S, 15 min): re-validate
                  ├─ valid now ──▶ re-published into the pipeline, leaves the queue
                  └─ still bad ──▶ back with retries + 1 ──(dlq_max_retries, 5)──▶ dlq-archive/

`attempts` counts tries: in-process ones for transient failures (the Finnhub poller retries
a bad response before giving up on it; re-validating a payload in process cannot change a
deterministic verdict, so a validation failure arrives with 1), then one per DLQ redrive.

Backends: `sqs.py` (cluster; `SqsDeadLetterQueue(settings).send(dead_letters)` is what the
producer calls) and `sqlite.py` (embedded, over the hot store's `dlq` table). `redrive.py`
holds the lifecycle, `revalidate.py` the per-source checks, `republish.py` where valid
records go, `archive.py` the Parquet archive. Nothing is imported here, so a producer that
only sends pays for boto3 alone.
"""
