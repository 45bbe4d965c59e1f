"""Turn a validated request into a generation plan: which model, which mode, voice and settings."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utter_tts.errors import AudioError, InvalidInput, UnsupportedForModel
from utter_tts.request import Request
from utter_tts.server.registry import GENERIC_MODEL_NAMES, LoadedModel, ModelRegistry
from utter_tts.textcheck import check_text
from utter_tts.voices.library import VoiceLibrary, VoiceNotFound
from utter_tts.voices.voice import Voice

_SENTENCE_END_RE = re.compile(r"(?<=[.!?;。！？；…])[\"'”’)\]]*\s+|(?<=[。！？；])|\n+")

FRAME_RATE_HZ = 12.5
MAX_VOICE_CHARS = 200  # a voice id, a saved voice's name (64) or a preset speaker

# OpenAI's voice names, so the stock SDK examples (`voice="alloy"`) work: each maps to a preset speaker
# of the CustomVoice model by character (Ryan and Aiden are its English speakers; the female voices go
# to Vivian and Serena). `--openai-voice NAME=VOICE` maps one to a saved voice (or another speaker)
# instead; a saved voice the caller named "alloy" wins over both.
OPENAI_VOICES = {
    "alloy": "vivian",
    "ash": "aiden",
    "ballad": "ryan",
    "coral": "serena",
    "echo": "ryan",
    "fable": "ryan",
    "nova": "vivian",
    "onyx": "uncle_fu",
    "sage": "serena",
    "shimmer": "vivian",
    "verse": "aiden",
}
FRAMES_PER_CHAR = 0.8  # ~15 characters of English per second of speech; only used for progress


def split_sentences(text: str) -> list[str]:
    """Sentences (or lines) of `text`, punctuation kept, blanks dropped."""
    return [s.strip() for s in _SENTENCE_END_RE.split(text) if s and s.strip()]


class SentenceBuffer:
    """Collects text as it arrives (e.g. from an LLM) and hands out sentences once they are complete."""

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, text: str) -> list[str]:
        self.pending += text
        ends = list(_SENTENCE_END_RE.finditer(self.pending))
        last = ends[-1] if ends else None
        # A final "." with nothing after it may still be "3.5" or "e.g." growing: wait for the space.
        if last is None or last.end() == 0:
            return []
        done, self.pending = self.pending[: last.end()], self.pending[last.end() :]
        return split_sentences(done)

    def flush(self) -> list[str]:
        rest, self.pending = self.pending.strip(), ""
        return [rest] if rest else []


def decode_base64_audio(data: str, param: str = "ref_audio") -> bytes:
    """Bytes of a base64 string or a `data:audio/...;base64,` URL."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise AudioError("ref_audio is not valid base64", param=param, code="invalid_base64") from e
    if not raw:
        raise AudioError("ref_audio is empty", param=param, code="empty_file")
    return raw


def probe_duration(data: bytes, param: str) -> float:
    """Seconds of audio in an encoded clip, decoded with PyAV; AudioError when it is not audio."""
    import io

    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise AudioError("upload contains no audio stream", param=param)
            stream = container.streams.audio[0]
            samples, rate = 0, stream.rate or 0
            for frame in container.decode(stream):
                samples += frame.samples
                rate = frame.sample_rate or rate
    except AudioError:
        raise
    except Exception as e:  # ffmpeg's many error types all mean "not usable audio"
        raise AudioError("could not decode the audio (unsupported or corrupt file)", param=param) from e
    if samples == 0 or not rate:
        raise AudioError("the audio contains no samples", param=param)
    return samples / rate


