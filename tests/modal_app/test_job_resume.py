"""utter's long jobs survive their process: a job interrupted after any sentence and started again (a new
LocalJobRunner, a retried Modal call) makes only the sentences it lacked and ends with the very bytes of
an uninterrupted run; stored progress that does not fit (corrupt, missing, other settings, no seed) is
dropped and the job starts over. Real tiny models and real stores throughout; only Modal's cloud is
stood in for (tests/modal_app/conftest.py StandIn)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import utter_tts
import utter_tts.compat.deploy as deploy
from utter_tts.compat.checks import Limits
from utter_tts.compat.job_runners import LocalJobRunner, ModalJobRunner, public_status, run_stored_job
from utter_tts.compat.service import CompatService
from utter_tts.service.inline_voices import InlineVoices
from utter_tts.service.job_records import RecordStore
from utter_tts.text import split_sentences

from .conftest import StandIn, load_modal_module

CHUNK_CHARS = 24
TEXT = " ".join(f"Line {i} is here." for i in range(5))  # five pieces of CHUNK_CHARS
FRAMES = 2
SEED = 1234567


def in_worker(fn, *args, **kw):
    """`fn` on a worker thread, as the runners call a job (torch's main-thread OpenMP pool busy-waits on
    a crowded 2-core machine: tens of times slower there); its exception, if any, raised here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kw).result()


def run_job(service, payload, store):
    return in_worker(run_stored_job, service, payload, store)


class Killed(BaseException):
    """A planted death: like kill -9 it skips every `except Exception`, so nothing reports it."""


class Planted(RuntimeError):
    """A planted failure of the kind Modal retries (a crashed GPU, a lost connection)."""


def plant(service: CompatService, fail_after: int | None = None, error: type[BaseException] = Killed):
    """Count the sentences `service` generates (texts, in order); with `fail_after`, the batch that would
    go past that many raises `error` before it starts."""
    made: list[str] = []
    real = service.__dict__.setdefault("_unplanted", service._generate_codes)  # plants do not stack

    def generate_codes(mode, reqs):
        if fail_after is not None and len(made) + len(reqs) > fail_after:
            raise error(f"planted after sentence {len(made)}")
        made.extend(r.text for r in reqs)
        return real(mode, reqs)

    service._generate_codes = generate_codes
    return made


@pytest.fixture
def svc(models):
    """A plain service (no engine) of its own, so the planted failures touch no other test."""
    return CompatService(
        base=models["base"], limits=Limits(batch_pieces=2, chunk_chars=CHUNK_CHARS), cache=InlineVoices(4)
    )


@pytest.fixture(scope="module")
def body(ref_wav):
    return {
        "text": TEXT,
        "language": "English",
        "ref_audio_base64": base64.b64encode(ref_wav).decode(),
        "ref_text": "W.",
        "max_new_tokens": FRAMES,
    }


@pytest.fixture(scope="module")
def pieces():
    found = split_sentences(TEXT, CHUNK_CHARS)
    assert len(found) == 5
    return found


@pytest.fixture(scope="module")
def baseline(models, body, tmp_path_factory):
    """The job run once, uninterrupted, with SEED."""
    service = CompatService(base=models["base"], limits=Limits(batch_pieces=2, chunk_chars=CHUNK_CHARS))
    payload = {"job_key": "job_base", "caller": "me", "body": body, "seed": SEED}
    return run_job(service, payload, RecordStore(tmp_path_factory.mktemp("base")))


def test_a_job_is_the_plain_synthesis(svc, body, baseline, ref_wav):
    """The job path decodes every sentence from its stored codes: the same audio as the direct path."""
    voice = in_worker(svc.voice_for, "me", ref_wav, "W.")
    plain = in_worker(svc.synthesize, "clone", TEXT, "english", voice=voice, max_new_tokens=FRAMES, seed=SEED)
    assert svc.wav(plain) == baseline


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)
@given(k=st.integers(0, 4))
@example(k=3)  # mid-batch: the half-made batch is lost, the one before it is not
def test_interrupted_anywhere_then_run_again_gives_the_same_bytes(svc, body, pieces, baseline, tmp_path, k):
    store = RecordStore(tmp_path / f"k{k}-{time.monotonic_ns()}")
    payload = {"job_key": "job_k", "caller": "me", "body": body, "seed": SEED}
    first = plant(svc, fail_after=k)
    with pytest.raises(Killed):
        run_job(svc, payload, store)
    kept = k - k % 2  # whole batches of 2 are stored as they complete
    assert first == pieces[:kept]
    assert store.get("resume:job_k")["done"] == kept
    assert store.get("progress:job_k")["status"] == "running"  # nobody reported it: it died

    again = plant(svc)
    assert run_job(svc, payload, store) == baseline
    assert again == pieces[kept:]  # only the unfinished sentences were made again
    state = store.get("progress:job_k")
    assert state["status"] == "completed" and state["resumed_from"] == kept and state["attempt"] == 2
    assert store.get("resume:job_k") is None and store.get("chunk:job_k:00000") is None  # cleaned up


