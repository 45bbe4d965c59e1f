"""utter's backend contract as plain methods on top of utter_tts: validation with utter's exact messages,
language names, reference audio (base64 / URL / bytes) with a prompt cache, sentence chunking and WAV."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import secrets
import wave
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from utter_tts.audio.join import join_clips
from utter_tts.compat.cache import PromptCache, prompt_key
from utter_tts.compat.fetch import FetchError, FetchPolicy, fetch_url
from utter_tts.compat.languages import (
    LANGUAGES,
    METHOD_DEFAULT_LANGUAGE,
    normalize_language,
    unsupported_message,
)
from utter_tts.engine.runner import attention_backend
from utter_tts.errors import InvalidInput, UtterTTSError
from utter_tts.request import Request
from utter_tts.text import split_sentences
from utter_tts.textcheck import InvalidText, check_text

log = logging.getLogger("utter_tts.compat")

DEFAULT_MAX_NEW_TOKENS = 2048


class CompatError(ValueError):
    """A request utter's contract rejects; `message` is the exact `detail` string, `status` the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class JobCancelled(Exception):
    """Raised inside a synthesis when its job was cancelled (checked between sentence batches)."""


@dataclass(frozen=True)
class CloneArgs:
    """A clone request after its checks: NFC text, the model's language id, transcript, frame cap."""

    text: str
    language: str
    ref_text: str | None
    max_new_tokens: int


@dataclass(frozen=True)
class Limits:
    """Request limits. Design limits (500/500) are utter's; the clone limits are ours: synchronous calls
    must finish inside Modal's 150 s web window, longer text goes through the job routes."""

    max_design_text_chars: int = 500
    max_instruct_chars: int = 500
    max_clone_text_chars: int = 5_000
    max_job_text_chars: int = 50_000
    max_ref_text_chars: int = 2_000
    max_batch_texts: int = 32
    max_new_tokens: int = 8192  # upper bound of the per-chunk max_new_tokens a caller may ask for
    design_max_new_tokens: int = 2048  # utter's design calls carry no max_new_tokens: the per-chunk cap
    chunk_chars: int = 300  # long text is split at sentences into pieces of at most this many characters
    batch_pieces: int = 16  # pieces generated together (engine slots); progress/cancel between batches
    max_ref_bytes: int = 10 * 1024 * 1024
    frame_cap: int | None = None  # deployment cap on frames per chunk; larger max_new_tokens are clamped


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit PCM WAV with exact header sizes."""
    pcm = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1)), -1.0, 1.0)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes((pcm * 32767.0).round().astype("<i2").tobytes())
    return buf.getvalue()


# ---- validation ----------------------------------------------------------------------------------------
# Each route first runs the original app's own checks, in its order and with its messages (utter's
# modal_app/qwen3_tts/app.py and app_voice_design.py at f4a1c6a; tests/modal_app/test_utter_replay.py
# quotes them), so a request the original refused gets the same 400. Our checks come after, for what the
# original let through to the model (and answered with a 500): the one text check of utter_tts.textcheck,
# limits, types and the reference audio.
def present(body: dict[str, Any], name: str, default: Any = "") -> Any:
    """`body.get(name, default)`, refused when falsy, as the original's `if not value:`."""
    value = body.get(name, default)
    if not value:
        raise CompatError(f"'{name}' is required")
    return value


def size(value: Any) -> int | None:
    """`len(value)` where the original took it; None where Python has none (the original then 500ed)."""
    try:
        return len(value)
    except TypeError:
        return None


def supported(language: Any, listed: bool = True) -> str:
    """The model's language id for one of utter's names, else utter's message (/clone-batch's lists none)."""
    lang = normalize_language(language)
    if lang is None:
        raise CompatError(unsupported_message(language, listed))
    return lang


def valid_text(value: Any, name: str, limit: int, missing: str | None = None) -> str:
    """A text field through the one text check (utter_tts.textcheck: NFC, no lone surrogates or control
    characters), with utter's messages for a missing or overlong one."""
    if not value:
        raise CompatError(missing or f"'{name}' is required")
    if not isinstance(value, str):
        raise CompatError(f"'{name}' must be a string")
    try:
        text = check_text(value, name, allow_empty=True)
    except InvalidText as e:
        raise CompatError(f"'{name}' {e.why}") from None
    if not text.strip():
        raise CompatError(missing or f"'{name}' is required")
    if len(text) > limit:
        raise CompatError(f"'{name}' exceeds maximum length of {limit} characters")
    return text


