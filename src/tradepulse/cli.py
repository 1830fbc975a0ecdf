"""The `tradepulse` command: one entry point for every stage.

Exit codes: 0 success, 1 runtime failure, 2 bad input (invalid configuration or arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from tradepulse.config import ConfigError, Settings, load_settings
from tradepulse.dlq_cli import dlq_app

app = typer.Typer(
    help="TradePulse: real-time market-data pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SIM_DEFAULT_PORT = 8001
SIM_DEFAULT_URL = f"http://127.0.0.1:{SIM_DEFAULT_PORT}"

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (TRADEPULSE_DATA_DIR).")
]
Tickers = Annotated[str | None, typer.Option("--tickers", help="Comma-separated symbols.")]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"tradepulse: {message}", err=True)
    return typer.Exit(code=code)


def settings_or_exit(**overrides: object) -> Settings:
    """Load settings; on a bad value print one clear message and exit 2."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


@contextlib.contextmanager
def store_errors_exit() -> Iterator[None]:
    """An unusable or full data dir is a runtime failure with one clear line, not a traceback."""
    from tradepulse.runner import StoreWriteError

    try:
        yield
    except (OSError, StoreWriteError) as exc:
        raise fail(f"{exc}", code=1) from None


@app.command()
def config() -> None:
    """Print the effective configuration (secrets hidden)."""
    settings = settings_or_exit()
    for name, value in settings.model_dump().items():
        typer.echo(f"{name} = {value}")


@app.command()
def run(
    duration: Annotated[
        float | None, typer.Option(help="Stop after S seconds (default: until Ctrl-C).", min=0.1)
    ] = None,
    data_dir: DataDir = None,
    port: Annotated[int | None, typer.Option(help="API/dashboard port.")] = None,
    rate: Annotated[
        float, typer.Option(help="Simulator events/s (trades + quotes).", min=1)
    ] = 1000.0,
    tickers: Tickers = None,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 7,
    bad_rate: Annotated[
        float, typer.Option(help="Share of malformed simulator events.", min=0, max=1)
    ] = 0.0,
    profile: Annotated[
        str, typer.Option(help="Simulator profile: flat|intraday|market-open.")
    ] = "intraday",
    no_api: Annotated[
        bool, typer.Option("--no-api", help="Do not serve the API/dashboard.")
    ] = False,
    backend: Annotated[str | None, typer.Option(help="embedded|cluster.")] = None,
    processors: Annotated[
        int, typer.Option(help="Cluster backend: processor processes to start.", min=1)
    ] = 1,
) -> None:
    """Run the whole pipeline (simulator unless POLYGON_API_KEY is set) with API and dashboard."""
    settings = settings_or_exit(data_dir=data_dir, port=port, tickers=tickers, backend=backend)
    if profile not in {"flat", "intraday", "market-open"}:
        raise fail(f"--profile must be flat, intraday or market-open (got {profile!r})")
    from tradepulse.runner import run_embedded
    from tradepulse.sim import SimConfig
    from tradepulse.sources.polygon_ws import AuthError

    sim_cfg = SimConfig(
        tickers=list(settings.tickers),
        rate=rate,
        seed=seed,
        bad_rate=bad_rate,
        profile=profile,  # type: ignore[arg-type]
        truth_dir=settings.data_dir / "truth",
        history_s=settings.warmup_s,  # the history the run warms up from
    )
    if settings.backend == "cluster":
        _run_cluster(settings, sim_cfg, duration, processors, serve_api=not no_api)
        return
    try:
        with store_errors_exit():
            summary = asyncio.run(
                run_embedded(
                    settings, sim_config=sim_cfg, duration_s=duration, serve_api=not no_api
                )
            )
    except AuthError as exc:
        raise fail(f"authentication failed: {exc}", code=2) from None
    typer.echo(
        f"stored {summary.trades_stored:,} trades, {summary.quotes_stored:,} quotes, "
        f"{summary.dead_letters:,} dead letters in {summary.seconds:.1f} s "
        f"(data in {settings.data_dir})"
    )


