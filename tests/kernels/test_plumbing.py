"""The kernels' plumbing: interpreter choice whatever the import order, the interpreter's bf16 fixes,
launch counts, and a real sm_90 compile (with the ptxas Triton ships) of every production variant."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="the fused kernels need triton (CPU runs use its interpreter)")

from utter_tts.kernels._jit import compile_for, record_launches  # noqa: E402
from utter_tts.kernels.linear import linear  # noqa: E402
from utter_tts.kernels.packed_decoder import PackedDecoder  # noqa: E402
from utter_tts.kernels.sampler import Embed, noise, sample  # noqa: E402
from utter_tts.model.layers import Decoder, Rotary  # noqa: E402

SRC = str(Path(__file__).resolve().parents[2] / "src")

SCRIPT = """
import os, sys
import triton  # imported BEFORE the variable is looked at: triton.language's helpers are compiled-mode now
os.environ.pop("TRITON_INTERPRET", None)
import torch
from utter_tts.kernels.linear import linear, linear_ref
x, w = torch.randn(3, 40), torch.randn(24, 40)
assert torch.allclose(linear(x, w), linear_ref(x, w), rtol=1e-5, atol=1e-5)
os.environ["TRITON_INTERPRET"] = "1"  # set late: changes nothing for us
assert torch.allclose(linear(x, w), linear_ref(x, w), rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_interpreter_does_not_depend_on_import_order():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_interpreter_rounds_fp32_to_bf16_to_nearest_even():
    # x * I with bf16 weights: x is rounded to bf16 for the product (the patched cast), the sum is exact
    x = torch.tensor(
        [[1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8) - 2**-20, 1 + 2**-9, 3.14159, -2.71828, 1e-3, 7.0]]
    )
    eye = torch.eye(8, dtype=torch.bfloat16)
    y = linear(x, eye, out=torch.empty(1, 8))
    assert torch.equal(y, x.to(torch.bfloat16).float())
    # and a bf16 store of an fp32 result (1 + 2^-8 is a tie: to even, i.e. 1.0)
    z = linear(x.to(torch.bfloat16).float(), torch.eye(8), out=torch.empty(1, 8, dtype=torch.bfloat16))
    assert torch.equal(z, x.to(torch.bfloat16))


def real_decoder(layers, hidden, inter, heads, kv, hd, sections, theta):
    """A full-width decoder (uninitialised memory: only the shapes matter here), bf16."""
    with torch.device("meta"):
        dec = Decoder(layers, hidden, inter, heads, kv, hd, 1e-6, False)
    dec = dec.to_empty(device="cpu").to(torch.bfloat16)
    return dec, Rotary(hd, theta, sections, sections is not None)


TALKER = (1, 2048, 6144, 16, 8, 128, [24, 20, 20], 1e6)
PREDICTOR = (1, 1024, 3072, 16, 8, 128, None, 1e4)


def record_pass(shape, M, span, splits=None, norm_mode=None):
    dec, rot = real_decoder(*shape)
    packed = PackedDecoder(dec, rot, norm_mode=norm_mode)
    kv, hd = shape[4], shape[5]
    caches = [(torch.empty(4, kv, span, hd, dtype=torch.bfloat16),) * 2]
    z = torch.zeros(M, dtype=torch.long)
    with record_launches() as rec:
        packed(
            torch.empty(M, shape[1], dtype=torch.bfloat16), z, z, z.expand(3, M), z, caches, num_splits=splits
        )
    return rec


def test_launches_per_layer():
    names = [k.fn.__name__ for k, *_ in record_pass(PREDICTOR, 2, 16, splits=1)]
    assert names == ["_linear_kernel", "_qk_norm_rope_kernel", "_attention_kernel"] + ["_linear_kernel"] * 3
    assert len(record_pass(TALKER, 1, 2560, splits=8)) == 7  # + the split-attention combine