def check_max_new_tokens(value: Any, limit: int) -> int:
    if value is None:
        return DEFAULT_MAX_NEW_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise CompatError(f"'max_new_tokens' must be an integer between 1 and {limit}")
    return max(2, value)  # the model needs room for at least one frame and its end token


def decode_base64(data: Any) -> bytes:
    if not isinstance(data, str):
        raise CompatError("'ref_audio_base64' must be a base64 string")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CompatError("'ref_audio_base64' is not valid base64") from None
    if not raw:
        raise CompatError("'ref_audio_base64' is empty")
    return raw


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(("http://", "https://"))


@dataclass
class ModelNames:
    base: str = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"
    design: str = "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"


@dataclass
class CompatService:
    """One deployment: a Base model (cloning) and a VoiceDesign model (design), each optionally behind an
    Engine (continuous batching). Both are thread-safe (one TTS serves many threads; the Engine batches)."""

    base: Any = None  # utter_tts.api.TTS (base)
    design_model: Any = None  # utter_tts.api.TTS (voice_design)
    base_engine: Any = None
    design_engine: Any = None
    names: ModelNames = field(default_factory=ModelNames)
    limits: Limits = field(default_factory=Limits)
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    cache: PromptCache = field(default_factory=PromptCache)
    gpu: str | None = None
    fetcher: Callable[[str, FetchPolicy], bytes] = fetch_url

    # ---- facts ---------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        model = self.base or self.design_model
        return int(model.sample_rate) if model is not None else 24000

    def attention_implementation(self) -> str:
        model = self.base or self.design_model
        if model is None:
            return "unloaded"
        backend = attention_backend(model.device)
        try:
            import flash_attn  # noqa: F401

            return f"{backend}; flash-attn {flash_attn.__version__} installed"
        except Exception:  # not installed, or built for another torch: PyTorch's own SDPA serves
            return backend

    def get_model_info(self) -> dict[str, Any]:
        """The original's fields (model_id, model_name, attention_implementation, gpu, gpu_memory_gb,
        supported_languages), then ours."""
        gpu = self.gpu or _gpu_name()
        return {
            "model_id": self.names.base,
            "model_name": model_name(self.names.base),
            "attention_implementation": self.attention_implementation(),
            "gpu": gpu or "none",
            "gpu_memory_gb": _gpu_memory_gb() if gpu else 0,
            "supported_languages": list(LANGUAGES),
            "model": self.names.base,
            "models": {"clone": self.names.base, "design": self.names.design},
            "loaded": {"clone": self.base is not None, "design": self.design_model is not None},
            "languages": list(LANGUAGES),
            "default_language": "Auto",
            "sample_rate": self.sample_rate,
            "limits": asdict(self.limits),
            "prompt_cache": {
                "size": self.cache.size,
                "entries": len(self.cache),
                "hits": self.cache.hits,
                "misses": self.cache.misses,
            },
        }

    # ---- reference audio -----------------------------------------------------------------------------
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
            raw = decode_base64(ref_audio_base64)
            if len(raw) > self.limits.max_ref_bytes:
                raise CompatError(f"reference audio is larger than {self.limits.max_ref_bytes} bytes")
            return raw
        raise CompatError("Either 'ref_audio_url' or 'ref_audio_base64' is required")

    def voice_for(self, caller: str, audio: bytes, ref_text: str | None):
        """The clone prompt for this reference, from the LRU when the same caller sent it before."""
        if self.base is None:
            raise CompatError("voice cloning is not available: no Base model is loaded", status=503)
        key = prompt_key(caller, audio, ref_text)
        voice = self.cache.get(key)
        if voice is None:
            try:
                voice = self.base.create_voice(audio, ref_text=ref_text)
            except InvalidInput as e:
                raise CompatError(e.message) from None
            self.cache.put(key, voice)
        return voice

    # ---- synthesis core ------------------------------------------------------------------------------
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
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
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

    # ---- utter's contract ------------------------------------------------------------------------------
    def tokens(self, value: Any) -> int:
        """A request's max_new_tokens (per sentence chunk), under the deployment's frame cap."""
        n = check_max_new_tokens(value, self.limits.max_new_tokens)
        return min(n, max(2, self.limits.frame_cap)) if self.limits.frame_cap else n

    def parse_clone(self, body: dict[str, Any], max_chars: int | None = None) -> CloneArgs:
        """POST /clone's checks, before any audio is fetched or decoded. The original (app.py `clone`):
        text, ref_text, language, then a reference of either kind."""
        text = present(body, "text")
        ref_text = present(body, "ref_text")
        language = supported(body.get("language", "Auto"))
        if not body.get("ref_audio_url") and not body.get("ref_audio_base64"):
            raise CompatError("Either 'ref_audio_url' or 'ref_audio_base64' is required")
        return self._clone_args(text, language, ref_text, body, max_chars or self.limits.max_clone_text_chars)

    def parse_job(self, body: dict[str, Any]) -> CloneArgs:
        """POST /submit-job's checks. The original (app.py `submit_job`): text, ref_audio_base64, ref_text;
        it left the language to the job (which then failed), we refuse a bad one at submission, as we do
        bad base64."""
        text = present(body, "text")
        ref_audio = present(body, "ref_audio_base64")
        ref_text = present(body, "ref_text")
        language = supported(body.get("language", "Auto"))
        args = self._clone_args(text, language, ref_text, body, self.limits.max_job_text_chars)
        self.reference_bytes(ref_audio)
        return args

    def _clone_args(self, text, language: str, ref_text, body, max_chars: int) -> CloneArgs:
        return CloneArgs(
            valid_text(text, "text", max_chars),
            language,
            valid_text(ref_text, "ref_text", self.limits.max_ref_text_chars),
            self.tokens(body.get("max_new_tokens")),
        )

    def clone_request(self, caller: str, body: dict[str, Any]) -> bytes:
        """POST /clone: {text, language, ref_audio_url | ref_audio_base64, ref_text, max_new_tokens}."""
        args = self.parse_clone(body)
        audio = self.reference_bytes(body.get("ref_audio_base64"), body.get("ref_audio_url"))
        return self.clone_wav(caller, args, audio)

    def job_request(
        self,
        caller: str,
        body: dict[str, Any],
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> bytes:
        """A /submit-job body, run: {text, language, ref_audio_base64, ref_text, max_new_tokens}."""
        args = self.parse_job(body)
        audio = self.reference_bytes(body["ref_audio_base64"])
        return self.clone_wav(caller, args, audio, progress, cancelled)

    def clone_wav(
        self,
        caller: str,
        args: CloneArgs,
        audio: bytes,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
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
        return wav_bytes(out, self.sample_rate)

    def clone_batch_request(self, caller: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST /clone-batch: {texts, languages, ref_audio_*, ref_text} -> {status, count, audio_files}.
        The original (app.py `clone_batch`): texts, ref_text, equal lengths, each language (its message
        lists no names), then a reference."""
        texts = present(body, "texts", [])
        ref_text = present(body, "ref_text")
        languages = body.get("languages", [])
        counts = size(texts), size(languages)
        if None in counts:
            raise CompatError("'texts' and 'languages' must be lists")
        if counts[0] != counts[1]:
            raise CompatError("Length of 'texts' must match 'languages'")
        langs = [supported(x, listed=False) for x in languages]
        if not body.get("ref_audio_url") and not body.get("ref_audio_base64"):
            raise CompatError("Either 'ref_audio_url' or 'ref_audio_base64' is required")
        if not isinstance(texts, list) or not isinstance(languages, list):
            raise CompatError("'texts' and 'languages' must be lists")
        if len(texts) > self.limits.max_batch_texts:
            raise CompatError(f"'texts' may hold at most {self.limits.max_batch_texts} items")
        clean = [valid_text(t, f"texts[{i}]", self.limits.max_clone_text_chars) for i, t in enumerate(texts)]
        ref_text = valid_text(ref_text, "ref_text", self.limits.max_ref_text_chars)
        tokens = self.tokens(body.get("max_new_tokens"))
        audio = self.reference_bytes(body.get("ref_audio_base64"), body.get("ref_audio_url"))
        wavs = self.clone_many(caller, clean, langs, audio, ref_text, tokens)
        return {
            "status": "success",
            "count": len(wavs),
            "audio_files": [
                {
                    "index": i,
                    "text": t[:50] + "..." if len(t) > 50 else t,  # the original's preview of the text
                    "audio_base64": base64.b64encode(w).decode("ascii"),
                    "size_bytes": len(w),
                }
                for i, (t, w) in enumerate(zip(texts, wavs))
            ],
        }

    def clone_many(self, caller, texts, langs, audio, ref_text, tokens) -> list[bytes]:
        voice = self.voice_for(caller, audio, ref_text)
        return [
            wav_bytes(self.synthesize("clone", t, lang, voice=voice, max_new_tokens=tokens), self.sample_rate)
            for t, lang in zip(texts, langs)
        ]

    def design_request(self, body: dict[str, Any]) -> bytes:
        """POST /design: {text, language, instruct}; the original's language defaults to English."""
        return self.design_wav(
            body.get("text", ""), body.get("language", "English"), body.get("instruct", "")
        )

    def design_wav(self, text: Any, language: Any, instruct: Any) -> bytes:
        """The original (app_voice_design.py `design`): text, its length, instruct, its length, language."""
        limits = self.limits
        missing = "'instruct' is required (voice description)"
        if not text:
            raise CompatError("'text' is required")
        if (size(text) or 0) > limits.max_design_text_chars:
            raise CompatError(f"'text' exceeds maximum length of {limits.max_design_text_chars} characters")
        if not instruct:
            raise CompatError(missing)
        if (size(instruct) or 0) > limits.max_instruct_chars:
            raise CompatError(f"'instruct' exceeds maximum length of {limits.max_instruct_chars} characters")
        lang = supported(language)
        text = valid_text(text, "text", limits.max_design_text_chars)
        instruct = valid_text(instruct, "instruct", limits.max_instruct_chars, missing)
        audio = self.synthesize(
            "design", text, lang, instruct=instruct, max_new_tokens=self.tokens(limits.design_max_new_tokens)
        )
        return wav_bytes(audio, self.sample_rate)

    # ---- the Modal methods utter calls -------------------------------------------------------------------
    def generate_voice_clone(
        self,
        text: str,
        language: str,
        ref_audio: str,
        ref_text: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        caller: str = "modal",
    ) -> bytes:
        """`ref_audio` is base64 audio or an http(s) URL."""
        body = _ref_body(ref_audio)
        body.update(text=text, language=language, ref_text=ref_text, max_new_tokens=max_new_tokens)
        return self.clone_request(caller, body)

    def generate_voice_clone_batch(
        self,
        texts: list[str],
        languages: list[str],
        ref_audio: str,
        ref_text: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        caller: str = "modal",
    ) -> list[bytes]:
        body = _ref_body(ref_audio)
        body.update(texts=texts, languages=languages, ref_text=ref_text, max_new_tokens=max_new_tokens)
        out = self.clone_batch_request(caller, body)
        return [base64.b64decode(f["audio_base64"]) for f in out["audio_files"]]

    def generate_voice_design(self, text: str, language: str, instruct: str) -> bytes:
        return self.design_wav(text, language, instruct)

    def clone(
        self,
        text: str,
        ref_audio_bytes: bytes,
        language: str = METHOD_DEFAULT_LANGUAGE,
        ref_text: str | None = None,
        caller: str = "modal",
    ) -> bytes:
        """The plan's method: reference audio as raw bytes; `ref_text` optional (ICL mode when given)."""
        if not isinstance(ref_audio_bytes, (bytes, bytearray, memoryview)) or not len(ref_audio_bytes):
            raise CompatError("'ref_audio_bytes' is required")
        has_text = isinstance(ref_text, str) and bool(ref_text.strip())
        args = CloneArgs(
            valid_text(text, "text", self.limits.max_clone_text_chars),
            supported(language or METHOD_DEFAULT_LANGUAGE),
            valid_text(ref_text, "ref_text", self.limits.max_ref_text_chars) if has_text else None,
            self.tokens(None),
        )
        return self.clone_wav(caller, args, bytes(ref_audio_bytes))

    def design(self, text: str, voice_description: str, language: str = METHOD_DEFAULT_LANGUAGE) -> bytes:
        return self.design_wav(text, language, voice_description)


def _ref_body(ref_audio: Any) -> dict[str, Any]:
    if is_url(ref_audio):
        return {"ref_audio_url": ref_audio.strip()}
    return {"ref_audio_base64": ref_audio}


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def _gpu_memory_gb() -> float:
    try:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 1e9
    except Exception:
        return 0


def model_name(model_id: str) -> str:
    """The original's MODEL_NAME: the last part of a hub id ("Qwen3-TTS-12Hz-1.7B-Base") or of a folder."""
    return str(model_id).rstrip("/").rsplit("/", 1)[-1]
