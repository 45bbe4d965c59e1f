"""Streaming audio for many streams at once: one thread decodes every stream's new frames in batches.

Decoding a few frames costs the codec's whole kernel sequence, so one stream at a time is bound by
launches (and by the GIL when players decode in their own threads). Here players hand their pushes to
one thread, which runs all pushes waiting at that moment as one batched codec pass (`push_batch`), on
its own high-priority CUDA stream so audio is not queued behind the talker's frames.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque

import torch

from utter_tts.codec.speech_tokenizer import SpeechTokenizer, StreamingDecoder, push_batch
from utter_tts.device import to_host_all
from utter_tts.model.denormals import flush_denormals

# Streams batched in the talker get their frames together: after the first push arrives, wait for more
# until none came for QUIET_S seconds, at most GATHER_S in all.
QUIET_S, GATHER_S = 0.0005, 0.002


class _Job:
    __slots__ = ("decoder", "codes", "audio", "error", "done")

    def __init__(self, decoder: StreamingDecoder, codes: torch.Tensor):
        self.decoder, self.codes = decoder, codes
        self.audio: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class DecodeBatcher:
    def __init__(self, codec: SpeechTokenizer, max_batch: int = 64):
        self.codec = codec
        self.max_batch = max_batch
        self.cuda = codec.device.type == "cuda"
        self.cuda_stream = torch.cuda.Stream(device=codec.device, priority=-1) if self.cuda else None
        self.jobs: deque[_Job] = deque()
        self.wake = threading.Condition()
        self.closed = False
        self.open = threading.Event()  # cleared by `held()`: pushes queue up but no pass starts
        self.open.set()
        self.batches = 0  # passes run (for tests and metrics)
        self.passes: list[list[int]] = []  # per batch taken: streams decoded by each of its codec passes
        self.thread = threading.Thread(target=self._loop, name="utter-tts-decoder", daemon=True)
        self.thread.start()

    def decoder(self) -> BatchedDecoder:
        """A stream's decoder whose pushes run on this batcher."""
        return BatchedDecoder(self, self.codec.stream_decoder())

    def push(self, decoder: StreamingDecoder, codes: torch.Tensor) -> torch.Tensor:
        """Audio (float32, on the CPU) of `codes` [n, 16], the next frames of `decoder`'s stream."""
        job = _Job(decoder, codes)
        with self.wake:
            if self.closed:
                raise RuntimeError("the decoder is shut down")
            self.jobs.append(job)
            self.wake.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.audio

    def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify()
        self.open.set()
        self.thread.join(10)

    @contextlib.contextmanager
    def held(self):
        """Start no pass while the block runs; the pushes that queue meanwhile are decoded together when
        it ends (a deterministic way to show batching, and to line streams up)."""
        self.open.clear()
        try:
            yield
        finally:
            self.open.set()

    def _loop(self) -> None:
        with flush_denormals(self.codec.device):  # our own thread: flushed for its whole life
            self._take_batches()

    def _take_batches(self) -> None:
        while True:
            with self.wake:
                while not self.jobs and not self.closed:
                    self.wake.wait()
                if not self.jobs and self.closed:
                    return
            self.open.wait()
            with self.wake:
                deadline = time.perf_counter() + GATHER_S  # let the other players hand their pushes in
                while len(self.jobs) < self.max_batch and not self.closed:
                    n, left = len(self.jobs), deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self.wake.wait(min(QUIET_S, left))
                    if len(self.jobs) == n:
                        break
                batch = []
                while self.jobs and len(batch) < self.max_batch:
                    batch.append(self.jobs.popleft())
            self._serve(batch)

    def _serve(self, batch: list[_Job]) -> None:
        try:
            self._run(batch)
        except BaseException as e:
            # a failed batch leaves every decoder's state as it was: retry each push alone, so only the
            # push that fails on its own reports the failure
            if len(batch) == 1:
                batch[0].error = e
            else:
                for job in batch:
                    try:
                        self._run([job])
                    except BaseException as e1:
                        job.error = e1
        for job in batch:
            job.done.set()

    def _run(self, batch: list[_Job]) -> None:
        with torch.cuda.stream(self.cuda_stream) if self.cuda else contextlib.nullcontext():
            passes: list[int] = []
            outs = push_batch([j.decoder for j in batch], [j.codes for j in batch], passes)
            self.batches += 1
            self.passes.append(passes)
            for job, audio in zip(batch, to_host_all(outs)):  # one wait for the whole batch
                job.audio = audio


class BatchedDecoder:
    """A StreamingDecoder facade: `push` goes through the batcher (same results, batched)."""

    def __init__(self, batcher: DecodeBatcher, decoder: StreamingDecoder):
        self.batcher, self.inner = batcher, decoder

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        return self.batcher.push(self.inner, codes)
