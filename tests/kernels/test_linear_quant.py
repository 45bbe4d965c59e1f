"""8-bit weights (int8, fp8 e4m3) in linear / gate_up_silu: the quantizer's error bound, kernel == reference
op on every tile kind and epilogue, closeness to a float64 product of the dequantized weights, planted
faults (a skipped, misplaced, doubled or swapped scale) and the kernels compiled for the GPUs they target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from utter_tts.kernels._jit import compile_for, record_launches  # noqa: E402
from utter_tts.kernels.linear import (  # noqa: E402
    NORM_MODES,
    QuantWeight,
    gate_up_silu,
    gate_up_silu_ref,
    linear,
    linear_ref,
    pack_gate_up,
    quantize_weight,
    rms_norm_rows,
)

from .test_linear import DOT, NARROW, ONE_ROW, SPLIT, SPLIT_ONE_ROW, case, norm_weight_for  # noqa: E402
from .util import DTYPES, close, must_fail, poison  # noqa: E402

MODES = ["int8", "fp8"]
SRC = str(Path(__file__).resolve().parents[2] / "src")
ALL = ("bias", "norm_weight", "residual")


def quant_case(M, K, N, dtype, mode, seed=0, x_stride=1):
    c = case(M, K, N, dtype, seed=seed, x_stride=x_stride)
    # rows of very different magnitudes: one scale for the whole tensor would lose the small rows
    rows = torch.logspace(-2, 1, N)[torch.randperm(N, generator=torch.Generator().manual_seed(seed))]
    c["w"] = (c["w"].float() * rows[:, None]).to(dtype)
    c["qw"] = quantize_weight(c["w"], mode)
    return c


def check(c, dtype, config=None, use=ALL, ref=linear_ref, mode=None):
    kw = {k: c[k] for k in use if k != "bias"}
    bias = c["bias"] if "bias" in use else None
    M, N = c["x"].shape[0], c["qw"].shape[0]
    y = linear(c["x"], c["qw"], bias, **kw, norm_mode=mode, out=poison(M, N, dtype=dtype), config=config)
    close(y, ref(c["x"], c["qw"], bias, **kw, norm_mode=mode), dtype)
    return y


def float64_ref(x, w64, bias=None, norm_weight=None, residual=None, eps=1e-6):
    """The exact math: RMSNorm, product, bias, residual all in float64, no roundings."""
    x = x.double()
    if norm_weight is not None:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    y = x @ w64.T
    if bias is not None:
        y = y + bias.double()
    return y if residual is None else y + residual.double()


def rel_err(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


# ---- the quantizer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_quantizer_round_trip(mode, dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 64, generator=g) * torch.logspace(-3, 2, 48)[:, None]
    w[5] = 0  # an all-zero row: scale 1, q 0, no NaN
    w[7, 3] = -w[7].abs().max() * 2  # the row's extreme is negative: -127 / -448 exactly
    w = w.to(dtype)
    qw = quantize_weight(w, mode)
    assert qw.q.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[mode] and qw.q.shape == w.shape
    assert qw.scale.dtype == torch.float32 and qw.scale.shape == (48,) and qw.dtype == dtype
    assert qw.scale[5] == 1 and (qw.q[5].float() == 0).all()
    top = {"int8": 127, "fp8": 448}[mode]
    assert qw.q[7, 3].float() == -top
    qf = qw.q.float()
    assert qf.isfinite().all() and (qf.abs().amax(1)[torch.arange(48) != 5] == top).all()  # full range used
    wf, deq = w.float(), qf * qw.scale[:, None]
    s = qw.scale[:, None]
    if mode == "int8":  # rounding to the nearest step of the row's grid: half a step
        bound = s / 2
    else:  # e4m3: 3 mantissa bits (half an ulp: 2^-4 relative); subnormals below 2^-6: steps of 2^-9
        bound = torch.maximum(wf.abs() * 2**-4, s * 2**-10)
    assert ((wf - deq).abs() <= bound * (1 + 1e-5)).all()
    assert torch.equal(qw.dequantize(), deq.to(dtype))
    assert qw.nbytes == 48 * 64 + 48 * 4


def test_quantizer_refuses_unknown_modes():
    with pytest.raises(ValueError, match="weights"):
        quantize_weight(torch.randn(4, 4), "int4")


# ---- kernel == reference op -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "M,config", [(1, None), (1, ONE_ROW), (3, NARROW), (3, DOT), (20, None), (3, SPLIT), (20, SPLIT),
                 (2, SPLIT_ONE_ROW)]
)  # fmt: skip
def test_quant_linear_fused(M, config, dtype, mode):
    """Bias, RMSNorm (the tile's default mode) and residual together; K and N not multiples of the tiles.
    Also: within bf16 rounding of the float64 product of the dequantized weights."""
    c = quant_case(M, 72, 40, dtype, mode, seed=M)
    y = check(c, dtype, config)
    exact = float64_ref(c["x"], c["qw"].q.double() * c["qw"].scale.double()[:, None], c["bias"],
                        c["norm_weight"], c["residual"])  # fmt: skip
    assert rel_err(y, exact) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm_mode,config", [(m, t) for m in NORM_MODES for t in (ONE_ROW, DOT)])
def test_quant_linear_norm_modes(norm_mode, config, mode):
    check(quant_case(5, 72, 40, torch.bfloat16, mode, seed=2), torch.bfloat16, config, mode=norm_mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use", [(), ("bias",), ("norm_weight",), ("residual",)])
def test_quant_linear_each_feature_alone(use, mode):
    c = quant_case(5, 48, 24, torch.bfloat16, mode, seed=1)
    for config in (ONE_ROW, DOT, SPLIT):
        check(c, torch.bfloat16, config, use)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "M,config", [(1, None), (3, ONE_ROW), (5, DOT), (17, None), (5, SPLIT), (2, SPLIT_ONE_ROW)]
)
def test_quant_gate_up_silu(M, config, mode):
    c = quant_case(M, 56, 36, torch.bfloat16, mode, seed=M)
    w_up = (torch.randn(36, 56) / 80).bfloat16()  # scales unlike the gate's: a swap would show
    packed = quantize_weight(pack_gate_up(c["w"], w_up), mode)
    modes = (
        ("prologue", "separate") if config in (SPLIT, SPLIT_ONE_ROW) else NORM_MODES
    )  # split-K: norm first
    for nw, nm in [(c["norm_weight"], m) for m in modes] + [(None, None)]:
        y = gate_up_silu(c["x"], nw, packed, 1e-6, out=poison(M, 36, dtype=torch.bfloat16), config=config,
                         norm_mode=nm)  # fmt: skip
        close(y, gate_up_silu_ref(c["x"], nw, packed, norm_mode=nm), torch.bfloat16)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", [SPLIT, DOT, ONE_ROW])
def test_quant_down_projection_in_place_with_next_norm(config, mode):
    """The decoder's h += act @ w_down.T from strided rows, writing the next norm's operand."""
    c = quant_case(6, 64, 40, torch.bfloat16, mode, seed=2, x_stride=2)
    nw = norm_weight_for(40, torch.bfloat16)
    h = c["residual"].clone()
    expected = linear_ref(c["x"], c["qw"], residual=h)
    normed = poison(6, 40, dtype=torch.bfloat16)
    linear(c["x"], c["qw"], residual=h, out=h, config=config, norm_out=(nw, normed))
    close(h, expected, torch.bfloat16)
    close(normed, rms_norm_rows(h, nw, 1e-6, torch.bfloat16), torch.bfloat16, rtol=2**-7, atol=1e-6)


def test_plain_weights_still_take_the_plain_path():
    """A QuantWeight of bf16 values with unit scales gives bitwise the plain bf16 weight's result (so the
    8-bit path's only differences are the stored values and the scales)."""
    c = case(20, 48, 24, torch.bfloat16, seed=3)
    q = (c["w"].float() * 8).round().clamp(-127, 127)
    w = q.bfloat16()
    qw = QuantWeight(q.to(torch.int8), torch.ones(24), torch.bfloat16)
    for config in (ONE_ROW, DOT, SPLIT):
        kw = dict(norm_weight=c["norm_weight"], residual=c["residual"], config=config)
        assert torch.equal(linear(c["x"], qw, c["bias"], **kw), linear(c["x"], w, c["bias"], **kw))


# ---- planted faults ---------------------------------------------------------------------------------------


def _with_scale(qw: QuantWeight, scale: torch.Tensor) -> QuantWeight:
    return QuantWeight(qw.q, scale, qw.dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", [ONE_ROW, DOT, SPLIT])
def test_quant_faults_are_caught(config, mode):
    """Square weight (K = N) so a scale along the wrong axis is well-formed."""
    c = quant_case(4, 48, 48, torch.float32, mode, seed=5)
    qw = c["qw"]

    def ref_with(weight):
        return lambda x, w, b, **kw: linear_ref(x, weight, b, **kw)

    def scale_along_k(x, w, b, **kw):  # dequantized with s[k] instead of s[n]
        return linear_ref(x, (qw.q.float() * qw.scale[None, :]), b, **kw)

    check(c, torch.float32, config)
    faults = [
        ref_with(_with_scale(qw, torch.ones_like(qw.scale))),  # the scale skipped
        ref_with(_with_scale(qw, qw.scale**2)),  # applied twice (partial and reduce)
        ref_with(_with_scale(qw, qw.scale.flip(0))),  # another channel's scale
        scale_along_k,
    ]
    for fault in faults:
        must_fail(check, c, torch.float32, config, ref=fault)
    # gate_up: the up rows' scales are the second half; using the gate's for both (or the reverse) fails
    w_up = torch.randn(48, 48) / 500
    packed = quantize_weight(pack_gate_up(c["w"], w_up), mode)
    y = gate_up_silu(c["x"], c["norm_weight"], packed, out=poison(4, 48), config=config)
    close(y, gate_up_silu_ref(c["x"], c["norm_weight"], packed), torch.float32)
    s = packed.scale
    for wrong in (torch.cat([s[:48], s[:48]]), torch.cat([s[48:], s[48:]]), torch.cat([s[48:], s[:48]])):
        must_fail(
            close, y, gate_up_silu_ref(c["x"], c["norm_weight"], _with_scale(packed, wrong)), torch.float32
        )


# ---- compiled for the GPUs (no GPU needed: Triton's ptxas) ------------------------------------------------


def compile_quant_variants() -> dict[str, str]:
    """Compile the 8-bit linear kernel (one-row and tensor-core tiles) for sm_80, sm_86 and sm_90; "ok" or
    the error per (mode, arch, tile). Run in a fresh process without TRITON_INTERPRET (see test_plumbing)."""
    out = {}
    for mode in MODES:
        c = quant_case(20, 256, 64, torch.bfloat16, mode)
        for name, config in (("one_row", ONE_ROW), ("dot", DOT)):
            with record_launches() as rec:
                linear(c["x"], c["qw"], c["bias"], norm_weight=c["norm_weight"], residual=c["residual"],
                       config=config)  # fmt: skip
            ((kernel, args, kwargs),) = [
                (k, a, kw) for k, a, kw, _ in rec if k.fn.__name__ == "_linear_kernel"
            ]
            for arch in (80, 86, 90):
                try:
                    ptx = compile_for(kernel, args, kwargs, arch=arch).asm["ptx"]
                    out[f"{mode}/{arch}/{name}"] = "ok" if "cvt" in ptx else "no conversion in the PTX"
                except Exception as e:  # noqa: BLE001 - the message is the result
                    out[f"{mode}/{arch}/{name}"] = f"{type(e).__name__}: {str(e)[-300:]}"
    return out


@pytest.mark.skipif(
    not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
    reason="this triton build ships no ptxas",
)
def test_quant_kernels_compile_for_their_gpus():
    """int8 compiles for Ampere (the A10G is sm_86) and Hopper; fp8 e4m3 for Hopper, and not for sm_80/86
    (why --weights fp8 is refused there: Triton has no e4m3 conversions before sm_89)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = SRC + os.pathsep + str(Path(SRC).parent)
    code = "import json; from tests.kernels.test_linear_quant import compile_quant_variants as c; "
    code += "print(json.dumps(c()))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(SRC).parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    for key, result in got.items():
        mode, arch, _ = key.split("/")
        if mode == "fp8" and int(arch) < 89:
            assert "fp8e4nv not supported" in result, (key, result)
        else:
            assert result == "ok", (key, result)
