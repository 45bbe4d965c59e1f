"""utter's own clients, replayed as they send their requests, against the offline Modal app and a live
`utter-tts serve --compat`: every flow completes as utter's code expects, and every answer is the original
app's, field by field and message by message.

Sources, in the public repository Pipluppp/utter:
- the original app: modal_app/qwen3_tts/app.py at f4a1c6a (Qwen3TTSService.clone, .clone_batch, .health,
  .languages; submit_job, job_status, job_result and cancel_job of `job_management_app`) and
  modal_app/qwen3_tts/app_voice_design.py at f4a1c6a (VoiceDesignService.design: app.py has no /design);
- the clients: supabase/functions/_shared/modal.ts, supabase/functions/api/routes/tasks.ts and
  supabase/functions/api/routes/generate.ts at f4a1c6a, and backend/services/tts_qwen.py at 9fd3889.
utter's code carries no license, so it is not copied: each HTTP call is written out below in Python with the
same method, URL, headers and body, and the same decisions on the answer, under a comment naming the function
it replays. No utter client calls /clone-batch; its request is shaped as the original's handler reads it.

The original app, route by route. Fields are read with `request.get(name, default)`; the checks run in this
order and the first that fails answers; after the last one the values went unchecked to qwen-tts, whose
exceptions became the 500 at the end of each list. SUPPORTED is "Auto, Chinese, English, Japanese, Korean,
German, French, Russian, Portuguese, Spanish, Italian"; `in SUPPORTED` is case-sensitive.

POST /clone (app.py `clone`): text="", language="Auto", ref_audio_url=None, ref_audio_base64=None,
  ref_text="", max_new_tokens=2048.
  1. not text -> 400 "'text' is required"
  2. not ref_text -> 400 "'ref_text' is required"
  3. language not in SUPPORTED -> 400 "Unsupported language: {language}. Supported: {SUPPORTED}"
  4. not ref_audio_url and not ref_audio_base64 -> 400 "Either 'ref_audio_url' or 'ref_audio_base64' is
     required" (the URL wins when both are given)
  ok: 200 audio/wav, Content-Disposition "attachment; filename=output.wav"; else 500 "Generation failed: {e}"
POST /clone-batch (app.py `clone_batch`): texts=[], languages=[], ref_audio_url, ref_audio_base64,
  ref_text="", max_new_tokens=2048.
  1. not texts -> 400 "'texts' is required"
  2. not ref_text -> 400 "'ref_text' is required"
  3. len(texts) != len(languages) -> 400 "Length of 'texts' must match 'languages'" (no default language)
  4. each lang not in SUPPORTED -> 400 "Unsupported language: {lang}" (no list of names)
  5. no reference -> 400 "Either 'ref_audio_url' or 'ref_audio_base64' is required"
  ok: 200 {"status": "success", "count", "audio_files": [{"index", "text": first 50 + "..." when longer,
  "audio_base64", "size_bytes"}]}; else 500 "Batch generation failed: {e}"
POST /design (app_voice_design.py `design`): text="", language="English", instruct="".
  1. not text -> 400 "'text' is required"
  2. len(text) > 500 -> 400 "'text' exceeds maximum length of 500 characters"
  3. not instruct -> 400 "'instruct' is required (voice description)"
  4. len(instruct) > 500 -> 400 "'instruct' exceeds maximum length of 500 characters"
  5. language not in SUPPORTED -> 400 "Unsupported language: {language}. Supported: {SUPPORTED}"
  ok: 200 audio/wav, "attachment; filename=designed_voice.wav"; else 500 "Voice design failed: {e}"
GET /health (app.py `health`): 200 {"status": "healthy", "model": MODEL_NAME (the hub id's last part), "gpu"
  (name or "none"), "attention_implementation", "supported_languages": [the 11 names]}
GET /languages (app.py `languages`): 200 {"languages": [...], "default": "Auto",
  "note": "Use 'Auto' for automatic language detection"}
POST /submit-job (app.py `submit_job`): text="", language="Auto", ref_audio_base64=None, ref_text="",
  max_new_tokens=2048 (no ref_audio_url, no language check: a bad one failed the job).
  1. not text -> 400 "'text' is required"
  2. not ref_audio_base64 -> 400 "'ref_audio_base64' is required"
  3. not ref_text -> 400 "'ref_text' is required"
  ok: 200 {"job_id": <FunctionCall id>, "status": "submitted", "text_length": len(text)}
GET /job-status?job_id= (app.py `job_status`, `job_id: str`): absent -> FastAPI's 422; "" -> 400
  "'job_id' is required"; done -> 200 {"job_id", "status": "completed", "result_ready": true}; queued or
  running -> 200 {"job_id", "status": "running", "result_ready": false}; anything raised (failed, cancelled,
  unknown id) -> 200 {"job_id", "status": "failed", "result_ready": false, "error": str(e)}
GET /job-result?job_id= (app.py `job_result`): absent -> 422; "" -> 400 "'job_id' is required"; waits up to
  5 s (`get(timeout=5)`): done -> 200 audio/wav "attachment; filename=output.wav"; still running -> 202
  {"detail": "Job still processing"}; anything raised -> 500 "Failed to get result: {e}"
POST /cancel-job (app.py `cancel_job`): job_id; not job_id -> 400 "'job_id' is required"; else
  FunctionCall.cancel() -> 200 {"job_id", "status": "cancelled"} (also for a finished call); raised -> 500
  "Failed to cancel: {e}"

Where we answer differently, on purpose: language names are matched case-insensitively (the original
refused "english"); what went to a 500 in the original gets a 4xx with a reason (our checks, which run after
all of the original's: a client's input never gets a 5xx), so /job-result and /cancel-job for a failed,
cancelled or unknown job keep the original's detail with 409 or 404; /submit-job checks the language and
the base64 at submission; a body that is not a JSON object is 400 "Invalid JSON body" / "Request body must
be a JSON object" (FastAPI's 422 in the original); the routes are also served as /job-cancel.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urljoin

import av
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as ws_connect

from tests.server.conftest import ServerThread, free_port
from utter_tts.compat.checks import Limits
from utter_tts.compat.job_runners import LocalJobRunner
from utter_tts.compat.languages import normalize_language
from utter_tts.compat.routes import build_router
from utter_tts.compat.service import CompatService
from utter_tts.serve import build_app
from utter_tts.service.inline_voices import InlineVoices

from .conftest import FRAMES, KEY, StandIn, load_modal_module, make_wav, set_modal_env

SUPPORTED_LANGUAGES = [  # app.py SUPPORTED_LANGUAGES
    "Auto",
    "Chinese",
    "English",
    "Japanese",
    "Korean",
    "German",
    "French",
    "Russian",
    "Portuguese",
    "Spanish",
    "Italian",
]
SUPPORTED = ", ".join(SUPPORTED_LANGUAGES)
# utter's generate cap in Modal mode (supabase/functions/_shared/tts/provider.ts DEFAULT_MODAL_MAX_TEXT_CHARS)
LONG_TEXT = (" ".join(f"Sentence {i} of a long chapter, read aloud for utter." for i in range(300)))[:10_000]
assert len(LONG_TEXT) == 10_000
REF_TEXT = "Okay. Yeah. I resent you. I love you. I respect you."
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")


# ---- the original app's checks, as oracles -------------------------------------------------------------
def original_clone(request: dict) -> tuple[int, str | None]:
    """app.py Qwen3TTSService.clone, its checks in its order; (200, None) where it went on to the model."""
    text = request.get("text", "")
    language = request.get("language", "Auto")
    ref_audio_url = request.get("ref_audio_url")
    ref_audio_base64 = request.get("ref_audio_base64")
    ref_text = request.get("ref_text", "")
    if not text:
        return 400, "'text' is required"
    if not ref_text:
        return 400, "'ref_text' is required"
    if language not in SUPPORTED_LANGUAGES:
        return 400, f"Unsupported language: {language}. Supported: {SUPPORTED}"
    if not ref_audio_url and not ref_audio_base64:
        return 400, "Either 'ref_audio_url' or 'ref_audio_base64' is required"
    return 200, None


def original_clone_batch(request: dict) -> tuple[int, str | None]:
    """app.py Qwen3TTSService.clone_batch; (500, None) where Python itself failed (len of a number)."""
    texts = request.get("texts", [])
    languages = request.get("languages", [])
    ref_audio_url = request.get("ref_audio_url")
    ref_audio_base64 = request.get("ref_audio_base64")
    ref_text = request.get("ref_text", "")
    if not texts:
        return 400, "'texts' is required"
    if not ref_text:
        return 400, "'ref_text' is required"
    try:
        if len(texts) != len(languages):
            return 400, "Length of 'texts' must match 'languages'"
    except TypeError:
        return 500, None
    for lang in languages:
        if lang not in SUPPORTED_LANGUAGES:
            return 400, f"Unsupported language: {lang}"
    if not ref_audio_url and not ref_audio_base64:
        return 400, "Either 'ref_audio_url' or 'ref_audio_base64' is required"
    return 200, None


def original_design(request: dict) -> tuple[int, str | None]:
    """app_voice_design.py VoiceDesignService.design (MAX_TEXT_LENGTH = MAX_INSTRUCT_LENGTH = 500)."""
    text = request.get("text", "")
    language = request.get("language", "English")
    instruct = request.get("instruct", "")
    try:
        if not text:
            return 400, "'text' is required"
        if len(text) > 500:
            return 400, "'text' exceeds maximum length of 500 characters"
        if not instruct:
            return 400, "'instruct' is required (voice description)"
        if len(instruct) > 500:
            return 400, "'instruct' exceeds maximum length of 500 characters"
    except TypeError:
        return 500, None
    if language not in SUPPORTED_LANGUAGES:
        return 400, f"Unsupported language: {language}. Supported: {SUPPORTED}"
    return 200, None


def original_submit_job(request: dict) -> tuple[int, str | None]:
    """app.py submit_job (job_management_app)."""
    text = request.get("text", "")
    ref_audio_base64 = request.get("ref_audio_base64")
    ref_text = request.get("ref_text", "")
    if not text:
        return 400, "'text' is required"
    if not ref_audio_base64:
        return 400, "'ref_audio_base64' is required"
    if not ref_text:
        return 400, "'ref_text' is required"
    return 200, None


# ---- utter's clients, replayed ---------------------------------------------------------------------------
class Endpoints:
    """The URLs utter is configured with: supabase's MODAL_* secrets, the backend's QWEN_MODAL_* settings."""

    def __init__(self, base: str):
        self.base = base
        self.clone = f"{base}/clone"  # QWEN_MODAL_ENDPOINT
        self.design = f"{base}/design"  # MODAL_ENDPOINT_VOICE_DESIGN, QWEN_MODAL_ENDPOINT_VOICE_DESIGN
        self.submit = f"{base}/submit-job"  # MODAL_JOB_SUBMIT, QWEN_MODAL_JOB_SUBMIT
        self.status = f"{base}/job-status"  # MODAL_JOB_STATUS, QWEN_MODAL_JOB_STATUS
        self.result = f"{base}/job-result"  # MODAL_JOB_RESULT, QWEN_MODAL_JOB_RESULT
        self.cancel = f"{base}/cancel-job"  # MODAL_JOB_CANCEL, QWEN_MODAL_JOB_CANCEL


class UtterError(Exception):
    """What utter's code throws (`new Error(...)` in TypeScript, ValueError in tts_qwen.py)."""


