"""`utter-tts wyoming` driven by the `wyoming` package's own client, as Home Assistant talks to it:
describe, a whole text, and a text streamed word by word (dual-track: audio before the text ends, the
same audio as the whole text in streaming-text mode)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("wyoming")

from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.tts import (  # noqa: E402
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from tests.model.test_parity import reference_clip  # noqa: E402
from utter_tts.api import TTS  # noqa: E402
from utter_tts.request import Request  # noqa: E402
from utter_tts.wyoming_server import serve, voices_of  # noqa: E402

FRAMES = 6
SENTENCE = "This is a short sentence that an agent might say."


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    """A Wyoming server in its own thread: the CustomVoice speakers and one saved (cloned) voice."""
    custom = TTS.from_pretrained(checkpoints("custom_voice"), device="cpu", dtype="float32")
    base = TTS.from_pretrained(checkpoints("base"), device="cpu", dtype="float32")
    for tts in (custom, base):
        tts.pipeline.defaults = tts.pipeline.defaults.replace(max_new_tokens=FRAMES + 1)
    path = tmp_path_factory.mktemp("voices") / "me.safetensors"
    base.create_voice((reference_clip(), 24000)).save(path)
    voices = voices_of([custom, base], {"me": path})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    ready = asyncio.Event()
    task = loop.create_task(serve(f"tcp://127.0.0.1:{port}", voices, seed=9, ready=ready))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not ready.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port, custom

    async def shutdown():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


async def _audio(client, streaming: bool = False, first: list | None = None) -> tuple[np.ndarray, list[str]]:
    """Events up to audio-stop (and synthesize-stopped when streaming): the audio and the event types;
    `first` gets the time of the first audio chunk."""
    kinds, pcm = [], b""
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout=60)
        kinds.append(event.type)
        if AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            assert (start.rate, start.width, start.channels) == (24000, 2, 1)
        elif AudioChunk.is_type(event.type):
            pcm += AudioChunk.from_event(event).audio
            if first is not None and not first:
                first.append(time.monotonic())
        elif Error.is_type(event.type):
            raise AssertionError(Error.from_event(event).text)
        elif AudioStop.is_type(event.type) and not streaming:
            break
        elif SynthesizeStopped.is_type(event.type):
            break
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32767.0, kinds


def test_describe_lists_the_speakers_saved_voices_and_languages(server):
    port, custom = server

    async def run():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await asyncio.wait_for(client.read_event(), timeout=30))

    info = asyncio.run(run())
    [program] = info.tts
    assert program.supports_synthesize_streaming
    assert {v.name for v in program.voices} == {*custom.speakers, "me"}
    assert all("english" in v.languages for v in program.voices)


def test_a_whole_text_and_a_streamed_one_speak(server):
    """synthesize: 24 kHz mono 16-bit, FRAMES frames; synthesize-start/chunks/stop: audio before the text
    ends, equal to the whole text's in streaming-text mode with the server's seed; the old-server
    synthesize a streaming client also sends is ignored."""
    port, custom = server
    words = SENTENCE.split(" ")

    async def run():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text=SENTENCE, voice=SynthesizeVoice(name="ryan")).event())
            whole, _ = await _audio(client)
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="ryan")).event())
            first_audio: list[float] = []
            reader = asyncio.create_task(_audio(client, streaming=True, first=first_audio))
            for i, word in enumerate(words):
                await client.write_event(SynthesizeChunk(text=word if i == 0 else " " + word).event())
                await asyncio.sleep(0.05)
            await client.write_event(Synthesize(text=SENTENCE, voice=SynthesizeVoice(name="ryan")).event())
            stop_at = time.monotonic()
            await client.write_event(SynthesizeStop().event())
            streamed, kinds = await reader
            return whole, streamed, kinds, first_audio[0] < stop_at

    whole, streamed, kinds, early = asyncio.run(run())
    assert early  # audio came back before the text was complete
    assert len(whole) == FRAMES * 1920
    assert kinds[0] == "audio-start" and kinds[-2:] == ["audio-stop", "synthesize-stopped"]
    assert kinds.count("audio-start") == 1  # the trailing plain synthesize was not spoken again
    want = custom.pipeline.synthesize(
        [
            custom.pipeline.prepare(
                Request(SENTENCE, "speak", speaker="ryan", seed=9, non_streaming_mode=False)
            )
        ]
    )[0]
    assert len(streamed) == len(want) and np.max(np.abs(streamed - want)) < 2e-4


def test_streamed_text_speaks_before_the_sentence_wise_baseline(server):
    """With a word every 50 ms (an LLM's pace), a streamed synthesis's first audio comes before the last
    word is sent; the sentence-wise baseline (Home Assistant without streaming: one synthesize once the
    text is complete) is timed the same way, from the first word. The figures go to the test's output
    and test-artifacts/first_audio_wyoming.json."""
    from tests.integrations.conftest import report, words

    port, _ = server

    async def streamed() -> tuple[float, float]:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="ryan")).event())
            first: list[float] = []
            reader = asyncio.create_task(_audio(client, streaming=True, first=first))
            t0 = time.monotonic()
            for word in words():
                await client.write_event(SynthesizeChunk(text=word).event())
                await asyncio.sleep(0.05)
            last = time.monotonic() - t0
            await client.write_event(SynthesizeStop().event())
            await reader
            return first[0] - t0, last

    async def sentence_wise() -> float:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            t0 = time.monotonic()
            await asyncio.sleep(0.05 * len(words()))  # the words arrive; nothing is sent until the last
            first: list[float] = []
            await client.write_event(Synthesize(text=SENTENCE, voice=SynthesizeVoice(name="ryan")).event())
            await _audio(client, first=first)
            return first[0] - t0

    asyncio.run(streamed())  # warm
    runs = [asyncio.run(streamed()) for _ in range(3)]
    baseline = [asyncio.run(sentence_wise()) for _ in range(3)]
    report("wyoming", [t for t, _ in runs], baseline, max(last for _, last in runs))
    assert all(t < last for t, last in runs), runs  # audio before the text was complete, every time


def test_an_unknown_voice_is_an_error_event_and_the_connection_goes_on(server):
    port, _ = server

    async def run():
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event())
            error = Error.from_event(await asyncio.wait_for(client.read_event(), timeout=30))
            await client.write_event(Describe().event())
            again = await asyncio.wait_for(client.read_event(), timeout=30)
            return error, again

    error, again = asyncio.run(run())
    assert "unknown voice 'nobody'" in error.text and Info.is_type(again.type)
