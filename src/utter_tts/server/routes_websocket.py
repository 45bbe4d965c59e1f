"""WS /v1/audio/speech/stream: text arrives piece by piece, audio for each finished sentence streams back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from utter_tts.errors import InvalidInput
from utter_tts.server.errors import (
    APIError,
    _validation_error,
    error_body,
    from_invalid_input,
    internal_error,
)
from utter_tts.server.routes_speech import planner_args, stream_encoder
from utter_tts.server.schemas import WsStart
from utter_tts.server.streaming import Generation
from utter_tts.server.synthesis import SentenceBuffer
from utter_tts.textcheck import check_text

log = logging.getLogger("utter_tts.server")
router = APIRouter()

# Closing codes: 1000 done, 1008 policy (auth, bad input), 1011 internal error, 1013 try again later.
CLOSE_FOR_STATUS = {401: 1008, 429: 1013, 503: 1013, 500: 1011}


def _as_api_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, InvalidInput):
        return from_invalid_input(e)
    if isinstance(e, ValidationError):
        from fastapi.exceptions import RequestValidationError

        return _validation_error(RequestValidationError(e.errors()))
    log.exception("websocket session failed", exc_info=e)
    return internal_error()


async def _fail(ws: WebSocket, e: Exception) -> None:
    err = _as_api_error(e)
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "error", **error_body(err)})
        await ws.close(CLOSE_FOR_STATUS.get(err.status, 1008 if err.status < 500 else 1011))


def _split_long(sentence: str, limit: int) -> list[str]:
    """A run-on "sentence" longer than the limit is cut at spaces, so a chatty LLM cannot hit it."""
    out = []
    while len(sentence) > limit:
        cut = sentence.rfind(" ", 0, limit)
        cut = cut if cut > 0 else limit
        out.append(sentence[:cut])
        sentence = sentence[cut:].strip()
    return out + ([sentence] if sentence else [])


async def _receive_text(ws: WebSocket) -> str:
    """The next text message; a binary one is the client's mistake, not a server fault."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise InvalidInput("send JSON text messages, not binary ones", param="type", code="invalid_message")
    return message["text"]


@router.websocket("/v1/audio/speech/stream")
async def speech_stream(ws: WebSocket):
    state = ws.app.state.server
    await ws.accept()
    encoder = None
    try:
        state.require_ready()
        owner = state.keys.owner(ws)
        start = WsStart.model_validate_json(await _receive_text(ws))
        encoder = stream_encoder(state, start)
        # One seed for the whole session: with the voice fixed up front, every sentence sounds alike.
        seed = start.seed if start.seed is not None else secrets.randbits(62)
        args = {**planner_args(start), "seed": seed}
        base_plan = await run_in_threadpool(state.planner.plan, owner, text="placeholder", **args)
        await ws.send_json(
            {
                "type": "session.started",
                "model": base_plan.model.id,
                "mode": base_plan.mode,
                "response_format": encoder.format.name,
                "sample_rate": encoder.sample_rate,
                "seed": seed,
            }
        )
    except WebSocketDisconnect:
        if encoder is not None:
            encoder.close()
        return
    except Exception as e:
        if encoder is not None:
            encoder.close()
        await _fail(ws, e)
        return

    sentences: asyncio.Queue = asyncio.Queue()
    limit = state.config.max_input_chars
    sending = asyncio.Lock()  # the receiver's error events and the speaker's audio share the socket

    async def send(message: dict | bytes) -> None:
        async with sending:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_json(message)

    async def refuse(e: InvalidInput) -> None:
        """A bad message or sentence is the client's to fix: say so, and keep the session going."""
        await send({"type": "error", **error_body(from_invalid_input(e))})

    def appended_text(raw: str) -> str | None:
        """The text of an input.append message; None for input.flush; InvalidInput for anything else."""
        try:
            msg = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidInput("messages must be JSON objects", param="type", code="invalid_json") from None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "input.flush":
            return None
        if kind != "input.append":
            raise InvalidInput(
                f"unknown message type {kind!r}; use input.append or input.flush",
                param="type",
                code="unknown_message",
            )
        # Pieces may be blank (" " between an LLM's tokens); whole sentences are checked when planned.
        return check_text(msg.get("text"), "text", allow_empty=True, no_markup=True)

    async def receive() -> None:
        buffer = SentenceBuffer()
        while True:
            try:
                text = appended_text(await _receive_text(ws))
            except InvalidInput as e:
                await refuse(e)
                continue
            if text is None:
                for s in buffer.flush():
                    for piece in _split_long(s, limit):
                        await sentences.put(piece)
                await sentences.put(None)
                return
            for s in buffer.feed(text):
                for piece in _split_long(s, limit):
                    await sentences.put(piece)
            if len(buffer.pending) > limit:
                for piece in _split_long(buffer.pending, limit)[:-1]:
                    await sentences.put(piece)
                buffer.pending = _split_long(buffer.pending, limit)[-1]

    async def speak() -> None:
        index = 0
        while True:
            sentence = await sentences.get()
            if sentence is None:
                break
            try:
                plan = await run_in_threadpool(
                    state.planner.plan, owner, text=sentence, text_param="text", **args
                )
            except InvalidInput as e:  # e.g. a special-token string split across two appends
                await refuse(e)
                continue
            await send({"type": "sentence.start", "index": index, "text": sentence})
            generation = Generation(state, plan, owner)
            await generation.start()
            try:
                async for chunk in generation.chunks():
                    data = encoder.feed(chunk)
                    if data:
                        await send(data)
            finally:
                await generation.aclose()
            await send(
                {
                    "type": "sentence.done",
                    "index": index,
                    "audio_seconds": round(generation.samples / state.sample_rate, 3),
                }
            )
            index += 1
        tail = encoder.finish()
        if tail:
            await send(tail)
        await send({"type": "session.done", "sentences": index})
        await ws.close(1000)

    receiver = asyncio.create_task(receive())
    speaker = asyncio.create_task(speak())
    try:
        done, _ = await asyncio.wait({receiver, speaker}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
        await speaker
    except WebSocketDisconnect:
        pass
    except Exception as e:
        await _fail(ws, e)
    finally:
        for task in (receiver, speaker):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(receiver, speaker, return_exceptions=True)
        encoder.close()