class VoiceCache:
    """Clone prompts built from inline reference audio, keyed by (owner, content hash), LRU-bounded."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[str, str], Voice] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(owner: str, model_id: str, audio: bytes, ref_text: str | None) -> tuple[str, str]:
        h = hashlib.sha256(audio)
        h.update(b"\0" + model_id.encode() + b"\0" + (ref_text or "").encode())
        return owner, h.hexdigest()

    def get(self, key) -> Voice | None:
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key, voice: Voice) -> None:
        with self._lock:
            self._items[key] = voice
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass
class Plan:
    """One generation: everything needed to call the model, resolved and validated up front."""

    model: LoadedModel
    mode: str  # "clone" | "design" | "speak"
    text: str
    language: str = "auto"
    seed: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    voice: Voice | None = None  # clone
    speaker: str | None = None  # speak
    instruct: str | None = None  # design / speak
    pending_ref: tuple[bytes, str | None] | None = None  # inline reference still to be turned into a voice

    @property
    def estimated_frames(self) -> int:
        cap = self.sampling.get("max_new_tokens")
        est = max(1, int(len(self.text) * FRAMES_PER_CHAR))
        return min(est, cap) if cap else est

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(language=self.language, seed=self.seed, **self.sampling)
        if self.mode == "clone":
            kw["voice"] = self.voice
        elif self.mode == "design":
            kw["instruct"] = self.instruct
        else:
            kw["speaker"] = self.speaker
            kw["instruct"] = self.instruct
        return kw

    def generate(self, text: str | None = None) -> np.ndarray:
        """The whole clip for `text` (default: the plan's text), float32 at the model's rate."""
        tts = self.model.tts
        kw = self._kwargs()
        text = self.text if text is None else text
        if self.mode == "clone":
            audio, _ = tts.clone(text, kw.pop("voice"), **kw)
        elif self.mode == "design":
            audio, _ = tts.design(text, kw.pop("instruct"), **kw)
        else:
            audio, _ = tts.speak(text, kw.pop("speaker"), **kw)
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def chunks(self, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        """Audio as the model makes it (the model's frame stream, through its engine when it has one)."""
        request = Request(
            self.text,
            mode=self.mode,
            language=self.language,
            voice=self.voice,
            speaker=self.speaker,
            instruct=self.instruct,
            seed=self.seed,
            sampling=dict(self.sampling),
        )
        for chunk in self.model.tts.stream(request):
            yield np.asarray(chunk, dtype=np.float32).reshape(-1)


class Planner:
    """Resolves `voice` / `model` / `instructions` / inline reference into a Plan, or raises InvalidInput."""

    def __init__(
        self,
        registry: ModelRegistry,
        library: VoiceLibrary,
        cache: VoiceCache,
        max_input_chars: int,
        max_ref_seconds: float,
        max_new_tokens: int | None,
        openai_voices: dict[str, str] | None = None,
    ):
        self.registry = registry
        self.library = library
        self.cache = cache
        self.max_input_chars = max_input_chars
        self.max_ref_seconds = max_ref_seconds
        self.max_new_tokens = max_new_tokens
        self.openai_voices = {**OPENAI_VOICES, **{k.lower(): v for k, v in (openai_voices or {}).items()}}

    def check_language(self, model: LoadedModel, language: str) -> str:
        lang = language.strip().lower()
        if lang not in [x.lower() for x in model.languages]:
            raise InvalidInput(
                f"unsupported language {language!r}; supported: {', '.join(model.languages)}",
                param="language",
                code="unsupported_language",
            )
        return lang

    def sampling(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The request's settings with the server's frame cap applied (to the minimum as well)."""
        settings = dict(settings)
        cap = self.max_new_tokens
        if cap is not None:
            settings["max_new_tokens"] = min(settings.get("max_new_tokens") or cap, cap)
            if settings.get("min_new_tokens") is not None:
                settings["min_new_tokens"] = min(settings["min_new_tokens"], settings["max_new_tokens"])
        return settings

    def plan(
        self,
        owner: str,
        *,
        model: str | None,
        text: str,
        voice: str,
        instructions: str | None,
        language: str,
        seed: int | None,
        sampling: dict[str, Any],
        ref_audio: str | None = None,
        ref_text: str | None = None,
        text_param: str = "input",
        max_chars: int | None = None,
    ) -> Plan:
        text = check_text(text, text_param, max_chars or self.max_input_chars, no_markup=True).strip()
        if instructions is not None:
            instructions = self.optional_text(instructions, "instructions")
        if ref_text is not None:
            # A blank transcript means "none" (x-vector cloning), as it does in the upload form.
            ref_text = self.optional_text(ref_text, "ref_text")
        voice = check_text(voice, "voice", MAX_VOICE_CHARS, allow_empty=ref_audio is not None).strip()
        if model and model.lower() not in GENERIC_MODEL_NAMES and model.lower() not in self.registry.models:
            self.registry.pick(model, "base")  # raises model_not_found, naming the loaded models
        common = dict(text=text, seed=seed, sampling=self.sampling(sampling))

        if ref_audio is not None:
            if voice.lower() not in ("clone", ""):
                raise InvalidInput(
                    "with ref_audio, set voice to 'clone'", param="voice", code="conflicting_voice"
                )
            m = self.registry.pick(model, "base")
            self._no_instructions(instructions)
            raw = decode_base64_audio(ref_audio)
            cached = self.cache.get(self.cache.key(owner, m.id, raw, ref_text))
            plan = Plan(
                model=m, mode="clone", language=self.check_language(m, language), voice=cached, **common
            )
            if cached is None:
                self.check_reference(raw, "ref_audio")
                plan.pending_ref = (raw, ref_text)
            return plan
        if voice.lower() == "clone":
            raise InvalidInput(
                "voice 'clone' needs the reference clip: send it base64-encoded in ref_audio",
                param="ref_audio",
                code="missing_required_parameter",
            )
        if ref_text is not None:
            raise InvalidInput(
                "ref_text is the transcript of ref_audio and goes only with voice 'clone'; "
                f"voice {voice[:80]!r} takes none (a saved voice keeps the transcript it was made with)",
                param="ref_text",
                code="conflicting_parameter",
            )

        if voice.lower() == "design":
            if not instructions:
                raise InvalidInput(
                    "voice 'design' needs the voice description in instructions",
                    param="instructions",
                    code="missing_required_parameter",
                )
            m = self.registry.pick(model, "voice_design")
            return Plan(
                model=m,
                mode="design",
                language=self.check_language(m, language),
                instruct=instructions,
                **common,
            )

        found = self._named_voice(owner, voice, model, instructions, language, common)
        if found is not None:
            return found
        alias = self.openai_voices.get(voice.lower())
        if alias is not None:
            found = self._named_voice(owner, alias, model, instructions, language, common)
            if found is not None:
                return found
            raise VoiceNotFound(
                f"voice {voice!r} (one of OpenAI's) maps to {alias!r}, which is neither one of your saved "
                "voices nor a preset speaker of a loaded CustomVoice model; map it to a voice you have "
                f"(utter-tts serve --openai-voice {voice.lower()}=<voice>)",
                param="voice",
            )
        raise VoiceNotFound(
            f"unknown voice {voice[:80]!r}: not one of your saved voices, a preset speaker, 'design' "
            "or 'clone'",
            param="voice",
        )

    def optional_text(self, value: str, param: str) -> str | None:
        """An optional text field: checked like the input, blank meaning absent."""
        text = check_text(value, param, self.max_input_chars, allow_empty=True, no_markup=True)
        return text.strip() or None

    def _named_voice(self, owner, name, model, instructions, language, common) -> Plan | None:
        """A plan for the caller's saved voice (id or name) or a preset speaker; None when it is neither."""
        record = self.library.find(owner, name, param="voice")
        if record is not None:
            made_with = self.registry.models.get(str(record.meta.get("model", "")))
            if (
                (not model or model.lower() in GENERIC_MODEL_NAMES)
                and made_with
                and made_with.model_type == "base"
            ):
                m = made_with  # the checkpoint the voice was built with, when several are loaded
            else:
                m = self.registry.pick(model, "base")
            self._no_instructions(instructions)
            stored = self.library.load_record(owner, record, param="voice")
            return Plan(
                model=m, mode="clone", language=self.check_language(m, language), voice=stored, **common
            )
        preset = self.registry.preset_speaker(name)
        if preset is not None:
            m, speaker = preset
            if model and model.lower() != m.id and model.lower() in self.registry.models:
                m = self.registry.pick(model, "custom_voice")
            return Plan(
                model=m,
                mode="speak",
                language=self.check_language(m, language),
                speaker=speaker,
                instruct=instructions,
                **common,
            )
        return None

    def _no_instructions(self, instructions: str | None) -> None:
        if instructions:
            raise UnsupportedForModel(
                "cloned voices cannot take instructions (the Base model has no instruction input)",
                param="instructions",
            )

    def check_reference(self, raw: bytes, param: str) -> float:
        seconds = probe_duration(raw, param)
        if seconds > self.max_ref_seconds:
            raise AudioError(
                f"reference audio is {seconds:.1f} s; the limit is {self.max_ref_seconds:g} s",
                param=param,
                code="audio_too_long",
            )
        return seconds

    def build_pending(self, owner: str, plan: Plan) -> None:
        """Turn an inline reference into a voice (blocking: run it in the pool) and cache it."""
        if plan.pending_ref is None:
            return
        raw, ref_text = plan.pending_ref
        plan.voice = plan.model.tts.create_voice(raw, ref_text=ref_text)
        self.cache.put(self.cache.key(owner, plan.model.id, raw, ref_text), plan.voice)
        plan.pending_ref = None