def _interrupt(svc, payload, store, after=4):
    plant(svc, fail_after=after)
    with pytest.raises(Killed):
        run_job(svc, payload, store)
    assert store.get("resume:job_c")["done"] == after


def _flip_codes(store):
    rec = store.get("chunk:job_c:00001")
    raw = bytearray(base64.b64decode(rec["codes"]))
    raw[0] ^= 1
    store["chunk:job_c:00001"] = {**rec, "codes": base64.b64encode(bytes(raw)).decode()}


def _truncate_file(store):
    path = store.path("chunk:job_c:00000")
    path.write_bytes(path.read_bytes()[:40])  # a torn file: not JSON any more


def _drop_chunk(store):
    store.delete("chunk:job_c:00002")


def _no_seed(store):
    manifest = store.get("resume:job_c")
    del manifest["seed"]
    store["resume:job_c"] = manifest


@pytest.mark.parametrize("damage", [_flip_codes, _truncate_file, _drop_chunk, _no_seed])
def test_damaged_progress_starts_over(svc, body, pieces, baseline, tmp_path, damage):
    """A chunk corrupt or missing, or the seed gone from the record: everything is made again, from the
    first sentence (never a mix of stored and new sentences). The seed of the request still fixes the
    audio, so it is the uninterrupted run's."""
    store = RecordStore(tmp_path)
    payload = {"job_key": "job_c", "caller": "me", "body": body, "seed": SEED}
    _interrupt(svc, payload, store)
    damage(store)
    made = plant(svc)
    if damage is _no_seed:  # a request of an older version: no seed of its own either
        payload = {k: v for k, v in payload.items() if k != "seed"}
    wav = run_job(svc, payload, store)
    assert made == pieces
    assert store.get("progress:job_c")["resumed_from"] == 0
    if damage is not _no_seed:
        assert wav == baseline


def test_changed_settings_start_over(svc, models, body, tmp_path):
    """The same job run again by a deployment with other settings (here: another frame cap) makes all of
    it again with those settings: its audio is theirs, none of the old sentences in it."""
    store = RecordStore(tmp_path / "s")
    payload = {"job_key": "job_c", "caller": "me", "body": body, "seed": SEED}
    _interrupt(svc, payload, store)
    changed = {**payload, "body": {**body, "max_new_tokens": FRAMES + 1}}
    made = plant(svc)
    wav = run_job(svc, changed, store)
    assert len(made) == 5 and store.get("progress:job_c")["resumed_from"] == 0
    fresh = CompatService(base=models["base"], limits=Limits(batch_pieces=2, chunk_chars=CHUNK_CHARS))
    assert wav == run_job(fresh, {**changed, "job_key": "other"}, RecordStore(tmp_path / "f"))