def _run_cluster(
    settings: Settings, sim_cfg: object, duration: float | None, processors: int, serve_api: bool
) -> None:
    from tradepulse.cluster.supervise import ClusterError, run_cluster

    try:
        s = asyncio.run(
            run_cluster(
                settings,
                sim_config=sim_cfg,
                duration_s=duration,
                processors=processors,
                serve_api=serve_api,
            )
        )
    except ClusterError as exc:
        raise fail(str(exc), code=1) from None
    restarts = f", {s.processor_restarts} processor restarts" if s.processor_restarts else ""
    typer.echo(
        f"published {s.trades_published:,} trades (+{s.rest_trades:,} from REST), "
        f"{s.quotes_published:,} quotes, {s.dead_letters:,} dead letters; the processors "
        f"committed all of it{restarts} in {s.seconds:.1f} s "
        f"(DynamoDB tables {settings.namespaced('tradepulse')}-*)"
    )


# -- the cluster backend's processes (see docs/runbook.md, "Cluster processes") --------------
SIM_API_KEY = "simulator"  # the simulator's default key (SimConfig.api_key)


@app.command()
def producer(
    url: Annotated[
        str | None,
        typer.Option(help="WebSocket URL (default: Polygon with a key, else the local simulator)."),
    ] = None,
    rest_url: Annotated[
        str | None,
        typer.Option(
            help="REST base URL for the warm-up and gap fills (default: Polygon's with a key, "
            "else the simulator's at the WebSocket's address)."
        ),
    ] = None,
    no_rest: Annotated[
        bool, typer.Option("--no-rest", help="No warm-up and no gap fills from REST.")
    ] = False,
    until_feed_closes: Annotated[
        bool,
        typer.Option("--until-feed-closes", help="Exit when the feed closes (a finished sim)."),
    ] = False,
    duration: Annotated[float | None, typer.Option(help="Stop after S seconds.", min=0.1)] = None,
    tickers: Tickers = None,
    data_dir: DataDir = None,
) -> None:
    """Cluster: live feed -> validation -> Kafka trades/quotes; dead letters -> SQS."""
    settings = settings_or_exit(data_dir=data_dir, tickers=tickers, backend="cluster")
    from tradepulse.cluster.supervise import die_with_supervisor

    die_with_supervisor()
    from urllib.parse import urlsplit

    from confluent_kafka import KafkaException

    from tradepulse.cluster.producer import run_producer
    from tradepulse.cluster.summary import write_summary
    from tradepulse.sources.polygon_ws import AuthError

    key = settings.polygon_api_key
    ws_url = url or (
        settings.polygon_ws_url if key else f"ws://127.0.0.1:{SIM_DEFAULT_PORT}/stocks"
    )
    if not no_rest and rest_url is None:
        # The simulator serves REST on its WebSocket's host and port.
        scheme = "https" if ws_url.startswith("wss") else "http"
        rest_url = settings.polygon_rest_url if key else f"{scheme}://{urlsplit(ws_url).netloc}"
    try:
        summary = asyncio.run(
            run_producer(
                settings,
                ws_url=ws_url,
                api_key=key.get_secret_value() if key else SIM_API_KEY,
                rest_url=None if no_rest else rest_url,
                until_feed_closes=until_feed_closes,
                duration_s=duration,
            )
        )
    except AuthError as exc:
        raise fail(f"authentication failed: {exc}", code=2) from None
    except (OSError, RuntimeError, KafkaException) as exc:
        raise fail(str(exc), code=1) from None
    write_summary(settings, "producer", summary)


@app.command()
def processor(
    instance_id: Annotated[
        str | None,
        typer.Option(
            "--instance-id",
            help="Stable name of this processor (default: the host name); one per process.",
        ),
    ] = None,
    cold: Annotated[
        bool, typer.Option("--cold/--no-cold", help="Run the S3 cold sink in this process.")
    ] = True,
    data_dir: DataDir = None,
) -> None:
    """Cluster: Kafka -> features, anomalies, news join -> DynamoDB + outputs, exactly once."""
    import socket

    settings = settings_or_exit(data_dir=data_dir, backend="cluster")
    from tradepulse.cluster.supervise import die_with_supervisor

    die_with_supervisor()
    name = instance_id or socket.gethostname()
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise fail(f"--instance-id must be letters, digits, '-', '_' or '.' (got {name!r})")
    from botocore.exceptions import BotoCoreError, ClientError
    from confluent_kafka import KafkaException

    from tradepulse.cluster.processor import run_processor
    from tradepulse.cluster.summary import write_summary
    from tradepulse.log.transactional import FatalProcessorError

    try:
        summary = run_processor(settings, instance_id=name, cold=cold)
    except (FatalProcessorError, KafkaException, OSError) as exc:
        raise fail(str(exc), code=1) from None
    except (BotoCoreError, ClientError) as exc:
        # DynamoDB unreachable or refusing at start-up: the SDK already retried; say which.
        raise fail(f"DynamoDB at {settings.dynamodb_endpoint or 'AWS'}: {exc}", code=1) from None
    write_summary(settings, f"processor-{name}", summary)


