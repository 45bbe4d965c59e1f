"""Bearer API keys: who is calling, as the hashed owner id the voice library stores; keys kept out of logs."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

from starlette.requests import HTTPConnection

from utter_tts.service.http_errors import APIError
from utter_tts.voices.library import owner_for_key


class KeyChecker:
    """Checks `Authorization: Bearer <key>` against the configured keys in constant time."""

    def __init__(self, keys: list[str], enabled: bool):
        self.keys = [_digest(k) for k in keys]
        self.enabled = enabled

    def owner(self, conn: HTTPConnection) -> str:
        """The caller's owner id; raises 401 when keys are on and the key is missing or wrong."""
        key = _bearer(conn)
        if not self.enabled:
            # Without auth everyone shares the anonymous owner, whatever key they happen to send.
            return owner_for_key(None)
        if key is None:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                "missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Digests of equal length, compared against every key: the time taken tells neither the length
        # of a key nor which one came close.
        given = _digest(key)
        ok = False
        for known in self.keys:
            ok |= hmac.compare_digest(known, given)
        if not ok:
            raise APIError(401, "invalid API key", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return owner_for_key(key)


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but malformed: treated as a wrong key, not a missing one
    # Browsers cannot set headers on a WebSocket, so the socket route also takes ?api_key=.
    if conn.scope.get("type") == "websocket":
        return conn.query_params.get("api_key") or None
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


# `?api_key=...` (the WebSocket's way to send a key) and the like, as uvicorn writes request lines.
_QUERY_SECRET = re.compile(r"(?i)([?&](?:api[_-]?key|access[_-]?token|token|key)=)[^&\s\"']*")


def redact(text: str) -> str:
    return _QUERY_SECRET.sub(r"\1[redacted]", text)


class RedactKeys(logging.Filter):
    """Rewrites keys in query strings out of a log record (uvicorn logs each request line and each
    WebSocket handshake with its full query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_server_logs() -> None:
    """Install RedactKeys on uvicorn's loggers (once)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
