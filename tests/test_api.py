"""Bad input to the Python API gets an exception naming the problem; voices round-trip; bf16 runs."""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from utter_tts.api import TTS
from utter_tts.demo import SHAPES, SPECIAL_TOKENS
from utter_tts.errors import AudioError, CheckpointError, InvalidInput, UnsupportedForModel, UtterTTSError
from utter_tts.request import MAX_TEXT_CHARS, Request, validate
from utter_tts.voices.voice import Voice

from .model.test_parity import reference_clip

SR = 24000
REF_TEXT = "This is the reference transcript."
GREEDY = dict(do_sample=False, subtalker_dosample=False)
SHORT = dict(GREEDY, max_new_tokens=3)


@pytest.fixture(scope="module")
def base(checkpoints) -> TTS:
    return TTS.from_pretrained(checkpoints("base"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def design(checkpoints) -> TTS:
    return TTS.from_pretrained(checkpoints("voice_design"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def custom(checkpoints) -> TTS:
    return TTS.from_pretrained(checkpoints("custom_voice"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def voice(base) -> Voice:
    v = base.create_voice((reference_clip(2.0), SR), ref_text=REF_TEXT)
    assert v.mode == "icl"
    return v


@contextlib.contextmanager
def raises(exc_type, param, *fragments):
    """pytest.raises for an UtterTTSError that also checks .param and fragments of the message."""
    with pytest.raises(exc_type) as info:
        yield info
    err = info.value
    assert isinstance(err, UtterTTSError)
    if param is not None:
        assert err.param == param, f"param {err.param!r} != {param!r} ({err})"
    for fragment in fragments:
        assert fragment in str(err), f"{fragment!r} not in {str(err)!r}"


# ---- text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, code, fragment",
    [
        ("", "invalid_text", "text is empty"),
        ("   \n\t ", "invalid_text", "text is empty"),
        ("a\ud800b", "invalid_text", "lone UTF-16 surrogate at index 1"),
        ("nul\x00", "invalid_text", "control character U+0000 at index 3"),
        (
            "a" * (MAX_TEXT_CHARS + 1),
            "text_too_long",
            f"is {MAX_TEXT_CHARS + 1} characters long; the limit is 5000",
        ),
        (123, "invalid_type", "text must be a string, got int"),
        (None, "invalid_type", "text must be a string, got NoneType"),
        (b"hello", "invalid_type", "text must be a string, got bytes"),
        ([], "invalid_text", "text list is empty"),
    ],
    ids=["empty", "whitespace", "surrogate", "nul", "too-long", "int", "none", "bytes", "empty-list"],
)
def test_bad_text(base, voice, text, code, fragment):
    with raises(InvalidInput, "text", fragment) as e:
        base.clone(text, voice, **SHORT)
    assert e.value.code == code


def test_text_at_the_limit_is_accepted(base, voice):
    validate(Request("a" * MAX_TEXT_CHARS, voice=voice), base.pipeline.config, base.pipeline.defaults)


def test_bad_text_in_a_batch_names_the_text(custom):
    with raises(InvalidInput, "text", "text is empty"):
        custom.speak(["Hello.", " "], "ryan", **SHORT)


def test_text_is_nfc_normalized_before_tokenizing(base, voice):
    """A decomposed "é" (e + combining acute) is the same request as the composed one."""
    req, _ = validate(
        Request("Cafe\u0301 au lait.", voice=voice), base.pipeline.config, base.pipeline.defaults
    )
    assert req.text == "Caf\u00e9 au lait."


def test_surrogates_in_every_text_argument(base, custom):
    with raises(InvalidInput, "ref_text", "surrogate") as e:
        base.create_voice((reference_clip(), SR), ref_text="a\udfffb")
    assert e.value.code == "invalid_text"
    with raises(InvalidInput, "instruct", "surrogate"):
        custom.speak("Hello.", "ryan", instruct="\ud83d", **SHORT)


# ---- language and speaker --------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["klingon", "sichuan_dialect", ""])
def test_unknown_language(base, voice, language):
    with raises(
        InvalidInput, "language", f"unsupported language {language!r}", "supported: auto, chinese"
    ) as e:
        base.clone("Hello.", voice, language=language, **SHORT)
    assert e.value.code == "unsupported_language"


def test_language_must_be_a_string(base, voice):
    with raises(InvalidInput, "language", "language must be a string"):
        base.clone("Hello.", voice, language=None, **SHORT)


def test_language_names_are_case_insensitive(base, voice):
    upper, lower, other = (
        base.pipeline.prepare(Request("Hello.", "clone", lang, voice=voice)).prompt
        for lang in ("ENGLISH", "english", "german")
    )
    assert torch.equal(upper.embeds, lower.embeds) and not torch.equal(upper.embeds, other.embeds)
    [codes] = base.generate_codes([Request("Hello.", "clone", "English", voice=voice, sampling=SHORT)])
    assert codes.shape[1] == 16 and codes.shape[0] >= 1


def test_unknown_speaker(custom):
    with raises(InvalidInput, "speaker", "unknown speaker 'bob'; available: eric, ryan, vivian") as e:
        custom.speak("Hello.", "bob", **SHORT)
    assert e.value.code == "unknown_speaker"
    with raises(InvalidInput, "speaker", "unknown speaker None"):
        custom.speak("Hello.", None, **SHORT)
    custom.pipeline.prepare(Request("Hello.", "speak", speaker="VIVIAN"))  # names are case-insensitive


# ---- what each checkpoint type can do ----------------------------------------------------------------


def test_instruction_on_base(base, voice):
    with raises(UnsupportedForModel, "instruct", "a Base checkpoint takes no description or instruction"):
        base.synthesize([Request("Hello.", "clone", voice=voice, instruct="Speak happily.", sampling=SHORT)])


def test_instruction_on_small_custom_voice(custom, monkeypatch):
    monkeypatch.setattr(custom.pipeline.config, "tts_model_size", "0b6")
    with raises(UnsupportedForModel, "instruct", "the 0.6B CustomVoice model takes no instruction"):
        custom.speak("Hello.", "ryan", instruct="Speak happily.", **SHORT)


WRONG_MODE = {
    "clone-on-design": (
        "design",
        lambda t, v: t.clone("Hi.", v),
        "mode",
        "voice_design checkpoint; clone needs",
    ),
    "clone-ref-on-design": (
        "design",
        lambda t, v: t.clone("Hi.", (reference_clip(), SR)),
        "ref_audio",
        "voices are made with a Base checkpoint; this one is voice_design",
    ),
    "voice-on-custom": (
        "custom",
        lambda t, v: t.create_voice((reference_clip(), SR)),
        "ref_audio",
        "this one is custom_voice",
    ),
    "design-on-base": (
        "base",
        lambda t, v: t.design("Hi.", "Calm."),
        "mode",
        "base checkpoint; design needs",
    ),
    "speak-on-base": ("base", lambda t, v: t.speak("Hi.", "ryan"), "mode", "speak needs preset speakers"),
    "design-on-custom": (
        "custom",
        lambda t, v: t.design("Hi.", "Calm."),
        "mode",
        "design needs voice design",
    ),
}


@pytest.mark.parametrize("case", WRONG_MODE)
def test_mode_the_checkpoint_cannot_do(request, voice, case):
    model, call, param, fragment = WRONG_MODE[case]
    tts = request.getfixturevalue(model)
    with raises(UnsupportedForModel, param, fragment):
        call(tts, voice)


@pytest.mark.parametrize("instruct", ["", "  ", None, 5])
def test_design_needs_a_description(design, instruct):
    with raises(InvalidInput, "instruct", "instruct"):
        design.design("Hello.", instruct, **SHORT)


# ---- reference audio -----------------------------------------------------------------------------------


def _wav_file(path: Path, samples: np.ndarray) -> str:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return str(path)


REFS = {
    "garbage-bytes": (lambda tmp: b"this is not audio" * 20, "is not a readable audio file"),
    "garbage-file": (
        lambda tmp: (tmp / "x.wav").write_bytes(b"RIFF not really" * 20) and str(tmp / "x.wav"),
        "is not a readable audio file",
    ),
    "empty-bytes": (lambda tmp: b"", "ref_audio is empty (0 bytes)"),
    "silent": (lambda tmp: (np.zeros(2 * SR, np.float32), SR), "ref_audio is silent"),
    "silent-file": (lambda tmp: _wav_file(tmp / "s.wav", np.zeros(2 * SR)), "ref_audio is silent"),
    "short": (
        lambda tmp: (reference_clip(0.5), SR),
        "ref_audio is too short: 0.50 s; at least 1 s is needed",
    ),
    "long": (lambda tmp: (reference_clip(31.0), SR), "ref_audio is too long: 31.0 s; the limit is 30 s"),
    "long-file": (lambda tmp: _wav_file(tmp / "l.wav", reference_clip(31.0)), "is too long"),
    "missing": (lambda tmp: str(tmp / "missing.wav"), "ref_audio file not found: '"),
    "directory": (lambda tmp: str(tmp), "is a directory, not an audio file"),
    "url": (lambda tmp: "https://example.com/me.wav", "looks like a URL"),
    "wrong-type": (
        lambda tmp: 42,
        "must be a file path, the bytes of an audio file or a (samples, sample_rate)",
    ),
    "nan": (lambda tmp: (np.full(2 * SR, np.nan, np.float32), SR), "contains NaN or infinite samples"),
}


@pytest.mark.parametrize("case", REFS)
def test_bad_reference_audio(base, tmp_path, case):
    make, fragment = REFS[case]
    ref = make(tmp_path)
    with raises(AudioError, "ref_audio", fragment):
        base.clone("Hello.", ref, **SHORT)


def test_bad_ref_text(base):
    with raises(InvalidInput, "ref_text", "ref_text must be a string"):
        base.create_voice((reference_clip(), SR), ref_text=5)
    with raises(InvalidInput, "ref_text", "the limit is 5000"):
        base.create_voice((reference_clip(), SR), ref_text="a" * 5001)


def test_ref_text_with_a_finished_voice(base, voice):
    with raises(InvalidInput, "ref_text", "ref_text belongs to create_voice"):
        base.clone("Hello.", voice, ref_text="Other words.")


# ---- voices -------------------------------------------------------------------------------------------


def test_voice_of_a_model_of_another_width(base):
    assert (
        SHAPES["tiny-0.6b"]["hidden"]
        == SHAPES["tiny-1.7b"]["hidden"]
        == base.pipeline.config.talker.hidden_size
    )
    # the tiny shapes share a width, so stand in a voice of the real 0.6B (1024) on this one (64)
    other = Voice(speaker_embedding=torch.randn(SHAPES["0.6b"]["hidden"]), meta={"model_size": "0b6"})
    with raises(InvalidInput, "voice", "made for a model of width 1024; this checkpoint has 64") as e:
        base.clone("Hello.", other, **SHORT)
    assert e.value.code == "voice_model_mismatch"


def test_clone_needs_a_voice(base):
    with raises(InvalidInput, "voice", "cloning needs a voice"):
        base.synthesize([Request("Hello.", "clone", voice=None)])


def test_voice_round_trip(base, voice, tmp_path):
    again = Voice.from_bytes(voice.to_bytes())
    assert torch.equal(again.speaker_embedding, voice.speaker_embedding)
    assert again.speaker_embedding.dtype == torch.float32
    assert torch.equal(again.ref_codes, voice.ref_codes) and again.ref_codes.dtype == torch.int64
    assert (again.ref_text, again.meta, again.mode) == (voice.ref_text, voice.meta, "icl")
    voice.save(tmp_path / "v.safetensors")
    loaded = Voice.load(tmp_path / "v.safetensors")
    assert torch.equal(loaded.ref_codes, voice.ref_codes) and loaded.ref_text == voice.ref_text
    reqs = [
        Request("Hello there.", voice=v, seed=5, sampling=dict(GREEDY, max_new_tokens=5))
        for v in (voice, again)
    ]
    first, second = base.generate_codes(reqs)
    assert first.shape[0] >= 1 and torch.equal(first, second)


def test_voice_content_hash_is_stable(voice):
    # safetensors writes __metadata__ in hash-map order, so to_bytes() differs from call to call
    assert len({voice.content_hash() for _ in range(8)}) == 1
    assert Voice.from_bytes(voice.to_bytes()).content_hash() == voice.content_hash()


def test_xvector_voice_round_trip():
    v = Voice(speaker_embedding=torch.randn(64), meta={"k": [1, "two"]})
    again = Voice.from_bytes(v.to_bytes())
    assert torch.equal(again.speaker_embedding, v.speaker_embedding)
    assert (again.ref_codes, again.ref_text, again.meta, again.mode) == (
        None,
        None,
        {"k": [1, "two"]},
        "xvector",
    )


def _voice_bytes(voice: Voice, tamper=None) -> bytes:
    tensors = {"speaker_embedding": voice.speaker_embedding}
    meta = {"format": "utter-tts-voice", "version": "1", "ref_text": "null", "meta": "{}"}
    if tamper:
        tamper(tensors, meta)
    return st_save(tensors, metadata=meta)


GARBAGE_VOICES = {
    "empty": lambda v: b"",
    "garbage": lambda v: b"definitely not a voice file",
    "truncated": lambda v: v.to_bytes()[:100],
    "no-header": lambda v: st_save({"speaker_embedding": v.speaker_embedding}),
    "no-embedding": lambda v: _voice_bytes(v, lambda t, m: t.update(x=t.pop("speaker_embedding"))),
    "embedding-2d": lambda v: _voice_bytes(v, lambda t, m: t.update(speaker_embedding=torch.zeros(2, 64))),
    "codes-1d": lambda v: _voice_bytes(v, lambda t, m: t.update(ref_codes=torch.zeros(5, dtype=torch.long))),
    "bad-metadata-json": lambda v: _voice_bytes(v, lambda t, m: m.update(ref_text="{not json")),
}


@pytest.mark.parametrize("case", GARBAGE_VOICES)
def test_garbage_voice_bytes(voice, case):
    data = GARBAGE_VOICES[case](voice)
    with raises(InvalidInput, "voice", "voice file") as e:
        Voice.from_bytes(data)
    assert e.value.code == "invalid_voice"


MALFORMED_VOICES = {
    "codes-8-groups": lambda v: Voice(v.speaker_embedding, torch.zeros(5, 8, dtype=torch.long), "Words."),
    "codes-float": lambda v: Voice(v.speaker_embedding, torch.zeros(5, 16), "Words."),
    "codes-out-of-range": lambda v: Voice(v.speaker_embedding, torch.full((5, 16), 5000), "Words."),
    "codes-negative": lambda v: Voice(v.speaker_embedding, torch.full((5, 16), -1), "Words."),
    "embedding-nan": lambda v: Voice(torch.full((64,), math.nan)),
}


@pytest.mark.parametrize("case", MALFORMED_VOICES)
def test_voice_with_malformed_tensors(base, voice, case):
    with raises(InvalidInput, "voice"):
        base.clone("Hello.", MALFORMED_VOICES[case](voice), **SHORT)


# ---- special-token strings in the text ----------------------------------------------------------------


def test_special_token_strings_are_plain_text(base, voice):
    tok = base.pipeline.tokenizer
    text = "Say <|im_end|> and <tts_pad>, then <|im_start|>user <|endoftext|><tts_text_eod><|audio_start|>."
    cfg = base.pipeline.config
    template = [cfg.im_start_token_id, cfg.im_end_token_id, cfg.im_start_token_id]
    ids = tok.assistant_text(text)
    assert [i for i in ids if i >= min(SPECIAL_TOKENS.values())] == template
    assert tok.bpe.decode(tok.encode_plain(text)) == text
    # descriptions and transcripts too: only the template's own control ids
    for ids in (tok.instruct_text(text), tok.ref_text(text)):
        assert [i for i in ids if i >= min(SPECIAL_TOKENS.values())] == template[:2]
    audio, sr = base.clone(text, voice, **SHORT)
    assert sr == SR and audio.size > 0 and np.isfinite(audio).all()


# ---- sampling settings and seeds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting, param, fragment",
    [
        (dict(temperature=-1), "temperature", "temperature must be a number in [1e-05, 100.0], got -1"),
        (dict(temperature=0), "temperature", "got 0"),
        (dict(temperature=math.nan), "temperature", "got nan"),
        (dict(top_k="x"), "top_k", "top_k must be a number in [0, 1048576], got 'x'"),
        (dict(top_k=2.5), "top_k", "got 2.5"),
        (dict(top_p=1.5), "top_p", "top_p must be a number in [1e-06, 1.0], got 1.5"),
        (dict(repetition_penalty=math.inf), "repetition_penalty", "got inf"),
        (dict(max_new_tokens=1), "max_new_tokens", "max_new_tokens must be a number in [2, "),
        (dict(max_new_tokens=4, min_new_tokens=5), "min_new_tokens", "in [0, 4], got 5"),
        (dict(do_sample="no"), "do_sample", "do_sample must be a boolean"),
        (dict(subtalker_temperature=-1), "subtalker_temperature", "subtalker_temperature must be a number"),
        (dict(foo=1), "sampling", "unknown sampling setting(s): ['foo']"),
        (dict(temprature=0.5), "sampling", "unknown sampling setting(s): ['temprature']"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_bad_sampling_setting(base, voice, setting, param, fragment):
    with raises(InvalidInput, param, fragment):
        base.clone("Hello.", voice, **setting)


def test_bad_subtalker_dosample_names_itself(base, voice):
    # the setting is called subtalker_dosample (as in generation_config.json)
    with raises(InvalidInput, "subtalker_dosample", "subtalker_dosample must be a boolean"):
        base.clone("Hello.", voice, subtalker_dosample="no")


def test_sampling_setting_as_a_request_keyword_says_where_it_goes():
    """TTS.clone takes max_new_tokens=...; a Request takes it in sampling={...} and says so."""
    with pytest.raises(TypeError) as info:
        Request("Hello.", "clone", max_new_tokens=8)
    assert "put max_new_tokens in sampling={...}, e.g. sampling={'max_new_tokens': 8}" in str(info.value)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):  # any other: as before
        Request("Hello.", colour=1)
    positional = Request("Hello.", "clone", "english", None, None, None, 7, {"max_new_tokens": 8})
    assert positional.seed == 7 and positional.sampling == {"max_new_tokens": 8}


@pytest.mark.parametrize("seed", [-1, 2**63, "7", 1.5, True])
def test_bad_seed(base, voice, seed):
    with raises(InvalidInput, "seed", "seed must be an integer in [0, 2^63)"):
        base.clone("Hello.", voice, seed=seed, **SHORT)


def test_bad_batch_and_stream_arguments(base, voice):
    with raises(InvalidInput, "language", "1 language values for 2 texts"):
        base.clone(["One.", "Two."], voice, language=["english"])
    with raises(InvalidInput, "mode", "unknown mode 'sing'"):
        base.synthesize([Request("Hello.", "sing", voice=voice)])
    with raises(InvalidInput, "chunk_frames", "chunk_frames must be a positive integer, got 0"):
        next(base.stream(Request("Hello.", voice=voice), chunk_frames=0))
    with raises(
        InvalidInput, "first_chunk_frames", "first_chunk_frames must be a positive integer, got True"
    ):
        base.stream(Request("Hello.", voice=voice), first_chunk_frames=True)


# ---- checkpoints --------------------------------------------------------------------------------------


def mirror(src: Path, dst: Path, skip: str | None = None) -> Path:
    """A checkpoint folder of symlinks to `src`'s files (cheap to copy), without `skip`."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_file() and str(rel) != skip:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, dst / rel)
    return dst


def replace_file(folder: Path, rel: str, data: bytes) -> None:
    (folder / rel).unlink()
    (folder / rel).write_bytes(data)


@pytest.mark.parametrize(
    "missing, fragment",
    [
        ("config.json", "config.json"),
        ("vocab.json", "vocab.json"),
        ("merges.txt", "merges.txt"),
        ("model.safetensors", "*.safetensors (model weights)"),
        ("speech_tokenizer/model.safetensors", "speech_tokenizer/*.safetensors (codec weights)"),
        ("speech_tokenizer/config.json", "speech_tokenizer/config.json"),
    ],
)
def test_checkpoint_with_a_missing_file(checkpoints, tmp_path, missing, fragment):
    folder = mirror(checkpoints("base"), tmp_path / "ckpt", skip=missing)
    with raises(CheckpointError, None, str(folder), "is missing: " + fragment):
        TTS.from_pretrained(folder, device="cpu")


def test_checkpoint_optional_files(checkpoints, tmp_path):
    folder = mirror(checkpoints("custom_voice"), tmp_path / "ckpt", skip="generation_config.json")
    (folder / "tokenizer.json").unlink()
    tts = TTS.from_pretrained(folder, device="cpu")
    assert tts.pipeline.defaults.max_new_tokens == 2048  # the official defaults


CORRUPT = {
    "config.json": (b"{ not json", "config.json is not a Qwen3-TTS config"),
    "config.json-type": (json.dumps({"tts_model_type": "music"}).encode(), "unknown tts_model_type 'music'"),
    "model.safetensors": (b"\x00" * 64, "model.safetensors"),
    "speech_tokenizer/model.safetensors": (b"\x00" * 64, "speech_tokenizer/model.safetensors"),
    "speech_tokenizer/config.json": (b"[1, 2", "speech_tokenizer/config.json"),
    "generation_config.json": (b"{ not json", "generation_config.json"),
    "vocab.json": (b"{ not json", "vocab.json"),
    "merges.txt": (b"#version: 0.2\nnot-a-merge-line\n", "merges.txt"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_checkpoint_with_a_corrupt_file(checkpoints, tmp_path, case):
    rel = case.removesuffix("-type")
    data, fragment = CORRUPT[case]
    folder = mirror(checkpoints("base"), tmp_path / "ckpt")
    replace_file(folder, rel, data)
    with raises(CheckpointError, None, fragment):
        TTS.from_pretrained(folder, device="cpu")
    assert (checkpoints("base") / rel).read_bytes() != data  # the shared checkpoint is untouched


def test_checkpoint_without_speaker_encoder_weights(checkpoints, tmp_path):
    # a VoiceDesign checkpoint has no speaker encoder: labelled Base, its weights are incomplete
    folder = mirror(checkpoints("voice_design"), tmp_path / "no-encoder")
    cfg = json.loads((folder / "config.json").read_text())
    replace_file(folder, "config.json", json.dumps(dict(cfg, tts_model_type="base")).encode())
    with raises(CheckpointError, None, "speaker_encoder"):
        TTS.from_pretrained(folder, device="cpu")


def test_checkpoint_config_that_does_not_fit_the_weights(checkpoints, tmp_path):
    # a config whose width differs from the weights'
    folder = mirror(checkpoints("base"), tmp_path / "wide")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["talker_config"]["hidden_size"] = 128
    replace_file(folder, "config.json", json.dumps(cfg).encode())
    with raises(CheckpointError, None, "talker"):
        TTS.from_pretrained(folder, device="cpu")


def test_checkpoint_path_that_is_no_folder(tmp_path, checkpoints):
    with raises(CheckpointError, None, "does not exist"):
        TTS.from_pretrained(tmp_path / "nothing-here")
    with raises(CheckpointError, None, "does not exist"):
        TTS.from_pretrained("./relative/nothing")
    with raises(CheckpointError, None, "config.json"):
        TTS.from_pretrained(checkpoints("base") / "config.json")


def test_hub_id_when_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with raises(
        CheckpointError, None, "could not download 'utter-tts-tests/no-such-model'", "HF_HUB_OFFLINE"
    ):
        TTS.from_pretrained("utter-tts-tests/no-such-model")


@pytest.mark.parametrize(
    "kw, param, fragment",
    [
        (dict(dtype="float64"), "dtype", "unsupported dtype 'float64'"),
        (dict(device="gpu"), "device", "gpu"),
        pytest.param(
            dict(device="cuda"),
            "device",
            "CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
    ids=["dtype", "device", "cuda-missing"],
)
def test_bad_load_options(checkpoints, kw, param, fragment):
    with raises(InvalidInput, param, fragment):
        TTS.from_pretrained(checkpoints("base"), **kw)


# ---- bf16 -----------------------------------------------------------------------------------------------


def test_bfloat16_clone(checkpoints):
    tts = TTS.from_pretrained(checkpoints("base"), device="cpu", dtype="bfloat16")
    assert tts.dtype == torch.bfloat16
    assert next(tts.pipeline.talker.parameters()).dtype == torch.bfloat16
    audio, sr = tts.clone("Hello there.", (reference_clip(1.5), SR), ref_text=REF_TEXT, **SHORT)
    assert sr == SR and audio.dtype == np.float32
    assert audio.size > 0 and np.isfinite(audio).all() and np.abs(audio).max() > 1e-3


def test_threads_share_one_model(checkpoints):
    """Each call owns its caches: concurrent one-shot and streaming calls give the single-thread audio."""
    import threading

    from utter_tts.request import Request

    tts = TTS.from_pretrained(checkpoints("custom_voice", "tiny-1.7b"))
    ref, _ = tts.speak("Hello there.", "ryan", seed=7, max_new_tokens=6)
    out = {}

    def one_shot(i):
        out[i] = tts.speak("Hello there.", "ryan", seed=7, max_new_tokens=6)[0]

    def streamed(i):
        req = Request("Hello there.", "speak", speaker="ryan", seed=7, sampling={"max_new_tokens": 6})
        out[i] = np.concatenate(list(tts.stream(req)))

    threads = [threading.Thread(target=f, args=(i,)) for i, f in enumerate([one_shot, streamed] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 6
    for a in out.values():
        assert a.shape == ref.shape and np.abs(a - ref).max() <= 1e-5