class ModalTs:
    """supabase/functions/_shared/modal.ts. `added` is the one header docs/deploy-modal.md adds to every
    request when keys are on ({} replays the file unchanged)."""

    def __init__(self, urls: Endpoints, added: dict[str, str]):
        self.urls = urls
        self.added = added
        self.http = httpx.Client(timeout=None)  # fetch() has no timeout of its own

    def json_headers(self) -> dict[str, str]:  # jsonHeaders()
        return {"Content-Type": "application/json", **self.added}

    @staticmethod
    def body(payload: dict) -> bytes:  # JSON.stringify(payload)
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()

    def submit_job(self, payload: dict) -> dict:  # submitJob
        res = self.http.post(self.urls.submit, headers=self.json_headers(), content=self.body(payload))
        if not res.is_success:
            raise UtterError(f"Modal submit failed ({res.status_code}): {res.text[:300]}")
        data = res.json()
        if not data.get("job_id"):
            raise UtterError("Modal submit returned no job_id")
        return data

    def check_job_status(self, job_id: str) -> dict:  # checkJobStatus: fetch(url), no init
        res = self.http.get(self.urls.status, params={"job_id": job_id}, headers=self.added)
        if not res.is_success:
            raise UtterError(f"Modal status failed ({res.status_code}): {res.text[:300]}")
        return res.json()

    def get_job_result_bytes(self, job_id: str) -> bytes:  # getJobResultBytes
        res = self.http.get(self.urls.result, params={"job_id": job_id}, headers=self.added)
        if res.status_code == 202:
            raise UtterError("Job still processing")
        if not res.is_success:
            raise UtterError(f"Modal result failed ({res.status_code}): {res.text[:300]}")
        return res.content

    def cancel_job(self, job_id: str) -> httpx.Response | None:  # cancelJob: the answer is not read
        try:
            return self.http.post(
                self.urls.cancel, headers=self.json_headers(), content=self.body({"job_id": job_id})
            )
        except httpx.HTTPError:
            return None

    def design_voice_preview_bytes(self, payload: dict) -> bytes:  # designVoicePreviewBytes
        res = self.http.post(
            self.urls.design, headers=self.json_headers(), content=self.body(payload), timeout=180
        )
        if res.is_success:
            return res.content
        if res.status_code not in (301, 302, 303, 307, 308):
            raise UtterError(f"Modal voice design failed ({res.status_code}): {res.text[:300]}")
        poll_url = urljoin(self.urls.design, res.headers["location"])
        while True:  # Modal's 303 for calls past 150 s: poll the location until 200
            poll = self.http.get(poll_url, timeout=60)
            if poll.is_success:
                return poll.content
            if poll.status_code in (301, 302, 303, 307, 308):
                poll_url = urljoin(poll_url, poll.headers["location"])
            elif poll.status_code != 202:
                raise UtterError(f"Modal voice design poll failed ({poll.status_code}): {poll.text[:300]}")


