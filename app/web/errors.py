"""Render every error in Google's JSON shape: ours, FastAPI's validation, Starlette's HTTP.

Bugs (any other exception) are answered by RequestContextMiddleware, which knows the
request id and sends the same shape.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AppError, InvalidInput

_HTTP_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    413: "OUT_OF_RANGE",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def _json(
    status_code: int, status: str, message: str, details: list[dict] | None = None
) -> JSONResponse:
    body = {
        "error": {
            "code": status_code,
            "status": status,
            "message": message,
            "details": details or [],
        }
    }
    return JSONResponse(body, status_code=status_code)


def _field_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "request")


async def _app_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    violations = [
        {"field": _field_path(tuple(err["loc"])), "description": err["msg"]} for err in exc.errors()
    ]
    message = "; ".join(f"{v['field']}: {v['description']}" for v in violations)
    details = [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}
    ]
    error = InvalidInput(message or "invalid request", details=details)
    return JSONResponse(error.to_body(), status_code=error.status_code)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = _HTTP_STATUS_NAMES.get(
        exc.status_code, "UNKNOWN" if exc.status_code >= 500 else "INVALID_ARGUMENT"
    )
    response = _json(exc.status_code, status, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
