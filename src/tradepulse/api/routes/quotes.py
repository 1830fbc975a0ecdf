"""GET /quotes/{ticker}: the latest trade (cached 1 s)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from tradepulse.api import service
from tradepulse.api.deps import Ctx, Ticker, cache_headers, require_api_key
from tradepulse.api.models import DATA_ERRORS, Quote

router = APIRouter(tags=["market"], dependencies=[Depends(require_api_key)])


@router.get(
    "/quotes/{ticker}",
    response_model=Quote,
    responses=DATA_ERRORS,
    dependencies=[Depends(cache_headers(service.QUOTE_TTL_S))],
    summary="Latest trade: price, session volume, time and sequence number",
)
def get_quote(ctx: Ctx, ticker: Ticker) -> Quote:
    return service.get_quote(ctx, ticker)
