"""The fast engine's face: submit requests of a pipeline, get audio, stream audio, synthesize documents."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from utter_tts.audio.join import join_clips
from utter_tts.engine.decoding import DecodeBatcher
from utter_tts.engine.runner import Runner, attention_backend
from utter_tts.engine.scheduler import Generation, Scheduler
from utter_tts.errors import InvalidInput
from utter_tts.model.text_feed import TextFeed
from utter_tts.pipeline import Pipeline, check_chunk_sizes
from utter_tts.request import Request
from utter_tts.text import split_sentences

log = logging.getLogger(__name__)

# Python hands the GIL to a waiting thread only after the holder ran this long (default 5 ms): with 64
# streams' consumers and the decoder thread running Python, the scheduler's thread waited in steps of that
# between frames (its book-keeping p95 ~12 ms on an H200 while a frame is ~5 ms), leaving the GPU idle in
# the tail of a burst. The engine lowers the process's interval to this at start (never raises it). One
# paired run (64 streams at once, H200): 479 -> 488 audio-s/s untraced, 468 -> 474 traced; the book-keeping
# p95 stayed ~11 ms in the traced run, so most of that wait has another cause.
GIL_SWITCH_S = 0.0005
WARM_POLL_S = 0.02  # how often `wait_warm` looks at the graphs


class Engine:
    """Continuous batching over one pipeline (CUDA graphs on the GPU, eager elsewhere).

    >>> engine = Engine(Pipeline.load(...), max_streams=16)
    >>> audio = engine.generate([Request("Hello.", "clone", voice=voice)])[0]
    >>> for chunk in engine.stream(Request("Hello.", "clone", voice=voice)): ...

    weights: the fused frame's GEMM weights, "bf16" (as loaded; the default), "int8" (Ampere and newer,
    e.g. the A10G) or "fp8" (e4m3, compute capability 8.9+, e.g. Hopper): half the weight bytes a frame
    reads, scaled per output channel (engine/fused.py says which layers). Refused, naming `weights`,
    where it cannot run (`runner.check_weights`).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        max_streams: int = 16,
        max_frames: int = 2048,
        max_prompt: int = 1024,
        max_text_tokens: int = 1024,
        max_queue: int = 256,
        use_graphs: bool | None = None,
        kernels: bool | None = None,
        weights: str = "bf16",
    ):
        self.pipeline = pipeline
        if sys.getswitchinterval() > GIL_SWITCH_S:
            sys.setswitchinterval(GIL_SWITCH_S)
        self.runner = Runner(
            pipeline.talker,
            pipeline.eos_id,
            max_slots=max_streams,
            max_prompt=max_prompt,
            max_frames=max_frames,
            max_text=max_text_tokens,
            use_graphs=use_graphs,
            kernels=kernels,
            weights=weights,
        )
        self.decoding = DecodeBatcher(pipeline.codec, max_batch=max(1, max_streams))
        # after each frame the decoder takes the chunks it completed, all streams' in one pass
        self.scheduler = Scheduler(self.runner, max_queue=max_queue, on_step=self.decoding.frames_ready)
        self._frame_later: list[tuple[int, int]] = []  # graphs a background warm-up deferred
        self._codec_later: list[tuple[int, int]] = []
        log.info(
            "engine ready: %d streams x %d frames, graphs %s, frame step %s",
            max_streams,
            max_frames,
            self.runner.use_graphs,
            f"fused kernels, {weights} weights, prefill attention {self.runner.fused.prefill_attention}"
            if self.runner.fused
            else f"eager, attention {attention_backend(pipeline.device)}",
        )

    def warmup(self, spans: tuple[int, ...] = (256,), background: bool = False) -> int:
        """Capture the CUDA graphs of every batch size up front, the frame's and the audio decoder's (first
        requests then pay no capture), and move the process's objects out of the garbage collector's full
        passes (`gc.freeze`); returns how many graphs were captured. `background`: capture only the
        one-stream frame graph now and the other frame graphs while the engine is idle, serving requests
        meanwhile (their frames run eagerly until their batch size's graph exists): a cold start serves
        its first request after one capture instead of all of them."""
        with self.scheduler.lock:  # the scheduler thread is idle while we hold its lock and nothing waits
            if self.scheduler.live or self.scheduler.pending:
                raise RuntimeError("warm up before serving requests")
            n = self.runner.warmup(spans, now=1 if background else None)
            self._frame_later = list(self.runner.deferred)
            self.scheduler.lock.notify()  # a deferred warm-up goes on in the scheduler's thread
        with torch.cuda.stream(self.decoding.cuda_stream) if self.decoding.cuda else contextlib.nullcontext():
            n += self.decoding.slots.warmup(now=1 if background else None)
            self._codec_later = list(self.decoding.slots.deferred)
        with self.decoding.wake:
            self.decoding.wake.notify()  # a deferred warm-up goes on in the decoder's thread
        # everything alive now (models, tokenizers, graphs) lives as long as the process: keep it out of
        # the garbage collector's full passes, which otherwise walked all of it mid-serving and stopped
        # every stream (a 150-250 ms pass in a 64-stream run on an H200)
        gc.collect()
        gc.freeze()
        return n

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Wait until every graph a background warm-up deferred exists (at once after a foreground one);
        False if `timeout` seconds pass first. A deployment persists Triton's compile cache after it, so
        the next container finds the kernels of every batch size compiled."""
        slots = self.decoding.slots
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (
            all(key in self.runner.graphs for key in self._frame_later)
            and (not slots.use_graphs or all(key in slots.graphs for key in self._codec_later))
        ):
            if self.scheduler.closed or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(WARM_POLL_S)
        return True

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    def close(self) -> None:
        self.scheduler.close()
        self.decoding.close()

    # ---- requests ----------------------------------------------------------------------------------
    def submit(self, request: Request, feed: TextFeed | None = None) -> Generation:
        """Check and start one request; returns its running generation. With a `feed` its text arrives
        through it while it is spoken (dual-track streaming; `request.text` is ''): the stream starts once
        its first tokens are final, and a frame whose text token is not final yet waits for it while the
        other streams go on; `feed.close()` ends the text."""
        with self.scheduler.preparing_one():  # a burst of requests is admitted together
            job = self.pipeline.prepare(request, limit=self.runner.max_frames, feed=feed)
            if job.live is not None:
                job.live.max_rows = min(job.live.max_rows, self.runner.batch.max_text)
                feed.on_change(self.scheduler.text_changed)
            try:
                return self.scheduler.submit(job)
            except ValueError as e:  # the prompt does not fit the engine's static shapes
                raise InvalidInput(str(e), param="input", code="too_long") from None

    def generate_codes(self, requests: Sequence[Request]) -> list[torch.Tensor]:
        generations = [self.submit(r) for r in requests]
        return [g.result() for g in generations]

    def generate(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Audio for each request; all run concurrently."""
        generations = [self.submit(r) for r in requests]
        return [self.pipeline.decode(g.result(), g.job.ref_codes) for g in generations]

    def stream(
        self,
        request: Request,
        chunk_frames: int = 4,
        first_chunk_frames: int = 1,
        feed: TextFeed | None = None,
    ) -> Iterator[np.ndarray]:
        """Audio chunks as frames are generated: the first after `first_chunk_frames` frames, then every
        `chunk_frames`. Closing the iterator early cancels the request and frees its slot. A `feed`: the
        text arrives through it (see `submit`)."""
        check_chunk_sizes(chunk_frames, first_chunk_frames)
        return self.audio(self.submit(request, feed), chunk_frames, first_chunk_frames)

    def audio(
        self, generation: Generation, chunk_frames: int = 4, first_chunk_frames: int = 1
    ) -> Iterator[np.ndarray]:
        """Audio chunks of a submitted generation (see `stream`): the decoder's thread decodes them as the
        frames come, batched with the other streams' chunks of the same frame."""
        stream = self.decoding.attach(generation, first_chunk_frames, chunk_frames)
        try:
            yield from stream
        finally:
            self.decoding.detach(stream)  # its codec slot serves the next stream
            generation.cancel()  # no-op when finished; frees the slot when the consumer walked away

    async def astream(
        self, request: Request, chunk_frames: int = 4, first_chunk_frames: int = 1
    ) -> AsyncIterator[np.ndarray]:
        """`stream` for asyncio: decoding runs in a worker thread, the event loop stays free."""
        chunks = self.stream(request, chunk_frames, first_chunk_frames)
        end = object()
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, end)
                if chunk is end:
                    return
                yield chunk
        finally:
            chunks.close()

    # ---- documents -----------------------------------------------------------------------------------
    def synthesize_document(self, request: Request, max_chars: int = 300) -> np.ndarray:
        """Any length of text: split at sentences, all sentences generated concurrently with the same
        voice prompt (seeds derived from the request's), joined with short faded pauses."""
        pieces = split_sentences(request.text, max_chars)
        if not pieces:
            raise InvalidInput("text is empty", param="text", code="invalid_text")
        base_seed = request.seed
        reqs = [
            replace(request, text=p, seed=None if base_seed is None else base_seed + i)
            for i, p in enumerate(pieces)
        ]
        return join_clips(self.generate(reqs), self.sample_rate)
