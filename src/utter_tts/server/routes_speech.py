"""POST /v1/audio/speech: OpenAI-compatible speech, as chunked audio or as server-sent events."""

from __future__ import annotations

import base64
import json
import logging
import time

import anyio
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from utter_tts.audio.encode import AudioEncoder
from utter_tts.server.openai_errors import error_body
from utter_tts.server.planner import FRAME_RATE_HZ
from utter_tts.server.schemas import SpeechRequest
from utter_tts.server.streaming import CancellingStreamingResponse, SpeechStream, WholeFileResponse
from utter_tts.service.http_errors import APIError, internal_error

log = logging.getLogger("utter_tts.server")
router = APIRouter()


def state_of(request) -> object:
    return request.app.state.server


def casting_args(body) -> dict:
    """The arguments of `Planner.cast` that a speech request's fields (or a WebSocket's start) give."""
    return dict(
        model=body.model,
        voice=body.voice_name,
        instructions=body.instructions,
        language=body.language,
        ref_audio=body.ref_audio,
        ref_text=body.ref_text,
    )


def casting_headers(casting) -> dict[str, str]:
    """What the response tells of how the voice was cast: the instructions it dropped, and why."""
    if casting.instructions_ignored is None:
        return {}
    return {"X-Utter-Instructions-Ignored": casting.instructions_ignored}


def stream_encoder(state, body, streaming: bool = True) -> AudioEncoder:
    """The encoder the request's output settings ask for; building it validates them, so do it before
    any work is queued. Not `streaming`: all bytes at the end, headers with exact sizes."""
    return AudioEncoder(
        body.response_format,
        input_rate=state.sample_rate,
        sample_rate=body.sample_rate,
        speed=body.speed,
        streaming=streaming,
    )


async def plan_speech(state, owner: str, body: SpeechRequest, **limits):
    """Resolve the request into a plan; library reads and reference probing run off the event loop.
    `limits` go to the planner as they are (long jobs pass their own `max_chars`)."""
    return await run_in_threadpool(
        state.planner.plan,
        owner,
        text=body.input,
        seed=body.seed,
        sampling=body.settings(),
        **casting_args(body),
        **limits,
    )


@router.post("/v1/audio/speech")
async def create_speech(request: Request, body: SpeechRequest):
    state = state_of(request)
    started = time.monotonic()
    state.require_ready()
    owner = state.keys.owner(request)
    if body.stream is False and body.stream_format == "sse":
        raise APIError(400, "stream_format sse is a stream; drop stream: false", "invalid_value", "stream")
    encoder = stream_encoder(state, body, streaming=body.streamed)
    plan = await plan_speech(state, owner, body)
    speech = SpeechStream(state, plan, owner, started)
    try:
        await speech.start()
    except BaseException:
        encoder.close()
        raise
    fmt = encoder.format
    headers = {"X-Utter-Model": plan.model.id, "Cache-Control": "no-store", **casting_headers(plan.casting)}
    if body.stream_format == "sse":
        return CancellingStreamingResponse(
            _sse_body(speech, encoder, body), media_type="text/event-stream", headers=headers
        )
    headers["Content-Disposition"] = f'inline; filename="speech.{fmt.extension}"'
    if not body.streamed:
        return WholeFileResponse(lambda: _whole_file(speech, encoder), fmt.media_type, headers)
    return CancellingStreamingResponse(
        _audio_body(speech, encoder), media_type=fmt.media_type, headers=headers
    )


async def _whole_file(speech: SpeechStream, encoder: AudioEncoder) -> bytes:
    try:
        async for _ in speech.encoded(encoder):
            pass  # a whole-file encoder hands out nothing before finish()
        return encoder.finish()
    finally:
        encoder.close()
        with anyio.CancelScope(shield=True):  # a client that left cancelled us: still free the slot
            await speech.aclose()


async def _audio_body(speech: SpeechStream, encoder: AudioEncoder):
    try:
        async for data in speech.encoded(encoder):
            yield data
        tail = encoder.finish()
        if tail:
            yield tail
    except Exception:
        # Headers are gone already: the only honest signal left is to break the connection, so the
        # client sees a failed transfer rather than a short but "complete" file.
        log.exception("generation failed mid-stream")
        raise
    finally:
        encoder.close()
        await speech.aclose()


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def _sse_audio(data: bytes) -> bytes:
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})


async def _sse_body(speech: SpeechStream, encoder: AudioEncoder, body: SpeechRequest):
    try:
        try:
            async for data in speech.encoded(encoder):
                yield _sse_audio(data)
            tail = encoder.finish()
            if tail:
                yield _sse_audio(tail)
        except APIError as e:
            yield _sse({"type": "error", **error_body(e)})
            return
        except Exception:
            log.exception("generation failed mid-stream")
            yield _sse({"type": "error", **error_body(internal_error())})
            return
        chars = len(body.input)
        frames = int(round(speech.samples / speech.state.sample_rate * FRAME_RATE_HZ))
        usage = {"input_tokens": chars, "output_tokens": frames, "total_tokens": chars + frames}
        yield _sse({"type": "speech.audio.done", "usage": usage})
    finally:
        encoder.close()
        await speech.aclose()
