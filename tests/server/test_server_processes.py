"""Real server processes on one data directory: restart, kill -9 during uploads, two servers side by side."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.server.conftest import ALICE, free_port, start_server_process, tone_wav, wait_healthy
from utter_tts.voices.library import VoiceLibrary, owner_for_key

AUTH = {"Authorization": f"Bearer {ALICE}"}


def upload(url: str, name: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/voices",
        headers=AUTH,
        timeout=120,
        files={"file": ("r.wav", tone_wav(), "audio/wav")},
        data={"name": name, "ref_text": "hi there"},
    )


def names(url: str) -> set[str]:
    r = httpx.get(f"{url}/v1/voices", headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return {v["name"] for v in r.json()["data"]}


def speak(url: str, voice: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/speech",
        headers=AUTH,
        timeout=120,
        json={"model": "tts-1", "input": "Hi.", "voice": voice, "response_format": "wav"},
    )


def stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except Exception:
        proc.kill()
        return proc.wait()


def test_restart_kill9_mid_upload_and_two_processes(checkpoints, tmp_path):
    data = tmp_path / "data"
    models = [checkpoints["base"]]
    port = free_port()
    first = start_server_process(models, data, port)
    procs = [first]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, first)
        assert upload(url, "kept").status_code == 201

        # A burst of uploads, and kill -9 while they are in flight.
        results: list = []

        def try_upload(i: int) -> None:
            try:
                results.append(upload(url, f"burst-{i}").status_code)
            except httpx.HTTPError:
                results.append("cut")

        threads = [threading.Thread(target=try_upload, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        while not results:
            threading.Event().wait(0.01)
        os.kill(first.pid, signal.SIGKILL)
        for t in threads:
            t.join()
        first.wait(timeout=30)
        assert "cut" in results, results  # some uploads really were interrupted

        # Restart on the same directory, and a second server beside it.
        port_a, port_b = free_port(), free_port()
        a = start_server_process(models, data, port_a)
        b = start_server_process(models, data, port_b)
        procs += [a, b]
        url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        wait_healthy(url_a, a)
        wait_healthy(url_b, b)

        seen = names(url_a)
        assert "kept" in seen and seen == names(url_b)
        # every listed voice is complete: its tensors load, and nothing torn is listed
        lib = VoiceLibrary(data)
        owner = owner_for_key(ALICE)
        for record in lib.list(owner):
            assert lib.load(owner, record.id).ref_text == "hi there"
        lib.remove_orphans(grace_s=0)  # what a later startup does once the grace period is over
        files = {p.name for p in (data / "voices").iterdir()}
        assert files == {f"{r.id}.safetensors" for r in lib.list(owner)}
        assert speak(url_a, "kept").status_code == 200

        # Created on one, used and deleted on the other.
        made = upload(url_b, "from-b").json()
        assert "from-b" in names(url_a)
        assert speak(url_a, made["id"]).status_code == 200
        assert httpx.delete(f"{url_a}/v1/voices/{made['id']}", headers=AUTH).status_code == 200
        assert httpx.get(f"{url_b}/v1/voices/{made['id']}", headers=AUTH).status_code == 404

        # Concurrent writes through both servers: nothing lost.
        codes: list = []
        writers = [
            threading.Thread(target=lambda u=u, i=i: codes.append(upload(u, f"both-{i}").status_code))
            for i, u in enumerate([url_a, url_b] * 3)
        ]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        assert codes == [201] * 6
        assert {f"both-{i}" for i in range(6)} <= names(url_a) == names(url_b)
    finally:
        exit_codes = [stop(p) for p in procs[1:]]
        stop(first)
    # SIGTERM shuts down gracefully (uvicorn re-raises the signal once done); -9 would mean we had to kill it
    assert all(code in (0, -signal.SIGTERM) for code in exit_codes), exit_codes


def _fail_fast(cmd: list[str], data_dir) -> str:
    """Run a server command that must refuse to start: status 2 within the timeout, no data directory
    made; returns its stderr's last line (the one clear line)."""
    env = dict(os.environ, UTTER_TTS_API_KEYS=ALICE)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert not data_dir.exists()
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    return last


def _server_cmd(*args: str, data_dir, port: int, front: str = "server") -> list[str]:
    head = [sys.executable, "-m", "utter_tts.server"]
    if front == "cli":
        head = [sys.executable, "-m", "utter_tts.cli", "serve"]
    return [*head, *args, "--data-dir", str(data_dir), "--port", str(port), "--device", "cpu"]


