"""APIError: a failure already phrased for an HTTP client (status, message, code); each face renders it."""

from __future__ import annotations

import errno

from utter_tts.textcheck import printable

# OpenAI's error `type` for a status (its SDKs map the pair to their exception classes).
TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error with its HTTP status, already phrased for the client."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        type: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        # Messages and params may quote what the caller sent, lone surrogates included: keep them sendable.
        self.message = printable(message)
        self.code = code
        self.param = None if param is None else printable(param)
        self.headers = headers or {}
        self.type = type or TYPE_BY_STATUS.get(status, "invalid_request_error")


def device_fault_error(retry_after_s: int) -> APIError:
    """What a client learns when the server's GPU failed for good: retry (another process, soon)."""
    return APIError(
        503,
        "the server's GPU failed; it is restarting: retry shortly",
        "device_fault",
        headers={"Retry-After": str(retry_after_s)},
    )


# Storage failures a client can be told of: the server's disk is full (507) or cannot be written (503).
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(e: BaseException) -> APIError | None:
    """A write that failed for lack of space or permission (OSError, or SQLite's words for them), as what
    the client is told; None for any other error. The data already stored is untouched by such a failure
    (every write is whole-or-nothing), which the message says so a client can retry safely later."""
    number = e.errno if isinstance(e, OSError) else None
    text = str(e).lower()
    if number in _DISK_FULL or "database or disk is full" in text:
        why, status, code = "the server's disk is full", 507, "insufficient_storage"
    elif number in _READ_ONLY or "readonly database" in text or "read-only file system" in text:
        why, status, code = "the server's data directory cannot be written", 503, "storage_unavailable"
    else:
        return None
    return APIError(
        status, f"{why}; nothing was stored and what was stored is intact: retry later", code,
        headers={"Retry-After": "30"},
    )  # fmt: skip


def internal_error() -> APIError:
    """What a client learns of a fault of ours: nothing about it."""
    return APIError(500, "internal server error", "internal_error")
