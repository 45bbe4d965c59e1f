"""The Python API: `TTS`, a thin facade over a checkpoint's pipeline and, optionally, an engine."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from utter_tts.device import resolve_device
from utter_tts.engine.engine import Engine
from utter_tts.errors import InvalidInput
from utter_tts.model.checkpoint import open_checkpoint, parse_dtype
from utter_tts.model.frame import Trace
from utter_tts.model.text_feed import TextFeed
from utter_tts.pipeline import AudioInput, Pipeline, check_chunk_sizes
from utter_tts.request import Request
from utter_tts.voices.voice import Voice


class TTS:
    """A loaded Qwen3-TTS checkpoint.

    >>> tts = TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-1.7B-Base")
    >>> voice = tts.create_voice("me.wav", ref_text="What I say in me.wav.")
    >>> audio, sr = tts.clone("Hello!", voice, language="english")

    Without an engine every call runs its own batch (one TTS serves many threads at once); with one
    (`engine=` here or in `from_pretrained`) calls share frames through continuous batching.
    """

    def __init__(self, pipeline: Pipeline, engine: Engine | None = None):
        if engine is not None and engine.pipeline is not pipeline:
            raise ValueError("the engine must run this TTS's pipeline")
        self.pipeline = pipeline
        self.engine = engine

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        engine: bool | dict[str, Any] = False,
    ) -> TTS:
        """Load a local folder or a hub id (e.g. Qwen/Qwen3-TTS-12Hz-1.7B-Base). Defaults: CUDA in bf16
        when available, else CPU in fp32; the codec and speaker encoder run in fp32 (as the official).
        `engine=True` (or the Engine's settings as a dict, e.g. {"max_streams": 16, "weights": "int8"})
        serves every call through continuous batching."""
        device = resolve_device(device)
        dtype = parse_dtype(dtype, device)
        pipeline = Pipeline.load(open_checkpoint(path_or_id, revision), device, dtype)
        if not engine:
            return cls(pipeline)
        return cls(pipeline, Engine(pipeline, **(engine if isinstance(engine, dict) else {})))

    def close(self) -> None:
        """Stop the engine's threads (no-op without one)."""
        if self.engine is not None:
            self.engine.close()

    # ---- facts -------------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.pipeline.model_type

    @property
    def languages(self) -> list[str]:
        return self.pipeline.config.languages

    @property
    def speakers(self) -> list[str]:
        return self.pipeline.config.speakers

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.dtype

    # ---- voices ------------------------------------------------------------------------------------
    def create_voice(self, ref_audio: AudioInput, ref_text: str | None = None) -> Voice:
        """A reusable clone prompt from reference audio (path, bytes of any common format, or
        (array, sample_rate)). With `ref_text` (the words spoken in the clip) the voice uses the
        in-context mode, which clones better; without it, only the speaker embedding is used."""
        return self.pipeline.create_voice(ref_audio, ref_text)

    def _as_voice(self, voice_or_audio: Voice | AudioInput, ref_text: str | None) -> Voice:
        if isinstance(voice_or_audio, Voice):
            if ref_text is not None:
                raise InvalidInput(
                    "ref_text belongs to create_voice; this voice is already made", param="ref_text"
                )
            return voice_or_audio
        return self.create_voice(voice_or_audio, ref_text)

    # ---- synthesis ---------------------------------------------------------------------------------
    def clone(
        self, text, voice, language="auto", ref_text=None, seed=None, non_streaming_mode=None, **sampling
    ) -> tuple[np.ndarray | list[np.ndarray], int]:
        """Speak `text` (str or list of str) in a cloned voice: a Voice, or reference audio (with
        optional `ref_text`). Returns (float32 audio at 24 kHz, sample rate); lists in, list out."""
        texts, single = _listify(text)
        voices = [self._as_voice(v, ref_text) for v in _per_text(voice, texts, "voice")]
        langs = _per_text(language, texts, "language")
        reqs = [
            Request(
                t,
                "clone",
                lang,
                voice=v,
                seed=_seed(seed, i),
                sampling=sampling,
                non_streaming_mode=non_streaming_mode,
            )
            for i, (t, v, lang) in enumerate(zip(texts, voices, langs))
        ]
        return self._finish(self.synthesize(reqs), single)

    def design(
        self, text, instruct, language="auto", seed=None, non_streaming_mode=None, **sampling
    ) -> tuple[np.ndarray | list[np.ndarray], int]:
        """Speak `text` in a voice made from a description (`instruct`), with a VoiceDesign checkpoint."""
        texts, single = _listify(text)
        instructs = _per_text(instruct, texts, "instruct")
        langs = _per_text(language, texts, "language")
        reqs = [
            Request(
                t,
                "design",
                lang,
                instruct=d,
                seed=_seed(seed, i),
                sampling=sampling,
                non_streaming_mode=non_streaming_mode,
            )
            for i, (t, d, lang) in enumerate(zip(texts, instructs, langs))
        ]
        return self._finish(self.synthesize(reqs), single)

    def speak(
        self, text, speaker, instruct=None, language="auto", seed=None, non_streaming_mode=None, **sampling
    ) -> tuple[np.ndarray | list[np.ndarray], int]:
        """Speak `text` as a preset speaker of a CustomVoice checkpoint, optionally styled by `instruct`."""
        texts, single = _listify(text)
        speakers = _per_text(speaker, texts, "speaker")
        instructs = _per_text(instruct, texts, "instruct")
        langs = _per_text(language, texts, "language")
        reqs = [
            Request(
                t,
                "speak",
                lang,
                speaker=s,
                instruct=d,
                seed=_seed(seed, i),
                sampling=sampling,
                non_streaming_mode=non_streaming_mode,
            )
            for i, (t, s, d, lang) in enumerate(zip(texts, speakers, instructs, langs))
        ]
        return self._finish(self.synthesize(reqs), single)

    def _finish(self, wavs: list[np.ndarray], single: bool):
        return (wavs[0] if single else wavs), self.sample_rate

    # ---- requests ----------------------------------------------------------------------------------
    def synthesize(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Audio (float32, 24 kHz) for each request; all run together."""
        if self.engine is not None:
            return self.engine.generate(requests)
        return self.pipeline.synthesize([self.pipeline.prepare(r) for r in requests])

    def stream(
        self,
        request: Request,
        chunk_frames: int = 4,
        first_chunk_frames: int = 1,
        feed: TextFeed | None = None,
    ) -> Iterator[np.ndarray]:
        """float32 audio chunks as frames are generated: the first after `first_chunk_frames` frames,
        then every `chunk_frames`. The chunks concatenate to the one-shot audio; closing the iterator
        early stops the generation. With a `feed` (`request.text` ''), the text arrives through it while
        it is spoken (dual-track streaming: `TextFeed.append` pieces, then `close`)."""
        check_chunk_sizes(chunk_frames, first_chunk_frames)
        if self.engine is not None:
            return self.engine.stream(request, chunk_frames, first_chunk_frames, feed)
        job = self.pipeline.prepare(request, feed=feed)
        return self.pipeline.stream(job, chunk_frames, first_chunk_frames)

    def text_feed(self, max_chars: int | None = None) -> TextFeed:
        """A feed for a text still being written, tokenized as this model does (see `stream`)."""
        return TextFeed(self.pipeline.tokenizer, max_chars)

    def generate_codes(self, requests: Sequence[Request], trace: Trace | None = None) -> list[torch.Tensor]:
        """Codes [F, 16] per request (the talker and code predictor only, no audio); `trace` records the
        raw logits (parity tests)."""
        if self.engine is not None and trace is None:
            return self.engine.generate_codes(requests)
        return self.pipeline.generate_codes([self.pipeline.prepare(r) for r in requests], trace)

    def decode(self, codes: torch.Tensor, ref_codes: torch.Tensor | None = None) -> np.ndarray:
        """Codes [F, 16] -> float32 audio (ICL voices: with their reference codes as left context)."""
        return self.pipeline.decode(codes, ref_codes)


def _listify(text) -> tuple[list, bool]:
    if isinstance(text, list):
        if not text:
            raise InvalidInput("text list is empty", param="text", code="invalid_text")
        return text, False
    return [text], True


def _per_text(value, texts: list, name: str) -> list:
    """One value per text: a list as given (its length must match), anything else repeated."""
    values = value if isinstance(value, list) else [value] * len(texts)
    if len(values) != len(texts):
        raise InvalidInput(f"{len(values)} {name} values for {len(texts)} texts", param=name)
    return values


def _seed(seed, i: int):
    if isinstance(seed, list):
        return seed[i] if i < len(seed) else None
    return seed
