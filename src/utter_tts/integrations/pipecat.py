"""Pipecat TTS service: an LLM's tokens streamed into one utter-tts live session per turn, audio as made."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.types import NOT_GIVEN, NotGiven

from utter_tts.integrations.session import SAMPLE_RATE, SessionError, SpeechSession

__all__ = ["UtterTTSService", "UtterTTSSettings"]

# Pipecat's language codes (their base, "en" of "en-US") as the server names its languages.
LANGUAGES = {
    "en": "english",
    "zh": "chinese",
    "ja": "japanese",
    "ko": "korean",
    "de": "german",
    "fr": "french",
    "ru": "russian",
    "pt": "portuguese",
    "es": "spanish",
    "it": "italian",
}


@dataclass
class UtterTTSSettings(TTSSettings):
    """Settings for UtterTTSService: `instructions` style a preset speaker or describe a designed voice."""

    instructions: str | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


class UtterTTSService(TTSService):
    """utter-tts over its WebSocket (`/v1/audio/speech/stream`, live text mode).

    By default each LLM token goes to the server as it comes (TextAggregationMode.TOKEN): a turn is one
    live session (`session.start`, `input.append` per token, `input.flush` at the turn's end), and its
    audio comes back as TTSAudioRawFrames from the first final words on. The audio is 16-bit mono PCM at
    the service's sample rate (the server resamples from its 24 kHz). An interruption closes the session,
    which cancels its generation. The key is `api_key` or `UTTER_TTS_API_KEY`.
    """

    Settings = UtterTTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        base_url: str = "http://localhost:8000",
        api_key: str | None = None,
        settings: Settings | None = None,
        seed: int | None = None,
        sample_rate: int | None = None,
        text_aggregation_mode: TextAggregationMode | None = TextAggregationMode.TOKEN,
        extra: dict[str, Any] | None = None,
        **kwargs,
    ):
        defaults = self.Settings(model="auto", voice="vivian", language=None, instructions=None)
        if settings is not None:
            defaults.apply_update(settings)
        super().__init__(
            text_aggregation_mode=text_aggregation_mode,
            push_start_frame=True,
            sample_rate=sample_rate,
            settings=defaults,
            **kwargs,
        )
        self._base_url = base_url
        self._api_key = api_key
        self._seed = seed
        self._extra = dict(extra or {})
        self._sessions: dict[str, SpeechSession] = {}
        self._readers: dict[str, asyncio.Task] = {}
        # Turns whose session already ended (a capped generation ends before its text does): their
        # later tokens must not open a second session that would speak the rest of a sentence alone.
        self._ended: deque[str] = deque(maxlen=64)

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        return LANGUAGES.get(str(language.value if isinstance(language, Language) else language)[:2].lower())

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Append `text` to the turn's session, opening it on the turn's first text; the audio arrives
        on the session's reader task."""
        if context_id in self._ended:
            yield None
            return
        session = self._sessions.get(context_id)
        if session is None:
            try:
                session = await self._open()
            except SessionError as e:
                self._ended.append(context_id)  # one error for the turn, not one per token
                yield ErrorFrame(error=f"utter-tts: {e}")
                yield TTSStoppedFrame(context_id=context_id)
                return
            self._sessions[context_id] = session
            self._readers[context_id] = self.create_task(self._read(context_id, session), name="utter-tts")
        await session.append(text)
        yield None

    async def flush_audio(self, context_id: str | None = None):
        """The end of the turn's text: the session speaks the rest and ends."""
        session = self._sessions.get(context_id or self.get_active_audio_context_id() or "")
        if session is not None:
            await session.flush()

    async def on_audio_context_interrupted(self, context_id: str):
        await self._close(context_id)
        await super().on_audio_context_interrupted(context_id)

    async def stop(self, frame: EndFrame):
        await super().stop(frame)  # plays what is pending first
        await self._close_all()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close_all()

    async def cleanup(self):
        await super().cleanup()
        await self._close_all()

    async def _open(self) -> SpeechSession:
        language = self._settings.language
        return await SpeechSession.open(
            self._base_url,
            api_key=self._api_key,
            voice=str(self._settings.voice),
            model=str(self._settings.model or "auto"),
            language=language if isinstance(language, str) and language else "auto",
            instructions=self._settings.instructions or None,
            seed=self._seed,
            # the model's own rate is sent as it is; any other the server resamples to
            sample_rate=self.sample_rate if self.sample_rate != SAMPLE_RATE else None,
            extra=self._extra,
        )

    async def _read(self, context_id: str, session: SpeechSession) -> None:
        """The session's audio into the turn's audio context, then its end (an interruption cancels this
        task and closes the session itself)."""
        try:
            async for pcm in session.audio():
                await self.stop_ttfb_metrics()
                frame = TTSAudioRawFrame(pcm, session.sample_rate, 1, context_id=context_id)
                await self.append_to_audio_context(context_id, frame)
        except Exception as e:  # the turn must still end, or the pipeline would wait for it forever
            await self.push_error(error_msg=f"utter-tts: {e}", exception=e)
        self._ended.append(context_id)
        self._sessions.pop(context_id, None)
        self._readers.pop(context_id, None)
        await session.aclose()
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    async def _close(self, context_id: str) -> None:
        reader = self._readers.pop(context_id, None)
        session = self._sessions.pop(context_id, None)
        self._ended.append(context_id)
        if reader is not None:
            await self.cancel_task(reader)
        if session is not None:
            await session.aclose()

    async def _close_all(self) -> None:
        for context_id in list(self._sessions):
            await self._close(context_id)
