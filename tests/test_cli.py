"""The `utter-tts` command on tiny checkpoints: every subcommand, chunking of long texts, clear errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import types
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from utter_tts import cli
from utter_tts.api import TTS
from utter_tts.audio.encode import encode
from utter_tts.audio.join import join_clips
from utter_tts.pipeline import Pipeline
from utter_tts.request import MAX_TEXT_CHARS
from utter_tts.voices.voice import Voice

from .model.test_parity import reference_clip

SR = 24000
FRAME = 1920  # samples per 12.5 Hz frame
REF_TEXT = "This is the reference transcript."
FAST = ["--max-new-tokens", "12", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def cached_models():
    """Load each checkpoint once for the module: main() loads its model on every run."""
    load = Pipeline.load
    cache: dict[tuple, Pipeline] = {}

    def cached(cls, ckpt, device, dtype):
        key = (str(ckpt.folder), str(device), str(dtype))
        if key not in cache:
            cache[key] = load(ckpt, device, dtype)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Pipeline, "load", classmethod(cached))
        yield cache


@pytest.fixture
def loads(monkeypatch):
    """Count model loads (on top of the cache): a bad input must be refused before any."""
    seen = []
    load = Pipeline.load.__func__

    def counting(cls, ckpt, device, dtype):
        seen.append(str(ckpt.folder))
        return load(cls, ckpt, device, dtype)

    monkeypatch.setattr(Pipeline, "load", classmethod(counting))
    return seen


@pytest.fixture(scope="module")
def models(checkpoints):
    return {
        "base": str(checkpoints("base")),
        "design": str(checkpoints("voice_design")),
        "custom": str(checkpoints("custom_voice")),
    }


@pytest.fixture(scope="module")
def ref_wav(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ref") / "ref.wav"
    path.write_bytes(encode(reference_clip(2.0), SR, "wav"))
    return str(path)


@pytest.fixture
def spy(monkeypatch):
    """Record each TTS.synthesize call: its requests and the audio it returned."""
    calls: list[tuple[list, list[np.ndarray]]] = []
    synthesize = TTS.synthesize

    def recording(self, requests):
        wavs = synthesize(self, requests)
        calls.append((list(requests), [w.copy() for w in wavs]))
        return wavs

    monkeypatch.setattr(TTS, "synthesize", recording)
    return calls


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_wav(path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SR)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def as_pcm16(audio: np.ndarray) -> np.ndarray:
    """16-bit PCM as the package's one WAV writer (utter_tts.audio.encode, FFmpeg's conversion) makes it."""
    return np.clip(np.rint(np.clip(audio, -1, 1) * 32768.0), -32768, 32767).astype(np.int16)


# ---- text splitting and joining (no model) ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, max_chars, expected",
    [
        ("Hello there. How are you?  I am fine!", 400, ["Hello there. How are you? I am fine!"]),
        ("Hello there. How are you?  I am fine!", 20, ["Hello there.", "How are you?", "I am fine!"]),
        ("One line\nanother line", 10, ["One line", "another", "line"]),
        ('He said "stop." Then left.', 18, ['He said "stop."', "Then left."]),
        ("Pi is 3.14 today.", 400, ["Pi is 3.14 today."]),
        ("今天天气很好。我们去公园散步吧！你好？", 10, ["今天天气很好。", "我们去公园散步吧！", "你好？"]),
        ("今天天气很好。我们去公园散步吧！你好？", 400, ["今天天气很好。我们去公园散步吧！你好？"]),
        ("one, two, three, four, five, six", 20, ["one, two, three,", "four, five, six"]),
        ("a" * 25, 10, ["a" * 10, "a" * 10, "a" * 5]),
        ("  \n\n \t ", 400, []),
    ],
)
def test_split_sentences(text, max_chars, expected):
    assert cli.split_sentences(text, max_chars) == expected


def test_split_sentences_keeps_every_word_and_the_limit():
    text = " ".join(f"Sentence number {i} has a few words{'!' if i % 3 else '.'}" for i in range(60))
    text += " " + "word " * 200  # one sentence far over the limit
    chunks = cli.split_sentences(text, cli.DEFAULT_CHUNK_CHARS)
    assert len(chunks) > 3
    assert all(0 < len(c) <= cli.DEFAULT_CHUNK_CHARS for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert cli.MAX_CHUNK_CHARS == MAX_TEXT_CHARS


def test_chunks_are_joined_with_pauses_and_fades_at_seams_only():
    a, b = np.full(1000, 0.5, np.float32), np.full(800, -0.5, np.float32)
    out = join_clips([a, b], SR, pause_s=0.1)  # how the CLI joins its chunks
    gap = int(0.1 * SR)
    assert len(out) == len(a) + gap + len(b)
    assert out[0] == 0.5 and out[-1] == -0.5  # the outer ends are untouched
    assert abs(out[len(a) - 1]) < 0.01 and out[len(a) + gap] == 0.0  # faded into and out of the seam
    assert not out[len(a) : len(a) + gap].any()
    np.testing.assert_array_equal(join_clips([a], SR), a)


# ---- subcommands -------------------------------------------------------------------------------------


def test_clone_writes_wav(models, ref_wav, tmp_path, capsys, spy):
    out = tmp_path / "clone.wav"
    code, stdout, err = run(
        capsys, "clone", "--model", models["base"], "--ref", ref_wav, "--ref-text", REF_TEXT,
        "--text", "Hello there, this is a test.", "--out", out, "--language", "English", "--seed", 3,
        "--temperature", 0.8, "--top-k", 20, "--top-p", 0.9, "--repetition-penalty", 1.1, *FAST,
    )  # fmt: skip
    assert (code, err) == (0, "")  # --quiet: no progress bar
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    pcm = read_wav(out)
    assert FRAME <= len(pcm) <= 12 * FRAME
    assert np.abs(pcm).max() > 100  # not silence
    assert str(out) in stdout and "s of audio, 1 chunk, seed 3" in stdout
    [(requests, wavs)] = spy
    [req] = requests
    assert (req.mode, req.language, req.seed, req.voice.mode) == ("clone", "English", 3, "icl")
    assert req.sampling == dict(
        temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.1, max_new_tokens=12
    )
    np.testing.assert_array_equal(pcm, as_pcm16(wavs[0]))  # the file holds exactly what was synthesized


def test_design_reads_stdin(models, tmp_path, capsys, spy, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Good morning, how are you today?\n"))
    out = tmp_path / "design.wav"
    code, stdout, err = run(
        capsys, "design", "--model", models["design"], "--description", "A deep, calm male voice.",
        "--text", "-", "--out", out, "--greedy", *FAST,
    )  # fmt: skip
    assert code == 0, err
    assert FRAME <= len(read_wav(out)) <= 12 * FRAME
    [req] = spy[0][0]
    assert (req.text, req.instruct) == ("Good morning, how are you today?", "A deep, calm male voice.")
    assert req.sampling == dict(do_sample=False, subtalker_dosample=False, max_new_tokens=12)


def test_speak_writes_flac(models, tmp_path, capsys, spy):
    out = tmp_path / "sub" / "speak.flac"  # the folder is created
    code, stdout, err = run(
        capsys, "speak", "--model", models["custom"], "--speaker", "Vivian", "--instruct", "Speak slowly.",
        "--text", "Hello there.", "--out", out, "--greedy", *FAST,
    )  # fmt: skip
    assert code == 0, err
    with av.open(str(out)) as f:
        stream = f.streams.audio[0]
        assert (stream.codec_context.name, stream.sample_rate) == ("flac", SR)
        decoded = np.concatenate([fr.to_ndarray().reshape(-1) for fr in f.decode(stream)])
    [(requests, wavs)] = spy
    assert (requests[0].speaker, requests[0].instruct) == ("Vivian", "Speak slowly.")
    assert len(decoded) == len(wavs[0])
    assert np.abs(decoded.astype(np.float32) / 32768 - wavs[0]).max() < 1e-3


def test_voice_create_then_clone_with_it(models, ref_wav, tmp_path, capsys, spy):
    voice_file = tmp_path / "me.safetensors"
    code, stdout, err = run(
        capsys, "voice", "create", "--model", models["base"], "--ref", ref_wav, "--ref-text", REF_TEXT,
        "--out", voice_file,
    )  # fmt: skip
    assert code == 0, err
    assert str(voice_file) in stdout and "icl voice from 2.0 s" in stdout
    voice = Voice.load(voice_file)
    assert (voice.mode, voice.ref_text, voice.dim) == ("icl", REF_TEXT, 64)

    out = tmp_path / "with-voice.wav"
    code, stdout, err = run(
        capsys, "clone", "--model", models["base"], "--voice", voice_file, "--text", "Hello there.",
        "--out", out, "--greedy", *FAST,
    )  # fmt: skip
    assert code == 0, err
    assert FRAME <= len(read_wav(out)) <= 12 * FRAME
    used = spy[0][0][0].voice
    assert torch.equal(used.speaker_embedding, voice.speaker_embedding)
    assert torch.equal(used.ref_codes, voice.ref_codes)


def test_long_text_is_split_and_joined(models, tmp_path, capsys, spy, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the progress bar shows
    sentences = ["Hello there, this is one.", "And here is a second one!", "Is this the third?"]
    text_file = tmp_path / "long.txt"
    text_file.write_text(" ".join(sentences[:2]) + "\n" + sentences[2] + "\n", encoding="utf-8")
    out = tmp_path / "long.wav"
    code, stdout, err = run(
        capsys, "speak", "--model", models["custom"], "--speaker", "ryan", "--text-file", text_file,
        "--out", out, "--max-chunk-chars", 30, "--pause", 0.1, "--batch-size", 2, "--seed", 11,
        "--max-new-tokens", 6,
    )  # fmt: skip
    assert code == 0, err
    assert "3 chunks, seed 11" in stdout
    assert "2/3" in err and "3/3" in err and "chunk" in err  # tqdm, per batch
    assert [len(reqs) for reqs, _ in spy] == [2, 1]
    reqs = [r for rs, _ in spy for r in rs]
    wavs = [w for _, ws in spy for w in ws]
    assert [r.text for r in reqs] == sentences
    assert {(r.speaker, r.seed) for r in reqs} == {("ryan", 11)}  # same voice and seed scheme per chunk
    pcm = read_wav(out)
    assert len(pcm) == sum(map(len, wavs)) + 2 * int(0.1 * SR)
    assert len(pcm) > max(map(len, wavs)) + 2 * FRAME
    np.testing.assert_array_equal(pcm[: len(wavs[0]) - 200], as_pcm16(wavs[0][:-200]))  # before the fade


def test_installed_entry_point(models, tmp_path):
    exe = Path(sys.executable).with_name("utter-tts")
    assert exe.is_file(), "the utter-tts console script is not installed (pip install -e .)"
    out = tmp_path / "entry.wav"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [str(exe), "speak", "--model", models["custom"], "--speaker", "eric", "--text", "Hello there.",
         "--out", str(out), "--max-new-tokens", "6", "--greedy", "--seed", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{out}: " in proc.stdout and "1 chunk" in proc.stdout
    assert FRAME <= len(read_wav(out)) <= 6 * FRAME


# ---- errors --------------------------------------------------------------------------------------------


CLONE = ["clone", "--model", "{base}", "--ref", "{ref}"]
SPEAK = ["speak", "--model", "{custom}", "--speaker", "vivian"]
TEXT_OUT = ["--text", "Hello there.", "--out", "{tmp}/out.wav"]
BAD_INPUT = {
    "language": (
        CLONE + TEXT_OUT + ["--language", "klingon"],
        "error: argument --language: unsupported language 'klingon'; supported: auto, chinese, english, ",
    ),
    "speaker": (
        ["speak", "--model", "{custom}", "--speaker", "bob"] + TEXT_OUT,
        "error: argument --speaker: unknown speaker 'bob'; available: eric, ryan, vivian",
    ),
    "ref-missing": (
        ["clone", "--model", "{base}", "--ref", "{tmp}/missing.wav"] + TEXT_OUT,
        "error: argument --ref: ref_audio file not found: '{tmp}/missing.wav'",
    ),
    "ref-garbage": (
        ["clone", "--model", "{base}", "--ref", "{tmp}/garbage.bin"] + TEXT_OUT,
        "error: argument --ref: ref_audio file '{tmp}/garbage.bin' is not a readable audio file",
    ),
    "voice-missing": (
        ["clone", "--model", "{base}", "--voice", "{tmp}/missing.safetensors"] + TEXT_OUT,
        "error: argument --voice: voice file not found: '{tmp}/missing.safetensors'",
    ),
    "voice-garbage": (
        ["clone", "--model", "{base}", "--voice", "{tmp}/garbage.bin"] + TEXT_OUT,
        "error: argument --voice: not a voice file",
    ),
    "text-empty": (
        SPEAK + ["--text", " \n\t ", "--out", "{tmp}/out.wav"],
        "error: argument --text: text is empty",
    ),
    "text-file-missing": (
        SPEAK + ["--text-file", "{tmp}/missing.txt", "--out", "{tmp}/out.wav"],
        "error: argument --text-file: text file not found: '{tmp}/missing.txt'",
    ),
    "text-file-empty": (
        SPEAK + ["--text-file", "{tmp}/empty.txt", "--out", "{tmp}/out.wav"],
        "error: argument --text-file: text is empty",
    ),
    "out-format": (
        SPEAK + ["--text", "Hello.", "--out", "{tmp}/out.xyz"],
        "error: argument --out: cannot tell the audio format from '{tmp}/out.xyz'; end --out with one of ",
    ),
    "temperature": (
        SPEAK + TEXT_OUT + ["--temperature", "-1"],
        "error: argument --temperature: temperature must be a number in [1e-05, 100.0], got -1.0",
    ),
    "seed": (
        SPEAK + TEXT_OUT + ["--seed", "-5"],
        "error: argument --seed: seed must be an integer in [0, 2^63), got -5",
    ),
    "max-new-tokens": (
        SPEAK + TEXT_OUT + ["--max-new-tokens", "1"],
        "error: argument --max-new-tokens: max_new_tokens must be a number in [2, 8192], got 1",
    ),
    "model-missing": (
        ["speak", "--model", "{tmp}/no-such-model", "--speaker", "x"] + TEXT_OUT,
        "error: argument --model: checkpoint folder '{tmp}/no-such-model' does not exist",
    ),
    "speak-on-base": (
        ["speak", "--model", "{base}", "--speaker", "ryan"] + TEXT_OUT,
        "error: argument --model: this is a base checkpoint; speak needs preset speakers (a CustomVoice "
        "checkpoint)",
    ),
    "design-on-custom": (
        ["design", "--model", "{custom}", "--description", "A calm voice."] + TEXT_OUT,
        "error: argument --model: this is a custom_voice checkpoint; design needs voice design "
        "(a VoiceDesign checkpoint)",
    ),
    "out-unwritable": (
        SPEAK + ["--text", "Hello.", "--out", "/proc/utter-tts-test.wav"],
        "error: argument --out: cannot write '/proc/utter-tts-test.wav'",
    ),
    "out-is-a-folder": (
        SPEAK + ["--text", "Hello.", "--out", "{tmp}/folder.wav"],
        "error: argument --out: cannot write '{tmp}/folder.wav': is a directory",
    ),
    "ref-too-short": (
        ["clone", "--model", "{base}", "--ref", "{tmp}/short.wav"] + TEXT_OUT,
        "error: argument --ref: ref_audio is too short: 0.50 s; at least 1 s is needed",
    ),
    "ref-silent": (
        ["clone", "--model", "{base}", "--ref", "{tmp}/silent.wav"] + TEXT_OUT,
        "error: argument --ref: ref_audio is silent",
    ),
    "device": (SPEAK + TEXT_OUT + ["--device", "cuda"], "error: argument --device: device 'cuda': CUDA is"),
    "description-too-long": (
        ["design", "--model", "{design}", "--description", "x" * 2001] + TEXT_OUT,
        "error: argument --description: instruct is 2001 characters long; the limit is 2000",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_exits_2_with_a_clear_message(case, models, ref_wav, tmp_path, capsys, spy, loads):
    """Every bad argument, file or output path is refused before the model loads, naming the option."""
    (tmp_path / "garbage.bin").write_bytes(b"this is not audio, nor a voice" * 10)
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "short.wav").write_bytes(encode(reference_clip(0.5), SR, "wav"))
    (tmp_path / "silent.wav").write_bytes(encode(np.zeros(2 * SR, np.float32), SR, "wav"))
    ctx = dict(models, ref=ref_wav, tmp=str(tmp_path))
    argv, message = BAD_INPUT[case]
    if "--max-new-tokens" not in argv:
        argv = argv + ["--max-new-tokens", "12"]
    code, _, err = run(capsys, *[a.format(**ctx) for a in argv], "--quiet")
    assert code == 2
    assert err.startswith(message.format(**ctx)), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not loads, "the input is checked before the model loads"
    assert not spy, "nothing is synthesized when the input is bad"
    assert not list(tmp_path.glob("out*")), "no output file is written"


USAGE_ERRORS = {
    "clone --model m --ref a.wav --voice v.safetensors": "argument --voice: not allowed with argument --ref",
    "clone --model m --voice v.safetensors --ref-text hi --text hi --out o.wav": "usage: utter-tts clone",
    "clone --model m --ref a.wav --out o.wav": "one of the arguments --text --text-file is required",
    "clone --model m --ref a.wav --text hi": "the following arguments are required: --out",
    "speak --model m --speaker ryan --text hi --out o.wav --top-k x": "--top-k: invalid int value: 'x'",
    "speak --model m --speaker ryan --text hi --out o.wav --dtype fp64": "argument --dtype: invalid choice",
    "speak --model m --speaker ryan --text hi --out o.wav --max-chunk-chars 0": "must be in [1, 5000], got 0",
    "design --model m --text hi --out o.wav": "the following arguments are required: --description",
    "voice": "the following arguments are required: COMMAND",
    "": "the following arguments are required: COMMAND",
}


@pytest.mark.parametrize("argv", USAGE_ERRORS)
def test_usage_errors_exit_2(argv, capsys):
    code, _, err = run(capsys, *argv.split())
    assert code == 2
    assert USAGE_ERRORS[argv] in err
    command = " ".join(w for w in argv.split()[:2] if not w.startswith("-") and w != "m")
    assert err.startswith(f"usage: utter-tts {command}".rstrip())  # the command's own usage


def test_ref_text_with_a_voice_file_shows_the_clone_usage(capsys):
    code, _, err = run(capsys, "clone", "--model", "m", "--voice", "v.safetensors", "--ref-text", "hi",
                       "--text", "hi", "--out", "o.wav")  # fmt: skip
    assert code == 2
    assert err.startswith("usage: utter-tts clone ")
    assert err.rstrip().endswith("--ref-text goes with --ref; a voice file already holds its transcript")


@pytest.mark.parametrize(
    "command, kind",
    [("clone", "Base"), ("design", "VoiceDesign"), ("speak", "CustomVoice"), ("voice create", "Base")],
)
def test_each_command_names_its_model_kind(command, kind, capsys):
    code, out, _ = run(capsys, *command.split(), "--help")
    assert code == 0
    model_help = " ".join(out.split("\n  --model PATH_OR_ID", 1)[1].split("--device")[0].split())
    assert model_help.startswith(f"a {kind} checkpoint (e.g. Qwen/Qwen3-TTS-12Hz-1.7B-{kind})")
    assert ("--quiet" in out) == (command != "voice create")  # only commands with a progress bar


def test_voice_create_errors(models, ref_wav, tmp_path, capsys, loads):
    """voice create checks its output, model kind and reference before loading anything."""

    def create(model, ref, out):
        return run(capsys, "voice", "create", "--model", model, "--ref", ref, "--out", out)

    code, _, err = create(models["base"], ref_wav, "v.wav")
    assert (code, err) == (2, "error: argument --out: a voice file is saved as .safetensors, got 'v.wav'\n")
    silent = tmp_path / "silent.wav"
    silent.write_bytes(encode(np.zeros(2 * SR, np.float32), SR, "wav"))
    code, _, err = create(models["base"], silent, tmp_path / "v.safetensors")
    assert code == 2 and err.startswith("error: argument --ref: ref_audio is silent"), err
    code, _, err = create(models["design"], ref_wav, tmp_path / "v.safetensors")
    assert (code, err) == (
        2,
        "error: argument --model: voices are made with a Base checkpoint; this one is voice_design\n",
    )
    code, _, err = create(models["base"], ref_wav, "/proc/utter-tts-voice.safetensors")
    assert code == 2 and err.startswith("error: argument --out: cannot write"), err
    assert not loads
    assert not list(tmp_path.glob("*.safetensors"))


# ---- serve -------------------------------------------------------------------------------------------


def test_serve_delegates_to_the_server(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("utter_tts.serve")
    fake.serve_main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "utter_tts.serve", fake)
    assert cli.main(["serve", "models/base", "--port", "9000"]) == 0
    assert seen == [["models/base", "--port", "9000"]]


def test_serve_missing_server_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "utter_tts.serve", None)  # import fails
    code, _, err = run(capsys, "serve", "m")
    assert code == 2 and err.startswith("error: the HTTP server cannot start")


def test_serve_help_is_the_servers(capsys):
    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0 and "usage: utter-tts serve" in out
