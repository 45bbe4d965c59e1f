"""The LiveKit plugin driven by livekit-agents itself against a real server: whole texts and token streams
come back as 24 kHz mono frames, and streamed audio starts before the sentence's text is complete."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

pytest.importorskip("livekit.agents")

from livekit.agents import APIConnectOptions, APIStatusError, tts  # noqa: E402

from tests.integrations.conftest import (  # noqa: E402
    FRAME_SAMPLES,
    FRAMES,
    INTERVAL_S,
    KEY,
    ROUNDS,
    SENTENCE,
    report,
    words,
)
from utter_tts.integrations import livekit as utter  # noqa: E402

pytestmark = pytest.mark.livekit


def plugin(server, **kw) -> utter.TTS:
    return utter.TTS(base_url=server.url, api_key=KEY, voice="vivian", seed=3, **kw)


async def push_and_listen(stream: tts.SynthesizeStream) -> tuple[list, float, float, float]:
    """Push the sentence a word every INTERVAL_S while reading the audio: (events, first audio and last
    token, both in seconds after the first token, and the end of the audio)."""
    events, first = [], []
    t0 = time.monotonic()

    async def listen():
        async for ev in stream:
            if not first:
                first.append(time.monotonic() - t0)
            events.append(ev)

    reader = asyncio.create_task(listen())
    for i, word in enumerate(words()):
        if i:
            await asyncio.sleep(INTERVAL_S)
        stream.push_text(word)
    last = time.monotonic() - t0
    stream.end_input()
    await asyncio.wait_for(reader, timeout=120)
    return events, first[0], last, time.monotonic() - t0


def active_generations(server) -> int:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return int(float(re.search(r"^utter_tts_active_generations (\S+)$", metrics, re.M).group(1)))


def samples(events) -> int:
    return sum(ev.frame.samples_per_channel for ev in events)


def test_synthesize_a_whole_text(server):
    async def run():
        async with plugin(server) as engine:
            assert engine.capabilities.streaming and engine.sample_rate == 24000
            return [ev async for ev in engine.synthesize(SENTENCE)]

    events = asyncio.run(run())
    assert {(ev.frame.sample_rate, ev.frame.num_channels) for ev in events} == {(24000, 1)}
    assert samples(events) == FRAMES * FRAME_SAMPLES  # 24 frames of 80 ms
    assert events[-1].is_final


def test_a_token_stream_speaks_before_its_text_ends(server):
    """One segment: frames 24 kHz mono, the whole capped generation, one final frame; the first audio
    comes before the last word is pushed (a plugin that waited for the text would fail here)."""

    async def run():
        async with plugin(server) as engine:
            return await push_and_listen(engine.stream())

    events, first, last, _ = asyncio.run(run())
    assert {(ev.frame.sample_rate, ev.frame.num_channels) for ev in events} == {(24000, 1)}
    assert samples(events) == FRAMES * FRAME_SAMPLES
    assert [ev.is_final for ev in events].count(True) == 1 and events[-1].is_final
    assert len({ev.segment_id for ev in events}) == 1
    assert first < last, f"first audio {first * 1000:.0f} ms, last token {last * 1000:.0f} ms"


def test_first_audio_streaming_vs_sentence_wise(server):
    """Time to first audio after the first token: our streaming plugin vs LiveKit's StreamAdapter (its
    sentence tokenizer) around the non-streaming OpenAI plugin on /v1/audio/speech, pushed the same way."""
    openai = pytest.importorskip("livekit.plugins.openai")

    async def run():
        ours = plugin(server)
        whole = openai.TTS(
            base_url=f"{server.url}/v1", api_key=KEY, model="tts-1", voice="alloy", response_format="pcm"
        )
        adapter = tts.StreamAdapter(tts=whole)
        streaming, baseline, lasts = [], [], []
        try:
            for _ in range(ROUNDS):
                events, first, last, _ = await push_and_listen(ours.stream())
                streaming.append(first)
                lasts.append(last)
                assert first < last
                events, first, last, _ = await push_and_listen(adapter.stream())
                assert samples(events) >= FRAMES * FRAME_SAMPLES  # LiveKit may add a 10 ms end marker
                baseline.append(first)
        finally:
            await adapter.aclose()
            await whole.aclose()
            await ours.aclose()
        return streaming, baseline, max(lasts)

    streaming, baseline, last = asyncio.run(run())
    report("livekit", streaming, baseline, last)


def test_a_refused_session_is_an_api_error(server):
    async def run():
        async with utter.TTS(base_url=server.url, api_key=KEY, voice="nobody") as engine:
            no_retry = APIConnectOptions(max_retry=0)
            return [ev async for ev in engine.synthesize(SENTENCE, conn_options=no_retry)]

    with pytest.raises(APIStatusError) as info:
        asyncio.run(run())
    assert 400 <= info.value.status_code < 500 and "nobody" in str(info.value)


def test_closing_a_stream_mid_speech_ends_its_session(server):
    """An interrupted agent closes its stream: the session closes at once (the server cancels that
    generation and frees its slot), and the next utterance speaks in full."""

    async def run():
        async with plugin(server) as engine:
            stream = engine.stream()
            for word in words()[:3]:
                stream.push_text(word)
            first = await asyncio.wait_for(stream.__anext__(), timeout=60)
            running = active_generations(server)
            await asyncio.wait_for(stream.aclose(), timeout=10)
            deadline = time.monotonic() + 10
            while active_generations(server) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return (
                first,
                running,
                active_generations(server),
                [ev async for ev in engine.synthesize(SENTENCE)],
            )

    first, running, after, events = asyncio.run(run())
    assert first.frame.samples_per_channel > 0
    assert (running, after) == (1, 0)  # the generation waiting for more text was cancelled
    assert samples(events) == FRAMES * FRAME_SAMPLES
