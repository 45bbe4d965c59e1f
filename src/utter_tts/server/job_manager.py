"""Long speech jobs: submit a document, poll progress, fetch the file, or cancel; nothing stays open."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from utter_tts.audio.encode import AudioEncoder
from utter_tts.errors import InvalidInput
from utter_tts.server.errors import APIError, from_invalid_input
from utter_tts.server.routes_speech import plan_speech, stream_encoder
from utter_tts.server.schemas import JobRequest
from utter_tts.server.streaming import Generation
from utter_tts.server.synthesis import FRAME_RATE_HZ, Plan, split_sentences

log = logging.getLogger("utter_tts.server")
router = APIRouter()

JOB_ID_RE = re.compile(r"^job_[0-9a-f]{24}$")
SEGMENT_CHARS = 600  # sentences are grouped up to this size: one model call each


def segments(text: str, limit: int = SEGMENT_CHARS) -> list[str]:
    """Group sentences into pieces of at most ~`limit` characters (a long sentence stays whole)."""
    out, cur = [], ""
    for sentence in split_sentences(text) or [text]:
        if cur and len(cur) + 1 + len(sentence) > limit:
            out.append(cur)
            cur = sentence
        else:
            cur = f"{cur} {sentence}" if cur else sentence
    if cur:
        out.append(cur)
    return out


@dataclass
class Job:
    """One background synthesis and where its result goes."""

    id: str
    owner: str
    status: str  # queued | running | succeeded | failed | cancelled
    created_at: float
    format: str
    path: Path
    frames_estimated: int
    frames_done: int = 0
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    task: asyncio.Task | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """What is kept on disk beside the result, so a restarted or second server process can answer."""
        return {
            "id": self.id,
            "owner": self.owner,
            "status": self.status,
            "created_at": self.created_at,
            "format": self.format,
            "path": self.path.name,
            "frames_estimated": self.frames_estimated,
            "frames_done": self.frames_done,
            "finished_at": self.finished_at,
            "error": self.error,
            "pid": os.getpid(),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any], directory: Path) -> Job:
        job = cls(
            id=rec["id"],
            owner=rec["owner"],
            status=rec["status"],
            created_at=rec["created_at"],
            format=rec["format"],
            path=directory / rec["path"],
            frames_estimated=rec["frames_estimated"],
            frames_done=rec["frames_done"],
            finished_at=rec["finished_at"],
            error=rec["error"],
        )
        if job.status in ("queued", "running") and not _alive(rec.get("pid")):
            # its process died mid-job (crash, restart): the partial result is gone
            job.status, job.finished_at = "failed", time.time()
            job.error = {
                "message": "the server restarted while this job ran; submit it again",
                "code": "job_interrupted",
                "param": None,
            }
        return job

    def public(self) -> dict[str, Any]:
        frac = (
            1.0 if self.status == "succeeded" else min(0.99, self.frames_done / max(1, self.frames_estimated))
        )
        return {
            "id": self.id,
            "object": "speech.job",
            "status": self.status,
            "created_at": int(self.created_at),
            "finished_at": int(self.finished_at) if self.finished_at else None,
            "response_format": self.format,
            "progress": {
                "frames_done": self.frames_done,
                "frames_estimated": max(self.frames_estimated, self.frames_done),
                "fraction": round(frac, 4),
            },
            "error": self.error,
        }


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobManager:
    """Jobs of this process in memory; each job's state also as a JSON record beside its result file
    under data_dir/jobs (written atomically), so jobs survive a restart and other server processes on
    the same data directory can answer for them."""

    def __init__(self, state, directory: Path):
        self.state = state
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # Results left by an earlier run belong to jobs nobody can poll any more. Only old ones go:
        # another server process on this data directory may be writing or serving recent ones.
        now = time.time()
        for stale in self.dir.iterdir():
            try:
                if now - stale.stat().st_mtime > state.config.job_ttl_s:
                    stale.unlink()
            except FileNotFoundError:
                pass
        self.jobs: dict[str, Job] = {}

    def _record_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def save(self, job: Job) -> None:
        path = self._record_path(job.id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(job.record()))
        os.replace(tmp, path)

    def _load(self, job_id: str) -> Job | None:
        try:
            return Job.from_record(json.loads(self._record_path(job_id).read_text()), self.dir)
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def get(self, owner: str, job_id: str) -> Job:
        self.expire()
        job = None
        if JOB_ID_RE.match(job_id):
            job = self.jobs.get(job_id) or self._load(job_id)
        if job is None or job.owner != owner:
            raise APIError(404, f"no such job: {job_id[:80]!r}", "job_not_found", param="job_id")
        return job

    def expire(self) -> None:
        ttl = self.state.config.job_ttl_s
        now = time.time()
        for job in list(self.jobs.values()):
            if job.finished_at and now - job.finished_at > ttl:
                self.remove(job)

    def remove(self, job: Job) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
        self.jobs.pop(job.id, None)
        job.path.unlink(missing_ok=True)
        self._record_path(job.id).unlink(missing_ok=True)

    def submit(self, owner: str, plan: Plan, encoder: AudioEncoder) -> Job:
        self.expire()
        mine = [j for j in self.jobs.values() if j.owner == owner and j.status in ("queued", "running")]
        if len(mine) >= self.state.config.max_jobs_per_key:
            raise APIError(
                429,
                f"at most {self.state.config.max_jobs_per_key} unfinished jobs per key",
                "job_limit_reached",
                headers={"Retry-After": "5"},
            )
        job_id = "job_" + secrets.token_hex(12)
        job = Job(
            id=job_id,
            owner=owner,
            status="queued",
            created_at=time.time(),
            format=encoder.format.name,
            path=self.dir / f"{job_id}.{encoder.format.extension}",
            frames_estimated=plan.estimated_frames,
        )
        self.jobs[job_id] = job
        self.save(job)
        job.task = asyncio.get_running_loop().create_task(self._run(job, plan, encoder))
        return job

    async def _run(self, job: Job, plan: Plan, encoder: AudioEncoder) -> None:
        rate = self.state.sample_rate
        samples = 0
        try:
            with open(job.path, "wb") as out:
                for piece in segments(plan.text):
                    sub = dataclasses.replace(plan, text=piece, pending_ref=plan.pending_ref)
                    generation = Generation(self.state, sub, job.owner)
                    await generation.start()
                    plan.pending_ref, plan.voice = None, sub.voice  # an inline voice is built once
                    job.status = "running"
                    self.save(job)  # progress on disk once per segment
                    try:
                        async for chunk in generation.chunks():
                            samples += chunk.size
                            job.frames_done = int(samples / rate * FRAME_RATE_HZ)
                            out.write(encoder.feed(chunk))
                    finally:
                        await generation.aclose()
                out.write(encoder.finish())
            job.status = "succeeded"
        except asyncio.CancelledError:
            job.status = "cancelled"
            job.path.unlink(missing_ok=True)
        except APIError as e:
            job.status, job.error = "failed", {"message": e.message, "code": e.code, "param": e.param}
        except InvalidInput as e:
            err = from_invalid_input(e)
            job.status, job.error = "failed", {"message": err.message, "code": err.code, "param": err.param}
        except Exception:
            log.exception("job %s failed", job.id)
            job.status, job.error = (
                "failed",
                {"message": "internal server error", "code": "internal_error", "param": None},
            )
        finally:
            encoder.close()
            job.finished_at = time.time()
            if job.status != "succeeded":
                job.path.unlink(missing_ok=True)
            self.save(job)

    def cancel_all(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()


def _state(request: Request):
    return request.app.state.server


@router.post("/v1/audio/speech/jobs", status_code=202)
async def submit_job(request: Request, body: JobRequest):
    state = _state(request)
    state.require_ready()
    owner = state.keys.owner(request)
    encoder = stream_encoder(state, body)
    try:
        plan = await plan_speech(state, owner, body, max_chars=state.config.max_job_chars)
        if plan.seed is None and plan.mode == "design":
            plan.seed = secrets.randbits(62)  # one seed for every segment keeps the designed voice steady
        job = state.jobs.submit(owner, plan, encoder)
    except BaseException:
        encoder.close()
        raise
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
    from utter_tts.audio.encode import audio_format

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
