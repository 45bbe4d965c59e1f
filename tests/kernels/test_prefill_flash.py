"""The packed prefill through FlashAttention-2 (kernels.attention.flash_prefill, PyTorch's vendored FA2):
the keys also written as packed rows (qk_norm_rope_write(k_out=)), the varlen plumbing of PackedDecoder and
its reference (SDPA per prompt) equal to our kernel's attention; on the CPU FA2 itself is stood in for by
that reference, on a GPU (skipped here) it runs. And when it is used: the setting, the device, the dtype."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from utter_tts.kernels import attention as attn_mod  # noqa: E402
from utter_tts.kernels import packed_decoder as pd_mod  # noqa: E402
from utter_tts.kernels.attention import (  # noqa: E402
    decode_attention_ref,
    flash_prefill_ref,
    flash_prefill_usable,
    prefill_attention_setting,
    qk_norm_rope_write,
)
from utter_tts.kernels.packed_decoder import PackedDecoder  # noqa: E402

from .test_attention import qk_case  # noqa: E402
from .test_packed_decoder import ODD, TINY, build  # noqa: E402
from .util import TOL, close, must_fail, poison  # noqa: E402

LENGTHS = [5, 1, 9]  # three prompts packed, one of a single row


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_keys_written_as_rows_too(dtype):
    """k_out holds, row by row, exactly the normalised, rotated keys the cache got; q and the caches are
    what they are without it."""
    c = qk_case(6, 6, 2, 24, dtype, S=8, L=12, seed=4)
    args = [c[k] for k in ("qkv", "q_norm_w", "k_norm_w", "inv_freq", "axis_of", "pos", "slot", "col")]
    kw = dict(heads=6, kv_heads=2, head_dim=24, eps=1e-6)
    ck, cv = poison(*c["shape"], dtype=dtype), poison(*c["shape"], dtype=dtype)
    k_rows = poison(6, 2, 24, dtype=dtype)
    q = qk_norm_rope_write(*args, ck, cv, **kw, k_out=k_rows)
    assert torch.equal(k_rows, ck[c["slot"], :, c["col"]])
    ck2, cv2 = poison(*c["shape"], dtype=dtype), poison(*c["shape"], dtype=dtype)
    q2 = qk_norm_rope_write(*args, ck2, cv2, **kw)
    assert torch.equal(q, q2) and torch.equal(ck.nan_to_num(), ck2.nan_to_num())


def _packed(lengths, heads, kv, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = sum(lengths)
    q = torch.randn(M, heads, D, generator=g).to(dtype)
    k = torch.randn(M, kv, D, generator=g).to(dtype)
    v = torch.randn(M, kv, D, generator=g).to(dtype)
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return q, k, v, cu


def test_reference_is_our_attention_over_the_caches():
    """flash_prefill_ref over packed prompts == decode_attention_ref with each prompt in its own slot from
    column 0 (what FA2 stands in for); a cu_seqlens one row off is caught."""
    heads, kv, D = 6, 2, 16
    q, k, v, cu = _packed(LENGTHS, heads, kv, D, torch.float32)
    slot = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))
    col = torch.cat([torch.arange(n) for n in LENGTHS])
    cache_k = torch.zeros(len(LENGTHS), kv, 16, D)
    cache_v = torch.zeros_like(cache_k)
    cache_k[slot, :, col], cache_v[slot, :, col] = k, v
    expected = decode_attention_ref(q, cache_k, cache_v, slot, col, torch.zeros_like(col))

    def check(cu):
        close(flash_prefill_ref(q, k, v, cu, max(LENGTHS)), expected, torch.float32)

    check(cu)
    off = cu.clone()
    off[1] += 1
    must_fail(check, off)


def _prefill(shape, dtype, varlen: bool, monkeypatch, seed=0, cu_shift=0):
    """PackedDecoder's eager prefill of LENGTHS prompts (slots 3, 0, 4, from column 0): hidden + caches."""
    if varlen:
        monkeypatch.setattr(pd_mod, "flash_prefill", flash_prefill_ref)  # FA2 has no CPU kernels
    dec, rot = build(shape, dtype, seed)
    packed = PackedDecoder(dec, rot)
    layers, hidden, kv, D = shape[0], shape[1], shape[4], shape[5]
    caches = [(poison(5, kv, 16, D, dtype=dtype), poison(5, kv, 16, D, dtype=dtype)) for _ in range(layers)]
    slots = [3, 0, 4]
    slot = torch.repeat_interleave(torch.tensor(slots), torch.tensor(LENGTHS))
    col = torch.cat([torch.arange(n) for n in LENGTHS])
    x = torch.randn(sum(LENGTHS), hidden, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    cu = torch.tensor([0, *LENGTHS]).cumsum(0).to(torch.int32)
    cu[1] += cu_shift
    h = packed.forward(
        x, slot, col, col.expand(3, -1), torch.zeros_like(col), caches, num_splits=1, eager=True,
        varlen=(cu, max(LENGTHS)) if varlen else None,
    )  # fmt: skip
    return h, caches


def check_varlen(shape, dtype, monkeypatch, cu_shift=0):
    h, caches = _prefill(shape, dtype, True, monkeypatch, cu_shift=cu_shift)
    monkeypatch.undo()
    h_ref, caches_ref = _prefill(shape, dtype, False, monkeypatch)
    tol = TOL[dtype] if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    close(h, h_ref, dtype, scale=float(h_ref.float().abs().max()), **tol)
    for (k, v), (kr, vr) in zip(caches, caches_ref):  # the same columns written (NaN elsewhere)
        torch.testing.assert_close(k.float(), kr.float(), equal_nan=True, **tol)
        torch.testing.assert_close(v.float(), vr.float(), equal_nan=True, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [TINY, ODD], ids=["tiny", "odd"])
def test_packed_decoder_varlen_prefill_equals_the_cache_attention(shape, dtype, monkeypatch):
    check_varlen(shape, dtype, monkeypatch)


def test_varlen_fault_is_caught(monkeypatch):
    must_fail(check_varlen, TINY, torch.float32, monkeypatch, cu_shift=1)


def test_when_flash_attention_runs(monkeypatch):
    """Never on the CPU or in fp32; UTTER_TTS_PREFILL_ATTENTION=triton turns it off; a wrong value is
    refused naming the variable."""
    flash_prefill_usable.cache_clear()
    monkeypatch.delenv("UTTER_TTS_PREFILL_ATTENTION", raising=False)
    assert prefill_attention_setting() == "auto"
    assert not flash_prefill_usable(torch.device("cpu"), torch.bfloat16, 16, 8, 128)
    monkeypatch.setenv("UTTER_TTS_PREFILL_ATTENTION", "triton")
    assert prefill_attention_setting() == "triton"
    monkeypatch.setenv("UTTER_TTS_PREFILL_ATTENTION", "fa3")
    with pytest.raises(ValueError, match="UTTER_TTS_PREFILL_ATTENTION"):
        prefill_attention_setting()
    flash_prefill_usable.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention-2 runs on a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_prefill_on_the_gpu(dtype):
    """The real FA2 equals the reference over packed prompts, GQA 2, head_dim 128 (the talker's)."""
    dev = torch.device("cuda")
    q, k, v, cu = (t.to(dev) for t in _packed([120, 7, 64], 16, 8, 128, dtype))
    got = attn_mod.flash_prefill(q, k, v, cu, 120)
    close(got, flash_prefill_ref(q, k, v, cu, 120), torch.bfloat16)
    assert flash_prefill_usable(dev, dtype, 16, 8, 128)
