"""utter's Qwen3-TTS backend on Modal, served by utter-tts (our engine), compatible with utter's calls.

Deploy:   modal deploy modal_app/qwen_tts.py
Try it:   modal run modal_app/qwen_tts.py::test_clone --ref-audio me.wav
          modal run modal_app/qwen_tts.py::test_design

Thin on purpose: every method and route delegates to `utter_tts.compat` (utter's contract), served beside
`utter_tts.server` (the speech server) on the one app `utter_tts.serve` builds; all of it is tested offline
with tiny checkpoints. Nothing here imports
torch or utter_tts at module level, so `modal deploy` works from a machine with only `modal` installed.
See docs/deploy-modal.md.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import modal

APP_NAME = "utter-qwen-tts"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The stack the engine is developed and measured on, named once (read as data: no utter_tts import here).
# torch's CUDA 12.8 build runs on the A10G's driver and ships the Triton the fused kernels are written
# for. No flash-attn: the engine attends with its own Triton kernel (and SDPA where the kernels are off),
# and the flash-attn wheel pinned before was built for torch 2.8; docs/deploy-modal.md says what a GPU run
# must still decide.
REMOTE_ROOT = Path("/opt/utter-tts")  # where the image holds the project


def _stack() -> dict[str, str]:
    # the checkout when deploying; inside a container (this file alone at /root) the image's copy
    for root in (PROJECT_ROOT, REMOTE_ROOT):
        path = root / "src" / "utter_tts" / "stack.json"
        if path.is_file():
            return json.loads(path.read_text("utf-8"))
    raise FileNotFoundError("src/utter_tts/stack.json, beside this app or in the image")


STACK = _stack()
PYTHON_VERSION = STACK["python"]
TORCH_VERSION = STACK["torch"]
TORCH_CUDA = STACK["torch_cuda"]
TRITON_VERSION = STACK["triton"]

GPU = "A10G"  # 24 GB, sm_86: both 1.7B models in bf16 (~9 GB) stay resident
CLASS_TIMEOUT_S = 600  # the plan's sketch (its prose says 300): one call never needs more
# The plan's `keep_warm=300` would today mean 300 always-on A10Gs. Its intent is a 5-minute warm window:
# an idle container stays up for 300 s after its last request, and none is kept when there is no traffic.
SCALEDOWN_WINDOW_S = 300
MIN_CONTAINERS = 0
# Requests one container serves at once: both engines full (8 clone + 8 design streams, each up to 2,048
# frames), which the 21 GiB-capped H100 run of bench/bench_engine.py (section deploy) shows to fit an A10G.
MAX_INPUTS = int(os.environ.get("UTTER_QWEN_MAX_INPUTS", "16"))
JOB_TIMEOUT_S = 2 * 3600  # 50,000 characters (~55 min of speech) as one job; web calls are cut at 150 s
# Modal proxy auth in front of the web app (utter must then send Modal-Key and Modal-Secret headers); off
# by default, set UTTER_QWEN_PROXY_AUTH=1 when deploying to turn it on. Our API keys guard the app either
# way, utter's routes too unless UTTER_QWEN_COMPAT_AUTH=off (read at container start; docs/deploy-modal.md).
PROXY_AUTH = os.environ.get("UTTER_QWEN_PROXY_AUTH", "0") == "1"
# Modal's GPU memory snapshots (alpha) with UTTER_QWEN_GPU_SNAPSHOT=1 at deploy time: the web container's
# snapshot then holds both models on the GPU and every captured graph, so a restored container serves at
# once instead of loading, compiling and capturing. UNTESTED here (no Modal GPU can be reached): whether
# CUDA graphs and Triton's loaded kernels survive Modal's CUDA checkpoint/restore is the first thing to
# check (docs/deploy-modal.md). Off: the snapshot holds the imports and the models load after restore.
GPU_SNAPSHOT = os.environ.get("UTTER_QWEN_GPU_SNAPSHOT", "0") == "1"

HF_CACHE_DIR = "/cache"  # HF_HOME: the weights are downloaded once, not at every cold start
VOICES_DIR = "/voices"
DATA_DIR = "/tmp/utter-tts"  # per container: server state that must not be shared through a Volume
WARM_COMMIT_WAIT_S = 600  # a background warm-up that takes longer leaves its kernels to the next container

_IGNORE = [".git", ".venv", "**/__pycache__", "**/*.pyc", "tests", "bench", "shared", "docs", "*.wav"]

image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .apt_install("git", "ffmpeg")
    .pip_install(
        f"torch=={TORCH_VERSION}",
        f"triton=={TRITON_VERSION}",
        index_url=f"https://download.pytorch.org/whl/{TORCH_CUDA}",
    )
    .add_local_dir(PROJECT_ROOT, str(REMOTE_ROOT), copy=True, ignore=_IGNORE)
    # torch is in already and the project asks only torch>=2.4, so this pulls no second torch
    .run_commands("pip install /opt/utter-tts")
    .env(
        {
            "HF_HOME": f"{HF_CACHE_DIR}/huggingface",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # Triton's compiled kernels on the cache volume: a fresh container loads them instead of
            # compiling every variant again
            "TRITON_CACHE_DIR": f"{HF_CACHE_DIR}/triton",
            # the container reads it too: which hook loads the models
            "UTTER_QWEN_GPU_SNAPSHOT": "1" if GPU_SNAPSHOT else "0",
        }
    )
)

app = modal.App(APP_NAME, image=image)

hf_cache = modal.Volume.from_name("utter-qwen-tts-hf-cache", create_if_missing=True)
# The voice library. Volumes are last-write-wins without locks, so it has ONE writer: `voice_library`
# below (max_containers=1) owns every write and commits; the web containers never write to it.
voices = modal.Volume.from_name("utter-qwen-tts-voices", create_if_missing=True)
# Job state lives here, not in a web container: any container can answer a poll.
jobs_dict = modal.Dict.from_name("utter-qwen-tts-jobs", create_if_missing=True)
# UTTER_TTS_API_KEYS (comma-separated bearer keys); the app refuses to start without keys. The secret may
# also carry UTTER_QWEN_COMPAT_AUTH=off to serve utter's routes without keys.
api_keys = modal.Secret.from_name("utter-qwen-tts-api-keys")

CLS_OPTIONS: dict[str, Any] = dict(
    gpu=GPU,
    timeout=CLASS_TIMEOUT_S,
    scaledown_window=SCALEDOWN_WINDOW_S,
    min_containers=MIN_CONTAINERS,
    volumes={HF_CACHE_DIR: hf_cache},
    secrets=[api_keys],
    # Memory snapshot of the imports (torch, utter_tts, fastapi: seconds at every cold start); the models
    # load after restore, unless GPU_SNAPSHOT keeps them (and the graphs) in the snapshot too.
    enable_memory_snapshot=True,
)
if GPU_SNAPSHOT:
    CLS_OPTIONS["experimental_options"] = {"enable_gpu_snapshot": True}
# A job call that fails (a crashed GPU, a lost connection) runs again, and goes on from the sentences its
# earlier attempts stored in the job Dict; one preempted is restarted by Modal on the same input anyway.
# A job that failed for its request's sake or was cancelled returns instead of raising: never retried.
JOB_RETRIES = modal.Retries(max_retries=3, backoff_coefficient=2.0, initial_delay=5.0, max_delay=60.0)
JOB_OPTIONS: dict[str, Any] = dict(
    gpu=GPU,
    timeout=JOB_TIMEOUT_S,
    retries=JOB_RETRIES,
    scaledown_window=60,
    min_containers=0,
    volumes={HF_CACHE_DIR: hf_cache},
    enable_memory_snapshot=True,
)


def _settings():
    from utter_tts.compat.deploy import DeploySettings

    return DeploySettings.from_env()  # model ids etc. read at container start (tests point them at tiny ones)


def _commit_cache() -> None:
    """Keep downloaded weights for the next cold start (no-op when running locally)."""
    if modal.is_local():
        return
    try:
        hf_cache.commit()
    except Exception as e:  # a failed commit only costs a download next time
        print(f"hf cache commit failed: {e}")


def _commit_cache_when_warm(service) -> None:
    """Commit the cache volume now (the weights) and again, from a thread, once the engines' background
    warm-up has captured every batch size: its Triton kernels (those of the larger batches) are then on
    the volume, so the next cold container loads them instead of compiling them."""
    _commit_cache()
    engines = [e for e in (service.base_engine, service.design_engine) if e is not None]

    def when_warm() -> None:
        if all(e.wait_warm(timeout=WARM_COMMIT_WAIT_S) for e in engines):
            _commit_cache()

    threading.Thread(target=when_warm, name="utter-tts-cache-commit", daemon=True).start()


def job_backend():
    """(spawn, FunctionCall class, store) of the job runner; tests replace this with a local stand-in."""
    return QwenTTSJobs().run.spawn, modal.FunctionCall, jobs_dict


@app.cls(**CLS_OPTIONS)
@modal.concurrent(max_inputs=MAX_INPUTS)
class QwenTTS:
    """Both 1.7B models resident: Base (cloning) and VoiceDesign (design)."""

    @modal.enter(snap=True)
    def warm(self) -> None:
        from utter_tts.serve import warm_imports

        warm_imports()  # captured by the memory snapshot; touches no GPU
        if GPU_SNAPSHOT:  # the models and every graph in the snapshot as well (see GPU_SNAPSHOT)
            self._load(wait_warm=True)

    @modal.enter(snap=False)
    def load(self) -> None:
        if not GPU_SNAPSHOT:
            self._load(wait_warm=False)

    def _load(self, wait_warm: bool) -> None:
        from utter_tts.compat.deploy import load_service

        self.service = load_service(_settings())
        if wait_warm:  # a snapshot taken mid-capture would restore a half-warm engine
            for engine in (self.service.base_engine, self.service.design_engine):
                if engine is not None:
                    engine.wait_warm(timeout=WARM_COMMIT_WAIT_S)
        _commit_cache_when_warm(self.service)

    # ---- the plan's methods ----------------------------------------------------------------------------
    @modal.method()
    def clone(
        self, text: str, ref_audio_bytes: bytes, language: str = "English", ref_text: str | None = None
    ) -> bytes:
        return self.service.clone(text, ref_audio_bytes, language, ref_text)

    @modal.method()
    def design(self, text: str, voice_description: str, language: str = "English") -> bytes:
        return self.service.design(text, voice_description, language)

    # ---- what utter's backend calls today ----------------------------------------------------------------
    @modal.method()
    def generate_voice_clone(
        self, text: str, language: str, ref_audio: str, ref_text: str, max_new_tokens: int = 2048
    ) -> bytes:
        return self.service.generate_voice_clone(text, language, ref_audio, ref_text, max_new_tokens)

    @modal.method()
    def generate_voice_clone_batch(
        self,
        texts: list[str],
        languages: list[str],
        ref_audio: str,
        ref_text: str,
        max_new_tokens: int = 2048,
    ) -> list[bytes]:
        return self.service.generate_voice_clone_batch(texts, languages, ref_audio, ref_text, max_new_tokens)

    @modal.method()
    def generate_voice_design(self, text: str, language: str, instruct: str) -> bytes:
        return self.service.generate_voice_design(text, language, instruct)

    @modal.method()
    def get_model_info(self) -> dict:
        return self.service.get_model_info()

    # ---- every HTTP route, from one web endpoint ---------------------------------------------------------
    @modal.asgi_app(requires_proxy_auth=PROXY_AUTH)
    def web(self):
        from utter_tts.compat.job_runners import ModalJobRunner
        from utter_tts.serve import build_app

        spawn, function_call, store = job_backend()
        runner = ModalJobRunner(spawn, function_call, store, check=self.service.parse_job)
        keys = [k.strip() for k in os.environ.get("UTTER_TTS_API_KEYS", "").split(",") if k.strip()]
        data_dir = os.environ.get("UTTER_QWEN_DATA_DIR", DATA_DIR)
        return build_app(self.service, runner, keys, data_dir, compat_auth=_settings().compat_auth)


@app.cls(**JOB_OPTIONS)
class QwenTTSJobs:
    """Long clone jobs (up to 50,000 characters), outside the web containers and their 150 s limit."""

    @modal.enter(snap=True)
    def warm(self) -> None:
        from utter_tts.serve import warm_imports

        warm_imports()

    @modal.enter(snap=False)
    def load(self) -> None:
        from utter_tts.compat.deploy import load_service

        self.service = load_service(_settings(), load_design=False)
        _commit_cache()

    @modal.method()
    def run(self, payload: dict) -> bytes:
        """One job, its sentences kept in the job Dict as they finish: an attempt after a failure or a
        preemption goes on from them. b"" when the job ended without audio (the Dict says why)."""
        from utter_tts.compat.checks import CompatError
        from utter_tts.compat.job_runners import run_stored_job
        from utter_tts.compat.synthesizer import JobCancelled

        try:
            return run_stored_job(self.service, payload, jobs_dict, retried=True)
        except (CompatError, JobCancelled):
            return b""  # final: a retry would end the same way (other errors raise and are retried)


@app.function(volumes={VOICES_DIR: voices}, max_containers=1, timeout=120)
def voice_library(op: str, owner: str, name: str = "", voice_bytes: bytes = b"", voice_id: str = "") -> Any:
    """The voice library's single writer: save / delete / list, committed so readers see it after reload."""
    from utter_tts.compat.voicelib import apply

    voices.reload()
    out = apply(VOICES_DIR, op, owner, name=name, voice_bytes=voice_bytes, voice_id=voice_id)
    if op != "list":
        voices.commit()
    return out


