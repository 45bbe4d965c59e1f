"""Model runner: static per-slot state and caches, slot prefill, one frame for many streams as a CUDA graph.

A slot holds one stream: its rows of the talker and code-predictor KV caches, its last hidden state
and codebook-0 token, the text embeddings still to feed, its sampling settings and a mask of the
codebook-0 tokens it has said (for the repetition penalty). `step(n)` advances the first n slots by
one frame; on CUDA it replays a graph captured for the smallest (batch, column-span) bucket that fits,
so a frame costs one launch and no host synchronisation until its codes are read.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from utter_tts.engine.host import to_host
from utter_tts.model.config import SamplingConfig
from utter_tts.model.generate import RowParams, predict_residual_codes, suppressed_ids
from utter_tts.model.prompt import Prompt
from utter_tts.model.sampling import choose
from utter_tts.model.talker import KVCache, Talker

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# One capture at a time in the process: a second engine capturing (or allocating) mid-capture
# invalidates the graph (seen on an H100 with Base and VoiceDesign engines warming up together).
_CAPTURE_LOCK = threading.Lock()
MIN_SPAN = 256


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
class SlotInfo:
    frames: int = 0  # frames produced so far
    max_frames: int = 0


class FrameRunner:
    def __init__(
        self,
        talker: Talker,
        eos_id: int,
        max_slots: int = 16,
        max_prompt: int = 512,
        max_frames: int = 2048,
        max_text: int = 512,
        use_graphs: bool | None = None,
    ):
        self.talker = talker
        self.eos_id = eos_id
        p = talker.codec_head.weight
        self.device, self.dtype = p.device, p.dtype
        self.max_slots = max_slots
        self.max_prompt, self.max_frames, self.max_text = max_prompt, max_frames, max_text
        self.max_len = max_prompt + max_frames
        self.use_graphs = (self.device.type == "cuda") if use_graphs is None else use_graphs
        self.batch_buckets = tuple(b for b in BATCH_BUCKETS if b < max_slots) + (max_slots,)
        cfg = talker.cfg
        S, H, V, dev = max_slots, cfg.hidden_size, cfg.vocab_size, self.device
        self.talker_caches = talker.model.new_caches(S, self.max_len, self.dtype, dev)
        self.cp_caches = talker.code_predictor.model.new_caches(
            S, cfg.code_predictor.num_code_groups, self.dtype, dev
        )
        self.hidden = torch.zeros(S, H, dtype=self.dtype, device=dev)
        self.code0 = torch.zeros(S, dtype=torch.long, device=dev)
        self.col = torch.zeros(S, dtype=torch.long, device=dev)
        self.step_idx = torch.zeros(S, dtype=torch.long, device=dev)
        self.tlen = torch.zeros(S, dtype=torch.long, device=dev)
        self.trailing = torch.zeros(S, max_text, H, dtype=self.dtype, device=dev)
        self.pad_embed = torch.zeros(H, dtype=self.dtype, device=dev)
        self.seen = torch.zeros(S, V, dtype=torch.bool, device=dev)
        self.suppress = torch.zeros(V, dtype=torch.bool, device=dev)
        self.suppress[suppressed_ids(V, eos_id)] = True
        self.params = RowParams.stack([SamplingConfig()] * S, [0] * S, dev)
        # per frame: 16 codes, then the next codebook-0 token (read by the host in one copy)
        self.out = torch.zeros(S, cfg.num_code_groups + 1, dtype=torch.long, device=dev)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        # the scheduler's work runs on its own stream: on one stream, a player's codec kernels queue
        # behind whole frame graphs (seen on an H100: the first 80 ms chunk waited ~0.9 s)
        self.stream = torch.cuda.Stream(device=dev) if self.device.type == "cuda" else None
        self.codebook_size = cfg.code_predictor.vocab_size
        self.pool = None
        self.info = [SlotInfo() for _ in range(S)]
        self.host_col = [0] * S  # mirror of `col`, so choosing a span needs no device sync

    # ---- slots ---------------------------------------------------------------------------------------
    def check_fits(self, prompt: Prompt) -> None:
        if prompt.embeds.shape[0] > self.max_prompt:
            raise ValueError(
                f"prompt of {prompt.embeds.shape[0]} positions exceeds the engine's {self.max_prompt}"
            )
        if prompt.trailing.shape[0] > self.max_text:
            raise ValueError(
                f"text of {prompt.trailing.shape[0]} tokens exceeds the engine's {self.max_text}"
            )

    @torch.no_grad()
    def prefill(self, slot: int, prompt: Prompt, sampling: SamplingConfig, seed: int) -> None:
        """Run the prompt of one request into `slot` and sample its first codebook-0 token."""
        self.check_fits(prompt)
        if self.stream is not None:
            # the prompt was built on the submitting thread's stream: wait for it before reading it
            self.stream.wait_stream(torch.cuda.default_stream(self.device))
        talker = self.talker
        L = prompt.embeds.shape[0]
        row = slice(slot, slot + 1)
        caches = [c.view(row, self.max_len) for c in self.talker_caches]
        cols = torch.arange(L, device=self.device)[None]
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        embeds = prompt.embeds.to(self.device, self.dtype)[None]
        h = talker.model.run(embeds, cols, cols, zero, talker.rotary, caches)[:, -1]
        p1 = RowParams.stack([sampling], [seed], self.device)
        for name in p1.__dataclass_fields__:
            getattr(self.params, name)[slot] = getattr(p1, name)[0]
        logits = talker.logits(h).float()
        tok = self._pick(logits, self.seen[row].zero_(), torch.zeros_like(zero), p1, graph_safe=False)
        self.hidden[slot] = h[0]
        self.code0[slot] = tok[0]
        self.seen[slot, tok[0]] = True
        self.col[slot] = L
        self.step_idx[slot] = 0
        n = prompt.trailing.shape[0]
        self.trailing[slot, :n] = prompt.trailing.to(self.dtype)
        self.tlen[slot] = n
        self.pad_embed.copy_(prompt.pad_embed.to(self.dtype))
        max_frames = min(sampling.max_new_tokens - 1, self.max_frames)
        self.info[slot] = SlotInfo(frames=0, max_frames=max_frames)
        self.host_col[slot] = L

    def first_token(self, slot: int) -> int:
        return int(self.code0[slot])

    @torch.no_grad()
    def move(self, src: int, dst: int) -> None:
        """Copy slot `src` into `dst` (keeps the live slots packed at the front)."""
        if src == dst:
            return
        for caches in (self.talker_caches, self.cp_caches):
            for c in caches:
                c.k[dst].copy_(c.k[src])
                c.v[dst].copy_(c.v[src])
        for t in (
            self.hidden,
            self.code0,
            self.col,
            self.step_idx,
            self.tlen,
            self.trailing,
            self.seen,
            self.out,
        ):
            t[dst].copy_(t[src])
        for name in self.params.__dataclass_fields__:
            t = getattr(self.params, name)
            t[dst].copy_(t[src])
        self.info[dst] = self.info[src]
        self.host_col[dst] = self.host_col[src]

    def clear(self, slot: int) -> None:
        """Forget a retired slot; it may still run as padding in a batch bucket, so keep it in bounds."""
        self.col[slot] = 0
        self.step_idx[slot] = 0
        self.host_col[slot] = 0
        self.info[slot] = SlotInfo()

    # ---- one frame -----------------------------------------------------------------------------------
    def _pick(self, logits, seen, step, p: RowParams, graph_safe: bool) -> torch.Tensor:
        rep = p.repetition_penalty.view(-1, 1)
        logits = torch.where(seen, torch.where(logits < 0, logits * rep, logits / rep), logits)
        logits = logits.masked_fill(self.suppress, float("-inf"))
        early = step < p.min_new_tokens
        eos = logits[:, self.eos_id]
        logits[:, self.eos_id] = torch.where(early, torch.full_like(eos, float("-inf")), eos)
        return choose(logits, p.do_sample, p.temperature, p.top_k, p.top_p, p.seeds, step, 0, graph_safe)

    def _rows(self, B: int) -> RowParams:
        return RowParams(
            **{name: getattr(self.params, name)[:B] for name in self.params.__dataclass_fields__}
        )

    def _frame(self, B: int, span: int, graph_safe: bool) -> None:
        """Advance slots [0, B) by one frame, entirely in device tensors (capturable)."""
        talker = self.talker
        p = self._rows(B)
        step = self.step_idx[:B]
        cp_caches = [c.view(slice(0, B)) for c in self.cp_caches]
        codes = predict_residual_codes(
            talker, self.hidden[:B], self.code0[:B], step, p, cp_caches, None, graph_safe
        )
        rows = torch.arange(B, device=self.device)
        text = self.trailing[rows, step.clamp(max=self.max_text - 1)]
        text = torch.where((step < self.tlen[:B])[:, None], text, self.pad_embed)
        x = (talker.frame_embed(codes) + text)[:, None]
        caches = [c.view(slice(0, B), span) for c in self.talker_caches]
        cols = self.col[:B, None].clamp(max=span - 1)  # padding rows stay in bounds
        zero = torch.zeros(B, dtype=torch.long, device=self.device)
        h = talker.model.run(x, cols, cols, zero, talker.rotary, caches)[:, -1]
        logits = talker.logits(h).float()
        tok = self._pick(logits, self.seen[:B], step + 1, p, graph_safe)
        self.out[:B, :-1].copy_(codes)
        self.out[:B, -1].copy_(tok)
        self.hidden[:B].copy_(h)
        self.code0[:B].copy_(tok)
        self.seen[:B].scatter_(1, tok[:, None], True)
        self.col[:B].add_(1)
        self.step_idx[:B].add_(1)

    def step(self, n: int) -> torch.Tensor:
        """Advance the first n slots by one frame; returns host codes [n, 17] (16 codes, next token)."""
        B = bucket(n, self.batch_buckets)
        span = span_bucket(max(self.host_col[:n]) + 1, self.max_len)
        if self.use_graphs:
            graph = self.graphs.get((B, span))
            if graph is None:
                graph = self._capture(B, span)
            graph.replay()
        else:
            with torch.no_grad():
                self._frame(B, span, graph_safe=False)
        out = to_host(self.out[:n])
        for i in range(n):
            self.info[i].frames += 1
            self.host_col[i] += 1
        return out

    def _capture(self, B: int, span: int) -> torch.cuda.CUDAGraph:
        with _CAPTURE_LOCK:
            return self._capture_locked(B, span)

    def _capture_locked(self, B: int, span: int) -> torch.cuda.CUDAGraph:
        log.info("capturing frame graph: batch %d, span %d", B, span)
        saved = [t.clone() for t in self._mutable()]  # cache columns written here are rewritten later
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm up kernels and allocator outside the graph
                self._frame(B, span, graph_safe=True)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: player threads keep decoding audio on the GPU while the scheduler captures
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), torch.no_grad():
            self._frame(B, span, graph_safe=True)
        self.pool = graph.pool()
        for t, s in zip(self._mutable(), saved):  # warm-up and capture ran frames: undo them
            t.copy_(s)
        self.graphs[(B, span)] = graph
        return graph

    def warmup(self, spans: tuple[int, ...] = (MIN_SPAN,)) -> int:
        """Capture the graphs of every batch bucket for these column spans before serving."""
        if not self.use_graphs:
            return 0
        n = 0
        for span in spans:
            span = span_bucket(span, self.max_len)
            for B in self.batch_buckets:
                if (B, span) not in self.graphs:
                    self._capture(B, span)
                    n += 1
        return n

    def _mutable(self) -> list[torch.Tensor]:
        return [self.hidden, self.code0, self.col, self.step_idx, self.seen, self.out]


__all__ = ["FrameRunner", "KVCache"]
