"""Kernel plumbing: a @triton.jit that runs under Triton's interpreter when its tensors are on the CPU.

Triton decides between compiling and interpreting when a function is decorated (it reads
TRITON_INTERPRET then), and so do triton.language's own helpers (tl.zeros, tl.sum, ...: decorated when
triton is imported). A test that sets the variable after something imported triton or our kernels would
get compiled functions that cannot run on CPU tensors. So `jit` keeps both forms and picks per launch:
the interpreter for CPU tensors (or when TRITON_INTERPRET=1), the compiler otherwise; and during an
interpreted launch, calls to compiled helpers (ours or triton.language's) run through the interpreter
too (`_helpers_interpreted`). Import order and the variable then do not matter.

The Triton 3.6 interpreter mishandles bf16 (it keeps bf16 as raw uint16 bits): `tl.dot` on bf16
multiplies the bit patterns, fp32 -> bf16 casts truncate instead of rounding to nearest even, and
int -> bf16 casts store the integer's value as the bits.
And with NumPy >= 2.4 its `range(0, K, ...)` over a scalar argument fails. `_patch_interpreter` fixes
these inside the interpreter (the GPU path is untouched) so CPU runs of the bf16 kernels compute what
the GPU computes. Our kernels do every other bf16 op in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading

import numpy as np
import torch
import triton
import triton.language as tl
from triton import knobs
from triton.language import core as _tl_core
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


def _uses_cpu(args, kwargs) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a.device.type == "cpu"
    return False


class Kernel(JITFunction):
    """A JITFunction that launches through the interpreter for CPU tensors (see the module docstring)."""

    def __init__(self, fn, **kwargs):
        super().__init__(fn, **kwargs)
        self._interp = InterpretedFunction(fn, **kwargs)

    def run(self, *args, grid, warmup, **kwargs):
        if _RECORDING is not None:  # record_launches(): note the launch, run nothing
            _RECORDING.append((self, args, dict(kwargs), grid))
            return None
        if knobs.runtime.interpret or _uses_cpu(args, kwargs):
            _patch_interpreter()
            with _helpers_interpreted():
                return self._interp.run(*args, grid=grid, warmup=warmup, **kwargs)
        if pdl_enabled(torch.cuda.current_device()):
            kwargs = {**kwargs, "USE_PDL": True, "launch_pdl": True}
        return super().run(*args, grid=grid, warmup=warmup, **kwargs)

    def __call__(self, *args, **kwargs):
        # only reached from an interpreted kernel (a compiled one inlines helpers without calling this)
        return _run_helper(self._interp, args, kwargs)


_RECORDING: list | None = None


@functools.lru_cache(maxsize=16)
def pdl_enabled(device_index: int) -> bool:
    """Programmatic dependent launch (every kernel is launched early and waits in-kernel for its
    predecessor, hiding launch gaps) on Hopper and newer only: the capability check that keeps the A10G
    (sm_86) on plain launches. UTTER_TTS_PDL=0 turns it off (the bench runs the non-Hopper configuration
    that way on a Hopper card)."""
    if os.environ.get("UTTER_TTS_PDL", "1") == "0":
        return False
    return torch.cuda.get_device_capability(device_index)[0] >= 9


@functools.lru_cache(maxsize=16)
def sm_count(device: torch.device) -> int:
    """The streaming multiprocessors of a CUDA device (grids are sized by it); 1 elsewhere."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@contextlib.contextmanager
def record_launches():
    """Collect (kernel, args, kwargs, grid) of every launch instead of running it (for `compile_for`)."""
    global _RECORDING
    saved, _RECORDING = _RECORDING, []
    try:
        yield _RECORDING
    finally:
        _RECORDING = saved


def compile_for(kernel: Kernel, args, kwargs, arch: int = 90):
    """Compile one recorded launch for a CUDA arch without a GPU (Triton ships ptxas), exactly as a launch
    with those arguments would specialise it. Returns the CompiledKernel (asm: ttgir, ptx, cubin)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
    return compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


_INTERPRETED: dict = {}
_HELPERS_LOCK = threading.RLock()


def _call_interpreted(self, *args, **kwargs):
    f = _INTERPRETED.get(self.fn)
    if f is None:
        f = _INTERPRETED[self.fn] = InterpretedFunction(self.fn)
    return _run_helper(f, args, kwargs)


def _run_helper(f: InterpretedFunction, args, kwargs):
    """InterpretedFunction.__call__ without its leak: it patches triton.language's builtins for the
    helper's module (tl.core for triton.language's own helpers) and never undoes it, which would leave
    later *compiled* kernels in this process calling the interpreter's semantics. Inside an interpreted
    launch both are patched already (`_helpers_interpreted`), so a helper just runs: patching per call
    (every helper call of every program) was most of an interpreted frame's time."""
    from triton.runtime import interpreter as ti

    if _LANG_PATCHED:
        return f.rewrite()(*args, **kwargs)
    scope = ti._patch_lang(f.fn)
    try:
        return f.rewrite()(*args, **kwargs)
    finally:
        scope.restore()


