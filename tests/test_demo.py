"""The demo checkpoint writer (our code only): the official classes load what it writes, key for key, and
agree with us on it; the README's offline demo command runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.model.test_parity import GREEDY, Oracle, assert_codes_equal, reference_clip
from tests.support.official import install_oracle_stubs
from utter_tts.api import TTS
from utter_tts.demo import MARKER, build_checkpoint, main
from utter_tts.files import default_mode


def _keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("demo") / "base", "base", "tiny-1.7b", seed=3)


@pytest.mark.parametrize("model_type", ["base", "voice_design", "custom_voice"])
def test_written_keys_are_the_official_models(model_type, tmp_path):
    install_oracle_stubs()
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    path = build_checkpoint(tmp_path / model_type, model_type, "tiny-0.6b")
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("dtype")
    with torch.device("meta"):
        official = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**cfg))
        codec_cfg = json.loads((path / "speech_tokenizer" / "config.json").read_text())
        codec = Qwen3TTSTokenizerV2Model(
            Qwen3TTSTokenizerV2Config(
                **{
                    k: v
                    for k, v in codec_cfg.items()
                    if k.endswith("config")
                    or k
                    in (
                        "encoder_valid_num_quantizers",
                        "input_sample_rate",
                        "output_sample_rate",
                        "decode_upsample_rate",
                        "encode_downsample_rate",
                    )
                }
            )  # fmt: skip
        )
    assert _keys(path / "model.safetensors") == set(official.state_dict())
    assert _keys(path / "speech_tokenizer" / "model.safetensors") == set(codec.state_dict())
    mode = default_mode()
    assert {p.stat().st_mode & 0o777 for p in path.rglob("*") if p.is_file()} == {mode}


def plant(folder: Path) -> dict[str, bytes]:
    """Files someone else keeps in `folder`, by relative path."""
    files = {"important.txt": b"do not delete\n", "sub/notes.txt": bytes(range(256))}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target", ["folder", "dot", "file"])
def test_demo_refuses_to_replace_what_it_did_not_write(target, tmp_path, monkeypatch, capsys):
    """A folder of someone else's files (given by name or as `.`), or a file, is left byte for byte as it
    was: status 2 and a message naming the path and --force."""
    files = plant(tmp_path)
    out = {"folder": str(tmp_path), "dot": ".", "file": "important.txt"}[target]  # the last two relative
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main([out, "--shape", "tiny-0.6b"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    named = tmp_path / "important.txt" if target == "file" else tmp_path
    assert f"error: {named} " in err and "--force" in err, err
    assert tree(tmp_path) == files


def test_demo_replaces_its_own_folder_and_with_force_any(tmp_path, capsys):
    """An empty folder is written; a folder the writer made is replaced, files it did not write gone
    (rebuilt, not merged); `--force` replaces a folder of someone else's files."""
    out = tmp_path / "ckpt"
    out.mkdir()
    main([str(out), "--shape", "tiny-0.6b"])
    written = tree(out)
    assert MARKER in written and "config.json" in written
    (out / "stale.txt").write_text("left over")
    main([str(out), "--shape", "tiny-0.6b"])
    assert tree(out) == written
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    plant(foreign)
    main([str(foreign), "--shape", "tiny-0.6b", "--force"])
    assert tree(foreign) == written
    assert capsys.readouterr().err == ""


def test_official_code_agrees_with_us_on_a_demo_checkpoint(demo_base):
    """Greedy codes token for token (x-vector and ICL clone) on weights our writer drew."""
    from utter_tts.request import Request

    oracle = Oracle(demo_base)
    tts = TTS.from_pretrained(demo_base, device="cpu", dtype="float32")
    ref, text = reference_clip(), "Hello there, this is a test of speech synthesis."
    for ref_text in (None, "This is the reference transcript."):
        _, official, _, _ = oracle.run(
            "generate_voice_clone",
            text=[text],
            language=["English"],
            ref_audio=(ref, 24000),
            ref_text=ref_text,
            x_vector_only_mode=ref_text is None,
        )
        voice = tts.create_voice((ref, 24000), ref_text=ref_text)
        ours = tts.generate_codes([Request(text, "clone", "english", voice=voice, sampling=GREEDY)])
        assert_codes_equal(ours, official)


HIDE_TRITON = """
import importlib.abc, sys
class _NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoTriton())
"""


def without_triton(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import Triton: the README's install command does not install
    it (CPU builds of torch do not bring it), so the runtime must not need it."""
    site = tmp_path / "no-triton"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_TRITON)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=path)


def test_readme_demo_command_runs(tmp_path):
    """The install command's demo: a custom_voice demo checkpoint, then `utter-tts speak` capped at 2 s,
    in an environment without Triton, as the install command leaves it."""
    env = without_triton(tmp_path)
    hidden = subprocess.run([sys.executable, "-c", "import triton"], capture_output=True, text=True, env=env)
    assert hidden.returncode != 0 and "No module named 'triton'" in hidden.stderr
    ckpt, out = tmp_path / "demo", tmp_path / "demo.wav"
    build = subprocess.run(
        [sys.executable, "-m", "utter_tts.demo", str(ckpt), "--model-type", "custom_voice"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert build.stderr == ""  # no stray warnings
    exe = Path(sys.executable).with_name("utter-tts")
    speak = subprocess.run(
        [str(exe), "speak", "--model", str(ckpt), "--speaker", "vivian", "--text", "Hello from utter-tts.",
         "--out", str(out), "--max-new-tokens", "25"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert speak.returncode == 0, speak.stderr
    assert speak.stderr == ""
    with wave.open(str(out)) as w:
        seconds = w.getnframes() / w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert 0.08 <= seconds <= 2.0 and np.abs(pcm).max() > 0


def test_engine_runs_without_triton(tmp_path):
    """The batching engine on the CPU takes the eager frame step; the fused kernels are never imported."""
    env = without_triton(tmp_path)
    ckpt = tmp_path / "demo"
    build = subprocess.run(
        [sys.executable, "-m", "utter_tts.demo", str(ckpt), "--model-type", "custom_voice"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    code = (
        "import sys\n"
        "from utter_tts import TTS\n"
        f"tts = TTS.from_pretrained({str(ckpt)!r}, engine={{'max_streams': 2, 'max_frames': 64}})\n"
        "audio, sr = tts.speak('Hello.', speaker='vivian', max_new_tokens=6)\n"
        "assert sr == 24000 and len(audio) > 0, (sr, len(audio))\n"
        "assert tts.engine is not None and tts.engine.runner.fused is None\n"
        "assert not any(m == 'triton' or m.startswith('triton.') for m in sys.modules)\n"
        "tts.close()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
