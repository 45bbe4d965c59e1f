"""modal_app/qwen_tts.py imported offline with the real `modal` package (no token): its methods and
@modal.enter hooks run in-process via `.local()`, its asgi app serves utter's routes under TestClient, jobs
run against a local stand-in for spawn / FunctionCall, and its Modal configuration is checked from
`.info()` and, for what `.info()` does not show, from the arguments given to `app.cls` and the image."""

from __future__ import annotations

import base64
import inspect
import re
import threading
import time
from pathlib import Path

import modal
import modal._utils.async_utils as modal_async
import pytest
from fastapi.testclient import TestClient
from modal._image import LATEST_IMAGE_BUILDER_VERSION

import utter_tts.compat.deploy as deploy
import utter_tts.serve as serve
from utter_tts.compat import LANGUAGES, CompatError
from utter_tts.compat.job_runners import ModalJobRunner, public_status

from .conftest import FRAMES, KEY, OTHER_KEY, StandIn, load_modal_module, read_wav

AUTH = {"Authorization": f"Bearer {KEY}"}
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")


@pytest.fixture(scope="module")
def qwen():
    return load_modal_module()


# ---- Modal configuration -------------------------------------------------------------------------------
def test_imports_offline_and_names(qwen):
    assert isinstance(qwen.app, modal.App) and qwen.app.name == "utter-qwen-tts"
    assert isinstance(qwen.QwenTTS, modal.Cls)


def test_service_function_info(qwen):
    info = qwen.QwenTTS._get_class_service_function().info()
    assert info.gpus == [("A10G", 1)]
    assert info.timeout == 600
    assert set(info.volumes) == {"/cache"} and info.volumes["/cache"].name == "utter-qwen-tts-hf-cache"
    assert set(info.method_names) == {
        "clone",
        "design",
        "generate_voice_clone",
        "generate_voice_clone_batch",
        "generate_voice_design",
        "get_model_info",
        "web",
    }
    assert info.concurrency_info.max_inputs == qwen.MAX_INPUTS
    assert info.secrets == ["modal.Secret.from_name('utter-qwen-tts-api-keys')"]
    web = info.method_details["web"]
    assert web.unauthenticated is (not qwen.PROXY_AUTH)  # proxy auth is opt-in; API keys are always on

    jobs = qwen.QwenTTSJobs._get_class_service_function().info()
    assert jobs.timeout >= 3600 and jobs.gpus == [("A10G", 1)] and set(jobs.volumes) == {"/cache"}
    writer = qwen.voice_library.info()
    assert set(writer.volumes) == {"/voices"} and writer.volumes["/voices"].name == "utter-qwen-tts-voices"


def test_arguments_given_to_modal(monkeypatch):
    """What .info() does not expose (warm window, min containers, writer count, auth flag, concurrency) is
    asserted from the arguments the module really passes, recorded by spies around the real modal API."""
    calls: dict[str, list] = {"cls": [], "function": [], "asgi_app": [], "concurrent": []}
    for owner, name in [(modal.App, "cls"), (modal.App, "function")]:
        orig = getattr(owner, name)

        def spy(self, *a, _orig=orig, _name=name, **kw):
            calls[_name].append(kw)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(owner, name, spy)
    for name in ("asgi_app", "concurrent"):
        orig = getattr(modal, name)

        def spy_fn(*a, _orig=orig, _name=name, **kw):
            calls[_name].append(kw)
            return _orig(*a, **kw)

        monkeypatch.setattr(modal, name, spy_fn)
    mod = load_modal_module("qwen_tts_spied")
    web_cls, job_cls = calls["cls"]
    assert web_cls["gpu"] == "A10G" and web_cls["timeout"] == 600
    assert web_cls["scaledown_window"] == 300 and web_cls["min_containers"] == 0
    assert "keep_warm" not in web_cls
    assert web_cls["enable_memory_snapshot"] and job_cls["enable_memory_snapshot"]
    assert job_cls["timeout"] >= 3600 and job_cls["min_containers"] == 0
    assert job_cls["retries"] is mod.JOB_RETRIES and mod.JOB_RETRIES.max_retries >= 1  # jobs resume
    [writer] = calls["function"]
    assert writer["max_containers"] == 1 and "/voices" in writer["volumes"]
    assert calls["asgi_app"] == [{"requires_proxy_auth": mod.PROXY_AUTH}]
    assert calls["concurrent"] == [{"max_inputs": mod.MAX_INPUTS}]
    source = inspect.getsource(mod)
    assert "keep_warm=300" in source and "5-minute warm window" in source  # the comment saying why


