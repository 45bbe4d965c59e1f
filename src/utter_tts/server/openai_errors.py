"""OpenAI-style error bodies and the mapping from our exceptions to HTTP statuses."""

from __future__ import annotations

import logging
import re
import sqlite3
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from utter_tts.errors import InvalidInput
from utter_tts.service.http_errors import APIError, internal_error, storage_error

log = logging.getLogger("utter_tts.server")

# A client's own x-request-id is echoed only when it is a plain token: it goes into a header and the log.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id(sent: str | None) -> str:
    """The id a response (or a WebSocket handshake) carries: the client's x-request-id when it is a plain
    token, else a new one."""
    if sent is not None and REQUEST_ID.fullmatch(sent):
        return sent
    return f"req_{uuid.uuid4().hex}"


# Codes whose HTTP status is not the default 400.
STATUS_BY_CODE = {
    "model_not_found": 404,
    "voice_name_taken": 409,
    "voice_limit_reached": 403,
    "job_limit_reached": 429,
    "upload_too_large": 413,
    "length_required": 411,
    "job_not_found": 404,
    "job_not_finished": 409,
    "job_failed": 409,
}


def from_invalid_input(e: InvalidInput) -> APIError:
    """Map an InvalidInput from the API or the library to its status (404 for a missing path id)."""
    status = STATUS_BY_CODE.get(e.code, 400)
    if e.code == "voice_not_found" and e.param == "voice_id":
        status = 404
    return APIError(status, e.message, e.code, e.param)


def as_api_error(e: Exception, failed: str) -> APIError:
    """Any exception as what the client is told: ours as they are, a fault of ours logged (`failed` says
    what failed) and told as an internal error."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, InvalidInput):
        return from_invalid_input(e)
    if isinstance(e, ValidationError):
        return validation_error(RequestValidationError(e.errors()))
    storage = storage_error(e)
    if storage is not None:
        log.error("%s: %s", failed, e)
        return storage
    log.error(failed, exc_info=e)
    return internal_error()


def error_body(err: APIError) -> dict:
    """The JSON body OpenAI's SDKs parse into their APIError types."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_response(err: APIError, request: Request | None = None) -> JSONResponse:
    state = getattr(request.app.state, "server", None) if request is not None else None
    if state is not None:
        state.metrics.errors.labels(code=err.code).inc()
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    kind = first.get("type", "")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
    if kind == "json_invalid":
        return APIError(400, "the request body is not valid JSON", "invalid_json")
    if not loc:
        # The body as a whole is wrong: missing, or JSON that is not an object.
        return APIError(400, "the request body must be a JSON object", "invalid_json")
    # `param` is the top-level field, as in OpenAI's errors ("voice", not "voice.VoiceRef.id").
    param = loc[0]
    if kind == "missing" and len(loc) == 1:
        code = "missing_required_parameter"
    elif kind == "extra_forbidden" and len(loc) == 1:
        code = "unknown_parameter"
    elif kind.endswith("_type") or kind.endswith("_parsing") or len(loc) > 1:
        code = "invalid_type"
    else:
        code = "invalid_value"
    msg = first.get("msg", "invalid value")
    return APIError(400, f"{param}: {msg}", code, param)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as an OpenAI-style JSON body; internal faults say nothing about themselves."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc, request)

    @app.exception_handler(InvalidInput)
    async def _invalid_input(request: Request, exc: InvalidInput):
        return error_response(from_invalid_input(exc), request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(validation_error(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return error_response(
            APIError(exc.status_code, message, code, headers=getattr(exc, "headers", None)), request
        )

    async def _failed(request: Request, exc: Exception):
        rid = getattr(request.state, "request_id", None)
        err = as_api_error(exc, f"internal error on {request.method} {request.url.path} (request {rid})")
        response = error_response(err, request)
        if rid is not None:  # the catch-all is answered outside the app's middleware: carry its id over
            response.headers["X-Request-Id"] = rid
        return response

    # Storage failures (a full disk, a read-only directory: 507 / 503) are answered like the other
    # handled errors; the catch-all below would also re-raise them to the server, which then drops the
    # connection a client may still be using.
    app.add_exception_handler(OSError, _failed)
    app.add_exception_handler(sqlite3.Error, _failed)
    app.add_exception_handler(Exception, _failed)
