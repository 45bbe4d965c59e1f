"""The plain generation loop: prefill, then per frame one talker step and 15 code-predictor steps.

This is the reference path (eager, any device). Its semantics follow the official `generate`:
codebook 0 of frame i is sampled from the talker, its 15 residual codes are predicted when the
frame is fed back, and the token sampled last before `max_new_tokens` never gets residual codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from utter_tts.model.config import SamplingConfig
from utter_tts.model.prompt import Prompt
from utter_tts.model.sampling import apply_repetition_penalty, choose, uniform_noise
from utter_tts.model.talker import Talker


@dataclass
class Trace:
    """Raw logits recorded for parity tests: codebook 0 per step, code predictor per frame."""

    talker_logits: list[torch.Tensor] = field(default_factory=list)  # each [B, V]
    predictor_logits: list[torch.Tensor] = field(default_factory=list)  # each [B, 15, Vcp]


@dataclass
class RowParams:
    """Per-request sampling settings as batched tensors."""

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
    max_new_tokens: torch.Tensor
    seeds: torch.Tensor

    @classmethod
    def stack(cls, settings: list[SamplingConfig], seeds: list[int], device) -> RowParams:
        def t(name, dtype):
            return torch.tensor([getattr(s, name) for s in settings], dtype=dtype, device=device)

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
            max_new_tokens=t("max_new_tokens", torch.long),
            seeds=torch.tensor(seeds, dtype=torch.long, device=device),
        )


def suppressed_ids(vocab_size: int, eos_id: int) -> list[int]:
    """The official rule: the top 1024 codec ids (control tokens) are never sampled, except EOS."""
    return [i for i in range(vocab_size - 1024, vocab_size) if i != eos_id]


def pick_codebook0(
    logits: torch.Tensor, history: torch.Tensor, step: int, p: RowParams, suppress: torch.Tensor, eos_id: int
) -> torch.Tensor:
    logits = apply_repetition_penalty(logits, history, p.repetition_penalty)
    logits = logits.index_fill(1, suppress, float("-inf"))
    too_early = step < p.min_new_tokens
    logits[:, eos_id] = torch.where(
        too_early, torch.full_like(logits[:, eos_id], float("-inf")), logits[:, eos_id]
    )
    return choose(logits, p.do_sample, p.temperature, p.top_k, p.top_p, p.seeds, step, 0)


def predict_residual_codes(
    talker: Talker,
    hidden: torch.Tensor,
    code0: torch.Tensor,
    step: int | torch.Tensor,
    p: RowParams,
    caches: list,
    trace: Trace | None = None,
    graph_safe: bool = False,
) -> torch.Tensor:
    """Codebooks 1..15 for frames whose talker hidden is `hidden` [B, H] and codebook 0 `code0` [B]."""
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


def iter_frames(
    talker: Talker, prompts: list[Prompt], params: RowParams, eos_id: int, trace: Trace | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (codes [B, 16], alive [B]) frame by frame; a row is alive while its frame is real speech.
    Stops when every row has sampled EOS or reached its max_new_tokens."""
    dev = talker.codec_head.weight.device
    dtype = talker.codec_head.weight.dtype
    B = len(prompts)
    lengths = torch.tensor([p.embeds.shape[0] for p in prompts], device=dev)
    L = int(lengths.max())
    embeds = torch.zeros(B, L, prompts[0].embeds.shape[-1], dtype=dtype, device=dev)
    for b, p in enumerate(prompts):
        embeds[b, L - p.embeds.shape[0] :] = p.embeds.to(dtype)
    max_tokens = int(params.max_new_tokens.max())
    suppress = torch.tensor(suppressed_ids(talker.cfg.vocab_size, eos_id), device=dev)

    with torch.no_grad():
        hidden, state = talker.prefill(embeds, lengths, L + max_tokens)
        logits = talker.logits(hidden).float()
    if trace is not None:
        trace.talker_logits.append(logits)
    token = pick_codebook0(logits, None, 0, params, suppress, eos_id)
    history = token[:, None]
    alive = token != eos_id
    n_frames = torch.zeros(B, dtype=torch.long, device=dev)

    for step in range(max_tokens - 1):
        alive &= n_frames < params.max_new_tokens - 1
        if not bool(alive.any()):
            return
        with torch.no_grad():
            codes = predict_residual_codes(talker, hidden, token, step, params, state.predictor_caches, trace)
        n_frames += alive.long()
        yield codes, alive.clone()
        text = torch.stack([p.trailing[step] if step < p.trailing.shape[0] else p.pad_embed for p in prompts])
        with torch.no_grad():
            hidden = talker.decode(talker.frame_embed(codes) + text.to(dtype), state)
            logits = talker.logits(hidden).float()
        if trace is not None:
            trace.talker_logits.append(logits)
        token = pick_codebook0(logits, history, step + 1, params, suppress, eos_id)
        history = torch.cat([history, token[:, None]], dim=1)
        alive &= token != eos_id


def generate_codes(
    talker: Talker,
    prompts: list[Prompt],
    params: RowParams,
    eos_id: int,
    trace: Trace | None = None,
    on_frame: Callable[[int, torch.Tensor, torch.Tensor], bool] | None = None,
) -> list[torch.Tensor]:
    """Codes [F_b, 16] for each prompt. `on_frame(step, codes, alive)` is called per frame (progress);
    returning False stops the batch early."""
    per_row: list[list[torch.Tensor]] = [[] for _ in prompts]
    for step, (codes, alive) in enumerate(iter_frames(talker, prompts, params, eos_id, trace)):
        codes_cpu, alive_cpu = codes.cpu(), alive.cpu()
        for b in range(len(prompts)):
            if alive_cpu[b]:
                per_row[b].append(codes_cpu[b])
        if on_frame is not None and on_frame(step, codes, alive) is False:
            break
    width = talker.cfg.num_code_groups
    return [torch.stack(rows) if rows else torch.zeros(0, width, dtype=torch.long) for rows in per_row]
