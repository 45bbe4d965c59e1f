"""The models behind utter's contract: reference audio in (base64 or a URL), voices cached, text of any
length synthesized in sentence chunks (through the engines when there are), WAV out."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utter_tts.audio.encode import encode
from utter_tts.audio.join import join_clips
from utter_tts.compat.checks import (
    DEFAULT_MAX_NEW_TOKENS,
    NO_REFERENCE,
    CloneArgs,
    CompatError,
    Limits,
    reference_base64,
)
from utter_tts.compat.fetch import FetchError, FetchPolicy, fetch_url
from utter_tts.compat.model_info import model_info
from utter_tts.errors import InvalidInput, UtterTTSError
from utter_tts.request import Request
from utter_tts.service.inline_voices import InlineVoices
from utter_tts.text import split_sentences

Progress = Callable[[int, int], None]  # (pieces done, pieces in all)
Cancelled = Callable[[], bool]


class JobCancelled(Exception):
    """Raised inside a synthesis when its job was cancelled (checked between sentence batches)."""


@dataclass
class ModelNames:
    base: str = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"
    design: str = "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"


@dataclass
class Synthesizer:
    """One deployment's models: Base (cloning) and VoiceDesign (design), each optionally behind an Engine
    (continuous batching). Both are thread-safe (one TTS serves many threads; the Engine batches)."""

    base: Any = None  # utter_tts.api.TTS (base)
    design_model: Any = None  # utter_tts.api.TTS (voice_design)
    base_engine: Any = None
    design_engine: Any = None
    names: ModelNames = field(default_factory=ModelNames)
    limits: Limits = field(default_factory=Limits)
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    cache: InlineVoices = field(default_factory=lambda: InlineVoices(128))
    gpu: str | None = None
    fetcher: Callable[[str, FetchPolicy], bytes] = fetch_url

    @property
    def sample_rate(self) -> int:
        model = self.base or self.design_model
        return int(model.sample_rate) if model is not None else 24000

    def get_model_info(self) -> dict[str, Any]:
        return model_info(self)

    # ---- voices --------------------------------------------------------------------------------------
    def reference_bytes(self, ref_audio_base64: Any = None, ref_audio_url: Any = None) -> bytes:
        """The reference clip: the URL when given (the original preferred it), else the base64."""
        if ref_audio_url:
            if not isinstance(ref_audio_url, str):
                raise CompatError("'ref_audio_url' must be a string")
            policy = self.fetch_policy
            if policy.max_bytes > self.limits.max_ref_bytes:
                policy = FetchPolicy(**{**policy.__dict__, "max_bytes": self.limits.max_ref_bytes})
            try:
                return self.fetcher(ref_audio_url.strip(), policy)
            except FetchError as e:
                raise CompatError(str(e)) from None
        if ref_audio_base64:
            return reference_base64(ref_audio_base64, self.limits)
        raise CompatError(NO_REFERENCE)

    def voice_for(self, caller: str, audio: bytes, ref_text: str | None):
        """The clone prompt for this reference, from the cache when the same caller sent it before."""
        if self.base is None:
            raise CompatError("voice cloning is not available: no Base model is loaded", status=503)
        try:
            return self.cache.make(caller, self.names.base, self.base, audio, ref_text)
        except InvalidInput as e:
            raise CompatError(e.message) from None

    # ---- synthesis -----------------------------------------------------------------------------------
    def synthesize(
        self,
        mode: str,
        text: str,
        language: str,
        *,
        voice: Any = None,
        instruct: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int | None = None,
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
    ) -> np.ndarray:
        """Any length of text: split at sentences into pieces of `limits.chunk_chars`, each generated with
        `max_new_tokens` as its own frame cap (utter's rule: the cap is per chunk, not per text)."""
        pieces = split_sentences(text, self.limits.chunk_chars) or [text.strip()]
        base_seed = secrets.randbits(62) if seed is None else seed
        # Design keeps one seed for every piece so the described voice stays the same across sentences.
        reqs = [
            Request(
                piece,
                mode,
                language,
                voice=voice,
                instruct=instruct,
                seed=base_seed if mode == "design" else (base_seed + i) % (2**63),
                sampling={"max_new_tokens": max_new_tokens},
            )
            for i, piece in enumerate(pieces)
        ]
        wavs: list[np.ndarray] = []
        step = max(1, self.limits.batch_pieces)
        for start in range(0, len(reqs), step):
            if cancelled is not None and cancelled():
                raise JobCancelled()
            wavs.extend(self._generate(mode, reqs[start : start + step]))
            if progress is not None:
                progress(len(wavs), len(reqs))
        return join_clips(wavs, self.sample_rate)

    def _generate(self, mode: str, reqs: Sequence[Request]) -> list[np.ndarray]:
        engine = self.base_engine if mode == "clone" else self.design_engine
        model = self.base if mode == "clone" else self.design_model
        if model is None:
            what = "voice cloning" if mode == "clone" else "voice design"
            raise CompatError(f"{what} is not available: its model is not loaded", status=503)
        try:
            if engine is not None:
                return engine.generate(list(reqs))
            return model.synthesize(list(reqs))
        except InvalidInput as e:
            raise CompatError(e.message) from None
        except UtterTTSError as e:  # the engine's queue is full
            raise CompatError(str(e), status=503) from None

    def wav(self, audio: np.ndarray) -> bytes:
        return encode(audio, self.sample_rate, "wav")

    def clone_wav(
        self,
        caller: str,
        args: CloneArgs,
        audio: bytes,
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
    ) -> bytes:
        voice = self.voice_for(caller, audio, args.ref_text)
        out = self.synthesize(
            "clone",
            args.text,
            args.language,
            voice=voice,
            max_new_tokens=args.max_new_tokens,
            progress=progress,
            cancelled=cancelled,
        )
        return self.wav(out)
