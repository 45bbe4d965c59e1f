"""Token choice in one launch: penalties and masks, greedy or seeded top-k/top-p Gumbel-max, embedding gather.

One program per row holds the row's logits (V <= 4096) in registers, all in fp32. Semantics are the
eager ones: `model.frame.pick_codebook0` (repetition penalty over a seen-mask, suppressed ids, EOS held back
while frame < min_new_tokens) followed by `model.sampling.choose` (argmax where do_sample is False;
else logits / temperature, HF top-k then top-p, then argmax of logits - log(-log(u)) with OUR
counter-based noise u = uniform_noise(seed, frame, codebook, id), reproduced bit for bit in-kernel).

No sort: the k-th largest value is found by a radix select over the float's order-preserving integer key
(8 histograms of 4 bits by default), and the top-p cut by bisection over the same key (the smallest value
whose mass at or below it exceeds 1 - top_p). Top-k then equals the reference exactly (both keep every
value >= the k-th, ties included). Top-p differs from the reference's sort + cumsum only (a) when a
cumulative sum lands within float rounding of 1 - top_p, and (b) on ties at the cut: we keep every token
equal to the cut value, the reference keeps the ones its (unstable) sort happens to put last. Argmax ties
go to the lowest index, as torch. Division (penalty, temperature) is correctly rounded (div_rn) like
torch's.

The optional `Embed` epilogue gathers embedding rows of the chosen tokens in the same launch: the
next step's input (`out[m] = table[t]`) and the running sum of codebook embeddings that feeds the
talker (`acc[m] += table[t]`, then `+ add[m]`, rounded to acc's dtype after each add, like torch's
step-by-step sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton.language as tl

from utter_tts.kernels._jit import jit, next_pow2, pdl_wait

# ---- the noise: model.sampling.uniform_noise in uint32 arithmetic -----------------------------------------


@jit
def _hash32(x):
    # "lowbias32", as model.sampling._hash32 (uint32 wraps like its masked int64 arithmetic)
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@jit
def _row_key(seed, frame, codebook):
    """The per-row part of the noise hash (int64 seed, integer frame and codebook)."""
    h = _hash32((seed & 0xFFFFFFFF).to(tl.uint32))
    h = _hash32(h ^ ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32))
    h = _hash32(h ^ _hash32(frame.to(tl.uint32) + 0x9E3779B9))
    return _hash32(h ^ (codebook.to(tl.uint32) * 0x2545F491))


@jit
def _noise(key, ids):
    """uniform (0, 1) noise of token ids [BLOCK] for a row key: 23 bits, both ends excluded."""
    h = _hash32(key ^ _hash32(ids.to(tl.uint32) + 0x632BE5AB))
    return ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)


# integer scalars that may equal 1 must not become constexprs (Triton specialises 1), nor recompile per value
@jit(do_not_specialize=["frame_scalar", "codebook"])
def _noise_kernel(
    seeds_ptr,
    frame_ptr,
    frame_scalar,
    codebook,
    out_ptr,
    V,
    FRAME_TENSOR: tl.constexpr,
    BLOCK_V: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    m = tl.program_id(0)
    ids = tl.arange(0, BLOCK_V)
    frame = tl.load(frame_ptr + m) if FRAME_TENSOR else frame_scalar
    key = _row_key(tl.load(seeds_ptr + m), frame, codebook)
    tl.store(out_ptr + m * V + ids, _noise(key, ids), mask=ids < V)


def noise(seeds: torch.Tensor, frame: torch.Tensor | int, codebook: int, vocab: int) -> torch.Tensor:
    """The sampler's noise alone, [M, vocab] fp32: equal bit for bit to model.sampling.uniform_noise."""
    M = seeds.shape[0]
    out = torch.empty(M, vocab, dtype=torch.float32, device=seeds.device)
    is_t = isinstance(frame, torch.Tensor)
    _noise_kernel[(M,)](
        seeds,
        frame if is_t else seeds,
        0 if is_t else int(frame),
        int(codebook),
        out,
        vocab,
        FRAME_TENSOR=is_t,
        BLOCK_V=next_pow2(vocab),
    )
    return out


# ---- order-preserving keys of fp32 values -----------------------------------------------------------------


@jit
def _key_of(x):
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b).to(tl.int64)


@jit
def _value_of(key):
    b = key.to(tl.int32)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b).to(tl.float32, bitcast=True)


