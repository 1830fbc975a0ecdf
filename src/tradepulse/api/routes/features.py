"""GET /features/{ticker}: the current 6-feature vector (cached 1 s)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tradepulse.api import service
from tradepulse.api.deps import Ctx, Ticker, cache_headers, require_api_key
from tradepulse.api.models import DATA_ERRORS, Features

router = APIRouter(tags=["analytics"], dependencies=[Depends(require_api_key)])


@router.get(
    "/features/{ticker}",
    response_model=Features,
    responses=DATA_ERRORS,
    dependencies=[Depends(cache_headers(service.FEATURES_TTL_S))],
    summary="The anomaly model's 6 inputs at the latest trade",
)
def get_features(ctx: Ctx, ticker: Ticker) -> Features:
    return service.get_features(ctx, ticker)
