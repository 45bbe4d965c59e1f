"""APIError: a failure already phrased for an HTTP client (status, message, code); each face renders it."""

from __future__ import annotations

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


def internal_error() -> APIError:
    """What a client learns of a fault of ours: nothing about it."""
    return APIError(500, "internal server error", "internal_error")
