"""Shared helpers of the kernel tests: poisoned buffers, tolerances, and the fault-sensitivity check."""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.bfloat16]
# Kernel vs its reference (same numerics contract, only the fp32 summation order differs): fp32 ~1e-5
# relative; bf16 = a rounding or two of the bf16 result (2^-8 relative each).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def poison(*shape, dtype=torch.float32) -> torch.Tensor:
    """An output buffer full of NaN (int buffers: -7), so an element the kernel forgets is caught."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype)
    return torch.full(shape, -7, dtype=dtype)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float = 1.0, **tol):
    """assert_close at the dtype's tolerance; atol scales with the data's magnitude."""
    t = dict(TOL[dtype])
    t["atol"] = t["atol"] * scale
    t.update(tol)
    assert not actual.isnan().any(), "NaN in the kernel's output (an element left unwritten?)"
    torch.testing.assert_close(actual.float(), expected.float(), **t)


def must_fail(check, *args, **kwargs):
    """A planted fault must make the same comparison fail (otherwise the test cannot catch it)."""
    with pytest.raises(AssertionError):
        check(*args, **kwargs)


def codec_row_shapes(block_t: int, block_c: int) -> dict:
    """Hypothesis strategies for [B, C, T] tensors of the codec's tiled kernels: T and C across blocks of
    `block_t` and `block_c` tiles, with ragged tails."""
    return dict(B=st.integers(1, 3), C=st.integers(1, 2 * block_c + 3), T=st.integers(1, 2 * block_t + 5))