def test_a_model_that_cannot_load_ends_the_process_before_it_binds(checkpoints, tmp_path):
    """A missing folder (both fronts) and a folder whose weights are broken: status 2 and one line naming
    the model, before the port is bound (a server on the port would answer) and before --data-dir exists."""
    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["custom_voice"], broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    cases = [
        ("no-such-model/", "server", "checkpoint folder 'no-such-model/' does not exist"),
        ("no-such-model/", "cli", "checkpoint folder 'no-such-model/' does not exist"),
        (str(broken), "server", "model.safetensors"),
    ]
    for model, front, says in cases:
        port, data_dir = free_port(), tmp_path / f"data-{front}"
        line = _fail_fast(_server_cmd(model, data_dir=data_dir, port=port, front=front), data_dir)
        assert "error: a model failed to load" in line and says in line, line
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


def test_a_taken_port_ends_the_process_before_the_data_dir_is_made(checkpoints, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port, data_dir = taken.getsockname()[1], tmp_path / "data"
        line = _fail_fast(
            _server_cmd(str(checkpoints["custom_voice"]), data_dir=data_dir, port=port), data_dir
        )
    assert f"argument --port: cannot bind 127.0.0.1:{port}" in line, line


def test_on_load_error_serve_keeps_running_and_reports_unhealthy(tmp_path):
    """The opt-in old behaviour: the port is bound at once, /health says why, requests get 503."""
    port = free_port()
    proc = start_server_process(
        [tmp_path / "no-such-model"], tmp_path / "data", port, "--on-load-error", "serve"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                health = httpx.get(f"{url}/health", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            if health.json()["status"] == "failed":
                break
            time.sleep(0.1)
        assert health.status_code == 503 and "does not exist" in health.json()["error"]
        r = speak(url, "vivian")
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert proc.poll() is None
    finally:
        stop(proc)


def test_an_embedded_server_whose_models_fail_in_the_background_exits_non_zero(tmp_path):
    """create_app + serve with the default policy and models still to load (an embedder's path): the
    background load fails, the server stops itself and `serve` returns 1."""
    from utter_tts.server.app import create_app, serve
    from utter_tts.server.settings import ServerConfig

    config = ServerConfig(
        models=[str(tmp_path / "no-such-model")], port=free_port(), data_dir=tmp_path / "data", auth="off"
    )
    result = []
    thread = threading.Thread(target=lambda: result.append(serve(create_app(config), config, "warning")))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and result == [1]


DOCUMENT = " ".join(f"Sentence number {i} of a long document that goes on." for i in range(60))


def _job_body(seed: int = 5) -> dict:
    return {"model": "tts-1", "input": DOCUMENT, "voice": "ryan", "response_format": "wav", "seed": seed}


def _finished(url: str, job_id: str, seen: list[str] | None = None) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/audio/speech/jobs/{job_id}", headers=AUTH, timeout=30).json()
        if seen is not None:
            seen.append(job["status"])
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


def test_a_job_goes_on_after_kill_9_and_its_audio_is_the_uninterrupted_one(checkpoints, tmp_path):
    """A 60-sentence job, its server killed with SIGKILL once a piece is on disk, the server started again
    on the same data directory: the job completes from its first unfinished piece (its status reads
    running meanwhile, never failed) and its file is byte for byte an uninterrupted run's."""
    model = [checkpoints["custom_voice"]]
    port = free_port()
    proc = start_server_process(model, tmp_path / "whole", port, "--max-new-tokens", "10")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        job = httpx.post(f"{url}/v1/audio/speech/jobs", json=_job_body(), headers=AUTH, timeout=30).json()
        assert _finished(url, job["id"])["status"] == "succeeded"
        whole = httpx.get(f"{url}/v1/audio/speech/jobs/{job['id']}/content", headers=AUTH, timeout=30).content
    finally:
        stop(proc)

    data = tmp_path / "killed"
    proc = start_server_process(model, data, port, "--max-new-tokens", "10")
    try:
        wait_healthy(url, proc)
        job = httpx.post(f"{url}/v1/audio/speech/jobs", json=_job_body(), headers=AUTH, timeout=30).json()
        record = data / "jobs" / f"{job['id']}.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and json.loads(record.read_text())["pieces_done"] < 1:
            time.sleep(0.01)
        proc.kill()  # SIGKILL: no shutdown, no cleanup
        proc.wait()
        done = json.loads(record.read_text())["pieces_done"]
        assert done >= 1 and json.loads(record.read_text())["status"] == "running"
    finally:
        stop(proc)
    proc = start_server_process(model, data, port, "--max-new-tokens", "10")
    try:
        wait_healthy(url, proc)
        seen: list[str] = []
        assert _finished(url, job["id"], seen)["status"] == "succeeded", seen
        assert set(seen) <= {"queued", "running", "succeeded"}
        r = httpx.get(f"{url}/v1/audio/speech/jobs/{job['id']}/content", headers=AUTH, timeout=30)
        assert r.content == whole
        assert not list((data / "jobs").glob("*.part0*"))  # the parts are gone with the job's end
    finally:
        stop(proc)
