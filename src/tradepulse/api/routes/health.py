"""GET /health: pipeline status (not rate limited, no API key; holds no secrets)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tradepulse.api.deps import Ctx, cache_headers
from tradepulse.api.models import Health

router = APIRouter(tags=["ops"])


@router.get(
    "/health",
    response_model=Health,
    dependencies=[Depends(cache_headers(0))],
    summary="healthy | degraded | unhealthy, with lag, write p99 and uptime",
)
def get_health(ctx: Ctx) -> Health:
    return Health.model_validate(ctx.health.snapshot())