def tasks_ts_poll(modal: ModalTs, job_id: str) -> tuple[str, object]:
    """One GET /api/tasks/:id of a generate task (tasks.ts, the Modal branch): ("failed", message),
    ("processing", provider status) or ("completed", the WAV it stores)."""
    try:
        status = modal.check_job_status(job_id)
    except UtterError:
        return "processing", "status_error"
    modal_status = (status.get("status") or "").lower()
    if modal_status == "failed":
        return "failed", status.get("error") or "Generation failed. Please try again."
    ready = modal_status == "completed" and bool(status.get("result_ready"))
    if not ready:
        return "processing", modal_status or "processing"
    try:
        return "completed", modal.get_job_result_bytes(job_id)
    except UtterError:
        return "processing", "finalizing"


def utter_generate_and_poll(modal: ModalTs, text: str, ref_audio: bytes) -> tuple[bytes, int]:
    """generate.ts POST /generate in Modal mode (the submit payload it builds), then the browser polling
    GET /api/tasks/:id until the task is terminal; returns the stored WAV and the number of polls."""
    job = modal.submit_job(
        {
            "text": text,
            "language": "Auto",
            "ref_audio_base64": base64.b64encode(ref_audio).decode(),
            "ref_text": REF_TEXT,
            "max_new_tokens": 4096,
        }
    )
    polls = 0
    while True:  # the task is polled until it is terminal: a wrong answer here polls forever
        polls += 1
        outcome, value = tasks_ts_poll(modal, job["job_id"])
        if outcome == "failed":
            raise UtterError(value)
        if outcome == "completed":
            return value, polls
        time.sleep(0.05)


