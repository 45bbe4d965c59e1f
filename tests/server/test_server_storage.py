"""A full disk or a read-only data directory: voice saves and job outputs fail with 507 / 503 naming the
cause, and the voices and job results already stored stay byte for byte as they were."""

from __future__ import annotations

import errno
import hashlib
import sqlite3
import time
from contextlib import contextmanager

import httpx
import pytest

import utter_tts.files as files
import utter_tts.server.job_manager as job_manager
from tests.server.conftest import ALICE, ServerThread, make_config, tone_wav
from utter_tts.server.app import create_app

AUTH = {"Authorization": f"Bearer {ALICE}"}
FAILURES = {  # errno -> (status, code)
    errno.ENOSPC: (507, "insufficient_storage"),
    errno.EROFS: (503, "storage_unavailable"),
}


@pytest.fixture
def srv(registry, tmp_path):
    with ServerThread(create_app(make_config(tmp_path / "data"), registry)) as server:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
            yield server, client


def _upload(client, name: str) -> httpx.Response:
    return client.post(
        "/v1/voices",
        files={"file": ("r.wav", tone_wav(), "audio/wav")},
        data={"name": name, "ref_text": "hi"},
    )


def _stored(server) -> dict[str, str]:
    """Every file of the voice library and the job results, by path, as content hashes (SQLite's WAL and
    shared-memory files move with every read: the rows are compared through the API instead)."""
    root = server.state.config.data_dir
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("voices.db")
    }


def _voices(client) -> list[dict]:
    return client.get("/v1/voices").json()["data"]


def _wait_job(client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/v1/audio/speech/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError("job did not end")


def _job(client) -> httpx.Response:
    body = {"model": "tts-1", "input": "One. Two.", "voice": "ryan", "response_format": "wav", "seed": 1}
    return client.post("/v1/audio/speech/jobs", json=body)


@contextmanager
def _failing_writes(monkeypatch, number: int):
    """Every new file fails to be created with `number` (ENOSPC, EROFS), as the OS would say it."""

    def fail(*args, **kwargs):
        raise OSError(number, f"[simulated] {errno.errorcode[number]}")

    with monkeypatch.context() as m:
        m.setattr(files.tempfile, "mkstemp", fail)  # every whole-or-nothing write (voices, job records)
        m.setattr(job_manager, "open", fail, raising=False)  # a job's audio file
        yield


@pytest.mark.parametrize("number", list(FAILURES))
def test_a_voice_save_that_cannot_be_written_is_refused_and_the_library_is_intact(srv, monkeypatch, number):
    server, client = srv
    assert _upload(client, "kept").status_code == 201
    before, voices = _stored(server), _voices(client)
    with _failing_writes(monkeypatch, number):
        r = _upload(client, "new")
    status, code = FAILURES[number]
    assert r.status_code == status and r.json()["error"]["code"] == code and r.headers["retry-after"]
    assert "nothing was stored" in r.json()["error"]["message"]
    assert _stored(server) == before and _voices(client) == voices
    speech = {"model": "tts-1", "input": "Hi.", "voice": "kept", "response_format": "pcm"}
    assert client.post("/v1/audio/speech", json=speech).status_code == 200  # the stored voice still speaks


def test_a_full_database_is_refused_and_leaves_no_orphan_file(srv, monkeypatch):
    """SQLite's own "database or disk is full" at the row's insert: 507, and the voice file written just
    before the row is removed again."""
    server, client = srv
    library = server.state.library
    connect = library._connect

    class Full:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            if sql.lstrip().upper().startswith("INSERT"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    @contextmanager
    def full_connect():
        with connect() as db:
            yield Full(db)

    before = _stored(server)
    monkeypatch.setattr(library, "_connect", full_connect)
    r = _upload(client, "new")
    assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
    monkeypatch.undo()
    assert _stored(server) == before and _voices(client) == []


@pytest.mark.parametrize("number", list(FAILURES))
def test_a_job_whose_audio_cannot_be_written_fails_naming_why_and_stored_jobs_are_intact(
    srv, monkeypatch, number
):
    server, client = srv
    done = _wait_job(client, _job(client).json()["id"])
    assert done["status"] == "succeeded"
    content = client.get(f"/v1/audio/speech/jobs/{done['id']}/content").content
    before = _stored(server)
    with monkeypatch.context() as m:
        m.setattr(job_manager, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(number, "[simulated]")),
                  raising=False)  # fmt: skip
        failed = _wait_job(client, _job(client).json()["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == FAILURES[number][1], failed
    assert client.get(f"/v1/audio/speech/jobs/{done['id']}/content").content == content
    after = _stored(server)
    assert {k: v for k, v in after.items() if done["id"] in k} == {
        k: v for k, v in before.items() if done["id"] in k
    }
