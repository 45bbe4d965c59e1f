"""The codec's SnakeBeta activation in one pass: y = x + sin(x * a)^2 / (b + 1e-9), per channel.

The eager form is five elementwise kernels over the whole waveform-rate tensor (at the last upsampling
block, 96 channels at 24 kHz), each reading and writing it: memory traffic, not math, bounds the
streaming codec when many streams decode at once. Here each element is read once and written once, in
the eager op order (sin, square, scale, add) in fp32, so the result equals `snake_ref` within a few ulp.

Programs take [BLOCK_T, BLOCK_C] tiles of a [B, C, T] tensor of any strides (`codec_tile`, shared with
kernels/residual.py): Triton specialises a stride of 1, so loads run along time for a channels-first
tensor and along channels for a channels-last one (the codec's layout on the GPU), coalesced either way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from utter_tts.device import empty_like_layout
from utter_tts.kernels._jit import jit, pdl_wait

BLOCK_T, BLOCK_C = 64, 32


@jit
def codec_tile(T, C, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of a [B, C, T] tensor (grid: time blocks, streams, channel blocks): the stream
    (int64), its times [BLOCK_T], channels [BLOCK_C] and the in-bounds mask [BLOCK_T, BLOCK_C]."""
    ts = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # axis 0: long waveforms have many blocks
    b = tl.program_id(1).to(tl.int64)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (ts < T)[:, None] & (cs < C)[None, :]
    return b, ts, cs, ok


def tile_grid(B: int, C: int, T: int) -> tuple[int, int, int]:
    return triton.cdiv(T, BLOCK_T), B, triton.cdiv(C, BLOCK_C)


@jit
def _snake_kernel(
    x_ptr,
    a_ptr,
    inv_b_ptr,
    bias_ptr,
    out_ptr,
    C,
    T,
    stride_xb,
    stride_xc,
    stride_xt,
    stride_ob,
    stride_oc,
    stride_ot,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    b, ts, cs, ok = codec_tile(T, C, BLOCK_T, BLOCK_C)
    c_ok = cs < C
    x = tl.load(x_ptr + b * stride_xb + ts[:, None] * stride_xt + cs[None, :] * stride_xc, mask=ok, other=0.0)
    x = x.to(tl.float32)
    if HAS_BIAS:  # the previous convolution's bias, added here instead of in a pass of its own
        x = x + tl.load(bias_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    a = tl.load(a_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    inv_b = tl.load(inv_b_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    s = tl.sin(x * a)
    y = x + inv_b * (s * s)
    out = out_ptr + b * stride_ob + ts[:, None] * stride_ot + cs[None, :] * stride_oc
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=ok)


def snake_factors(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel factors (a, 1 / (b + 1e-9)) from the checkpoint's log-scale parameters, as the
    eager op computes them."""
    return torch.exp(log_alpha).contiguous(), (1.0 / (torch.exp(log_beta) + 1e-9)).contiguous()


def snake(
    x: torch.Tensor,
    a: torch.Tensor,
    inv_b: torch.Tensor,
    out: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """SnakeBeta of x [B, C, T] (any strides), plus a per-channel `bias` first when given, with the
    per-channel factors of `snake_factors` [C]: into `out` (any strides: e.g. the tail of a causal
    convolution's input buffer) or a new tensor of x's dtype and layout (`empty_like_layout`). No host
    syncs (graph safe)."""
    B, C, T = x.shape
    assert a.shape == (C,) and inv_b.shape == (C,) and a.is_contiguous() and inv_b.is_contiguous()
    assert bias is None or (bias.shape == (C,) and bias.is_contiguous())
    if out is None:
        out = empty_like_layout(x)
    assert out.shape == x.shape, f"out {tuple(out.shape)} for x {tuple(x.shape)}"
    if out.numel():
        _snake_kernel[tile_grid(B, C, T)](
            x,
            a,
            inv_b,
            a if bias is None else bias,  # never read without HAS_BIAS
            out,
            C,
            T,
            *x.stride(),
            *out.stride(),
            BLOCK_T=BLOCK_T,
            BLOCK_C=BLOCK_C,
            HAS_BIAS=bias is not None,
            num_warps=4,
        )
    return out


def snake_ref(x: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """Reference: the eager SnakeBeta (codec/decoder.py) step by step."""
    alpha = torch.exp(log_alpha)[None, :, None]
    beta = torch.exp(log_beta)[None, :, None]
    return x + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)