class TtsQwen:
    """backend/services/tts_qwen.py at 9fd3889 (httpx.AsyncClient, as there)."""

    def __init__(self, urls: Endpoints, added: dict[str, str]):
        self.urls = urls
        self.added = added
        self.cancelled: dict | None = None  # what cancel_job returned (it only logs it)

    def client(self, **kw) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=self.added, **kw)

    async def make_modal_request(self, endpoint: str, payload: dict) -> bytes:  # _make_modal_request
        timeout = httpx.Timeout(connect=30.0, read=160.0, write=30.0, pool=30.0)
        async with self.client(timeout=timeout, follow_redirects=False) as client:
            response = await client.post(endpoint, json=payload)
            if response.status_code == 303:
                raise AssertionError("a 303 only comes from Modal's own proxy after 150 s")
            if response.status_code == 200:
                return response.content
            detail = response.text[:500] if response.text else "No error details"
            raise UtterError(f"Modal request failed ({response.status_code}): {detail}")

    async def generate_speech_qwen(self, text: str, ref_audio: bytes, language: str = "Auto") -> bytes:
        payload = {
            "text": text,
            "language": language,
            "ref_audio_base64": base64.b64encode(ref_audio).decode("utf-8"),
            "ref_text": REF_TEXT,
            "max_new_tokens": 2048,
        }
        return await self.make_modal_request(self.urls.clone, payload)

    async def design_voice(self, text: str, language: str, instruct: str) -> bytes:
        payload = {"text": text, "language": language, "instruct": instruct}
        return await self.make_modal_request(self.urls.design, payload)

    async def submit_generation_job(self, text: str, ref_audio: bytes, language: str = "Auto") -> dict:
        payload = {
            "text": text,
            "language": language,
            "ref_audio_base64": base64.b64encode(ref_audio).decode("utf-8"),
            "ref_text": REF_TEXT,
            "max_new_tokens": 4096,
        }
        async with self.client(timeout=30.0) as client:
            response = await client.post(self.urls.submit, json=payload)
            if response.status_code != 200:
                raise UtterError(f"Failed to submit job: {response.text[:300]}")
            return response.json()

    async def check_job_status(self, job_id: str) -> dict:
        async with self.client(timeout=30.0) as client:
            response = await client.get(self.urls.status, params={"job_id": job_id})
            if response.status_code != 200:
                raise UtterError(f"Failed to check job status: {response.text[:300]}")
            return response.json()

    async def get_job_result(self, job_id: str) -> bytes:
        async with self.client(timeout=60.0) as client:
            response = await client.get(self.urls.result, params={"job_id": job_id})
            if response.status_code == 202:
                raise UtterError("Job still processing")
            if response.status_code != 200:
                raise UtterError(f"Failed to get job result: {response.text[:300]}")
            return response.content

    async def cancel_job(self, job_id: str) -> dict:
        async with self.client(timeout=30.0) as client:
            response = await client.post(self.urls.cancel, json={"job_id": job_id})
            if response.status_code != 200:
                raise UtterError(f"Failed to cancel job: {response.text[:300]}")
            return response.json()

    async def poll_job_until_complete(self, job_id: str, poll_interval: float, cancellation_checker=None):
        """Its stop rule: completed and result_ready -> fetch; failed -> raise; cancel requested -> cancel_job
        and raise. (poll_interval is 5 s there; the rest of the loop is the same.) Returns (WAV, polls)."""
        polls = 0
        while True:
            polls += 1
            if cancellation_checker and cancellation_checker(polls):
                self.cancelled = await self.cancel_job(job_id)
                raise UtterError("Generation cancelled by user")
            status = await self.check_job_status(job_id)
            if status.get("status") == "completed" and status.get("result_ready"):
                return await self.get_job_result(job_id), polls
            if status.get("status") == "failed":
                raise UtterError(f"Job failed: {status.get('error', 'Unknown error')}")
            await asyncio.sleep(poll_interval)


