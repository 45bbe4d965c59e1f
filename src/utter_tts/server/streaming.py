"""Start a generation, wait for its first chunk (so early errors get a real status), stream the rest."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import anyio
import numpy as np
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from utter_tts.errors import InvalidInput
from utter_tts.server.errors import APIError, from_invalid_input, internal_error
from utter_tts.server.synthesis import Plan

log = logging.getLogger("utter_tts.server")


class Generation:
    """A running generation seen from the event loop: the first chunk, then the rest as they come."""

    def __init__(self, state, plan: Plan, owner: str, started: float | None = None):
        self.state = state
        self.plan = plan
        self.owner = owner
        self.started = time.monotonic() if started is None else started
        self.first: np.ndarray | None = None
        self.samples = 0
        self._gen: AsyncIterator[np.ndarray] | None = None

    async def start(self) -> None:
        """Admit, build an inline voice if needed, and wait for the first audio; map failures to APIError."""
        state = self.state
        try:
            if self.plan.pending_ref is not None:
                await state.pool.run(lambda: state.planner.build_pending(self.owner, self.plan))
            self._gen = state.pool.stream(self.plan.chunks)
            try:
                self.first = await self._gen.__anext__()
            except StopAsyncIteration:
                self.first = np.zeros(0, np.float32)
                self._gen = None
        except InvalidInput as e:
            await self.aclose()
            raise from_invalid_input(e) from None
        except APIError:
            await self.aclose()
            raise
        except Exception:
            await self.aclose()
            log.exception("generation failed before the first audio")
            raise internal_error() from None
        state.metrics.ttfa.observe(time.monotonic() - self.started)
        self.samples += self.first.size

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        """The first chunk, then every later one; records real-time factor at the end."""
        yield self.first
        if self._gen is not None:
            async for chunk in self._gen:
                self.samples += chunk.size
                yield chunk
        rate = getattr(self.plan.model.tts, "sample_rate", 24000)
        seconds = self.samples / rate
        if seconds > 0:
            self.state.metrics.audio_seconds.inc(seconds)
            self.state.metrics.rtf.observe((time.monotonic() - self.started) / seconds)

    async def aclose(self) -> None:
        """Stop generating (frees the slot at the model's next chunk)."""
        if self._gen is not None:
            gen, self._gen = self._gen, None
            await gen.aclose()


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