@jit
def _kth_largest(s, valid, k, BITS: tl.constexpr, EARLY: tl.constexpr):
    """The k-th largest of s over `valid` lanes, duplicates counted (= sort(desc)[k - 1]): a radix select
    over the order-preserving 32-bit key, BITS a pass, from the top (8 small histograms at 4 bits instead
    of the 32 counting reductions a bisection needs). EARLY: once the digit's bin holds exactly the tokens
    still needed, the k-th is the smallest of them (one min instead of the remaining passes; logits are
    sparse at the top, so it often ends a pass or two early)."""
    key = _key_of(s) + 2147483648  # [0, 2^32): unsigned order
    NB: tl.constexpr = 1 << BITS
    P: tl.constexpr = 32 // BITS
    bins = tl.arange(0, NB)
    remaining = k
    prefix = tl.zeros([], dtype=tl.int64)
    found = tl.full([], -1, dtype=tl.int64)  # the k-th's key once known early
    for p in tl.static_range(P):
        if found < 0:
            digit = ((key >> (32 - BITS * (p + 1))) & (NB - 1)).to(tl.int32)
            if p == 0:
                cand = valid
            else:
                cand = valid & ((key >> (32 - BITS * p)) == prefix)
            hist = tl.histogram(digit, NB, mask=cand)
            # candidates with a digit >= each bin
            at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
            b = tl.max(tl.where(at_or_above >= remaining, bins, -1), axis=0)
            remaining -= tl.sum(tl.where(bins > b, hist, 0), axis=0)
            prefix = prefix * NB + b
            if EARLY and p < P - 1:
                if tl.sum(tl.where(bins == b, hist, 0), axis=0) == remaining:
                    found = tl.min(tl.where(cand & (digit == b), key, 1 << 32), axis=0)
    if found < 0:
        found = prefix
    return _value_of(found - 2147483648)


@jit
def _top_p_cut(s, prob, valid, thr):
    """The smallest value whose probability mass at or below it exceeds thr = 1 - top_p (tokens below it
    are removed); the row's max if none does (the reference always keeps the most likely token)."""
    lo = _key_of(tl.full([], float("-inf"), tl.float32))
    hi = _key_of(tl.max(s, axis=0))
    for _ in range(32):
        mid = (lo + hi) >> 1
        below = tl.sum(tl.where(valid & (s <= _value_of(mid)), prob, 0.0), axis=0)
        ok = below > thr
        hi = tl.where(ok, mid, hi)
        lo = tl.where(ok, lo, mid + 1)
    return _value_of(lo)


# ---- the sampler ------------------------------------------------------------------------------------------


@dataclass
class Embed:
    """Embedding epilogue of `sample`: with t the chosen token of row m,
    out[m] = table[t] (the next step's input), and acc[m] = (table[t] if start else acc[m] + table[t]),
    then acc[m] += add[m] if given (e.g. the text embedding, after the last codebook). table [V, D];
    out, acc, add [M, D] with contiguous rows, any float dtype (acc sums in fp32, rounded to its dtype
    after each add)."""

    table: torch.Tensor
    out: torch.Tensor | None = None
    acc: torch.Tensor | None = None
    start: bool = False
    add: torch.Tensor | None = None


