"""A real `python -m utter_tts.server` process on 127.0.0.1 for the framework plugins' tests, and the LLM-like
text they push: a tiny random CustomVoice checkpoint whose every generation runs to the frame cap."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

KEY = "sk-test-integrations"
# The server's frame cap is FRAMES + 1 and the checkpoint's min_new_tokens blocks EOS up to it, so each
# generation makes FRAMES frames: an unseeded request (Pipecat's OpenAITTSService sends none) otherwise
# samples EOS early about once in 200 on the random weights.
FRAMES = 24
FRAME_SAMPLES = 1920  # 80 ms at 24 kHz
SENTENCE = "This is a short sentence that an agent might say."  # ten words, one pushed every 50 ms
INTERVAL_S = 0.05
ROUNDS = 3  # first-audio timings per mode, alternated; the median is reported
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # git-ignored


@dataclass
class Server:
    url: str
    proc: subprocess.Popen


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    from utter_tts.demo import build_checkpoint

    root = tmp_path_factory.mktemp("integrations")
    model = build_checkpoint(root / "custom_voice", "custom_voice", "tiny-1.7b", seed=0)
    gen = model / "generation_config.json"
    gen.write_text(json.dumps(json.loads(gen.read_text("utf-8")) | {"min_new_tokens": FRAMES + 1}), "utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "utter_tts.server", str(model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--device", "cpu", "--dtype", "float32", "--max-new-tokens", str(FRAMES + 1)]
    cmd += ["--data-dir", str(root / "data"), "--log-level", "warning"]
    env = dict(os.environ, UTTER_TTS_API_KEYS=KEY)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy")
            time.sleep(0.1)
        yield Server(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def words() -> list[str]:
    """The sentence as an LLM streams it: each word after the first with its leading space."""
    parts = SENTENCE.split(" ")
    return [parts[0]] + [" " + w for w in parts[1:]]


def report(framework: str, streaming: list[float], baseline: list[float], sentence_s: float) -> dict:
    """The first-audio figures (ms after the first token, medians), printed in the test's output and
    written to test-artifacts/first_audio_<framework>.json."""
    stream_ms = sorted(t * 1000 for t in streaming)[len(streaming) // 2]
    base_ms = sorted(t * 1000 for t in baseline)[len(baseline) // 2]
    figures = {
        "framework": framework,
        "streaming_first_audio_ms": round(stream_ms, 1),
        "sentence_wise_first_audio_ms": round(base_ms, 1),
        "ratio": round(stream_ms / base_ms, 2),
        "last_token_ms": round(sentence_s * 1000, 1),
        "rounds": len(streaming),
    }
    print(f"\n{framework} first audio after the first token: {figures}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"first_audio_{framework}.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures
