"""Attention over packed tokens: q/k RMSNorm + M-RoPE + KV-cache write, then causal GQA decode attention.

Packed tokens: row m of a pass belongs to cache slot `slot[m]`, sits at cache column `col[m]`, has rotary
positions `pos[:, m]` and attends to its slot's columns `start[m]..col[m]` (inclusive). One layout serves
a decode step (one row per stream), the code predictor's first step (two rows per stream) and packed
prefill (each stream's prompt rows in order): rows of a stream are causal because each sees only
columns up to its own, and every row's key is written before attention runs (a separate launch).
Caches are [S, kv_heads, L, head_dim] (any strides with contiguous head_dim), as the eager KVCache.

Numerics: norms, rotary angles (pos * inv_freq, cos/sin computed in-kernel), softmax and accumulation
are fp32; q, k, v and the probabilities enter tensor-core products in the cache dtype (bf16 or fp32,
fp32 multiplied exactly). Softmax is online (exp2 domain), so no mask is materialised.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from utter_tts.device import env_choice
from utter_tts.kernels._jit import dot_precision, jit, next_pow2, pdl_wait, sm_count

log = logging.getLogger(__name__)

# ---- q/k RMSNorm + RoPE + cache write ---------------------------------------------------------------------


@jit
def _rope_lanes(axis_ptr, inv_freq_ptr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """A head's lanes for RMSNorm + M-RoPE: (d, in range, rotate_half's partner lane (it reads the other
    half), its sign, each lane's position axis (frequency j turns by pos[axis_of[j], m] * inv_freq[j]), its
    inverse frequency)."""
    HALF: tl.constexpr = HEAD_DIM // 2
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    freq = tl.where(d < HALF, d, d - HALF)
    partner = tl.where(d < HALF, d + HALF, d - HALF)
    sign = tl.where(d < HALF, -1.0, 1.0)
    axis = tl.load(axis_ptr + freq, mask=d_ok, other=0)
    inv = tl.load(inv_freq_ptr + freq, mask=d_ok, other=0.0)
    return d, d_ok, partner, sign, axis, inv


@jit
def _qk_norm_rope_head(
    m,
    h,
    qkv_ptr,
    qw_ptr,
    kw_ptr,
    inv_freq_ptr,
    axis_ptr,
    pos_ptr,
    slot_ptr,
    col_ptr,
    ck_ptr,
    cv_ptr,
    q_ptr,
    kout_ptr,
    stride_qkv,
    stride_pa,
    stride_pm,
    stride_ks,
    stride_kh,
    stride_kl,
    stride_vs,
    stride_vh,
    stride_vl,
    stride_qm,
    stride_qh,
    stride_kom,
    stride_koh,
    eps,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_OUT: tl.constexpr,
    CACHE: tl.constexpr,
):
    """Row m's head h: heads HEADS.. are the key heads (q, k, v are packed in that order, so head h's
    columns start at h * HEAD_DIM for q and k alike); a key head also copies its v head. CACHE: the QKV
    rows' load cache modifier (".cg" where another program of the same launch wrote them)."""
    is_q = h < HEADS
    d, d_ok, partner, sign, axis, inv = _rope_lanes(axis_ptr, inv_freq_ptr, HEAD_DIM, BLOCK_D)
    row = qkv_ptr + m.to(tl.int64) * stride_qkv
    x = tl.load(row + h * HEAD_DIM + d, mask=d_ok, other=0.0, cache_modifier=CACHE).to(tl.float32)
    xp = tl.load(row + h * HEAD_DIM + partner, mask=d_ok, other=0.0, cache_modifier=CACHE).to(tl.float32)
    q_lanes = d_ok & is_q
    k_lanes = d_ok & (h >= HEADS)
    w = tl.load(qw_ptr + d, mask=q_lanes, other=0.0).to(tl.float32)
    w += tl.load(kw_ptr + d, mask=k_lanes, other=0.0).to(tl.float32)
    wp = tl.load(qw_ptr + partner, mask=q_lanes, other=0.0).to(tl.float32)
    wp += tl.load(kw_ptr + partner, mask=k_lanes, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / HEAD_DIM + eps)
    xn = x * rstd * w
    xpn = xp * rstd * wp
    p = tl.load(pos_ptr + axis * stride_pa + m * stride_pm, mask=d_ok, other=0).to(tl.float32)
    ang = p * inv
    y = xn * tl.cos(ang) + sign * xpn * tl.sin(ang)
    tl.store(q_ptr + m.to(tl.int64) * stride_qm + h * stride_qh + d, y, mask=q_lanes)
    kvh = tl.maximum(h - HEADS, 0)
    slot = tl.load(slot_ptr + m).to(tl.int64)
    col = tl.load(col_ptr + m).to(tl.int64)
    tl.store(ck_ptr + slot * stride_ks + kvh * stride_kh + col * stride_kl + d, y, mask=k_lanes)
    if K_OUT:  # the key row packed as well (a varlen prefill's keys: FlashAttention reads rows, not slots)
        tl.store(kout_ptr + m.to(tl.int64) * stride_kom + kvh * stride_koh + d, y, mask=k_lanes)
    v = tl.load(row + (HEADS + KV_HEADS + kvh) * HEAD_DIM + d, mask=k_lanes, other=0.0, cache_modifier=CACHE)
    tl.store(cv_ptr + slot * stride_vs + kvh * stride_vh + col * stride_vl + d, v, mask=k_lanes)


