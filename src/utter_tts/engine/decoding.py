"""Streaming audio for many streams at once: their codec states live in slots, one thread decodes them.

Every stream's streaming codec state is a row of one slot-indexed state on the device (`CodecSlots`, as
the talker's KV cache holds its streams), so decoding several streams' next frames is one batched pass:
gather their rows, run the decoder, scatter the rows back. On CUDA each pass (a batch bucket of 1- to
4-frame or 8-frame pushes; longer ones in such pieces) is a captured CUDA graph: a streaming push costs
one launch instead of the codec's few hundred kernels, which bound it before (~20 ms for one frame on an
H200).

One thread (`DecodeBatcher`) decodes, on its own high-priority CUDA stream so audio is not queued behind
the talker's frames. The engine's streams are attached to it (`attach`, an `AudioStream` per generation):
after each frame the scheduler wakes it, it takes the frames due at that moment (a stream's first chunk
at once, then all streams' frames every 4 frames: `AudioStream`) and decodes them in as few passes as
their lengths allow, then cuts each stream's audio into its consumer's chunks. No player round trip: 64
streams' frames are one pass, whatever the consumers' threads are doing (players pushing their own
chunks arrived spread over milliseconds and split into passes of ~25 streams on an H200). A caller may
still push its own decoder's frames (`SlotDecoder.push`). Each stream keeps the official 300-frame chunk
restarts of `StreamingDecoder` (its history and counters stay per stream; only the state lives in the
slot).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import torch

from utter_tts.codec.decoder import map_states
from utter_tts.codec.speech_tokenizer import NonFiniteAudio, SpeechTokenizer, StreamingDecoder
from utter_tts.device import CAPTURE_LOCK, to_device, to_host_all
from utter_tts.engine.runner import BATCH_BUCKETS, bucket, capture_next
from utter_tts.model.denormals import flush_denormals

if TYPE_CHECKING:
    from utter_tts.engine.scheduler import Generation

log = logging.getLogger(__name__)

# Pushes from callers' own decoders: after the first arrives, wait for more until none came for QUIET_S
# seconds, at most GATHER_S in all (attached streams need no wait: their chunks are taken per frame).
QUIET_S, GATHER_S = 0.0005, 0.002
# With streams attached the thread also looks on its own this often (a generation that ended outside the
# scheduler's loop, e.g. cancelled while queued, wakes nobody).
POLL_S = 0.05
# push lengths that run as CUDA graphs: first chunks, the shared clock's 4 frames (8 on the long clock),
# and what a stream that joined between two ticks has waiting at its first tick (one stream's 1-frame pass
# took 2.65 ms on an H200, its 4-frame pass 2.94: three 1-frame passes cost far more than one 3-frame pass)
GRAPH_FRAMES = (1, 2, 3, 4, 8)
CLOCK_FRAMES = 4  # attached streams' frames are decoded together every this many frames
AHEAD_S = 0.25  # a stream whose audio is less far ahead of its player decodes each chunk at once
# a stream this far ahead of its player decodes on every other tick, twice the frames: a pass's fixed costs
# (state gather and scatter, the transformer's window, launches) are then paid half as often (64 streams on
# an H200, mixed fp16 codec: 64 x 8 frames 15.5 ms against 2 x 9.5 for two 4-frame passes)
LONG_AHEAD_S, LONG_CLOCK_FRAMES = 1.0, 2 * CLOCK_FRAMES
FRAME_SECONDS = 0.08  # audio per frame (12.5 frames a second)


@contextlib.contextmanager
def _capture_settings():
    """How a codec graph is captured: cuDNN times its convolution algorithms for the graph's fixed shapes
    (the heuristic pick ran one 64-stream transposed convolution at 2.1 ms on an H200), and the
    transformer's fp32 matmuls run as TF32, as the convolutions already do (cuDNN's default): a 64 x
    4-frame pass took 16.5 ms instead of 17.4 on an H200, its audio 4.5e-3 from full fp32 instead of
    3.8e-3. The process's own settings come back after. The flags are process-wide, so an op in another
    thread meanwhile may use them too (captures run at warm-up, before serving)."""
    before = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = before


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
        self.deferred: list[tuple[int, int]] = []  # graphs a background warm-up has still to capture
        self.pool = None

    def acquire(self, timeout: float = 60.0) -> int:
        """A free slot (waiting for one if a finished stream's player has not closed its decoder yet)."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.free, timeout):
                raise RuntimeError("no codec slot came free")
            return self.free.pop()

    def try_acquire(self) -> int | None:
        with self.lock:
            return self.free.pop() if self.free else None

    def release(self, slot: int) -> None:
        with self.lock:
            self.free.append(slot)
            self.lock.notify()

    def reset(self, slot: int) -> None:
        """Put a slot back at its stream's first frame."""
        map_states(lambda dst, src: dst[slot : slot + 1].copy_(src), self.state, self.fresh)

    def reset_many(self, slots: list[int]) -> None:
        """`reset` of several slots, one copy per state tensor."""
        if len(slots) == 1:
            return self.reset(slots[0])
        index = to_device(slots, torch.long, self.codec.device)  # no wait on the decoder's stream
        map_states(
            lambda dst, src: dst.index_copy_(0, index, src.expand(len(slots), *src.shape[1:])),
            self.state,
            self.fresh,
        )

    @torch.inference_mode()
    def run(self, slots: list[int], codes: torch.Tensor) -> torch.Tensor:
        """The next n frames of the streams in `slots`: codes [B, n, 16] (non-negative; on the host or the
        device) -> audio [B, n * 1920] (float32, on the device).

        With graphs, every push runs as replays of the captured lengths (a longer one in pieces: the
        decoder streams exactly): any other length, run eagerly, met new convolution shapes mid-serving,
        whose cuDNN plans were built holding the GIL, stopping every stream."""
        n = codes.shape[1]
        if not self.use_graphs:
            return self._pass(torch.tensor(slots), codes)
        if n in GRAPH_FRAMES:
            return self._replay(slots, codes)
        pieces, start = [], 0
        while start < n:
            k = max(f for f in GRAPH_FRAMES if f <= n - start)
            pieces.append(self._replay(slots, codes[:, start : start + k]))
            start += k
        return torch.cat(pieces, dim=1)

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
        if entry is None and (size, n) in self.deferred:  # a background warm-up captures it when idle
            return self._pass(torch.tensor(slots), codes)
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

    def warmup(self, now: int | None = None) -> int:
        """Capture every (batch bucket, frames) graph before serving: a capture mid-serving stalls every
        stream's audio (~0.5 s each on an H200). With `now`, only those of buckets up to `now` streams; the
        others decode eagerly until `capture_deferred` (the decoder's thread, while idle) captures them."""
        if not self.use_graphs:
            return 0
        missing = [(size, n) for size in self.buckets for n in GRAPH_FRAMES if (size, n) not in self.graphs]
        later = [key for key in missing if now is not None and key[0] > now]
        for key in missing:
            if key not in later:
                self._capture(*key)
        self.deferred += later  # only now: the decoder's thread takes them from here when idle
        return len(missing) - len(later)

    def capture_deferred(self) -> bool:
        """Capture the next deferred graph; False when none is left."""
        return capture_next(self.deferred, self.graphs, self._capture)

    def _capture(self, size: int, n: int) -> tuple:
        with CAPTURE_LOCK:  # its cuDNN search and capture, never beside another thread's
            log.info("capturing codec graph: batch %d, %d frames", size, n)
            device = self.codec.device
            index = torch.full((size,), self.slots, dtype=torch.long, device=device)
            codes = torch.zeros(size, n, 16, dtype=torch.long, device=device)
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream())
            with _capture_settings(), torch.cuda.stream(side):
                self._pass(index, codes)  # warm-up (only the scratch slot changes); cuDNN times algorithms
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            capture = torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local")
            with _capture_settings(), capture:
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


