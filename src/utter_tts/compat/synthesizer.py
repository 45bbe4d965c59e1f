"""The models behind utter's contract: reference audio in (base64 or a URL), voices cached, text of any
length synthesized in sentence chunks (through the engines when there are), WAV out."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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
from utter_tts.compat.resume import JobCheckpoint
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
        base_seed = secrets.randbits(62) if seed is None else seed
        reqs = self.pieces(mode, text, language, voice, instruct, max_new_tokens, base_seed)
        wavs: list[np.ndarray] = []
        step = max(1, self.limits.batch_pieces)
        for start in range(0, len(reqs), step):
            if cancelled is not None and cancelled():
                raise JobCancelled()
            wavs.extend(self._generate(mode, reqs[start : start + step]))
            if progress is not None:
                progress(len(wavs), len(reqs))
        return join_clips(wavs, self.sample_rate)

    def pieces(
        self,
        mode: str,
        text: str,
        language: str,
        voice: Any,
        instruct: str | None,
        max_new_tokens: int,
        base_seed: int,
    ) -> list[Request]:
        """One request per sentence piece, each with its own seed drawn from `base_seed` by its index, so
        a piece's audio does not depend on which others it is generated with."""
        pieces = split_sentences(text, self.limits.chunk_chars) or [text.strip()]
        # Design keeps one seed for every piece so the described voice stays the same across sentences.
        return [
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

    def synthesize_job(
        self,
        mode: str,
        text: str,
        language: str,
        checkpoint: JobCheckpoint,
        settings: dict[str, Any],
        *,
        voice: Any = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        seed: int | None = None,
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
    ) -> np.ndarray:
        """`synthesize` for a long job whose finished sentences survive the process: each batch's codes go
        to `checkpoint` as it completes, and a job that starts again makes only the sentences it lacks.
        Every sentence is decoded from the codes as stored, so a resumed job's audio is the same as an
        uninterrupted one's (its seed is fixed and stored before the first sentence)."""
        total = len(split_sentences(text, self.limits.chunk_chars) or [text.strip()])
        codes = checkpoint.begin(seed, settings, total, lambda: secrets.randbits(62))
        reqs = self.pieces(mode, text, language, voice, None, max_new_tokens, checkpoint.seed)
        ref_codes = self._ref_codes(mode, reqs[0])
        wavs = [self._decode(mode, c, ref_codes) for c in codes]
        if progress is not None:
            progress(len(wavs), len(reqs))
        step = max(1, self.limits.batch_pieces)
        for start in range(len(codes), len(reqs), step):
            if cancelled is not None and cancelled():
                raise JobCancelled()
            batch = self._generate_codes(mode, reqs[start : start + step])
            checkpoint.save(start, batch)
            wavs.extend(self._decode(mode, c, ref_codes) for c in batch)
            if progress is not None:
                progress(len(wavs), len(reqs))
        return join_clips(wavs, self.sample_rate)

    def _model(self, mode: str) -> tuple[Any, Any]:
        engine = self.base_engine if mode == "clone" else self.design_engine
        model = self.base if mode == "clone" else self.design_model
        if model is None:
            what = "voice cloning" if mode == "clone" else "voice design"
            raise CompatError(f"{what} is not available: its model is not loaded", status=503)
        return model, engine

    def _generate(self, mode: str, reqs: Sequence[Request]) -> list[np.ndarray]:
        model, engine = self._model(mode)
        with _model_errors():
            if engine is not None:
                return engine.generate(list(reqs))
            return model.synthesize(list(reqs))

    def _generate_codes(self, mode: str, reqs: Sequence[Request]) -> list[np.ndarray]:
        """Codes [frames, 16] of each request, on the host (what a checkpoint stores)."""
        model, engine = self._model(mode)
        with _model_errors():
            out = (
                engine.generate_codes(list(reqs)) if engine is not None else model.generate_codes(list(reqs))
            )
        return [c.detach().cpu().numpy().astype(np.int64) for c in out]

    def _ref_codes(self, mode: str, req: Request) -> Any:
        """The left context the voice's audio is decoded with (an ICL voice's reference codes), as the
        engine and the plain pipeline take it: from the prepared request."""
        model, _ = self._model(mode)
        with _model_errors():
            return model.pipeline.prepare(req).ref_codes

    def _decode(self, mode: str, codes: np.ndarray, ref_codes: Any) -> np.ndarray:
        model, _ = self._model(mode)
        return model.decode(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)), ref_codes)

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

    def clone_job_wav(
        self,
        caller: str,
        args: CloneArgs,
        audio: bytes,
        checkpoint: JobCheckpoint,
        seed: int | None = None,
        progress: Progress | None = None,
        cancelled: Cancelled | None = None,
    ) -> bytes:
        """`clone_wav` for a long job: its finished sentences kept in `checkpoint` (see synthesize_job)."""
        voice = self.voice_for(caller, audio, args.ref_text)
        settings = {  # what decides the audio besides the seed: stored progress is used only if they match
            "mode": "clone",
            "text": args.text,
            "language": args.language,
            "ref_text": args.ref_text,
            "ref_audio": hashlib.sha256(audio).hexdigest(),
            "max_new_tokens": args.max_new_tokens,
            "model": self.names.base,
            "chunk_chars": self.limits.chunk_chars,
            "sample_rate": self.sample_rate,
        }
        out = self.synthesize_job(
            "clone",
            args.text,
            args.language,
            checkpoint,
            settings,
            voice=voice,
            max_new_tokens=args.max_new_tokens,
            seed=seed,
            progress=progress,
            cancelled=cancelled,
        )
        return self.wav(out)


@contextmanager
def _model_errors() -> Iterator[None]:
    """A model's refusals in utter's words: a bad input is the caller's 400, a full queue a 503."""
    try:
        yield
    except InvalidInput as e:
        raise CompatError(e.message) from None
    except UtterTTSError as e:  # the engine's queue is full
        raise CompatError(str(e), status=503) from None
