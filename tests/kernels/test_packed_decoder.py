"""PackedDecoder == eager Decoder.run before its final norm, caches too; prefill, decode, 2-token steps;
with split-K GEMMs writing the next norm's operand."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from utter_tts.kernels.linear import (  # noqa: E402
    CONFIGS,
    LinearConfig,
    _rms_norm_kernel,
    _split_reduce_kernel,
    linear,
)
from utter_tts.kernels.packed_decoder import PackedDecoder  # noqa: E402
from utter_tts.model.layers import Decoder, DecoderLayer, KVCache, Rotary  # noqa: E402

from .util import TOL, close, must_fail, poison  # noqa: E402

# (layers, hidden, inter, heads, kv_heads, head_dim, sections, interleaved, bias)
TINY = (2, 64, 128, 4, 2, 16, [4, 2, 2], True, False)  # the tiny test checkpoints' talker
ODD = (2, 48, 80, 6, 2, 24, [4, 4, 4], False, True)  # GQA 3, head_dim 24, biased projections
# bf16 vs the eager bf16 model: both round, at different points (the eager once per op; the kernels once
# per fused step, from fp32) -> about a bf16 ulp of the hidden state per layer
BF16_VS_EAGER = dict(rtol=3e-2, atol=3e-2)


def build(shape, dtype, seed=0):
    layers, hidden, inter, heads, kv, hd, sections, interleaved, bias = shape
    torch.manual_seed(seed)
    dec = Decoder(layers, hidden, inter, heads, kv, hd, 1e-6, bias)
    with torch.no_grad():
        for p in dec.parameters():
            if p.ndim == 1:  # norm weights and biases away from 1 and 0, so using the wrong one shows
                nn.init.uniform_(p, 0.5, 1.5)
    return dec.to(dtype), Rotary(hd, 1e6, sections, interleaved)


@contextlib.contextmanager
def no_final_norm(dec):
    norm, dec.norm = dec.norm, nn.Identity()
    try:
        yield
    finally:
        dec.norm = norm


class Pair:
    """The packed decoder's caches (NaN where nothing was written) and the eager ones (finite garbage)."""

    def __init__(self, dec, slots, L, dtype):
        n, kv, hd = len(dec.layers), dec.kv_heads, dec.head_dim
        self.ours = [
            (poison(slots, kv, L, hd, dtype=dtype), poison(slots, kv, L, hd, dtype=dtype)) for _ in range(n)
        ]
        self.eager = [
            KVCache(torch.randn(slots, kv, L, hd).to(dtype), torch.randn(slots, kv, L, hd).to(dtype))
            for _ in range(n)
        ]
        self.written = torch.zeros(slots, L, dtype=torch.bool)

    def check(self, dtype, tol):
        for (k, v), e in zip(self.ours, self.eager):
            w = self.written[:, None, :, None].expand_as(k)
            close(k[w], e.k[w], dtype, **tol)
            close(v[w], e.v[w], dtype, **tol)
            assert k[~w].isnan().all() and v[~w].isnan().all(), (
                "a cache column was written that should not be"
            )


def step(dec, rot, packed, pair, streams, dtype, tol, eager_layer=None, eager=False):
    """streams: (slot, start, first col, n tokens) each. Runs the tokens packed through PackedDecoder and
    stream by stream through the eager Decoder.run; compares hidden states and caches."""
    hidden = dec.norm.weight.shape[0]
    xs, slot, col, pos, start, expected = [], [], [], [], [], []
    for s, a, c0, n in streams:
        x = torch.randn(n, hidden).to(dtype)
        cols = torch.arange(c0, c0 + n)
        positions = torch.stack([cols - a, 2 * cols + 1, cols + 3])  # distinct per axis
        xs.append(x)
        slot += [s] * n
        col.append(cols)
        pos.append(positions)
        start += [a] * n
        caches = [KVCache(e.k[s : s + 1], e.v[s : s + 1]) for e in pair.eager]
        with torch.no_grad(), no_final_norm(dec):
            expected.append(
                dec.run(x[None], positions[:, None], cols[None], torch.tensor([a]), rot, caches)[0]
            )
        pair.written[s, cols] = True
    x = torch.cat(xs)
    M = x.shape[0]
    out = poison(M, hidden, dtype=dtype)
    h = packed(
        x, torch.tensor(slot), torch.cat(col), torch.cat(pos, 1), torch.tensor(start), pair.ours, out=out,
        eager=eager,
    )  # fmt: skip
    assert h is out
    expected = torch.cat(expected)
    close(h, expected, dtype, scale=float(expected.abs().max()), **tol)
    pair.check(dtype, tol)
    return h


def scenario(shape, dtype, tol, seed=0, norm_mode=None, two_token_step=True, eager_prefill=False):
    dec, rot = build(shape, dtype, seed)
    packed = PackedDecoder(dec, rot, norm_mode=norm_mode)
    pair = Pair(dec, slots=5, L=16, dtype=dtype)
    # packed prefill of three streams of different lengths (one left-padded: starts at column 2)
    streams = [(3, 0, 0, 5), (0, 2, 2, 3), (4, 0, 0, 7)]
    step(dec, rot, packed, pair, streams, dtype, tol, eager=eager_prefill)
    # a decode step: one token per stream
    step(dec, rot, packed, pair, [(3, 0, 5, 1), (0, 2, 5, 1), (4, 0, 7, 1)], dtype, tol)
    if not two_token_step:
        return dec, rot, packed
    # two tokens per stream (the code predictor's first step)
    step(dec, rot, packed, pair, [(3, 0, 6, 2), (0, 2, 6, 2), (4, 0, 8, 2)], dtype, tol)
    return dec, rot, packed


