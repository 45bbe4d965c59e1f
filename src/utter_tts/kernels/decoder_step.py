"""A decoder pass of a few rows in one launch: every layer's steps in one persistent kernel, grid-synced.

The code predictor runs 5 layers 15 times a frame; as `PackedDecoder` launches (6 a layer) that is 450 of
a frame's ~735 launches at batch 1, each a few microseconds of ramp-up and tail around a few MB of weights.
Here one grid of about one program per SM walks the same steps, `PHASES` per layer:

  0  QKV = rmsnorm(x) @ w_qkv.T (+ b)           (weight tiles spread over the programs)
  1  q/k RMSNorm + M-RoPE, k and v into the cache, attention over the slot's columns (a kv head each)
  2  h = attn @ w_o.T (+ b) + x
  3  act = silu(g) * u, [g | u] = rmsnorm(h) @ w_gate_up.T
  4  x = act @ w_down.T + h

(caches of more than MAX_COLUMNS columns, the talker's: phase 1 becomes three, q/k + cache write per
(row, head), online-softmax attention per (row, kv head, column split), the splits' combine per (row,
head)), with a grid-wide barrier between phases (a counter in global memory: each program adds one and
waits for all of them; the last program out resets it, so a CUDA graph replays the launch as is). Every
program of the grid must be resident at once for the barrier to complete: at most one program per SM.

Numerics are `PackedDecoder.forward` with norm_mode="prologue" (its reference): the RMSNorm's operand
x * rstd * w rounded once to the weight dtype, fp32 accumulation, each GEMM's result rounded once; q, k, v
and the probabilities rounded to the cache dtype before their products (fp32 sums); 8-bit weights scaled
per output channel on the fp32 accumulator. The layers' weights and caches are `PackedDecoder(stacked=True)`
stacks and `new_caches(stacked=True)` views: layer l's are at base + l * stride.

Under Triton's interpreter (CPU) the programs of a launch run one after another, so a barrier could never
complete: there (and with phased=True on the GPU) the host launches the kernel once per phase instead, the
same code with the barrier compiled out.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from utter_tts.kernels._jit import TL_DTYPE, dot_precision, jit, next_pow2, pdl_wait, sm_count
from utter_tts.kernels.attention import _attend_split, _combine_head, _qk_norm_rope_head, _rope_lanes
from utter_tts.kernels.linear import weight_parts
from utter_tts.kernels.packed_decoder import PackedDecoder, _kv

PHASES = 5  # per layer (the module docstring); PHASES_LONG over caches of more than MAX_COLUMNS columns
PHASES_LONG = 7
MAX_ROWS = 16  # rows of one pass: tl.dot's smallest row tile
BLOCK_N = 16  # output columns of one weight tile (tiles are spread over the programs)
BLOCK_K = 256  # 128 for fp32 operands (shared memory: 116 KB at 256, past an sm_86's 99 KB)
MAX_COLUMNS = 64  # caches up to this many columns: attention in one phase (one tile, no online softmax)
SPLIT_NARROW = 1  # 2: the o- and down-projections' K in two halves (to be decided by bench_predictor)
PREFETCH = True  # the next phase's weights toward L2 before each barrier (`_prefetch_phase`)
SPIN_LIMIT = 1 << 20  # barrier polls (~1 s) before a program gives up: flag set, results wrong, no hang
_SPIN_LIMIT = tl.constexpr(SPIN_LIMIT)


@jit
def _grid_sync(bar_ptr, target, SYNC: tl.constexpr):
    """Wait until `target` arrivals have been counted at bar_ptr[0] (this program's included)."""
    if SYNC:
        tl.debug_barrier()  # every thread's stores of this phase before the arrival (release, gpu scope)
        tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
        polls = 0
        while (seen < target) & (polls < _SPIN_LIMIT):
            seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
            polls += 1
        if polls >= _SPIN_LIMIT:
            tl.atomic_xchg(bar_ptr + 2, 1, sem="relaxed", scope="gpu")
        tl.debug_barrier()  # no thread reads the next phase's inputs before the wait is over


@jit
def _prefetch_phase(w_ptr, N, K, pid, G, BLOCK_N: tl.constexpr, LINES: tl.constexpr, LINE: tl.constexpr):
    """Ask L2 for the weight rows this program's tiles of a GEMV phase will read (tiles pid, pid + G, ...
    of w [N, K], one prefetch per 128-byte line): issued before a barrier, the HBM reads overlap the wait
    instead of following it. A hint: nothing is loaded into registers, no value depends on it."""
    rows0 = tl.arange(0, BLOCK_N)
    lines = tl.arange(0, LINES) * LINE
    for tile in range(pid, tl.cdiv(N, BLOCK_N), G):
        rows = tile * BLOCK_N + rows0
        ok = (rows < N)[:, None] & (lines < K)[None, :]
        ptrs = tl.where(ok, w_ptr + rows.to(tl.int64)[:, None] * K + lines[None, :], w_ptr)
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
        )


