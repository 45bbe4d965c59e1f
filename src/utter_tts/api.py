"""The Python API: load a checkpoint, make voices, synthesize speech (clone, design, preset speakers)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from utter_tts.engine.host import to_host
from utter_tts.engine.streaming import audio_chunks, check_chunk_sizes
from utter_tts.engine.text import frame_cap
from utter_tts.errors import InvalidInput, UnsupportedForModel
from utter_tts.model.checkpoint import (
    load_strict,
    load_talker,
    open_checkpoint,
    parse_dtype,
    read_safetensors,
)
from utter_tts.model.codec import SpeechTokenizer
from utter_tts.model.config import SamplingConfig
from utter_tts.model.generate import RowParams, Trace, generate_codes, iter_frames
from utter_tts.model.prompt import Prompt, VoiceSpec, build_prompt
from utter_tts.model.speaker_encoder import SpeakerEncoder, speaker_embedding
from utter_tts.request import MAX_TEXT_CHARS, Request, validate
from utter_tts.textcheck import check_text
from utter_tts.voices.prompt import Voice

log = logging.getLogger(__name__)

# Reference clips: long enough to carry a voice, short enough to keep the ICL prompt small.
REF_MIN_SECONDS = 1.0
REF_MAX_SECONDS = 30.0

AudioInput = Any  # path | bytes | (np.ndarray, sample_rate)


class TTS:
    """A loaded Qwen3-TTS checkpoint.

    >>> tts = TTS.from_pretrained("Qwen/Qwen3-TTS-12Hz-1.7B-Base")
    >>> voice = tts.create_voice("me.wav", ref_text="What I say in me.wav.")
    >>> audio, sr = tts.clone("Hello!", voice, language="english")

    Every call builds its own KV caches, so one TTS serves many threads at once (the server relies
    on it); for throughput under concurrency use `utter_tts.engine.Engine`, which batches them.
    """

    stream_thread_safe = True

    def __init__(
        self, ckpt, talker, codec: SpeechTokenizer, speaker_encoder: SpeakerEncoder | None, device, dtype
    ):
        self.ckpt = ckpt
        self.config = ckpt.config
        self.tokenizer = ckpt.tokenizer
        self.sampling = ckpt.sampling
        self.talker = talker
        self.codec = codec
        self.speaker_encoder = speaker_encoder
        self.device = device
        self.dtype = dtype
        # set to an utter_tts.engine.Engine to serve synthesize/stream (and clone/design/speak) through
        # continuous batching: concurrent callers then share GPU frames instead of taking turns
        self.engine = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
    ) -> TTS:
        """Load a local folder or a hub id (e.g. Qwen/Qwen3-TTS-12Hz-1.7B-Base). Defaults: CUDA in bf16
        when available, else CPU in fp32. The codec and speaker encoder run in fp32 (as the official)."""
        try:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError):
            raise InvalidInput(
                f"unknown device {device!r}; use cpu, cuda or cuda:N", param="device"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInput(
                f"device {str(device)!r}: CUDA is not available (no GPU, or a CPU-only torch)", param="device"
            )
        dtype = parse_dtype(dtype, device)
        ckpt = open_checkpoint(path_or_id, revision)
        talker = load_talker(ckpt, device, dtype)
        codec = SpeechTokenizer.from_dir(ckpt.folder / "speech_tokenizer", device=device, dtype=torch.float32)
        spk = None
        if ckpt.config.tts_model_type == "base":
            spk = SpeakerEncoder(ckpt.config.speaker_encoder)
            load_strict(spk, read_safetensors(ckpt.folder, "speaker_encoder."), "speaker_encoder")
            spk = spk.to(device=device, dtype=dtype).eval()
        log.info(
            "loaded %s (%s, %s) on %s in %s",
            ckpt.folder,
            ckpt.config.tts_model_type,
            ckpt.config.tts_model_size,
            device,
            dtype,
        )
        return cls(ckpt, talker, codec, spk, device, dtype)

    # ---- facts -------------------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.config.tts_model_type

    @property
    def languages(self) -> list[str]:
        return self.config.languages

    @property
    def speakers(self) -> list[str]:
        return self.config.speakers

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    # ---- voices ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def create_voice(self, ref_audio: AudioInput, ref_text: str | None = None) -> Voice:
        """A reusable clone prompt from reference audio (path, bytes of any common format, or
        (array, sample_rate)). With `ref_text` (the words spoken in the clip) the voice uses the
        in-context mode, which clones better; without it, only the speaker embedding is used."""
        from utter_tts.audio.io import load_audio

        if self.model_type != "base":
            raise UnsupportedForModel(
                f"voices are made with a Base checkpoint; this one is {self.model_type}", param="ref_audio"
            )
        if ref_text is not None:
            ref_text = check_text(ref_text, "ref_text", MAX_TEXT_CHARS, allow_empty=True)
            ref_text = ref_text if ref_text.strip() else None
        wav = load_audio(
            ref_audio,
            self.codec.sample_rate,
            min_seconds=REF_MIN_SECONDS,
            max_seconds=REF_MAX_SECONDS,
            param="ref_audio",
        )
        wav_t = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        emb = speaker_embedding(self.speaker_encoder, wav_t).float().cpu()
        codes = self.codec.encode(wav_t).cpu() if ref_text else None
        meta = {
            "model_size": self.config.tts_model_size,
            "ref_seconds": round(len(wav) / self.sample_rate, 3),
        }
        return Voice(speaker_embedding=emb, ref_codes=codes, ref_text=ref_text, meta=meta)

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

    # ---- the batch core ----------------------------------------------------------------------------
    def prepare(self, requests: Sequence[Request]) -> tuple[list[Prompt], RowParams]:
        """Validate requests and build their prompts and batched sampling parameters."""
        prompts, settings, seeds = [], [], []
        for req, prompt, sampling in self.prepare_each(requests):
            prompts.append(prompt)
            settings.append(sampling)
            seeds.append(req.seed)
        return prompts, RowParams.stack(settings, seeds, self.device)

    def prepare_each(self, requests: Sequence[Request]) -> list[tuple[Request, Prompt, SamplingConfig]]:
        """Validated requests (seed drawn when unset), their prompts and sampling settings. Each
        generation is capped by its text length (`frame_cap`) so a missing end token cannot run away."""
        out = []
        for req in requests:
            req, sampling = validate(req, self.config, self.sampling)
            prompt = self.build_prompt(req)
            n_tokens = len(self.tokenizer.encode_plain(req.text))
            cap = max(sampling.min_new_tokens, frame_cap(n_tokens) + 1)
            if sampling.max_new_tokens > cap:
                sampling = sampling.replace(max_new_tokens=cap)
            out.append((req, prompt, sampling))
        return out

    def build_prompt(self, req: Request) -> Prompt:
        tok = self.tokenizer
        spec = VoiceSpec()
        if req.mode == "clone":
            v = req.voice
            spec.speaker_embedding = v.speaker_embedding.to(self.device, self.dtype)
            if v.mode == "icl":
                spec.ref_codes = v.ref_codes
                spec.ref_text_ids = tok.ref_text(v.ref_text)[3:-2]
        elif req.mode == "design":
            spec.instruct_ids = tok.instruct_text(req.instruct)
        else:
            spec.speaker = req.speaker
            if req.instruct:
                spec.instruct_ids = tok.instruct_text(req.instruct)
        # the official defaults: text fed frame by frame when cloning, all in the prompt otherwise
        nsm = req.non_streaming_mode if req.non_streaming_mode is not None else req.mode != "clone"
        return build_prompt(self.talker, self.config, tok.assistant_text(req.text), req.language, spec, nsm)

    def generate_codes(
        self, requests: Sequence[Request], trace: Trace | None = None, on_frame: Callable | None = None
    ) -> list[torch.Tensor]:
        """Codes [F, 16] per request (the talker and code predictor only, no audio)."""
        prompts, params = self.prepare(requests)
        return generate_codes(
            self.talker, prompts, params, self.config.talker.codec_eos_token_id, trace, on_frame
        )

    def decode(self, codes: torch.Tensor, ref_codes: torch.Tensor | None = None) -> np.ndarray:
        """Codes [F, 16] -> float32 audio. ICL voices decode with their reference codes as left context,
        whose share of the audio is then cut (the official rule)."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if ref_codes is None:
            return to_host(self.codec.decode(codes)).numpy()
        full = torch.cat([ref_codes.to(codes.device), codes])
        wav = to_host(self.codec.decode(full)).numpy()
        cut = int(ref_codes.shape[0] / max(full.shape[0], 1) * wav.shape[0])
        return wav[cut:]

    def synthesize(self, requests: Sequence[Request]) -> list[np.ndarray]:
        if self.engine is not None:
            return self.engine.generate(requests)
        prompts, params = self.prepare(requests)
        codes = generate_codes(self.talker, prompts, params, self.config.talker.codec_eos_token_id)
        return [self.decode(c, p.ref_codes) for c, p in zip(codes, prompts)]

    def stream(
        self, request: Request, chunk_frames: int = 4, first_chunk_frames: int = 1
    ) -> Iterator[np.ndarray]:
        """Yield float32 audio chunks as frames are generated: the first after `first_chunk_frames`
        frames, then every `chunk_frames`. The chunks concatenate to the one-shot audio."""
        check_chunk_sizes(chunk_frames, first_chunk_frames)
        if self.engine is not None:
            return self.engine.stream(request, chunk_frames, first_chunk_frames)
        prompts, params = self.prepare([request])
        eos = self.config.talker.codec_eos_token_id
        frames = (
            codes[0] for codes, alive in iter_frames(self.talker, prompts, params, eos) if bool(alive[0])
        )
        return audio_chunks(
            frames, self.codec.stream_decoder(), prompts[0].ref_codes, chunk_frames, first_chunk_frames
        )


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
