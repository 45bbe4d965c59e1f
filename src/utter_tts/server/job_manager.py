"""Long speech jobs of this server: run in the background, their state kept on disk beside the result."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from utter_tts.audio.encode import AudioEncoder
from utter_tts.files import write_atomic
from utter_tts.server.openai_errors import as_api_error
from utter_tts.server.planner import FRAME_RATE_HZ, Plan
from utter_tts.server.streaming import SpeechStream
from utter_tts.service.http_errors import APIError
from utter_tts.service.job_records import (
    RecordStore,
    claim,
    drop_claims,
    new_job_id,
    process_alive,
    this_process,
)
from utter_tts.text import split_sentences

log = logging.getLogger("utter_tts.server")

JOB_ID_RE = re.compile(r"^job_[0-9a-f]{24}$")
SEGMENT_CHARS = 600  # sentences are packed into pieces of up to this size: one model call each


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
    # what a restarted process needs to go on where this one stopped: the request as submitted (its seed
    # fixed) and how many of its pieces are done, each piece's audio kept in a part file
    request: dict[str, Any] | None = field(default=None, repr=False)
    pieces_done: int = 0
    task: asyncio.Task | None = field(default=None, repr=False)

    def part(self, index: int) -> Path:
        """The file of piece `index`'s audio (float32 samples) until the job's file is made."""
        return self.path.with_name(f"{self.id}.part{index:05d}.f32")

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
            **this_process(),
            "request": self.request,
            "pieces_done": self.pieces_done,
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
            request=rec.get("request"),
            pieces_done=rec.get("pieces_done", 0),
        )
        if job.interrupted(rec) and job.request is None:
            # its process died mid-job and it holds nothing to go on from (a record of an older version)
            job.status, job.finished_at = "failed", time.time()
            job.error = {
                "message": "the server restarted while this job ran; submit it again",
                "code": "job_interrupted",
                "param": None,
            }
        return job

    def interrupted(self, rec: dict[str, Any]) -> bool:
        """Its process died (crash, kill, restart, preemption) before the job ended."""
        return self.status in ("queued", "running") and not process_alive(
            rec.get("pid"), rec.get("pid_started")
        )

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


class JobManager:
    """Jobs of this process in memory; each job's state also as a JSON record beside its result file
    under data_dir/jobs (a RecordStore), so jobs survive a restart and other server processes on the same
    data directory can answer for them."""

    def __init__(self, state, directory: Path):
        self.state = state
        self.dir = directory
        self.records = RecordStore(directory)
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
        self.stopping = False

    def save(self, job: Job) -> None:
        self.records[job.id] = job.record()

    def _load(self, job_id: str) -> Job | None:
        record = self.records.get(job_id)
        try:
            job = None if record is None else Job.from_record(record, self.dir)
        except (KeyError, TypeError):  # a record of another version, or edited by hand
            return None
        if job is not None and job.request is not None and job.interrupted(record):
            self._adopt(job, record)  # its process died after this one started: go on with it here
        return job

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
        self.records.delete(job.id)

    def submit(self, owner: str, plan: Plan, encoder: AudioEncoder, body: Any) -> Job:
        """Start a job of `plan`; `body`, its request (seed fixed), is kept for a process that resumes it."""
        self.expire()
        mine = [j for j in self.jobs.values() if j.owner == owner and j.status in ("queued", "running")]
        if len(mine) >= self.state.config.max_jobs_per_key:
            raise APIError(
                429,
                f"at most {self.state.config.max_jobs_per_key} unfinished jobs per key",
                "job_limit_reached",
                headers={"Retry-After": "5"},
            )
        job_id = new_job_id()
        job = Job(
            id=job_id,
            owner=owner,
            status="queued",
            created_at=time.time(),
            format=encoder.format.name,
            path=self.dir / f"{job_id}.{encoder.format.extension}",
            frames_estimated=plan.estimated_frames,
            request=body.model_dump(mode="json"),
        )
        self.jobs[job_id] = job
        self.save(job)
        job.task = asyncio.get_running_loop().create_task(self._run(job, plan, encoder))
        return job

    async def _run(self, job: Job, plan: Plan, encoder: AudioEncoder) -> None:
        """Each piece's audio made durable as it completes (a part file, then the record), so a process
        that dies mid-job loses at most the piece it was on; the job's file is encoded from the parts at
        the end, the same way whether or not the job was resumed, so its bytes are the same too."""
        rate = self.state.sample_rate
        pieces = split_sentences(plan.text, SEGMENT_CHARS)
        keep_parts = False
        try:
            done = sum(job.part(i).stat().st_size // 4 for i in range(job.pieces_done))
            job.frames_done = int(done / rate * FRAME_RATE_HZ)
            for index in range(job.pieces_done, len(pieces)):
                # one casting for every piece: an inline voice is built once, for the first
                speech = SpeechStream(
                    self.state, Plan(plan.casting, pieces[index], plan.seed, plan.sampling), job.owner
                )
                await speech.start()
                job.status = "running"
                self.save(job)
                audio = []
                try:
                    async for chunk in speech.chunks():
                        audio.append(chunk)
                        done += chunk.size
                        job.frames_done = int(done / rate * FRAME_RATE_HZ)
                finally:
                    await speech.aclose()
                samples = np.concatenate(audio).astype(np.float32) if audio else np.zeros(0, np.float32)
                await run_in_threadpool(write_atomic, job.part(index), samples.tobytes(), True)
                job.pieces_done = index + 1
                self.save(job)  # the piece counts as done once its audio is on disk
            await run_in_threadpool(self._encode, job, encoder, len(pieces))
            job.status = "succeeded"
        except asyncio.CancelledError:
            if self.stopping:  # the process is going away: the next one goes on from the parts
                keep_parts = True
                raise
            job.status = "cancelled"
        except Exception as e:
            err = as_api_error(e, f"job {job.id} failed")
            job.status, job.error = "failed", {"message": err.message, "code": err.code, "param": err.param}
        finally:
            encoder.close()
            if not keep_parts:
                job.finished_at = time.time()
                if job.status != "succeeded":
                    job.path.unlink(missing_ok=True)
                self._drop_parts(job)
                self.save(job)

    def _drop_parts(self, job: Job) -> None:
        """An ended job's pieces and the claims of its takeovers: only its record and file stay."""
        for path in self.dir.glob(f"{job.id}.part*"):
            path.unlink(missing_ok=True)
        drop_claims(self.dir, job.id)

    @staticmethod
    def _encode(job: Job, encoder: AudioEncoder, pieces: int) -> None:
        """The job's file from its parts: one complete file (WAV and FLAC headers hold the length)."""
        with open(job.path, "w+b") as out:
            whole = encoder.to_file(out)
            try:
                for index in range(pieces):
                    whole.feed(np.fromfile(job.part(index), dtype=np.float32))
                whole.finish()
            finally:
                whole.close()

    def resume_interrupted(self) -> None:
        """At start-up: go on with the jobs whose process died before they ended (crash, kill -9,
        restart, preemption), from their first unfinished piece, once the models are loaded. Each is
        claimed by one process only (another server on the same data directory may look too)."""
        for path in sorted(self.dir.glob("job_*.json")):
            record = self.records.get(path.stem)
            try:
                job = Job.from_record(record, self.dir) if record else None
            except (KeyError, TypeError):
                continue
            if job is not None and job.request is not None and job.interrupted(record):
                self._adopt(job, record)

    def _adopt(self, job: Job, record: dict[str, Any]) -> None:
        """Resume an interrupted job in this process, unless another claimed it first."""
        if not claim(self.dir, job.id, record):  # another process resumes it
            return
        self.jobs[job.id] = job
        self.save(job)  # under this process's id: polled elsewhere, it reads as running
        job.task = asyncio.get_running_loop().create_task(self._resume(job))

    async def _resume(self, job: Job) -> None:
        from utter_tts.server.routes_speech import plan_speech, stream_encoder
        from utter_tts.server.schemas import JobRequest

        registry = self.state.registry
        while not registry.ready.is_set() and registry.load_error is None:
            await asyncio.sleep(0.2)
        try:
            body = JobRequest.model_validate(job.request)
            encoder = stream_encoder(self.state, body)
            plan = await plan_speech(self.state, job.owner, body, max_chars=self.state.config.max_job_chars)
        except Exception as e:  # e.g. its saved voice was deleted meanwhile, or the models did not load
            err = as_api_error(e, f"job {job.id} could not be resumed")
            job.status, job.error = "failed", {"message": err.message, "code": err.code, "param": err.param}
            job.finished_at = time.time()
            self._drop_parts(job)
            self.save(job)
            return
        log.info("resuming job %s at piece %d", job.id, job.pieces_done)
        await self._run(job, plan, encoder)

    def cancel_all(self) -> None:
        """Shutdown: stop every job, keeping what they made for the next process to resume."""
        self.stopping = True
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
