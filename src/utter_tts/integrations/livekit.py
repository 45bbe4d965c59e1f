"""LiveKit Agents TTS plugin: text streamed into one utter-tts live session per segment, audio as made."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, replace
from typing import Any

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    tts,
    utils,
)

from utter_tts.integrations.session import SAMPLE_RATE, SessionError, SpeechSession

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream"]


@dataclass
class _Options:
    base_url: str
    api_key: str | None
    voice: str
    model: str
    language: str
    instructions: str | None
    seed: int | None
    extra: dict[str, Any] = field(default_factory=dict)


class TTS(tts.TTS):
    """utter-tts over its WebSocket (`/v1/audio/speech/stream`, live text mode).

    `stream()` sends each LLM token as it comes (`input.append`), so speech starts from the first final
    words instead of the end of a sentence; `synthesize(text)` speaks a whole text the same way.
    `streaming=False` declares the plugin non-streaming (LiveKit then speaks sentence by sentence
    through its StreamAdapter). The key is `api_key` or `UTTER_TTS_API_KEY`.
    """

    def __init__(
        self,
        *,
        base_url: str = "http://localhost:8000",
        api_key: str | None = None,
        voice: str = "vivian",
        model: str = "auto",
        language: str = "auto",
        instructions: str | None = None,
        seed: int | None = None,
        streaming: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=streaming),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
        )
        self._opts = _Options(base_url, api_key, voice, model, language, instructions, seed, extra or {})

    @property
    def model(self) -> str:
        return self._opts.model

    @property
    def provider(self) -> str:
        return "utter-tts"

    def update_options(
        self,
        *,
        voice: str | None = None,
        model: str | None = None,
        language: str | None = None,
        instructions: str | None = None,
    ) -> None:
        """New settings for the next session (a session's voice is fixed when it starts)."""
        changes = {"voice": voice, "model": model, "language": language, "instructions": instructions}
        self._opts = replace(self._opts, **{k: v for k, v in changes.items() if v is not None})

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SynthesizeStream:
        return SynthesizeStream(tts=self, conn_options=conn_options)


async def _open(opts: _Options, conn_options: APIConnectOptions) -> SpeechSession:
    return await SpeechSession.open(
        opts.base_url,
        api_key=opts.api_key,
        voice=opts.voice,
        model=opts.model,
        language=opts.language,
        instructions=opts.instructions,
        seed=opts.seed,
        extra=opts.extra,
        open_timeout=conn_options.timeout,
    )


@contextlib.contextmanager
def _as_api_errors():
    """Our session's errors as LiveKit's, so its retry rules apply (a busy server is retried)."""
    try:
        yield
    except SessionError as e:
        raise APIStatusError(str(e), status_code=e.status, body=e.code, retryable=e.retryable) from None
    except TimeoutError:
        raise APITimeoutError() from None
    except (APIStatusError, APITimeoutError, APIConnectionError):
        raise
    except Exception as e:
        raise APIConnectionError() from e


class ChunkedStream(tts.ChunkedStream):
    """A whole text: one live session, the text appended at once, audio pushed as it arrives."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._opts = replace(tts._opts)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        with _as_api_errors():
            session = await _open(self._opts, self._conn_options)
            try:
                await session.append(self.input_text)
                await session.flush()
                async for pcm in session.audio():
                    output_emitter.push(pcm)
            finally:
                await session.aclose()
        # no flush here: the end of input marks the held-back last frame final (after a flush LiveKit
        # would add a 10 ms silent marker instead)


class SynthesizeStream(tts.SynthesizeStream):
    """Text pushed token by token: each segment (up to a flush) is one live session, opened by its first
    words and fed every later token at once; its audio is pushed frame by frame as it comes back."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._opts = replace(tts._opts)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        # Segments in order: the sender opens a segment's session and feeds it, the speaker plays the
        # sessions one after another (the next may start generating while the last one still plays).
        sessions: asyncio.Queue[SpeechSession | None] = asyncio.Queue()
        opened: list[SpeechSession] = []

        async def send() -> None:
            session: SpeechSession | None = None
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    if session is not None:
                        await session.flush()
                        session = None
                    continue
                if session is None:
                    if not item.strip():
                        continue  # a segment starts at its first word, not at the blank before it
                    session = await _open(self._opts, self._conn_options)
                    opened.append(session)
                    await sessions.put(session)
                    self._mark_started()
                await session.append(item)
            if session is not None:
                await session.flush()
            await sessions.put(None)

        async def speak() -> None:
            while (session := await sessions.get()) is not None:
                output_emitter.start_segment(segment_id=utils.shortuuid())
                async for pcm in session.audio():
                    output_emitter.push(pcm)
                output_emitter.end_segment()
                await session.aclose()

        with _as_api_errors():
            tasks = [asyncio.create_task(send()), asyncio.create_task(speak())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # a failure in either ends both
                await asyncio.gather(*tasks)
            finally:
                await utils.aio.cancel_and_wait(*tasks)
                for session in opened:
                    await session.aclose()
