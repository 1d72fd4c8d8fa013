"""The one map from M99's errors to HTTP: each class has its status here and nowhere else, and every
error answer has the same JSON shape, ``{"error": {"code", "message", ...}}``, never a stack trace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from ..errors import (
    BadRequest,
    ConfigError,
    Conflict,
    ControlPlaneError,
    ControlPlaneUnreachable,
    M99Error,
    NotAuthorised,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from ..store import StoreError

__all__ = ["STATUS", "error_response", "json_error", "status_of", "validation_response"]

# Most specific first: the first class an error is an instance of gives its status.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (Unauthenticated, 401),
    (NotAuthorised, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RateLimited, 429),
    (BadRequest, 400),
    (ControlPlaneUnreachable, 503),
    (StoreError, 503),
    (ConfigError, 500),
    (ControlPlaneError, 500),
    (M99Error, 500),
)


def status_of(exc: Exception) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def json_error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def error_response(exc: Exception) -> JSONResponse:
    status = status_of(exc)
    if isinstance(exc, StoreError):
        return json_error(status, "store_unavailable", "the control plane's database is not reachable; retry")
    code = getattr(exc, "code", "") or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(exc, RateLimited):
        response = json_error(status, code, message, retry_after=round(exc.retry_after, 3))
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return response
    return json_error(status, code, message)


def validation_response(errors: Sequence[Any]) -> JSONResponse:
    """One readable 4xx for a body that failed its model: 400 for bad JSON, 422 otherwise."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if err.get("type") == "json_invalid":
            return json_error(400, "malformed_json", f"the request body is not valid JSON: {err.get('msg')}")
        problems.append(
            f"{where}: unknown field" if err.get("type") == "extra_forbidden" else f"{where}: {err.get('msg')}"
        )
    return json_error(422, "invalid", "; ".join(problems) or "invalid request", fields=problems)
