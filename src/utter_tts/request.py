"""A synthesis request (clone, design or preset speaker) and its validation against a checkpoint."""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from utter_tts.errors import InvalidInput, UnsupportedForModel
from utter_tts.model.config import SamplingConfig, TTSConfig
from utter_tts.textcheck import check_text
from utter_tts.voices.voice import Voice

MODES = ("clone", "design", "speak")
MODE_OF_MODEL = {"base": "clone", "voice_design": "design", "custom_voice": "speak"}
# One generation holds this many characters at most; longer documents are split into sentences first.
MAX_TEXT_CHARS = 5000
MAX_INSTRUCT_CHARS = 2000
MAX_SEED = 2**63 - 1


SAMPLING_SETTINGS = frozenset(f.name for f in dataclasses.fields(SamplingConfig))


def _sampling_keywords_refused_clearly(cls):
    """A sampling setting passed as a keyword (`Request(text, max_new_tokens=8)`, as `TTS.clone` takes
    it) would get the dataclass's bare "unexpected keyword argument"; say where it goes instead."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        misplaced = {k: kwargs[k] for k in kwargs if k in SAMPLING_SETTINGS}
        if misplaced:
            raise TypeError(
                f"Request() got unexpected keyword argument(s) {', '.join(map(repr, misplaced))}: "
                f"put {', '.join(misplaced)} in sampling={{...}}, e.g. sampling={misplaced!r}"
            )
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@_sampling_keywords_refused_clearly
@dataclass
class Request:
    """What to say and how. `voice` (clone), `instruct` (design description or preset style) and
    `speaker` (preset) are used by the mode that needs them; sampling settings (temperature, top_k,
    max_new_tokens, ...) go in `sampling`, a dict of SamplingConfig fields."""

    text: str
    mode: str = "clone"
    language: str = "auto"
    voice: Voice | None = None
    speaker: str | None = None
    instruct: str | None = None
    seed: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    non_streaming_mode: bool | None = None


def new_seed() -> int:
    return secrets.randbits(62)


def validate(
    req: Request, cfg: TTSConfig, defaults: SamplingConfig, check_voice: bool = True, live: bool = False
) -> tuple[Request, SamplingConfig]:
    """Check a request against the checkpoint; return it normalised (seed set) with its sampling settings.
    `check_voice=False` checks a clone request whose voice is not made yet (the CLI checks everything
    else before it loads the model that makes the voice). `live`: its text comes later, through a
    TextFeed (dual-track streaming): `text` must be empty, and the text is fed in streaming-text mode."""
    if req.mode not in MODES:
        raise InvalidInput(f"unknown mode {req.mode!r}; use one of {', '.join(MODES)}", param="mode")
    needed = MODE_OF_MODEL[cfg.tts_model_type]
    if req.mode != needed:
        what = {
            "clone": "voice cloning (a Base checkpoint)",
            "design": "voice design (a VoiceDesign checkpoint)",
            "speak": "preset speakers (a CustomVoice checkpoint)",
        }[req.mode]
        raise UnsupportedForModel(
            f"this is a {cfg.tts_model_type} checkpoint; {req.mode} needs {what}", param="mode"
        )
    if live:
        if req.text != "":
            raise InvalidInput("a request whose text comes through a feed has text ''", param="text")
        if req.non_streaming_mode:
            raise InvalidInput(
                "text that is still arriving is fed in streaming-text mode", param="non_streaming_mode"
            )
    text = req.text if live else check_text(req.text, "text", MAX_TEXT_CHARS)
    instruct = req.instruct
    if not isinstance(req.language, str):
        raise InvalidInput("language must be a string", param="language", code="invalid_type")
    if req.language.lower() not in cfg.languages:
        raise InvalidInput(
            f"unsupported language {req.language!r}; supported: {', '.join(cfg.languages)}",
            param="language",
            code="unsupported_language",
        )
    if req.mode == "clone" and (check_voice or req.voice is not None):
        if not isinstance(req.voice, Voice):
            raise InvalidInput("cloning needs a voice (from create_voice) or reference audio", param="voice")
        if req.voice.dim != cfg.talker.hidden_size:
            raise InvalidInput(
                f"this voice was made for a model of width {req.voice.dim}; this checkpoint has "
                f"{cfg.talker.hidden_size}: create the voice again with this model",
                param="voice",
                code="voice_model_mismatch",
            )
        _check_voice_tensors(req.voice, cfg)
        if req.voice.ref_text is not None:  # a voice file may hold anything
            check_text(req.voice.ref_text, "voice", MAX_TEXT_CHARS)
    if req.mode == "clone":
        if req.instruct:
            raise UnsupportedForModel(
                "a Base checkpoint takes no description or instruction", param="instruct"
            )
    elif req.mode == "design":
        instruct = check_text(req.instruct, "instruct", MAX_INSTRUCT_CHARS)
    else:
        if not isinstance(req.speaker, str) or req.speaker.lower() not in cfg.talker.spk_id:
            raise InvalidInput(
                f"unknown speaker {req.speaker!r}; available: {', '.join(cfg.speakers)}",
                param="speaker",
                code="unknown_speaker",
            )
        if req.instruct is not None:
            instruct = check_text(req.instruct, "instruct", MAX_INSTRUCT_CHARS, allow_empty=True)
            if req.instruct and cfg.tts_model_size == "0b6":
                raise UnsupportedForModel("the 0.6B CustomVoice model takes no instruction", param="instruct")
    if req.seed is not None and (
        isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed <= MAX_SEED
    ):
        raise InvalidInput(
            f"seed must be an integer in [0, 2^63), got {req.seed!r}", param="seed", code="invalid_type"
        )
    try:
        sampling = defaults.replace(**req.sampling)
    except TypeError as e:
        raise InvalidInput(str(e), param="sampling") from None
    _check_sampling(sampling)
    seed = req.seed if req.seed is not None else new_seed()
    # NFC text from here on: the tokenizer, the frame cap and the caches all see the same string
    out = Request(**{**req.__dict__, "text": text, "instruct": instruct, "seed": seed})
    return out, sampling


def _check_voice_tensors(voice: Voice, cfg: TTSConfig) -> None:
    """A voice loaded from a file may hold anything: reject what would crash or silently garble generation."""
    emb, codes = voice.speaker_embedding, voice.ref_codes
    problem = None
    if not emb.is_floating_point() or not bool(torch.isfinite(emb).all()):
        problem = "its speaker embedding must hold finite floats"
    elif codes is not None:
        groups, size = cfg.talker.num_code_groups, cfg.talker.code_predictor.vocab_size
        if codes.ndim != 2 or codes.shape[1] != groups or codes.dtype not in (torch.int64, torch.int32):
            problem = (
                f"its reference codes must be integers of shape [frames, {groups}], "
                f"got {codes.dtype} {tuple(codes.shape)}"
            )
        elif codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < size):
            problem = f"its reference codes must lie in [0, {size})"
    if problem:
        raise InvalidInput(f"unusable voice: {problem}", param="voice", code="invalid_voice")


def _check_sampling(s: SamplingConfig) -> None:
    def num(name, lo, hi, integer=False):
        v = getattr(s, name)
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or not lo <= v <= hi:
            raise InvalidInput(f"{name} must be a number in [{lo}, {hi}], got {v!r}", param=name)

    for prefix in ("", "subtalker_"):
        num(prefix + "temperature", 1e-5, 100.0)
        num(prefix + "top_p", 1e-6, 1.0)
        num(prefix + "top_k", 0, 1 << 20, integer=True)
        name = prefix + "dosample" if prefix else "do_sample"
        if not isinstance(getattr(s, name), bool):
            raise InvalidInput(f"{name} must be a boolean", param=name)
    num("repetition_penalty", 1e-3, 100.0)
    num("max_new_tokens", 2, int(os.environ.get("UTTER_TTS_MAX_NEW_TOKENS", 8192)), integer=True)
    num("min_new_tokens", 0, s.max_new_tokens, integer=True)