def image_layers(image, version=LATEST_IMAGE_BUILDER_VERSION) -> list[tuple[list[str], list]]:
    """(Dockerfile commands, copied mount entries) of an Image and its bases, oldest first, from modal's own
    builder functions (what `modal deploy` sends to the image builder)."""
    inner = modal_async.synchronizer._translate_in(image)
    closure = inner._load.__closure__ or ()
    cells = dict(zip(inner._load.__code__.co_freevars, (c.cell_contents for c in closure)))
    out: list = []
    for base in (cells.get("base_images") or {}).values():
        out += image_layers(base, version)
    commands = cells["dockerfile_function"](version).commands if cells.get("dockerfile_function") else []
    mount = cells["context_mount_function"](version) if cells.get("context_mount_function") else None
    out.append((commands, list(mount._entries) if mount is not None else []))
    return out


def image_steps(image) -> list[str]:
    return [c for commands, _ in image_layers(image) for c in commands]


def test_image_steps(qwen):
    steps = image_steps(qwen.image)
    text = "\n".join(steps)
    assert re.search(r"^FROM python:3\.12[\d.]*-slim", text, re.M)
    assert "RUN apt-get install -y git ffmpeg" in steps
    assert not stack_problems(steps, qwen.STACK)  # the stack's torch build and Triton, and nothing else
    [copied] = [e for _, entries in image_layers(qwen.image) for e in entries]
    assert copied.local_dir == qwen.PROJECT_ROOT and str(copied.remote_path) == "/opt/utter-tts"
    for kept in ("pyproject.toml", "README.md", "src/utter_tts/api.py"):
        assert not copied.ignore(Path(kept))
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "src/utter_tts/__pycache__/api.pyc",
    ):
        assert copied.ignore(Path(dropped))
    assert "RUN pip install /opt/utter-tts" in steps
    assert any(s.startswith("ENV") and "HF_HOME=/cache/huggingface" in s for s in steps)
    # order: torch first, then the project (which must not move torch)
    order = [text.index(x) for x in (f"torch=={qwen.TORCH_VERSION}", "pip install /opt/utter-tts")]
    assert order == sorted(order)


def stack_problems(steps: list[str], stack: dict, pyproject: str | None = None, run_gpu: str | None = None):
    """How the image's steps (and the test extra's pins, and the GPU bench script) disagree with the stack
    file: its torch release from its CUDA variant's index, its Triton, no flash-attn."""
    root = Path(__file__).resolve().parents[2]
    pyproject = (root / "pyproject.toml").read_text() if pyproject is None else pyproject
    run_gpu = (root / "bench" / "run_gpu.sh").read_text() if run_gpu is None else run_gpu
    problems = []
    torch_line = next((s for s in steps if "torch==" in s), "")
    if f"torch=={stack['torch']} " not in torch_line + " ":
        problems.append(f"image torch: {torch_line!r}")
    if f"--index-url https://download.pytorch.org/whl/{stack['torch_cuda']}" not in torch_line:
        problems.append(f"image torch index: {torch_line!r}")
    if not any(f"triton=={stack['triton']}" in s for s in steps):
        problems.append("image triton")
    if any("flash" in s.lower() for s in steps):
        problems.append("image installs flash-attn, which the engine never calls")
    if f'"triton=={stack["triton"]}"' not in pyproject:
        problems.append("pyproject test extra's triton")
    if "python3 -m utter_tts.stack" not in run_gpu:
        problems.append("bench/run_gpu.sh does not check the GPU machine against the stack")
    return problems


