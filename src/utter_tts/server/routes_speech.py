"""POST /v1/audio/speech: OpenAI-compatible speech, as chunked audio or as server-sent events."""

from __future__ import annotations

import base64
import json
import logging
import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from utter_tts.audio.encode import AudioEncoder
from utter_tts.server.errors import APIError, error_body, internal_error
from utter_tts.server.schemas import SpeechRequest
from utter_tts.server.streaming import CancellingStreamingResponse, Generation

log = logging.getLogger("utter_tts.server")
router = APIRouter()


def state_of(request) -> object:
    return request.app.state.server


def planner_args(body) -> dict:
    """The planner's arguments that a speech request's fields give (its text and limits come apart:
    the WebSocket plans sentence by sentence)."""
    return dict(
        model=body.model,
        voice=body.voice_name,
        instructions=body.instructions,
        language=body.language,
        seed=body.seed,
        sampling=body.settings(),
        ref_audio=body.ref_audio,
        ref_text=body.ref_text,
    )


def stream_encoder(state, body) -> AudioEncoder:
    """The streaming encoder the request's output settings ask for; building it validates them, so do it
    before any work is queued."""
    return AudioEncoder(
        body.response_format,
        input_rate=state.sample_rate,
        sample_rate=body.sample_rate,
        speed=body.speed,
        streaming=True,
    )


async def plan_speech(state, owner: str, body: SpeechRequest, **limits):
    """Resolve the request into a plan; library reads and reference probing run off the event loop.
    `limits` go to the planner as they are (long jobs pass their own `max_chars`)."""
    return await run_in_threadpool(state.planner.plan, owner, text=body.input, **planner_args(body), **limits)


@router.post("/v1/audio/speech")
async def create_speech(request: Request, body: SpeechRequest):
    state = state_of(request)
    started = time.monotonic()
    state.require_ready()
    owner = state.keys.owner(request)
    encoder = stream_encoder(state, body)
    plan = await plan_speech(state, owner, body)
    generation = Generation(state, plan, owner, started)
    try:
        await generation.start()
    except BaseException:
        encoder.close()
        raise
    fmt = encoder.format
    headers = {"X-Utter-Model": plan.model.id, "Cache-Control": "no-store"}
    if body.stream_format == "sse":
        return CancellingStreamingResponse(
            _sse_body(generation, encoder, body), media_type="text/event-stream", headers=headers
        )
    headers["Content-Disposition"] = f'inline; filename="speech.{fmt.extension}"'
    return CancellingStreamingResponse(
        _audio_body(generation, encoder), media_type=fmt.media_type, headers=headers
    )


async def _audio_body(generation: Generation, encoder: AudioEncoder):
    try:
        async for chunk in generation.chunks():
            data = encoder.feed(chunk)
            if data:
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
        await generation.aclose()


def _sse(event: dict) -> bytes:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def _sse_body(generation: Generation, encoder: AudioEncoder, body: SpeechRequest):
    try:
        try:
            async for chunk in generation.chunks():
                data = encoder.feed(chunk)
                if data:
                    yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
            tail = encoder.finish()
            if tail:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(tail).decode()})
        except APIError as e:
            yield _sse({"type": "error", **error_body(e)})
            return
        except Exception:
            log.exception("generation failed mid-stream")
            yield _sse({"type": "error", **error_body(internal_error())})
            return
        chars = len(body.input)
        frames = int(round(generation.samples / generation.state.sample_rate * 12.5))
        usage = {"input_tokens": chars, "output_tokens": frames, "total_tokens": chars + frames}
        yield _sse({"type": "speech.audio.done", "usage": usage})
    finally:
        encoder.close()
        await generation.aclose()