@jit
def _gemv_phase(
    x_ptr,
    w_ptr,
    s_ptr,
    b_ptr,
    nw_ptr,
    res_ptr,
    out_ptr,
    ws_ptr,
    cnt_ptr,
    M,
    N,
    K,
    eps,
    pid,
    G,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    HAS_RES: tl.constexpr,
    GATED: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    OP_DTYPE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr = 1,
):
    """out [M, N] = (rmsnorm(x) * nw if NORM else x) @ w.T, epilogue as `linear`'s (scale, SiLU gate,
    bias, residual); x, res, out contiguous [M, *]; w [N (2N gated), K] contiguous. Work items go to
    programs pid, pid + G, ... (activations read from L2: other programs wrote them). SPLIT=2 (narrow
    outputs: twice the items): each tile's K in two halves, whose fp32 partials are added atomically into
    ws [BLOCK_M, N] (zero, and left zero); the second to arrive (cnt_ptr[tile]) runs the epilogue. Two
    terms added to zero give the same sum in either order: deterministic."""
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    ks0 = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows[:, None] * K
    rstd = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NORM:  # the whole rows' sums of squares first (the prologue mode of `linear`)
        ss = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + ks0
            xt = tl.load(
                x_rows + ks[None, :],
                mask=row_ok[:, None] & (ks < K)[None, :],
                other=0.0,
                cache_modifier=".cg",
            ).to(tl.float32)
            ss += tl.sum(xt * xt, axis=1)
        rstd = tl.math.rsqrt(ss / K + eps)
    half_k = tl.cdiv(tl.cdiv(K, 2), BLOCK_K) * BLOCK_K
    for item in range(pid, tl.cdiv(N, BLOCK_N) * SPLIT, G):
        tile = item
        k_lo = 0
        k_hi = K
        if SPLIT == 2:
            tile = item // 2
            k_lo = (item - tile * 2) * half_k
            k_hi = tl.minimum(k_lo + half_k, K)
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        w_rows = w_ptr + cols.to(tl.int64)[:, None] * K
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            ks = k0 + ks0
            k_ok = ks < k_hi
            xt = tl.load(
                x_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0, cache_modifier=".cg"
            )
            if NORM:
                nw = tl.load(nw_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
                xt = xt.to(tl.float32) * rstd[:, None] * nw[None, :]
            xt = xt.to(OP_DTYPE)
            w_mask = col_ok[:, None] & k_ok[None, :]
            wt = tl.load(w_rows + ks[None, :], mask=w_mask, other=0.0)
            acc = tl.dot(xt, tl.trans(wt.to(OP_DTYPE)), acc, input_precision=DOT_PREC)
            if GATED:  # the up rows sit N rows below the gate rows (pack_gate_up)
                wu = tl.load(w_rows + N * K + ks[None, :], mask=w_mask, other=0.0)
                acc_up = tl.dot(xt, tl.trans(wu.to(OP_DTYPE)), acc_up, input_precision=DOT_PREC)
        mask = row_ok[:, None] & col_ok[None, :]
        last = True
        if SPLIT == 2:
            w_at = ws_ptr + rows[:, None] * N + cols[None, :]
            tl.atomic_add(w_at, acc, mask=mask, sem="relaxed", scope="gpu")
            tl.debug_barrier()  # every thread's partial before the arrival (release)
            last = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu") == 1
            if last:  # the sum of both halves, then the buffers back to zero for the next use
                acc = tl.load(w_at, mask=mask, other=0.0, cache_modifier=".cg")
                tl.store(w_at, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), mask=mask)
                tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")
        if last:
            if HAS_SCALE:
                acc = acc * tl.load(s_ptr + cols, mask=col_ok, other=0.0)[None, :]
                if GATED:
                    acc_up = acc_up * tl.load(s_ptr + N + cols, mask=col_ok, other=0.0)[None, :]
            if GATED:
                acc = acc / (1.0 + tl.exp(-acc)) * acc_up
            if HAS_BIAS:
                acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_RES:
                acc += tl.load(
                    res_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0, cache_modifier=".cg"
                ).to(tl.float32)
            tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _attention_phase(
    qkv_ptr,
    qw_ptr,
    kw_ptr,
    inv_freq_ptr,
    axis_ptr,
    pos_ptr,
    slot_ptr,
    col_ptr,
    start_ptr,
    ck_ptr,
    cv_ptr,
    attn_ptr,
    M,
    stride_pa,
    stride_pm,
    stride_cs,
    stride_ch,
    stride_cl,
    eps,
    qk_scale,
    pid,
    G,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """For each kv head g (programs pid, pid + G, ...) and each row in order: k of head g normalised,
    rotated and written with v at (slot, col); then the row's REP query heads of group g normalised,
    rotated and attending over its slot's columns start..col (rows of one slot come in column order, and
    one program writes and reads a kv head's columns: a row sees the keys of the rows before it)."""
    REP: tl.constexpr = HEADS // KV_HEADS
    NQKV: tl.constexpr = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    d, d_ok, partner, sign, axis, inv = _rope_lanes(axis_ptr, inv_freq_ptr, HEAD_DIM, BLOCK_D)
    qw = tl.load(qw_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    qwp = tl.load(qw_ptr + partner, mask=d_ok, other=0.0).to(tl.float32)
    hs = tl.arange(0, BLOCK_H)
    h_ok = hs < REP
    cn = tl.arange(0, BLOCK_C)
    hd_mask = h_ok[:, None] & d_ok[None, :]
    for g in range(pid, KV_HEADS, G):
        heads = g * REP + hs
        for m in range(0, M):
            row = qkv_ptr + m * NQKV
            p = tl.load(pos_ptr + axis * stride_pa + m * stride_pm, mask=d_ok, other=0).to(tl.float32)
            ang = p * inv
            cos, sin = tl.cos(ang), tl.sin(ang)
            # key head g and its v into the cache at (slot, col), as `kernels.attention` writes them
            _qk_norm_rope_head(
                tl.cast(m, tl.int32), tl.cast(HEADS + g, tl.int32), qkv_ptr, qw_ptr, kw_ptr, inv_freq_ptr,
                axis_ptr, pos_ptr, slot_ptr, col_ptr, ck_ptr, cv_ptr, qkv_ptr, qkv_ptr, NQKV, stride_pa,
                stride_pm, stride_cs, stride_ch, stride_cl, stride_cs, stride_ch, stride_cl, 0, 0, 0, 0, eps,
                HEADS, KV_HEADS, HEAD_DIM, BLOCK_D, False, ".cg",
            )  # fmt: skip
            slot = tl.load(slot_ptr + m).to(tl.int64)
            last = tl.load(col_ptr + m)
            base = slot * stride_cs + g * stride_ch
            tl.debug_barrier()  # the key just written is read back below by other threads
            q_at = row + heads[:, None] * HEAD_DIM
            q = tl.load(q_at + d[None, :], mask=hd_mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            qp = tl.load(q_at + partner[None, :], mask=hd_mask, other=0.0, cache_modifier=".cg").to(
                tl.float32
            )
            qrs = tl.math.rsqrt(tl.sum(q * q, axis=1) / HEAD_DIM + eps)[:, None]
            qy = (
                q * qrs * qw[None, :] * cos[None, :]
                + sign[None, :] * (qp * qrs * qwp[None, :]) * sin[None, :]
            )
            qy = qy.to(ck_ptr.dtype.element_ty).to(tl.float32)  # rounded as the q buffer rounds it
            first = tl.minimum(tl.load(start_ptr + m), last)
            cs = first + cn
            c_ok = cs <= last
            kv_mask = c_ok[:, None] & d_ok[None, :]
            at = base + cs.to(tl.int64)[:, None] * stride_cl + d[None, :]
            keys = tl.load(ck_ptr + at, mask=kv_mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            s = tl.sum(qy[:, None, :] * keys[None, :, :], axis=2) * qk_scale  # [BLOCK_H, BLOCK_C], log2
            s = tl.where(c_ok[None, :], s, float("-inf"))
            mx = tl.max(s, axis=1)
            pr = tl.exp2(s - mx[:, None])
            denom = tl.sum(pr, axis=1)
            pr = pr.to(cv_ptr.dtype.element_ty).to(tl.float32)
            vals = tl.load(cv_ptr + at, mask=kv_mask, other=0.0, cache_modifier=".cg").to(tl.float32)
            o = tl.sum(pr[:, :, None] * vals[None, :, :], axis=1) / denom[:, None]
            o_at = attn_ptr + m * (HEADS * HEAD_DIM) + heads[:, None] * HEAD_DIM + d[None, :]
            tl.store(o_at, o.to(attn_ptr.dtype.element_ty), mask=hd_mask)
            tl.debug_barrier()


@jit
def _rope_write_phase(
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
    M,
    stride_pa,
    stride_pm,
    stride_cs,
    stride_ch,
    stride_cl,
    eps,
    pid,
    G,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Long caches, first step: `kernels.attention`'s q/k norm + RoPE + cache write per (row, head) item,
    q into q [M, HEADS, HEAD_DIM] (the cache dtype)."""
    NQKV: tl.constexpr = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    for item in range(pid, M * (HEADS + KV_HEADS), G):
        it = tl.cast(item, tl.int32)
        m = it // (HEADS + KV_HEADS)
        _qk_norm_rope_head(
            m, it - m * (HEADS + KV_HEADS), qkv_ptr, qw_ptr, kw_ptr, inv_freq_ptr, axis_ptr, pos_ptr,
            slot_ptr, col_ptr, ck_ptr, cv_ptr, q_ptr, q_ptr, NQKV, stride_pa, stride_pm, stride_cs, stride_ch,
            stride_cl, stride_cs, stride_ch, stride_cl, HEADS * HEAD_DIM, HEAD_DIM, 0, 0, eps,
            HEADS, KV_HEADS, HEAD_DIM, BLOCK_D, False, ".cg",
        )  # fmt: skip


@jit
def _split_attention_phase(
    q_ptr,
    ck_ptr,
    cv_ptr,
    slot_ptr,
    col_ptr,
    start_ptr,
    attn_ptr,
    part_ptr,
    lse_ptr,
    M,
    stride_cs,
    stride_ch,
    stride_cl,
    qk_scale,
    pid,
    G,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Long caches, second step: `kernels.attention`'s online softmax per (row, kv head, column split)
    item: with one split the result into attn, else partials [M, HEADS, SPLITS, HEAD_DIM] and their
    log2-sum-exp [M, HEADS, SPLITS] (fp32) for the combine."""
    for item in range(pid, M * KV_HEADS * SPLITS, G):
        it = tl.cast(item, tl.int32)
        m = it // (KV_HEADS * SPLITS)
        rest = it - m * (KV_HEADS * SPLITS)
        g = rest // SPLITS
        _attend_split(
            m, g, rest - g * SPLITS, HEADS, q_ptr, ck_ptr, cv_ptr, slot_ptr, col_ptr, start_ptr, attn_ptr,
            part_ptr, lse_ptr, HEADS * HEAD_DIM, HEAD_DIM, stride_cs, stride_ch, stride_cl, stride_cs,
            stride_ch, stride_cl, HEADS * HEAD_DIM, qk_scale,
            HEADS // KV_HEADS, HEAD_DIM, SPLITS, BLOCK_H, BLOCK_D, BLOCK_C, DOT_PREC, ".cg",
        )  # fmt: skip


@jit
def _combine_phase(
    part_ptr,
    lse_ptr,
    attn_ptr,
    M,
    pid,
    G,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Long caches, third step (with more than one split): `kernels.attention`'s combine per (row, head)."""
    if SPLITS > 1:
        for item in range(pid, M * HEADS, G):
            it = tl.cast(item, tl.int32)
            m = it // HEADS
            _combine_head(
                m, it - m * HEADS, part_ptr, lse_ptr, attn_ptr, HEADS * HEAD_DIM,
                HEADS, HEAD_DIM, SPLITS, BLOCK_S, BLOCK_D, ".cg",
            )  # fmt: skip


@jit(do_not_specialize=["M", "p_lo", "p_hi"])
def _decoder_step_kernel(
    x_ptr,
    h_ptr,
    qkv_ptr,
    attn_ptr,
    act_ptr,
    ln1_ptr,
    wqkv_ptr,
    sqkv_ptr,
    bqkv_ptr,
    qn_ptr,
    kn_ptr,
    wo_ptr,
    so_ptr,
    bo_ptr,
    ln2_ptr,
    wgu_ptr,
    sgu_ptr,
    wd_ptr,
    sd_ptr,
    inv_freq_ptr,
    axis_ptr,
    pos_ptr,
    slot_ptr,
    col_ptr,
    start_ptr,
    ck_ptr,
    cv_ptr,
    bar_ptr,
    ws_ptr,
    cnt_ptr,
    q_ptr,
    part_ptr,
    lse_ptr,
    M,
    p_lo,
    p_hi,
    eps,
    qk_scale,
    stride_pa,
    stride_pm,
    stride_cache_layer,
    stride_cs,
    stride_ch,
    stride_cl,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    OP_DTYPE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SYNC: tl.constexpr,
    LONG: tl.constexpr = False,
    SPLITS: tl.constexpr = 1,
    BLOCK_HL: tl.constexpr = 16,
    BLOCK_CL: tl.constexpr = 64,
    BLOCK_S: tl.constexpr = 1,
    SPLIT_NARROW: tl.constexpr = 1,
    PREFETCH: tl.constexpr = False,
    LINE: tl.constexpr = 64,
    LINES_H: tl.constexpr = 1,
    LINES_A: tl.constexpr = 1,
    LINES_I: tl.constexpr = 1,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    NQKV: tl.constexpr = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    ATT: tl.constexpr = HEADS * HEAD_DIM
    # phases of a layer: QKV, attention (short caches: 1 phase; long: q/k + cache write, split attention,
    # combine), o + residual, gate/up, down + residual
    PPL: tl.constexpr = 7 if LONG else 5
    O_PHASE: tl.constexpr = PPL - 3
    for p in range(p_lo, p_hi):
        if LONG:  # literals: the interpreter's loop index is a plain int
            layer_i = p // 7
        else:
            layer_i = p // 5
        phase = p - layer_i * PPL
        layer = tl.cast(layer_i, tl.int64)
        cache = layer * stride_cache_layer
        if phase == 0:
            _gemv_phase(
                x_ptr, wqkv_ptr + layer * (NQKV * HIDDEN), sqkv_ptr + layer * NQKV, bqkv_ptr + layer * NQKV,
                ln1_ptr + layer * HIDDEN, x_ptr, qkv_ptr, ws_ptr, cnt_ptr, M, NQKV, HIDDEN, eps, pid, G,
                HAS_BIAS, True, False, False, HAS_SCALE, OP_DTYPE, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K,
            )  # fmt: skip
        elif phase < O_PHASE:
            if not LONG:
                _attention_phase(
                    qkv_ptr, qn_ptr + layer * HEAD_DIM, kn_ptr + layer * HEAD_DIM, inv_freq_ptr, axis_ptr,
                    pos_ptr, slot_ptr, col_ptr, start_ptr, ck_ptr + cache, cv_ptr + cache, attn_ptr, M,
                    stride_pa, stride_pm, stride_cs, stride_ch, stride_cl, eps, qk_scale, pid, G,
                    HEADS, KV_HEADS, HEAD_DIM, BLOCK_H, BLOCK_D, BLOCK_C,
                )  # fmt: skip
            elif phase == 1:
                _rope_write_phase(
                    qkv_ptr, qn_ptr + layer * HEAD_DIM, kn_ptr + layer * HEAD_DIM, inv_freq_ptr, axis_ptr,
                    pos_ptr, slot_ptr, col_ptr, ck_ptr + cache, cv_ptr + cache, q_ptr, M, stride_pa,
                    stride_pm, stride_cs, stride_ch, stride_cl, eps, pid, G,
                    HEADS, KV_HEADS, HEAD_DIM, BLOCK_D,
                )  # fmt: skip
            elif phase == 2:
                _split_attention_phase(
                    q_ptr, ck_ptr + cache, cv_ptr + cache, slot_ptr, col_ptr, start_ptr, attn_ptr, part_ptr,
                    lse_ptr, M,
                    stride_cs, stride_ch, stride_cl, qk_scale, pid, G,
                    HEADS, KV_HEADS, HEAD_DIM, SPLITS, BLOCK_HL, BLOCK_D, BLOCK_CL, DOT_PREC,
                )  # fmt: skip
            else:
                _combine_phase(
                    part_ptr, lse_ptr, attn_ptr, M, pid, G, HEADS, HEAD_DIM, SPLITS, BLOCK_S, BLOCK_D
                )
        elif phase == O_PHASE:
            _gemv_phase(
                attn_ptr, wo_ptr + layer * (HIDDEN * ATT), so_ptr + layer * HIDDEN, bo_ptr + layer * HIDDEN,
                ln1_ptr, x_ptr, h_ptr, ws_ptr, cnt_ptr, M, HIDDEN, ATT, eps, pid, G,
                HAS_BIAS, False, True, False, HAS_SCALE, OP_DTYPE, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K,
                SPLIT_NARROW,
            )  # fmt: skip
        elif phase == O_PHASE + 1:
            _gemv_phase(
                h_ptr, wgu_ptr + layer * (2 * INTER * HIDDEN), sgu_ptr + layer * (2 * INTER), bqkv_ptr,
                ln2_ptr + layer * HIDDEN, h_ptr, act_ptr, ws_ptr, cnt_ptr, M, INTER, HIDDEN, eps, pid, G,
                False, True, False, True, HAS_SCALE, OP_DTYPE, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K,
            )  # fmt: skip
        else:
            _gemv_phase(
                act_ptr, wd_ptr + layer * (HIDDEN * INTER), sd_ptr + layer * HIDDEN, bqkv_ptr,
                ln1_ptr, h_ptr, x_ptr, ws_ptr, cnt_ptr, M, HIDDEN, INTER, eps, pid, G,
                False, False, True, False, HAS_SCALE, OP_DTYPE, DOT_PREC, BLOCK_M, BLOCK_N, BLOCK_K,
                SPLIT_NARROW,
            )  # fmt: skip
        if p + 1 < p_hi:
            if (
                PREFETCH
            ):  # the next GEMV's weights toward L2 while waiting (during attention: the o-projection's)
                if LONG:
                    nl_i = (p + 1) // 7
                else:
                    nl_i = (p + 1) // 5
                nxt = p + 1 - nl_i * PPL
                nl = tl.cast(nl_i, tl.int64)
                if nxt == 0:
                    _prefetch_phase(
                        wqkv_ptr + nl * (NQKV * HIDDEN), NQKV, HIDDEN, pid, G, BLOCK_N, LINES_H, LINE
                    )
                elif nxt <= O_PHASE:
                    _prefetch_phase(wo_ptr + nl * (HIDDEN * ATT), HIDDEN, ATT, pid, G, BLOCK_N, LINES_A, LINE)
                elif nxt == O_PHASE + 1:
                    gu = wgu_ptr + nl * (2 * INTER * HIDDEN)
                    _prefetch_phase(gu, INTER, HIDDEN, pid, G, BLOCK_N, LINES_H, LINE)
                    _prefetch_phase(gu + INTER * HIDDEN, INTER, HIDDEN, pid, G, BLOCK_N, LINES_H, LINE)
                else:
                    _prefetch_phase(
                        wd_ptr + nl * (HIDDEN * INTER), HIDDEN, INTER, pid, G, BLOCK_N, LINES_I, LINE
                    )
            _grid_sync(bar_ptr, (p - p_lo + 1) * G, SYNC)
    if SYNC:  # the last program out resets the counters (every other one is past its last wait)
        tl.debug_barrier()
        out = tl.atomic_add(bar_ptr + 1, 1, sem="acq_rel", scope="gpu")
        if out == G - 1:
            tl.atomic_xchg(bar_ptr, 0, sem="relaxed", scope="gpu")
            tl.atomic_xchg(bar_ptr + 1, 0, sem="relaxed", scope="gpu")


def _scratch(packed: PackedDecoder, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The stacked decoder's zeroed buffer `name`, made on first use."""
    buf = packed.stacks.scratch.get(name)
    if buf is None:
        buf = packed.stacks.scratch[name] = torch.zeros(shape, dtype=dtype, device=packed.final_norm.device)
    return buf


def workspace_for(packed: PackedDecoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-way K split's fp32 partial sums [MAX_ROWS, hidden] and per-tile arrival counts (zero between
    uses: the tile's second arrival puts them back)."""
    return (
        _scratch(packed, "split_partials", (MAX_ROWS, packed.hidden), torch.float32),
        _scratch(packed, "split_arrivals", (triton.cdiv(packed.hidden, 16),), torch.int32),
    )


def barrier_for(packed: PackedDecoder) -> torch.Tensor:
    """The decoder's barrier counters [arrivals, exits, timed-out flag] (int32, zero between launches);
    one per decoder: its passes run one after another on one stream."""
    return _scratch(packed, "barrier", (3,), torch.int32)


def supports(packed: PackedDecoder, rows: int, columns: int) -> bool:
    """Whether `decoder_step` takes this pass: a stacked decoder and at most MAX_ROWS rows (caches of any
    length: past MAX_COLUMNS columns, attention runs in three phases)."""
    return packed.stacks is not None and rows <= MAX_ROWS and columns > 0


def decoder_step(
    packed: PackedDecoder,
    x: torch.Tensor,
    slot: torch.Tensor,
    col: torch.Tensor,
    pos: torch.Tensor,
    start: torch.Tensor,
    caches,
    *,
    phased: bool | None = None,
    programs: int | None = None,
    phases: list[int] | None = None,
    prefetch: bool | None = None,
    split_narrow: int | None = None,
) -> torch.Tensor:
    """`packed.forward(x, slot, col, pos, start, caches)` with norm_mode="prologue", in one launch: x
    [M, hidden] contiguous (M <= MAX_ROWS) is updated in place to the hidden state before the final norm
    and returned; caches as `new_caches(stacked=True)` made them. phased (default: on the CPU): one launch
    per phase, no barrier. programs: the grid (default: one per SM, at most the widest phase's tiles; 3
    under the interpreter, so each program takes several tiles). phases (tests): run exactly these phase
    indices (layer * PHASES + phase), one launch each. prefetch (default PREFETCH on a GPU; never under the
    interpreter, which runs no inline PTX): the next GEMV's weights asked of L2 before each barrier.
    split_narrow (default SPLIT_NARROW): 2 splits K of the o- and down-projections in two (their hidden-wide
    outputs have half as many tiles as a GPU has SMs). No host syncs: CUDA-graph safe."""
    st = packed.stacks
    assert st is not None, "decoder_step needs PackedDecoder(stacked=True)"
    M, hidden = x.shape
    H, KV, D = packed.heads, packed.kv_heads, packed.head_dim
    assert M <= MAX_ROWS and hidden == packed.hidden and x.is_contiguous(), (x.shape, x.stride())
    layers = len(packed.layers)
    ck0, cv0 = _kv(caches[0])
    S, kv_heads, L, _ = ck0.shape
    assert kv_heads == KV and ck0.stride() == cv0.stride() and ck0.stride(3) == 1
    long = L > MAX_COLUMNS  # attention in three phases: q/k + cache write, column splits, their combine
    step = ck0.element_size()
    layer_stride = (_kv(caches[1])[0].data_ptr() - ck0.data_ptr()) // step if layers > 1 else 0
    for i, cache in enumerate(caches):  # the stacked layout: layer i at base + i * stride, keys and values
        k, v = _kv(cache)
        stacked = (
            k.untyped_storage().data_ptr() == ck0.untyped_storage().data_ptr()
            and v.untyped_storage().data_ptr() == cv0.untyped_storage().data_ptr()
            and k.data_ptr() == ck0.data_ptr() + i * layer_stride * step
            and v.data_ptr() == cv0.data_ptr() + i * layer_stride * step
            and k.stride() == v.stride() == ck0.stride()
        )
        assert stacked, "caches: views of one tensor per keys and values, as new_caches(stacked=True) makes"
    dt, dev = packed.final_norm.dtype, x.device
    w_qkv, s_qkv, op_dtype = _stacked(st, "w_qkv")
    w_o, s_o, _ = _stacked(st, "w_o")
    w_gu, s_gu, _ = _stacked(st, "w_gate_up")
    w_d, s_d, _ = _stacked(st, "w_down")
    b_qkv, b_o = st.get("b_qkv"), st.get("b_o")
    assert (b_qkv is None) == (b_o is None), "biased QKV and o projections, or neither"
    qkv = torch.empty(M, (H + 2 * KV) * D, dtype=dt, device=dev)
    attn = torch.empty(M, H * D, dtype=dt, device=dev)
    h = torch.empty(M, hidden, dtype=x.dtype, device=dev)
    act = torch.empty(M, packed.inter, dtype=dt, device=dev)
    bar = barrier_for(packed)
    ws, cnt = workspace_for(packed)
    split_narrow = SPLIT_NARROW if split_narrow is None else split_narrow
    assert split_narrow in (1, 2) and BLOCK_N >= 16, (split_narrow, BLOCK_N)
    if phased is None:
        phased = not x.is_cuda
    widest = max(triton.cdiv(n, BLOCK_N) for n in ((H + 2 * KV) * D, hidden, packed.inter))
    if programs is None:
        programs = min(sm_count(dev), widest) if x.is_cuda else 3
    # long caches: enough (row, kv head, split) items for the grid, each split >= 128 columns of the span
    splits = max(1, min(triton.cdiv(programs, M * KV), L // 128, 32)) if long else 1
    q_rows = torch.empty(M, H, D, dtype=dt, device=dev) if long else qkv
    part = torch.empty(M, H, splits, D, dtype=torch.float32, device=dev) if long else qkv
    lse = torch.empty(M, H, splits, dtype=torch.float32, device=dev) if long else qkv
    any_w = w_qkv
    args = [
        x, h, qkv, attn, act, st.get("ln1"), w_qkv, s_qkv if s_qkv is not None else any_w,
        b_qkv if b_qkv is not None else any_w, st.get("q_norm"), st.get("k_norm"), w_o,
        s_o if s_o is not None else any_w, b_o if b_o is not None else any_w, st.get("ln2"), w_gu,
        s_gu if s_gu is not None else any_w, w_d, s_d if s_d is not None else any_w,
        packed.inv_freq, packed.axis_of, pos, slot, col, start, ck0, cv0, bar, ws, cnt, q_rows, part, lse,
        M,
    ]  # fmt: skip
    tail = [
        float(packed.eps), (1.0 / math.sqrt(D)) * math.log2(math.e), pos.stride(0), pos.stride(1),
        layer_stride, ck0.stride(0), ck0.stride(1), ck0.stride(2),
    ]  # fmt: skip
    # fp32 operands: shorter tiles and pipelines (shared memory: 143 KB with bf16's, past an sm_86's 99)
    wide = op_dtype == torch.float32
    meta = dict(
        HIDDEN=hidden, INTER=packed.inter, HEADS=H, KV_HEADS=KV, HEAD_DIM=D, HAS_BIAS=b_qkv is not None,
        HAS_SCALE=s_qkv is not None, OP_DTYPE=TL_DTYPE[op_dtype], DOT_PREC=dot_precision(op_dtype),
        BLOCK_M=MAX_ROWS, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K // 2 if wide else BLOCK_K,
        BLOCK_H=next_pow2(H // KV), BLOCK_D=next_pow2(D), BLOCK_C=next_pow2(min(L, MAX_COLUMNS)),
        LONG=long, SPLITS=splits, BLOCK_HL=max(16, next_pow2(H // KV)), BLOCK_CL=32 if wide else 64,
        BLOCK_S=next_pow2(splits), num_warps=4, num_stages=2 if wide else 3,
    )  # fmt: skip
    if prefetch is None:
        prefetch = PREFETCH and x.is_cuda
    line = 128 // w_qkv.element_size()  # elements of a 128-byte line
    meta.update(
        SPLIT_NARROW=split_narrow, PREFETCH=prefetch, LINE=line, LINES_H=next_pow2(triton.cdiv(hidden, line)),
        LINES_A=next_pow2(triton.cdiv(H * D, line)), LINES_I=next_pow2(triton.cdiv(packed.inter, line)),
    )  # fmt: skip
    total = layers * (PHASES_LONG if long else PHASES)
    if phases is not None:
        phased, spans = True, [(p, p + 1) for p in phases]
    else:
        spans = [(p, p + 1) for p in range(total)] if phased else [(0, total)]
    for lo, hi in spans:
        _decoder_step_kernel[(programs,)](*args, lo, hi, *tail, SYNC=not phased, **meta)
    return x


def _stacked(st, name: str):
    """(stacked weights, stacked scales or None, operand dtype) of a GEMM field."""
    q = st.get(name + ".q")
    if q is not None:
        return q, st.get(name + ".q.scale"), st.get(name).dtype
    w = st.get(name)
    return w, None, weight_parts(w)[2]