def test_one_stack_named_once(qwen):
    """The stack file is what the image installs, what the CPU kernel tests run (the installed Triton),
    what the test extra pins and what the GPU bench checks; a planted mismatch is caught."""
    import triton

    from utter_tts.stack import stack

    steps = image_steps(qwen.image)
    assert qwen.STACK == stack() and qwen.PYTHON_VERSION == stack()["python"]
    assert not stack_problems(steps, stack())
    assert triton.__version__ == stack()["triton"]  # the interpreter the kernel tests use
    planted = dict(stack(), triton="3.4.0")
    assert stack_problems(steps, planted) == [
        "image triton", "pyproject test extra's triton"
    ]  # fmt: skip
    assert stack_problems(steps, dict(stack(), torch_cuda="cu130"))
    assert stack_problems(steps, stack(), run_gpu="echo no check")
    assert stack_problems([*steps, "RUN pip install flash_attn-2.8.3.whl"], stack())


def test_method_names_and_defaults(qwen):
    cls = qwen.QwenTTS._get_user_cls()

    def sig(name):
        return inspect.signature(cls.__dict__[name]._get_raw_f())

    clone = sig("clone").parameters
    assert list(clone)[:4] == ["self", "text", "ref_audio_bytes", "language"]
    assert clone["language"].default == "English" and clone["ref_text"].default is None
    design = sig("design").parameters
    assert (
        list(design) == ["self", "text", "voice_description", "language"]
        and design["language"].default == "English"
    )
    gvc = sig("generate_voice_clone").parameters
    assert list(gvc) == ["self", "text", "language", "ref_audio", "ref_text", "max_new_tokens"]
    assert gvc["max_new_tokens"].default == 2048
    batch = sig("generate_voice_clone_batch").parameters
    assert list(batch) == ["self", "texts", "languages", "ref_audio", "ref_text", "max_new_tokens"]
    assert batch["max_new_tokens"].default == 2048
    assert list(sig("generate_voice_design").parameters) == ["self", "text", "language", "instruct"]
    assert list(sig("get_model_info").parameters) == ["self"]
    entry = inspect.signature(qwen.test_design.info.raw_f).parameters
    assert entry["description"].default == "A deep, rasping pirate voice."
    assert "ref_audio" in inspect.signature(qwen.test_clone.info.raw_f).parameters


# ---- running it in-process ----------------------------------------------------------------------------
@pytest.fixture
def loads(monkeypatch):
    """Counts the models loaded by @modal.enter hooks (the real loader still runs); `loads.order` records
    the snapshot hook ("warm") and the loading hook ("load") in the order they ran."""
    seen = Loads()
    real_load, real_warm = deploy.load_service, serve.warm_imports

    def counting(settings, load_design=True, **kw):
        seen.order.append("load")
        seen.append((settings.base_model, settings.design_model if load_design else None))
        return real_load(settings, load_design=load_design, **kw)

    def warm():
        seen.order.append("warm")
        return real_warm()

    monkeypatch.setattr(deploy, "load_service", counting)
    monkeypatch.setattr(serve, "warm_imports", warm)
    return seen


class Loads(list):
    def __init__(self):
        super().__init__()
        self.order: list[str] = []


def test_gpu_snapshots_load_the_models_before_the_snapshot_when_asked(monkeypatch, modal_env, loads):
    """UTTER_QWEN_GPU_SNAPSHOT=1 at deploy time: the web class asks Modal for GPU snapshots, the image tells
    the container so, and the models load (warm) in the snapshot hook, once; off (the default): neither."""
    calls: list[dict] = []
    real_cls = modal.App.cls
    monkeypatch.setattr(modal.App, "cls", lambda self, *a, **kw: calls.append(kw) or real_cls(self, *a, **kw))
    off = load_modal_module("qwen_tts_no_gpu_snapshot")
    assert "experimental_options" not in calls[0] and off.GPU_SNAPSHOT is False
    monkeypatch.setenv("UTTER_QWEN_GPU_SNAPSHOT", "1")
    calls.clear()
    on = load_modal_module("qwen_tts_gpu_snapshot")
    assert calls[0]["experimental_options"] == {"enable_gpu_snapshot": True}
    assert "experimental_options" not in calls[1]  # the job class: not asked for
    env = [
        layer for cmds, layer in image_layers(on.image) if any("UTTER_QWEN_GPU_SNAPSHOT" in c for c in cmds)
    ]
    assert env, "the container must know which hook loads the models"
    hooks: list[list[str]] = []
    counting = deploy.load_service

    def which_hook(*a, **kw):  # the hook methods on the call stack
        hooks.append([f.function for f in inspect.stack() if f.function in ("warm", "load")])
        return counting(*a, **kw)

    monkeypatch.setattr(deploy, "load_service", which_hook)
    obj = on.QwenTTS()
    assert obj.get_model_info.local()["loaded"] == {"clone": True, "design": True}
    assert hooks == [["warm"]] and len(loads) == 1  # in the snapshot hook, once
    hooks.clear()
    monkeypatch.delenv("UTTER_QWEN_GPU_SNAPSHOT")
    assert load_modal_module("qwen_tts_no_gpu_snapshot_again").QwenTTS().get_model_info.local()["loaded"]
    assert hooks == [["load"]]  # the default: after restore


