"""Streaming audio for many streams at once: their codec states live in slots, one thread decodes them.

Every stream's streaming codec state is a row of one slot-indexed state on the device (`CodecSlots`, as
the talker's KV cache holds its streams), so decoding several streams' next frames is one batched pass:
gather their rows, run the decoder, scatter the rows back. On CUDA each pass of a common shape (a batch
bucket of 1-frame or 4-frame pushes) is a captured CUDA graph: a streaming push costs one launch instead
of the codec's few hundred kernels, which bound it before (~20 ms for one frame on an H200).

Players hand their pushes to one thread (`DecodeBatcher`), which runs all pushes waiting at that moment
in as few passes as their lengths allow, on its own high-priority CUDA stream so audio is not queued
behind the talker's frames. Each stream keeps the official 300-frame chunk restarts of `StreamingDecoder`
(its history and counters stay per stream; only the state lives in the slot).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque

import torch

from utter_tts.codec.decoder import map_states
from utter_tts.codec.speech_tokenizer import SpeechTokenizer, StreamingDecoder
from utter_tts.device import to_host_all
from utter_tts.engine.runner import BATCH_BUCKETS, bucket
from utter_tts.model.denormals import flush_denormals

log = logging.getLogger(__name__)

# Streams batched in the talker get their frames together: after the first push arrives, wait for more
# until none came for QUIET_S seconds, at most GATHER_S in all.
QUIET_S, GATHER_S = 0.0005, 0.002
GRAPH_FRAMES = (1, 4)  # push lengths that run as CUDA graphs (the engine's first chunk, then chunks of 4)


@contextlib.contextmanager
def _cudnn_benchmark():
    """cuDNN times its convolution algorithms for the graph's fixed shapes (the heuristic pick ran one
    64-stream transposed convolution at 2.1 ms on an H200); the process's own setting comes back after.
    The flag is process-wide, so a convolution in another thread meanwhile may be timed too: harmless."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class CodecSlots:
    """Streaming codec states of up to `slots` streams, resident on the device; row `slots` is scratch (the
    padding rows of a graph's batch bucket write there)."""

    def __init__(self, codec: SpeechTokenizer, slots: int, use_graphs: bool, max_pass: int | None = None):
        self.codec = codec
        self.slots = slots
        self.state = codec.new_state(slots + 1)
        self.fresh = codec.new_state(1)  # a stream's state at its first frame
        self.free = list(range(slots - 1, -1, -1))
        self.lock = threading.Condition()
        self.use_graphs = use_graphs
        max_pass = max_pass or slots  # streams in one pass at most
        self.buckets = tuple(b for b in BATCH_BUCKETS if b < max_pass) + (max_pass,)
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.pool = None

    def acquire(self, timeout: float = 60.0) -> int:
        """A free slot (waiting for one if a finished stream's player has not closed its decoder yet)."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.free, timeout):
                raise RuntimeError("no codec slot came free")
            return self.free.pop()

    def release(self, slot: int) -> None:
        with self.lock:
            self.free.append(slot)
            self.lock.notify()

    def reset(self, slot: int) -> None:
        """Put a slot back at its stream's first frame."""
        map_states(lambda dst, src: dst[slot : slot + 1].copy_(src), self.state, self.fresh)

    @torch.inference_mode()
    def run(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        """The next n frames of the streams in `slots`: codes [B, n, 16] (non-negative; on the host or the
        device) -> audio [B, n * 1920] (float32, on the device)."""
        B, n = codes.shape[:2]
        if self.use_graphs and n in GRAPH_FRAMES:
            return self._replay(slots, codes)
        return self._pass(torch.tensor(slots), codes)

    def _pass(self, index: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        device = self.codec.device
        index, codes = index.to(device), codes.to(device)  # codes may be host copies (chunk history)
        state = map_states(lambda t: t.index_select(0, index), self.state)
        audio = self.codec.run(codes, state)
        map_states(lambda dst, src: dst.index_copy_(0, index, src), self.state, state)
        return audio.float()

    def _replay(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        B, n = codes.shape[:2]
        size = bucket(B, self.buckets)
        entry = self.graphs.get((size, n))
        if entry is None:
            try:
                entry = self._capture(size, n)
            except Exception:  # a codec op that will not capture: decode eagerly from now on
                log.exception("codec graph capture failed (batch %d, %d frames); decoding eagerly", size, n)
                self.use_graphs = False
                return self._pass(torch.tensor(slots), codes)
        graph, index, static_codes, audio = entry
        index.fill_(self.slots)  # padding rows: the scratch slot
        index[:B].copy_(torch.tensor(slots), non_blocking=True)
        static_codes.zero_()
        static_codes[:B].copy_(codes)
        graph.replay()
        return audio[:B].clone()  # the static output is overwritten by the next replay

    def warmup(self) -> int:
        """Capture every (batch bucket, frames) graph before serving: a capture mid-serving stalls every
        stream's audio (~0.5 s each on an H200)."""
        if not self.use_graphs:
            return 0
        missing = [(size, n) for size in self.buckets for n in GRAPH_FRAMES if (size, n) not in self.graphs]
        for size, n in missing:
            self._capture(size, n)
        return len(missing)

    def _capture(self, size: int, n: int) -> tuple:
        device = self.codec.device
        index = torch.full((size,), self.slots, dtype=torch.long, device=device)
        codes = torch.zeros(size, n, 16, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream())
        with _cudnn_benchmark(), torch.cuda.stream(side):
            self._pass(index, codes)  # warm-up (only the scratch slot changes); cuDNN times its algorithms
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with _cudnn_benchmark(), torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            audio = self._pass(index, codes)
        self.pool = graph.pool()
        self.graphs[(size, n)] = entry = (graph, index, codes, audio)
        return entry


class SlotDecoder(StreamingDecoder):
    """A stream's StreamingDecoder whose state is a slot of the batcher's CodecSlots and whose pushes run
    on the batcher's thread (batched with other streams'). Same results as a StreamingDecoder. The slot is
    taken at the first push (a stream waiting for admission holds none) and given back by `close`."""

    def __init__(self, batcher: DecodeBatcher):
        super().__init__(batcher.codec)
        self.batcher = batcher
        self.slot: int | None = None

    @property
    def started(self) -> bool:
        return self.slot is not None

    def _reset(self, batch: int) -> None:
        self.batcher.slots.reset(self.slot)

    def _run(self, codes: torch.Tensor) -> torch.Tensor:
        return self.batcher.slots.run([self.slot], codes)

    def start(self) -> None:
        """Take a codec slot, at the stream's first frame (done by the first push)."""
        if self.slot is None:
            self.slot = self.batcher.slots.acquire()
            self.batcher.slots.reset(self.slot)

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio (float32, on the CPU) of `codes` [n, 16], this stream's next frames."""
        self.start()
        return self.batcher.push(self, codes)

    def close(self) -> None:
        if self.slot is not None:
            self.batcher.slots.release(self.slot)
            self.slot = None


class _Job:
    __slots__ = ("decoder", "codes", "audio", "error", "done")

    def __init__(self, decoder: SlotDecoder, codes: torch.Tensor):
        self.decoder, self.codes = decoder, codes
        self.audio: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class DecodeBatcher:
    def __init__(self, codec: SpeechTokenizer, max_batch: int = 64, use_graphs: bool | None = None):
        self.codec = codec
        self.max_batch = max_batch
        self.cuda = codec.device.type == "cuda"
        self.cuda_stream = torch.cuda.Stream(device=codec.device, priority=-1) if self.cuda else None
        # slots: a stream holds one from its first push until its player closes it, a little after the
        # engine retired it, so twice the streams the engine runs
        self.slots = CodecSlots(
            codec, 2 * max_batch, self.cuda if use_graphs is None else use_graphs, max_batch
        )
        self.jobs: deque[_Job] = deque()
        self.wake = threading.Condition()
        self.closed = False
        self.open = threading.Event()  # cleared by `held()`: pushes queue up but no pass starts
        self.open.set()
        self.batches = 0  # batches taken (for tests and metrics)
        self.passes: list[list[int]] = []  # per batch taken: streams decoded by each of its codec passes
        self.thread = threading.Thread(target=self._loop, name="utter-tts-decoder", daemon=True)
        self.thread.start()

    def decoder(self) -> SlotDecoder:
        """A new stream's decoder (it holds a codec slot until closed)."""
        return SlotDecoder(self)

    def push(self, decoder: SlotDecoder, codes: torch.Tensor) -> torch.Tensor:
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
        with torch.cuda.stream(self.cuda_stream) if self.cuda else contextlib.nullcontext():
            try:
                self._run(batch)
            except BaseException as e:
                # a failed batch leaves the slots it read as they were: retry each push alone, so only
                # the push that fails on its own reports the failure
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

    @torch.inference_mode()
    def _run(self, batch: list[_Job]) -> None:
        """Pushes of equal length that fit their stream's chunk run as one pass; the rest (a push crossing
        an official chunk boundary, an ICL voice's reference) run alone."""
        passes: list[int] = []
        groups: dict[int, list[int]] = {}
        outs: list[tuple[list[int], torch.Tensor]] = []  # (jobs, their audio [len(jobs), samples])
        for job in batch:  # all checked before any state moves: a failed batch is retried push by push
            if job.codes.dim() != 2 or job.codes.shape[1] != 16:
                raise ValueError(f"a push takes [n, 16] codes, got {tuple(job.codes.shape)}")
        for i, job in enumerate(batch):
            codes = job.codes
            n = codes.shape[0]
            if 0 < n <= job.decoder.room():
                groups.setdefault(n, []).append(i)
            else:
                outs.append(([i], StreamingDecoder.push(job.decoder, codes)[None]))
                passes.append(1)
        for idx in groups.values():
            jobs = [batch[i] for i in idx]
            # the codes stay where they came from (the scheduler's host copies) for the streams' chunk
            # history: no device op per stream
            codes = torch.stack([j.codes for j in jobs]).clamp(min=0)
            audio = self.slots.run([j.decoder.slot for j in jobs], codes)
            passes.append(len(jobs))
            for k, job in enumerate(jobs):
                job.decoder.remember(codes[k : k + 1])
            outs.append((idx, audio))
        self.batches += 1
        self.passes.append(passes)
        for (idx, _), audio in zip(outs, to_host_all([a for _, a in outs])):  # one copy a pass, one wait
            for k, i in enumerate(idx):
                batch[i].audio = audio[k]
