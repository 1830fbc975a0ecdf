"""Where a namespace's data lives besides Kafka (`log/kafka.py` derives the topic names; the
S3 cold sink and the SQS dead-letter queue derive theirs from `cluster_namespace` themselves).
"""

from __future__ import annotations

from tradepulse.config import Settings


def table_prefix(settings: Settings) -> str:
    """The DynamoDB table prefix (shared by the processors and the API)."""
    return settings.namespaced("tradepulse")
