"""Every error is JSON ``{"detail": "<message>"}`` with ``Cache-Control: no-store``.

Client mistakes map to 4xx (never 500): a malformed ticker or parameter is 422, an unknown
ticker 404, a missing/wrong API key 401. An unexpected server fault is a 500 whose body says
only that; details go to the log, never to the client (they could hold secrets).
"""

from __future__ import annotations

import logging
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def not_found(detail: str) -> ApiError:
    return ApiError(404, detail)


def invalid(detail: str) -> ApiError:
    return ApiError(422, detail)


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"detail": detail},
        status_code=status,
        headers={**(headers or {}), "Cache-Control": "no-store"},
    )


def validation_message(exc: RequestValidationError) -> str:
    """One readable sentence from pydantic's error list, e.g. "query.hours: ... ≤ 168"."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def redact(text: str, app: FastAPI) -> str:
    """Replace every configured secret in `text` (an exception may quote a URL or a key)."""
    ctx = getattr(app.state, "ctx", None)
    for secret in ctx.settings.secrets() if ctx is not None else []:
        text = text.replace(secret, "<redacted>")
    return text


def install(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return _json(exc.status, exc.detail, exc.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _json(422, validation_message(exc))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _json(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        trace = "".join(traceback.format_exception(exc))
        log.error("unhandled API error on %s:\n%s", request.url.path, redact(trace, app))
        return _json(500, "internal error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
