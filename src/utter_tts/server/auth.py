"""Bearer API keys: who is calling, as the hashed owner id the voice library stores."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from utter_tts.server.errors import APIError
from utter_tts.voices.library import owner_for_key


class KeyChecker:
    """Checks `Authorization: Bearer <key>` against the configured keys in constant time."""

    def __init__(self, keys: list[str], enabled: bool):
        self.keys = [k.encode() for k in keys]
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
        # Compare against every key so the time taken does not tell which one came close.
        ok = False
        for known in self.keys:
            ok |= hmac.compare_digest(known, key.encode())
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
