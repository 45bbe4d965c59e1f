"""The frame step: the one place a frame is made, for the plain loop and the engine alike.

A `FrameBatch` holds a fixed number of slots, one stream each: its rows of the talker and code-predictor
KV caches, its last hidden state and codebook-0 token, its cache column and frame index, the text still to
feed, a mask of the codebook-0 tokens it has said (repetition penalty) and its sampling settings.
`prefill` puts a prompt into a slot and samples its first codebook-0 token; `step(n)` advances slots
[0, n) by one frame: the code predictor's 15 codebooks for the current codebook 0, then the talker step
that samples the next codebook 0. Everything stays in device tensors (no host sync), so the engine can
capture a step in a CUDA graph; `out` holds each slot's 16 codes and next token after a step.

Semantics follow the official `generate`: codebook 0 of frame i is sampled from the talker, its 15
residual codes are predicted when the frame is fed back, and the token sampled last before the frame
budget never gets residual codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from utter_tts.device import to_device
from utter_tts.model.config import SamplingConfig
from utter_tts.model.layers import KVCache
from utter_tts.model.prompt import Prompt
from utter_tts.model.sampling import choose, uniform_noise
from utter_tts.model.talker import Talker


@dataclass
class Trace:
    """Raw logits recorded for parity tests: codebook 0 per step, code predictor per frame."""

    talker_logits: list[torch.Tensor] = field(default_factory=list)  # each [B, V]
    predictor_logits: list[torch.Tensor] = field(default_factory=list)  # each [B, 15, Vcp]


@dataclass
class SamplingParams:
    """Per-slot sampling settings as device tensors (one row per slot)."""

    do_sample: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    repetition_penalty: torch.Tensor
    sub_do_sample: torch.Tensor
    sub_temperature: torch.Tensor
    sub_top_k: torch.Tensor
    sub_top_p: torch.Tensor
    min_new_tokens: torch.Tensor
    seeds: torch.Tensor

    @classmethod
    def stack(cls, settings: list[SamplingConfig], seeds: list[int], device) -> SamplingParams:
        def t(name, dtype):  # no wait on the stream (pinned, non-blocking: `to_device`)
            return to_device([getattr(s, name) for s in settings], dtype, torch.device(device))

        return cls(
            do_sample=t("do_sample", torch.bool),
            temperature=t("temperature", torch.float32),
            top_k=t("top_k", torch.long),
            top_p=t("top_p", torch.float32),
            repetition_penalty=t("repetition_penalty", torch.float32),
            sub_do_sample=t("subtalker_dosample", torch.bool),
            sub_temperature=t("subtalker_temperature", torch.float32),
            sub_top_k=t("subtalker_top_k", torch.long),
            sub_top_p=t("subtalker_top_p", torch.float32),
            min_new_tokens=t("min_new_tokens", torch.long),
            seeds=to_device(seeds, torch.long, torch.device(device)),
        )

    def rows(self, rows: slice) -> SamplingParams:
        return SamplingParams(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def suppressed_ids(vocab_size: int, eos_id: int) -> list[int]:
    """The official rule: the top 1024 codec ids (control tokens) are never sampled, except EOS."""
    return [i for i in range(vocab_size - 1024, vocab_size) if i != eos_id]


def pick_codebook0(
    logits: torch.Tensor,
    seen: torch.Tensor,
    step: torch.Tensor | int,
    p: SamplingParams,
    suppress: torch.Tensor,
    eos_id: int,
    graph_safe: bool = False,
) -> torch.Tensor:
    """The talker's token: HF's repetition penalty over the tokens said so far (`seen` [B, V] bool: a
    token said twice is penalised once, as HF's gather/scatter does), control ids suppressed (`suppress`
    [V] bool), EOS blocked while `step` < min_new_tokens, then `choose`."""
    rep = p.repetition_penalty.view(-1, 1)
    logits = torch.where(seen, torch.where(logits < 0, logits * rep, logits / rep), logits)
    logits = logits.masked_fill(suppress, float("-inf"))
    early = step < p.min_new_tokens
    eos = logits[:, eos_id]
    logits[:, eos_id] = torch.where(early, torch.full_like(eos, float("-inf")), eos)
    return choose(logits, p.do_sample, p.temperature, p.top_k, p.top_p, p.seeds, step, 0, graph_safe)


def predict_residual_codes(
    talker: Talker,
    hidden: torch.Tensor,
    code0: torch.Tensor,
    step: torch.Tensor,
    p: SamplingParams,
    caches: list[KVCache],
    trace: Trace | None = None,
    graph_safe: bool = False,
) -> torch.Tensor:
    """Codebooks 0..15 [B, 16] of frames whose talker hidden is `hidden` [B, H] and codebook 0 `code0` [B]."""
    cp = talker.code_predictor
    x = torch.stack([hidden, talker.codec_embed(code0)], dim=1)
    codes = [code0]
    logits_seen = []
    tables = cp.step_tables(x.shape[0], x.device, hidden.dtype)
    noise = None
    if graph_safe or bool(p.sub_do_sample.any()):  # every codebook's noise in one pass
        books = torch.arange(1, cp.num_steps + 1, device=hidden.device)  # no host copy: graph-safe
        noise = uniform_noise(p.seeds, step, books, cp.lm_head[0].out_features)
    for k in range(1, cp.num_steps + 1):
        h = cp.step(x, 0 if k == 1 else k, caches, tables)
        logits = cp.lm_head[k - 1](h).float()
        logits_seen.append(logits)
        code = choose(
            logits,
            p.sub_do_sample,
            p.sub_temperature,
            p.sub_top_k,
            p.sub_top_p,
            p.seeds,
            step,
            k,
            graph_safe,
            None if noise is None else noise[:, k - 1],
        )
        codes.append(code)
        if k < cp.num_steps:
            x = cp.embed(k, code)[:, None]
    if trace is not None:
        trace.predictor_logits.append(torch.stack(logits_seen, dim=1))
    return torch.stack(codes, dim=1)


class FrameBatch:
    """Static decoding state of `slots` streams and the frame step that advances them (see module doc)."""

    def __init__(self, talker: Talker, eos_id: int, slots: int, max_len: int, max_text: int):
        self.talker = talker
        self.eos_id = eos_id
        p = talker.codec_head.weight
        self.device, self.dtype = p.device, p.dtype
        self.slots, self.max_len, self.max_text = slots, max_len, max_text
        cfg = talker.cfg
        S, H, V, dev = slots, cfg.hidden_size, cfg.vocab_size, self.device
        # stacked (views of one tensor per keys and values): the fused step may run a pass in one launch
        self.talker_caches = talker.model.new_caches(S, max_len, self.dtype, dev, stacked=True)
        self.predictor_caches = talker.code_predictor.new_caches(S, self.dtype, dev)
        self.hidden = torch.zeros(S, H, dtype=self.dtype, device=dev)
        self.code0 = torch.zeros(S, dtype=torch.long, device=dev)
        self.col = torch.zeros(S, dtype=torch.long, device=dev)  # cache column the next talker step writes
        self.frame = torch.zeros(S, dtype=torch.long, device=dev)  # frames made so far
        self.text_len = torch.zeros(S, dtype=torch.long, device=dev)
        self.text = torch.zeros(S, max_text, H, dtype=self.dtype, device=dev)  # text to feed, one per frame
        self.pad_embed = torch.zeros(H, dtype=self.dtype, device=dev)  # fed once the text has run out
        self.seen = torch.zeros(S, V, dtype=torch.bool, device=dev)
        self.suppress = torch.zeros(V, dtype=torch.bool, device=dev)
        self.suppress[suppressed_ids(V, eos_id)] = True
        self.params = SamplingParams.stack([SamplingConfig()] * S, [0] * S, dev)
        # after a step: each slot's 16 codes, then its next codebook-0 token (read by the host in one copy)
        self.out = torch.zeros(S, cfg.num_code_groups + 1, dtype=torch.long, device=dev)

    def fits(self, prompt: Prompt, frames: int) -> str | None:
        """Why `prompt` with a budget of `frames` cannot run in a slot, or None when it fits."""
        if prompt.embeds.shape[0] + frames > self.max_len:
            return f"a prompt of {prompt.embeds.shape[0]} positions and {frames} frames exceed {self.max_len}"
        if prompt.trailing.shape[0] > self.max_text:
            return f"a text of {prompt.trailing.shape[0]} tokens exceeds {self.max_text}"
        return None

    @torch.no_grad()
    def prefill(
        self, slot: int, prompt: Prompt, sampling: SamplingConfig, seed: int, trace: Trace | None = None
    ) -> torch.Tensor:
        """Run `prompt` into `slot` and sample its first codebook-0 token (returned, on the device)."""
        talker = self.talker
        L = prompt.embeds.shape[0]
        row = slice(slot, slot + 1)
        caches = [c.view(row) for c in self.talker_caches]
        cols = torch.arange(L, device=self.device)[None]
        start = torch.zeros(1, dtype=torch.long, device=self.device)
        embeds = prompt.embeds.to(self.device, self.dtype)[None]
        h = talker.model.run(embeds, cols, cols, start, talker.rotary, caches)[:, -1]
        params = SamplingParams.stack([sampling], [seed], self.device)
        for f in fields(params):
            getattr(self.params, f.name)[slot] = getattr(params, f.name)[0]
        logits = talker.logits(h).float()
        if trace is not None:
            trace.talker_logits.append(logits)
        token = pick_codebook0(logits, self.seen[row].zero_(), start, params, self.suppress, self.eos_id)
        self.hidden[slot] = h[0]
        self.code0[slot] = token[0]
        self.seen[slot, token[0]] = True
        self.col[slot] = L
        self.frame[slot] = 0
        n = prompt.trailing.shape[0]
        self.text[slot, :n] = prompt.trailing.to(self.dtype)
        self.text_len[slot] = n
        self.pad_embed.copy_(prompt.pad_embed.to(self.dtype))
        return token[0]

    @torch.no_grad()
    def append_text(self, slot: int, ids: list[int]) -> None:
        """Text ids for a slot's next frames, after those it has (a text still arriving)."""
        if not ids:
            return
        start = int(self.text_len[slot])
        ids_t = torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)
        self.text[slot, start : start + len(ids)] = self.talker.text_embed(ids_t).to(self.dtype)
        self.text_len[slot] = start + len(ids)

    @torch.no_grad()
    def move(self, src: int, dst: int) -> None:
        """Copy slot `src` into `dst` (the engine keeps its live slots packed at the front)."""
        if src == dst:
            return
        tensors = [t for c in (*self.talker_caches, *self.predictor_caches) for t in (c.k, c.v)]
        tensors += [self.hidden, self.code0, self.col, self.frame, self.text_len, self.text, self.seen]
        tensors += [self.out]
        tensors += [getattr(self.params, f.name) for f in fields(self.params)]
        # one multi-tensor launch per dtype, not ~85 copies: a retiring stream's copies were issued one by
        # one on the scheduler's thread, and in the tail of 64 streams ending the GPU waited for them (an
        # H200 trace: ~28 ms idle behind device-to-device copies in a 1.3 s run)
        torch._foreach_copy_([t[dst] for t in tensors], [t[src] for t in tensors])

    def clear(self, slot: int) -> None:
        """Forget a retired slot; it may still run as padding in a batch, so keep it in bounds."""
        self.col[slot] = 0
        self.frame[slot] = 0

    @torch.no_grad()
    def step(self, n: int, span: int | None = None, graph_safe: bool = False, trace: Trace | None = None):
        """Advance slots [0, n) by one frame, entirely in device tensors; attention reads only the first
        `span` cache columns (the engine buckets it). `graph_safe`: a fixed op sequence (CUDA graphs)."""
        talker = self.talker
        span = span or self.max_len
        rows = slice(0, n)
        p = self.params.rows(rows)
        frame = self.frame[rows]
        caches = [c.view(rows) for c in self.predictor_caches]
        codes = predict_residual_codes(
            talker, self.hidden[rows], self.code0[rows], frame, p, caches, trace, graph_safe
        )
        index = torch.arange(n, device=self.device)
        text = self.text[index, frame.clamp(max=self.max_text - 1)]
        text = torch.where((frame < self.text_len[rows])[:, None], text, self.pad_embed)
        x = (talker.frame_embed(codes) + text)[:, None]
        caches = [c.view(rows, span) for c in self.talker_caches]
        cols = self.col[rows, None].clamp(max=span - 1)  # padding slots stay in bounds
        start = torch.zeros(n, dtype=torch.long, device=self.device)
        h = talker.model.run(x, cols, cols, start, talker.rotary, caches)[:, -1]
        logits = talker.logits(h).float()
        if trace is not None:
            trace.talker_logits.append(logits)
        token = pick_codebook0(logits, self.seen[rows], frame + 1, p, self.suppress, self.eos_id, graph_safe)
        self.out[rows, :-1].copy_(codes)
        self.out[rows, -1].copy_(token)
        self.hidden[rows].copy_(h)
        self.code0[rows].copy_(token)
        self.seen[rows].scatter_(1, token[:, None], True)
        self.col[rows].add_(1)
        self.frame[rows].add_(1)
