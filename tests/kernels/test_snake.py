"""The one-pass SnakeBeta kernel against the eager op, and the codec module's choice of it."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from utter_tts.codec.decoder import SnakeBeta, fused_snake  # noqa: E402
from utter_tts.kernels.snake import BLOCK_T, snake, snake_factors, snake_ref  # noqa: E402

from .util import close, must_fail  # noqa: E402


def params(C, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(C, generator=g) * 0.5, torch.randn(C, generator=g) * 0.5


@settings(max_examples=10, deadline=None)
@given(
    B=st.integers(1, 3),
    C=st.integers(1, 7),
    T=st.integers(1, 2 * BLOCK_T + 5),  # across T blocks, with a ragged tail
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.01, 1.0, 30.0]),  # sin wraps many periods at 30
)
def test_snake_equals_the_eager_op(B, C, T, seed, scale):
    la, lb = params(C, seed)
    x = torch.randn(B, C, T, generator=torch.Generator().manual_seed(seed + 1)) * scale
    y = snake(x, *snake_factors(la, lb))
    assert y.shape == x.shape and y.is_contiguous()
    close(y, snake_ref(x, la, lb), torch.float32, scale=scale)


def test_snake_reads_strided_input():
    """The transposed convolution hands a time slice of a longer tensor: strides of a view."""
    la, lb = params(5, 1)
    full = torch.randn(2, 5, 300)
    x = full[..., 17:217]
    assert not x.is_contiguous()
    close(snake(x, *snake_factors(la, lb)), snake_ref(x, la, lb), torch.float32)


def test_faults_are_caught():
    la, lb = params(4, 2)
    x = torch.randn(2, 4, 50)
    y = snake(x, *snake_factors(la, lb))
    close(y, snake_ref(x, la, lb), torch.float32)
    must_fail(close, y, snake_ref(x, la.flip(0), lb.flip(0)), torch.float32)  # channels mixed up
    must_fail(close, y, snake_ref(x, lb, la), torch.float32)  # alpha and beta exchanged
    must_fail(close, y, x + torch.sin(x * la.exp()[None, :, None]) ** 2, torch.float32)  # beta ignored


def test_the_codec_uses_the_kernel_only_on_cuda(monkeypatch):
    assert fused_snake(torch.device("cpu")) is None  # CPU: the eager op
    fused_snake.cache_clear()
    monkeypatch.setenv("UTTER_TTS_CODEC_KERNELS", "0")
    assert fused_snake(torch.device("cuda", 0)) is None  # switched off
    fused_snake.cache_clear()
    monkeypatch.delenv("UTTER_TTS_CODEC_KERNELS")
    assert fused_snake(torch.device("cuda", 0)) is snake
    fused_snake.cache_clear()


def test_module_factors_follow_a_weight_load():
    """SnakeBeta caches e^alpha and 1/(e^beta + eps) for the kernel: a load must refresh them."""
    m = SnakeBeta(3)
    a0, _ = m._factors()
    torch.testing.assert_close(a0, torch.ones(3))
    la, lb = params(3, 3)
    m.load_state_dict({"alpha": la, "beta": lb})
    a1, inv_b1 = m._factors()
    torch.testing.assert_close(a1, la.exp())
    torch.testing.assert_close(inv_b1, 1.0 / (lb.exp() + 1e-9))
    x = torch.randn(1, 3, 40)
    with torch.no_grad():
        close(snake(x, a1, inv_b1), m(x), torch.float32)  # module on CPU: the eager op
