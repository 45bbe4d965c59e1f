"""WS /v1/audio/speech/stream: text arrives piece by piece; audio streams back as it is spoken, from the
first words on (live: one dual-track generation) or sentence by sentence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from utter_tts.audio.encode import AudioEncoder
from utter_tts.errors import InvalidInput
from utter_tts.server.openai_errors import as_api_error, error_body, from_invalid_input, request_id
from utter_tts.server.planner import Casting
from utter_tts.server.routes_speech import casting_args, stream_encoder
from utter_tts.server.schemas import WsStart
from utter_tts.server.streaming import SpeechStream
from utter_tts.text import SentenceBuffer, live_cut
from utter_tts.textcheck import check_appended, check_text

router = APIRouter()

# Closing codes: 1000 done, 1008 policy (auth, bad input), 1011 internal error, 1013 try again later.
CLOSE_FOR_STATUS = {401: 1008, 429: 1013, 503: 1013, 500: 1011}


@router.websocket("/v1/audio/speech/stream")
async def speech_session(ws: WebSocket):
    # the handshake names its request, as every HTTP response does (x-request-id)
    await ws.accept(headers=[(b"x-request-id", request_id(ws.headers.get("x-request-id")).encode())])
    session = await Session.open(ws)
    if session is not None:
        await session.run()


class Session:
    """One WebSocket session: its voice and output settings fixed by the start message; a receiver
    turning appended text into sentences, a speaker streaming each sentence's audio back."""

    def __init__(self, ws: WebSocket, owner: str, start: WsStart, casting: Casting, encoder: AudioEncoder):
        self.ws = ws
        self.state = ws.app.state.server
        self.owner = owner
        self.casting = casting
        self.encoder = encoder
        # One seed for the whole session: with the voice fixed up front, every sentence sounds alike.
        self.seed = start.seed if start.seed is not None else secrets.randbits(62)
        self.sampling = start.settings()
        self.live = start.text_mode == "live"
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        # live mode: the generation taking text now, and those for the speaker in order (None: the end)
        self.plan = None
        self.generations: asyncio.Queue = asyncio.Queue()
        self.sending = asyncio.Lock()  # the receiver's error events and the speaker's audio share the socket

    @classmethod
    async def open(cls, ws: WebSocket) -> Session | None:
        """Check the caller and the start message, cast the voice, say session.started; None when the
        session ended there (the client left, or was told why it cannot start)."""
        state = ws.app.state.server
        encoder = None
        try:
            state.require_ready()
            owner = state.keys.owner(ws)
            start = WsStart.model_validate_json(await _receive_text(ws))
            encoder = stream_encoder(state, start)
            casting = await run_in_threadpool(state.planner.cast, owner, **casting_args(start))
            session = cls(ws, owner, start, casting, encoder)
            started = {
                "type": "session.started",
                "model": casting.model.id,
                "mode": casting.mode,
                "response_format": encoder.format.name,
                "sample_rate": encoder.sample_rate,
                "seed": session.seed,
                "text_mode": start.text_mode,
            }
            if casting.instructions_ignored is not None:  # what the HTTP routes say in a header
                started["instructions_ignored"] = casting.instructions_ignored
            await ws.send_json(started)
            return session
        except Exception as e:
            if encoder is not None:
                encoder.close()
            if not isinstance(e, WebSocketDisconnect):
                await _fail(ws, e)
            return None

    async def run(self) -> None:
        if self.live:
            self.plan = self.state.planner.plan_live(self.casting, self.seed, self.sampling)
            await self.generations.put(self.plan)
        receiver = asyncio.create_task(self.receive_live() if self.live else self.receive())
        speaker = asyncio.create_task(self.speak_live() if self.live else self.speak())
        try:
            done, _ = await asyncio.wait({receiver, speaker}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
            await speaker
        except WebSocketDisconnect:
            pass
        except Exception as e:
            await _fail(self.ws, e)
        finally:
            if self.plan is not None:
                self.plan.feed.close()  # a generation waiting for more text ends (the session has)
            for task in (receiver, speaker):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(receiver, speaker, return_exceptions=True)
            self.encoder.close()

    async def send(self, message: dict | bytes) -> None:
        async with self.sending:
            if isinstance(message, bytes):
                await self.ws.send_bytes(message)
            else:
                await self.ws.send_json(message)

    async def refuse(self, e: InvalidInput) -> None:
        """A bad message or sentence is the client's to fix: say so, and keep the session going."""
        await self.send({"type": "error", **error_body(from_invalid_input(e))})

    async def receive(self) -> None:
        """Appended text into sentences (cut to the input limit), queued for the speaker; None at flush."""
        buffer = SentenceBuffer(self.state.config.max_input_chars)
        while True:
            try:
                text = _appended_text(await _receive_text(self.ws))
            except InvalidInput as e:
                await self.refuse(e)
                continue
            done = buffer.flush() if text is None else buffer.feed(text)
            for sentence in done:
                await self.sentences.put(sentence)
            if text is None:
                await self.sentences.put(None)
                return

    async def receive_live(self) -> None:
        """Appended text into the live generation's feed; the flush closes it. A long session rolls over:
        at a sentence end once the generation holds `live_rollover_chars` (or, with none, at a space past
        twice that), its text closes and the rest goes to a new generation with the same voice and seed,
        so no generation runs out of frames or text rows mid-sentence."""
        soft = self.state.config.live_rollover_chars
        hard = min(2 * soft, self.state.config.max_input_chars)
        while True:
            try:
                text = _appended_text(await _receive_text(self.ws))
                if text is None:
                    self.plan.feed.close()
                    await self.generations.put(None)
                    return
                check_appended(self.plan.feed.text, text, "text")  # whole sentences: when planned
                while text:
                    feed = self.plan.feed
                    cut = live_cut(feed.text, text, soft, hard)
                    if cut is None:
                        feed.append(text)
                        break
                    if cut:
                        feed.append(text[:cut])
                    feed.close()
                    self.plan = self.state.planner.plan_live(self.casting, self.seed, self.sampling)
                    await self.generations.put(self.plan)
                    text = text[cut:]
            except InvalidInput as e:
                await self.refuse(e)

    async def speak_live(self) -> None:
        """The live generations' audio as it is made, one after the other, then the session's end."""
        seconds = 0.0
        while (plan := await self.generations.get()) is not None:
            seconds += await self.say(plan)
        await self.finish(audio_seconds=round(seconds, 3))

    async def say(self, plan) -> float:
        """One generation's audio through the session's encoder to the client; its length in seconds."""
        speech = SpeechStream(self.state, plan, self.owner)
        await speech.start()
        try:
            async for data in speech.encoded(self.encoder):
                await self.send(data)
        finally:
            await speech.aclose()
        return round(speech.samples / self.state.sample_rate, 3)

    async def speak(self) -> None:
        index = 0
        while (sentence := await self.sentences.get()) is not None:
            try:
                plan = self.state.planner.plan_sentence(self.casting, sentence, self.seed, self.sampling)
            except InvalidInput as e:  # e.g. a special-token string split across two appends
                await self.refuse(e)
                continue
            await self.send({"type": "sentence.start", "index": index, "text": sentence})
            seconds = await self.say(plan)
            await self.send({"type": "sentence.done", "index": index, "audio_seconds": seconds})
            index += 1
        await self.finish(sentences=index)

    async def finish(self, **done) -> None:
        """The encoder's last bytes, `session.done` with `done`'s fields, and the normal close."""
        tail = self.encoder.finish()
        if tail:
            await self.send(tail)
        await self.send({"type": "session.done", **done})
        await self.ws.close(1000)


async def _fail(ws: WebSocket, e: Exception) -> None:
    err = as_api_error(e, "websocket session failed")
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "error", **error_body(err)})
        await ws.close(CLOSE_FOR_STATUS.get(err.status, 1008 if err.status < 500 else 1011))


async def _receive_text(ws: WebSocket) -> str:
    """The next text message; a binary one is the client's mistake, not a server fault."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is None:
        raise InvalidInput("send JSON text messages, not binary ones", param="type", code="invalid_message")
    return message["text"]


def _appended_text(raw: str) -> str | None:
    """The text of an input.append message; None for input.flush; InvalidInput for anything else."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidInput("messages must be JSON objects", param="type", code="invalid_json") from None
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "input.flush":
        return None
    if kind != "input.append":
        raise InvalidInput(
            f"unknown message type {kind!r}; use input.append or input.flush",
            param="type",
            code="unknown_message",
        )
    # Pieces may be blank (" " between an LLM's tokens); whole sentences are checked when planned.
    return check_text(msg.get("text"), "text", allow_empty=True, no_markup=True)