def wav_info(data: bytes) -> tuple[int, int]:
    """(sample rate, samples) of a WAV, decoded with PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.rate, samples


# ---- targets: the Modal app served by uvicorn, and `utter-tts serve --compat` processes ------------------
class Target:
    def __init__(self, name: str, url: str, keys_on: bool, log: Path | None = None):
        self.name = name
        self.urls = Endpoints(url)
        self.keys_on = keys_on
        self.log = log
        # keys on: the one header utter adds (docs/deploy-modal.md); off: utter's client unchanged
        self.added = {"Authorization": f"Bearer {KEY}"} if keys_on else {}


@pytest.fixture(scope="module")
def modal_apps(ckpts, tmp_path_factory):
    """Two web apps of one QwenTTS container (models loaded once): UTTER_QWEN_COMPAT_AUTH=off and the
    default (on); jobs through the local stand-in for Modal's spawn / FunctionCall."""
    qwen = load_modal_module("qwen_tts_replay")
    with pytest.MonkeyPatch.context() as mp:
        set_modal_env(mp, ckpts, tmp_path_factory.mktemp("modal-data"))
        stand_in = StandIn(qwen)
        mp.setattr(qwen, "jobs_dict", stand_in.store)
        mp.setattr(qwen, "job_backend", lambda: (stand_in.spawn, stand_in.Call, stand_in.store))
        container = qwen.QwenTTS()
        mp.setenv("UTTER_QWEN_COMPAT_AUTH", "off")
        keyless = container.web.local()
        mp.setenv("UTTER_QWEN_COMPAT_AUTH", "on")
        keyed = container.web.local()
        with ServerThread(keyless) as off, ServerThread(keyed) as on:
            yield {
                "modal-keys-off": Target("modal-keys-off", off.url, keys_on=False),
                "modal-keys-on": Target("modal-keys-on", on.url, keys_on=True),
            }
        stand_in.pool.shutdown(wait=True, cancel_futures=True)


def start_serve(ckpts, data_dir: Path, compat_auth: str) -> tuple[subprocess.Popen, str, Path]:
    """`utter-tts serve BASE DESIGN --compat` in its own process, its log (level info) in a file."""
    port = free_port()
    log = data_dir / "serve.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "utter_tts.cli",
        "serve",
        str(ckpts["base"]),
        str(ckpts["voice_design"]),
        *("--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)),
        *("--device", "cpu", "--dtype", "float32", "--max-new-tokens", str(FRAMES), "--log-level", "info"),
        *("--compat", "--compat-auth", compat_auth),
    ]
    env = dict(os.environ, UTTER_TTS_API_KEYS=KEY)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:  # utter's /health: 503 while the models load, 200 once they have
        if proc.poll() is not None:
            raise RuntimeError(f"utter-tts serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


@pytest.fixture(scope="module")
def serves(ckpts, tmp_path_factory):
    procs = {}
    try:
        for auth in ("off", "on"):
            procs[auth] = start_serve(ckpts, tmp_path_factory.mktemp(f"serve-{auth}"), auth)
        yield {
            f"serve-keys-{auth}": Target(f"serve-keys-{auth}", url, auth == "on", log)
            for auth, (_, url, log) in procs.items()
        }
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=60)


TARGETS = ["modal-keys-off", "modal-keys-on", "serve-keys-off", "serve-keys-on"]


@pytest.fixture(scope="module", params=TARGETS)
def target(request) -> Target:
    return request.getfixturevalue("modal_apps" if request.param.startswith("modal") else "serves")[
        request.param
    ]


@pytest.fixture(scope="module")
def ref_audio() -> bytes:
    return make_wav(seconds=2.0, seed=3)


# ---- the flows ---------------------------------------------------------------------------------------
def test_health_and_languages_are_the_originals(target):
    health = httpx.get(f"{target.urls.base}/health").json()
    assert (health["status"], health["gpu"]) == ("healthy", "none")
    assert health["model"] == "base-tiny-1.7b"  # MODEL_NAME: the last part of the checkpoint's id or folder
    assert health["attention_implementation"].startswith("sdpa")
    assert health["supported_languages"] == SUPPORTED_LANGUAGES
    assert httpx.get(f"{target.urls.base}/languages").json() == {
        "languages": SUPPORTED_LANGUAGES,
        "default": "Auto",
        "note": "Use 'Auto' for automatic language detection",
    }


def test_design_preview_as_tasks_ts_asks_for_it(target):
    """tasks.ts design_preview: designVoicePreviewBytes({text, language, instruct}) with the trimmed task
    metadata (language "English" when unset)."""
    modal = ModalTs(target.urls, target.added)
    wav = modal.design_voice_preview_bytes(
        {"text": "Hello, this is a preview.", "language": "English", "instruct": "A warm, calm voice."}
    )
    assert wav_info(wav)[0] == 24000 and wav_info(wav)[1] > 0


def test_tts_qwen_clone_and_design(target, ref_audio):
    client = TtsQwen(target.urls, target.added)
    wav = asyncio.run(client.generate_speech_qwen("Hello there, a cloned voice.", ref_audio, "English"))
    assert wav_info(wav)[0] == 24000 and wav_info(wav)[1] > 0
    wav = asyncio.run(client.design_voice("Ahoy there.", "English", "A deep, rasping pirate voice."))
    assert wav_info(wav)[1] > 0


