"""The FastAPI application: routers, error handlers, rate limit, CORS and static files."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from tradepulse.api import errors
from tradepulse.api.deps import ApiContext, QueryFn
from tradepulse.api.ratelimit import FixedWindowLimiter, RateLimitMiddleware, parse_networks
from tradepulse.api.routes import (
    aggregations,
    anomalies,
    dashboard,
    features,
    metrics,
    quotes,
    sentiment,
    stream,
)
from tradepulse.api.routes import health as health_route
from tradepulse.api.stream import Broadcaster
from tradepulse.config import Settings
from tradepulse.ops.health import HealthMonitor
from tradepulse.store.base import HotReader

# First path segments that count against the per-client budget. /health, /metrics, the
# dashboard page, its static files and /docs are exempt (see docs/api.md).
RATE_LIMITED = frozenset({"quotes", "aggregations", "anomalies", "features", "sentiment", "stream"})

DESCRIPTION = """Live trades, features, anomalies and news sentiment from the TradePulse pipeline.

Tickers are case-insensitive (returned upper-case). Times are ISO-8601 UTC plus Unix ns.
Errors are `{"detail": "..."}`. Data endpoints are limited per client address
(`X-RateLimit-*` headers, 429 with `Retry-After`) and need `X-API-Key` when keys are set."""


def create_app(
    settings: Settings,
    reader: HotReader,
    health: HealthMonitor,
    broadcaster: Broadcaster,
    query: QueryFn | None = None,
) -> FastAPI:
    """Build the app over any hot-store reader; `query(sql)` serves look-backs beyond 48 h."""
    app = FastAPI(
        title="TradePulse API",
        version="1.0.0",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.ctx = ApiContext(settings, reader, health, broadcaster, query)
    errors.install(app)
    for module in (
        quotes,
        aggregations,
        anomalies,
        features,
        sentiment,
        health_route,
        metrics,
        stream,
    ):
        app.include_router(module.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")

    # Middleware added later runs earlier. The limiter runs before any route, so a refused
    # request costs no store read; CORS wraps it so browsers can read 429s and preflights
    # (OPTIONS) are answered without spending the client's budget.
    app.add_middleware(
        RateLimitMiddleware,
        limiter=FixedWindowLimiter(settings.rate_limit_per_min),
        prefixes=RATE_LIMITED,
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["X-API-Key"],
            expose_headers=[
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
        )
    return app