def test_the_cache_volume_is_committed_again_once_the_warm_up_is_done(qwen, modal_env, loads, monkeypatch):
    """The web container commits its cache volume after loading (the weights) and once more when every
    engine's background warm-up has captured all batch sizes (their Triton kernels), not before."""
    from utter_tts.engine.engine import Engine

    commits, warm = [], threading.Event()
    monkeypatch.setattr(qwen, "_commit_cache", lambda: commits.append(warm.is_set()))
    real_wait = Engine.wait_warm
    monkeypatch.setattr(
        Engine, "wait_warm", lambda self, timeout=None: warm.wait(timeout) and real_wait(self, 0)
    )
    obj = qwen.QwenTTS()
    assert obj.get_model_info.local()["loaded"] == {"clone": True, "design": True}
    time.sleep(0.2)
    assert commits == [False]  # the weights only: the warm-up is still under way
    warm.set()
    deadline = time.monotonic() + 10
    while len(commits) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert commits == [False, True]


def test_methods_run_locally_with_enter(qwen, modal_env, loads, ckpts, ref_wav, audio_server):
    obj = qwen.QwenTTS()
    b64 = base64.b64encode(ref_wav).decode()
    info = obj.get_model_info.local()
    assert loads == [(str(ckpts["base"]), str(ckpts["voice_design"]))]  # both models at container start
    assert info["languages"] == LANGUAGES and info["loaded"] == {"clone": True, "design": True}
    assert read_wav(obj.generate_voice_clone.local("Hello.", "english", b64, "Words.", FRAMES))[0] == 24000
    url = f"{audio_server.url}/ref.wav"  # allowed by UTTER_TTS_FETCH_ALLOW=127.0.0.1/32 in this env
    assert read_wav(obj.generate_voice_clone.local("Hi.", "Auto", url, "Words.", FRAMES))[1] > 0
    wavs = obj.generate_voice_clone_batch.local(["One.", "Two."], ["English", "German"], b64, "W.", FRAMES)
    assert len(wavs) == 2 and all(read_wav(w)[1] > 0 for w in wavs)
    assert read_wav(obj.generate_voice_design.local("Hello.", "English", "A calm voice."))[1] > 0
    assert read_wav(obj.clone.local("Hello.", ref_wav))[1] > 0
    assert read_wav(obj.design.local("Hello.", "A deep, rasping pirate voice."))[1] > 0
    assert len(loads) == 1 and loads.order == ["warm", "load"]  # snapshot hook first, then the models
    with pytest.raises(CompatError, match="^'instruct' is required \\(voice description\\)$"):
        obj.generate_voice_design.local("Hello.", "English", "")


def test_snapshot_hook_touches_no_gpu():
    import torch

    assert "utter_tts.server.app" in serve.warm_imports()
    assert not torch.cuda.is_initialized()


def test_entrypoint_helpers(qwen, modal_env, ref_wav, tmp_path, capsys):
    obj = qwen.QwenTTS()
    ref = tmp_path / "ref.wav"
    ref.write_bytes(ref_wav)
    qwen.run_clone(obj.clone.local, str(ref), "Hello.", str(tmp_path / "c.wav"), "English", None)
    qwen.run_design(
        obj.design.local, "Ahoy.", "A deep, rasping pirate voice.", str(tmp_path / "d.wav"), "English"
    )
    assert (
        read_wav((tmp_path / "c.wav").read_bytes())[1] > 0
        and read_wav((tmp_path / "d.wav").read_bytes())[1] > 0
    )
    out = capsys.readouterr().out
    assert "clone:" in out and "design:" in out and " s -> " in out


