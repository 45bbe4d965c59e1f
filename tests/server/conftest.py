"""Fixtures for the server tests: tiny real checkpoints, and real uvicorn servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
import uvicorn

from utter_tts.server.app import create_app
from utter_tts.server.registry import ModelRegistry
from utter_tts.server.settings import ServerConfig

ALICE = "sk-test-alice"
BOB = "sk-test-bob"
# Generated frames per request: the tiny checkpoints are random, so length is all the cap decides.
FRAMES = 5


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    from tests.support.official import build_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return {t: build_checkpoint(root / t, model_type=t) for t in ("base", "voice_design", "custom_voice")}


@pytest.fixture(scope="session")
def registry(checkpoints) -> ModelRegistry:
    from utter_tts.api import TTS

    reg = ModelRegistry()
    for kind, path in checkpoints.items():
        reg.add(str(path), TTS.from_pretrained(path, device="cpu", dtype="float32"), model_id=kind)
    reg.ready.set()
    return reg


class ServerThread:
    """uvicorn running `app` in a thread, on a socket bound to a free port of 127.0.0.1."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def state(self):
        return self.app.state.server


def make_config(data_dir: Path, **overrides) -> ServerConfig:
    settings = dict(
        host="127.0.0.1",
        data_dir=data_dir,
        api_keys=[ALICE, BOB],
        auth="on",
        max_new_tokens=FRAMES,
        max_concurrency=2,
        max_queue=8,
        max_upload_bytes=2_000_000,
        max_ref_seconds=20.0,
        max_input_chars=2000,
    )
    settings.update(overrides)
    return ServerConfig(**settings)


@pytest.fixture(scope="session")
def server(registry, tmp_path_factory):
    """The main server: all three model types, keys on, small limits."""
    app = create_app(make_config(tmp_path_factory.mktemp("data")), registry)
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=120) as c:
        yield c


@pytest.fixture
def bob(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {BOB}"}, timeout=120) as c:
        yield c


def tone_wav(seconds: float = 1.5, freq: float = 180.0, sr: int = 16000, fmt: str = "wav") -> bytes:
    """A real encoded clip (voiced-ish harmonic tone) to upload as reference audio."""
    from utter_tts.audio.encode import encode

    t = np.arange(int(sr * seconds)) / sr
    x = sum(0.2 / k * np.sin(2 * np.pi * freq * k * t) for k in range(1, 6)).astype(np.float32)
    return encode(x, sr, fmt)


@pytest.fixture(scope="session")
def reference_wav() -> bytes:
    return tone_wav()


def decode_audio(data: bytes, fmt: str, pcm_rate: int = 24000) -> tuple[np.ndarray, int]:
    """Decode any response format back to float samples with PyAV."""
    kwargs = {}
    if fmt == "pcm":
        kwargs = dict(format="s16le", options={"sample_rate": str(pcm_rate), "ch_layout": "mono"})
    with av.open(io.BytesIO(data), **kwargs) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        rate = pcm_rate if fmt == "pcm" else stream.rate
    if not frames:
        return np.zeros(0, np.float32), rate
    samples = np.concatenate(frames, axis=1)[0]
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32), rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(models: list[Path], data_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """`python -m utter_tts.server` as a separate process (what a deployment runs)."""
    env = dict(os.environ, UTTER_TTS_API_KEYS=f"{ALICE},{BOB}")
    cmd = [
        sys.executable,
        "-m",
        "utter_tts.server",
        *map(str, models),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-new-tokens",
        str(FRAMES),
        "--log-level",
        "warning",
        *extra,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def session_rest(ws, audio: bytes = b"") -> tuple[bytes, list[dict]]:
    """A WebSocket session's remaining binary audio and events, up to its `session.done` (or `error`)."""
    events: list[dict] = []
    while not events or events[-1]["type"] not in ("session.done", "error"):
        msg = ws.recv(timeout=60)
        if isinstance(msg, bytes):
            audio += msg
        else:
            events.append(json.loads(msg))
    return audio, events
