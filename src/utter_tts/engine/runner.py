"""The runner executes: it owns a `FrameBatch` of slots, prefills a slot, and runs one frame for the first
n slots as a CUDA graph captured per (batch bucket, column span) bucket, returning a typed `StepResult`.

It keeps no books about requests (the scheduler does); it only knows slots.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from utter_tts.device import CAPTURE_LOCK, start_copy, to_host
from utter_tts.errors import InvalidInput
from utter_tts.model.config import SamplingConfig
from utter_tts.model.frame import FrameBatch
from utter_tts.model.prompt import Prompt
from utter_tts.model.talker import Talker
from utter_tts.stack import installed_triton_problem

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MIN_SPAN = 256
# the fused frame's GEMM weights: "bf16" as loaded (the model's dtype), or 8 bits scaled per output channel
WEIGHT_MODES = ("bf16", "int8", "fp8")
FP8_CAPABILITY = (8, 9)  # Triton converts fp8 e4m3 on Ada / Hopper and newer only (not sm_80 / sm_86)


def kernels_available(device: torch.device) -> bool:
    """Whether the fused kernels run on `device`: a CUDA device (Ampere or newer) with the Triton they
    are written for (utter_tts/stack.json; an older or missing one: one log line, the eager engine)."""
    if device.type != "cuda":
        return False
    if installed_triton_problem() is not None:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def check_weights(weights: str, device: torch.device, kernels: bool) -> None:
    """Refuse (InvalidInput naming `weights`) a weight mode that cannot run: unknown, 8-bit without the
    fused kernels (the eager step has no 8-bit path), or fp8 on a GPU without fp8 conversions."""
    if weights not in WEIGHT_MODES:
        raise InvalidInput(
            f"weights must be one of {', '.join(WEIGHT_MODES)}, not {weights!r}", param="weights"
        )
    if weights == "bf16":
        return
    if not kernels:
        raise InvalidInput(
            f"weights={weights!r} needs the fused kernels (a CUDA GPU of compute capability 8.0 or newer, "
            f"with the Triton of utter_tts/stack.json); this engine runs the eager frame step on {device}",
            param="weights",
        )
    if weights == "fp8" and device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < FP8_CAPABILITY:
            raise InvalidInput(
                f"weights='fp8' needs compute capability 8.9 or newer (Ada, Hopper); this GPU is "
                f"sm_{cap[0]}{cap[1]}: use weights='int8'",
                param="weights",
            )


def capture_next(deferred: list[tuple[int, int]], graphs: dict, capture: Callable[..., object]) -> bool:
    """Capture the first of a background warm-up's deferred graphs not captured yet (taking it off the
    list); False when none is left. The frame's graphs and the codec's keep their own lists."""
    while deferred:
        key = deferred.pop(0)
        if key not in graphs:
            try:
                capture(*key)
            except Exception:  # e.g. a capture another thread's CUDA work invalidated: made on first use
                log.exception("a background graph capture failed (%s); it is made when first needed", key)
            # what it made lives as long as the process: out of the collector's full passes, as the
            # foreground warm-up's objects are (Engine.warmup); a freeze moves lists, it walks nothing
            gc.freeze()
            return True
    return False


def bucket(n: int, buckets: tuple[int, ...]) -> int:
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


def span_bucket(needed: int, max_len: int) -> int:
    """Attention reads only the first `span` columns; powers of two bound the waste to 2x."""
    span = MIN_SPAN
    while span < needed:
        span *= 2
    return min(span, max_len)


@dataclass
class Launched:
    """A frame on its way: the first n slots' results land in `host` once `done` has fired."""

    n: int
    host: torch.Tensor
    done: torch.cuda.Event | None


@dataclass
class StepResult:
    """One frame of the first n slots, on the host."""

    codes: torch.Tensor  # [n, 16]
    ended: list[bool]  # the slot's next codebook-0 token is the end token: its stream is done
    valid: list[bool]  # every code is decodable (a control id or out-of-range code would not be)


