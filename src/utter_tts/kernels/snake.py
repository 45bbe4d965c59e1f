"""The codec's SnakeBeta activation in one pass: y = x + sin(x * a)^2 / (b + 1e-9), per channel.

The eager form is five elementwise kernels over the whole waveform-rate tensor (at the last upsampling
block, 96 channels at 24 kHz), each reading and writing it: memory traffic, not math, bounds the
streaming codec when many streams decode at once. Here each element is read once and written once, in
the eager op order (sin, square, scale, add) in fp32, so the result equals `snake_ref` within a few ulp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from utter_tts.kernels._jit import jit, pdl_wait

BLOCK_T = 1024


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
    BLOCK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_wait(USE_PDL)
    row = tl.program_id(0)  # one (stream, channel) row of [B, C, T]
    ts = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = ts < T
    b = row // C
    c = row % C
    base = x_ptr + b.to(tl.int64) * stride_xb + c.to(tl.int64) * stride_xc
    x = tl.load(base + ts * stride_xt, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:  # the previous convolution's bias, added here instead of in a pass of its own
        x = x + tl.load(bias_ptr + c).to(tl.float32)
    a = tl.load(a_ptr + c).to(tl.float32)
    inv_b = tl.load(inv_b_ptr + c).to(tl.float32)
    s = tl.sin(x * a)
    y = x + inv_b * (s * s)
    out = out_ptr + b.to(tl.int64) * stride_ob + c.to(tl.int64) * stride_oc
    tl.store(out + ts * stride_ot, y.to(out_ptr.dtype.element_ty), mask=ok)


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
    convolution's input buffer) or a new contiguous tensor of x's dtype. No host syncs (graph safe)."""
    B, C, T = x.shape
    assert a.shape == (C,) and inv_b.shape == (C,) and a.is_contiguous() and inv_b.is_contiguous()
    assert bias is None or (bias.shape == (C,) and bias.is_contiguous())
    if out is None:
        out = torch.empty(B, C, T, dtype=x.dtype, device=x.device)
    assert out.shape == x.shape, f"out {tuple(out.shape)} for x {tuple(x.shape)}"
    if out.numel():
        grid = (B * C, triton.cdiv(T, BLOCK_T))
        _snake_kernel[grid](
            x,
            a,
            inv_b,
            a if bias is None else bias,  # never read without HAS_BIAS
            out,
            C,
            T,
            *x.stride(),
            *out.stride(),
            BLOCK=BLOCK_T,
            HAS_BIAS=bias is not None,
            num_warps=4,
        )
    return out


def snake_ref(x: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """Reference: the eager SnakeBeta (codec/decoder.py) step by step."""
    alpha = torch.exp(log_alpha)[None, :, None]
    beta = torch.exp(log_beta)[None, :, None]
    return x + (1.0 / (beta + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)