class AudioStream:
    """A generation's audio, decoded on the batcher's thread as its frames come, cut into the consumer's
    chunks: the first after `first` frames, then every `size`, the rest at the end (so they concatenate to
    the one-shot decode). Iterate it (one consumer) for float32 chunks as they land; the generation's
    error, if any, comes after the chunks completed before it. An ICL voice's reference codes are pushed
    first, at the stream's first frame (their audio is the reference's: dropped).

    When frames are decoded is the batcher's choice, not the chunks': the first chunk as soon as it is
    complete (first audio), then all streams' frames together on a shared clock, every CLOCK_FRAMES
    frames, or every LONG_CLOCK_FRAMES once the consumer is LONG_AHEAD_S ahead (streams that joined at
    different frames would otherwise fall into up to 4 passes a cycle),
    except while the consumer's audio runs less than AHEAD_S ahead of playing it from the first chunk
    on: then each chunk is decoded as soon as it is complete (waiting for the clock after an 80 ms first
    chunk would let a player run dry)."""

    def __init__(self, batcher: DecodeBatcher, generation: Generation, first: int, size: int):
        self.decoder = SlotDecoder(batcher)
        self.generation = generation
        self.ref_codes = generation.job.ref_codes
        self.first, self.size = first, size
        self.pushed = 0  # frames handed to the decoder
        self.padding = 0  # frames of the last push that only pad it to the clock's length
        self.decoded: list[np.ndarray] = []  # audio decoded but not yet cut into chunks
        self.cut = 0  # frames delivered in chunks
        self.first_at: float | None = None  # when the first chunk was delivered: playback starts there
        self.chunks: deque[np.ndarray] = deque()
        self.error: BaseException | None = None
        self.ended = False  # every chunk is in `chunks` (or `error` is set)
        self.ready = threading.Condition()

    def __iter__(self):
        while True:
            with self.ready:
                self.ready.wait_for(lambda: self.chunks or self.ended)
                chunk = self.chunks.popleft() if self.chunks else None
            if chunk is None:
                if self.error is not None:
                    raise self.error
                return
            yield chunk

    # called by the batcher's thread
    def next_push(
        self, on_clock: bool, now: float, ticking: bool = False, tick: int | None = None
    ) -> tuple[torch.Tensor, bool] | None:
        """(codes [n, 16], whether its audio is kept) of the push due now (`on_clock`: this round is a
        tick of the shared clock; `now`: time.perf_counter(); `ticking`: other streams still generate, so
        the next tick is at most CLOCK_FRAMES frames away; `tick`: the clock's tick count, given when the
        long clock applies: a stream LONG_AHEAD_S ahead of its player then pushes on even ticks only, up to
        LONG_CLOCK_FRAMES), if any; at the generation's end, with nothing left to push, the last chunk is
        cut and the stream ends."""
        g = self.generation
        done = g.done  # read first: once done, every frame is in `codes`
        ready = len(g.codes)
        if self.ref_codes is not None and ready > 0:
            ref, self.ref_codes = self.ref_codes, None
            return ref, False
        if done and g.error is not None:  # as `audio_chunks` over a failed generation: no partial chunk
            self.finish(g.error)
            return None
        waiting = ready - self.pushed
        pad = 0  # frames repeated after the real ones, to the clock's length
        if self.pushed == 0:
            due = waiting >= self.first or (done and waiting > 0)
            n = min(waiting, self.first)
        else:
            completes = self.cut + self.size - self.pushed <= waiting  # the consumer's next chunk
            ahead = self.ahead(now)
            low = ahead < AHEAD_S
            span = CLOCK_FRAMES
            if tick is not None and ahead >= LONG_AHEAD_S:  # far ahead: every other tick, twice the frames
                span, on_clock = LONG_CLOCK_FRAMES, on_clock and tick % 2 == 0
            # an ended stream's last frames wait for the clock too (unless its player runs low), padded
            # to the clock's length: they join the other streams' pass instead of a pass of their own
            # (64 streams ending on different frames made ~60 extra passes of ~2.7 ms on an H200)
            due = waiting > 0 and (
                on_clock or waiting >= span or (done and (low or not ticking)) or (completes and low)
            )
            n = min(waiting, span)
            if done and on_clock and n == waiting:
                # its last frames on a tick: the padding repeats the last frame; the decoder is causal, so
                # the real frames' audio is the same, and `deliver` drops the padding's
                pad = span - n
        if due:
            part = torch.stack(g.codes[self.pushed : self.pushed + n])
            self.pushed += n
            if pad:
                self.padding = pad
                part = torch.cat([part, part[-1:].expand(pad, -1)])
            return part, True
        if done and self.pushed == ready:  # all pushed (an ended stream's last frames may wait a tick)
            self._cut(final=True)
            self.finish()
        return None

    def ahead(self, now: float) -> float:
        """Seconds of audio delivered beyond what a player started at the first chunk has played."""
        if self.first_at is None:
            return 0.0
        return self.cut * FRAME_SECONDS - (now - self.first_at)

    def deliver(self, audio: torch.Tensor) -> None:
        """Decoded audio of the frames pushed last: cut what completes chunks."""
        if self.padding:
            audio = audio[: len(audio) - self.padding * self.decoder.model.frame_samples]
            self.padding = 0
        self.decoded.append(audio.numpy())
        self._cut(final=False)

    def _cut(self, final: bool) -> None:
        have = sum(len(a) for a in self.decoded)
        frame = self.decoder.model.frame_samples
        cuts = []
        while have > 0:
            want = (self.first if self.cut == 0 else self.size) * frame
            if have < want and not final:
                break
            audio = np.concatenate(self.decoded) if len(self.decoded) > 1 else self.decoded[0]
            take = min(want, have)
            cuts.append(audio[:take].copy())  # a copy: not a view keeping a whole pass's buffer
            self.decoded = [audio[take:]] if take < have else []
            self.cut += take // frame
            have -= take
        if cuts:
            if self.first_at is None:
                self.first_at = time.perf_counter()
            with self.ready:
                self.chunks.extend(cuts)
                self.ready.notify()

    def finish(self, error: BaseException | None = None) -> None:
        with self.ready:
            self.error, self.ended = error, True
            self.ready.notify()