@jit(do_not_specialize=["frame_scalar", "codebook", "eos_id"])
def _sample_kernel(
    logits_ptr,
    stride_lm,
    V,
    do_sample_ptr,
    temp_ptr,
    top_k_ptr,
    top_p_ptr,
    seeds_ptr,
    frame_ptr,
    frame_scalar,
    codebook,
    seen_ptr,
    stride_sm,
    penalty_ptr,
    suppress_ptr,
    min_new_ptr,
    eos_id,
    tok_ptr,
    stride_tok,
    table_ptr,
    stride_tv,
    eout_ptr,
    stride_eo,
    acc_ptr,
    stride_acc,
    add_ptr,
    stride_add,
    D,
    FRAME_TENSOR: tl.constexpr,
    HAS_PENALTY: tl.constexpr,
    HAS_SUPPRESS: tl.constexpr,
    HAS_MIN_NEW: tl.constexpr,
    EMBED_OUT: tl.constexpr,
    EMBED_ACC: tl.constexpr,
    ACC_START: tl.constexpr,
    EMBED_ADD: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RADIX_BITS: tl.constexpr,
    EARLY_EXIT: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    m = tl.program_id(0)
    ids = tl.arange(0, BLOCK_V)
    valid = ids < V
    x = tl.load(logits_ptr + m.to(tl.int64) * stride_lm + ids, mask=valid, other=float("-inf")).to(tl.float32)
    frame = tl.load(frame_ptr + m) if FRAME_TENSOR else frame_scalar
    if HAS_PENALTY:  # HF repetition penalty on every token seen so far
        seen = tl.load(seen_ptr + m.to(tl.int64) * stride_sm + ids, mask=valid, other=0) != 0
        rep = tl.load(penalty_ptr + m)
        x = tl.where(seen, tl.where(x < 0, x * rep, tl.math.div_rn(x, rep)), x)
    if HAS_SUPPRESS:
        x = tl.where(tl.load(suppress_ptr + ids, mask=valid, other=0) != 0, float("-inf"), x)
    if HAS_MIN_NEW:  # no EOS before min_new_tokens
        early = frame < tl.load(min_new_ptr + m)
        x = tl.where(early & (ids == eos_id), float("-inf"), x)
    if tl.load(do_sample_ptr + m) != 0:
        temp = tl.maximum(tl.load(temp_ptr + m), 1e-5)
        s = tl.math.div_rn(x, temp)
        k = tl.load(top_k_ptr + m).to(tl.int32)
        if (k > 0) & (k < V):
            s = tl.where(s < _kth_largest(s, valid, k, RADIX_BITS, EARLY_EXIT), float("-inf"), s)
        top_p = tl.load(top_p_ptr + m)
        if top_p < 1.0:
            e = tl.exp(s - tl.max(s, axis=0))
            prob = e / tl.sum(e, axis=0)
            s = tl.where(s < _top_p_cut(s, prob, valid, 1.0 - top_p), float("-inf"), s)
        key = _row_key(tl.load(seeds_ptr + m), frame, codebook)
        u = _noise(key, ids)
        g = s - tl.log(-tl.log(u))
        tok = tl.argmax(tl.where(valid, g, float("-inf")), axis=0, tie_break_left=True)
    else:  # greedy: the argmax only here (sampled rows never need it)
        tok = tl.argmax(x, axis=0, tie_break_left=True)
    tl.store(tok_ptr + m * stride_tok, tok.to(tl.int64))
    if EMBED_OUT or EMBED_ACC:
        row = table_ptr + tok.to(tl.int64) * stride_tv
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            d_ok = d < D
            e_row = tl.load(row + d, mask=d_ok, other=0.0)
            if EMBED_OUT:
                tl.store(eout_ptr + m.to(tl.int64) * stride_eo + d, e_row, mask=d_ok)
            if EMBED_ACC:
                a_ptrs = acc_ptr + m.to(tl.int64) * stride_acc + d
                a_dtype = acc_ptr.dtype.element_ty
                if ACC_START:
                    a = e_row.to(tl.float32).to(a_dtype)
                else:
                    a = (tl.load(a_ptrs, mask=d_ok, other=0.0).to(tl.float32) + e_row.to(tl.float32)).to(
                        a_dtype
                    )
                if EMBED_ADD:
                    extra = tl.load(add_ptr + m.to(tl.int64) * stride_add + d, mask=d_ok, other=0.0)
                    a = (a.to(tl.float32) + extra.to(tl.float32)).to(a_dtype)
                tl.store(a_ptrs, a, mask=d_ok)


def _as_u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.bool else t


def sample(
    logits: torch.Tensor,
    *,
    do_sample: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    frame: torch.Tensor | int,
    codebook: int,
    seen: torch.Tensor | None = None,
    repetition_penalty: torch.Tensor | None = None,
    suppress: torch.Tensor | None = None,
    min_new_tokens: torch.Tensor | None = None,
    eos_id: int | None = None,
    out: torch.Tensor | None = None,
    embed: Embed | None = None,
    num_warps: int | None = None,
    radix_bits: int = 4,
    early_exit: bool = False,
) -> torch.Tensor:
    """Tokens [M] (int64; `out` may be a strided view such as codes[:, k]) of logits [M, V] (any float
    dtype, rows may be strided). Per-row tensors [M]: do_sample (bool), temperature, top_k (<= 0: off),
    top_p (>= 1: off), seeds (int64), repetition_penalty (fp32, with seen [M, V] bool), min_new_tokens
    (int64, with eos_id); suppress [V] bool. `frame` is an int or a per-row int64 tensor (each stream at
    its own frame); it keys the noise and gates min_new_tokens. No host syncs (graph-capturable).
    num_warps / radix_bits (4 or 8) / early_exit: the top-k select's tuning. The defaults are the fastest
    in bench_kernels' sampler section on an H200 (2026-12-01, `bench/results/h200_sampler.json`, top-k 50):
    4-bit digits (8 histograms of 16 bins beat 4 of 256), 8 warps for the code predictor's 2,048 ids (10.2
    us a launch at one row, 11.7 with 8-bit digits) and 16 for the talker's 3,072 (14.7 against 19.6);
    early exit saved under 1 us at one row and cost up to 3 at 64."""
    M, V = logits.shape
    assert logits.stride(1) == 1 and V <= 4096
    if out is None:
        out = torch.empty(M, dtype=torch.int64, device=logits.device)
    assert out.shape == (M,) and out.dtype == torch.int64
    assert radix_bits in (4, 8)
    has_pen = repetition_penalty is not None
    assert has_pen == (seen is not None), "seen and repetition_penalty come together"
    has_min = min_new_tokens is not None
    assert not has_min or eos_id is not None, "min_new_tokens needs eos_id"
    is_t = isinstance(frame, torch.Tensor)
    e = embed
    if e is not None:
        D = e.table.shape[1]
        assert e.table.stride(1) == 1
        for t in (e.out, e.acc, e.add):
            assert t is None or (t.shape == (M, D) and t.stride(1) == 1)
        assert e.add is None or e.acc is not None, "add goes into acc"
    dummy = logits
    _sample_kernel[(M,)](
        logits,
        logits.stride(0),
        V,
        _as_u8(do_sample),
        temperature,
        top_k,
        top_p,
        seeds,
        frame if is_t else seeds,
        0 if is_t else int(frame),
        int(codebook),
        _as_u8(seen) if has_pen else dummy,
        seen.stride(0) if has_pen else 0,
        repetition_penalty if has_pen else dummy,
        _as_u8(suppress) if suppress is not None else dummy,
        min_new_tokens if has_min else dummy,
        int(eos_id) if eos_id is not None else -1,
        out,
        out.stride(0),
        e.table if e is not None else dummy,
        e.table.stride(0) if e is not None else 0,
        e.out if e is not None and e.out is not None else dummy,
        e.out.stride(0) if e is not None and e.out is not None else 0,
        e.acc if e is not None and e.acc is not None else dummy,
        e.acc.stride(0) if e is not None and e.acc is not None else 0,
        e.add if e is not None and e.add is not None else dummy,
        e.add.stride(0) if e is not None and e.add is not None else 0,
        D if e is not None else 0,
        FRAME_TENSOR=is_t,
        HAS_PENALTY=has_pen,
        HAS_SUPPRESS=suppress is not None,
        HAS_MIN_NEW=has_min,
        EMBED_OUT=e is not None and e.out is not None,
        EMBED_ACC=e is not None and e.acc is not None,
        ACC_START=e is not None and e.start,
        EMBED_ADD=e is not None and e.add is not None,
        BLOCK_V=next_pow2(V),
        BLOCK_D=min(1024, next_pow2(D)) if e is not None else 16,
        RADIX_BITS=radix_bits,
        EARLY_EXIT=early_exit,
        num_warps=num_warps or (16 if V > 2048 else 8 if V > 1024 else 4),
    )
    return out


# ---- reference ---------------------------------------------------------------------------------------------


def sample_ref(
    logits,
    *,
    do_sample,
    temperature,
    top_k,
    top_p,
    seeds,
    frame,
    codebook,
    seen=None,
    repetition_penalty=None,
    suppress=None,
    min_new_tokens=None,
    eos_id=None,
    embed: Embed | None = None,
):
    """Reference of `sample`: pick_codebook0's masks, then model.sampling.choose (graph_safe: every
    row filtered and drawn, greedy rows taken from the argmax), then the embedding epilogue."""
    from utter_tts.model.sampling import choose

    x = logits.float()
    if repetition_penalty is not None:
        rep = repetition_penalty.view(-1, 1)
        x = torch.where(seen, torch.where(x < 0, x * rep, x / rep), x)
    if suppress is not None:
        x = x.masked_fill(suppress, float("-inf"))
    if min_new_tokens is not None:
        early = torch.as_tensor(frame, device=x.device) < min_new_tokens
        x[:, eos_id] = torch.where(early, torch.full_like(x[:, eos_id], float("-inf")), x[:, eos_id])
    tok = choose(x, do_sample, temperature, top_k, top_p, seeds, frame, codebook, graph_safe=True)
    if embed is not None:
        rows = embed.table[tok]
        if embed.out is not None:
            embed.out.copy_(rows)
        if embed.acc is not None:
            embed.acc.copy_(rows if embed.start else embed.acc + rows)
            if embed.add is not None:
                embed.acc.copy_(embed.acc + embed.add)
    return tok
