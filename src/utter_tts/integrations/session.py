"""A client of WS /v1/audio/speech/stream: one live session, text in as it is written, PCM out as made."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

log = logging.getLogger("utter_tts.integrations")

PATH = "/v1/audio/speech/stream"
SAMPLE_RATE = 24000  # the model's rate: what pcm comes at unless the session asks for another
# The server's closing codes: 1008 the caller's mistake (auth, bad input), 1011 its own fault, 1013 busy
STATUS_FOR_CLOSE = {1008: 400, 1011: 500, 1013: 503}


class SessionError(Exception):
    """The server refused or ended a session: `status` is the HTTP-like status, `code` the error code."""

    def __init__(self, message: str, status: int = 500, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.status >= 500  # 503 busy, 500 a fault; a 4xx would fail the same way again


def ws_url(base_url: str) -> str:
    """The session URL for a server's base URL (`http://host:8000`, or its OpenAI-style `.../v1`)."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(http):
            url = ws + url[len(http) :]
    return url + PATH


class SpeechSession:
    """One session in live text mode: `append` pieces as an LLM writes them, `flush` at the end of the text;
    `audio()` yields 16-bit mono PCM as the server makes it, from the first final words on."""

    def __init__(self, ws: ClientConnection, started: dict[str, Any]):
        self.ws = ws
        self.started = started
        self.sample_rate: int = started["sample_rate"]
        self.done: dict[str, Any] | None = None  # the session.done event, once it came
        self._errors: list[dict[str, Any]] = []

    @classmethod
    async def open(
        cls,
        base_url: str,
        *,
        api_key: str | None = None,
        voice: str,
        model: str = "auto",
        language: str = "auto",
        instructions: str | None = None,
        seed: int | None = None,
        sample_rate: int | None = None,
        text_mode: str = "live",
        extra: dict[str, Any] | None = None,
        open_timeout: float = 30.0,
    ) -> SpeechSession:
        """Connect, send session.start and wait for session.started; SessionError if the server refuses."""
        key = api_key if api_key is not None else os.environ.get("UTTER_TTS_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        start: dict[str, Any] = {
            "type": "session.start",
            "model": model,
            "voice": voice,
            "language": language,
            "response_format": "pcm",
            "text_mode": text_mode,
        }
        optional = {"instructions": instructions, "seed": seed, "sample_rate": sample_rate}
        start.update({k: v for k, v in optional.items() if v is not None})
        start.update(extra or {})
        try:
            # No compression: PCM barely shrinks, and deflating it costs time on every chunk.
            ws = await connect(
                ws_url(base_url),
                additional_headers=headers,
                open_timeout=open_timeout,
                compression=None,
                max_size=None,
            )
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
            raise SessionError(f"cannot reach utter-tts: {e}", status=503, code="unreachable") from e
        try:
            await ws.send(json.dumps(start))
            first = json.loads(await asyncio.wait_for(ws.recv(), timeout=open_timeout))
        except ConnectionClosed as e:
            raise _closed_error(e.rcvd.code if e.rcvd else 1006, None) from e
        except asyncio.TimeoutError as e:  # not yet the built-in TimeoutError on Python 3.10
            await ws.close()
            raise SessionError("utter-tts did not start the session in time", 504, "timeout") from e
        except BaseException:
            await ws.close()
            raise
        if first.get("type") != "session.started":
            await ws.close()  # the server closes after its error event; this waits for its code
            raise _closed_error(ws.close_code or 1008, first)
        return cls(ws, first)

    async def append(self, text: str) -> None:
        """One more piece of the text; ignored once the session has ended (a generation capped before its
        text ended says session.done early)."""
        if not text:
            return
        try:
            await self.ws.send(json.dumps({"type": "input.append", "text": text}))
        except ConnectionClosed:
            pass  # audio() reports how the session ended

    async def flush(self) -> None:
        """The end of the text: the rest of the audio follows, then session.done."""
        try:
            await self.ws.send(json.dumps({"type": "input.flush"}))
        except ConnectionClosed:
            pass

    async def audio(self) -> AsyncIterator[bytes]:
        """PCM chunks (whole samples) as they arrive, up to session.done; SessionError if the session
        ends otherwise. A refused piece of text (an error event the session survives) is logged."""
        carry = b""
        while True:
            try:
                msg = await self.ws.recv()
            except ConnectionClosed as e:
                if self.done is not None:
                    return
                last = self._errors[-1] if self._errors else None
                raise _closed_error(e.rcvd.code if e.rcvd else 1006, last) from None
            if isinstance(msg, bytes):
                data = carry + msg
                cut = len(data) - len(data) % 2  # a chunk may split a 16-bit sample
                carry = data[cut:]
                if cut:
                    yield data[:cut]
                continue
            event = json.loads(msg)
            kind = event.get("type")
            if kind == "session.done":
                self.done = event
                return
            if kind == "error":
                self._errors.append(event)
                log.warning("utter-tts: %s", event.get("error", {}).get("message"))

    async def aclose(self) -> None:
        """Leave the session; the server cancels a generation still running."""
        await self.ws.close()


def _closed_error(close_code: int, event: dict[str, Any] | None) -> SessionError:
    error = (event or {}).get("error") or {}
    status = STATUS_FOR_CLOSE.get(close_code, 500)
    message = error.get("message") or f"the session closed with code {close_code}"
    return SessionError(message, status=status, code=error.get("code"))
