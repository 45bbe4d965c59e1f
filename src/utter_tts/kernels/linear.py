"""Small-M GEMM y = x @ w.T (nn.Linear weights [N, K]) with RMSNorm, bias/residual/SiLU epilogues.

Decode multiplies a handful of rows by a large weight, so the kernel is a bandwidth problem: every
program streams a [BLOCK_N, BLOCK_K] weight tile per step with wide loads along K. Two tile kinds:
BLOCK_M = 1 multiplies one row on CUDA cores, accumulating [BLOCK_N, BLOCK_K] partial products in the
weight tile's own register layout and reducing over K once at the end (a [M, N, K] broadcast instead
would cost a shared-memory layout shuffle of every weight tile); BLOCK_M >= 16 uses tensor cores
(`tl.dot`, rows padded to the tile, weight tiles software-pipelined). With BLOCK_M = 1 and a few rows,
the programs of one weight tile run side by side (rows are grid axis 0) and re-read it from L2; small
BLOCK_N gives skinny outputs enough programs to fill the GPU in one launch. Tensor-core tiles instead
cover every row (so each weight tile is read once) and split K over programs until the launch fills
the GPU (split-K): a tile narrow in N would make every program re-read all the rows' activations from
L2, four times the weight's bytes at 64 rows. The K splits write fp32 partial sums that a second
kernel adds in a fixed order (deterministic) before the epilogue. The tile comes from `CONFIGS`, keyed
by the row bucket (override per call with `config=`); the GPU benchmark times the candidates.

Numerics: RMSNorm, three modes that each round x once. "prologue": the kernel sums x^2 over the whole
row in fp32 first, then the main loop scales each x block by rstd * norm_weight in fp32 and casts it to
the weight dtype for the product (where the eager RMSNorm rounds twice). "separate": the same operand,
written once per row by `_rms_norm_kernel` before the GEMM (the default on tensor-core tiles, required
by split-K: every program would otherwise re-read its rows to find rstd); the split-K GEMM whose result
the norm reads can write it instead, saving that launch (`norm_out`: its reduce then holds whole rows).
"one_pass" (the default on one-row tiles): the loop sums x^2 while it multiplies x * norm_weight (fp32,
rounded to the weight dtype), and rstd scales the fp32 result at the end. Accumulation, bias, SiLU and
the residual add are fp32; the result is rounded once into `out`'s dtype.

8-bit weights (`quantize_weight`, `QuantWeight`): w[n, k] = q[n, k] * s[n] with one fp32 scale per output
channel, so y[m, n] = s[n] * sum_k x[m, k] q[n, k]. The kernel streams the 8-bit tile (half the bytes),
casts it to the activations' operand dtype (int8 and fp8 e4m3 values are exact in bf16), multiplies as
for bf16 weights, and scales the fp32 accumulator by s[n] before anything else of the epilogue (in each
split-K partial, so the reduce stays as it is and deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from utter_tts.kernels._jit import TL_DTYPE, dot_precision, jit, pdl_wait

QUANT_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
QUANT_MAX = {"int8": 127.0, "fp8": 448.0}  # the largest magnitude of each format


@dataclass(frozen=True)
class QuantWeight:
    """An nn.Linear weight [N, K] in 8 bits: w ~= q * scale[:, None]. `dtype` is the weight's dtype before
    quantizing: the activations are rounded to it for the product, as with unquantized weights."""

    q: torch.Tensor  # [N, K] int8 or float8_e4m3fn
    scale: torch.Tensor  # [N] fp32
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes

    def dequantize(self) -> torch.Tensor:
        return (self.q.float() * self.scale[:, None]).to(self.dtype)


def quantize_weight(w: torch.Tensor, mode: str) -> QuantWeight:
    """Symmetric per-output-channel quantization of w [N, K]: scale = amax(|w[n]|) / 127 (int8, rounded to
    nearest) or / 448 (fp8 e4m3fn, cast); an all-zero row gets scale 1 (its q is 0)."""
    if mode not in QUANT_DTYPES:
        raise ValueError(f"weights: unknown 8-bit mode {mode!r}; use int8 or fp8")
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QUANT_MAX[mode], torch.ones_like(amax))
    v = wf / scale[:, None]
    if mode == "int8":
        q = v.round().clamp(-127, 127).to(torch.int8)
    else:  # |v| <= 448 up to the division's rounding: clamp so it never saturates to NaN
        q = v.clamp(-448, 448).to(torch.float8_e4m3fn)
    return QuantWeight(q.contiguous(), scale.contiguous(), w.dtype)


def weight_parts(w) -> tuple[torch.Tensor, torch.Tensor | None, torch.dtype]:
    """(stored weight, per-channel scale or None, operand dtype) of a plain or 8-bit weight."""
    if isinstance(w, QuantWeight):
        return w.q, w.scale, w.dtype
    return w, None, w.dtype


@dataclass(frozen=True)
class LinearConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    # > 1: programs also split K (fp32 partial sums, then `_split_reduce_kernel` sums them in order and
    # runs the epilogue); 0: as many splits as make MIN_PROGRAMS programs, instead of shrinking the tile
    split_k: int = 1

    def __post_init__(self):
        assert self.block_m == 1 or self.block_m >= 16, "one row on CUDA cores, or tl.dot's 16-row tiles"
        assert self.split_k >= 0

    @property
    def use_dot(self) -> bool:
        return self.block_m >= 16


# Row bucket -> tile. Buckets 1 and 2: one-row CUDA-core tiles (the H200 sweep's best, bench_kernels
# 2026-11-30). Buckets 4-128: whole-row tensor-core tiles whose K is split until the launch fills the GPU
# (split_k=0), the RMSNorm computed first: the H200 "tiles" run (2026-11-30, the 11 real weight shapes with
# their fused extras) measured 88 / 91 / 103 / 112 / 128 us at M = 8 / 16 / 32 / 64 / 128, against 122 /
# 148 / 161 / 258 / 354 us for the shrinking tiles with the norm in the prologue, and cuBLAS at 163-177 us.
CONFIGS: dict[int, LinearConfig] = {
    1: LinearConfig(1, 4, 512, 4, 3),
    2: LinearConfig(1, 8, 512, 4, 3),
    4: LinearConfig(16, 32, 128, 4, 4, split_k=0),
    8: LinearConfig(16, 32, 128, 4, 4, split_k=0),
    16: LinearConfig(16, 32, 128, 4, 4, split_k=0),
    32: LinearConfig(32, 32, 128, 4, 4, split_k=0),
    64: LinearConfig(64, 32, 128, 4, 4, split_k=0),
    128: LinearConfig(64, 64, 64, 4, 4, split_k=0),
}


# Programs wanted per launch before tiles shrink: ~2 per SM of an H100/H200 (132 SMs), so that each SM has
# another program's loads in flight while one waits.
MIN_PROGRAMS = 264


def auto_split(cfg: LinearConfig, m: int, n: int | None, k: int | None) -> LinearConfig:
    """Resolve split_k=0: the fewest K splits that give MIN_PROGRAMS programs, each split keeping at least
    two BLOCK_K steps (1 without the shapes)."""
    if cfg.split_k != 0:
        return cfg
    if n is None or k is None:
        return replace(cfg, split_k=1)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    most = max(1, k // (2 * cfg.block_k))
    return replace(cfg, split_k=max(1, min(most, triton.cdiv(MIN_PROGRAMS, tiles))))


def config_for(m: int, n: int | None = None, k: int | None = None) -> LinearConfig:
    """The bucket's tile for m rows; with the output width n, BLOCK_N (then BLOCK_M) halves while the launch
    would have fewer than MIN_PROGRAMS programs (skinny outputs at small batch), or, for a split-K tile
    (split_k=0), K splits until it has them (with k). Shapes only: graph-safe."""
    cfg = next((c for b, c in CONFIGS.items() if m <= b), CONFIGS[max(CONFIGS)])
    if n is None or m > max(CONFIGS):  # prefill-sized: many row blocks anyway, one tile for every m
        return auto_split(cfg, m, None, None)
    if cfg.split_k != 1:
        return auto_split(cfg, m, n, k)
    bm, bn = cfg.block_m, cfg.block_n
    min_bn = 16 if bm >= 16 else 2

    def programs(bm, bn):
        return triton.cdiv(m, bm) * triton.cdiv(n, bn)

    while bn > min_bn and programs(bm, bn) < MIN_PROGRAMS:
        bn //= 2
    while bm > 16 and programs(bm, bn) < MIN_PROGRAMS:
        bm //= 2
    return replace(cfg, block_m=bm, block_n=bn)


def candidate_configs(m: int) -> list[LinearConfig]:
    """Tiles worth timing for `m` rows (the GPU benchmark's sweep): ~10-24 per bucket, 33 distinct in all."""
    out = []
    if m <= 4:  # one-row CUDA-core tiles: BLOCK_N * BLOCK_K fp32 partial products per program
        for bn, bk, warps in ((4, 512, 4), (8, 256, 4), (8, 512, 4), (8, 512, 8), (16, 256, 4), (16, 512, 8)):
            for stages in (1, 3):  # 1: no cp.async pipelining of the weight stream
                out.append(LinearConfig(1, bn, bk, warps, stages))
    p2 = triton.next_power_of_2(m)
    for bm in (16, 32, 64):
        if not (bm == 16 and p2 <= 32 or bm == 32 and p2 >= 32 or bm == 64 and p2 >= 64):
            continue
        for bn in (16, 32, 64):
            for bk, warps, stages in ((128, 4, 4), (256, 4, 3), (128, 8, 3)):
                out.append(LinearConfig(bm, bn, bk, warps, stages))
    return out


# M is not specialized: Triton would compile a second variant for row counts that are not multiples of 16
# (seen on an H200: a prefill of a new size compiled mid-serving, ~1 s of stall for every stream)
@jit(do_not_specialize=["M"])
def _linear_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    b_ptr,
    nw_ptr,
    res_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_rm,
    stride_om,
    up_offset,
    eps,
    k_per_split,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    HAS_RES: tl.constexpr,
    GATED: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    OP_DTYPE: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    STAGES: tl.constexpr,
    SPLIT_K: tl.constexpr = 1,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    # axis 0 (rows) varies fastest, so the programs that share a weight tile run together (L2 reuse)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    k_lo = tl.program_id(2) * k_per_split  # split-K: this program's share of K (all of it when SPLIT_K=1)
    k_hi = tl.minimum(k_lo + k_per_split, K)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    ks0 = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn

    ss = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NORM == 1:  # two passes: the whole row's sum of squares first (x is tiny and stays in cache)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=STAGES):
            ks = k0 + ks0
            x_mask = row_ok[:, None] & (ks < K)[None, :]
            xt = tl.load(x_rows + ks[None, :] * stride_xk, mask=x_mask, other=0.0).to(tl.float32)
            ss += tl.sum(xt * xt, axis=1)
        rstd = tl.math.rsqrt(ss / K + eps)

    if USE_DOT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if GATED:
            acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:  # one row: elementwise partial products in the weight tile's own layout, reduced once at the end
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        if GATED:
            acc2_up = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)

    # tl.range(num_stages=...): the weight stream is software-pipelined (cp.async) on the CUDA-core path too
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        ks = k0 + ks0
        k_ok = ks < k_hi
        xt = tl.load(x_rows + ks[None, :] * stride_xk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM == 1:
            nw = tl.load(nw_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            xt = xt.to(tl.float32) * rstd[:, None] * nw[None, :]
        if NORM == 2:  # one pass: sum of squares alongside, rstd applied to the fp32 result at the end
            nw = tl.load(nw_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
            xt = xt.to(tl.float32)
            ss += tl.sum(xt * xt, axis=1)
            xt = xt * nw[None, :]
        xt = xt.to(OP_DTYPE)  # the product's operand is the weight dtype (bf16 or fp32; 8-bit: unquantized)
        w_mask = col_ok[:, None] & k_ok[None, :]
        wt = tl.load(w_rows + ks[None, :] * stride_wk, mask=w_mask, other=0.0)
        if GATED:  # the up rows sit N rows below the gate rows (pack_gate_up)
            wu = tl.load(w_rows + up_offset + ks[None, :] * stride_wk, mask=w_mask, other=0.0)
        if USE_DOT:  # 8-bit tiles cast to the operand dtype (exact); a no-op for bf16 / fp32 weights
            acc = tl.dot(xt, tl.trans(wt.to(OP_DTYPE)), acc, input_precision=DOT_PREC)
            if GATED:
                acc_up = tl.dot(xt, tl.trans(wu.to(OP_DTYPE)), acc_up, input_precision=DOT_PREC)
        else:
            xf = xt.to(tl.float32)  # [1, BLOCK_K]
            acc2 += wt.to(tl.float32) * xf
            if GATED:
                acc2_up += wu.to(tl.float32) * xf

    if not USE_DOT:
        acc = tl.sum(acc2, axis=1)[None, :]
        if GATED:
            acc_up = tl.sum(acc2_up, axis=1)[None, :]
    if HAS_SCALE:  # per output channel, before the epilogue; gate_up's up scales sit N entries on
        acc = acc * tl.load(s_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if GATED:
            acc_up = acc_up * tl.load(s_ptr + N + cols, mask=col_ok, other=0.0)[None, :]
    if SPLIT_K > 1:  # partial sums out: [split, M, N] (gated: [split, M, 2N], up in the right half)
        mask = row_ok[:, None] & col_ok[None, :]
        width = 2 * N if GATED else N
        p_ptrs = out_ptr + (tl.program_id(2) * M + rows.to(tl.int64))[:, None] * width + cols[None, :]
        tl.store(p_ptrs, acc, mask=mask)
        if GATED:
            tl.store(p_ptrs + N, acc_up, mask=mask)
        return
    if NORM == 2:
        rstd = tl.math.rsqrt(ss / K + eps)
        acc = acc * rstd[:, None]
        if GATED:
            acc_up = acc_up * rstd[:, None]
    if GATED:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up  # silu(gate) * up
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_RES:
        r_ptrs = res_ptr + rows.to(tl.int64)[:, None] * stride_rm + cols[None, :]
        acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
    o_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@jit(do_not_specialize=["M"])
def _split_reduce_kernel(
    part_ptr,
    b_ptr,
    res_ptr,
    out_ptr,
    nw_ptr,
    norm_ptr,
    M,
    N,
    stride_rm,
    stride_om,
    eps,
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    GATED: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NORM_OUT: tl.constexpr = False,
    USE_PDL: tl.constexpr = False,
):
    """Split-K's second half: sum the partials of one row in a fixed order (deterministic), then the
    linear's epilogue (SiLU gate, bias, residual) and one rounding into out. NORM_OUT (one program per
    row, BLOCK_N >= N): also the next GEMM's operand, `_rms_norm_kernel`'s math on the rounded row."""
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = cols < N
    width = 2 * N if GATED else N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        p = part_ptr + (s * M + row) * width + cols
        acc += tl.load(p, mask=ok, other=0.0)
        if GATED:
            acc_up += tl.load(p + N, mask=ok, other=0.0)
    if GATED:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_RES:
        acc += tl.load(res_ptr + row * stride_rm + cols, mask=ok, other=0.0).to(tl.float32)
    y = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_om + cols, y, mask=ok)
    if NORM_OUT:  # from the stored values (masked columns are 0), in `_rms_norm_kernel`'s op order
        x = y.to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / N + eps)
        nw = tl.load(nw_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(norm_ptr + row * N + cols, (x * rstd * nw).to(norm_ptr.dtype.element_ty), mask=ok)


@jit
def _rms_norm_kernel(
    x_ptr,
    nw_ptr,
    out_ptr,
    K,
    stride_xm,
    stride_xk,
    eps,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """One row of norm_mode "separate": x * rstd * norm_weight in fp32, rounded once into out (the
    prologue's operand, written once instead of recomputed by every program of the GEMM)."""
    pdl_wait(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    ok = ks < K
    x = tl.load(x_ptr + row * stride_xm + ks * stride_xk, mask=ok, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / K + eps)
    nw = tl.load(nw_ptr + ks, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * K + ks, (x * rstd * nw).to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm_rows(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """rmsnorm(x) * norm_weight as an [M, K] tensor of `dtype` (fp32 math, one rounding); into `out`
    (contiguous, of `dtype`) if given, else a new one."""
    M, K = x.shape
    if out is None:
        out = torch.empty(M, K, dtype=dtype, device=x.device)
    assert out.shape == (M, K) and out.dtype == dtype and out.is_contiguous(), "out: contiguous [M, K], dtype"
    if M:
        block = triton.next_power_of_2(K)
        _rms_norm_kernel[(M,)](
            x, norm_weight, out, K, x.stride(0), x.stride(1), float(eps), BLOCK_K=block,
            num_warps=4 if block <= 2048 else 8,
        )  # fmt: skip
    return out


NORM_MODES = ("prologue", "one_pass", "separate")
NORM_MODE: str | None = None  # None: `norm_mode_for` the row count; pass norm_mode= to choose


def norm_mode_for(m: int) -> str:
    """The faster norm mode measured on an H200 (bench_kernels): one pass on the one-row CUDA-core tiles
    (talker gate/up at M=1: 17.1 vs 19.1 us); on tensor-core tiles the norm first, once per row (QKV at
    M=8: 9.2 us, against 15.7 with the prologue and 26.8 in one pass). Decided by the row bucket, so a
    kernel and its reference agree."""
    return "separate" if config_for(m).use_dot else "one_pass"


def resolve_norm_mode(m: int, norm_mode: str | None = None) -> str:
    """The norm mode a call with `norm_mode` uses for m rows, unless split-K forces "separate"."""
    return norm_mode or NORM_MODE or norm_mode_for(m)


def _launch(x, w, bias, norm_weight, eps, residual, out, gated, config, norm_mode, norm_out=None):
    w, scale, op_dtype = weight_parts(w)
    assert x.ndim == 2 and w.ndim == 2 and x.shape[1] == w.shape[1], (x.shape, w.shape)
    M, K = x.shape
    N = w.shape[0] // 2 if gated else w.shape[0]
    out_dtype = residual.dtype if residual is not None else x.dtype
    if out is None:
        out = torch.empty(M, N, dtype=out_dtype, device=x.device)
    assert out.shape == (M, N) and out.stride(1) == 1, "out: [M, N] with contiguous rows"
    if residual is not None:
        assert residual.shape == (M, N) and residual.stride(1) == 1, "residual: [M, N] with contiguous rows"
    if bias is not None:
        assert bias.shape == (N,) and bias.is_contiguous()
    if norm_weight is not None:
        assert norm_weight.shape == (K,) and norm_weight.is_contiguous()
    if norm_out is not None:
        nw, normed = norm_out
        assert not gated
        assert nw.shape == (N,) and nw.is_contiguous(), "norm_out: (norm_weight [N], ...)"
        assert normed.shape == (M, N) and normed.is_contiguous(), "norm_out: (..., contiguous [M, N])"
    # tiles shrink for GPU occupancy only; under the CPU interpreter more programs only cost time
    cfg = auto_split(config, M, N, K) if config else config_for(M, N if x.is_cuda else None, K)
    split = cfg.split_k
    mode = norm_mode or NORM_MODE or ("separate" if split > 1 else norm_mode_for(M))
    assert mode in NORM_MODES, mode
    if norm_weight is not None and (mode == "separate" or split > 1 and mode == "prologue"):
        # the prologue's operand computed once (split-K programs see only part of each row)
        x, norm_weight = rms_norm_rows(x, norm_weight, eps, op_dtype), None
    assert norm_weight is None or split == 1, "split-K takes norm modes prologue or separate"
    k_per_split = triton.cdiv(triton.cdiv(K, split), cfg.block_k) * cfg.block_k
    split = triton.cdiv(K, k_per_split)  # no empty splits
    grid = (triton.cdiv(M, cfg.block_m), triton.cdiv(N, cfg.block_n), split)
    res = residual if residual is not None else out
    target = out
    if split > 1:
        target = torch.empty(split, M, 2 * N if gated else N, dtype=torch.float32, device=x.device)
    _linear_kernel[grid](
        x,
        w,
        scale if scale is not None else w,
        bias if bias is not None else w,
        norm_weight if norm_weight is not None else w,
        res,
        target,
        M,
        N,
        K,
        x.stride(0),
        x.stride(1),
        w.stride(0),
        w.stride(1),
        res.stride(0),
        out.stride(0),
        N * w.stride(0),
        float(eps),
        k_per_split,
        HAS_BIAS=bias is not None,
        NORM=0 if norm_weight is None else 1 + NORM_MODES.index(mode),
        HAS_RES=residual is not None,
        GATED=gated,
        HAS_SCALE=scale is not None,
        OP_DTYPE=TL_DTYPE[op_dtype],
        USE_DOT=cfg.use_dot,
        DOT_PREC=dot_precision(op_dtype),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        STAGES=cfg.num_stages,
        SPLIT_K=split,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if split > 1:
        if norm_out is None:
            block = min(1024, triton.next_power_of_2(N))
            grid, warps = (M, triton.cdiv(N, block)), 4
        else:  # the norm needs whole rows: one program per row (warps as rms_norm_rows picks them)
            block = triton.next_power_of_2(N)
            grid, warps = (M, 1), 4 if block <= 2048 else 8
        _split_reduce_kernel[grid](
            target,
            bias if bias is not None else w,
            res,
            out,
            norm_out[0] if norm_out is not None else w,
            norm_out[1] if norm_out is not None else out,
            M,
            N,
            res.stride(0),
            out.stride(0),
            float(eps),
            HAS_BIAS=bias is not None,
            HAS_RES=residual is not None,
            GATED=gated,
            SPLIT_K=split,
            BLOCK_N=block,
            NORM_OUT=norm_out is not None,
            num_warps=warps,
        )
    elif norm_out is not None:
        rms_norm_rows(out, norm_out[0], eps, norm_out[1].dtype, out=norm_out[1])
    return out


def linear(
    x: torch.Tensor,
    w: torch.Tensor | QuantWeight,
    bias: torch.Tensor | None = None,
    *,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: LinearConfig | None = None,
    norm_mode: str | None = None,
    norm_out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """y = (rmsnorm(x) * norm_weight if norm_weight is given else x) @ w.T (+ bias) (+ residual).

    x [M, K] may be any strided view (e.g. every second row of a packed batch: x[1::2]); w [N, K] is
    an nn.Linear weight (bf16 or fp32, or its `quantize_weight`: 8 bits, scaled per output channel), bias
    [N], norm_weight [K]. residual and out are [M, N] with contiguous rows; out may be `residual` itself
    (an in-place residual add: each element is read and written by the same program). out's dtype
    defaults to residual's, else x's. config: a tile (default: `config_for(M, N, K)` on the GPU);
    norm_mode: "prologue", "separate" or "one_pass" (default NORM_MODE, else by row bucket; see the module
    docstring). norm_out = (next_norm_weight [N], buffer [M, N] contiguous): also write the next GEMM's
    "separate" operand, buffer = rms_norm_rows(y, weight, eps, buffer.dtype) of the stored y (the split-K
    reduce does it in the same launch; otherwise its own launch follows). No host syncs: CUDA-graph safe."""
    return _launch(x, w, bias, norm_weight, eps, residual, out, False, config, norm_mode, norm_out)


def pack_gate_up(w_gate: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
    """One [2N, K] weight: gate rows, then up rows. A program computing output columns n0..n1 reads rows
    n0..n1 and N+n0..N+n1, so any BLOCK_N pairs matching gate and up columns."""
    assert w_gate.shape == w_up.shape
    return torch.cat([w_gate, w_up], dim=0).contiguous()


def gate_up_silu(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    w_gate_up: torch.Tensor | QuantWeight,
    eps: float = 1e-6,
    out: torch.Tensor | None = None,
    config: LinearConfig | None = None,
    norm_mode: str | None = None,
) -> torch.Tensor:
    """silu(g) * u with [g | u] = rmsnorm(x) * norm_weight @ w_gate_up.T (no norm if norm_weight is None).
    w_gate_up comes from `pack_gate_up` (or is its `quantize_weight`); out [M, N] has x's dtype by default."""
    return _launch(x, w_gate_up, None, norm_weight, eps, None, out, True, config, norm_mode)


# ---- references (plain PyTorch, the same numerics contract) ----------------------------------------------


def rms_normalize_ref(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, dtype: torch.dtype, mode=None):
    """The product's operand and the fp32 factor applied after it: ("prologue") rmsnorm in fp32 scaled by
    the weight in fp32, rounded once to `dtype`, factor 1; ("one_pass") x * weight in fp32 rounded to
    `dtype`, factor rstd (fp32)."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if resolve_norm_mode(x.shape[0], mode) == "one_pass":
        return (xf * norm_weight.float()).to(dtype), rstd
    return (xf * rstd * norm_weight.float()).to(dtype), torch.ones_like(rstd)


def _product_ref(x, w, norm_weight, eps, norm_mode):
    """x (normalized) @ w.T in fp32 from weight-dtype operands; an 8-bit w: times its per-channel scale."""
    w, wscale, dtype = weight_parts(w)
    if norm_weight is not None:
        xin, scale = rms_normalize_ref(x, norm_weight, eps, dtype, norm_mode)
    else:
        xin, scale = x.to(dtype), 1.0
    y = (xin.float() @ w.float().T) * scale
    return y if wscale is None else y * wscale


def linear_ref(x, w, bias=None, *, norm_weight=None, eps=1e-6, residual=None, out_dtype=None, norm_mode=None):
    """Reference of `linear`: fp32 accumulation of weight-dtype operands (8-bit weights: of their stored
    values, scaled per output channel)."""
    y = _product_ref(x, w, norm_weight, eps, norm_mode)
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.float()
    dtype = out_dtype or (residual.dtype if residual is not None else x.dtype)
    return y.to(dtype)


def gate_up_silu_ref(x, norm_weight, w_gate_up, eps=1e-6, out_dtype=None, norm_mode=None):
    """Reference of `gate_up_silu`."""
    g, u = _product_ref(x, w_gate_up, norm_weight, eps, norm_mode).chunk(2, dim=-1)
    return (F.silu(g) * u).to(out_dtype or x.dtype)
