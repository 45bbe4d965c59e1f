"""utter's HTTP routes mounted on the real server app (FastAPI TestClient and httpx): WAV out, utter's 400
bodies verbatim, auth, health/languages, jobs through the local runner, two app instances on one data dir."""

from __future__ import annotations

import base64
import time

import pytest
from fastapi.testclient import TestClient

from utter_tts.compat import LANGUAGES
from utter_tts.compat.checks import Limits
from utter_tts.compat.job_runners import LocalJobRunner
from utter_tts.compat.service import CompatService
from utter_tts.serve import build_app
from utter_tts.voices.library import owner_for_key

from .conftest import FRAMES, KEY, OTHER_KEY, read_wav
from .test_compat_service import SUPPORTED

AUTH = {"Authorization": f"Bearer {KEY}"}


def make_app(service, data_dir):
    runner = LocalJobRunner(service, data_dir / "compat-jobs")
    return build_app(service, runner, [KEY, OTHER_KEY], data_dir), runner


@pytest.fixture(scope="module")
def client(service, tmp_path_factory):
    app, runner = make_app(service, tmp_path_factory.mktemp("data"))
    with TestClient(app) as c:
        yield c
    runner.close()


@pytest.fixture(scope="module")
def b64(ref_wav):
    return base64.b64encode(ref_wav).decode()