def test_clone_batch_as_the_original_reads_it(target, ref_audio):
    texts = ["First line.", "A second line that is longer than fifty characters, to see it cut."]
    r = httpx.post(
        f"{target.urls.base}/clone-batch",
        headers=target.added,
        json={
            "texts": texts,
            "languages": ["English", "German"],
            "ref_audio_base64": base64.b64encode(ref_audio).decode(),
            "ref_text": REF_TEXT,
            "max_new_tokens": 2048,
        },
        timeout=None,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["status"], out["count"]) == ("success", 2)
    # app.py: "text": texts[i][:50] + "..." if len(texts[i]) > 50 else texts[i]
    assert [f["text"] for f in out["audio_files"]] == [texts[0], texts[1][:50] + "..."]
    for i, f in enumerate(out["audio_files"]):
        wav = base64.b64decode(f["audio_base64"])
        assert f["index"] == i and f["size_bytes"] == len(wav) and wav_info(wav)[1] > 0


def test_10000_character_job_through_generate_and_tasks_ts(target, ref_audio):
    """generate.ts submits utter's longest text; tasks.ts polls until completed with result_ready, then
    fetches the WAV. Before result_ready existed this loop never ended."""
    modal = ModalTs(target.urls, target.added)
    wav, polls = utter_generate_and_poll(modal, LONG_TEXT, ref_audio)
    rate, samples = wav_info(wav)
    assert rate == 24000 and samples > 0 and polls >= 1


def test_job_through_tts_qwen_then_cancel(target, ref_audio):
    client = TtsQwen(target.urls, target.added)

    async def flow():
        job = await client.submit_generation_job("A shorter job. It has two sentences.", ref_audio)
        assert set(job) == {"job_id", "status", "text_length"} and job["status"] == "submitted"
        assert job["text_length"] == len("A shorter job. It has two sentences.")
        wav, _ = await client.poll_job_until_complete(job["job_id"], poll_interval=0.05)
        assert wav_info(wav)[1] > 0
        # a 10,000-character job the user cancels at once: cancel_job must answer 200
        job = await client.submit_generation_job(LONG_TEXT, ref_audio)
        with pytest.raises(UtterError, match="^Generation cancelled by user$"):
            await client.poll_job_until_complete(job["job_id"], 0.05, cancellation_checker=lambda n: n == 2)
        assert client.cancelled == {"job_id": job["job_id"], "status": "cancelled"}
        status = await client.check_job_status(job["job_id"])
        # cancelled while it ran, as the original reported it; or finished just before the cancel landed
        assert status in (
            {
                "job_id": job["job_id"],
                "status": "failed",
                "result_ready": False,
                "error": "Job was cancelled",
            },
            {"job_id": job["job_id"], "status": "completed", "result_ready": True},
        )

    asyncio.run(flow())


def test_modal_ts_cancel_and_unknown_job(target):
    modal = ModalTs(target.urls, target.added)
    r = modal.cancel_job("fc-01NOSUCHJOB")
    assert r.status_code == 404 and r.json() == {"detail": "Failed to cancel: Job not found"}
    # the original answered 200 "failed" for an id it could not find; utter's pollers handle that
    assert modal.check_job_status("fc-01NOSUCHJOB") == {
        "job_id": "fc-01NOSUCHJOB",
        "status": "failed",
        "result_ready": False,
        "error": "Job not found",
    }
    assert tasks_ts_poll(modal, "fc-01NOSUCHJOB") == ("failed", "Job not found")


def test_keys_on_refuse_the_unchanged_client(target, ref_audio):
    """With keys on, utter's unchanged client gets 401 (the endpoint is closed by default); with keys off
    the server's own routes still want a key."""
    unchanged = ModalTs(target.urls, {})
    if target.keys_on:
        with pytest.raises(UtterError, match=r"^Modal submit failed \(401\)"):
            unchanged.submit_job({"text": "x", "ref_audio_base64": "AAAA", "ref_text": "y"})
    assert httpx.get(f"{target.urls.base}/v1/models").status_code == 401


# ---- every 400 of the original, message by message ---------------------------------------------------------
@pytest.fixture(scope="module")
def local_app(models, loopback_policy, tmp_path_factory):
    """utter's routes on the server app in-process, keys off, frames capped (generation is not the point)."""
    service = CompatService(
        base=models["base"],
        design_model=models["voice_design"],
        limits=Limits(frame_cap=3, design_max_new_tokens=3),
        fetch_policy=loopback_policy,
        cache=InlineVoices(8),
    )
    data = tmp_path_factory.mktemp("oracle")
    runner = LocalJobRunner(service, data / "compat-jobs")
    app = build_app(service, runner, [KEY], data, compat_auth=False)
    with TestClient(app) as client:
        yield client
    runner.close()


B64 = base64.b64encode(make_wav(seconds=1.5)).decode()
REF = "<the reference clip, base64>"  # in generated bodies (short reprs); sent as B64
ABSENT = object()  # a key left out: the original's default applies
ANY = st.sampled_from(
    [ABSENT, "", None, 0, 5, True, False, [], ["x"], {}, {"a": 1}, "Hi there.", "a\ud800b", "nul\x00"]
)
TEXT = st.one_of(ANY, st.sampled_from(["   ", "a" * 501, "Sentence one. Sentence two.", "e\u0301t\u00e9"]))
LANGUAGE = st.one_of(ANY, st.sampled_from(SUPPORTED_LANGUAGES + ["Klingon", "english", " English"]))
REF64 = st.one_of(ANY, st.sampled_from(["data:audio/wav;base64," + REF, "!!not base64!!"]))
URL = st.one_of(ANY, st.sampled_from(["http://127.0.0.2/ref.wav", "ftp://example.com/a.wav"]))
TOKENS = st.one_of(ANY, st.sampled_from([2048, 4096, 3, -1, "3", 10**9]))


