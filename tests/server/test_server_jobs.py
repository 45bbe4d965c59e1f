"""Long jobs keep their state on disk: a restarted server still serves finished jobs, and a job whose
process died reads as interrupted, not as forever running."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from tests.server.conftest import ALICE, ServerThread, decode_audio, make_config
from utter_tts.server.app import create_app

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
            (data / "jobs" / f"{stale_id}.json").write_text(json.dumps(record))
            stale = c.get(f"/v1/audio/speech/jobs/{stale_id}").json()
            assert stale["status"] == "failed" and stale["error"]["code"] == "job_interrupted"
            assert c.delete(f"/v1/audio/speech/jobs/{job['id']}").json()["deleted"] is True
            assert c.get(f"/v1/audio/speech/jobs/{job['id']}").status_code == 404