class _Job:
    __slots__ = ("decoder", "codes", "audio", "error", "done", "stream", "chunk")

    def __init__(
        self,
        decoder: SlotDecoder,
        codes: torch.Tensor,
        stream: AudioStream | None = None,
        chunk: bool = True,
    ):
        self.decoder, self.codes = decoder, codes
        self.stream, self.chunk = stream, chunk  # an attached stream's push, and whether its audio is kept
        self.audio: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class DecodeBatcher:
    def __init__(self, codec: SpeechTokenizer, max_batch: int = 64, use_graphs: bool | None = None):
        self.codec = codec
        self.max_batch = max_batch
        self.cuda = codec.device.type == "cuda"
        self.cuda_stream = torch.cuda.Stream(device=codec.device, priority=-1) if self.cuda else None
        # slots: a stream holds one from its first frame until its audio is decoded (an attached stream)
        # or its caller closes its decoder, a little after the engine retired it: twice the streams
        self.slots = CodecSlots(
            codec, 2 * max_batch, self.cuda if use_graphs is None else use_graphs, max_batch
        )
        self.jobs: deque[_Job] = deque()
        self.streams: list[AudioStream] = []  # attached: their chunks are taken after every frame
        self.detached: list[AudioStream] = []  # their slots go back on this thread, between passes
        self.ticks = 0  # wake-ups: frames announced by `frames_ready`, attachments, a round's rerun
        self.clock = 0  # frames announced by `frames_ready`: the shared decode clock counts these
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

    def attach(self, generation: Generation, first: int, size: int) -> AudioStream:
        """Decode a generation's frames as they come (see AudioStream); `detach` it when done with it."""
        stream = AudioStream(self, generation, first, size)
        with self.wake:
            if self.closed:
                raise RuntimeError("the decoder is shut down")
            self.streams.append(stream)
            self.ticks += 1
            self.wake.notify()
        return stream

    def detach(self, stream: AudioStream) -> None:
        """Stop decoding a stream; its codec slot serves the next one."""
        with self.wake:
            if stream in self.streams:
                self.streams.remove(stream)
            self.detached.append(stream)
            self.wake.notify()

    def frames_ready(self) -> None:
        """New frames (or ended generations): take the chunks they complete (the scheduler calls this
        after each frame)."""
        with self.wake:
            self.ticks += 1
            self.clock += 1
            self.wake.notify()

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
        seen, tick = 0, 0  # wake-ups seen; the clock's tick last decoded on
        while True:
            if self.slots.deferred and not (self.jobs or self.streams or self.closed):
                # idle, with a warm-up still under way: one more codec graph (on the decoder's stream)
                with torch.cuda.stream(self.cuda_stream) if self.cuda else contextlib.nullcontext():
                    self.slots.capture_deferred()
                continue
            with self.wake:
                while not self.jobs and self.ticks == seen and not self.detached and not self.closed:
                    if not self.wake.wait(POLL_S if self.streams or self.slots.deferred else None):
                        break  # the poll: look at the attached streams anyway
                if self.closed:
                    self._close_streams()
                    if not self.jobs:
                        return
                seen = self.ticks
            self.open.wait()
            with self.wake:
                if self.jobs:
                    deadline = time.perf_counter() + GATHER_S  # let other callers hand their pushes in
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
                detached, self.detached = self.detached, []
                streams = list(self.streams)
                on_clock = self.clock // CLOCK_FRAMES != tick
                tick = self.clock // CLOCK_FRAMES
            for stream in detached:
                stream.decoder.close()
            batch += self._stream_pushes(streams, self.max_batch - len(batch), on_clock, tick)
            if not batch:
                continue
            self._serve(batch)
            for job in batch:
                if job.stream is None:
                    continue
                if job.error is not None:  # its audio cannot continue: end the stream and its generation
                    job.stream.generation.cancel()
                    job.stream.finish(job.error)
                elif job.chunk:
                    job.stream.deliver(job.audio)
            if any(job.stream is not None for job in batch):
                with self.wake:
                    self.ticks += 1  # look again: more may be due (a first chunk after its reference)

    def _stream_pushes(
        self, streams: list[AudioStream], room: int, on_clock: bool, tick: int | None = None
    ) -> list[_Job]:
        """The attached streams' pushes due now (one per stream), taking codec slots for new streams."""
        jobs, fresh = [], []
        now = time.perf_counter()
        ticking = any(not stream.generation.done for stream in streams)
        for stream in streams:
            if len(jobs) >= room:
                break
            if stream.ended:  # all its audio is decoded: its slot serves the next stream already
                stream.decoder.close()  # (its consumer may still be reading chunks; a no-op after)
                continue
            decoder = stream.decoder
            if decoder.slot is None:
                if not stream.generation.codes:  # no frame yet: no slot held meanwhile
                    if stream.generation.done:
                        stream.next_push(on_clock, now)  # ended without a frame: the stream ends
                    continue
                decoder.slot = self.slots.try_acquire()
                if decoder.slot is None:
                    continue  # all slots held by consumers that have not closed yet: next time
                fresh.append(decoder.slot)
            push = stream.next_push(on_clock, now, ticking, tick)
            if push is not None:
                jobs.append(_Job(decoder, push[0], stream, push[1]))
        if fresh:
            with torch.cuda.stream(self.cuda_stream) if self.cuda else contextlib.nullcontext():
                self.slots.reset_many(fresh)
        return jobs

    def _close_streams(self) -> None:
        from utter_tts.engine.scheduler import Cancelled

        for stream in self.streams:
            if not stream.ended:
                stream.finish(Cancelled("the engine is shut down"))
        self.detached += self.streams
        self.streams = []

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
            finite = torch.isfinite(audio).all(dim=1).tolist()  # on the host copy: no device sync
            for k, i in enumerate(idx):
                batch[i].audio = audio[k]
                if not finite[k]:  # that stream fails (the others of its pass are fine): no garbage audio
                    batch[i].error = NonFiniteAudio("the codec decoded non-finite audio for this stream")
