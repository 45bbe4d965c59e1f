"""Long jobs keep their state on disk: a restarted server still serves finished jobs, and a job whose
process died reads as interrupted, not as forever running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from tests.server.conftest import ALICE, ServerThread, decode_audio, make_config
from utter_tts.server.app import create_app
from utter_tts.service.job_records import process_start

AUTH = {"Authorization": f"Bearer {ALICE}"}
BODY = {
    "model": "tts-1",
    "input": "First sentence. Second one.",
    "voice": "ryan",
    "response_format": "wav",
    "seed": 2,
}


def wait_done(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    job = client.get(f"/v1/audio/speech/jobs/{job_id}").json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.get(f"/v1/audio/speech/jobs/{job_id}").json()
    return job


def test_jobs_survive_a_restart(registry, tmp_path):
    data = tmp_path / "data"
    with ServerThread(create_app(make_config(data), registry)) as srv:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=120) as c:
            job = c.post("/v1/audio/speech/jobs", json=BODY).json()
            assert wait_done(c, job["id"])["status"] == "succeeded"
            audio = c.get(f"/v1/audio/speech/jobs/{job['id']}/content").content
    with ServerThread(create_app(make_config(data), registry)) as srv:  # a new process's view
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=120) as c:
            again = c.get(f"/v1/audio/speech/jobs/{job['id']}").json()
            assert again["status"] == "succeeded" and again["progress"]["fraction"] == 1.0
            r = c.get(f"/v1/audio/speech/jobs/{job['id']}/content")
            assert r.status_code == 200 and r.content == audio
            assert decode_audio(r.content, "wav")[1] == 24000
            # a job record left "running" by a process that no longer exists
            dead = subprocess.Popen([sys.executable, "-c", "pass"])
            dead.wait()
            record = json.loads((data / "jobs" / f"{job['id']}.json").read_text())
            stale_id = "job_" + "0" * 24
            record.update(id=stale_id, status="running", finished_at=None, pid=dead.pid, path="x.wav")
            del record["request"]  # a record with nothing to resume from (see test_server_processes.py)
            (data / "jobs" / f"{stale_id}.json").write_text(json.dumps(record))
            stale = c.get(f"/v1/audio/speech/jobs/{stale_id}").json()
            assert stale["status"] == "failed" and stale["error"]["code"] == "job_interrupted"
            assert c.delete(f"/v1/audio/speech/jobs/{job['id']}").json()["deleted"] is True
            assert c.get(f"/v1/audio/speech/jobs/{job['id']}").status_code == 404


DOCUMENT = " ".join(f"Sentence number {i} of a long document that goes on." for i in range(40))


def _interrupted_then_resumed(registry, data, monkeypatch, fault: str | None) -> bytes:
    """A job stopped once a piece is on disk as a dying process leaves it (its record running, its parts
    kept, its process gone), then resumed by a new server on the same data directory; its file."""
    from utter_tts.server.job_manager import JobManager

    body = {"model": "tts-1", "input": DOCUMENT, "voice": "ryan", "response_format": "flac", "seed": 4}
    with ServerThread(create_app(make_config(data, max_new_tokens=10), registry)) as srv:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=120) as c:
            job_id = c.post("/v1/audio/speech/jobs", json=body).json()["id"]
            deadline = time.monotonic() + 60
            while srv.state.jobs.jobs[job_id].pieces_done < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            srv.state.jobs.stopping = True  # as a process going away leaves it
            srv.state.jobs.jobs[job_id].task.cancel()
            time.sleep(0.2)
    path = data / "jobs" / f"{job_id}.json"
    record = json.loads(path.read_text())
    assert record["status"] == "running" and 1 <= record["pieces_done"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record["pid"] = dead.pid
    if fault == "pid_reused":  # its pid now another live process's (a restarted container's pid 1): ours
        record["pid"], record["pid_started"] = os.getpid(), (process_start(os.getpid()) or 0) + 1
    if fault == "reseed":
        record["request"]["seed"] += 1
    path.write_text(json.dumps(record))
    if fault == "skip":
        run = JobManager._run

        async def skipping(self, job, plan, encoder):  # goes on one piece too far, leaving it silent
            job.part(job.pieces_done).write_bytes(b"")
            job.pieces_done += 1
            await run(self, job, plan, encoder)

        monkeypatch.setattr(JobManager, "_run", skipping)
    with ServerThread(create_app(make_config(data, max_new_tokens=10), registry)) as srv:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=120) as c:
            assert wait_done(c, job_id)["status"] == "succeeded"
            content = c.get(f"/v1/audio/speech/jobs/{job_id}/content").content
    # the ended job leaves its record and its file only: no parts, no claim of the takeover
    assert sorted(p.name for p in (data / "jobs").glob(f"{job_id}.*")) == sorted([path.name, record["path"]])
    return content


def test_a_resumed_job_is_byte_for_byte_the_uninterrupted_one_and_faults_are_caught(
    registry, tmp_path, monkeypatch
):
    """The check the kill -9 test makes (tests/server/test_server_processes.py), in one process: resumed
    equals uninterrupted; a resume that skips a piece, or one that draws another seed, does not."""
    body = {"model": "tts-1", "input": DOCUMENT, "voice": "ryan", "response_format": "flac", "seed": 4}
    with ServerThread(create_app(make_config(tmp_path / "whole", max_new_tokens=10), registry)) as srv:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=120) as c:
            job_id = c.post("/v1/audio/speech/jobs", json=body).json()["id"]
            assert wait_done(c, job_id)["status"] == "succeeded"
            whole = c.get(f"/v1/audio/speech/jobs/{job_id}/content").content
    assert _interrupted_then_resumed(registry, tmp_path / "ok", monkeypatch, None) == whole
    assert _interrupted_then_resumed(registry, tmp_path / "reused", monkeypatch, "pid_reused") == whole
    assert _interrupted_then_resumed(registry, tmp_path / "reseed", monkeypatch, "reseed") != whole
    assert _interrupted_then_resumed(registry, tmp_path / "skip", monkeypatch, "skip") != whole