def _resources(compiled) -> dict[str, int]:
    """Registers, stack frame and spill bytes, as ptxas reports them for the kernel's PTX."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile(suffix=".ptx", mode="w") as f:
        f.write(compiled.asm["ptx"])
        f.flush()
        cmd = [str(ptxas), "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull]
        text = subprocess.run(cmd, capture_output=True, text=True).stderr
    nums = {
        "reg": r"Used (\d+) registers",
        "stack": r"(\d+) bytes stack frame",
        "spill_stores": r"(\d+) bytes spill stores",
        "spill_loads": r"(\d+) bytes spill loads",
    }
    return {k: int(re.search(p, text).group(1)) for k, p in nums.items()}


def compile_production_variants() -> list:
    """Compile every bf16 variant of a talker pass (batch 1 with split attention, batch 64 with tensor-core
    tiles), a predictor pass (2 rows) and the sampler for sm_90; fail on any register spill."""
    launches = record_pass(TALKER, 1, 2560, splits=10) + record_pass(TALKER, 64, 2560)
    launches += record_pass(PREDICTOR, 2, 16)
    # the alternative norm mode's variants too
    launches += record_pass(TALKER, 1, 2560, splits=10, norm_mode="one_pass")
    launches += record_pass(TALKER, 64, 2560, norm_mode="one_pass")
    V, M = 3072, 4
    f, i = torch.ones(M), torch.ones(M, dtype=torch.long)
    b = torch.ones(M, dtype=torch.bool)
    acc = torch.empty(M, 2048, dtype=torch.bfloat16)
    common = dict(do_sample=b, temperature=f, top_k=i, top_p=f, seeds=i)
    talker_masks = dict(
        seen=torch.zeros(M, V, dtype=torch.bool),
        repetition_penalty=f,
        suppress=torch.zeros(V, dtype=torch.bool),
        min_new_tokens=i,
        eos_id=5,
    )
    with record_launches() as rec:
        table = torch.empty(V, 2048, dtype=torch.bfloat16)
        sample(
            torch.empty(M, V),
            **common,
            **talker_masks,
            frame=i,
            codebook=0,
            embed=Embed(table, out=acc, acc=acc, start=True),
        )
        table = torch.empty(2048, 2048, dtype=torch.bfloat16)
        sample(
            torch.empty(M, 2048), **common, frame=1, codebook=1, embed=Embed(table, out=acc, acc=acc, add=acc)
        )
        noise(i, 1, 1, V)
    seen, report = set(), []
    for kernel, args, kwargs, _ in launches + rec:
        key = (kernel.fn.__name__, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key in seen:
            continue
        seen.add(key)
        # as launched on Hopper: programmatic dependent launch (the in-kernel wait must be there)
        compiled = compile_for(kernel, args, {**kwargs, "USE_PDL": True, "launch_pdl": True}, arch=90)
        assert "griddepcontrol.wait" in compiled.asm["ptx"], key
        res = _resources(compiled)
        res["shared"] = compiled.metadata.shared
        report.append((kernel.fn.__name__, res))
        assert res["shared"] <= 227 * 1024, ("more shared memory than an H100/H200 block may have", key, res)
        # (a stack frame alone is fine: libdevice's cos/sin keep their slow-path reduction table there)
        assert res["spill_stores"] == 0 and res["spill_loads"] == 0, ("spills", key, res)
    return report


@pytest.mark.skipif(
    not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
    reason="this triton build ships no ptxas",
)
def test_production_variants_compile_for_sm90_without_spills():
    """The interpreter runs Python, so a kernel it accepts may still fail to compile. In a fresh process:
    with TRITON_INTERPRET=1 at import, triton.language's own helpers exist only in interpreted form and
    nothing compiles."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = SRC + os.pathsep + str(Path(SRC).parent)
    code = "from tests.kernels.test_plumbing import compile_production_variants as c; print(len(c()))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(SRC).parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 16  # distinct variants compiled
