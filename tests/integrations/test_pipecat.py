"""The Pipecat service driven by pipecat-ai itself against a real server: an LLM turn streamed token by
token comes back as 24 kHz mono TTSAudioRawFrames, starting before the turn's text is complete."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import httpx
import pytest

pytest.importorskip("pipecat")

from loguru import logger  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.services.openai.tts import OpenAITTSService  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from tests.integrations.conftest import FRAME_SAMPLES, FRAMES, INTERVAL_S, KEY, ROUNDS, report, words  # noqa: E402
from utter_tts.integrations.pipecat import UtterTTSService  # noqa: E402

pytestmark = pytest.mark.pipecat
logger.remove()  # pipecat logs every frame at DEBUG on stderr
logger.add(sys.stderr, level="WARNING")


class Recorder(FrameProcessor):
    """Every frame that passes in `direction`, with the time it came (downstream at the pipeline's end,
    upstream, where errors go, at its start)."""

    def __init__(self, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        super().__init__(enable_direct_mode=True)
        self.direction = direction
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)


async def llm_turn(service) -> tuple[list[Frame], float | None, float, list[Frame]]:
    """One LLM turn, a word every INTERVAL_S, through the service: the frames that came down, the first
    audio and the last token (seconds after the first token), and the frames that went up."""
    recorder, head = Recorder(), Recorder(FrameDirection.UPSTREAM)
    worker = PipelineWorker(
        Pipeline([head, service, recorder]),
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
        params=PipelineParams(audio_out_sample_rate=24000),
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    marks: dict[str, float] = {}

    async def feed():
        await asyncio.wait_for(started.wait(), timeout=30)
        await worker.queue_frame(LLMFullResponseStartFrame())
        marks["t0"] = time.monotonic()
        for i, word in enumerate(words()):
            if i:
                await asyncio.sleep(INTERVAL_S)
            await worker.queue_frame(LLMTextFrame(word))
        marks["last"] = time.monotonic()
        await worker.queue_frame(LLMFullResponseEndFrame())
        await worker.queue_frame(EndFrame())

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await asyncio.wait_for(asyncio.gather(runner.run(), feed()), timeout=120)
    audio_at = [t for t, f in recorder.frames if isinstance(f, TTSAudioRawFrame)]
    first = audio_at[0] - marks["t0"] if audio_at else None
    up = [f for _, f in head.frames]
    return [f for _, f in recorder.frames], first, marks["last"] - marks["t0"], up


def active_generations(server) -> int:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return int(float(re.search(r"^utter_tts_active_generations (\S+)$", metrics, re.M).group(1)))


def ours(server, **kw) -> UtterTTSService:
    return UtterTTSService(
        base_url=server.url, api_key=KEY, seed=3, settings=UtterTTSService.Settings(voice="vivian"), **kw
    )


def test_an_llm_turn_speaks_before_its_text_ends(server):
    """TTSStarted, 24 kHz mono audio of the whole capped generation, TTSStopped; the first audio comes
    before the last token is pushed (a service that waited for the sentence would fail here)."""
    frames, first, last, up = asyncio.run(llm_turn(ours(server)))
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(24000, 1)}
    assert sum(len(f.audio) for f in audio) == FRAMES * FRAME_SAMPLES * 2  # 16-bit samples
    kinds = [type(f) for f in frames if isinstance(f, (TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame))]
    assert kinds[0] is TTSStartedFrame and kinds[-1] is TTSStoppedFrame and kinds.count(TTSStoppedFrame) == 1
    assert first is not None and first < last, f"first audio {first}, last token {last:.3f} s"


def test_first_audio_streaming_vs_sentence_wise(server):
    """Time to first audio after the first token: our service (tokens as they come) vs Pipecat's
    OpenAITTSService on /v1/audio/speech (its default: whole sentences), the same turn pushed the same way."""

    async def run():
        streaming, baseline, lasts = [], [], []
        for _ in range(ROUNDS):
            _, first, last, _ = await llm_turn(ours(server))
            assert first is not None and first < last
            streaming.append(first)
            lasts.append(last)
            whole = OpenAITTSService(
                base_url=f"{server.url}/v1",
                api_key=KEY,
                sample_rate=24000,
                settings=OpenAITTSService.Settings(voice="alloy", model="tts-1"),
            )
            frames, first, _, _ = await llm_turn(whole)
            assert first is not None
            said = sum(len(f.audio) for f in frames if isinstance(f, TTSAudioRawFrame))
            assert said == FRAMES * FRAME_SAMPLES * 2  # the same 24 frames, as 16-bit samples
            baseline.append(first)
        return streaming, baseline, max(lasts)

    streaming, baseline, last = asyncio.run(run())
    report("pipecat", streaming, baseline, last)


def test_a_refused_session_is_an_error_frame(server):
    bad = UtterTTSService(base_url=server.url, api_key=KEY, settings=UtterTTSService.Settings(voice="nobody"))
    _, first, _, up = asyncio.run(llm_turn(bad))
    errors = [f.error for f in up if isinstance(f, ErrorFrame) and "utter-tts" in f.error]
    assert first is None and len(errors) == 1 and "unknown voice 'nobody'" in errors[0]


def test_an_interruption_closes_the_turns_session(server):
    """The user speaks over the bot: the turn's session closes (the server cancels the generation that
    was waiting for more text), and no more of its audio comes."""
    service, recorder = ours(server), Recorder()
    worker = PipelineWorker(
        Pipeline([service, recorder]),
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
        params=PipelineParams(audio_out_sample_rate=24000),
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    seen: dict[str, int] = {}

    async def feed():
        await asyncio.wait_for(started.wait(), timeout=30)
        await worker.queue_frame(LLMFullResponseStartFrame())
        for word in words()[:3]:
            await worker.queue_frame(LLMTextFrame(word))
        while not any(isinstance(f, TTSAudioRawFrame) for _, f in recorder.frames):
            await asyncio.sleep(0.01)
        seen["running"] = active_generations(server)
        await worker.queue_frame(InterruptionFrame())
        deadline = time.monotonic() + 10
        while active_generations(server) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seen["after"] = active_generations(server)
        seen["audio"] = len([f for _, f in recorder.frames if isinstance(f, TTSAudioRawFrame)])
        await asyncio.sleep(0.3)
        seen["later"] = len([f for _, f in recorder.frames if isinstance(f, TTSAudioRawFrame)])
        await worker.queue_frame(EndFrame())

    async def run():
        runner = WorkerRunner()
        await runner.add_workers(worker)
        await asyncio.wait_for(asyncio.gather(runner.run(), feed()), timeout=60)

    asyncio.run(run())
    assert (seen["running"], seen["after"]) == (1, 0)
    assert seen["later"] == seen["audio"]
    assert not service._sessions
