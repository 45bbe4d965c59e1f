"""Long speech jobs of this server: run in the background, their state kept on disk beside the result."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utter_tts.audio.encode import AudioEncoder
from utter_tts.server.openai_errors import as_api_error
from utter_tts.server.planner import FRAME_RATE_HZ, Plan
from utter_tts.server.streaming import SpeechStream
from utter_tts.service.http_errors import APIError
from utter_tts.service.job_records import RecordStore, new_job_id
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

    def save(self, job: Job) -> None:
        self.records[job.id] = job.record()

    def _load(self, job_id: str) -> Job | None:
        record = self.records.get(job_id)
        try:
            return None if record is None else Job.from_record(record, self.dir)
        except (KeyError, TypeError):  # a record of another version, or edited by hand
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
        self.records.delete(job.id)

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
        job_id = new_job_id()
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
            with open(job.path, "w+b") as out:
                encoder = encoder.to_file(out)  # a complete file: WAV and FLAC headers hold the length
                # One casting for every piece: an inline voice is built once, for the first.
                for piece in split_sentences(plan.text, SEGMENT_CHARS):
                    speech = SpeechStream(
                        self.state, Plan(plan.casting, piece, plan.seed, plan.sampling), job.owner
                    )
                    await speech.start()
                    job.status = "running"
                    self.save(job)  # progress on disk once per piece
                    try:
                        async for chunk in speech.chunks():
                            samples += chunk.size
                            job.frames_done = int(samples / rate * FRAME_RATE_HZ)
                            encoder.feed(chunk)
                    finally:
                        await speech.aclose()
                encoder.finish()
            job.status = "succeeded"
        except asyncio.CancelledError:
            job.status = "cancelled"
            job.path.unlink(missing_ok=True)
        except Exception as e:
            err = as_api_error(e, f"job {job.id} failed")
            job.status, job.error = "failed", {"message": err.message, "code": err.code, "param": err.param}
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
