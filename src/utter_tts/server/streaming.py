"""Start a generation, wait for its first chunk (so early errors get a real status), stream the rest."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import numpy as np
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from utter_tts.audio.encode import AudioEncoder
from utter_tts.server.openai_errors import as_api_error, error_response
from utter_tts.server.planner import Plan


class SpeechStream:
    """One plan's audio seen from the event loop: started (the first chunk is in), then the rest as it
    comes. (The engine's own handle of a running request is utter_tts.engine.scheduler.Generation.)"""

    def __init__(self, state, plan: Plan, owner: str, started: float | None = None):
        self.state = state
        self.plan = plan
        self.owner = owner
        self.started = time.monotonic() if started is None else started
        self.first: np.ndarray | None = None
        self.samples = 0
        self._audio: AsyncIterator[np.ndarray] | None = None

    async def start(self) -> None:
        """Admit, build an inline voice if needed, and wait for the first audio; map failures to APIError."""
        state, casting = self.state, self.plan.casting
        try:
            if casting.pending_ref is not None:
                await state.pool.run(lambda: state.planner.build_pending(self.owner, casting))
            self._audio = state.pool.stream(self.plan.chunks)
            try:
                self.first = await self._audio.__anext__()
            except StopAsyncIteration:
                self.first = np.zeros(0, np.float32)
                self._audio = None
        except Exception as e:
            await self.aclose()
            raise as_api_error(e, "generation failed before the first audio") from None
        state.metrics.ttfa.observe(time.monotonic() - self.started)
        self.samples += self.first.size

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """The first chunk, then every later one; records real-time factor at the end."""
        yield self.first
        if self._audio is not None:
            async for chunk in self._audio:
                self.samples += chunk.size
                yield chunk
        rate = getattr(self.plan.model.tts, "sample_rate", 24000)
        seconds = self.samples / rate
        if seconds > 0:
            self.state.metrics.audio_seconds.inc(seconds)
            self.state.metrics.rtf.observe((time.monotonic() - self.started) / seconds)

    async def encoded(self, encoder: AudioEncoder) -> AsyncIterator[bytes]:
        """The audio through `encoder`: the bytes it has ready after each chunk (empty ones skipped; the
        caller finishes the encoder, which may carry on with the next text of a session or job)."""
        async for chunk in self.chunks():
            data = encoder.feed(chunk)
            if data:
                yield data

    async def aclose(self) -> None:
        """Stop generating (frees the slot at the model's next chunk)."""
        if self._audio is not None:
            audio, self._audio = self._audio, None
            await audio.aclose()


class CancellingStreamingResponse(StreamingResponse):
    """A StreamingResponse that notices a client disconnect even between chunks, and always closes its
    body iterator, so a vanished client stops the generation instead of leaving it running."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass  # client went away while we were sending
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


class WholeFileResponse(Response):
    """A file sent only once all of it exists, with its Content-Length, so its headers can hold exact
    sizes (WAV, FLAC). A failure before then still gets its real error status; a client that leaves
    while it is made cancels the work (its generation frees its slot)."""

    def __init__(self, make: Callable[[], Awaitable[bytes]], media_type: str, headers: dict[str, str]):
        super().__init__(media_type=media_type)
        self.make, self.file_headers = make, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome: list[Response] = []
        async with anyio.create_task_group() as tg:

            async def make() -> None:
                try:
                    data = await self.make()
                    outcome.append(Response(data, media_type=self.media_type, headers=self.file_headers))
                except Exception as e:
                    outcome.append(error_response(as_api_error(e, "generation failed")))
                tg.cancel_scope.cancel()

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(make)
            tg.start_soon(watch)
        if outcome:
            await outcome[0](scope, receive, send)