_LANG_PATCHED = False


def _both_langs():
    """Names triton.language and tl.core in its globals, so `_patch_lang` of it patches both."""
    return tl, _tl_core


@contextlib.contextmanager
def _helpers_interpreted():
    """While an interpreted kernel runs, a compiled helper it calls (JITFunction.__call__, which would
    raise "Cannot call @triton.jit'd outside of the scope of a kernel") runs interpreted instead, with
    triton.language patched for the interpreter once for the whole launch (undone after it)."""
    global _LANG_PATCHED
    from triton.runtime import interpreter as ti

    with _HELPERS_LOCK:
        saved, outer = JITFunction.__call__, _LANG_PATCHED
        JITFunction.__call__ = _call_interpreted
        scope = None if outer else ti._patch_lang(_both_langs)
        _LANG_PATCHED = True
        try:
            yield
        finally:
            _LANG_PATCHED = outer
            if scope is not None:
                scope.restore()
            JITFunction.__call__ = saved


def jit(fn=None, **kwargs):
    """Decorator like triton.jit, returning a `Kernel`."""
    if fn is None:
        return lambda f: Kernel(f, **kwargs)
    return Kernel(fn, **kwargs)


@jit
def pdl_wait(USE_PDL: tl.constexpr):
    """A kernel's first statement. On Hopper, launched early (programmatic dependent launch): wait for the
    previous kernel's results before touching memory, and let the next kernel's grid start launching."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


_PATCHED = False


def _bf16_bits_to_f32(data: np.ndarray) -> np.ndarray:
    return (data.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(data: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def _patch_interpreter() -> None:
    global _PATCHED
    if _PATCHED:
        return
    from triton.runtime import interpreter as ti

    builder = ti.InterpreterBuilder
    orig_cast, orig_fp_to_fp, orig_dot = builder.cast_impl, builder.create_fp_to_fp, builder.create_dot

    # each fix applies only to the representation it was written for (fp32 data, bf16 as uint16 bits),
    # so an interpreter that stops needing it is left alone
    def to_bf16(src, dst_type):
        if dst_type.scalar != tl.bfloat16:
            return None
        fix = src.dtype.scalar == tl.float32 and src.data.dtype == np.float32
        # integers (int8 weights) would be stored as their value in the uint16 bits: convert the value
        fix = fix or (src.dtype.scalar.is_int() and np.issubdtype(src.data.dtype, np.integer))
        return ti.TensorHandle(_f32_to_bf16_bits(src.data.astype(np.float32)), tl.bfloat16) if fix else None

    def cast_impl(self, src, dst_type):
        fixed = to_bf16(src, dst_type)
        return fixed if fixed is not None else orig_cast(self, src, dst_type)

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        fixed = to_bf16(src, dst_type)
        return fixed if fixed is not None else orig_fp_to_fp(self, src, dst_type, rounding_mode)

    def as_f32(h):
        if h.dtype.scalar == tl.bfloat16 and h.data.dtype == np.uint16:
            return ti.TensorHandle(_bf16_bits_to_f32(h.data), tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return orig_dot(self, as_f32(a), as_f32(b), d, input_precision, max_num_imprecise_acc)

    orig_patch_tensor = ti._patch_lang_tensor

    def patch_lang_tensor(tensor, scope):
        # scalars are 1-element arrays there; NumPy >= 2.4 refuses int() of those (`range(0, K, ...)`)
        orig_patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    ti._patch_lang_tensor = patch_lang_tensor
    # The interpreter checks every int32 add/mul for overflow (widen, compare, assert: ~7 extra ops each,
    # a third of an interpreted kernel's time). Interpreted runs are the tests' tiny tensors, far below
    # 2**31 elements, where it can never fire; the GPU never checks. Off, as in compiled kernels.
    ti.interpreter_builder.options = dataclasses.replace(
        ti.interpreter_builder.options, sanitize_overflow=False
    )
    builder.cast_impl = cast_impl
    builder.create_fp_trunc = cast_impl
    builder.create_fp_to_fp = create_fp_to_fp
    builder.create_dot = create_dot
    _PATCHED = True


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands multiply exactly ("ieee"); Triton's default would round them to tf32 on the GPU."""
    return "ieee" if dtype == torch.float32 else "tf32"


TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