@pytest.mark.parametrize("shape", [TINY, ODD], ids=["tiny", "odd"])
def test_packed_decoder_fp32(shape):
    scenario(shape, torch.float32, TOL[torch.float32])


@pytest.mark.parametrize("shape", [TINY, ODD], ids=["tiny", "odd"])
def test_packed_decoder_bf16(shape):
    scenario(shape, torch.bfloat16, BF16_VS_EAGER, two_token_step=shape is ODD)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_decoder_eager_prefill(dtype):
    """The prefill's launch-frugal pass (one tile, the norm in the GEMM's prologue) computes the same."""
    tol = TOL[torch.float32] if dtype == torch.float32 else BF16_VS_EAGER
    scenario(ODD, dtype, tol, two_token_step=False, eager_prefill=True)


def test_packed_decoder_one_pass_norms():
    scenario(TINY, torch.float32, TOL[torch.float32], norm_mode="one_pass", two_token_step=False)


def test_tiny_code_predictor_shape_with_split_attention_and_final_norm():
    """The tiny checkpoints' code predictor (hidden 32, head_dim 8, plain RoPE), attention split in 3, and
    the caller's fused final norm: linear(h, head, norm_weight=final_norm) == eager head(Decoder.run(...))."""
    dec = Decoder(2, 32, 64, 4, 2, 8, 1e-6, False)
    rot = Rotary(8, 1e4)
    packed = PackedDecoder(dec, rot)
    caches = [KVCache.empty(2, 2, 6, 8, torch.float32, "cpu") for _ in range(2)]
    ours = [(poison(2, 2, 6, 8), poison(2, 2, 6, 8)) for _ in range(2)]
    x = torch.randn(4, 32)
    slot, col = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    h = packed(x, slot, col, col.expand(3, 4), torch.zeros(4, dtype=torch.long), ours, num_splits=3)
    head = torch.randn(20, 32)
    logits = linear(h, head, norm_weight=packed.final_norm, eps=packed.eps)
    with torch.no_grad():
        eager = dec.run(
            x.view(2, 2, 32), col.view(2, 2), col.view(2, 2), torch.zeros(2, dtype=torch.long), rot, caches
        )
    close(logits, eager.reshape(4, 32) @ head.T, torch.float32)


def count_launches(monkeypatch, kernel) -> list[bool]:
    """Each launch of `kernel` from now on, noted as its NORM_OUT flag."""
    launches, run = [], kernel.run

    def counted(*args, **kwargs):
        launches.append(kwargs.get("NORM_OUT", False))
        return run(*args, **kwargs)

    monkeypatch.setattr(kernel, "run", counted)
    return launches


@pytest.mark.parametrize(
    "shape,dtype",
    [(TINY, torch.float32), (ODD, torch.float32), (TINY, torch.bfloat16)],
    ids=["tiny", "odd", "bf16"],
)
def test_split_k_writes_the_next_norm(monkeypatch, shape, dtype):
    """The GPU's batch >= 4: tensor-core tiles, K split, norms "separate". The o- and down-projections' split
    reduces write the next GEMM's normed operand: one norm launch a pass (the first layer's) instead of two a
    layer, and the same result. One-row tiles (one-pass norms) launch as before."""
    for bucket, cfg in CONFIGS.items():  # CPU runs do not split K by themselves (no shapes given)
        if cfg.use_dot:
            monkeypatch.setitem(CONFIGS, bucket, LinearConfig(16, 16, 16, 4, 1, split_k=3))
    norms = count_launches(monkeypatch, _rms_norm_kernel)
    reduces = count_launches(monkeypatch, _split_reduce_kernel)
    tol = TOL[torch.float32] if dtype == torch.float32 else BF16_VS_EAGER
    dec, rot = build(shape, dtype)
    packed = PackedDecoder(dec, rot)
    pair = Pair(dec, slots=5, L=16, dtype=dtype)
    layers = len(packed.layers)
    step(dec, rot, packed, pair, [(3, 0, 0, 5), (0, 2, 2, 3)], dtype, tol)  # M = 8
    assert len(norms) == 1
    assert len(reduces) == 4 * layers  # every GEMM split
    assert reduces.count(True) == 2 * layers - 1  # the last layer's down-projection: the caller's final norm
    norms.clear(), reduces.clear()
    step(dec, rot, packed, pair, [(3, 0, 5, 1), (0, 2, 5, 1)], dtype, tol)  # M = 2: one pass, nothing split
    assert norms == [] and reduces == []


# ---- planted faults ---------------------------------------------------------------------------------------


def test_decoder_faults_are_caught(monkeypatch):
    tol = TOL[torch.float32]

    def run_one(dec, rot, packed):
        pair = Pair(dec, slots=2, L=8, dtype=torch.float32)
        step(dec, rot, packed, pair, [(1, 0, 0, 3), (0, 1, 1, 2)], torch.float32, tol)

    dec, rot = build(TINY, torch.float32, 3)
    run_one(dec, rot, PackedDecoder(dec, rot))

    def skip_mlp_residual(self, x, cos, sin, cols, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cols, mask, cache)
        return self.mlp(self.post_attention_layernorm(x))

    with monkeypatch.context() as m:  # the eager layer without its MLP residual: must not match
        m.setattr(DecoderLayer, "forward", skip_mlp_residual)
        must_fail(run_one, dec, rot, PackedDecoder(dec, rot))
    wrong_rope = Rotary(16, 1e6, [2, 4, 2], True)  # sections shifted in the packed copy only
    must_fail(run_one, dec, rot, PackedDecoder(dec, wrong_rope))
    swapped = PackedDecoder(dec, rot)
    swapped.layers[0], swapped.layers[1] = swapped.layers[1], swapped.layers[0]  # layers out of order
    must_fail(run_one, dec, rot, swapped)
