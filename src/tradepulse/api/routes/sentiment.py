"""GET /sentiment/{ticker}?hours=24: scored headlines and their volume correlation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from tradepulse.api import service
from tradepulse.api.deps import Ctx, Ticker, cache_headers, require_api_key
from tradepulse.api.models import DATA_ERRORS, Sentiment

router = APIRouter(tags=["news"], dependencies=[Depends(require_api_key)])


@router.get(
    "/sentiment/{ticker}",
    response_model=Sentiment,
    responses=DATA_ERRORS,
    dependencies=[Depends(cache_headers(0))],
    summary="Headlines of the last N hours with sentiment and correlation strength",
)
def get_sentiment(
    ctx: Ctx,
    ticker: Ticker,
    hours: Annotated[int, Query(ge=1, le=168, description="Look-back in hours")] = 24,
    limit: Annotated[int, Query(ge=1, le=service.MAX_ROWS, description="Most rows")] = 200,
) -> Sentiment:
    return service.get_sentiment(ctx, ticker, hours, limit)