def test_clone_route(client, b64, audio_server):
    body = {"text": "Hello.", "language": "English", "ref_audio_base64": b64, "ref_text": "Words."}
    r = client.post("/clone", json={**body, "max_new_tokens": FRAMES}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert read_wav(r.content)[1] > 0
    body = {
        "text": "Hi.",
        "language": "auto",
        "ref_audio_url": f"{audio_server.url}/ref.wav",
        "ref_text": "W.",
    }
    r = client.post("/clone", json={**body, "max_new_tokens": FRAMES}, headers=AUTH)
    assert r.status_code == 200 and read_wav(r.content)[1] > 0


def test_clone_batch_route(client, b64):
    body = {"texts": ["One.", "Two."], "languages": ["English", "spanish"], "ref_audio_base64": b64}
    r = client.post(
        "/clone-batch", json={**body, "ref_text": "Words.", "max_new_tokens": FRAMES}, headers=AUTH
    )
    assert r.status_code == 200
    out = r.json()
    assert out["status"] == "success" and out["count"] == 2
    for i, f in enumerate(out["audio_files"]):
        assert f["index"] == i and f["text"] == body["texts"][i]
        wav = base64.b64decode(f["audio_base64"])
        assert f["size_bytes"] == len(wav) and read_wav(wav)[1] > 0


def test_design_route(client):
    r = client.post(
        "/design", json={"text": "Hello.", "language": "English", "instruct": "A calm voice."}, headers=AUTH
    )
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav" and read_wav(r.content)[1] > 0


def test_health_and_languages(client):
    h = client.get("/health")
    assert h.status_code == 200
    body = h.json()
    assert body["status"] == "healthy" and body["supported_languages"] == LANGUAGES
    assert body["attention_implementation"].startswith("sdpa") and "model" in body and "gpu" in body
    assert len(body["models"]) == 2  # the server's fields are kept
    lang = client.get("/languages").json()
    assert lang["languages"] == LANGUAGES and lang["default"] == "Auto" and lang["note"]


def test_server_routes_are_served_too(client):
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("path", ["/clone", "/clone-batch", "/design", "/submit-job", "/job-cancel"])
def test_generation_routes_need_a_key(client, path):
    assert client.post(path, json={}).status_code == 401
    assert client.post(path, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_job_reads_need_a_key(client):
    assert client.get("/job-status?job_id=job_x").status_code == 401
    assert client.get("/job-result?job_id=job_x").status_code == 401


def _errors(b64):
    clone = {"text": "Hi.", "language": "English", "ref_audio_base64": b64, "ref_text": "Words."}
    batch = {
        "texts": ["a", "b"],
        "languages": ["English", "English"],
        "ref_audio_base64": b64,
        "ref_text": "W.",
    }
    design = {"text": "Hi.", "language": "English", "instruct": "calm"}
    return [
        ("/clone", {**clone, "text": ""}, "'text' is required"),
        ("/clone", {k: v for k, v in clone.items() if k != "text"}, "'text' is required"),
        ("/clone", {k: v for k, v in clone.items() if k != "ref_text"}, "'ref_text' is required"),
        (
            "/clone",
            {k: v for k, v in clone.items() if k != "ref_audio_base64"},
            "Either 'ref_audio_url' or 'ref_audio_base64' is required",
        ),
        (
            "/clone",
            {**clone, "language": "Klingon"},
            f"Unsupported language: Klingon. Supported: {SUPPORTED}",
        ),
        ("/clone-batch", {**batch, "texts": []}, "'texts' is required"),
        ("/clone-batch", {k: v for k, v in batch.items() if k != "texts"}, "'texts' is required"),
        ("/clone-batch", {**batch, "languages": ["English"]}, "Length of 'texts' must match 'languages'"),
        ("/clone-batch", {**batch, "ref_text": ""}, "'ref_text' is required"),
        (
            "/clone-batch",
            {k: v for k, v in batch.items() if k != "ref_audio_base64"},
            "Either 'ref_audio_url' or 'ref_audio_base64' is required",
        ),
        ("/clone-batch", {**batch, "languages": ["English", "xx"]}, "Unsupported language: xx"),
        ("/design", {**design, "text": " "}, "'text' is required"),
        ("/design", {**design, "instruct": ""}, "'instruct' is required (voice description)"),
        (
            "/design",
            {k: v for k, v in design.items() if k != "instruct"},
            "'instruct' is required (voice description)",
        ),
        ("/design", {**design, "text": "a" * 501}, "'text' exceeds maximum length of 500 characters"),
        ("/design", {**design, "instruct": "b" * 501}, "'instruct' exceeds maximum length of 500 characters"),
        (
            "/design",
            {**design, "language": "Elvish"},
            f"Unsupported language: Elvish. Supported: {SUPPORTED}",
        ),
        ("/submit-job", {**clone, "text": ""}, "'text' is required"),
        ("/submit-job", {**clone, "ref_text": None}, "'ref_text' is required"),
        (
            "/submit-job",
            {**clone, "language": "Dothraki"},
            f"Unsupported language: Dothraki. Supported: {SUPPORTED}",
        ),
    ]


def test_every_400_verbatim(client, b64):
    for path, body, message in _errors(b64):
        r = client.post(path, json=body, headers=AUTH)
        assert r.status_code == 400, (path, body, r.text)
        assert r.json() == {"detail": message}, path


def test_clone_limits_sync_versus_job(client, b64):
    """Synchronous /clone stops at 5,000 characters (Modal cuts web calls at 150 s); jobs take 50,000."""
    body = {"language": "English", "ref_audio_base64": b64, "ref_text": "W."}
    r = client.post("/clone", json={**body, "text": "a" * 5001}, headers=AUTH)
    assert r.json() == {"detail": "'text' exceeds maximum length of 5000 characters"}
    r = client.post("/submit-job", json={**body, "text": "a" * 50_001}, headers=AUTH)
    assert r.json() == {"detail": "'text' exceeds maximum length of 50000 characters"}
    r = client.post("/clone", json={**body, "text": "Hi.", "max_new_tokens": 0}, headers=AUTH)
    assert r.json() == {"detail": "'max_new_tokens' must be an integer between 1 and 8192"}
    assert client.post("/clone", content=b"{not json", headers=AUTH).json() == {"detail": "Invalid JSON body"}


def test_design_limits_are_inclusive(client):
    r = client.post(
        "/design", json={"text": "a" * 500, "language": "auto", "instruct": "b" * 500}, headers=AUTH
    )
    assert r.status_code == 200


def test_refused_url_is_a_400(client):
    body = {"text": "Hi.", "ref_audio_url": "http://169.254.169.254/latest/meta-data/", "ref_text": "W."}
    r = client.post("/clone", json=body, headers=AUTH)
    assert r.status_code == 400 and "link-local" in r.json()["detail"]


def wait_status(client, job_id, want, headers=AUTH, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        st = client.get(f"/job-status?job_id={job_id}", headers=headers).json()
        if st["status"] in want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_job_submit_poll_fetch(client, b64):
    body = {"text": "A job. With two sentences.", "language": "English", "ref_audio_base64": b64}
    r = client.post("/submit-job", json={**body, "ref_text": "W.", "max_new_tokens": FRAMES}, headers=AUTH)
    assert r.status_code == 200
    job_id = r.json()["job_id"]
    assert r.json() == {"job_id": job_id, "status": "submitted", "text_length": len(body["text"])}
    st = wait_status(client, job_id, ("completed", "failed"))
    assert st == {"job_id": job_id, "status": "completed", "result_ready": True}
    res = client.get(f"/job-result?job_id={job_id}", headers=AUTH)
    assert (
        res.status_code == 200 and res.headers["content-type"] == "audio/wav" and read_wav(res.content)[1] > 0
    )
    # another key sees no such job: the original's answer for an id it cannot find
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    unknown = {"status": "failed", "result_ready": False, "error": "Job not found"}
    assert client.get(f"/job-status?job_id={job_id}", headers=other).json() == {"job_id": job_id, **unknown}
    assert client.get("/job-status?job_id=job_nope", headers=AUTH).json() == {"job_id": "job_nope", **unknown}
    assert client.get("/job-status?job_id=", headers=AUTH).json() == {"detail": "'job_id' is required"}
    assert client.get("/job-status", headers=AUTH).status_code == 422


def test_job_cancel_running_and_queued(service, b64, tmp_path):
    slow = CompatService(
        base=service.base,
        design_model=service.design_model,
        limits=Limits(batch_pieces=1, chunk_chars=30),
        fetch_policy=service.fetch_policy,
        cache=service.cache,
    )
    app, runner = make_app(slow, tmp_path)
    me = owner_for_key(KEY)
    text = " ".join(f"This is sentence {i}." for i in range(40))
    body = {
        "text": text,
        "language": "English",
        "ref_audio_base64": b64,
        "ref_text": "W.",
        "max_new_tokens": 3,
    }
    with TestClient(app) as c:
        first = c.post("/submit-job", json=body, headers=AUTH).json()["job_id"]
        second = c.post("/submit-job", json=body, headers=AUTH).json()["job_id"]  # queued behind the first
        while runner.state(me, first)["progress"] == 0:  # running, one sentence batch done
            time.sleep(0.05)
        assert runner.state(me, second)["status"] == "queued"
        # utter sees both as "running" (the original could not tell queued from running)
        for job in (first, second):
            assert c.get(f"/job-status?job_id={job}", headers=AUTH).json()["status"] == "running"
        for job in (second, first):
            r = c.post("/job-cancel", json={"job_id": job}, headers=AUTH)
            assert r.json() == {"job_id": job, "status": "cancelled"}
        time.sleep(1.0)  # the worker stops at its next sentence and must not overwrite the state
        for job in (first, second):
            assert runner.state(me, job)["status"] == "cancelled"
            assert c.get(f"/job-status?job_id={job}", headers=AUTH).json() == {
                "job_id": job,
                "status": "failed",
                "result_ready": False,
                "error": "Job was cancelled",
            }
            r = c.get(f"/job-result?job_id={job}", headers=AUTH)
            assert r.status_code == 409 and r.json() == {"detail": "Failed to get result: Job was cancelled"}
    runner.close()


def test_two_app_instances_on_one_data_dir(service, b64, ref_wav, tmp_path):
    """Job state and the voice library live in the data directory, not in one app's memory: a job
    submitted on A is polled, fetched and cancelled on B; a voice saved on A is listed on B."""
    app_a, runner_a = make_app(service, tmp_path)
    app_b, runner_b = make_app(service, tmp_path)
    body = {
        "text": "Shared job.",
        "language": "English",
        "ref_audio_base64": b64,
        "ref_text": "W.",
        "max_new_tokens": 4,
    }
    with TestClient(app_a) as a, TestClient(app_b) as b:
        job_id = a.post("/submit-job", json=body, headers=AUTH).json()["job_id"]
        assert wait_status(b, job_id, ("completed", "failed"))["status"] == "completed"
        r = b.get(f"/job-result?job_id={job_id}", headers=AUTH)
        assert r.status_code == 200 and read_wav(r.content)[1] > 0
        # cancelling a finished job changes nothing (the original's FunctionCall.cancel() on a finished
        # call); the answer is still the original's {"status": "cancelled"}
        assert b.post("/job-cancel", json={"job_id": job_id}, headers=AUTH).json()["status"] == "cancelled"
        assert wait_status(a, job_id, ("completed",))["result_ready"] is True
        up = a.post(
            "/v1/voices", files={"file": ("me.wav", ref_wav, "audio/wav")}, data={"name": "me"}, headers=AUTH
        )
        assert up.status_code == 201, up.text
        listed = b.get("/v1/voices", headers=AUTH).json()["data"]
        assert [v["name"] for v in listed] == ["me"]
    runner_a.close()
    runner_b.close()
