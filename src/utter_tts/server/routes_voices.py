"""Voice library routes: upload a reference, list/get/delete, design previews, save a designed voice."""

from __future__ import annotations

import secrets
import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from utter_tts.audio.encode import AudioEncoder, audio_format, encode
from utter_tts.errors import AudioError, InvalidInput
from utter_tts.pipeline import REF_MIN_SECONDS
from utter_tts.server.schemas import DesignRequest, SaveDesignRequest
from utter_tts.server.streaming import SpeechStream
from utter_tts.service.http_errors import APIError
from utter_tts.voices.library import check_voice_id, check_voice_name

router = APIRouter()

UPLOAD_FIELDS = {"file", "name", "ref_text", "model"}
# Multipart framing and the text fields ride on top of the audio itself.
FORM_OVERHEAD_BYTES = 64 * 1024


# Words the `voice` field already gives a meaning to; a saved voice by these names could not be used.
RESERVED_NAMES = {"design", "clone"}


def _voice_name(name) -> str:
    name = check_voice_name(name)
    if name.lower() in RESERVED_NAMES:
        raise InvalidInput(f"{name!r} is reserved; choose another name", param="name", code="invalid_name")
    return name


def _state(request: Request):
    return request.app.state.server


async def _read_upload(request: Request, limit: int) -> tuple[bytes, dict[str, str], str | None]:
    """The uploaded file and the text fields, with size limits enforced before parsing."""
    length = request.headers.get("content-length")
    if length is None:
        raise APIError(411, "uploads need a Content-Length header", "length_required", param="file")
    if not length.isdigit() or int(length) > limit + FORM_OVERHEAD_BYTES:
        raise APIError(413, f"upload is larger than the {limit} byte limit", "upload_too_large", param="file")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput(
            "send the reference as multipart/form-data", param="file", code="invalid_content_type"
        )
    try:
        form = await request.form(
            max_files=1, max_fields=len(UPLOAD_FIELDS), max_part_size=FORM_OVERHEAD_BYTES
        )
    except APIError:
        raise
    except Exception as e:  # malformed multipart bodies raise several parser errors
        raise InvalidInput(f"could not parse the form: {e}", param="file", code="invalid_form") from None
    try:
        unknown = sorted(set(form.keys()) - UPLOAD_FIELDS)
        if unknown:
            raise InvalidInput(
                f"unknown form field {unknown[0]!r}", param=unknown[0], code="unknown_parameter"
            )
        upload = form.get("file")
        if upload is None:
            raise InvalidInput(
                "form field 'file' (the reference audio) is required",
                param="file",
                code="missing_required_parameter",
            )
        if not isinstance(upload, UploadFile):
            raise InvalidInput("'file' must be a file upload", param="file", code="invalid_type")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise APIError(
                413, f"upload is larger than the {limit} byte limit", "upload_too_large", param="file"
            )
        if not data:
            raise AudioError("the uploaded file is empty", param="file", code="empty_file")
        fields = {}
        for key in UPLOAD_FIELDS - {"file"}:
            value = form.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"{key} must be a text field", param=key, code="invalid_type")
            if value is not None:
                fields[key] = value
        return data, fields, upload.filename
    finally:
        await form.close()


@router.post("/v1/voices", status_code=201)
async def create_voice(request: Request):
    """Upload reference audio (+ optional transcript and name); stores a clone voice."""
    state = _state(request)
    state.require_ready()
    owner = state.keys.owner(request)
    data, fields, filename = await _read_upload(request, state.config.max_upload_bytes)
    default_name = (filename or "").rsplit(".", 1)[0] or f"voice {time.strftime('%Y-%m-%d %H:%M:%S')}"
    name = _voice_name(fields.get("name", default_name))
    ref_text = fields.get("ref_text")
    if ref_text is not None:
        ref_text = state.planner.optional_text(ref_text, "ref_text")
    model = state.registry.pick(fields.get("model"), "base")
    if await run_in_threadpool(state.library.find, owner, name) is not None:
        raise InvalidInput(f"you already have a voice named {name!r}", param="name", code="voice_name_taken")
    seconds = await run_in_threadpool(state.planner.check_reference, data, "file")
    try:
        voice = await state.pool.run(lambda: model.tts.create_voice(data, ref_text=ref_text))
    except AudioError as e:
        e.param = "file"  # the API names its argument ref_audio; here the client sent a form field
        raise
    meta = {"model": model.id, "ref_seconds": round(seconds, 3), "filename": (filename or "")[:200]}
    record = await run_in_threadpool(state.library.create, owner, voice, name, "upload", meta)
    return JSONResponse(record.public(), status_code=201)