@jit
def _qk_norm_rope_kernel(
    qkv_ptr,
    qw_ptr,
    kw_ptr,
    inv_freq_ptr,
    axis_ptr,
    pos_ptr,
    slot_ptr,
    col_ptr,
    ck_ptr,
    cv_ptr,
    q_ptr,
    kout_ptr,
    stride_qkv,
    stride_pa,
    stride_pm,
    stride_ks,
    stride_kh,
    stride_kl,
    stride_vs,
    stride_vh,
    stride_vl,
    stride_qm,
    stride_qh,
    stride_kom,
    stride_koh,
    eps,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K_OUT: tl.constexpr = False,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    # one program per (row, head)
    _qk_norm_rope_head(
        tl.program_id(0), tl.program_id(1), qkv_ptr, qw_ptr, kw_ptr, inv_freq_ptr, axis_ptr, pos_ptr,
        slot_ptr, col_ptr, ck_ptr, cv_ptr, q_ptr, kout_ptr, stride_qkv, stride_pa, stride_pm, stride_ks,
        stride_kh, stride_kl, stride_vs, stride_vh, stride_vl, stride_qm, stride_qh, stride_kom, stride_koh,
        eps, HEADS, KV_HEADS, HEAD_DIM, BLOCK_D, K_OUT, "",
    )  # fmt: skip


def qk_norm_rope_write(
    qkv: torch.Tensor,
    q_norm_w: torch.Tensor,
    k_norm_w: torch.Tensor,
    inv_freq: torch.Tensor,
    axis_of: torch.Tensor,
    pos: torch.Tensor,
    slot: torch.Tensor,
    col: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    eps: float,
    q_out: torch.Tensor | None = None,
    k_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise (per-head RMSNorm, fp32) and rotate q and k of a packed QKV projection; return q [M, heads,
    head_dim] and write k (normalised, rotated) and v (as is) into the caches at [slot[m], :, col[m]]; with
    k_out [M, kv_heads, head_dim] (head_dim contiguous), the rotated keys into it too, row by row.

    qkv [M, (heads + 2 kv_heads) head_dim] (rows may be strided); inv_freq [head_dim/2] fp32, axis_of
    [head_dim/2] (position axis of each frequency, as Rotary builds them); pos [A, M] integer positions
    per axis (A >= 1 + max(axis_of); a view like pos.expand(3, M) is fine); slot, col [M] int64."""
    M = qkv.shape[0]
    assert qkv.shape[1] == (heads + 2 * kv_heads) * head_dim and qkv.stride(1) == 1
    assert head_dim % 2 == 0 and inv_freq.shape == (head_dim // 2,) and axis_of.shape == (head_dim // 2,)
    assert cache_k.stride(3) == 1 and cache_v.stride(3) == 1
    if q_out is None:
        q_out = torch.empty(M, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    assert q_out.shape == (M, heads, head_dim) and q_out.stride(2) == 1
    if k_out is not None:
        assert (
            k_out.shape == (M, kv_heads, head_dim) and k_out.stride(2) == 1 and k_out.dtype == cache_k.dtype
        )
    _qk_norm_rope_kernel[(M, heads + kv_heads)](
        qkv,
        q_norm_w,
        k_norm_w,
        inv_freq,
        axis_of,
        pos,
        slot,
        col,
        cache_k,
        cache_v,
        q_out,
        k_out if k_out is not None else q_out,
        qkv.stride(0),
        pos.stride(0),
        pos.stride(1),
        *cache_k.stride()[:3],
        *cache_v.stride()[:3],
        q_out.stride(0),
        q_out.stride(1),
        k_out.stride(0) if k_out is not None else 0,
        k_out.stride(1) if k_out is not None else 0,
        float(eps),
        HEADS=heads,
        KV_HEADS=kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=next_pow2(head_dim),
        K_OUT=k_out is not None,
        num_warps=1 if head_dim <= 64 else 2,
    )
    return q_out


def rope_angles_ref(inv_freq, axis_of, pos):
    """fp32 angles [M, head_dim/2]: frequency j takes its position from axis axis_of[j]."""
    return pos.float()[axis_of.long()].T * inv_freq.float()


def qk_norm_rope_write_ref(
    qkv,
    q_norm_w,
    k_norm_w,
    inv_freq,
    axis_of,
    pos,
    slot,
    col,
    cache_k,
    cache_v,
    *,
    heads,
    kv_heads,
    head_dim,
    eps,
):
    """Reference of `qk_norm_rope_write` (fp32 math, writes the caches in place, returns q)."""
    M = qkv.shape[0]
    q, k, v = qkv.float().split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = q.view(M, heads, head_dim), k.view(M, kv_heads, head_dim), v.view(M, kv_heads, head_dim)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.float()

    ang = rope_angles_ref(inv_freq, axis_of, pos)[:, None]  # [M, 1, half]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    q, k = rope(norm(q, q_norm_w)), rope(norm(k, k_norm_w))
    cache_k[slot, :, col] = k.to(cache_k.dtype)
    cache_v[slot, :, col] = v.to(cache_v.dtype)
    return q.to(qkv.dtype)


# ---- decode attention --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionConfig:
    block_n: int = 64  # cache columns per step
    num_warps: int = 4
    num_stages: int = 2
    min_split_cols: int = 128  # a split covers at least this many columns of the cache span


ATTENTION_CONFIG = AttentionConfig()


@jit
def _attend_split(
    m,
    g,
    sp,
    heads_total,
    q_ptr,
    ck_ptr,
    cv_ptr,
    slot_ptr,
    col_ptr,
    start_ptr,
    out_ptr,
    part_ptr,
    lse_ptr,
    stride_qm,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_kl,
    stride_vs,
    stride_vh,
    stride_vl,
    stride_om,
    qk_scale,
    REP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
    CACHE: tl.constexpr,
):
    """Row m, kv head g, column split sp: the REP query heads sharing the kv head are the rows of one tile
    (padded to 16 for tl.dot), so each key/value block is loaded once for the group. One split: the
    result into out; more: the normalised partial and its log2-sum-exp (rows of heads_total heads).
    CACHE: the load cache modifier of q and the caches (".cg" where this launch wrote them)."""
    hs = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    h_ok = hs < REP
    d_ok = d < HEAD_DIM
    heads = g * REP + hs  # query head h reads kv head h // REP
    q_ptrs = q_ptr + m.to(tl.int64) * stride_qm + heads[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptrs, mask=h_ok[:, None] & d_ok[None, :], other=0.0, cache_modifier=CACHE)
    slot = tl.load(slot_ptr + m).to(tl.int64)
    last = tl.load(col_ptr + m)
    first = tl.minimum(tl.load(start_ptr + m), last)  # a row before its start sees itself (eager mask)
    # this split's share of the row's own range, whole blocks each (splits past the end are empty)
    per_split = tl.cdiv(tl.cdiv(last - first + 1, SPLITS), BLOCK_N) * BLOCK_N
    lo = first + sp * per_split
    hi = tl.minimum(lo + per_split, last + 1)
    k_base = ck_ptr + slot * stride_ks + g * stride_kh
    v_base = cv_ptr + slot * stride_vs + g * stride_vh
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    cn = tl.arange(0, BLOCK_N)
    for c0 in range(lo, hi, BLOCK_N):
        cs = c0 + cn
        c_ok = cs < hi
        kv_mask = c_ok[:, None] & d_ok[None, :]
        cs64 = cs.to(tl.int64)
        k = tl.load(
            k_base + cs64[:, None] * stride_kl + d[None, :], mask=kv_mask, other=0.0, cache_modifier=CACHE
        )
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # log2 domain
        s = tl.where(c_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + cs64[:, None] * stride_vl + d[None, :], mask=kv_mask, other=0.0, cache_modifier=CACHE
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    mask = h_ok[:, None] & d_ok[None, :]
    if SPLITS == 1:
        o_ptrs = out_ptr + m.to(tl.int64) * stride_om + heads[:, None] * HEAD_DIM + d[None, :]
        tl.store(o_ptrs, acc / l_i[:, None], mask=mask)
    else:  # normalised partial result and its log2-sum-exp; an empty split leaves weight 0 (lse -inf)
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        row = (m.to(tl.int64) * heads_total + heads) * SPLITS + sp
        tl.store(part_ptr + row[:, None] * HEAD_DIM + d[None, :], acc / l_safe[:, None], mask=mask)
        tl.store(lse_ptr + row, m_i + tl.log2(l_safe), mask=h_ok)


@jit
def _attention_kernel(
    q_ptr,
    ck_ptr,
    cv_ptr,
    slot_ptr,
    col_ptr,
    start_ptr,
    out_ptr,
    part_ptr,
    lse_ptr,
    stride_qm,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_kl,
    stride_vs,
    stride_vh,
    stride_vl,
    stride_om,
    qk_scale,
    REP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PREC: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    # one program per (row, kv head, split)
    _attend_split(
        tl.program_id(0), tl.program_id(1), tl.program_id(2), REP * tl.num_programs(1), q_ptr, ck_ptr,
        cv_ptr, slot_ptr, col_ptr, start_ptr, out_ptr, part_ptr, lse_ptr, stride_qm, stride_qh, stride_ks,
        stride_kh, stride_kl, stride_vs, stride_vh, stride_vl, stride_om, qk_scale,
        REP, HEAD_DIM, SPLITS, BLOCK_H, BLOCK_D, BLOCK_N, DOT_PREC, "",
    )  # fmt: skip


@jit
def _combine_head(
    m,
    h,
    part_ptr,
    lse_ptr,
    out_ptr,
    stride_om,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CACHE: tl.constexpr,
):
    """Row m, head h: the splits' partials weighted by their sums, into out."""
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_ok = s < SPLITS
    row = (m.to(tl.int64) * HEADS + h) * SPLITS + s
    lse = tl.load(lse_ptr + row, mask=s_ok, other=float("-inf"), cache_modifier=CACHE)
    w = tl.exp2(lse - tl.max(lse, axis=0))  # split 0 is never empty, so the max is finite
    mask = s_ok[:, None] & (d < HEAD_DIM)[None, :]
    part = tl.load(
        part_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=mask, other=0.0, cache_modifier=CACHE
    )
    o = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + m.to(tl.int64) * stride_om + h * HEAD_DIM + d, o, mask=d < HEAD_DIM)


@jit
def _attention_combine_kernel(
    part_ptr,
    lse_ptr,
    out_ptr,
    stride_om,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    # one program per (row, head)
    _combine_head(
        tl.program_id(0), tl.program_id(1), part_ptr, lse_ptr, out_ptr, stride_om,
        HEADS, HEAD_DIM, SPLITS, BLOCK_S, BLOCK_D, "",
    )  # fmt: skip


def default_splits(m: int, kv_heads: int, span: int, device: torch.device, cfg=ATTENTION_CONFIG) -> int:
    """Column splits from shapes only (graph-safe): enough programs for ~2 waves of the SMs, each split
    still >= min_split_cols of the cache span. Batch 1, 2,560-column talker cache: 8 kv heads x 20 splits."""
    want = triton.cdiv(2 * sm_count(device), m * kv_heads)
    return max(1, min(want, span // cfg.min_split_cols))


def decode_attention(
    q: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    slot: torch.Tensor,
    col: torch.Tensor,
    start: torch.Tensor,
    *,
    scale: float | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """out [M, heads * head_dim] (q's dtype): row m's query heads attend over cache slot slot[m], columns
    start[m]..col[m] inclusive (a row with col < start sees only its own column, as the eager mask does).
    GQA: query head h uses kv head h // (heads // kv_heads). q [M, heads, head_dim] (head_dim contiguous).

    num_splits > 1 splits each row's columns (flash-decoding) into that many programs plus one combine
    launch; the default comes from the shapes alone (`default_splits`), never from the values, so it is
    fixed under CUDA-graph capture. workspace: optional preallocated (partials [M, heads, splits, head_dim]
    fp32, lse [M, heads, splits] fp32)."""
    cfg = config or ATTENTION_CONFIG
    M, heads, head_dim = q.shape
    S, kv_heads, L, D = cache_k.shape
    assert D == head_dim and heads % kv_heads == 0 and q.stride(2) == 1
    assert q.dtype == cache_k.dtype == cache_v.dtype, "q and the caches enter the same tensor-core products"
    assert cache_k.stride(3) == 1 and cache_v.stride(3) == 1 and cache_v.shape == cache_k.shape
    rep = heads // kv_heads
    if out is None:
        out = torch.empty(M, heads * head_dim, dtype=q.dtype, device=q.device)
    assert out.shape == (M, heads * head_dim) and out.stride(1) == 1
    splits = num_splits or default_splits(M, kv_heads, L, q.device, cfg)
    if splits > 1:
        if workspace is None:
            workspace = (
                torch.empty(M, heads, splits, head_dim, dtype=torch.float32, device=q.device),
                torch.empty(M, heads, splits, dtype=torch.float32, device=q.device),
            )
        part, lse = workspace
        assert part.shape == (M, heads, splits, head_dim) and part.is_contiguous() and lse.is_contiguous()
    else:
        part = lse = out
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    block_d = max(16, next_pow2(head_dim))
    _attention_kernel[(M, kv_heads, splits)](
        q,
        cache_k,
        cache_v,
        slot,
        col,
        start,
        out,
        part,
        lse,
        q.stride(0),
        q.stride(1),
        *cache_k.stride()[:3],
        *cache_v.stride()[:3],
        out.stride(0),
        scale * 1.4426950408889634,  # log2(e): softmax in base 2
        REP=rep,
        HEAD_DIM=head_dim,
        SPLITS=splits,
        BLOCK_H=max(16, next_pow2(rep)),
        BLOCK_D=block_d,
        BLOCK_N=cfg.block_n,
        DOT_PREC=dot_precision(cache_k.dtype),
        num_warps=cfg.num_warps,
        # fp32 (a test dtype) pipelined spills registers at head_dim 128 (sm_90 compile); bf16 does not
        num_stages=1 if cache_k.dtype == torch.float32 else cfg.num_stages,
    )
    if splits > 1:
        _attention_combine_kernel[(M, heads)](
            part,
            lse,
            out,
            out.stride(0),
            HEADS=heads,
            HEAD_DIM=head_dim,
            SPLITS=splits,
            BLOCK_S=next_pow2(splits),
            BLOCK_D=block_d,
            num_warps=1 if head_dim <= 64 else 2,
        )
    return out


def decode_attention_ref(q, cache_k, cache_v, slot, col, start, *, scale=None):
    """Reference of `decode_attention`: scaled_dot_product_attention over each row's slot with a boolean
    mask of its visible columns (fp32 math), GQA by repeating kv heads (h // rep)."""
    M, heads, D = q.shape
    S, kv_heads, L, _ = cache_k.shape
    rep = heads // kv_heads
    k = cache_k[slot].float().repeat_interleave(rep, dim=1)  # [M, heads, L, D]
    v = cache_v[slot].float().repeat_interleave(rep, dim=1)
    cols = torch.arange(L, device=q.device)
    first = torch.minimum(start, col)
    visible = (cols[None] >= first[:, None]) & (cols[None] <= col[:, None])  # [M, L]
    y = torch.nn.functional.scaled_dot_product_attention(
        q.float()[:, :, None], k, v, attn_mask=visible[:, None, None], scale=scale
    )
    return y.reshape(M, heads * D).to(q.dtype)


# ---- packed prefill: FlashAttention-2 as PyTorch ships it -------------------------------------------------
# Timed on an H200 (2026-12-05, bench/bench_attention.py): over prompts packed as varlen rows, FA2 took
# 0.83 / 0.15 / 0.10 of our kernel's time at 1 / 8 / 64 prompts of 120 rows (ours reads each row's keys
# from its slot with one program per row and kv head; FA2 tiles rows); our decode kernel stays 2.1-3.8x
# faster than FA2's for one row per stream, so decode keeps it.

PREFILL_ATTENTION = ("auto", "triton")


def prefill_attention_setting() -> str:
    """UTTER_TTS_PREFILL_ATTENTION: "auto" (FlashAttention-2 for the packed prefill where
    `flash_prefill_usable` says so; the default) or "triton" (our kernel everywhere)."""
    return env_choice("UTTER_TTS_PREFILL_ATTENTION", PREFILL_ATTENTION, "auto")


def flash_prefill(
    q, k, v, cu_seqlens: torch.Tensor, max_len: int, scale: float | None = None
) -> torch.Tensor:
    """Causal attention within each of the packed sequences (rows cu_seqlens[i]..cu_seqlens[i+1]-1, each
    starting at its own position 0): q [M, heads, D], k and v [M, kv_heads, D] (head_dim contiguous, rows
    may be strided), cu_seqlens int32 [n + 1] on the device, max_len the longest. -> [M, heads * D]."""
    kw = {} if scale is None else {"scale": scale}
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, 0.0, True, False, **kw
    )[0]
    return out.reshape(q.shape[0], -1)


def flash_prefill_ref(q, k, v, cu_seqlens: torch.Tensor, max_len: int, scale: float | None = None):
    """Reference of `flash_prefill` (any device): SDPA per sequence in fp32, GQA by repeating kv heads."""
    rep = q.shape[1] // k.shape[1]
    bounds = cu_seqlens.tolist()
    out = []
    for a, b in zip(bounds, bounds[1:]):
        qs, ks, vs = (t[a:b].float().transpose(0, 1) for t in (q, k, v))  # [heads, rows, D]
        ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
        y = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        out.append(y.transpose(0, 1).reshape(b - a, q.shape[1] * q.shape[2]))
    return torch.cat(out).to(q.dtype)


@functools.lru_cache(maxsize=8)
def flash_prefill_usable(
    device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int
) -> bool:
    """Whether the packed prefill calls FlashAttention-2 here: the setting allows it, a CUDA GPU of
    compute capability 8.0 or newer, bf16 / fp16, PyTorch built with its flash kernels, and, checked once
    per shape, FA2 giving what our kernel gives on two packed prompts (else one log line and ours)."""
    if (
        prefill_attention_setting() == "triton"
        or device.type != "cuda"
        or dtype not in (torch.bfloat16, torch.float16)
    ):
        return False
    if (
        torch.cuda.get_device_capability(device) < (8, 0)
        or not torch.backends.cuda.is_flash_attention_available()
    ):
        return False
    try:
        g = torch.Generator(device=device).manual_seed(0)
        lengths = (5, 37)
        M = sum(lengths)
        q = torch.randn(M, heads, head_dim, device=device, dtype=dtype, generator=g)
        k = torch.randn(M, kv_heads, head_dim, device=device, dtype=dtype, generator=g)
        # v as PackedDecoder passes it: a strided view of the QKV projection's rows
        qkv = torch.randn(M, (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype, generator=g)
        v = qkv[:, (heads + kv_heads) * head_dim :].view(M, kv_heads, head_dim)
        slot = torch.tensor([0] * lengths[0] + [1] * lengths[1], device=device)
        col = torch.cat([torch.arange(n, device=device) for n in lengths])
        cache_k = torch.zeros(2, kv_heads, 64, head_dim, device=device, dtype=dtype)
        cache_v = torch.zeros_like(cache_k)
        cache_k[slot, :, col], cache_v[slot, :, col] = k, v
        ours = decode_attention(q, cache_k, cache_v, slot, col, torch.zeros_like(col), num_splits=1)
        cu = torch.tensor([0, lengths[0], M], device=device, dtype=torch.int32)
        theirs = flash_prefill(q, k, v, cu, max(lengths))
        err = float((theirs.float() - ours.float()).norm() / ours.float().norm())
        if err < 2e-2:
            return True
        log.warning("FlashAttention-2's packed prefill differs from ours (relative %.3g): using ours", err)
    except Exception as e:  # a torch without the entry point, or a GPU it does not support
        log.warning("FlashAttention-2 is not usable for the packed prefill (%s): using ours", e)
    return False