def wait_state(runner, job_id, want, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        state = runner.state("me", job_id)
        if state["status"] in want or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


@pytest.mark.parametrize("gone", ["closed", "process died"])
def test_local_runner_resumes_a_dead_runners_job(svc, body, pieces, tmp_path, gone):
    """A runner whose job died after 2 sentences leaves it `running` with 2 of 5 done; a new runner on
    the folder takes it over, makes the 3 others, and the result is the bytes an uninterrupted run of
    that request gives. The first runner is gone either as a closed runner of this process or as the
    runner of a process that no longer runs."""
    folder = tmp_path / "compat-jobs"
    made = plant(svc, fail_after=3)
    first = LocalJobRunner(svc, folder)
    job_id = first.submit("me", body)
    deadline = time.monotonic() + 60
    while (first.store.get(f"resume:{job_id}") or {}).get("done") != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.close()
    first._pool.shutdown(wait=True)  # its job has died (planted) or stopped at the next batch
    if gone == "process died":
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        first.store[f"owner:{job_id}"] = {"pid": int(dead.stdout), "runner": "elsewhere"}
    assert made == pieces[:2]
    request = json.loads((folder / f"request__{job_id}.json").read_text())
    assert isinstance(request["seed"], int)  # fixed at submission, before the first sentence
    state = first.state("me", job_id)
    assert state["status"] == "running" and (state["done"], state["total"]) == (2, 5)

    made.clear()
    second = LocalJobRunner(svc, folder)
    try:
        assert second.resumed == [job_id]
        third = LocalJobRunner(svc, folder)
        third.close()
        assert third.resumed == []  # claimed once only
        state = wait_state(second, job_id, ("completed", "failed"))
        assert state["status"] == "completed" and (state["resumed_from"], state["attempt"]) == (2, 2)
        assert made == pieces[2:]
        expected = run_job(
            CompatService(base=svc.base, limits=svc.limits), request, RecordStore(tmp_path / "plain")
        )
        assert second.result("me", job_id) == expected
        assert not list(folder.glob("chunk__*")) and not list(folder.glob(f"request__{job_id}*"))
    finally:
        second.close()


KILLED_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
from utter_tts.api import TTS
from utter_tts.compat.checks import Limits
from utter_tts.compat.job_runners import LocalJobRunner
from utter_tts.compat.service import CompatService

ckpt, folder, body, chunk_chars = sys.argv[1:5]
svc = CompatService(base=TTS.from_pretrained(ckpt, device="cpu", dtype="float32"),
                    limits=Limits(batch_pieces=2, chunk_chars=int(chunk_chars)))
real, batches = svc._generate_codes, []
def generate_codes(mode, reqs):
    if batches:
        time.sleep(600)  # planted: the parent kills this process while it makes its second batch
    batches.append(reqs)
    return real(mode, reqs)
svc._generate_codes = generate_codes
print(LocalJobRunner(svc, folder).submit("me", json.loads(open(body).read())), flush=True)
time.sleep(600)
"""


def test_local_job_of_a_killed_process_resumes(svc, ckpts, body, pieces, tmp_path):
    """kill -9 of a process in the middle of a job: a runner made afterwards finds the job (its process
    gone), makes only the sentences the dead one had not stored, and returns the uninterrupted bytes."""
    folder = tmp_path / "compat-jobs"
    (tmp_path / "body.json").write_text(json.dumps(body))
    src = str(Path(utter_tts.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = [str(ckpts["base"]), str(folder), str(tmp_path / "body.json"), str(CHUNK_CHARS)]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, *args],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        job_id = child.stdout.readline().decode().strip()
        store = RecordStore(folder)
        deadline = time.monotonic() + 60
        while (store.get(f"resume:{job_id}") or {}).get("done") != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        child.kill()  # SIGKILL: no handler, no report
        child.wait(10)
    assert store.get(f"progress:{job_id}")["status"] == "running"
    request = store.get(f"request:{job_id}")
    made = plant(svc)
    runner = LocalJobRunner(svc, folder)
    try:
        assert runner.resumed == [job_id]
        state = wait_state(runner, job_id, ("completed", "failed"))
        assert state["status"] == "completed" and (state["resumed_from"], state["attempt"]) == (2, 2)
        assert made == pieces[2:]
        assert runner.result("me", job_id) == run_job(svc, request, RecordStore(tmp_path / "plain"))
    finally:
        runner.close()


# ---- Modal: a call that fails is run again (JOB_RETRIES) and goes on from the job Dict --------------------
def test_modal_call_retried_after_a_failure_resumes(modal_env, monkeypatch, body, pieces):
    """The job function fails after 2 sentences (a planted error of the kind Modal retries); between the
    attempts the job reads `running`, 2 of 5 done; the retry, in a new container, makes the other 3, and
    the audio is that of an uninterrupted call of the same payload."""
    qwen = load_modal_module("qwen_tts_resume")
    stand_in = StandIn(qwen)
    monkeypatch.setattr(qwen, "jobs_dict", stand_in.store)
    made: list[list[str]] = []
    real_load = deploy.load_service

    def load(settings, load_design=True, **kw):  # the first container dies before its second batch
        settings.limits = Limits(batch_pieces=2, chunk_chars=CHUNK_CHARS)
        service = real_load(settings, load_design=load_design, **kw)
        made.append(plant(service, fail_after=None if made else 3, error=Planted))
        return service

    monkeypatch.setattr(deploy, "load_service", load)
    between: list[dict] = []
    payloads: list[dict] = []

    def spawn(payload):  # Modal's retries: the same input again, in a new container, while tries are left
        def attempts():
            for _ in range(1 + qwen.JOB_RETRIES.max_retries):
                try:
                    return qwen.QwenTTSJobs().run.local(payload)
                except Planted:
                    between.append(stand_in.store.get(f"progress:{payload['job_key']}"))
            raise AssertionError("out of retries")

        payloads.append(payload)
        return stand_in.Call(stand_in.pool.submit(attempts))

    runner = ModalJobRunner(spawn, stand_in.Call, stand_in.store)
    try:
        job_id = runner.submit("me", body)
        wav = stand_in.calls[job_id].future.result(120)
        assert made == [pieces[:2], pieces[2:]]  # two containers; the second made only what was missing
        [state] = between
        assert (
            state["status"] == "running" and state["retrying"] and (state["done"], state["total"]) == (2, 5)
        )
        assert public_status(job_id, state)["status"] == "running"
        state = runner.state("me", job_id)
        assert state["status"] == "completed" and (state["resumed_from"], state["attempt"]) == (2, 2)
        assert runner.result("me", job_id) == wav
        assert not [k for k in stand_in.store if k.startswith(("chunk:", "resume:"))]  # cleaned up
        # the same payload, uninterrupted, in another container
        assert in_worker(qwen.QwenTTSJobs().run.local, {**payloads[0], "job_key": "k_plain"}) == wav
        assert made[2] == pieces
    finally:
        stand_in.pool.shutdown(wait=True)