@app.command()
def news(
    url: Annotated[
        str | None,
        typer.Option(help="Finnhub API base URL (default: Finnhub with a key, else the sim)."),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after S seconds.", min=0.1)] = None,
    tickers: Tickers = None,
    data_dir: DataDir = None,
) -> None:
    """Cluster: Finnhub company news (or the simulator's) -> Kafka market.news."""
    settings = settings_or_exit(data_dir=data_dir, tickers=tickers, backend="cluster")
    from tradepulse.cluster.supervise import die_with_supervisor

    die_with_supervisor()
    from confluent_kafka import KafkaException

    from tradepulse.cluster.news import run_news
    from tradepulse.cluster.summary import write_summary

    keyed = settings.finnhub_api_key is not None
    base = url or (None if keyed else f"{SIM_DEFAULT_URL}/api/v1")
    try:
        summary = asyncio.run(
            run_news(
                settings,
                base_url=base,
                api_key=None if keyed else SIM_API_KEY,
                duration_s=duration,
            )
        )
    except (OSError, RuntimeError, KafkaException) as exc:
        raise fail(str(exc), code=1) from None
    write_summary(settings, "news", summary)


@app.command()
def api(
    port: Annotated[int | None, typer.Option(help="Port (TRADEPULSE_PORT).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Cluster: the REST API and dashboard over DynamoDB."""
    settings = settings_or_exit(data_dir=data_dir, port=port, backend="cluster")
    from tradepulse.cluster.supervise import die_with_supervisor

    die_with_supervisor()
    from tradepulse.cluster.api import run_api

    try:
        run_api(settings)
    except OSError as exc:
        raise fail(str(exc), code=1) from None


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over views trades, quotes, dlq, ...")],
    data_dir: DataDir = None,
    fmt: Annotated[str, typer.Option("--format", help="table|json|csv|parquet")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to a file.")] = None,
    backend: Annotated[
        str | None, typer.Option(help="embedded (local files) | cluster (the S3 cold store).")
    ] = None,
) -> None:
    """Run SQL over the hot and cold stores, deduplicated (cluster: the S3 cold store)."""
    settings = settings_or_exit(data_dir=data_dir, backend=backend)
    fmt = "json" if as_json else fmt
    if fmt not in {"table", "json", "csv", "parquet"}:
        raise fail(f"--format must be table, json, csv or parquet (got {fmt!r})")
    if fmt == "parquet" and output is None:
        raise fail("--format parquet needs --output FILE")
    from tradepulse.process.stages import all_tables
    from tradepulse.store.query import QueryEngine, QueryError, format_result

    cluster = settings.backend == "cluster"
    if not cluster and not (settings.data_dir / "hot.sqlite3").exists():
        raise fail(f"no data in {settings.data_dir} (run `tradepulse run --data-dir ...` first)")
    try:
        engine = QueryEngine.for_settings(settings, all_tables())
        result = engine.sql(sql)
    except QueryError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # S3 unreachable or refusing: said in one line, not a traceback
        raise fail(f"cannot read the cold store: {exc}", code=1) from None
    rendered = format_result(result, fmt)
    if output is not None:
        mode = "wb" if isinstance(rendered, bytes) else "w"
        with open(output, mode) as fh:
            fh.write(rendered)
    else:
        assert isinstance(rendered, str)
        typer.echo(rendered.rstrip("\n"))


@app.command("eval")
def evaluate(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Score stored anomalies and news correlations against the simulator's ground truth."""
    settings = settings_or_exit(data_dir=data_dir)
    truth = settings.data_dir / "truth"
    if not (truth / "summary.json").exists():
        raise fail(f"no simulator ground truth in {truth} (run `tradepulse run` on the simulator)")
    if not (settings.data_dir / "hot.sqlite3").exists():
        raise fail(f"no data in {settings.data_dir} (run `tradepulse run --data-dir ...` first)")
    import orjson

    from tradepulse.ops import evaluate_anomalies, evaluate_news
    from tradepulse.process.stages import all_tables
    from tradepulse.store.query import QueryEngine, QueryError

    engine = QueryEngine(settings.data_dir, all_tables(settings))
    try:
        anomalies = engine.query_rows("select ticker, timestamp from anomalies")
        try:
            scored = engine.query_rows("select ticker, timestamp, anomaly_score from features")
        except QueryError:
            scored = None  # per-trade scores are not stored: AUC is reported as n/a
        sentiment = engine.query_rows(
            "select ticker, article_id, correlation_strength from market_sentiment"
        )
    except QueryError as exc:
        raise fail(str(exc), code=1) from None
    report: dict[str, object] = {}
    if (truth / "anomalies.jsonl").exists():
        report["anomalies"] = evaluate_anomalies.evaluate_anomalies(
            anomalies,
            evaluate_anomalies.load_truth(truth / "anomalies.jsonl"),
            scored_rows=scored,
        )
    if (truth / "news.jsonl").exists():
        report["news"] = evaluate_news.evaluate_correlation(sentiment, truth / "news.jsonl")
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    if "anomalies" in report:
        typer.echo(evaluate_anomalies.format_report(report["anomalies"]))  # type: ignore[arg-type]
    if "news" in report:
        typer.echo(evaluate_news.format_report(report["news"]))  # type: ignore[arg-type]


def _parse_time(value: str, name: str) -> int:
    """ns integer, YYYY-MM-DD (midnight America/New_York) or ISO-8601 datetime → ns."""
    from datetime import datetime

    from tradepulse.market_time import ET, NS_PER_S

    v = value.strip()
    if v.isdigit():
        return int(v)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"{name}: {value!r} is not a time (use ns, YYYY-MM-DD or ISO-8601)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ET)
    return int(dt.timestamp() * NS_PER_S)


@app.command()
def replay(
    files: Annotated[list[Path], typer.Argument(help="Polygon trades/quotes flat files (.csv.gz)")],
    speed: Annotated[
        float | None, typer.Option(help="Pace event time at N x real time.", min=0.001)
    ] = None,
    max_speed: Annotated[
        bool, typer.Option("--max", help="As fast as possible (default).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Replay flat files through the live pipeline's validation, processing and stores."""
    settings = settings_or_exit(data_dir=data_dir)
    if speed is not None and max_speed:
        raise fail("--speed and --max exclude each other")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise fail(f"no such file: {', '.join(missing)}")
    from tradepulse.runner import run_replay
    from tradepulse.sources.replay import ReplayError, detect_kind

    try:
        for f in files:
            detect_kind(f)
    except ReplayError as exc:
        raise fail(str(exc)) from None
    with store_errors_exit():
        summary = asyncio.run(run_replay(settings, list(files), speed=speed))
    s = summary
    typer.echo(
        f"replayed {s.rows:,} rows: {s.trades:,} trades ({s.trades_stored:,} new), "
        f"{s.quotes:,} quotes, {s.dead_letters:,} dead letters in {s.seconds:.1f} s"
        + (f"; {s.already_cold:,} already in the cold store" if s.already_cold else "")
    )


@app.command()
def backfill(
    ticker: Annotated[list[str], typer.Option("--ticker", help="Ticker (repeatable).")],
    from_: Annotated[str, typer.Option("--from", help="Start (ns, YYYY-MM-DD or ISO-8601).")],
    to: Annotated[str, typer.Option("--to", help="End, exclusive (same formats).")],
    url: Annotated[
        str | None,
        typer.Option(help="REST base URL (default: Polygon with a key, else the local simulator)."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Fetch trades from Polygon's REST /v3/trades and store them idempotently."""
    settings = settings_or_exit(data_dir=data_dir, tickers=",".join(ticker))
    start, end = _parse_time(from_, "--from"), _parse_time(to, "--to")
    if end <= start:
        raise fail("--to must be after --from")
    key = settings.polygon_api_key.get_secret_value() if settings.polygon_api_key else "simulator"
    base = url or (settings.polygon_rest_url if settings.polygon_api_key else SIM_DEFAULT_URL)
    from tradepulse.runner import run_backfill
    from tradepulse.sources.polygon_rest import RestError

    try:
        with store_errors_exit():
            s = asyncio.run(
                run_backfill(
                    settings,
                    base_url=base,
                    api_key=key,
                    tickers=list(settings.tickers),
                    from_ns=start,
                    to_ns=end,
                )
            )
    except RestError as exc:
        raise fail(str(exc), code=1) from None
    typer.echo(
        f"fetched {s.fetched:,} trades: {s.trades_stored:,} new, {s.duplicates:,} already stored, "
        f"{s.dead_letters:,} dead letters in {s.seconds:.1f} s"
    )


@app.command()
def sim(
    port: Annotated[int, typer.Option(help="Port for WebSocket and REST (0 = any free).")] = (
        SIM_DEFAULT_PORT
    ),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    rate: Annotated[float, typer.Option(help="Base events/s (trades + quotes).")] = 2000.0,
    tickers: Tickers = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    duration: Annotated[float | None, typer.Option(help="Stop after S seconds.")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after N events.")] = None,
    profile: Annotated[str, typer.Option(help="flat|intraday|market-open.")] = "intraday",
    anomaly_rate: Annotated[
        float, typer.Option(help="Injected anomalies per ticker per minute.")
    ] = 0.5,
    jump_pct: Annotated[float, typer.Option(help="Price jump size, %.")] = 3.0,
    burst_mult: Annotated[float, typer.Option(help="Volume burst size multiplier.")] = 10.0,
    news_rate: Annotated[float, typer.Option(help="Articles per ticker per minute.")] = 0.5,
    news_spike_prob: Annotated[
        float, typer.Option(help="Share of articles with a volume spike.")
    ] = 0.5,
    bad_rate: Annotated[float, typer.Option(help="Share of malformed events.")] = 0.0,
    history: Annotated[
        float, typer.Option(help="Seconds of calm market before the live start (REST only).")
    ] = 0.0,
    truth_dir: Annotated[
        Path | None, typer.Option(help="Write ground truth (summary, anomalies, news) here.")
    ] = None,
) -> None:
    """Serve the market simulator: Polygon WebSocket + /v3/trades and Finnhub company news."""
    from tradepulse.config import DEFAULT_TICKERS
    from tradepulse.sim import MarketSimulator, SimConfig

    symbols = [t for t in (tickers or "").split(",") if t.strip()] or list(DEFAULT_TICKERS)
    try:
        cfg = SimConfig(
            tickers=symbols,
            rate=rate,
            seed=seed,
            bad_rate=bad_rate,
            profile=profile,  # type: ignore[arg-type]
            truth_dir=truth_dir,
            duration_s=duration,
            count=count,
            anomaly_rate=anomaly_rate,
            jump_pct=jump_pct,
            burst_mult=burst_mult,
            news_rate=news_rate,
            news_spike_prob=news_spike_prob,
            history_s=history,
            host=host,
            port=port,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def serve() -> None:
        import contextlib
        import signal

        simulator = MarketSimulator(cfg)
        await simulator.start()
        typer.echo(f"simulator WebSocket {simulator.ws_url}")
        typer.echo(f"simulator REST {simulator.http_url} (API key {cfg.api_key!r})")
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, interrupted.set)
        waiters = [
            asyncio.create_task(simulator.wait_finished()),
            asyncio.create_task(interrupted.wait()),
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        await simulator.stop()
        gen = simulator.generator
        sent = gen.total_events if gen is not None else 0
        where = f"; truth in {cfg.truth_dir}" if cfg.truth_dir is not None else ""
        typer.echo(f"simulator stopped after {sent:,} events{where}")

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise fail(f"cannot serve on {host}:{port}: {exc}", code=1) from None


# -- stack: the real local engines for the cluster backend -------------------------------------
stack_app = typer.Typer(
    help="Run the cluster backend's engines locally (Kafka, DynamoDB, SQS, S3), no Docker.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")
app.add_typer(dlq_app, name="dlq")

StackServices = Annotated[
    str | None,
    typer.Option("--services", help="Comma-separated: kafka,dynamodb,sqs,s3 (default: all)."),
]


def _stack_names(services: str | None) -> list[str]:
    from tradepulse.ops.stack import parse_services

    try:
        return parse_services(services)
    except ValueError as exc:
        raise fail(str(exc)) from None


@stack_app.command("up")
def stack_up(
    services: StackServices = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for each service (default per service).")
    ] = None,
) -> None:
    """Fetch (once, into the cache) and start the services; reuse the ones already running."""
    from tradepulse.ops.stack import Stack, StackError, format_status

    names = _stack_names(services)
    try:
        statuses = Stack(settings_or_exit(), echo=typer.echo).up(names, timeout_s=timeout)
    except StackError as exc:
        raise fail(str(exc), code=1) from None
    typer.echo(format_status(statuses))


@stack_app.command("down")
def stack_down(
    services: StackServices = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete their data (Kafka log, S3 objects).")
    ] = False,
) -> None:
    """Stop the services `stack up` started (by pid)."""
    from tradepulse.ops.stack import Stack

    names = _stack_names(services)
    stopped = Stack(settings_or_exit(), echo=typer.echo).down(names, purge=purge)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@stack_app.command("status")
def stack_status(services: StackServices = None) -> None:
    """Each service's endpoint, pid and health; exit 1 unless all are healthy."""
    from tradepulse.ops.stack import Stack, StackError, format_status

    names = _stack_names(services)
    try:
        statuses = Stack(settings_or_exit()).status(names)
    except StackError as exc:
        raise fail(str(exc), code=1) from None
    typer.echo(format_status(statuses))
    if not all(st.healthy for st in statuses):
        raise typer.Exit(code=1)


@stack_app.command("logs")
def stack_logs(
    service: Annotated[
        str | None, typer.Argument(help="kafka|dynamodb|sqs|s3 (default: all).")
    ] = None,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines from the end.", min=0)] = 50,
) -> None:
    """Print the end of a service's log."""
    from tradepulse.ops.stack import Stack

    names = _stack_names(service)
    stack = Stack(settings_or_exit())
    for name in names:
        if len(names) > 1:
            typer.echo(f"==> {stack.log_path(name)} <==")
        for line in stack.tail(name, lines):
            typer.echo(line)


@app.command()
def bench(
    backend: Annotated[
        str, typer.Option(help="embedded, or cluster (the running stack: `tradepulse stack up`).")
    ] = "embedded",
    scenario: Annotated[str, typer.Option(help="market-open|sustained|burst|max.")] = "market-open",
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds of the sustained part (max: of each step).", min=0.1),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Sustained events/s (default 15,000).", min=1)
    ] = None,
    tickers: Annotated[int, typer.Option("--tickers", help="Number of tickers.", min=1)] = 5,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run, under 2 minutes.")] = False,
    out: Annotated[Path, typer.Option(help="Report directory.")] = Path("docs/benchmarks"),
    processors: Annotated[
        int, typer.Option(help="Cluster: processor processes.", min=1, max=12)
    ] = 1,
    drain: Annotated[
        float | None,
        typer.Option(
            help="Cluster: seconds the processors may drain after the feed stops "
            "(default 60, quick 15); the backlog left is reported.",
            min=0,
        ),
    ] = None,
) -> None:
    """Load the real pipeline from the simulator, run the baseline peer, write the report."""
    from tradepulse.bench import BenchOptions, run_bench
    from tradepulse.bench.cluster import ClusterBenchError
    from tradepulse.bench.report import summary_lines
    from tradepulse.bench.scenarios import BACKENDS, SCENARIOS

    if scenario not in SCENARIOS:
        raise fail(f"--scenario must be one of {', '.join(SCENARIOS)} (got {scenario!r})")
    if backend not in BACKENDS:
        raise fail(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    opts = BenchOptions(
        backend=backend,
        scenario=scenario,
        duration_s=duration,
        rate=rate,
        tickers=tickers,
        quick=quick,
        out=out,
        command="tradepulse " + " ".join(sys.argv[1:]),
        processors=processors,
        drain_limit_s=drain,
    )
    try:
        doc = run_bench(opts, echo=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        raise fail(str(exc)) from None
    except ClusterBenchError as exc:
        raise fail(str(exc), code=1) from None
    for line in summary_lines(doc):
        typer.echo(line)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
