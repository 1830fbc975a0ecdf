"""`tradepulse news`: Finnhub company news (or the simulator's Finnhub endpoint) → Kafka.

The poller (`sources/finnhub.py`) marks an article seen only after its sink accepted it; the
sink here returns only once Kafka has acknowledged the message, so a crash in between
re-delivers (the processor's join and the store ignore a second copy) rather than loses.
Articles are keyed by ticker, so they share a partition number with the ticker's trades.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from tradepulse.cluster.logs import setup_logging
from tradepulse.cluster.producer import DeadLetterSender
from tradepulse.config import Settings
from tradepulse.events import DeadLetter, News
from tradepulse.log import kafka
from tradepulse.runner import echo_err, install_signal_handlers


@dataclass
class NewsSummary:
    articles: int = 0
    dead_letters: int = 0
    requests: int = 0
    seconds: float = 0.0


async def run_news(
    settings: Settings,
    *,
    base_url: str | None,
    api_key: str | None,
    duration_s: float | None = None,
    out: Callable[[str], None] = echo_err,
) -> NewsSummary:
    """Poll until SIGTERM/SIGINT or `duration_s`. `base_url`/`api_key` override the settings'
    Finnhub URL and key (the simulator's)."""
    from tradepulse.sources.finnhub import poller_from_settings

    setup_logging(settings, "[news]")
    topics = kafka.Topics.of(settings)
    await asyncio.to_thread(kafka.ensure_topics, settings)
    producer = kafka.EventProducer(settings)
    dlq = DeadLetterSender(settings)
    summary = NewsSummary()
    started = time.monotonic()

    async def put_news(items: list[News]) -> None:
        producer.send(topics.news, items)
        failed_before = producer.stats.failed
        left = await asyncio.to_thread(producer.flush, 30.0)
        if left or producer.stats.failed > failed_before:
            # Raising keeps the articles unseen: the next poll offers them again.
            raise RuntimeError(f"Kafka did not acknowledge the articles ({left} pending)")
        summary.articles += len(items)

    async def put_dead(items: list[DeadLetter]) -> None:
        await asyncio.to_thread(dlq.send, items)
        summary.dead_letters += len(items)

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    poller = poller_from_settings(
        settings,
        put_news,
        seen_path=settings.data_dir / f"{settings.namespaced('news_seen')}.json",
        base_url=base_url,
        api_key=api_key,
        on_dead_letters=put_dead,
    )
    stop = asyncio.Event()
    install_signal_handlers(stop)
    task = asyncio.create_task(poller.run(), name="finnhub")
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
    poller.stop()
    waiter.cancel()
    await task  # returns once the delivery in progress (if any) has finished
    summary.requests = poller.requests_sent
    summary.seconds = time.monotonic() - started
    out(f"[news] published {summary.articles:,} articles; {summary.dead_letters:,} dead letters")
    return summary
