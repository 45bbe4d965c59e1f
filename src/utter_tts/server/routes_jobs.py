"""The routes of long speech jobs: submit a document, poll progress, fetch the file, or cancel."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from utter_tts.audio.encode import audio_format
from utter_tts.server.routes_speech import casting_headers, plan_speech, stream_encoder
from utter_tts.server.schemas import JobRequest
from utter_tts.service.http_errors import APIError

router = APIRouter()


def _state(request: Request):
    return request.app.state.server


@router.post("/v1/audio/speech/jobs", status_code=202)
async def submit_job(request: Request, response: Response, body: JobRequest):
    state = _state(request)
    state.require_ready()
    owner = state.keys.owner(request)
    if body.seed is None:
        # one seed for every segment: it keeps a designed voice steady, and a job resumed after a restart
        # makes exactly the audio it would have made (randomness is keyed on seed, frame and codebook)
        body = body.model_copy(update={"seed": secrets.randbits(62)})
    encoder = stream_encoder(state, body)
    try:
        plan = await plan_speech(state, owner, body, max_chars=state.config.max_job_chars)
        job = state.jobs.submit(owner, plan, encoder, body)
    except BaseException:
        encoder.close()
        raise
    response.headers.update(casting_headers(plan.casting))
    return job.public()


@router.get("/v1/audio/speech/jobs")
async def list_jobs(request: Request):
    state = _state(request)
    owner = state.keys.owner(request)
    state.jobs.expire()
    mine = [j.public() for j in state.jobs.jobs.values() if j.owner == owner]
    return {"object": "list", "data": sorted(mine, key=lambda j: j["created_at"], reverse=True)}


@router.get("/v1/audio/speech/jobs/{job_id}")
async def job_status(request: Request, job_id: str):
    state = _state(request)
    return state.jobs.get(state.keys.owner(request), job_id).public()


@router.get("/v1/audio/speech/jobs/{job_id}/content")
async def job_content(request: Request, job_id: str):
    state = _state(request)
    job = state.jobs.get(state.keys.owner(request), job_id)
    if job.status != "succeeded":
        code = "job_failed" if job.status in ("failed", "cancelled") else "job_not_finished"
        raise APIError(
            409,
            f"job is {job.status}",
            code,
            param="job_id",
            headers={"Retry-After": "2"} if code == "job_not_finished" else None,
        )
    fmt = audio_format(job.format)
    return FileResponse(job.path, media_type=fmt.media_type, filename=f"{job.id}.{fmt.extension}")


@router.post("/v1/audio/speech/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str):
    state = _state(request)
    job = state.jobs.get(state.keys.owner(request), job_id)
    if job.task is not None and not job.task.done():
        job.task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(job.task), timeout=5)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            pass
    return job.public()


@router.delete("/v1/audio/speech/jobs/{job_id}")
async def delete_job(request: Request, job_id: str):
    state = _state(request)
    job = state.jobs.get(state.keys.owner(request), job_id)
    state.jobs.remove(job)
    return {"id": job.id, "object": "speech.job.deleted", "deleted": True}