@pytest.fixture
def stand_in(qwen, modal_env, monkeypatch):
    s = StandIn(qwen)
    monkeypatch.setattr(qwen, "jobs_dict", s.store)
    monkeypatch.setattr(qwen, "job_backend", lambda: (s.spawn, s.Call, s.store))
    yield s
    s.pool.shutdown(wait=True)


def wait(client, job_id, want, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        st = client.get(f"/job-status?job_id={job_id}", headers=AUTH).json()
        if st["status"] in want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_asgi_app_routes_and_jobs(qwen, stand_in, ref_wav, loads):
    web = qwen.QwenTTS().web.local()
    b64 = base64.b64encode(ref_wav).decode()
    with TestClient(web) as c:
        assert c.get("/health").json()["status"] == "healthy"
        assert c.get("/languages").json()["default"] == "Auto"
        body = {
            "text": "Hi.",
            "language": "english",
            "ref_audio_base64": b64,
            "ref_text": "W.",
            "max_new_tokens": 4,
        }
        assert c.post("/clone", json=body).status_code == 401  # never open
        r = c.post("/clone", json=body, headers=AUTH)
        assert r.status_code == 200 and read_wav(r.content)[1] > 0
        batch = {**body, "texts": ["a.", "b."], "languages": ["English", "English"]}
        assert c.post("/clone-batch", json=batch, headers=AUTH).json()["count"] == 2
        d = c.post("/design", json={"text": "Hi.", "language": "English", "instruct": "calm"}, headers=AUTH)
        assert d.status_code == 200 and read_wav(d.content)[1] > 0
        assert c.post("/design", json={"text": "Hi."}, headers=AUTH).json() == {
            "detail": "'instruct' is required (voice description)"
        }
        # a job through spawn / FunctionCall.from_id / get(timeout=0)
        job_id = c.post("/submit-job", json=body, headers=AUTH).json()["job_id"]
        assert job_id.startswith("fc-")
        assert wait(c, job_id, ("completed", "failed")) == {
            "job_id": job_id,
            "status": "completed",
            "result_ready": True,
        }
        res = c.get(f"/job-result?job_id={job_id}", headers=AUTH)
        assert res.status_code == 200 and read_wav(res.content)[1] > 0
        assert c.post("/submit-job", json={**body, "ref_text": ""}, headers=AUTH).json() == {
            "detail": "'ref_text' is required"
        }
        assert len(stand_in.calls) == 1  # the refused job never reached spawn
    assert [design is None for _, design in loads] == [False, True]  # web: both models; job: Base only


def test_job_cancel_through_function_call(qwen, stand_in, ref_wav):
    b64 = base64.b64encode(ref_wav).decode()
    text = " ".join(f"Sentence {i} of a long document." for i in range(60))
    body = {
        "text": text,
        "language": "English",
        "ref_audio_base64": b64,
        "ref_text": "W.",
        "max_new_tokens": 3,
    }
    gate = threading.Event()
    real_spawn = stand_in.spawn

    def gated_spawn(payload):  # hold the job until the test has cancelled it
        return stand_in.Call(
            stand_in.pool.submit(lambda: (gate.wait(30), stand_in.jobs.run.local(payload))[1])
        )

    stand_in.spawn = gated_spawn  # job_backend() reads stand_in.spawn at each app build
    with TestClient(qwen.QwenTTS().web.local()) as c:
        job_id = c.post("/submit-job", json=body, headers=AUTH).json()["job_id"]
        assert c.get(f"/job-status?job_id={job_id}", headers=AUTH).json()["status"] == "running"  # queued
        st = c.post("/job-cancel", json={"job_id": job_id}, headers=AUTH).json()
        assert st == {"job_id": job_id, "status": "cancelled"}
        assert stand_in.calls[job_id].cancelled  # FunctionCall.cancel() was called
        gate.set()  # the function starts anyway (a cancel can race the start): it sees the flag and stops
        # and returns (no audio) instead of raising: a raise would have Modal retry a cancelled job
        assert stand_in.calls[job_id].future.result(30) == b""
        assert c.get(f"/job-status?job_id={job_id}", headers=AUTH).json() == {
            "job_id": job_id,
            "status": "failed",
            "result_ready": False,
            "error": "Job was cancelled",
        }
        r = c.get(f"/job-result?job_id={job_id}", headers=AUTH)
        assert r.status_code == 409 and r.json() == {"detail": "Failed to get result: Job was cancelled"}
    stand_in.spawn = real_spawn


def test_two_containers_share_jobs_and_data_dir(qwen, stand_in, ref_wav):
    """Two QwenTTS containers (two app instances on one data directory and one job store): a job
    submitted through one is polled, fetched and owned through the other; a voice saved on one lists on
    the other."""
    b64 = base64.b64encode(ref_wav).decode()
    one, two = qwen.QwenTTS().web.local(), qwen.QwenTTS().web.local()
    body = {
        "text": "Shared.",
        "language": "English",
        "ref_audio_base64": b64,
        "ref_text": "W.",
        "max_new_tokens": 4,
    }
    with TestClient(one) as a, TestClient(two) as b:
        job_id = a.post("/submit-job", json=body, headers=AUTH).json()["job_id"]
        assert wait(b, job_id, ("completed", "failed"))["status"] == "completed"
        assert read_wav(b.get(f"/job-result?job_id={job_id}", headers=AUTH).content)[1] > 0
        other = {"Authorization": f"Bearer {OTHER_KEY}"}
        assert b.get(f"/job-status?job_id={job_id}", headers=other).json() == {
            "job_id": job_id,
            "status": "failed",
            "result_ready": False,
            "error": "Job not found",
        }
        up = a.post(
            "/v1/voices", files={"file": ("me.wav", ref_wav, "audio/wav")}, data={"name": "me"}, headers=AUTH
        )
        assert up.status_code == 201
        assert [v["name"] for v in b.get("/v1/voices", headers=AUTH).json()["data"]] == ["me"]


def test_app_refuses_to_start_without_keys(qwen, modal_env, monkeypatch):
    monkeypatch.setenv("UTTER_TTS_API_KEYS", "")
    with pytest.raises(ValueError, match="API keys are required"):
        qwen.QwenTTS().web.local()


def test_voice_library_single_writer(qwen, modal_env, monkeypatch, models, ref_wav, tmp_path):
    """The writer function's body (volume reload/commit are Modal's; recorded here) saves, lists, deletes."""
    events = []

    class FakeVolume:
        def reload(self):
            events.append("reload")

        def commit(self):
            events.append("commit")

    monkeypatch.setattr(qwen, "voices", FakeVolume())
    monkeypatch.setattr(qwen, "VOICES_DIR", str(tmp_path / "voices"))
    voice = models["base"].create_voice(ref_wav).to_bytes()
    rec = qwen.voice_library.local("save", "owner-1", name="me", voice_bytes=voice)
    assert rec["name"] == "me" and qwen.voice_library.local("list", "owner-1")[0]["id"] == rec["id"]
    assert qwen.voice_library.local("delete", "owner-1", voice_id=rec["id"])["id"] == rec["id"]
    assert qwen.voice_library.local("list", "owner-1") == []
    assert events == ["reload", "commit", "reload", "reload", "commit", "reload"]


def test_modal_job_runner_reports_failures(stand_in):
    """A job whose function raised is reported failed with its message (FunctionCall.get re-raises)."""

    class Boom:
        object_id = "fc-boom"

        @classmethod
        def from_id(cls, _):
            return cls()

        def get(self, timeout=None):
            raise CompatError("reference audio is not decodable")

    runner = ModalJobRunner(lambda payload: Boom(), Boom, stand_in.store)
    job_id = runner.submit("me", {"text": "x"})
    assert public_status(job_id, runner.state("me", job_id)) == {
        "job_id": "fc-boom",
        "status": "failed",
        "result_ready": False,
        "error": "reference audio is not decodable",
    }
    with pytest.raises(CompatError, match="^Failed to get result: reference audio is not decodable$"):
        runner.result("me", job_id)
