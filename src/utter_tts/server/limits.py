"""A cap on request body size, enforced while the body streams in (Content-Length or chunked)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utter_tts.server.openai_errors import error_body
from utter_tts.service.http_errors import APIError

# An over-limit body up to this size is read and dropped before the 413: a client still sending when
# the server closes gets a connection reset instead of the answer. Larger ones are cut off unread.
DRAIN_BYTES = 64 * 1024 * 1024


class BodyLimit:
    """Answers 413 to a body whose declared length is over the cap without passing it on, and stops
    passing on one that grows past it (chunked uploads have no length to check up front)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = min(DRAIN_BYTES, 4 * max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            if declared.isdigit() and int(declared) <= self.drain_bytes:
                await self._drain(receive, 0)
            await self._reject(send)
            return
        seen, started, rejected = 0, False, False

        async def limited() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if started:  # the app answers while it reads: all that is left is to stop reading
                        raise too_large(self.max_bytes)
                    if message.get("more_body"):
                        await self._drain(receive, seen)
                    # The 413 goes out here: the app's body parser would turn an error raised from
                    # receive() into its own 400. The app sees the client go, and its answer is dropped.
                    await self._reject(send)
                    rejected = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if not rejected:
                started = True
                await send(message)

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not rejected:
                raise

    async def _drain(self, receive: Receive, seen: int) -> None:
        """Read the rest of the body (up to drain_bytes in all) and drop it."""
        while seen <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return

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
