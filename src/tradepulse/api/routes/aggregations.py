"""GET /aggregations/{ticker}: VWAPs, rolling averages, z-score, momentum (cached 5 s)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tradepulse.api import service
from tradepulse.api.deps import Ctx, Ticker, cache_headers, require_api_key
from tradepulse.api.models import DATA_ERRORS, Aggregations

router = APIRouter(tags=["market"], dependencies=[Depends(require_api_key)])


@router.get(
    "/aggregations/{ticker}",
    response_model=Aggregations,
    responses=DATA_ERRORS,
    dependencies=[Depends(cache_headers(service.AGGREGATIONS_TTL_S))],
    summary="VWAP, rolling price averages, volume z-score and momentum with their windows",
)
def get_aggregations(ctx: Ctx, ticker: Ticker) -> Aggregations:
    return service.get_aggregations(ctx, ticker)
