"""Turn a request's fields into a plan: the checked text, and who speaks it (model, mode, voice)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from utter_tts.errors import AudioError, InvalidInput
from utter_tts.model.text_feed import TextFeed
from utter_tts.request import Request
from utter_tts.server.registry import LoadedModel, ModelRegistry, is_generic_model
from utter_tts.service.inline_voices import InlineVoices
from utter_tts.service.reference import decode_base64, probe_duration
from utter_tts.textcheck import check_text
from utter_tts.voices.library import VoiceLibrary, VoiceNotFound
from utter_tts.voices.voice import Voice

FRAME_RATE_HZ = 12.5
MAX_VOICE_CHARS = 200  # a voice id, a saved voice's name (64) or a preset speaker
FRAMES_PER_CHAR = 0.8  # ~15 characters of English per second of speech; only used for progress

# OpenAI's voice names, so the stock SDK examples (`voice="alloy"`) work: each maps to a preset speaker
# of the CustomVoice model by character (Ryan and Aiden are its English speakers; the female voices go
# to Vivian and Serena). `--openai-voice NAME=VOICE` maps one to a saved voice (or another speaker)
# instead; a saved voice the caller named "alloy" wins over both.
OPENAI_VOICES = {
    "alloy": "vivian",
    "ash": "aiden",
    "ballad": "ryan",
    "cedar": "aiden",
    "coral": "serena",
    "echo": "ryan",
    "fable": "ryan",
    "marin": "serena",
    "nova": "vivian",
    "onyx": "uncle_fu",
    "sage": "serena",
    "shimmer": "vivian",
    "verse": "aiden",
}

# Why a request's instructions were dropped, by the type of the model whose voice cannot take them.
INSTRUCTIONS_IGNORED = {
    "base": "cloned voice: the Base model takes no instructions",
    "custom_voice": "preset speaker of a 0.6B CustomVoice model, which takes no instructions",
}


def usable_instructions(model: LoadedModel, instructions: str | None) -> tuple[str | None, str | None]:
    """The instructions the model's voices can take, and why they were dropped when they cannot.
    Dropped, not refused: LiveKit's and Pipecat's OpenAI plugins send their configured instructions
    with every request, whatever the voice. (`voice="design"` still needs them: they are the voice.)"""
    if not instructions or model.takes_instructions:
        return instructions, None
    return None, INSTRUCTIONS_IGNORED.get(model.model_type, "this voice takes no instructions")


@dataclass
class Casting:
    """Who speaks, resolved once: the model, the mode and its voice, preset speaker or description. A
    WebSocket session or a long job speaks all its texts with one casting."""

    model: LoadedModel
    mode: str  # "clone" | "design" | "speak"
    language: str = "auto"
    voice: Voice | None = None  # clone
    speaker: str | None = None  # speak
    instruct: str | None = None  # design / speak
    pending_ref: tuple[bytes, str | None] | None = None  # inline reference still to be turned into a voice
    instructions_ignored: str | None = None  # why the request's instructions were dropped


@dataclass
class Plan:
    """One generation: who speaks, the checked text, the seed and the sampling settings."""

    casting: Casting
    text: str
    seed: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    feed: TextFeed | None = None  # the text still arriving through it (`text` is then '')

    @property
    def model(self) -> LoadedModel:
        return self.casting.model

    @property
    def mode(self) -> str:
        return self.casting.mode

    @property
    def language(self) -> str:
        return self.casting.language

    @property
    def estimated_frames(self) -> int:
        cap = self.sampling.get("max_new_tokens")
        est = max(1, int(len(self.text) * FRAMES_PER_CHAR))
        return min(est, cap) if cap else est

    def chunks(self, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        """Audio as the model makes it (the model's frame stream, through its engine when it has one)."""
        c = self.casting
        request = Request(
            "" if self.feed is not None else self.text,
            mode=c.mode,
            language=c.language,
            voice=c.voice,
            speaker=c.speaker,
            instruct=c.instruct,
            seed=self.seed,
            sampling=dict(self.sampling),
        )
        for chunk in c.model.tts.stream(request, feed=self.feed):
            yield np.asarray(chunk, dtype=np.float32).reshape(-1)


class Planner:
    """Resolves `voice` / `model` / `instructions` / inline reference into a Casting and checks the text
    into a Plan, or raises InvalidInput naming the field."""

    def __init__(
        self,
        registry: ModelRegistry,
        library: VoiceLibrary,
        inline_voices: InlineVoices,
        max_input_chars: int,
        max_ref_seconds: float,
        max_new_tokens: int | None,
        openai_voices: dict[str, str] | None = None,
    ):
        self.registry = registry
        self.library = library
        self.inline_voices = inline_voices
        self.max_input_chars = max_input_chars
        self.max_ref_seconds = max_ref_seconds
        self.max_new_tokens = max_new_tokens
        self.openai_voices = {**OPENAI_VOICES, **{k.lower(): v for k, v in (openai_voices or {}).items()}}

    # ---- plans ---------------------------------------------------------------------------------------
    def plan(
        self,
        owner: str,
        *,
        text: str,
        seed: int | None,
        sampling: dict[str, Any],
        text_param: str = "input",
        max_chars: int | None = None,
        **voice: Any,
    ) -> Plan:
        """The plan of one request; `voice` holds `cast`'s arguments. The text is checked first."""
        text = self.check_input(text, text_param, max_chars)
        return Plan(self.cast(owner, **voice), text, seed, self.sampling(sampling))

    def plan_live(self, casting: Casting, seed: int, sampling: dict[str, Any]) -> Plan:
        """A generation whose text arrives while it is spoken (a WebSocket session's, dual-track): its
        feed takes the text, checked piece by piece, up to the input limit."""
        feed = casting.model.tts.text_feed(self.max_input_chars)
        return Plan(casting, "", seed, self.sampling(sampling), feed)

    def plan_sentence(self, casting: Casting, text: str, seed: int | None, sampling: dict[str, Any]) -> Plan:
        """The plan of one more text spoken by a casting made earlier (a WebSocket session's sentences)."""
        return Plan(casting, self.check_input(text, "text"), seed, self.sampling(sampling))

    def check_input(self, text: Any, param: str = "input", max_chars: int | None = None) -> str:
        return check_text(text, param, max_chars or self.max_input_chars, no_markup=True).strip()

    def optional_text(self, value: str, param: str) -> str | None:
        """An optional text field: checked like the input, blank meaning absent."""
        text = check_text(value, param, self.max_input_chars, allow_empty=True, no_markup=True)
        return text.strip() or None

    def sampling(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The request's settings with the server's frame cap applied (to the minimum as well)."""
        settings = dict(settings)
        cap = self.max_new_tokens
        if cap is not None:
            settings["max_new_tokens"] = min(settings.get("max_new_tokens") or cap, cap)
            if settings.get("min_new_tokens") is not None:
                settings["min_new_tokens"] = min(settings["min_new_tokens"], settings["max_new_tokens"])
        return settings

    # ---- who speaks ----------------------------------------------------------------------------------
    def cast(
        self,
        owner: str,
        *,
        model: str | None,
        voice: str,
        instructions: str | None,
        language: str,
        ref_audio: str | None = None,
        ref_text: str | None = None,
    ) -> Casting:
        """Who speaks: a clone of inline reference audio (voice "clone" or empty), a designed voice
        ("design", described by `instructions`), one of the caller's saved voices, a preset speaker, or
        one of OpenAI's voice names mapped to either."""
        if instructions is not None:
            instructions = self.optional_text(instructions, "instructions")
        if ref_text is not None:
            # A blank transcript means "none" (x-vector cloning), as it does in the upload form.
            ref_text = self.optional_text(ref_text, "ref_text")
        voice = check_text(voice, "voice", MAX_VOICE_CHARS, allow_empty=ref_audio is not None).strip()
        if model and not is_generic_model(model) and model.lower() not in self.registry.models:
            self.registry.pick(model, "base")  # raises model_not_found, naming the loaded models
        if ref_audio is not None:
            return self._inline_clone(owner, model, voice, instructions, language, ref_audio, ref_text)
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
            return self._design(model, instructions, language)
        return self._named(owner, voice, model, instructions, language)

    def _inline_clone(self, owner, model, voice, instructions, language, ref_audio, ref_text) -> Casting:
        if voice.lower() not in ("clone", ""):
            raise InvalidInput(
                "with ref_audio, set voice to 'clone'", param="voice", code="conflicting_voice"
            )
        m = self.registry.pick(model, "base")
        _, ignored = usable_instructions(m, instructions)
        raw = decode_base64(ref_audio)
        cached = self.inline_voices.find(owner, m.id, raw, ref_text)
        casting = Casting(
            model=m,
            mode="clone",
            language=self.check_language(m, language),
            voice=cached,
            instructions_ignored=ignored,
        )
        if cached is None:
            self.check_reference(raw, "ref_audio")
            casting.pending_ref = (raw, ref_text)
        return casting

    def _design(self, model, instructions, language) -> Casting:
        if not instructions:
            raise InvalidInput(
                "voice 'design' needs the voice description in instructions",
                param="instructions",
                code="missing_required_parameter",
            )
        m = self.registry.pick(model, "voice_design")
        return Casting(
            model=m, mode="design", language=self.check_language(m, language), instruct=instructions
        )

    def _named(self, owner, voice, model, instructions, language) -> Casting:
        """A saved voice or preset speaker by that name, else the one an OpenAI voice name maps to."""
        found = self._saved_or_preset(owner, voice, model, instructions, language)
        if found is not None:
            return found
        alias = self.openai_voices.get(voice.lower())
        if alias is None:
            raise VoiceNotFound(
                f"unknown voice {voice[:80]!r}: not one of your saved voices, a preset speaker, 'design' "
                "or 'clone'",
                param="voice",
            )
        found = self._saved_or_preset(owner, alias, model, instructions, language)
        if found is None:
            raise VoiceNotFound(
                f"voice {voice!r} (one of OpenAI's) maps to {alias!r}, which is neither one of your saved "
                "voices nor a preset speaker of a loaded CustomVoice model; map it to a voice you have "
                f"(utter-tts serve --openai-voice {voice.lower()}=<voice>)",
                param="voice",
            )
        return found

    def _saved_or_preset(self, owner, name, model, instructions, language) -> Casting | None:
        """The caller's saved voice (id or name) or a preset speaker; None when it is neither."""
        record = self.library.find(owner, name, param="voice")
        if record is not None:
            made_with = self.registry.models.get(str(record.meta.get("model", "")))
            generic = not model or is_generic_model(model)
            if generic and made_with and made_with.model_type == "base":
                m = made_with  # the checkpoint the voice was built with, when several are loaded
            else:
                m = self.registry.pick(model, "base")
            _, ignored = usable_instructions(m, instructions)
            stored = self.library.load_record(owner, record, param="voice")
            return Casting(
                model=m,
                mode="clone",
                language=self.check_language(m, language),
                voice=stored,
                instructions_ignored=ignored,
            )
        preset = self.registry.preset_speaker(name)
        if preset is None:
            return None
        m, speaker = preset
        if model and model.lower() != m.id and model.lower() in self.registry.models:
            m = self.registry.pick(model, "custom_voice")
        instructions, ignored = usable_instructions(m, instructions)
        return Casting(
            model=m,
            mode="speak",
            language=self.check_language(m, language),
            speaker=speaker,
            instruct=instructions,
            instructions_ignored=ignored,
        )

    # ---- checks --------------------------------------------------------------------------------------
    def check_language(self, model: LoadedModel, language: str) -> str:
        lang = language.strip().lower()
        if lang not in [x.lower() for x in model.languages]:
            raise InvalidInput(
                f"unsupported language {language!r}; supported: {', '.join(model.languages)}",
                param="language",
                code="unsupported_language",
            )
        return lang

    def check_reference(self, raw: bytes, param: str) -> float:
        seconds = probe_duration(raw, param)
        if seconds > self.max_ref_seconds:
            raise AudioError(
                f"reference audio is {seconds:.1f} s; the limit is {self.max_ref_seconds:g} s",
                param=param,
                code="audio_too_long",
            )
        return seconds

    def build_pending(self, owner: str, casting: Casting) -> None:
        """Turn an inline reference into a voice (blocking: run it in the pool), cached for next time."""
        if casting.pending_ref is None:
            return
        raw, ref_text = casting.pending_ref
        casting.voice = self.inline_voices.make(owner, casting.model.id, casting.model.tts, raw, ref_text)
        casting.pending_ref = None