def body(valid: dict, **fields: st.SearchStrategy) -> st.SearchStrategy[dict]:
    """`valid` with each field kept four times in five, else left out or replaced by a value from its
    strategy: about a quarter of the bodies go through, the rest break in one or more places."""

    def field(name: str, strategy: st.SearchStrategy) -> st.SearchStrategy:
        keep = st.just(valid.get(name, ABSENT))
        return st.integers(0, 4).flatmap(lambda i: keep if i else strategy)

    parts = st.fixed_dictionaries({name: field(name, strategy) for name, strategy in fields.items()})
    return parts.map(lambda d: {k: v for k, v in d.items() if v is not ABSENT})


CLONE = {"text": "Hello there.", "language": "English", "ref_text": "Words.", "ref_audio_base64": REF}
ROUTES = {
    "/clone": (
        original_clone,
        body(
            CLONE,
            text=TEXT,
            language=LANGUAGE,
            ref_text=TEXT,
            ref_audio_base64=REF64,
            ref_audio_url=URL,
            max_new_tokens=TOKENS,
        ),
    ),
    "/clone-batch": (
        original_clone_batch,
        body(
            {
                "texts": ["One.", "Two."],
                "languages": ["English", "German"],
                "ref_text": "W.",
                "ref_audio_base64": B64,
            },
            texts=st.one_of(ANY, st.lists(TEXT, max_size=3)),
            languages=st.one_of(ANY, st.lists(LANGUAGE.filter(lambda x: x is not ABSENT), max_size=3)),
            ref_text=TEXT,
            ref_audio_base64=REF64,
            ref_audio_url=URL,
            max_new_tokens=TOKENS,
        ),
    ),
    "/design": (
        original_design,
        body({"text": "Hi.", "instruct": "A calm voice."}, text=TEXT, language=LANGUAGE, instruct=TEXT),
    ),
    "/submit-job": (
        original_submit_job,
        body(
            CLONE,
            text=TEXT,
            language=LANGUAGE,
            ref_text=TEXT,
            ref_audio_base64=REF64,
            ref_audio_url=URL,
            max_new_tokens=TOKENS,
        ),
    ),
}


def lenient_language(request: dict, message: str) -> bool:
    """The one 400 of the original we do not give: a language name in another case or with spaces."""
    prefix = "Unsupported language: "
    langs = [request.get("language")]
    if isinstance(request.get("languages"), list):
        langs += request["languages"]
    return message.startswith(prefix) and any(
        isinstance(x, str) and normalize_language(x) and message[len(prefix) :].startswith(x) for x in langs
    )


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_answer_of_the_original(local_app, route):
    """Bodies of every shape: where the original answered 400, ours is the same 400, word for word; where
    it went on to the model (audio, or a 500 for what the model choked on), ours is audio or a 4xx."""
    oracle, bodies = ROUTES[route]

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(bodies)
    def check(request):
        status, message = oracle(request)
        if status == 400 and "\ud800" in message:
            status = 500  # the original's JSON response could not encode a lone surrogate it echoed
        sent = json.dumps(request).replace(REF, B64)
        r = local_app.post(route, content=sent, headers={"Content-Type": "application/json"})
        if status == 400 and not lenient_language(request, message):
            assert (r.status_code, r.json()) == (400, {"detail": message}), request
        else:
            assert r.status_code in (200, 400), (request, r.text)
            if r.status_code == 400:
                assert set(r.json()) == {"detail"} and r.json()["detail"]
            elif route == "/submit-job":
                out = r.json()
                assert out == {
                    "job_id": out["job_id"],
                    "status": "submitted",
                    "text_length": len(request["text"]),
                }
            elif route == "/clone-batch":
                assert r.json()["count"] == len(request["texts"])
            else:
                assert r.headers["content-type"] == "audio/wav" and wav_info(r.content)[1] > 0

    check()


def test_original_messages_in_order(local_app):
    """The issue's cases, named: what the original said first is what we say."""
    clone = {"text": "Hi.", "language": "English", "ref_audio_base64": B64, "ref_text": "W."}
    cases = [
        ("/clone", {"text": "Hi.", "language": "English"}, "'ref_text' is required"),
        (
            "/clone",
            {**clone, "language": "Klingon", "ref_audio_base64": ""},
            f"Unsupported language: Klingon. Supported: {SUPPORTED}",
        ),
        ("/submit-job", {"text": "Hi.", "ref_text": "W."}, "'ref_audio_base64' is required"),
        (
            "/submit-job",
            {"text": "Hi.", "ref_text": "W.", "ref_audio_url": "http://x/a.wav"},
            "'ref_audio_base64' is required",
        ),
        (
            "/clone-batch",
            {"texts": ["a"], "ref_text": "W.", "ref_audio_base64": B64},
            "Length of 'texts' must match 'languages'",
        ),
        (
            "/clone",
            {**clone, "text": "a\ud800b"},
            "'text' contains a lone UTF-16 surrogate at index 1: it is not valid Unicode text",
        ),
        (
            "/design",
            {"text": "Hi.", "instruct": "calm\x00"},
            "'instruct' contains the control character U+0000 at index 4",
        ),
    ]
    for route, request, message in cases:
        r = local_app.post(route, content=json.dumps(request), headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()) == (400, {"detail": message}), request


