"""GET /anomalies/{ticker}?hours=24: flagged events, newest first (not cached)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from tradepulse.api import service
from tradepulse.api.deps import Ctx, Ticker, cache_headers, require_api_key
from tradepulse.api.models import DATA_ERRORS, Anomalies

router = APIRouter(tags=["analytics"], dependencies=[Depends(require_api_key)])


@router.get(
    "/anomalies/{ticker}",
    response_model=Anomalies,
    responses=DATA_ERRORS,
    dependencies=[Depends(cache_headers(0))],
    summary="Anomalies of the last N hours (beyond 48 h read from the cold store)",
)
def get_anomalies(
    ctx: Ctx,
    ticker: Ticker,
    hours: Annotated[int, Query(ge=1, le=168, description="Look-back in hours")] = 24,
    limit: Annotated[int, Query(ge=1, le=service.MAX_ROWS, description="Most rows")] = 500,
) -> Anomalies:
    return service.get_anomalies(ctx, ticker, hours, limit)
