"""Continuous batching: admit requests at frame boundaries, run a frame for all live streams, retire."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from utter_tts.engine.runner import FrameRunner
from utter_tts.errors import UtterTTSError
from utter_tts.model.config import SamplingConfig
from utter_tts.model.denormals import flush_denormals
from utter_tts.model.prompt import Prompt

log = logging.getLogger(__name__)

_END = object()


class Busy(UtterTTSError):
    """The queue is full; the caller should retry later (HTTP 429/503 with Retry-After)."""


class EngineFault(UtterTTSError):
    """The engine produced something unusable for this stream (an internal error, not the caller's)."""


class Cancelled(UtterTTSError):
    """The stream was cancelled (client gone, or shutdown)."""


@dataclass
class Stream:
    """One request in the engine. Iterate it for its frames' codes ([16] int64 tensors) as they come."""

    prompt: Prompt
    sampling: SamplingConfig
    seed: int
    submitted: float = field(default_factory=time.perf_counter)
    first_frame_at: float | None = None
    frames: int = 0
    _queue: queue.Queue = field(default_factory=queue.Queue, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    error: BaseException | None = None
    codes: list[torch.Tensor] = field(default_factory=list, repr=False)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def result(self, timeout: float | None = None) -> torch.Tensor:
        """All codes [F, 16] once the stream has finished."""
        if not self._done.wait(timeout):
            raise TimeoutError("stream still running")
        if self.error is not None:
            raise self.error
        return torch.stack(self.codes) if self.codes else torch.zeros(0, 16, dtype=torch.long)

    # called by the scheduler thread
    def _push(self, codes: torch.Tensor) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.perf_counter()
        self.frames += 1
        self.codes.append(codes)
        self._queue.put(codes)

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self._done.set()
        self._queue.put(_END)


class Scheduler:
    """Owns a FrameRunner and a thread that drives it. Thread-safe `submit`."""

    def __init__(self, runner: FrameRunner, max_queue: int = 256):
        self.runner = runner
        self.max_queue = max_queue
        self.pending: list[Stream] = []
        self.live: list[Stream] = []  # index = slot
        self.lock = threading.Condition()
        self.closed = False
        self.frames_run = 0
        self.thread = threading.Thread(target=self._loop, name="utter-tts-scheduler", daemon=True)
        self.thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self.pending)

    @property
    def active(self) -> int:
        return len(self.live)

    def submit(self, prompt: Prompt, sampling: SamplingConfig, seed: int) -> Stream:
        self.runner.check_fits(prompt)
        stream = Stream(prompt, sampling, seed)
        with self.lock:
            if self.closed:
                raise Cancelled("the engine is shut down")
            self._drop_cancelled_pending()
            if len(self.pending) >= self.max_queue:
                raise Busy(f"{len(self.pending)} requests already wait; try again shortly")
            self.pending.append(stream)
            self.lock.notify()
        return stream

    def close(self, timeout: float = 10.0) -> None:
        """Stop: cancel what waits and what runs."""
        with self.lock:
            self.closed = True
            for s in self.pending + self.live:
                s.cancel()
            self.lock.notify()
        self.thread.join(timeout)

    def _drop_cancelled_pending(self) -> None:
        for s in [s for s in self.pending if s.cancelled]:
            self.pending.remove(s)
            s._finish(Cancelled("cancelled before it started"))

    # ---- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        with flush_denormals(self.runner.device):  # our own thread: flushed for its whole life
            self._serve()

    def _serve(self) -> None:
        while True:
            with self.lock:
                while not self.closed and not self.pending and not self.live:
                    self.lock.wait()
                if self.closed and not self.live and not self.pending:
                    return
                admit = []
                while self.pending and len(self.live) + len(admit) < self.runner.max_slots:
                    admit.append(self.pending.pop(0))
            try:
                with self._on_stream():
                    for s in admit:
                        self._admit(s)
                    self._retire_cancelled()
                    if self.live:
                        self._frame()
            except Exception as e:  # a fault in the model: fail what runs, keep serving
                log.exception("engine step failed")
                for s in self.live:
                    s._finish(e)
                    self.runner.clear(self.live.index(s))
                self.live = []
            if self.closed:
                for s in self.live:
                    s._finish(Cancelled("the engine is shut down"))
                for s in self.pending:
                    s._finish(Cancelled("the engine is shut down"))
                self.live, self.pending = [], []
                return

    def _on_stream(self):
        stream = self.runner.stream
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def _admit(self, s: Stream) -> None:
        if s.cancelled:
            s._finish(Cancelled("cancelled before it started"))
            return
        slot = len(self.live)
        self.runner.prefill(slot, s.prompt, s.sampling, s.seed)
        if self.runner.first_token(slot) == self.runner.eos_id or self.runner.info[slot].max_frames <= 0:
            self.runner.clear(slot)
            s._finish()
            return
        self.live.append(s)

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
                s = self.live[i]
                self._retire(i)
                s._finish(Cancelled("cancelled"))

    def _frame(self) -> None:
        out = self.runner.step(len(self.live))
        self.frames_run += 1
        eos = self.runner.eos_id
        for i in range(len(self.live) - 1, -1, -1):
            s = self.live[i]
            frame = out[i, :-1]
            if bool(((frame < 0) | (frame >= self.runner.codebook_size)).any()):
                # a frame with a control id or an out-of-range code cannot be decoded (and would put a
                # device-side assert into the codec): fail this stream loudly, keep the others
                log.error(
                    "slot %d of %d produced an undecodable frame %s; failing it",
                    i,
                    len(self.live),
                    frame.tolist(),
                )
                self._retire(i)
                s._finish(EngineFault("the model produced an invalid frame"))
                continue
            s._push(out[i, :-1].clone())
            info = self.runner.info[i]
            if int(out[i, -1]) == eos or info.frames >= info.max_frames:
                self._retire(i)
                s._finish()
