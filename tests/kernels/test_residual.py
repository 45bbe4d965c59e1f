"""The one-pass bias + residual add of the codec's residual units against the eager ops."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from utter_tts.codec.decoder import fused_residual  # noqa: E402
from utter_tts.kernels.residual import bias_residual, bias_residual_ref  # noqa: E402
from utter_tts.kernels.snake import BLOCK_C, BLOCK_T  # noqa: E402

from .util import close, codec_row_shapes, must_fail, poison  # noqa: E402


def tensors(B, C, T, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, C, T, generator=g) * scale,
        torch.randn(B, C, T, generator=g) * scale,
        torch.randn(C, generator=g),
    )


@settings(max_examples=10, deadline=None)
@given(
    **codec_row_shapes(BLOCK_T, BLOCK_C),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    layouts=st.tuples(st.booleans(), st.booleans()),  # x's and y's: channels last or not, mixed too
)
def test_equals_the_eager_ops_exactly_in_fp32(B, C, T, seed, scale, layouts):
    x, y, bias = tensors(B, C, T, seed, scale)
    x, y = (t.transpose(1, 2).contiguous().transpose(1, 2) if cl else t for t, cl in zip((x, y), layouts))
    out = bias_residual(x, y, bias, out=poison(B, C, T))
    assert torch.equal(out, bias_residual_ref(x, y, bias))  # the same fp32 adds in the same order


def test_bf16_rounds_as_the_eager_ops():
    x, y, bias = (t.bfloat16() for t in tensors(2, 5, 300, 3))
    close(bias_residual(x, y, bias), bias_residual_ref(x, y, bias), torch.bfloat16)


def test_strided_input_and_in_place_output():
    """x may be a time slice of a longer tensor (the transposed convolution's output); the sum may go
    straight into y."""
    full, y, bias = tensors(2, 4, 90, 5)
    x = full[..., 10:60]
    y = y[..., :50].contiguous()
    want = bias_residual_ref(x, y, bias)
    got = bias_residual(x, y, bias, out=y)
    assert got.data_ptr() == y.data_ptr()
    assert torch.equal(got, want)


def test_faults_are_caught():
    x, y, bias = tensors(2, 4, 50, 7)
    out = bias_residual(x, y, bias)
    close(out, bias_residual_ref(x, y, bias), torch.float32)
    must_fail(close, out, x + y, torch.float32)  # the bias left out
    must_fail(close, out, y + bias[None, :, None], torch.float32)  # the residual left out
    must_fail(close, out, bias_residual_ref(x, y, bias.flip(0)), torch.float32)  # channels mixed up


def test_the_codec_takes_it_where_it_takes_the_snake_kernel():
    assert fused_residual(torch.device("cpu")) is None  # CPU: the eager ops
