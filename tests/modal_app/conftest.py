"""Fixtures for utter's contract and the Modal app: tiny real checkpoints, a real reference clip, a real
HTTP server on 127.0.0.1 (for ref_audio_url), and the Modal module imported offline (no token)."""

from __future__ import annotations

import importlib.util
import io
import itertools
import sys
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from utter_tts.compat.checks import Limits
from utter_tts.compat.fetch import FetchPolicy
from utter_tts.compat.service import CompatService
from utter_tts.service.inline_voices import InlineVoices

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-utter-test"
OTHER_KEY = "sk-utter-other"
FRAMES = 6  # max_new_tokens the tests ask for: the tiny checkpoints are random, so length is all it decides
ENGINE_FRAMES = 24  # engine static shapes in tests (design has no max_new_tokens: this caps it)


def make_wav(seconds: float = 2.0, rate: int = 16000, seed: int = 0) -> bytes:
    """A voiced-looking reference clip (harmonics with a wobble and a little noise) as WAV bytes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2 + rng.normal(0, 0.01, t.size)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[int, int]:
    """(sample rate, frames) of a WAV; fails unless it is a well-formed mono 16-bit file."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        frames = w.getnframes()
        assert len(w.readframes(frames)) == 2 * frames
        return w.getframerate(), frames


@pytest.fixture(scope="session")
def ckpts(checkpoints) -> dict[str, Path]:
    return {
        "base": checkpoints("base", "tiny-1.7b"),
        "voice_design": checkpoints("voice_design", "tiny-1.7b"),
    }


@pytest.fixture(scope="session")
def models(ckpts):
    from utter_tts.api import TTS

    return {k: TTS.from_pretrained(p, device="cpu", dtype="float32") for k, p in ckpts.items()}


@pytest.fixture(scope="session")
def ref_wav() -> bytes:
    return make_wav()


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients the tests refuse or time out hang up mid-response: expected, not worth a traceback


class Served:
    """A real HTTP server on 127.0.0.1 with fixed routes; records every request path it receives."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]):
        self.routes = routes
        self.hits: list[str] = []
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                served.hits.append(self.path)
                if self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    for _ in range(50):
                        try:
                            self.wfile.write(b"x" * 10)
                            self.wfile.flush()
                        except OSError:
                            return
                        threading.Event().wait(0.1)
                    return
                status, headers, body = served.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                chunked = headers.get("Transfer-Encoding") == "chunked"
                for k, v in headers.items():
                    self.send_header(k, v)
                if not chunked:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if chunked:
                    for i in range(0, len(body), 65536):
                        part = body[i : i + 65536]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def audio_server(ref_wav):
    server = Served({"/ref.wav": (200, {"Content-Type": "audio/wav"}, ref_wav)})
    yield server
    server.close()


@pytest.fixture(scope="session")
def loopback_policy() -> FetchPolicy:
    """The allow-list that lets tests fetch from their own 127.0.0.1 server (and only 127.0.0.1)."""
    return FetchPolicy(allow_networks=("127.0.0.1/32",), timeout_s=5.0)


@pytest.fixture(scope="session")
def service(models, loopback_policy) -> CompatService:
    """Plain TTS (no engine) with small limits; session-wide, its prompt cache shared by the tests."""
    return CompatService(
        base=models["base"],
        design_model=models["voice_design"],
        limits=Limits(batch_pieces=4, chunk_chars=60, design_max_new_tokens=FRAMES),
        fetch_policy=loopback_policy,
        cache=InlineVoices(8),
    )


def load_modal_module(name: str = "qwen_tts_under_test"):
    """Import modal_app/qwen_tts.py from its file, as `modal run` does (a fresh module each time)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "modal_app" / "qwen_tts.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def set_modal_env(mp: pytest.MonkeyPatch, ckpts: dict[str, Path], data_dir: Path) -> None:
    """What a container's environment would give: model ids (tiny local checkpoints), keys, data dir."""
    mp.setenv("UTTER_QWEN_BASE_MODEL", str(ckpts["base"]))
    mp.setenv("UTTER_QWEN_DESIGN_MODEL", str(ckpts["voice_design"]))
    mp.setenv("UTTER_QWEN_DEVICE", "cpu")
    mp.setenv("UTTER_QWEN_DTYPE", "float32")
    mp.setenv("UTTER_QWEN_ENGINE_STREAMS", "4")
    mp.setenv("UTTER_QWEN_ENGINE_FRAMES", str(ENGINE_FRAMES))
    mp.setenv("UTTER_TTS_API_KEYS", f"{KEY},{OTHER_KEY}")
    mp.setenv("UTTER_QWEN_DATA_DIR", str(data_dir))
    mp.setenv("UTTER_TTS_FETCH_ALLOW", "127.0.0.1/32")
    mp.delenv("UTTER_QWEN_COMPAT_AUTH", raising=False)
    mp.delenv("UTTER_QWEN_ENGINE_WEIGHTS", raising=False)
    mp.delenv("MODAL_TOKEN_ID", raising=False)
    mp.delenv("MODAL_TOKEN_SECRET", raising=False)


@pytest.fixture
def modal_env(monkeypatch, ckpts, tmp_path):
    set_modal_env(monkeypatch, ckpts, tmp_path / "data")
    return tmp_path


class StandIn:
    """A local stand-in for Modal's job plumbing: `spawn` runs the job method (`.local()`, enter hook
    included) in a thread and returns a call; `from_id` finds it; `get(timeout=0)` raises the builtin
    TimeoutError while running, as modal.FunctionCall does; `cancel()` records the request."""

    def __init__(self, qwen):
        self.pool = ThreadPoolExecutor(2)
        self.calls: dict[str, StandIn.Call] = {}
        self.ids = itertools.count()
        self.store: dict = {}
        self.jobs = qwen.QwenTTSJobs()
        stand_in = self

        class Call:
            def __init__(self, future):
                self.object_id = f"fc-{next(stand_in.ids):08d}"
                self.future = future
                self.cancelled = False
                stand_in.calls[self.object_id] = self

            @classmethod
            def from_id(cls, object_id):
                return stand_in.calls[object_id]

            def get(self, timeout=None):
                if not self.future.done():
                    if timeout == 0:
                        raise TimeoutError()
                    self.future.result(timeout)
                return self.future.result()

            def cancel(self):
                self.cancelled = True

        self.Call = Call

    def spawn(self, payload):
        return self.Call(self.pool.submit(self.jobs.run.local, payload))
