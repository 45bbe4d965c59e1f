"""decoder_step (one launch for a decoder pass of a few rows) == PackedDecoder.forward (norm_mode
"prologue"), hidden states and caches; under the interpreter one launch per phase, on a grid of fewer
programs than tiles. Planted faults: a phase skipped, two phases run out of order (what a barrier that
did not wait would let happen), a reference that ignores the rows' start. And the one-launch kernel
compiled for the GPUs it targets: its barrier is one thread's release/acquire atomics, and the next
phase's weights are prefetched toward L2 (inline PTX the interpreter cannot run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from utter_tts.kernels import decoder_step as ds  # noqa: E402
from utter_tts.kernels.packed_decoder import PackedDecoder  # noqa: E402
from utter_tts.model.layers import Decoder, Rotary  # noqa: E402

from .test_packed_decoder import ODD, TINY, build  # noqa: E402
from .util import close, must_fail  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")
L = 16  # the code predictor's cache columns

# rows as the code predictor packs them: (slot, start, col) each
DECODE = [(2, 0, 5)]  # one stream, steps 2-15
FIRST_STEP = [(1, 0, 0), (1, 0, 1), (3, 0, 0), (3, 0, 1)]  # two streams' two rows at columns 0, 1
MIXED = [(0, 0, 7), (3, 2, 9), (1, 0, 0), (1, 0, 1), (4, 0, 15)]  # a left start, the last column


def _inputs(dec, rows, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = dec.norm.weight.shape[0]
    x = torch.randn(len(rows), hidden, generator=g).to(dtype)
    slot = torch.tensor([r[0] for r in rows])
    start = torch.tensor([r[1] for r in rows])
    col = torch.tensor([r[2] for r in rows])
    pos = torch.stack([col, 2 * col + 1, col + 3])  # distinct per axis (M-RoPE)
    return x, slot, col, pos, start


def _caches(dec, dtype, seed, columns=L):
    """Two identical stacked cache sets (random history: rows read columns they did not write)."""
    g = torch.Generator().manual_seed(seed + 1)
    a = dec.new_caches(5, columns, dtype, "cpu", stacked=True)
    b = dec.new_caches(5, columns, dtype, "cpu", stacked=True)
    for ca, cb in zip(a, b):
        for ta, tb in ((ca.k, cb.k), (ca.v, cb.v)):
            ta.copy_(torch.randn(ta.shape, generator=g).to(dtype))
            tb.copy_(ta)
    return a, b


def reference(packed, x, slot, col, pos, start, caches):
    return packed.forward(x.clone(), slot, col, pos, start, caches)


def check_step(
    shape, dtype, rows, weights="bf16", programs=3, phases=None, ref=reference, seed=0, split=1, columns=L
):
    dec, rot = build(shape, dtype, seed)
    packed = PackedDecoder(dec, rot, norm_mode="prologue", weights=weights, stacked=True)
    x, slot, col, pos, start = _inputs(dec, rows, dtype, seed)
    ours, theirs = _caches(dec, dtype, seed, columns)
    expected = ref(packed, x, slot, col, pos, start, theirs)
    got = ds.decoder_step(
        packed, x.clone(), slot, col, pos, start, ours, programs=programs, phases=phases, split_narrow=split
    )
    tol = {} if dtype == torch.float32 or columns <= ds.MAX_COLUMNS else dict(rtol=3e-2, atol=3e-2)
    close(got, expected, dtype, scale=float(expected.float().abs().max()), **tol)
    for a, b in zip(ours, theirs):
        close(a.k, b.k, dtype, **tol)
        close(a.v, b.v, dtype, **tol)
    ws, counts = ds.workspace_for(packed)  # left as found: zero
    assert not ws.any() and not counts.any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [DECODE, FIRST_STEP, MIXED], ids=["decode", "first_step", "mixed"])
@pytest.mark.parametrize("shape", [TINY, ODD], ids=["tiny", "odd"])
def test_decoder_step_equals_the_layered_pass(shape, rows, dtype):
    check_step(shape, dtype, rows)


@pytest.mark.parametrize("programs", [1, 2, 64])
def test_any_grid_computes_the_same(programs):
    """Tiles and kv heads spread over 1 program, 2, or more programs than there are tiles."""
    check_step(TINY, torch.float32, MIXED, programs=programs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [TINY, ODD], ids=["tiny", "odd"])
def test_narrow_projections_split_in_two(shape, dtype):
    """The o- and down-projections' K in two halves added atomically: the same result, the workspace
    and its counters back at zero (checked by check_step), with each half on its own program or both
    on one."""
    for programs in (1, 3):
        check_step(shape, dtype, MIXED, programs=programs, split=2)


# the talker's rows: long caches (attention in three phases: q/k + cache write, column splits, combine)
LONG_COLUMNS = 600
LONG_ROWS = [(0, 0, 599), (3, 37, 450), (1, 0, 0), (1, 0, 1), (4, 0, 130)]


@pytest.mark.parametrize("programs", [3, 64])  # 64: 4 column splits of the 600-column span
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [TINY, ODD], ids=["tiny", "odd"])
def test_long_caches(shape, dtype, programs):
    """Past MAX_COLUMNS columns (the talker's caches): the same as the layered pass, whose attention
    splits its columns its own way (bf16: a rounding of the split sums apart)."""
    check_step(shape, dtype, LONG_ROWS, programs=programs, columns=LONG_COLUMNS)


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_8bit_weights(weights):
    """8-bit stacks (scales per output channel) give what the layered pass with the same weights gives."""
    check_step(ODD, torch.bfloat16, MIXED, weights=weights)


def test_full_rows_and_bounds():
    """MAX_ROWS rows at once; `supports` takes stacked decoders only, up to MAX_ROWS rows and
    MAX_COLUMNS columns."""
    rows = [(i % 5, 0, i) for i in range(ds.MAX_ROWS)]
    check_step(TINY, torch.float32, rows)
    dec, rot = build(TINY, torch.float32)
    stacked = PackedDecoder(dec, rot, stacked=True)
    assert ds.supports(stacked, ds.MAX_ROWS, L) and ds.supports(stacked, 1, 2560)
    assert not ds.supports(stacked, ds.MAX_ROWS + 1, L)
    assert not ds.supports(PackedDecoder(*build(TINY, torch.float32)), 1, L)


def test_caches_must_be_stacked():
    dec, rot = build(TINY, torch.float32)
    packed = PackedDecoder(dec, rot, norm_mode="prologue", stacked=True)
    x, slot, col, pos, start = _inputs(dec, DECODE, torch.float32, 0)
    separate = dec.new_caches(5, L, torch.float32, "cpu")  # one allocation per layer
    with pytest.raises(AssertionError, match="stacked"):
        ds.decoder_step(packed, x, slot, col, pos, start, separate)


def test_stacked_decoder_shares_the_eager_weights():
    """stacked=True moves every layer's fields into [layers, ...] stacks and points the eager modules
    at them: no second copy of the weights, and the eager model still computes the same."""
    dec, rot = build(ODD, torch.float32)
    x = torch.randn(1, 3, dec.norm.weight.shape[0])
    cols = torch.arange(3)[None]
    before = dec.run(x, cols.expand(3, -1, -1), cols, torch.zeros(1, dtype=torch.long), rot,
                     dec.new_caches(1, 8))  # fmt: skip
    packed = PackedDecoder(dec, rot, stacked=True)
    stacks = packed.stacks.t
    for i, layer in enumerate(dec.layers):
        a = layer.self_attn
        for param, name in ((a.o_proj.weight, "w_o"), (layer.mlp.down_proj.weight, "w_down"),
                            (a.q_proj.weight, "w_qkv"), (layer.input_layernorm.weight, "ln1"),
                            (a.k_norm.weight, "k_norm"), (a.o_proj.bias, "b_o")):  # fmt: skip
            assert param.untyped_storage().data_ptr() == stacks[name].untyped_storage().data_ptr(), name
        assert packed.layers[i].w_qkv.data_ptr() == stacks["w_qkv"][i].data_ptr()
    after = dec.run(x, cols.expand(3, -1, -1), cols, torch.zeros(1, dtype=torch.long), rot,
                    dec.new_caches(1, 8))  # fmt: skip
    assert torch.equal(before, after)


# ---- planted faults ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the faulty runs compute garbage on purpose
def test_faults_are_caught():
    dec_layers = TINY[0]
    every = list(range(dec_layers * ds.PHASES))
    skipped = [p for p in every if p != ds.PHASES + 3]  # layer 1's gate/up never runs
    swapped = list(every)
    swapped[1], swapped[2] = swapped[2], swapped[1]  # o-projection before the attention it reads

    def ignores_start(packed, x, slot, col, pos, start, caches):
        return reference(packed, x, slot, col, pos, torch.zeros_like(start), caches)

    for phases in (skipped, swapped):
        must_fail(check_step, TINY, torch.float32, MIXED, phases=phases)
        must_fail(check_step, TINY, torch.float32, MIXED, phases=phases, split=2)
    must_fail(check_step, TINY, torch.float32, MIXED, ref=ignores_start)
    long_every = list(range(dec_layers * ds.PHASES_LONG))
    combine_first = list(long_every)
    combine_first[2], combine_first[3] = combine_first[3], combine_first[2]  # combine before the splits
    no_cache_write = [p for p in long_every if p != ds.PHASES_LONG + 1]  # layer 1's q/k + cache write
    for phases in (combine_first, no_cache_write):
        must_fail(
            check_step, TINY, torch.float32, LONG_ROWS, programs=64, phases=phases, columns=LONG_COLUMNS
        )
    must_fail(
        check_step, TINY, torch.float32, LONG_ROWS, programs=64, ref=ignores_start, columns=LONG_COLUMNS
    )


# ---- the GPU build ---------------------------------------------------------------------------------------


def compile_variants() -> dict:
    """Compile the one-launch kernel (real code-predictor shapes) for sm_90 and sm_86 from recorded
    launches, bf16 weights with the narrow projections whole and split in two, int8 split: the PTX's
    gpu-scope atomics and loads, and its L2 prefetches."""
    import re

    from utter_tts.kernels._jit import compile_for, record_launches

    out = {}
    # the code predictor's shapes, and the talker's (hidden 2,048, 2,560 columns: three-phase attention)
    for weights, split, hidden, inter, columns in (
        ("bf16", 1, 1024, 3072, L), ("bf16", 2, 1024, 3072, L), ("int8", 2, 1024, 3072, L),
        ("bf16_talker", 1, 2048, 6144, 2560),
    ):  # fmt: skip
        dec = Decoder(2, hidden, inter, 16, 8, 128, 1e-6, False).to(torch.bfloat16)
        mode = weights.split("_")[0]
        packed = PackedDecoder(dec, Rotary(128, 1e6, [16, 24, 24], True), weights=mode, stacked=True)
        caches = dec.new_caches(2, columns, torch.bfloat16, "cpu", stacked=True)
        x, z = torch.zeros(1, hidden, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.long)
        with record_launches() as rec:
            ds.decoder_step(packed, x, z, z, z.expand(3, -1), z, caches, phased=False, programs=132,
                            prefetch=True, split_narrow=split)  # fmt: skip
        ((kernel, args, kwargs, _),) = rec
        for arch in (90, 86):
            compiled = compile_for(kernel, args, kwargs, arch=arch)
            ptx, shared = compiled.asm["ptx"], compiled.metadata.shared
            atomics = [
                ln.strip() for ln in ptx.splitlines() if re.search(r"\b(atom|red|ld)\.global\.gpu\.", ln)
            ]
            out[f"{weights}_split{split}/{arch}"] = dict(
                atomics=atomics, prefetches=ptx.count("prefetch.global.L2"), shared=shared
            )
    return out


@pytest.mark.skipif(
    not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
    reason="this triton build ships no ptxas",
)
def test_one_launch_kernel_compiles_with_a_one_thread_barrier():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = SRC + os.pathsep + str(Path(SRC).parent)
    code = "import json; from tests.kernels.test_decoder_step import compile_variants as c; "
    code += "print(json.dumps(c()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    variants = ("bf16_split1", "bf16_split2", "int8_split2", "bf16_talker_split1")
    assert set(result) == {f"{v}/{a}" for v in variants for a in (90, 86)}
    for name, got in result.items():
        assert got["prefetches"] > 0, (name, "the weight prefetch was compiled out")
        assert got["shared"] <= 99 * 1024, (name, got["shared"], "more shared memory than an sm_86 block has")
        # the barrier's (and the split's arrival counts'): one thread each, predicated
        one_thread = [a for a in got["atomics"] if ".f32" not in a]
        kinds = " ".join(one_thread)
        # arrival (release), polls (acquire), exit count (acq_rel), the counters' reset
        for op in ("release.add", "acquire", "acq_rel.add", "exch"):
            assert op in kinds, (name, op, one_thread)
        assert all(a.startswith("@%p") for a in one_thread), (name, "an unpredicated atomic: every thread")
        partials = [a for a in got["atomics"] if ".f32" in a]  # the split's fp32 partial sums
        assert bool(partials) == ("split2" in name), (name, partials)
