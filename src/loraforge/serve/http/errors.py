"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, for every status.

The official clients read `error.message` and `error.code`; FastAPI's own 404, 405 and 422
bodies (`{"detail": ...}`) are rewritten into the same shape, 422 as 400 like OpenAI answers a
malformed body. A bad request never reaches a 5xx: the catch-all here is for server bugs only.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("loraforge.serve.http")

INVALID = "invalid_request_error"


class ApiError(Exception):
    """An answer other than 200, raised anywhere in a route and rendered by `error_response`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers


def error_body(message: str, type: str = INVALID, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.message, error.type, error.code, error.param), status_code=error.status, headers=error.headers
    )


def model_not_found(model: str) -> ApiError:
    """The one answer for an unknown adapter, a bad name, and one the tenant may not use: the
    body depends only on what the client sent, so it cannot tell which adapters exist."""
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "Missing or unknown API key; send the key your operator gave you as `Authorization: Bearer KEY`.",
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /docs for the API."
        return error_response(
            ApiError(
                exc.status_code,
                message,
                code=_STATUS_CODES.get(exc.status_code),
                headers=dict(exc.headers) if exc.headers else None,
            )  # fmt: skip
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            ApiError(500, "Internal server error; the server log has the details.", type="server_error")
        )


def validation_error(exc: RequestValidationError) -> ApiError:
    """A 400 naming the first bad field as OpenAI does (`param`: `messages.0.role`) and every problem."""
    errors = list(exc.errors())
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    first = errors[0] if errors else {}
    param = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or None
    return ApiError(400, "Invalid request: " + "; ".join(problems), code="invalid_request", param=param)