class Runner:
    def __init__(
        self,
        talker: Talker,
        eos_id: int,
        max_slots: int = 16,
        max_prompt: int = 512,
        max_frames: int = 2048,
        max_text: int = 512,
        use_graphs: bool | None = None,
        kernels: bool | None = None,
        weights: str = "bf16",
    ):
        self.eos_id = eos_id
        self.max_slots, self.max_prompt, self.max_frames = max_slots, max_prompt, max_frames
        self.batch = FrameBatch(talker, eos_id, max_slots, max_prompt + max_frames, max_text)
        self.device = self.batch.device
        self.max_len = self.batch.max_len
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        # the fused kernels (engine/fused.py) run the frame on CUDA; the eager step is the reference
        if kernels is None:
            kernels = kernels_available(self.device)
        check_weights(weights, self.device, kernels)
        self.weights = weights
        self.fused = None
        if kernels:
            # imported here: the kernels need Triton, which a CPU-only install does not have
            from utter_tts.engine.fused import FusedFrame

            self.fused = FusedFrame(self.batch, weights)
        self.batch_buckets = tuple(b for b in BATCH_BUCKETS if b < max_slots) + (max_slots,)
        self.codebook_size = talker.cfg.code_predictor.vocab_size
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.deferred: list[tuple[int, int]] = []  # graphs a background warm-up has still to capture
        self.pool = None
        # the scheduler's work runs on its own CUDA stream: on one stream, a player's codec kernels queue
        # behind whole frame graphs (seen on an H100: the first 80 ms chunk waited ~0.9 s)
        self.cuda_stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None
        self.host_col = [0] * max_slots  # mirror of the slots' cache columns: a span needs no device sync

    def check_fits(self, rows: int, text_rows: int) -> None:
        """ValueError when a prompt of `rows` positions and `text_rows` text rows fed later exceeds the
        static shapes."""
        if rows > self.max_prompt:
            raise ValueError(f"prompt of {rows} positions exceeds the engine's {self.max_prompt}")
        if text_rows > self.batch.max_text:
            raise ValueError(f"text of {text_rows} tokens exceeds the engine's {self.batch.max_text}")

    def after_callers(self) -> None:
        """Order this runner's stream after the callers' (the default stream): what they made there (voice
        tensors, a direct caller's prompts) is complete before the runner's work reads it."""
        if self.cuda_stream is not None:
            self.cuda_stream.wait_stream(torch.cuda.default_stream(self.device))

    def prefill(self, first: int, jobs: list[tuple[Prompt, SamplingConfig, int]]) -> list[bool]:
        """Put prompts (prompt, sampling, seed) into slots first, first+1, ...; for each, True when its
        first token already ends it. Fused: all prompts in one packed pass; eager: one by one."""
        self.after_callers()  # prompts may have been built on the callers' stream
        if self.fused is not None:
            tokens = self.fused.prefill(first, *map(list, zip(*jobs)))
        else:
            tokens = torch.stack([self.batch.prefill(first + i, *job) for i, job in enumerate(jobs)])
        for i, (prompt, _, _) in enumerate(jobs):
            self.host_col[first + i] = prompt.embeds.shape[0]
        return (to_host(tokens) == self.eos_id).tolist()

    def move(self, src: int, dst: int) -> None:
        self.batch.move(src, dst)
        self.host_col[dst] = self.host_col[src]

    def clear(self, slot: int) -> None:
        self.batch.clear(slot)
        self.host_col[slot] = 0

    def step(self, n: int) -> StepResult:
        """Advance the first n slots by one frame and wait for its results."""
        return self.collect(self.launch(n))

    def launch(self, n: int, hold: list[int] | None = None) -> Launched:
        """Start a frame of the first n slots; its results come back through `collect`. The host may keep
        books (and launch the next frame) meanwhile: work enqueued later on the stream runs after it.
        `hold`: slots among them whose stream waits for its text (dual-track): the frame runs them as
        padding and puts their state back (the cache column it wrote is written again when they go on)."""
        saved = None
        if hold:
            index = torch.tensor(hold, dtype=torch.long).to(self.device, non_blocking=True)
            saved = [t.index_select(0, index) for t in self._mutable()]
        B = bucket(n, self.batch_buckets)
        # fused attention reads only the columns written: one graph per batch serves every length
        span = self.max_len if self.fused else span_bucket(max(self.host_col[:n]) + 1, self.max_len)
        graph = self.graphs.get((B, span)) if self.use_graphs else None
        if graph is None and self.use_graphs and (B, span) not in self.deferred:
            graph = self._capture(B, span)
        if graph is not None:
            graph.replay()
        else:  # no graphs, or its capture is deferred (warm-up in the background): the same kernels, eagerly
            self._step(B, span)
        [host], done = start_copy([self.batch.out[:n]])
        if saved is not None:
            for t, kept in zip(self._mutable(), saved):
                t.index_copy_(0, index, kept)
        for i in range(n):
            self.host_col[i] += 0 if hold and i in hold else 1
        return Launched(n, host, done)

    def collect(self, launched: Launched) -> StepResult:
        """Wait for a launched frame and read its results."""
        if launched.done is not None:
            launched.done.synchronize()
        out = launched.host
        codes = out[:, :-1]
        valid = ((codes >= 0) & (codes < self.codebook_size)).all(dim=1)
        return StepResult(codes, (out[:, -1] == self.eos_id).tolist(), valid.tolist())

    def _step(self, B: int, span: int, graph_safe: bool = False) -> None:
        if self.fused is not None:
            self.fused.step(B)
        else:
            self.batch.step(B, span, graph_safe=graph_safe)

    # ---- CUDA graphs ---------------------------------------------------------------------------------
    def _capture(self, B: int, span: int) -> torch.cuda.CUDAGraph:
        with CAPTURE_LOCK:
            log.info("capturing frame graph: batch %d, span %d", B, span)
            saved = [t.clone() for t in self._mutable()]  # cache columns written here are rewritten later
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # warm up kernels and allocator outside the graph
                    self._step(B, span, graph_safe=True)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: player threads keep decoding audio on the GPU while the scheduler captures
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                self._step(B, span, graph_safe=True)
            self.pool = graph.pool()
            for t, s in zip(self._mutable(), saved):  # warm-up and capture ran frames: undo them
                t.copy_(s)
            self.graphs[(B, span)] = graph
            return graph

    def warmup(self, spans: tuple[int, ...] = (MIN_SPAN,), now: int | None = None) -> int:
        """Capture the graphs of every batch bucket for these column spans before serving; with `now`, only
        those of the buckets up to `now` rows, the others deferred: frames of those run eagerly until
        `capture_deferred` (called while the engine is idle) has captured them."""
        if self.fused is not None:
            self.fused.warm_prefill(self.max_slots * self.max_prompt)
        if not self.use_graphs:
            return 0
        n, later = 0, []
        for span in sorted({self.max_len} if self.fused else {span_bucket(s, self.max_len) for s in spans}):
            for B in self.batch_buckets:
                if (B, span) in self.graphs:
                    continue
                if now is not None and B > now:
                    later.append((B, span))
                    continue
                self._capture(B, span)
                n += 1
        self.deferred += later  # only now: the scheduler's thread takes them from here when idle
        return n

    def capture_deferred(self) -> bool:
        """Capture the next deferred graph (smallest batch first); False when none is left."""
        return capture_next(self.deferred, self.graphs, self._capture)

    def _mutable(self) -> list[torch.Tensor]:
        b = self.batch
        return [b.hidden, b.code0, b.col, b.frame, b.seen, b.out]


@functools.lru_cache(maxsize=8)  # asked per /health and model-info call; the answer never changes
def attention_backend(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> str:
    """Which attention kernel runs: PyTorch SDPA over the masked static cache, and the kernel SDPA picks
    for a decode step's shapes on this GPU (on an H100 the profile shows cuDNN's; the flash-attn package
    is not used by the engine)."""
    if device.type != "cuda":
        return "sdpa (cpu)"
    names = {0: "math", 1: "flash", 2: "memory-efficient", 3: "cuDNN"}  # torch.nn.attention.SDPBackend
    try:
        q = torch.zeros(1, 8, 2, 128, device=device, dtype=dtype)
        k = torch.zeros(1, 8, 256, 128, device=device, dtype=dtype)
        mask = torch.ones(1, 1, 2, 256, dtype=torch.bool, device=device)
        choice = int(torch._fused_sdp_choice(q, k, k, mask, 0.0, False))
        return f"sdpa ({names.get(choice, str(choice))} kernel, masked static cache)"
    except Exception:  # a private helper: if it moves, say less rather than fail
        return "sdpa (masked static cache)"
