"""A cap on request body size, enforced while the body streams in (Content-Length or chunked)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utter_tts.server.errors import APIError, error_body


class BodyLimit:
    """Answers 413 before reading a body whose declared length is over the cap, and stops reading one
    that grows past it (chunked uploads have no length to check up front)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, limited, send)

    async def _reject(self, send: Send) -> None:
        import json

        body = json.dumps(error_body(too_large(self.max_bytes))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than the {limit} byte limit", "request_too_large")