# ---- `modal run` entrypoints ---------------------------------------------------------------------------
def run_clone(call, ref_audio: str, text: str, out: str, language: str, ref_text: str | None) -> float:
    data = Path(ref_audio).read_bytes()
    started = time.perf_counter()
    wav = call(text, data, language, ref_text)
    took = time.perf_counter() - started
    Path(out).write_bytes(wav)
    print(f"clone: {len(wav)} bytes of WAV in {took:.2f} s -> {out}")
    return took


def run_design(call, text: str, description: str, out: str, language: str) -> float:
    started = time.perf_counter()
    wav = call(text, description, language)
    took = time.perf_counter() - started
    Path(out).write_bytes(wav)
    print(f"design: {len(wav)} bytes of WAV in {took:.2f} s -> {out}")
    return took


@app.local_entrypoint()
def test_clone(
    ref_audio: str,
    text: str = "Hello! This voice was cloned on Modal by utter-tts.",
    out: str = "clone.wav",
    language: str = "English",
    ref_text: str = "",
):
    run_clone(QwenTTS().clone.remote, ref_audio, text, out, language, ref_text or None)


@app.local_entrypoint()
def test_design(
    description: str = "A deep, rasping pirate voice.",
    text: str = "Ahoy! Welcome aboard, and mind the rigging.",
    out: str = "design.wav",
    language: str = "English",
):
    run_design(QwenTTS().design.remote, text, description, out, language)
