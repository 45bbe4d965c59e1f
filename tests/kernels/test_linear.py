"""linear / gate_up_silu against their references: both tile kinds, fused prologue/epilogues, strided x,
the next GEMM's norm written alongside (norm_out)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from utter_tts.kernels.linear import (  # noqa: E402
    CONFIGS,
    MIN_PROGRAMS,
    NORM_MODES,
    LinearConfig,
    auto_split,
    config_for,
    gate_up_silu,
    gate_up_silu_ref,
    linear,
    linear_ref,
    pack_gate_up,
    rms_norm_rows,
)

from .util import DTYPES, close, must_fail, poison  # noqa: E402

ONE_ROW = LinearConfig(1, 8, 32, 4, 3)  # CUDA-core tile, K split into several blocks
NARROW = LinearConfig(1, 2, 16, 1, 1)  # the narrowest tile config_for shrinks to, unpipelined
DOT = LinearConfig(16, 16, 32, 4, 3)  # tensor-core tile
SPLIT = LinearConfig(16, 16, 16, 4, 2, split_k=3)  # tensor-core tile, K in three programs' shares
SPLIT_ONE_ROW = LinearConfig(1, 8, 16, 4, 1, split_k=2)


def case(M, K, N, dtype, seed=0, x_stride=1):
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(M * x_stride, K, generator=g)
    x = big.to(dtype)[::x_stride]  # every x_stride-th row: a strided view
    w = (torch.randn(N, K, generator=g) / K**0.5).to(dtype)
    return dict(
        x=x,
        w=w,
        bias=torch.randn(N, generator=g).to(dtype),
        norm_weight=(torch.rand(K, generator=g) + 0.5).to(dtype),
        residual=torch.randn(M, N, generator=g).to(dtype),
    )


def check_linear(c, dtype, config=None, use=("bias", "norm_weight", "residual"), ref=linear_ref, mode=None):
    kw = {k: c[k] for k in use if k != "bias"}
    kw["norm_mode"] = mode
    bias = c["bias"] if "bias" in use else None
    M, N = c["x"].shape[0], c["w"].shape[0]
    out = poison(M, N, dtype=dtype)
    y = linear(c["x"], c["w"], bias, **kw, out=out, config=config)
    assert y is out
    close(y, ref(c["x"], c["w"], bias, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "M,config",
    [
        (1, None), (1, ONE_ROW), (3, NARROW), (3, DOT), (8, None), (20, None), (20, DOT), (40, None),
        (3, SPLIT), (20, SPLIT), (2, SPLIT_ONE_ROW),
    ],
)  # fmt: skip
def test_linear_fused(M, config, dtype):
    # K and N not multiples of the tiles: masking on both
    check_linear(case(M, 72, 40, dtype, seed=M), dtype, config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,config", [(1, None), (3, ONE_ROW), (20, DOT)])
def test_linear_fused_one_pass_norm(M, config, dtype):
    check_linear(case(M, 72, 40, dtype, seed=M), dtype, config, mode="one_pass")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,config", [(3, DOT), (20, SPLIT)])
def test_linear_fused_separate_norm(M, config, dtype):
    check_linear(case(M, 72, 40, dtype, seed=M), dtype, config, mode="separate")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use", [(), ("bias",), ("norm_weight",), ("residual",)])
def test_linear_each_feature_alone(use, dtype):
    for config in (ONE_ROW, DOT, SPLIT):
        check_linear(case(5, 48, 24, dtype, seed=1), dtype, config, use)


@pytest.mark.parametrize("config", [ONE_ROW, DOT, SPLIT])
def test_linear_strided_rows_and_in_place_residual(config):
    c = case(6, 64, 64, torch.float32, seed=2, x_stride=2)
    assert c["x"].stride(0) == 2 * 64
    check_linear(c, torch.float32, config)
    # out = residual: h += o_proj(attn) in place
    h = c["residual"].clone()
    expected = linear_ref(c["x"], c["w"], residual=h)
    linear(c["x"], c["w"], residual=h, out=h, config=config)
    close(h, expected, torch.float32)


def test_linear_column_strided_x():
    base = torch.randn(4, 80)
    x = base[:, ::2]  # stride along K as well
    w = torch.randn(24, 40)
    close(linear(x, w, out=poison(4, 24)), linear_ref(x, w), torch.float32)


def test_linear_fp32_activations_with_bf16_weights():
    # the decoder's residual stream may be fp32 while weights are bf16: x is rounded to bf16 for the product
    c = case(3, 64, 32, torch.bfloat16, seed=3)
    x = torch.randn(3, 64)
    r = torch.randn(3, 32)
    y = linear(x, c["w"], norm_weight=c["norm_weight"], residual=r, out=poison(3, 32))
    expected = linear_ref(x, c["w"], norm_weight=c["norm_weight"], residual=r)
    close(y, expected, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,config", [(1, None), (3, ONE_ROW), (5, DOT), (17, None), (5, SPLIT)])
def test_gate_up_silu(M, config, dtype):
    c = case(M, 56, 36, dtype, seed=M)
    w_up = (torch.randn(36, 56) / 8).to(dtype)
    packed = pack_gate_up(c["w"], w_up)
    modes = ("prologue", "separate") if config is SPLIT else NORM_MODES  # split-K: the norm goes first
    for nw, mode in [(c["norm_weight"], m) for m in modes] + [(None, None)]:
        y = gate_up_silu(
            c["x"], nw, packed, 1e-6, out=poison(M, 36, dtype=dtype), config=config, norm_mode=mode
        )
        close(y, gate_up_silu_ref(c["x"], nw, packed, norm_mode=mode), dtype)


def test_norm_modes_agree_with_the_eager_norm():
    """Both rounding points make a faithful RMSNorm: within bf16 rounding of the eager RMSNorm + Linear."""
    from utter_tts.model.layers import RMSNorm

    torch.manual_seed(6)
    norm = RMSNorm(96, 1e-6)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    w = torch.randn(40, 96) / 10
    x = torch.randn(4, 96) * 3
    with torch.no_grad():
        expected = norm(x) @ w.T
    for mode in NORM_MODES:
        close(linear(x, w, norm_weight=norm.weight.detach(), norm_mode=mode), expected, torch.float32)
        y = linear(x.bfloat16(), w.bfloat16(), norm_weight=norm.weight.detach().bfloat16(), norm_mode=mode)
        close(y, expected, torch.bfloat16)


def test_tiles_shrink_for_skinny_outputs():
    assert config_for(1, 1024).block_n * MIN_PROGRAMS <= 2 * 1024  # >= MIN_PROGRAMS/2 programs at batch 1
    assert config_for(1, 12288) == CONFIGS[1]  # wide enough already
    # tensor-core buckets keep the whole-row tile and split K instead (rows are re-read per N block)
    cfg = config_for(64, 1024, 1024)
    assert (cfg.block_m, cfg.block_n) == (CONFIGS[64].block_m, CONFIGS[64].block_n)
    assert cfg.split_k == 1024 // (2 * cfg.block_k)  # as many splits as K allows (2 steps each)
    cfg = config_for(64, 4096, 2048)
    assert cfg.split_k > 1 and (4096 // cfg.block_n) * cfg.split_k >= MIN_PROGRAMS
    assert config_for(64).split_k == 1  # without the shapes, no split
    assert config_for(4096, 1024, 1024).split_k == 1  # prefill-sized: row blocks fill the GPU


def test_tiles_without_split_k_shrink(monkeypatch):
    monkeypatch.setitem(CONFIGS, 64, LinearConfig(64, 32, 128, 4, 4))
    cfg = config_for(64, 1024)
    assert cfg.block_n == 16 and cfg.block_m == 16  # 4 x 64 programs instead of 2 x 32


def test_split_k_fills_the_gpu_instead_of_shrinking_the_tile():
    tile = LinearConfig(64, 64, 128, 4, 3, split_k=0)
    for n, k in ((2048, 6144), (4096, 2048), (1024, 1024)):
        cfg = auto_split(tile, 64, n, k)
        assert cfg.block_m == 64 and cfg.block_n == 64  # the tile stays whole
        programs = (n // 64) * cfg.split_k
        assert programs >= MIN_PROGRAMS or cfg.split_k == k // 256  # enough programs, or K is used up
    assert auto_split(tile, 64, None, None).split_k == 1
    assert auto_split(LinearConfig(64, 64, 128, split_k=3), 64, 2048, 6144).split_k == 3  # explicit: kept


def test_split_k_with_one_pass_norm_is_refused():
    c = case(4, 48, 24, torch.float32)
    with pytest.raises(AssertionError, match="split-K"):
        linear(c["x"], c["w"], norm_weight=c["norm_weight"], norm_mode="one_pass", config=SPLIT)


def test_gate_up_silu_matches_the_eager_mlp_activation():
    from utter_tts.model.layers import MLP, RMSNorm

    torch.manual_seed(4)
    mlp, norm = MLP(32, 48), RMSNorm(32, 1e-6)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(3, 32)
    with torch.no_grad():
        hn = norm(x)
        expected = torch.nn.functional.silu(mlp.gate_proj(hn)) * mlp.up_proj(hn)
        packed = pack_gate_up(mlp.gate_proj.weight, mlp.up_proj.weight)
        y = gate_up_silu(x, norm.weight.detach(), packed, 1e-6, out=poison(3, 48))
    close(y, expected, torch.float32)


def test_config_table_covers_every_bucket():
    assert all(cfg.block_m == 1 or cfg.block_m >= 16 for cfg in CONFIGS.values())
    with pytest.raises(AssertionError):
        LinearConfig(4, 8, 64)  # neither one row nor a tl.dot tile


@settings(max_examples=8, deadline=None)
@given(
    M=st.integers(1, 24),
    K=st.integers(4, 90),
    N=st.integers(1, 40),
    dtype=st.sampled_from(DTYPES),
    stride=st.sampled_from([1, 3]),
    tile=st.sampled_from([None, ONE_ROW, DOT]),
    seed=st.integers(0, 2**16),
)
def test_linear_any_shape(M, K, N, dtype, stride, tile, seed):
    check_linear(case(M, K, N, dtype, seed=seed, x_stride=stride), dtype, tile)


# ---- norm_out: the next GEMM's "separate" operand, rms_norm_rows of the stored result ----------------------

# The same fp32 math on the same stored values as rms_norm_rows (bitwise under the interpreter); compiled,
# the row's sum of squares may be added in another order: a few fp32 ulps, so in bf16 at most one rounding
# flip (one bf16 ulp: <= 2^-7 relative)
NORM_OUT_TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.bfloat16: dict(rtol=2**-7, atol=1e-6)}
WIDE_SPLIT = LinearConfig(16, 128, 16, 4, 1, split_k=2)  # for rows wider than the plain reduce's 1024 block


def norm_weight_for(N, dtype, seed=9):
    return (torch.rand(N, generator=torch.Generator().manual_seed(seed)) + 0.5).to(dtype)


@pytest.mark.parametrize(
    "out_dtype,norm_dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),  # an fp32 buffer shows out's rounding
        (torch.float32, torch.bfloat16),  # an fp32 residual stream, bf16 weights
    ],
)
@pytest.mark.parametrize(
    "M,N,config", [(5, 40, SPLIT), (20, 40, SPLIT), (3, 40, DOT), (2, 40, ONE_ROW), (2, 1100, WIDE_SPLIT)]
)
def test_linear_writes_the_next_norm(M, N, config, out_dtype, norm_dtype):
    """Split-K: the reduce writes it (one program per row); unsplit: rms_norm_rows after the GEMM. out is
    bitwise what it is without norm_out."""
    c = case(M, 48, N, out_dtype, seed=M)
    nw = norm_weight_for(N, norm_dtype)
    kw = dict(residual=c["residual"], eps=1e-5, config=config)
    plain = linear(c["x"], c["w"], c["bias"], out=poison(M, N, dtype=out_dtype), **kw)
    normed = poison(M, N, dtype=norm_dtype)
    y = linear(c["x"], c["w"], c["bias"], out=poison(M, N, dtype=out_dtype), norm_out=(nw, normed), **kw)
    assert torch.equal(y, plain)
    close(normed, rms_norm_rows(y, nw, 1e-5, norm_dtype), norm_dtype, **NORM_OUT_TOL[norm_dtype])


@pytest.mark.parametrize("config", [SPLIT, DOT])
def test_linear_writes_the_next_norm_in_place_from_strided_rows(config):
    # the down-projection's h += act @ w_down.T, then h's next norm
    c = case(6, 64, 40, torch.bfloat16, seed=2, x_stride=2)
    nw = norm_weight_for(40, torch.bfloat16)
    h = c["residual"].clone()
    expected = linear(c["x"], c["w"], residual=h, out=poison(6, 40, dtype=torch.bfloat16), config=config)
    normed = poison(6, 40, dtype=torch.bfloat16)
    linear(c["x"], c["w"], residual=h, out=h, config=config, norm_out=(nw, normed))
    assert torch.equal(h, expected)
    close(normed, rms_norm_rows(h, nw, 1e-6, torch.bfloat16), torch.bfloat16, **NORM_OUT_TOL[torch.bfloat16])


# ---- planted faults: each wrong reference must fail the same comparison -----------------------------------


@pytest.mark.parametrize(
    "config,mode",
    [(c, m) for c in (ONE_ROW, DOT) for m in NORM_MODES] + [(SPLIT, "prologue"), (SPLIT, "separate")],
)
def test_faults_are_caught(config, mode):
    c = case(4, 48, 24, torch.float32, seed=5)

    def no_residual(x, w, b, **kw):
        return linear_ref(x, w, b, **{**kw, "residual": None})

    def unit_norm_weight(x, w, b, norm_weight=None, **kw):
        return linear_ref(x, w, b, norm_weight=torch.ones_like(norm_weight), **kw)

    def no_bias(x, w, b, **kw):
        return linear_ref(x, w, None, **kw)

    def norm_over_half_row(x, w, b, norm_weight=None, norm_mode=None, **kw):  # rstd from K/2 columns only
        rstd = torch.rsqrt(x[:, : x.shape[1] // 2].pow(2).mean(-1, keepdim=True) + 1e-6)
        return linear_ref(x * rstd * norm_weight, w, b, **kw)

    check_linear(c, torch.float32, config, mode=mode)
    for fault in (no_residual, unit_norm_weight, no_bias, norm_over_half_row):
        must_fail(check_linear, c, torch.float32, config, ref=fault, mode=mode)
    w_up = torch.randn(24, 48)
    packed = pack_gate_up(c["w"], w_up)
    y = gate_up_silu(c["x"], c["norm_weight"], packed, out=poison(4, 24), config=config)
    swapped = pack_gate_up(w_up, c["w"])  # gate and up exchanged
    must_fail(close, y, gate_up_silu_ref(c["x"], c["norm_weight"], swapped), torch.float32)
    must_fail(close, poison(4, 24), gate_up_silu_ref(c["x"], c["norm_weight"], packed), torch.float32)


def test_a_lost_split_is_caught():
    """Each K split's partial sums count: a reference without the last split's columns must fail."""
    c = case(20, 48, 24, torch.float32, seed=7)
    y = linear(c["x"], c["w"], out=poison(20, 24), config=SPLIT)  # K=48: splits of 16 columns
    close(y, linear_ref(c["x"], c["w"]), torch.float32)
    w_lost = c["w"].clone()
    w_lost[:, 32:] = 0
    must_fail(close, y, linear_ref(c["x"], w_lost), torch.float32)
    reordered = torch.cat(
        [c["w"][:, 16:32], c["w"][:, :16], c["w"][:, 32:]], dim=1
    )  # splits' columns swapped
    must_fail(close, y, linear_ref(c["x"], reordered), torch.float32)


@pytest.mark.parametrize("config", [SPLIT, DOT])
def test_norm_out_faults_are_caught(config):
    """bf16 out, fp32 norm buffer (the rounding of out shows in it): a norm of the unrounded result, without
    the residual, over part of the row, or without the norm weight must fail."""
    M, N, eps = 20, 40, 1e-6
    c = case(M, 48, N, torch.bfloat16, seed=11)
    nw = norm_weight_for(N, torch.float32)
    normed = poison(M, N)
    y = linear(c["x"], c["w"], residual=c["residual"], config=config, norm_out=(nw, normed))

    def check(expected):
        close(normed, expected, torch.float32, **NORM_OUT_TOL[torch.float32])

    check(rms_norm_rows(y, nw, eps, torch.float32))
    # the kernel's own fp32 result (same accumulation order), not rounded to out's bf16
    unrounded = linear(c["x"], c["w"], residual=c["residual"], config=config, out=poison(M, N))
    assert torch.equal(unrounded.bfloat16(), y) and not torch.equal(unrounded, y.float())
    must_fail(check, rms_norm_rows(unrounded, nw, eps, torch.float32))
    no_residual = linear(c["x"], c["w"], config=config, out=poison(M, N, dtype=torch.bfloat16))
    must_fail(check, rms_norm_rows(no_residual, nw, eps, torch.float32))
    must_fail(check, rms_norm_rows(y, torch.ones_like(nw), eps, torch.float32))
    yf = y.float()  # rstd from the first 16 columns only (a reduce program per column block)
    rstd = torch.rsqrt(yf[:, :16].pow(2).mean(-1, keepdim=True) + eps)
    must_fail(check, yf * rstd * nw)
