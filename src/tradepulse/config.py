"""One settings object for every stage, read from the environment and `.env`.

Every knob is `TRADEPULSE_<NAME>` except the vendors' usual variables (`POLYGON_API_KEY`,
`FINNHUB_API_KEY`, `AWS_*`), which keep their names so existing shells work unchanged.
Invalid values raise `ConfigError` with one line per bad setting; the CLI prints it and exits 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TICKER_RE = re.compile(r"^[A-Z][A-Z0-9.\-]{0,9}$")
DEFAULT_TICKERS = ("AAPL", "MSFT", "AMZN", "TSLA", "NVDA")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._\-]+(/[A-Za-z0-9._\-]+)*$")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_\-]{1,80}$")


class ConfigError(Exception):
    """Configuration that cannot be used; the message names each offending setting."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRADEPULSE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- what to ingest -------------------------------------------------------------------
    tickers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_TICKERS))
    source: Literal["auto", "sim", "polygon", "replay"] = "auto"
    polygon_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("POLYGON_API_KEY", "TRADEPULSE_POLYGON_API_KEY")
    )
    finnhub_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FINNHUB_API_KEY", "TRADEPULSE_FINNHUB_API_KEY")
    )
    polygon_ws_url: str = "wss://socket.polygon.io/stocks"
    polygon_rest_url: str = "https://api.polygon.io"
    finnhub_url: str = "https://finnhub.io/api/v1"

    # --- where and how to run ------------------------------------------------------------
    backend: Literal["embedded", "cluster"] = "embedded"
    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- ingest and validation ---------------------------------------------------------
    ws_max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    ws_queue_frames: int = Field(default=4096, ge=16)
    # The log's bound in bytes too: 4096 frames of up to ws_max_frame_bytes would be 16 GiB.
    ws_queue_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    reconnect_base_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    max_clock_skew_s: float = Field(default=24 * 3600.0, gt=0)
    batch_max_events: int = Field(default=5000, ge=1)
    batch_max_ms: float = Field(default=20.0, gt=0)
    # History pulled from the REST trades endpoint before the live feed starts, so windows and
    # models are warm at once (the z-score needs 5 baseline minutes); 0 starts cold.
    warmup_s: float = Field(default=600.0, ge=0, le=6 * 3600)

    # --- storage ------------------------------------------------------------------------
    cold_flush_s: float = Field(default=300.0, gt=0)
    # The cluster cold sink also flushes once this many rows are buffered (bounds its memory).
    cold_flush_rows: int = Field(default=500_000, ge=1)
    hot_retention_h: float = Field(default=48.0, gt=0)

    # --- features and anomalies -------------------------------------------------------------
    volume_window_s: float = Field(default=60.0, gt=0)
    volume_baseline_windows: int = Field(default=20, ge=2)
    volume_min_baseline: int = Field(default=5, ge=1)
    zscore_std_floor: float = Field(default=1.0, gt=0)
    bar_grace_s: float = Field(default=2.0, ge=0)
    bar_late_allowance_s: float = Field(default=60.0, ge=0)
    anomaly_train_window: int = Field(default=1000, ge=16)
    anomaly_retrain_every: int = Field(default=500, ge=1)
    anomaly_contamination: float = Field(default=0.01, gt=0, lt=0.5)
    # A trade is an anomaly when its score falls below this; "cutoff" (or empty) uses each
    # model's contamination cut-off instead. −0.7 won the side-by-side evaluation against the
    # cut-off and the original's −0.5 (docs/benchmarks.md, "Detection quality").
    anomaly_threshold: float | None = Field(default=-0.7, gt=-1.0, lt=0.0)

    # --- news and correlation ---------------------------------------------------------------
    news_poll_s: float = Field(default=60.0, gt=0)
    finnhub_calls_per_min: int = Field(default=60, ge=1)
    correlation_window_s: float = Field(default=60.0, gt=0)

    # --- reliability ----------------------------------------------------------------------------
    backpressure_latency_ms: float = Field(default=100.0, gt=0)
    backpressure_pause_ms: float = Field(default=500.0, gt=0)
    dlq_attempts: int = Field(default=3, ge=1)
    dlq_retry_s: float = Field(default=900.0, gt=0)
    dlq_max_retries: int = Field(default=5, ge=1)

    # --- API --------------------------------------------------------------------------------------
    rate_limit_per_min: int = Field(default=100, ge=1)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- cluster backend -------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_trades_partitions: int = Field(default=6, ge=1)
    # What a producer holds for Kafka before the broker acknowledges it (librdkafka's
    # queue.buffering.max.kbytes). A broker outage fills it; full, the producer stops reading
    # its feed (backpressure) instead of growing or dropping (docs/runbook.md, "Kafka broker
    # down"). Messages are split to stay well under it.
    kafka_buffer_kb: int = Field(default=256 * 1024, ge=64, le=2**31 - 1)
    # Prefixes every Kafka topic, consumer group, transactional id and DynamoDB table of the
    # cluster backend ("<ns>.market.trades"), so several pipelines or test runs can share one
    # set of engines without reading each other's data. Empty: the plain names.
    cluster_namespace: str = Field(default="", pattern=r"^[A-Za-z0-9_\-]*$", max_length=64)
    dynamodb_endpoint: str | None = "http://127.0.0.1:18000"
    s3_endpoint: str | None = "http://127.0.0.1:18001"
    sqs_endpoint: str | None = "http://127.0.0.1:18002"
    s3_bucket: str = "tradepulse"
    s3_prefix: str = "cold"  # key prefix of the cold store (and dlq-archive/) in the bucket
    sqs_dlq_queue: str = "tradepulse-dlq"
    aws_region: str = Field(
        default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "TRADEPULSE_AWS_REGION")
    )
    # Retries of every DynamoDB, SQS and S3 call (botocore; pyarrow's S3 client for the cold
    # store). "standard" backs off exponentially with full jitter — 1 s base after a throttle,
    # milliseconds after a 5xx — within the SDK's retry quota; "adaptive" also slows the client
    # down after throttles (botocore only: S3 stays "standard"); "legacy" is botocore's old
    # mode. Attempts count the first call. Past them the caller's own retry takes over: the
    # processor retries the batch from the committed offsets, the cold sink the flush, the
    # dead-letter sender the send (docs/runbook.md, "Throttling and 5xx from AWS").
    aws_retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        default="standard",
        validation_alias=AliasChoices("AWS_RETRY_MODE", "TRADEPULSE_AWS_RETRY_MODE"),
    )
    aws_max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        validation_alias=AliasChoices("AWS_MAX_ATTEMPTS", "TRADEPULSE_AWS_MAX_ATTEMPTS"),
    )

    @field_validator("anomaly_threshold", mode="before")
    @classmethod
    def _threshold(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in {"", "cutoff", "none"}:
            return None
        return value

    @field_validator("tickers", "api_keys", "trusted_proxies", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, value: list[str]) -> list[str]:
        out = [t.upper() for t in value]
        bad = [t for t in out if not TICKER_RE.match(t)]
        if bad:
            raise ValueError(f"not ticker symbols: {', '.join(bad)} (expected e.g. AAPL,MSFT)")
        if not out:
            raise ValueError("at least one ticker is required")
        return list(dict.fromkeys(out))

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET_RE.match(value):
            raise ValueError("not an S3 bucket name (3-63 of a-z 0-9 . -)")
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if value and not _PREFIX_RE.match(value):
            raise ValueError("an S3 key prefix is path segments of A-Z a-z 0-9 . _ - (e.g. cold)")
        return value

    @field_validator("sqs_dlq_queue")
    @classmethod
    def _queue(cls, value: str) -> str:
        if not _QUEUE_RE.match(value):
            raise ValueError("not an SQS queue name (1-80 of A-Z a-z 0-9 _ -)")
        return value

    def namespaced(self, name: str) -> str:
        """`name` inside `cluster_namespace` (unchanged when the namespace is empty)."""
        return f"{self.cluster_namespace}.{name}" if self.cluster_namespace else name

    @property
    def resolved_source(self) -> Literal["sim", "polygon", "replay"]:
        """`auto` means the real feed when a Polygon key is set, the simulator otherwise."""
        if self.source != "auto":
            return self.source
        return "polygon" if self.polygon_api_key else "sim"

    def secrets(self) -> list[str]:
        """Secret values that must never appear in logs, errors, /health or /metrics."""
        vals = [self.polygon_api_key, self.finnhub_api_key]
        return [v.get_secret_value() for v in vals if v is not None and v.get_secret_value()]


def _setting_name(loc: tuple[int | str, ...]) -> str:
    field = str(loc[0]) if loc else "?"
    if field in {
        "POLYGON_API_KEY",
        "FINNHUB_API_KEY",
        "AWS_REGION",
        "AWS_RETRY_MODE",
        "AWS_MAX_ATTEMPTS",
    }:
        return field
    return f"TRADEPULSE_{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from env/.env plus explicit overrides (CLI flags); raise ConfigError."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = _setting_name(tuple(err["loc"]))
            shown = "<hidden>" if "KEY" in name else repr(err.get("input"))
            lines.append(f"invalid setting {name}: {err['msg']} (got {shown})")
        raise ConfigError("\n".join(lines)) from None
