"""Continuous batching, vLLM v1's shape: schedule (admit waiting generations into free slots at a frame
boundary, retire cancelled ones) -> execute (the runner's frame) -> update (hand each generation its
frame, retire the finished). The scheduler only keeps books: which generation holds which slot, and how
many frames each has made of its budget."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from utter_tts.engine.runner import Launched, Runner, StepResult
from utter_tts.errors import UtterTTSError, sticky_device_error
from utter_tts.model.denormals import flush_denormals
from utter_tts.pipeline import Prepared, make_job_prompts

log = logging.getLogger(__name__)

# While other requests' prompts are still being built, admission waits for them (at most this long after
# the oldest waiting request came; longer when no stream is running, so nothing else waits): a burst is
# then prefilled in one pass. Admitting the first arrivals at once made their prefill race the other
# callers' prompt building for the GIL (64 requests at once on an H200: an admission of 20 prompts took
# 98 ms, ~10 ms alone, and the other 44 waited behind it).
GATHER_S, GATHER_IDLE_S = 0.05, 0.15
# An idle engine with nobody building a prompt still waits until no caller arrived for this long: a burst's
# first request was otherwise admitted alone before the other callers' threads had started (64 at once on
# an H200: admitted at 1.7 ms, its admission then shared the GIL with 63 callers for 76 ms, the other 63
# waited behind it).
QUIET_S = 0.003
# While streams run, one admission prefills at most this many prompt rows (and at least one prompt), then
# the streams get their next frame before more newcomers come in: a burst's prefill is split into passes
# of about one frame's GPU time, so it does not stall the running streams for the whole burst (vLLM's
# chunked prefill, at prompt granularity: a Qwen3-TTS prompt is short, its text enters one token a frame,
# and `max_prompt` bounds the longest). On an H200 64 prompts of 10 rows took 7.5 ms of kernels in one
# packed pass (2026-11-30 timeline), a 64-stream frame 5.4 ms. An idle engine admits a burst whole.
PREFILL_ROWS = 512
# Frames queued on the GPU beyond the one whose results the host is reading: the frame state stays on the
# device, so the next frames need no host round trip, and a host late by a frame (the GIL shared with the
# decoder and 64 players) does not leave the talker's stream without work. Not measured apart: in the
# traced 64-stream runs on an H200 the talker's stream had gaps either way (~27 % of the steady state,
# while the codec's high-priority kernels held the SMs). An ended stream runs up to this many padding
# frames, ignored.
AHEAD = 2
# A loop whose every stream waits for its text sleeps at most this long between looks (an append or a
# close wakes it at once).
TEXT_WAIT_S = 0.05


class Busy(UtterTTSError):
    """The queue is full; the caller should retry later (HTTP 429/503 with Retry-After)."""


class EngineFault(UtterTTSError):
    """The engine produced something unusable for this generation (an internal error, not the caller's)."""


class Cancelled(UtterTTSError):
    """The stream was cancelled (client gone, or shutdown)."""


@dataclass(eq=False)  # identity: two generations of the same request are still two
class Generation:
    """One request running in the engine: iterate it for its frames' codes ([16] int64 tensors) as they
    come, or wait for all of them with `result()`; `cancel()` frees its slot at the next frame."""

    job: Prepared
    submitted: float = field(default_factory=time.perf_counter)
    admitted_at: float | None = None  # prefilled into a slot (its first token sampled)
    first_frame_at: float | None = None
    frames: int = 0
    launched: int = 0  # frames launched for it (ahead of `frames` by those in flight)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    error: BaseException | None = None
    codes: list[torch.Tensor] = field(default_factory=list, repr=False)
    # its consumer (one per generation) waits here until `_need` frames in all have come (or the end): woken
    # once per chunk, not once per frame (64 streams' players woken every frame starved the scheduler's
    # thread of the GIL)
    _ready: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _need: int = 1

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __iter__(self):
        """Each frame's codes ([16] int64) as it comes."""
        return self.chunked(1, 1)

    def chunked(self, first: int, size: int) -> Iterator[torch.Tensor]:
        """The frames as `iter` gives them, but the consumer wakes only when a chunk is complete: after
        `first` frames, then every `size` (chunk boundaries counted from the first frame), or at the end."""
        taken, boundary = 0, first
        while True:
            with self._ready:
                while boundary <= taken:
                    boundary += size
                self._need = boundary
                self._ready.wait_for(lambda: len(self.codes) >= self._need or self.done)
                ready = len(self.codes)
            while taken < ready:
                yield self.codes[taken]
                taken += 1
            if self.done and taken >= len(self.codes):
                if self.error is not None:
                    raise self.error
                return

    def result(self, timeout: float | None = None) -> torch.Tensor:
        """All codes [F, 16] once the generation has finished."""
        if not self._done.wait(timeout):
            raise TimeoutError("generation still running")
        if self.error is not None:
            raise self.error
        return torch.stack(self.codes) if self.codes else torch.zeros(0, 16, dtype=torch.long)

    # called by the scheduler thread
    def _push(self, codes: torch.Tensor) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.perf_counter()
        self.frames += 1
        with self._ready:
            self.codes.append(codes)
            if len(self.codes) >= self._need:
                self._ready.notify_all()

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        with self._ready:
            self._done.set()
            self._ready.notify_all()


class Scheduler:
    """Drives a Runner from its own thread. Thread-safe `submit`."""

    def __init__(self, runner: Runner, max_queue: int = 256, on_step: Callable[[], None] | None = None):
        self.runner = runner
        self.on_step = on_step  # called on the scheduler's thread after each step's books are kept
        self.max_queue = max_queue
        self.pending: list[Generation] = []
        self.live: list[Generation] = []  # index = slot
        self.preparing = 0  # requests whose prompts are being built on their callers' threads
        self.arrived = 0.0  # when a caller last started building a prompt or submitted
        self.lock = threading.Condition()
        self.closed = False
        self.fatal: str | None = None  # a sticky device error ended the engine (see `_fail_for_good`)
        self.on_fatal: Callable[[str], None] | None = None
        self.frames_run = 0
        self.thread = threading.Thread(target=self._loop, name="utter-tts-scheduler", daemon=True)
        self.thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self.pending)

    @property
    def active(self) -> int:
        return len(self.live)

    def submit(self, job: Prepared) -> Generation:
        self.runner.check_fits(job.plan.rows, job.plan.text_rows)
        generation = Generation(job)
        with self.lock:
            if self.fatal is not None:
                raise EngineFault(f"the GPU failed and this process must restart: {self.fatal}")
            if self.closed:
                raise Cancelled("the engine is shut down")
            self.arrived = time.perf_counter()
            self._drop_cancelled_pending()
            if len(self.pending) >= self.max_queue:
                raise Busy(f"{len(self.pending)} requests already wait; try again shortly")
            self.pending.append(generation)
            self.lock.notify()
        return generation

    @contextlib.contextmanager
    def preparing_one(self) -> Iterator[None]:
        """Around building a request's prompt (before `submit`): admission gathers what is being built."""
        with self.lock:
            self.preparing += 1
            self.arrived = time.perf_counter()
        try:
            yield
        finally:
            with self.lock:
                self.preparing -= 1
                self.lock.notify()

    def _gathering(self, now: float) -> float:
        """Seconds admission should still wait for prompts being built (0: admit now)."""
        if not self.pending:
            return 0.0
        oldest = self.pending[0].submitted
        if self.preparing:
            return max(0.0, oldest + (GATHER_S if self.live else GATHER_IDLE_S) - now)
        if self.live:
            return 0.0
        return max(0.0, min(self.arrived + QUIET_S, oldest + GATHER_IDLE_S) - now)

    def close(self, timeout: float = 10.0) -> None:
        """Stop: cancel what waits and what runs."""
        with self.lock:
            self.closed = True
            for g in self.pending + self.live:
                g.cancel()
            self.lock.notify()
        self.thread.join(timeout)

    def _drop_cancelled_pending(self) -> None:
        for g in [g for g in self.pending if g.cancelled]:
            self.pending.remove(g)
            g._finish(Cancelled("cancelled before it started"))

    # ---- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        with flush_denormals(self.runner.device):  # our own thread: flushed for its whole life
            self._serve()

    def _serve(self) -> None:
        in_flight: deque[tuple[list[Generation], Launched]] = deque()  # launched, oldest first
        while True:
            if self.runner.deferred and not (self.live or in_flight or self.pending or self.closed):
                # idle, with a warm-up still under way: one more graph (a request arriving meanwhile waits
                # for at most this one capture; frames of buckets not captured yet run eagerly)
                with self._on_cuda_stream():
                    self.runner.capture_deferred()
                continue
            with self.lock:
                while not self.closed and not self.live and not in_flight:
                    if not any(self._startable(g) for g in list(self.pending)):  # it may drop some
                        if self.runner.deferred:
                            break  # idle: capture a deferred graph (top of the loop)
                        self.lock.wait()  # a text's append or close notifies too
                    elif wait := self._gathering(time.perf_counter()):
                        self.lock.wait(wait)  # idle: wait for the burst's other prompts
                    else:
                        break
                if self.closed and not self.live and not self.pending and not in_flight:
                    return
                admit = []
                if self.closed or not self._gathering(time.perf_counter()):
                    rows = 0
                    for g in list(self.pending):
                        if len(self.live) + len(admit) >= self.runner.max_slots:
                            break
                        if not self._startable(g):
                            continue  # its text's first tokens are still to come
                        rows += g.job.plan.rows
                        if admit and self.live and rows > PREFILL_ROWS:
                            break  # the rest after the running streams' next frame
                        admit.append(g)
                        self.pending.remove(g)
            try:
                with self._on_cuda_stream():
                    self._admit(admit)
                    self._retire_cancelled()
                    hold = self._feed_text()
                    if self.live and len(hold) < len(self.live):
                        rows = [None if i in hold else g for i, g in enumerate(self.live)]
                        in_flight.append((rows, self.runner.launch(len(self.live), hold)))
                        for g in rows:
                            if g is not None:
                                g.launched += 1
                    # read the oldest frame's results once AHEAD newer ones are queued behind it (all of
                    # them when nothing runs any more)
                    while in_flight and (len(in_flight) > AHEAD or not self.live):
                        rows, frame = in_flight.popleft()
                        self._update(rows, self.runner.collect(frame))
            except Exception as e:  # a fault in the model: fail what runs, keep serving
                log.exception("engine step failed")
                in_flight.clear()
                for slot, g in enumerate(self.live):
                    g._finish(e)
                    self.runner.clear(slot)
                self.live = []
                fatal = sticky_device_error(e)
                if fatal is not None:  # the GPU context is gone: nothing more can run in this process
                    self._fail_for_good(fatal)
                    return
            if self.closed:
                for g in self.live + self.pending:
                    g._finish(Cancelled("the engine is shut down"))
                self.live, self.pending = [], []
                in_flight.clear()
            if self.on_step is not None:
                self.on_step()
            if self.closed:
                return
            if self.live and not in_flight:  # every stream waits for its text: until some comes
                with self.lock:  # (an append notifies under this lock: checked here, none is missed)
                    if not self.closed and all(g.job.waits_for_text(g.launched) for g in self.live):
                        self.lock.wait(TEXT_WAIT_S)

    def _startable(self, g: Generation) -> bool:
        """Whether a waiting generation can be prefilled (a text still arriving: enough of it is final);
        a text closed empty fails it."""
        try:
            return g.job.start()
        except UtterTTSError as e:
            self.pending.remove(g)
            g._finish(e)
            return False

    def _feed_text(self) -> list[int]:
        """The text final since the last frame into the running streams' slots (dual-track); returns the
        slots whose next frame's text token is not final yet (they wait; the others go on)."""
        hold = []
        for slot in range(len(self.live) - 1, -1, -1):  # from the back: a failure retires its slot
            g = self.live[slot]
            if g.job.live is None:
                continue
            try:
                self.runner.batch.append_text(slot, g.job.more_text())
            except UtterTTSError as e:  # its text outgrew the engine's text rows: fail it alone
                last = len(self.live) - 1
                self._retire(slot)  # the last slot's stream moves into this one
                g._finish(e)
                hold = [slot if h == last else h for h in hold]
                continue
            if not g.job.has_text_for(g.launched):
                hold.append(slot)
        return hold

    def text_changed(self) -> None:
        """A generation's text grew or closed (called on the appending thread): wake the loop."""
        with self.lock:
            self.lock.notify()

    def _fail_for_good(self, reason: str) -> None:
        """A sticky device error: refuse new work, fail what waits, tell the owner (`on_fatal`)."""
        with self.lock:
            self.fatal = reason
            self.closed = True
            waiting, self.pending = self.pending, []
        for g in waiting:
            g._finish(EngineFault(f"the GPU failed and this process must restart: {reason}"))
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _on_cuda_stream(self):
        cuda_stream = self.runner.cuda_stream
        return torch.cuda.stream(cuda_stream) if cuda_stream is not None else contextlib.nullcontext()

    def _admit(self, newcomers: list[Generation]) -> None:
        """Prefill the waiting generations that got a slot, together (one packed pass when fused)."""
        for g in [g for g in newcomers if g.cancelled]:
            g._finish(Cancelled("cancelled before it started"))
        newcomers = [g for g in newcomers if not g.cancelled]
        if not newcomers:
            return
        # the newcomers' prompt embeddings, made here for all of them in one pass (one thread: a burst's
        # callers no longer make them on as many threads contending for the GIL); a prompt that fails
        # fails alone
        self.runner.after_callers()
        for g, error in zip(list(newcomers), make_job_prompts([g.job for g in newcomers])):
            if error is not None:
                log.error("building a prompt failed", exc_info=error)
                newcomers.remove(g)
                g._finish(EngineFault(f"building the prompt failed: {error}"))
        if not newcomers:
            return
        prompts = [g.job.prompt for g in newcomers]
        first = len(self.live)
        ended = self.runner.prefill(
            first, [(p, g.job.sampling, g.job.request.seed) for p, g in zip(prompts, newcomers)]
        )
        now = time.perf_counter()
        for g in newcomers:
            g.admitted_at = now
        self.live += newcomers
        for i in range(len(newcomers) - 1, -1, -1):  # from the back: retiring moves the last slot here
            g = self.live[first + i]
            if ended[i] or g.job.frames <= 0:
                self._retire(first + i)
                g._finish()

    def _retire(self, i: int) -> None:
        last = len(self.live) - 1
        if i != last:
            self.runner.move(last, i)
            self.live[i] = self.live[last]
        self.runner.clear(last)
        self.live.pop()

    def _retire_cancelled(self) -> None:
        for i in range(len(self.live) - 1, -1, -1):
            if self.live[i].cancelled:
                g = self.live[i]
                self._retire(i)
                g._finish(Cancelled("cancelled"))

    def _update(self, rows: list[Generation | None], result: StepResult) -> None:
        """Hand each generation its frame (`rows`: the generations of the frame's rows when it was
        launched, None where a stream waited for its text); retire the finished and the failed."""
        self.frames_run += 1
        for row, g in enumerate(rows):
            if g is None or g.done:  # waiting, ended, failed or cancelled: its row was padding
                continue
            if not result.valid[row]:
                # a frame with a control id or an out-of-range code cannot be decoded (and would put a
                # device-side assert into the codec): fail this generation loudly, keep the others
                log.error("slot %d of %d made an undecodable frame %s; failing it", row, len(rows),
                          result.codes[row].tolist())  # fmt: skip
                self._retire(self.live.index(g))
                g._finish(EngineFault("the model produced an invalid frame"))
                continue
            g._push(result.codes[row])  # a row of this step's own host copy
            if result.ended[row] or g.frames >= g.job.frames:
                self._retire(self.live.index(g))
                g._finish()