@router.get("/v1/voices")
async def list_voices(request: Request):
    state = _state(request)
    owner = state.keys.owner(request)
    records = await run_in_threadpool(state.library.list, owner)
    presets = [
        {"id": spk, "object": "voice", "name": spk, "source": "preset", "model": m.id}
        for m in state.registry.of_type("custom_voice")
        for spk in m.speakers
    ]
    return {"object": "list", "data": [r.public() for r in records], "presets": presets}


@router.get("/v1/voices/{voice_id}")
async def get_voice(request: Request, voice_id: str):
    state = _state(request)
    owner = state.keys.owner(request)
    check_voice_id(voice_id)
    return (await run_in_threadpool(state.library.get, owner, voice_id)).public()


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(request: Request, voice_id: str):
    state = _state(request)
    owner = state.keys.owner(request)
    check_voice_id(voice_id)
    record = await run_in_threadpool(state.library.delete, owner, voice_id)
    return {"id": record.id, "object": "voice.deleted", "deleted": True}


async def _design_clip(state, owner: str, body: DesignRequest) -> tuple[np.ndarray, object, int]:
    """Generate the designed clip (whole); returns (audio, plan, seed) with the seed made explicit."""
    seed = body.seed if body.seed is not None else secrets.randbits(62)
    plan = await run_in_threadpool(
        state.planner.plan,
        owner,
        text=body.input,
        seed=seed,
        sampling=body.settings(),
        model=body.model,
        voice="design",
        instructions=body.instructions,
        language=body.language,
    )
    speech = SpeechStream(state, plan, owner)
    await speech.start()
    try:
        pieces = [chunk async for chunk in speech.chunks()]
    finally:
        await speech.aclose()
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32), plan, seed


@router.post("/v1/voices/design")
async def design_preview(request: Request, body: DesignRequest):
    """Speak `input` in the voice `instructions` describes; the X-Utter-Seed header reproduces it."""
    state = _state(request)
    state.require_ready()
    owner = state.keys.owner(request)
    AudioEncoder(body.response_format, sample_rate=body.sample_rate).close()  # validate before generating
    audio, plan, seed = await _design_clip(state, owner, body)
    data = await run_in_threadpool(encode, audio, state.sample_rate, body.response_format, body.sample_rate)
    fmt = audio_format(body.response_format)
    return Response(
        data, media_type=fmt.media_type, headers={"X-Utter-Seed": str(seed), "X-Utter-Model": plan.model.id}
    )


@router.post("/v1/voices/from-design", status_code=201)
async def save_designed_voice(request: Request, body: SaveDesignRequest):
    """Design a clip (same description, text and seed as a preview give the same clip), then clone it:
    the stored clone voice sounds the same on every later request."""
    state = _state(request)
    state.require_ready()
    owner = state.keys.owner(request)
    name = _voice_name(body.name)
    clone_model = state.registry.pick(body.clone_model, "base", param="clone_model")
    if await run_in_threadpool(state.library.find, owner, name) is not None:
        raise InvalidInput(f"you already have a voice named {name!r}", param="name", code="voice_name_taken")
    audio, plan, seed = await _design_clip(state, owner, body)
    if audio.size == 0:
        raise InvalidInput(
            "the design produced no audio; try another seed or text", param="input", code="empty_audio"
        )
    rate = state.sample_rate
    if audio.size < REF_MIN_SECONDS * rate:
        # Checked here, not left to the clone: its error would name `ref_audio`, which this request has not.
        raise InvalidInput(
            f"the design produced {audio.size / rate:.2f} s of audio; a voice needs at least "
            f"{REF_MIN_SECONDS:g} s: try a longer input or another seed",
            param="input",
            code="design_too_short",
        )
    voice = await state.pool.run(lambda: clone_model.tts.create_voice((audio, rate), ref_text=plan.text))
    meta = {
        "model": clone_model.id,
        "design_model": plan.model.id,
        "instructions": body.instructions,
        "seed": seed,
        "language": plan.language,
        "ref_seconds": round(audio.size / rate, 3),
    }
    record = await run_in_threadpool(state.library.create, owner, voice, name, "design", meta)
    return JSONResponse(record.public(), status_code=201, headers={"X-Utter-Seed": str(seed)})
