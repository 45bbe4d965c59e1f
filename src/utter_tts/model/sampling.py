"""Logit processing and counter-based sampling: the official rules, with randomness keyed on
(seed, frame, codebook) so a seeded request samples the same codes alone or in any batch."""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 without int64 overflow: split c into 16-bit halves
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer ("lowbias32"), exact on every device since no op overflows int64."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniform_noise(
    seeds: torch.Tensor, frame: torch.Tensor | int, codebook: int | torch.Tensor, vocab: int
) -> torch.Tensor:
    """Uniform (0, 1) noise [B, vocab], a pure function of (seed, frame, codebook, token id). With a
    tensor of codebooks, [B, len(codebook), vocab] in one pass (the same values as one call each:
    the code predictor draws its 15 codebooks' noise at once, ~15x fewer kernels)."""
    device = seeds.device
    frame = torch.as_tensor(frame, device=device).expand_as(seeds)
    h = _hash32(seeds & _MASK32)
    h = _hash32(h ^ (seeds >> 32) & _MASK32)
    h = _hash32(h ^ _hash32(frame.to(torch.int64) + 0x9E3779B9))
    if isinstance(codebook, int):  # plain arithmetic: no host-to-device copy (CUDA graph capture)
        h = _hash32(h ^ (codebook * 0x2545F491 & _MASK32))[:, None]
    else:  # a tensor of codebooks on the device, e.g. torch.arange(1, 16, device=...)
        books = torch.as_tensor(codebook, dtype=torch.int64, device=device)
        h = _hash32(h[:, None] ^ (books * 0x2545F491 & _MASK32).view(1, -1))  # [B, K]
    ids = torch.arange(vocab, device=device, dtype=torch.int64)
    h = _hash32(h[..., None] ^ _hash32(ids + 0x632BE5AB))  # [B, K, vocab]
    u = unit_interval(h)
    return u[:, 0] if isinstance(codebook, int) else u


def unit_interval(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes -> float32 in (0, 1), both ends excluded. 23 bits, because with 24 the largest
    value (2^24 - 1 + 0.5) / 2^24 rounds to exactly 1.0 in float32: its Gumbel noise is +inf, and
    -inf + inf = NaN then wins the argmax, picking a masked token (seen on an H100 as a control token
    about once per 10^4 frames)."""
    return ((bits >> 9).to(torch.float32) + 0.5) / float(1 << 23)


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor | None, penalty: torch.Tensor):
    """HF semantics: every token seen so far has its logit divided (if > 0) or multiplied by `penalty`.
    logits [B, V] fp32, history [B, N] token ids (or None), penalty [B]."""
    if history is None or history.shape[1] == 0:
        return logits
    scores = logits.gather(1, history)
    p = penalty.view(-1, 1).to(logits.dtype)
    scores = torch.where(scores < 0, scores * p, scores / p)
    return logits.scatter(1, history, scores)


def filter_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, graph_safe: bool = False
) -> torch.Tensor:
    """HF TopK then TopP warpers, per row. top_k [B] (<=0: off), top_p [B] (>=1: off).
    `graph_safe` skips the host-side shortcut so the op sequence is fixed (CUDA graph capture)."""
    V = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=V), torch.full_like(top_k, V))
    sorted_desc = logits.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(1, (k - 1).view(-1, 1))
    logits = logits.masked_fill(logits < kth, float("-inf"))
    if graph_safe or bool((top_p < 1.0).any()):
        asc, idx = logits.sort(dim=-1, descending=False)
        cum = asc.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p.view(-1, 1))
        remove[:, -1] = False  # always keep the most likely token
        remove &= (top_p < 1.0).view(-1, 1)
        logits = logits.masked_fill(remove.scatter(1, idx, remove), float("-inf"))
    return logits


def choose(
    logits: torch.Tensor,
    do_sample: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    frame: torch.Tensor | int,
    codebook: int,
    graph_safe: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row: argmax where do_sample is False, else a Gumbel-max draw from the
    temperature/top-k/top-p filtered distribution (equal in law to HF's multinomial sampling).
    `noise` may bring this draw's `uniform_noise(seeds, frame, codebook, V)`, computed ahead."""
    greedy = logits.argmax(dim=-1)
    if not graph_safe and not bool(do_sample.any()):
        return greedy
    scaled = logits / temperature.view(-1, 1).clamp(min=1e-5)
    scaled = filter_top_k_top_p(scaled, top_k, top_p, graph_safe)
    u = uniform_noise(seeds, frame, codebook, logits.shape[-1]) if noise is None else noise
    sampled = (scaled - torch.log(-torch.log(u))).argmax(dim=-1)
    return torch.where(do_sample, sampled, greedy)