def test_job_status_and_result_answers(local_app, models, tmp_path):
    """/job-status and /job-result for ids the original could not find, an absent or empty job_id, and a job
    still running (202 after the wait, deterministic here: the job is held until the test lets it go)."""
    assert local_app.get("/job-status").status_code == 422
    assert local_app.get("/job-status").json()["detail"][0]["loc"] == ["query", "job_id"]
    assert local_app.get("/job-result?job_id=").json() == {"detail": "'job_id' is required"}
    r = local_app.get("/job-result?job_id=fc-nothing")
    assert (r.status_code, r.json()) == (404, {"detail": "Failed to get result: Job not found"})

    gate = threading.Event()

    class Held(CompatService):
        def synthesize_job(self, *a, **kw):  # a job's sentences (kept as they finish, resumable)
            gate.wait(60)
            return super().synthesize_job(*a, **kw)

    service = Held(base=models["base"], limits=Limits(frame_cap=3))
    runner = LocalJobRunner(service, tmp_path / "jobs")
    app = FastAPI()
    app.include_router(build_router(service, runner, result_wait_s=0.2))
    with TestClient(app) as c:
        job = c.post("/submit-job", json={"text": "Hi.", "ref_audio_base64": B64, "ref_text": "W."}).json()
        r = c.get(f"/job-result?job_id={job['job_id']}")
        assert (r.status_code, r.json()) == (202, {"detail": "Job still processing"})
        assert c.get(f"/job-status?job_id={job['job_id']}").json()["status"] == "running"
        gate.set()
        while c.get(f"/job-status?job_id={job['job_id']}").json()["status"] == "running":
            time.sleep(0.05)
        r = c.get(f"/job-result?job_id={job['job_id']}")
        assert r.status_code == 200 and r.headers["content-disposition"] == "attachment; filename=output.wav"
    runner.close()


# ---- auth -----------------------------------------------------------------------------------------------
def test_modal_proxy_auth_setting(monkeypatch):
    """UTTER_QWEN_PROXY_AUTH=1 at deploy puts Modal's proxy auth (Modal-Key / Modal-Secret headers, checked by
    Modal before a request reaches the app) in front of the web endpoint; the pinned modal supports it."""
    monkeypatch.setenv("UTTER_QWEN_PROXY_AUTH", "1")
    qwen = load_modal_module("qwen_tts_proxy_auth")
    assert qwen.PROXY_AUTH is True
    web = qwen.QwenTTS._get_class_service_function().info().method_details["web"]
    assert web.unauthenticated is False


def test_proxy_headers_pass_through_the_keyless_app(modal_apps, ref_audio):
    """Behind Modal's proxy auth, utter adds Modal-Key and Modal-Secret instead of a bearer key; the app
    (compat auth off) serves such requests as any other."""
    proxied = {"Modal-Key": "wk-test", "Modal-Secret": "ws-test"}
    client = TtsQwen(modal_apps["modal-keys-off"].urls, proxied)
    assert wav_info(asyncio.run(client.generate_speech_qwen("Hi.", ref_audio)))[1] > 0


def test_compat_auth_off_is_logged_loudly(serves):
    log = serves["serve-keys-off"].log.read_text()
    assert "WARNING utter_tts.compat: UTTER'S ROUTES ARE OPEN" in log
    assert "ROUTES ARE OPEN" not in serves["serve-keys-on"].log.read_text()


def test_websocket_api_key_never_reaches_the_log(serves):
    """The browser's way to send a key on a WebSocket (?api_key=) is redacted from the access log."""
    target = serves["serve-keys-on"]
    url = (
        target.urls.base.replace("http://", "ws://")
        + "/v1/audio/speech/stream?"
        + urlencode({"api_key": KEY})
    )
    with ws_connect(url, open_timeout=30) as ws:
        ws.send(json.dumps({"type": "session.start", "voice": "design", "instructions": "calm"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.started"
        ws.send(json.dumps({"type": "input.append", "text": "Hello."}))
        ws.send(json.dumps({"type": "input.flush"}))
        while True:
            msg = ws.recv(timeout=60)
            if isinstance(msg, str) and json.loads(msg)["type"] in ("session.done", "error"):
                break
    httpx.get(f"{target.urls.base}/v1/models?api_key={KEY}")  # a plain request line with a key in it too
    deadline = time.monotonic() + 30
    while "/v1/models?api_key=" not in target.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)  # the access log line is written after the response
    log = target.log.read_text()
    assert "/v1/audio/speech/stream?api_key=[redacted]" in log and "/v1/models?api_key=[redacted]" in log
    assert KEY not in log
