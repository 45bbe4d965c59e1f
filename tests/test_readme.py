"""Every Python snippet of the README runs as written, against tiny checkpoints (hub ids mapped to them)
and, for the HTTP client snippet, a real server on localhost."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.model.test_parity import reference_clip
from tests.server.conftest import ServerThread, make_config
from utter_tts.api import TTS
from utter_tts.engine.engine import Engine
from utter_tts.model.checkpoint import open_checkpoint
from utter_tts.pipeline import Pipeline

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_IDS = {
    "Qwen/Qwen3-TTS-12Hz-1.7B-Base": "base",
    "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign": "voice_design",
    "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice": "custom_voice",
}
FRAMES = 8  # random weights run to their cap: keep every generation short


def python_snippets() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text("utf-8"), flags=re.S | re.M)


def write_m4a(path: Path, audio: np.ndarray, rate: int = 24000) -> None:
    """A real AAC-in-MP4 file, as a phone records."""
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture
def workdir(tmp_path, monkeypatch, checkpoints):
    """The README's files in the current folder, and its hub ids resolved to tiny local checkpoints."""
    monkeypatch.chdir(tmp_path)
    write_m4a(tmp_path / "me.m4a", reference_clip(2.0))
    (tmp_path / "chapter.txt").write_text("It was a dark night. The wind was cold! Who would come?", "utf-8")
    loaded: dict[str, Pipeline] = {}

    def from_pretrained(cls, path_or_id, device=None, dtype=None, revision=None, engine=False):
        kind = HUB_IDS[str(path_or_id)]
        if kind not in loaded:
            pipeline = Pipeline.load(open_checkpoint(checkpoints(kind)), torch.device("cpu"), torch.float32)
            pipeline.defaults = pipeline.defaults.replace(max_new_tokens=FRAMES)
            loaded[kind] = pipeline
        if engine:
            return cls(loaded[kind], Engine(loaded[kind], **(engine if isinstance(engine, dict) else {})))
        return cls(loaded[kind])

    monkeypatch.setattr(TTS, "from_pretrained", classmethod(from_pretrained))
    return tmp_path


def test_the_readme_has_its_snippets():
    snippets = python_snippets()
    assert len(snippets) == 3
    assert all("import" in s for s in snippets), "each snippet says where its names come from"


@pytest.mark.parametrize("index", [0, 1], ids=["api", "engine"])
def test_api_snippets_run_as_written(index, workdir):
    namespace: dict = {}
    exec(compile(python_snippets()[index], f"README.md snippet {index}", "exec"), namespace)
    if index == 0:
        assert (workdir / "me.voice.safetensors").is_file()
        assert namespace["sr"] == 24000 and len(namespace["audios"]) == 2
    else:
        streamed = np.concatenate(namespace["chunks"])
        np.testing.assert_allclose(streamed, namespace["audio"], atol=1e-4)  # as the comment promises
        assert namespace["book"].size > 0
        # the live text's chunks are those of the whole text in streaming-text mode (the comment's promise)
        Request, req = namespace["Request"], namespace["req"]
        whole = Request(**{**req.__dict__, "non_streaming_mode": False})
        tts = TTS(namespace["tts"].pipeline)  # the plain loop: the snippet closed the engine
        np.testing.assert_allclose(np.concatenate(namespace["said"]), tts.synthesize([whole])[0], atol=1e-4)


def test_http_client_snippet_runs_as_written(workdir, checkpoints, tmp_path):
    from utter_tts.server.app import create_app
    from utter_tts.server.registry import ModelRegistry

    registry = ModelRegistry()
    for kind in ("base", "voice_design", "custom_voice"):
        registry.add(kind, TTS.from_pretrained(next(k for k, v in HUB_IDS.items() if v == kind)), kind)
    registry.ready.set()
    app = create_app(make_config(tmp_path / "data", api_keys=["sk-mine"], max_new_tokens=FRAMES), registry)
    snippet = python_snippets()[2]
    assert "http://localhost:8000/v1" in snippet
    with ServerThread(app) as server:
        import httpx

        with open("me.m4a", "rb") as f:  # the README's curl upload made the voice "narrator"
            r = httpx.post(f"{server.url}/v1/voices", headers={"Authorization": "Bearer sk-mine"},
                           files={"file": ("me.m4a", f)}, data={"name": "narrator"}, timeout=120)  # fmt: skip
        assert r.status_code == 201, r.text
        exec(compile(snippet.replace("http://localhost:8000", server.url), "README.md snippet 2", "exec"), {})
    assert (workdir / "a.flac").stat().st_size > 0
