"""Benchmark and GPU check of the fused decode kernels (utter_tts.kernels) at the real 1.7B shapes.

  python bench/bench_kernels.py                 # on a CUDA machine: every section, JSON into $OUT
  python bench/bench_kernels.py --smoke         # on the CPU: tiny shapes through the Triton interpreter

Sections (--sections, comma-separated; default all):
  check    kernels vs their references (fp32 and bf16) and PackedDecoder vs the eager Decoder, on the GPU
  kernels  each kernel at M = 1, 8, 64 (bf16), and its eager PyTorch equivalent: us per call, GB/s
  passes   a whole PackedDecoder talker pass (28 layers) and code-predictor pass (5 layers) captured in a
           CUDA graph at M = 1, 8, 64, vs the eager Decoder.run in a CUDA graph; launches per pass
  sampler  the top-k sampler's tunings (warps, radix digit width, early exit) at M = 1, 8, 64 (opt-in)
  sweep    linear tile configs at M = 1, 2, 4, 8, 16, 32, 64 over the real weight shapes; best per M
Timing: every measured call runs inside a CUDA graph (no host launch overhead), cycling through enough
copies of its weights (>= 256 MB) that they are read from HBM as in a real frame, not from L2;
triton.testing.do_bench (median, with warm-up, L2 flushed before each replay) times the replays.
GB/s = bytes the call must move (weights + activations + KV-cache reads + writes) / time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from utter_tts.engine.runner import span_bucket  # noqa: E402
from utter_tts.kernels import (  # noqa: E402
    PackedDecoder,
    decode_attention,
    decode_attention_ref,
    gate_up_silu,
    gate_up_silu_ref,
    linear,
    linear_ref,
    noise,
    pack_gate_up,
    qk_norm_rope_write,
    qk_norm_rope_write_ref,
    sample,
)
from utter_tts.kernels._jit import record_launches  # noqa: E402
from utter_tts.kernels.linear import LinearConfig, candidate_configs, config_for  # noqa: E402
from utter_tts.kernels.sampler import Embed  # noqa: E402
from utter_tts.model.frame import pick_codebook0, suppressed_ids  # noqa: E402
from utter_tts.model.layers import Decoder, KVCache, Rotary  # noqa: E402
from utter_tts.model.sampling import choose, uniform_noise  # noqa: E402

REAL = {
    "talker": dict(
        layers=28,
        hidden=2048,
        inter=6144,
        heads=16,
        kv=8,
        hd=128,
        sections=[24, 20, 20],
        theta=1e6,
        vocab=3072,
        span=2560,
        ctx=1024,
    ),
    "predictor": dict(
        layers=5,
        hidden=1024,
        inter=3072,
        heads=16,
        kv=8,
        hd=128,
        sections=None,
        theta=1e4,
        vocab=2048,
        span=16,
        ctx=3,
    ),
}
TINY = {
    "talker": dict(
        layers=2,
        hidden=64,
        inter=128,
        heads=4,
        kv=2,
        hd=16,
        sections=[4, 2, 2],
        theta=1e6,
        vocab=300,
        span=64,
        ctx=40,
    ),
    "predictor": dict(
        layers=2,
        hidden=32,
        inter=64,
        heads=4,
        kv=2,
        hd=8,
        sections=None,
        theta=1e4,
        vocab=200,
        span=16,
        ctx=3,
    ),
}
EPS = 1e-6
RESULTS: dict = {"checks": [], "kernels": [], "passes": [], "sweep": {}, "tiles": {}, "errors": []}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


# ---- timing -----------------------------------------------------------------------------------------------


class Timer:
    """us per call of a list of calls (each on its own weight copy): CUDA graph + do_bench on the GPU,
    plain wall clock on the CPU (smoke: only exercises the code)."""

    def __init__(self, device: torch.device, rep_ms: int):
        self.cuda = device.type == "cuda"
        self.rep = rep_ms

    def per_call(self, calls) -> float:
        if not self.cuda:
            t = time.perf_counter()
            for c in calls:
                c()
            return (time.perf_counter() - t) * 1e6 / len(calls)
        import triton.testing

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile and warm outside the graph
            for c in calls:
                c()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for c in calls:
                c()
        ms = triton.testing.do_bench(
            graph.replay, warmup=max(5, self.rep // 4), rep=self.rep, return_mode="median"
        )
        del graph
        return ms * 1e3 / len(calls)


def n_copies(nbytes: int, cuda: bool) -> int:
    """Copies of a weight so that one graph replay streams >= 256 MB (more than L2) of it."""
    if not cuda:
        return 2
    return max(2, min(48, math.ceil(256e6 / max(nbytes, 1))))


def gbps(nbytes: float, us: float) -> float:
    return nbytes / (us * 1e-6) / 1e9 if us > 0 else 0.0


# ---- model pieces -----------------------------------------------------------------------------------------


def make_decoder(s: dict, dtype, device, layers=None, seed=0) -> tuple[Decoder, Rotary]:
    """A random decoder of shape s (weights ~N(0, 0.02), norm weights ~U(0.5, 1.5)), built on the device."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        dec = Decoder(
            layers or s["layers"], s["hidden"], s["inter"], s["heads"], s["kv"], s["hd"], EPS, False
        )
    dec = dec.to_empty(device=device)
    with torch.no_grad():
        for p in dec.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.02)
    dec = dec.to(dtype)
    rot = Rotary(s["hd"], s["theta"], s["sections"], s["sections"] is not None)
    return dec, rot


def talker_masks(V, device):
    """EOS id and suppressed control ids: the top 1024 ids but EOS (a tiny vocabulary: its top third)."""
    control = 1024 if V > 2048 else V // 3
    eos = V - control + 2
    suppress = torch.zeros(V, dtype=torch.bool, device=device)
    suppress[V - control :] = True
    suppress[eos] = False
    if V > 2048:
        assert torch.equal(suppress.nonzero().flatten().cpu(), torch.tensor(suppressed_ids(V, eos)))
    return eos, suppress


def eager_rms(x, w):
    return w * F.rms_norm(x.float(), (x.shape[-1],), eps=EPS).to(x.dtype)


def linear_cases(sh: dict) -> list[tuple[str, int, int, str]]:
    t, p = sh["talker"], sh["predictor"]
    return [
        ("talker.qkv", t["hidden"], (t["heads"] + 2 * t["kv"]) * t["hd"], "norm"),
        ("talker.o", t["heads"] * t["hd"], t["hidden"], "res"),
        ("talker.gate_up", t["hidden"], t["inter"], "gate"),
        ("talker.down", t["inter"], t["hidden"], "res"),
        ("talker.head", t["hidden"], t["vocab"], "norm"),
        ("cp.in_proj", t["hidden"], p["hidden"], "bias"),
        ("cp.qkv", p["hidden"], (p["heads"] + 2 * p["kv"]) * p["hd"], "norm"),
        ("cp.o", p["heads"] * p["hd"], p["hidden"], "res"),
        ("cp.gate_up", p["hidden"], p["inter"], "gate"),
        ("cp.down", p["inter"], p["hidden"], "res"),
        ("cp.head", p["hidden"], p["vocab"], "norm"),
    ]


class LinearCase:
    """One weight shape with its fused extras, in `n` copies; ours(i) / eager(i) use copy i."""

    def __init__(self, K, N, kind, M, n, dtype, device):
        rows = 2 * N if kind == "gate" else N
        self.kind, self.M, self.N, self.K = kind, M, N, K
        self.w = [torch.randn(rows, K, device=device, dtype=dtype) * 0.02 for _ in range(n)]
        self.x = torch.randn(M, K, device=device, dtype=dtype)
        self.nw = torch.rand(K, device=device, dtype=dtype) + 0.5
        self.b = torch.randn(N, device=device, dtype=dtype)
        self.r = torch.randn(M, N, device=device, dtype=dtype)
        self.out = torch.empty(M, N, device=device, dtype=dtype)
        el = torch.finfo(dtype).bits // 8
        self.bytes = rows * K * el + M * K * el + M * N * el * (2 if kind == "res" else 1)

    def ours(self, i, config=None, mode=None):
        w, kind = self.w[i], self.kind
        if kind == "gate":
            return lambda: gate_up_silu(self.x, self.nw, w, EPS, out=self.out, config=config, norm_mode=mode)
        if kind == "norm":
            return lambda: linear(
                self.x, w, norm_weight=self.nw, eps=EPS, out=self.out, config=config, norm_mode=mode
            )
        if kind == "res":
            return lambda: linear(self.x, w, residual=self.r, out=self.out, config=config)
        if kind == "bias":
            return lambda: linear(self.x, w, self.b, out=self.out, config=config)
        return lambda: linear(self.x, w, out=self.out, config=config)

    def plain(self, i, config):
        return lambda: linear(self.x, self.w[i], out=self.out, config=config)

    def eager(self, i):
        w, kind, N = self.w[i], self.kind, self.N
        if kind == "gate":
            return lambda: (lambda n: F.silu(F.linear(n, w[:N])) * F.linear(n, w[N:]))(
                eager_rms(self.x, self.nw)
            )
        if kind == "norm":
            return lambda: F.linear(eager_rms(self.x, self.nw), w)
        if kind == "res":
            return lambda: self.r + F.linear(self.x, w)
        return lambda: F.linear(self.x, w, self.b)


# ---- section: check ---------------------------------------------------------------------------------------


def record_check(name, dtype, err, tol, extra=None):
    ok = bool(err <= tol)
    RESULTS["checks"].append(
        dict(
            name=name, dtype=str(dtype).replace("torch.", ""), err=float(err), tol=tol, ok=ok, **(extra or {})
        )
    )
    log(f"check {name:34s} {str(dtype):15s} err {err:.2e} (tol {tol:.0e}) {'ok' if ok else 'FAIL'}")


def rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    if a.isnan().any():
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-6))


# max error relative to the largest |value|. fp32 at the real widths sums 2,048-6,144 products in another
# order than cuBLAS, which may drift past the tests' 1e-5 (tiny shapes; not measured here): 5e-5
TOLS = {torch.float32: 5e-5, torch.bfloat16: 2e-2}


def section_check(sh, device, smoke):
    t = sh["talker"]
    for dtype in (torch.float32, torch.bfloat16):
        tol = TOLS[dtype]
        for M in (1, 8, 64) if not smoke else (1, 20):
            K, N = t["hidden"], t["hidden"] // 2
            x = torch.randn(M, K, device=device, dtype=dtype)
            w = (torch.randn(N, K, device=device) / K**0.5).to(dtype)
            nw, b = (torch.rand(K, device=device) + 0.5).to(dtype), torch.randn(N, device=device).to(dtype)
            r = torch.randn(M, N, device=device, dtype=dtype)
            y = linear(x, w, b, norm_weight=nw, residual=r)
            record_check(
                f"linear M={M}", dtype, rel_err(y, linear_ref(x, w, b, norm_weight=nw, residual=r)), tol
            )
            wgu = pack_gate_up(w, w.flip(0))
            y = gate_up_silu(x, nw, wgu, EPS)
            record_check(f"gate_up_silu M={M}", dtype, rel_err(y, gate_up_silu_ref(x, nw, wgu, EPS)), tol)
            # the batch tiles' other paths: norm computed first, K split over programs
            split = LinearConfig(16 if M <= 16 else 64, 64, 64, 4, 3, split_k=0)
            y = linear(x, w, b, norm_weight=nw, residual=r, config=split)
            ref = linear_ref(x, w, b, norm_weight=nw, residual=r, norm_mode="separate")
            record_check(f"linear split-K M={M}", dtype, rel_err(y, ref), tol)
            y = gate_up_silu(x, nw, wgu, EPS, config=split)
            ref = gate_up_silu_ref(x, nw, wgu, EPS, norm_mode="separate")
            record_check(f"gate_up_silu split-K M={M}", dtype, rel_err(y, ref), tol)
        if (
            dtype == torch.float32
        ):  # the codec's Snake runs in fp32: a strided slice at its last block's shape
            from utter_tts.kernels.snake import snake, snake_factors, snake_ref

            la, lb = torch.randn(96, device=device) * 0.5, torch.randn(96, device=device) * 0.5
            xs = torch.randn(8, 96, 8000, device=device)[..., 100:7780]
            record_check(
                "snake", dtype, rel_err(snake(xs, *snake_factors(la, lb)), snake_ref(xs, la, lb)), tol
            )
        # q/k norm + M-RoPE + cache write at the talker's shape, distinct positions per axis
        H, KV, D, S, L = t["heads"], t["kv"], t["hd"], 4, t["span"]
        rot = Rotary(D, t["theta"], t["sections"], True)
        M = 3
        qkv = torch.randn(M, (H + 2 * KV) * D, device=device, dtype=dtype)
        qw, kw = (
            (torch.rand(D, device=device) + 0.5).to(dtype),
            (torch.rand(D, device=device) + 0.5).to(dtype),
        )
        pos = torch.randint(0, 2000, (3, M), device=device)
        slot, col = torch.tensor([2, 0, 3], device=device), torch.tensor([5, L - 1, 777 % L], device=device)
        inv, ax = rot.inv_freq.to(device), rot.axis_of.to(device)
        caches = [torch.zeros(S, KV, L, D, device=device, dtype=dtype) for _ in range(4)]
        args = (qkv, qw, kw, inv, ax, pos, slot, col)
        kw_ = dict(heads=H, kv_heads=KV, head_dim=D, eps=EPS)
        q = qk_norm_rope_write(*args, caches[0], caches[1], **kw_)
        q_ref = qk_norm_rope_write_ref(*args, caches[2], caches[3], **kw_)
        err = max(rel_err(q, q_ref), rel_err(caches[0], caches[2]), rel_err(caches[1], caches[3]))
        record_check("qk_norm_rope_write", dtype, err, tol)
        # attention: decode rows at ~1,000 columns, and packed causal rows; default splits and none
        ck = torch.randn(S, KV, L, D, device=device, dtype=dtype)
        cv = torch.randn(S, KV, L, D, device=device, dtype=dtype)
        rows = [(0, 0, min(L - 1, 1000)), (1, 3, min(L - 1, 517)), (2, 0, 0), (3, 10, min(L - 1, 1999))]
        rows += [(1, 0, c) for c in range(5)]
        slot, start, col = (torch.tensor(v, device=device) for v in zip(*rows))
        qq = torch.randn(len(rows), H, D, device=device, dtype=dtype)
        ref = decode_attention_ref(qq, ck, cv, slot, col, start)
        for splits in (None, 1):
            y = decode_attention(qq, ck, cv, slot, col, start, num_splits=splits)
            record_check(f"decode_attention splits={splits or 'auto'}", dtype, rel_err(y, ref), tol)
        # the decoder: packed prefill of 2 streams then one decode step, vs the eager Decoder.run
        check_decoder(t, dtype, device, tol if dtype == torch.float32 else 4e-2, smoke)
    check_sampling(sh, device, smoke)


def check_decoder(s, dtype, device, tol, smoke):
    dec, rot = make_decoder(s, dtype, device, layers=2, seed=1)
    rot = rot.to(device)
    packed = PackedDecoder(dec, rot)
    L, lens = 64, (20, 13) if not smoke else (5, 3)
    ours = [
        (
            torch.zeros(2, s["kv"], L, s["hd"], device=device, dtype=dtype),
            torch.zeros(2, s["kv"], L, s["hd"], device=device, dtype=dtype),
        )
        for _ in range(2)
    ]
    eager = [KVCache(k.clone(), v.clone()) for k, v in ours]
    worst = 0.0
    for phase in ("prefill", "decode"):
        xs, slots, cols, expected = [], [], [], []
        for b, n in enumerate(lens):
            c0 = 0 if phase == "prefill" else n
            n = n if phase == "prefill" else 1
            x = torch.randn(n, s["hidden"], device=device, dtype=dtype)
            c = torch.arange(c0, c0 + n, device=device)
            with torch.no_grad():
                norm, dec.norm = dec.norm, torch.nn.Identity()
                caches = [KVCache(e.k[b : b + 1], e.v[b : b + 1]) for e in eager]
                expected.append(
                    dec.run(
                        x[None],
                        c[None],
                        c[None],
                        torch.zeros(1, dtype=torch.long, device=device),
                        rot,
                        caches,
                    )[0]
                )
                dec.norm = norm
            xs.append(x)
            slots.append(torch.full((n,), b, device=device))
            cols.append(c)
        col = torch.cat(cols)
        h = packed(torch.cat(xs), torch.cat(slots), col, col.expand(3, -1), torch.zeros_like(col), ours)
        worst = max(worst, rel_err(h, torch.cat(expected)))
    for (k, v), e in zip(ours, eager):
        worst = max(worst, rel_err(k, e.k), rel_err(v, e.v))
    record_check("PackedDecoder vs eager (2 layers)", dtype, worst, tol)


def check_sampling(sh, device, smoke):
    V = sh["talker"]["vocab"]
    M = 256 if not smoke else 16
    seeds = torch.randint(-(2**62), 2**62, (M,), device=device)
    frame = torch.randint(0, 3000, (M,), device=device)
    same = all(
        torch.equal(noise(seeds, f, cb, V), uniform_noise(seeds, f, cb, V))
        for f in (0, 7, frame)
        for cb in (0, 15)
    )
    record_check("noise bit-exact", torch.float32, 0.0 if same else 1.0, 0.0)
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(M, V, device=device, generator=g) * 3
    eos, suppress = talker_masks(V, device)
    p = SimpleNamespace(
        do_sample=torch.rand(M, device=device) < 0.8,
        temperature=torch.rand(M, device=device) + 0.3,
        top_k=torch.randint(0, 100, (M,), device=device),
        top_p=torch.where(
            torch.rand(M, device=device) < 0.5, torch.rand(M, device=device), torch.ones(M, device=device)
        ),
        seeds=seeds,
        repetition_penalty=torch.rand(M, device=device) * 0.3 + 1.0,
        min_new_tokens=frame + torch.randint(-2, 3, (M,), device=device),
    )
    seen = torch.rand(M, V, device=device) < 0.05
    expected = pick_codebook0(logits.clone(), seen, frame, p, suppress, eos, graph_safe=True)
    got = sample(
        logits,
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        seeds=seeds,
        frame=frame,
        codebook=0,
        seen=seen,
        repetition_penalty=p.repetition_penalty,
        suppress=suppress,
        min_new_tokens=p.min_new_tokens,
        eos_id=eos,
    )
    diff = int((got != expected).sum())
    # a near-tie at the top-p cut or a 1-ulp log difference may flip a rare row (the CPU tests demand 0)
    record_check(
        "sample vs pick_codebook0", torch.float32, diff / M, 0.01, dict(mismatched_rows=diff, rows=M)
    )


# ---- section: kernels -------------------------------------------------------------------------------------


def record_kernel(name, M, us, nbytes, eager_us=None, **extra):
    row = dict(name=name, M=M, us=us, gbps=gbps(nbytes, us), bytes=nbytes, eager_us=eager_us, **extra)
    RESULTS["kernels"].append(row)
    e = f"eager {eager_us:8.1f} us" if eager_us is not None else ""
    log(f"kernel {name:22s} M={M:<3d} {us:8.1f} us {row['gbps']:7.0f} GB/s  {e}")


def section_kernels(sh, device, timer, Ms, smoke):
    dtype, cuda = torch.bfloat16, device.type == "cuda"
    for name, K, N, kind in linear_cases(sh):
        for M in Ms:
            rows = 2 * N if kind == "gate" else N
            c = LinearCase(K, N, kind, M, n_copies(rows * K * 2, cuda), dtype, device)
            n = len(c.w)
            us = timer.per_call([c.ours(i) for i in range(n)])
            eager = timer.per_call([c.eager(i) for i in range(n)])
            record_kernel(name, M, us, c.bytes, eager, config=str(config_for(M, N)))
            if kind in ("norm", "gate") and M <= 8:  # the fused RMSNorm's other rounding point: one pass
                us = timer.per_call([c.ours(i, mode="one_pass") for i in range(n)])
                record_kernel(name + " 1-pass", M, us, c.bytes, eager, config=str(config_for(M, N)))
    t = sh["talker"]
    H, KV, D, L = t["heads"], t["kv"], t["hd"], t["span"]
    rot = Rotary(D, t["theta"], t["sections"], True).to(device)
    for M in Ms:
        n = n_copies(M * KV * L * D * 4, cuda)
        qkv = torch.randn(M, (H + 2 * KV) * D, device=device, dtype=dtype)
        w = torch.rand(D, device=device, dtype=dtype) + 0.5
        caches = [(torch.zeros(M, KV, L, D, device=device, dtype=dtype),) * 2 for _ in range(min(n, 4))]
        pos = torch.arange(M, device=device).expand(3, M)
        slot = torch.arange(M, device=device)
        col = torch.full((M,), t["ctx"], device=device)
        q = torch.empty(M, H, D, device=device, dtype=dtype)
        args = (rot.inv_freq, rot.axis_of, pos, slot, col)
        shape = dict(heads=H, kv_heads=KV, head_dim=D, eps=EPS)

        def ours(i, args=args, q=q, qkv=qkv, caches=caches, shape=shape, w=w):
            ck, cv = caches[i % len(caches)]
            return lambda: qk_norm_rope_write(qkv, w, w, *args, ck, cv, **shape, q_out=q)

        cos, sin = rot(pos[0][None], dtype)
        cos, sin = cos[0][:, None], sin[0][:, None]
        kvc = [KVCache(*c) for c in caches]

        def eager(i, qkv=qkv, cos=cos, sin=sin, kvc=kvc, col=col, M=M, w=w):
            def run():  # the eager Attention.forward's steps: views, two RMSNorms, RoPE, the cache scatter
                qq, kk, vv = qkv.split([H * D, KV * D, KV * D], -1)
                qq, kk = eager_rms(qq.view(M, H, D), w), eager_rms(kk.view(M, KV, D), w)
                qq = qq * cos + qq.roll(D // 2, dims=-1) * sin
                kk = kk * cos + kk.roll(D // 2, dims=-1) * sin
                kvc[i % len(kvc)].write(col[:, None], kk[:, :, None], vv.view(M, KV, 1, D))
                return qq

            return run

        nbytes = M * (H + 2 * KV) * D * 2 + M * (H + 2 * KV) * D * 2
        us = timer.per_call([ours(i) for i in range(n)])
        record_kernel("qk_norm_rope_write", M, us, nbytes, timer.per_call([eager(i) for i in range(n)]))
    for ctx in (256, 1024, 2048) if not smoke else (20,):
        for M in Ms:
            kv_bytes = M * KV * ctx * D * 2 * 2
            n = n_copies(kv_bytes, cuda)
            ck = [torch.randn(M, KV, L, D, device=device, dtype=dtype) for _ in range(n)]
            cv = [torch.randn(M, KV, L, D, device=device, dtype=dtype) for _ in range(n)]
            q = torch.randn(M, H, D, device=device, dtype=dtype)
            out = torch.empty(M, H * D, device=device, dtype=dtype)
            slot, col = torch.arange(M, device=device), torch.full((M,), ctx - 1, device=device)
            start = torch.zeros(M, dtype=torch.long, device=device)
            span = min(span_bucket(ctx, L), L)
            rep = H // KV
            mask = (torch.arange(span, device=device) <= ctx - 1).expand(M, 1, rep, span)

            def ours(i, q=q, ck=ck, cv=cv, slot=slot, col=col, start=start, out=out):
                return lambda: decode_attention(q, ck[i], cv[i], slot, col, start, out=out)

            def eager(i, q=q, ck=ck, cv=cv, span=span, mask=mask, M=M, rep=rep):
                qg = q.view(M, KV, rep, D)
                return lambda: F.scaled_dot_product_attention(
                    qg, ck[i][:, :, :span], cv[i][:, :, :span], attn_mask=mask
                ).reshape(M, H * D)

            us = timer.per_call([ours(i) for i in range(n)])
            record_kernel(
                f"attention ctx={ctx}", M, us, kv_bytes, timer.per_call([eager(i) for i in range(n)])
            )
    for V, talker in ((t["vocab"], True), (sh["predictor"]["vocab"], False)):
        for M in Ms:
            for mode in ("greedy", "top_k", "top_k+top_p"):
                logits = [torch.randn(M, V, device=device) for _ in range(4)]
                p = SimpleNamespace(
                    do_sample=torch.full((M,), mode != "greedy", device=device),
                    temperature=torch.full((M,), 0.9, device=device),
                    top_k=torch.full((M,), 50, device=device),
                    top_p=torch.full((M,), 0.8 if mode == "top_k+top_p" else 1.0, device=device),
                    seeds=torch.arange(M, device=device),
                    repetition_penalty=torch.full((M,), 1.05, device=device),
                    min_new_tokens=torch.full((M,), 2, device=device),
                )
                frame = torch.full((M,), 5, device=device)
                out = torch.empty(M, dtype=torch.long, device=device)
                extra = {}
                if talker:
                    eos, sup = talker_masks(V, device)
                    extra = dict(
                        seen=torch.zeros(M, V, dtype=torch.bool, device=device),
                        repetition_penalty=p.repetition_penalty,
                        suppress=sup,
                        min_new_tokens=p.min_new_tokens,
                        eos_id=eos,
                    )
                kw = dict(
                    do_sample=p.do_sample,
                    temperature=p.temperature,
                    top_k=p.top_k,
                    top_p=p.top_p,
                    seeds=p.seeds,
                    frame=frame,
                    codebook=0 if talker else 3,
                )

                def ours(i, logits=logits, kw=kw, extra=extra, out=out):
                    return lambda: sample(logits[i], **kw, **extra, out=out)

                def eager(i, logits=logits, kw=kw, extra=extra, p=p, talker=talker):
                    if talker:
                        return lambda: pick_codebook0(
                            logits[i], extra["seen"], kw["frame"], p, extra["suppress"], extra["eos_id"], True
                        )
                    return lambda: choose(
                        logits[i],
                        p.do_sample,
                        p.temperature,
                        p.top_k,
                        p.top_p,
                        p.seeds,
                        kw["frame"],
                        3,
                        graph_safe=True,
                    )

                us = timer.per_call([ours(i) for i in range(4)])
                who = "talker" if talker else "cp"
                record_kernel(
                    f"sample {who} {mode}", M, us, M * V * 4, timer.per_call([eager(i) for i in range(4)])
                )


# the sampler's tunings, most telling first (the current default leads); one or two warps compile for
# ~30 s and ran 85-266 us a launch on an H200 (2026-12-01): left out
SAMPLER_TUNINGS = [
    dict(num_warps=nw, radix_bits=bits, early_exit=early)
    for nw in (8, 16, 4)
    for bits, early in ((8, False), (8, True), (4, False), (4, True))
]


def section_sampler(sh, device, timer, Ms):
    """The top-k sampler's tunings (warps, radix digit width, early exit) as the frame calls it: the code
    predictor's (top-k 50, embedding epilogue into the running sum) first, then the talker's (penalty,
    masks); every tuning's tokens must equal the default's. Logged as measured (a cut-off run keeps them)."""
    t = sh["talker"]
    for V, talker in ((sh["predictor"]["vocab"], False), (t["vocab"], True)):
        D = t["hidden"]
        table = torch.randn(V, D, device=device).to(torch.bfloat16)
        who = "talker" if talker else "cp"
        cases = []
        for M in Ms:
            kw = dict(
                do_sample=torch.ones(M, dtype=torch.bool, device=device),
                temperature=torch.full((M,), 0.9, device=device),
                top_k=torch.full((M,), 50, device=device),
                top_p=torch.ones(M, device=device),
                seeds=torch.arange(M, device=device),
                frame=torch.full((M,), 5, device=device),
                codebook=0 if talker else 3,
            )
            if talker:
                eos, sup = talker_masks(V, device)
                kw.update(
                    seen=torch.rand(M, V, device=device) < 0.02,
                    repetition_penalty=torch.full((M,), 1.05, device=device),
                    suppress=sup,
                    min_new_tokens=torch.full((M,), 2, device=device),
                    eos_id=eos,
                )
            else:
                acc = torch.zeros(M, D, dtype=torch.bfloat16, device=device)
                kw["embed"] = Embed(table, out=torch.empty_like(acc), acc=acc)
            cases.append((M, [torch.randn(M, V, device=device) * 2 for _ in range(4)], kw, None))
        for tune in SAMPLER_TUNINGS:
            for j, (M, logits, kw, base) in enumerate(cases):
                out = torch.empty(M, dtype=torch.long, device=device)
                toks = [sample(lg, **kw, **tune).clone() for lg in logits]
                if base is None:
                    base = toks
                    cases[j] = (M, logits, kw, base)
                same = all(torch.equal(a, b) for a, b in zip(toks, base))

                def call(i, tune=tune, out=out, logits=logits, kw=kw):
                    return lambda: sample(logits[i], **kw, **tune, out=out)

                us = timer.per_call([call(i) for i in range(4)])
                name = f"sample {who} top_k w{tune['num_warps']} b{tune['radix_bits']}"
                record_kernel(name + (" early" if tune["early_exit"] else ""), M, us, M * V * 4, None,
                              same_tokens=same)  # fmt: skip
                log(f"sampler {who} M={M} {tune}: {us:.2f} us same={same}")


# ---- section: passes --------------------------------------------------------------------------------------


def section_passes(sh, device, timer, Ms):
    dtype = torch.bfloat16
    for which in ("talker", "predictor"):
        dec, rot = make_decoder(sh[which], dtype, device)
        rot = rot.to(device)
        for mode in ("prologue", "one_pass"):
            packed = PackedDecoder(dec, rot, norm_mode=mode)
            for M in Ms if mode == "prologue" else Ms[:1]:
                bench_pass(which, sh[which], dec, rot, packed, M, device, timer)
            del packed
        del dec
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_pass(which, s, dec, rot, packed, M, device, timer):
    """One decode pass of M rows at column ctx: ours vs the eager Decoder.run (over the span bucket the
    runner would use), both as one CUDA graph."""
    dtype, L, ctx = torch.bfloat16, s["span"], s["ctx"]
    shape = (M, s["kv"], L, s["hd"])
    caches = [
        (torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype))
        for _ in dec.layers
    ]
    x = torch.randn(M, s["hidden"], device=device, dtype=dtype)
    out = torch.empty_like(x)
    slot = torch.arange(M, device=device)
    col = torch.full((M,), ctx, device=device)
    start = torch.zeros(M, dtype=torch.long, device=device)
    pos = col.expand(3, M)
    with record_launches() as rec:  # a dry run: count the launches of one pass
        packed(x, slot, col, pos, start, caches, out=out)
    ours = timer.per_call([lambda: packed(x, slot, col, pos, start, caches, out=out)])
    span = span_bucket(ctx + 1, L) if which == "talker" else L
    eager_caches = [KVCache(k[:, :, :span], v[:, :, :span]) for k, v in caches]
    with torch.no_grad():
        eager_us = timer.per_call(
            [lambda: dec.run(x[:, None], col[:, None], col[:, None], start, rot, eager_caches)]
        )
    layer_bytes = sum(p.numel() * p.element_size() for p in dec.layers.parameters())
    nbytes = layer_bytes + len(dec.layers) * M * s["kv"] * (ctx + 1) * s["hd"] * 2 * 2
    name = f"{which} pass" + (" 1-pass" if packed.norm_mode == "one_pass" else "")
    row = dict(
        name=name,
        M=M,
        us=ours,
        gbps=gbps(nbytes, ours),
        bytes=nbytes,
        eager_us=eager_us,
        launches=len(rec),
        layers=len(dec.layers),
        ctx=ctx,
    )
    RESULTS["passes"].append(row)
    n = len(rec)
    log(f"{name:22s} M={M:<3d} {ours:8.1f} us {row['gbps']:6.0f} GB/s {n} launches; eager {eager_us:.1f}")


# ---- section: sweep ---------------------------------------------------------------------------------------


def section_sweep(sh, device, timer, Ms, budget_s, smoke):
    """Plain GEMMs (no prologue/epilogue: fewer compiles) of every real weight shape, per config and M."""
    dtype, cuda = torch.bfloat16, device.type == "cuda"
    t0 = time.time()
    cases = linear_cases(sh)
    for M in Ms:
        configs = candidate_configs(M)
        default = config_for(M)
        configs = [default] + [c for c in configs if c != default]
        if smoke:
            configs = configs[:2]
        built = []
        for name, K, N, kind in cases:
            rows = 2 * N if kind == "gate" else N
            built.append((name, LinearCase(K, rows, "plain", M, n_copies(rows * K * 2, cuda), dtype, device)))
        table = {}
        for cfg in configs:
            if time.time() - t0 > budget_s:
                RESULTS["sweep"].setdefault("stopped_at", f"M={M}, budget {budget_s}s")
                break
            try:
                per = {name: timer.per_call([c.plain(i, cfg) for i in range(len(c.w))]) for name, c in built}
            except Exception as e:  # a tile that does not compile (e.g. too much shared memory): skip it
                log(f"sweep M={M} {cfg}: {type(e).__name__}: {str(e)[:120]}")
                continue
            table[str(cfg)] = dict(total_us=sum(per.values()), per_shape=per, config=cfg.__dict__)
        if not table:
            continue
        best = min(table.values(), key=lambda r: r["total_us"])
        per_shape_best = {
            name: min(table.items(), key=lambda kv: kv[1]["per_shape"][name])[0] for name, _ in built
        }
        RESULTS["sweep"][str(M)] = dict(
            best=best, default=table.get(str(default)), per_shape_best=per_shape_best, tried=len(table)
        )
        d = table.get(str(default), {}).get("total_us", float("nan"))
        tried = len(table)
        us = best["total_us"]
        log(f"sweep M={M:<3d} best {best['config']} {us:.1f} us (default {d:.1f} us, {tried} tried)")


# ---- section: tiles (the real fused linears at batch >= 8: norm first, split-K) ---------------------------


def tile_candidates(M: int) -> list[tuple[str, LinearConfig | None, str | None]]:
    """(label, tile, norm mode) for M rows: the runtime default, its tile with the norm computed first, and
    whole-row tiles whose K is split until the launch fills the GPU (split_k=0)."""
    bm = 16 if M <= 16 else 32 if M <= 32 else 64
    out = [("default", None, None), ("default+separate", None, "separate")]
    for bn, bk, warps, stages in ((32, 128, 4, 4), (64, 128, 4, 4), (64, 64, 4, 4), (128, 64, 4, 3),
                                  (128, 128, 8, 3), (64, 128, 8, 3)):  # fmt: skip
        out.append(
            (f"split {bm}x{bn}x{bk} w{warps} s{stages}", LinearConfig(bm, bn, bk, warps, stages, 0), None)
        )
    return out


def section_tiles(sh, device, timer, Ms, budget_s):
    dtype, cuda = torch.bfloat16, device.type == "cuda"
    t0 = time.time()
    RESULTS["tiles"] = {}
    for M in Ms:
        built = []
        for name, K, N, kind in linear_cases(sh):
            rows = 2 * N if kind == "gate" else N
            built.append((name, K, N, LinearCase(K, N, kind, M, n_copies(rows * K * 2, cuda), dtype, device)))
        table = {}
        eager = {name: timer.per_call([c.eager(i) for i in range(len(c.w))]) for name, _, _, c in built}
        table["eager (cuBLAS)"] = dict(total_us=sum(eager.values()), per_shape=eager)
        for label, cfg, mode in tile_candidates(M):
            if time.time() - t0 > budget_s:
                RESULTS["tiles"]["stopped_at"] = f"M={M}, {label}"
                break
            try:
                per = {
                    name: timer.per_call([c.ours(i, config=cfg, mode=mode) for i in range(len(c.w))])
                    for name, _, _, c in built
                }
            except Exception as e:  # a tile that does not compile: skip it
                log(f"tiles M={M} {label}: {type(e).__name__}: {str(e)[:120]}")
                continue
            table[label] = dict(total_us=sum(per.values()), per_shape=per)
            log(
                f"tiles M={M:<3d} {label:28s} {sum(per.values()):8.1f} us  "
                + " ".join(f"{v:.1f}" for v in per.values())
            )
        ours = {k: v for k, v in table.items() if not k.startswith("eager")}
        if not ours:
            continue
        best = min(ours, key=lambda k: ours[k]["total_us"])
        per_shape_best = {
            name: min(ours, key=lambda k: ours[k]["per_shape"][name]) for name, _, _, _ in built
        }
        RESULTS["tiles"][str(M)] = dict(table=table, best=best, per_shape_best=per_shape_best)
        log(f"tiles M={M:<3d} best {best}: {ours[best]['total_us']:.1f} us; default "
            f"{ours['default']['total_us']:.1f}; eager {sum(eager.values()):.1f}")  # fmt: skip


# ---- report -----------------------------------------------------------------------------------------------


def table(Ms) -> str:
    out = []
    checks = RESULTS["checks"]
    if checks:
        bad = [c for c in checks if not c["ok"]]
        failed = [c["name"] + " " + c["dtype"] for c in bad]
        out.append(
            f"== checks: {len(checks) - len(bad)}/{len(checks)} ok" + (f"  FAILED: {failed}" if bad else "")
        )
    if RESULTS["kernels"]:
        out.append("== kernels (bf16): us per call | GB/s | eager us")
        head = f"{'kernel':26s}" + "".join(f"{'M=' + str(M):>26s}" for M in Ms)
        out.append(head)
        names = list(dict.fromkeys(r["name"] for r in RESULTS["kernels"]))
        for name in names:
            cells = []
            for M in Ms:
                r = next((r for r in RESULTS["kernels"] if r["name"] == name and r["M"] == M), None)
                cells.append(
                    f"{r['us']:7.1f} {r['gbps']:6.0f} {r['eager_us'] or 0:8.1f}   " if r else " " * 26
                )
            out.append(f"{name:26s}" + "".join(f"{c:>26s}" for c in cells))
    if RESULTS["passes"]:
        out.append("== passes (CUDA graph): us | GB/s | launches | eager us")
        for r in RESULTS["passes"]:
            out.append(
                f"{r['name']:22s} M={r['M']:<3d} {r['us']:9.1f} us {r['gbps']:6.0f} GB/s {r['launches']:4d} "
                f"launches   eager {r['eager_us']:9.1f} us"
            )
        est = frame_estimate()
        for M, us in est.items():
            out.append(
                f"frame estimate M={M}: {us:.0f} us (15 predictor passes + 1 talker pass + heads + sampling)"
            )
    sw = {k: v for k, v in RESULTS["sweep"].items() if k != "stopped_at"}
    if sw:
        out.append("== linear sweep (plain GEMM, all 11 weight shapes): best config per M")
        for M, r in sw.items():
            d = (r["default"] or {}).get("total_us", float("nan"))
            out.append(
                f"M={M:>3s} best {r['best']['config']}  {r['best']['total_us']:.1f} us  (default {d:.1f} us)"
            )
        if "stopped_at" in RESULTS["sweep"]:
            out.append(f"(sweep stopped by its time budget at {RESULTS['sweep']['stopped_at']})")
    if RESULTS["errors"]:
        out.append(f"== ERRORS in sections: {[e['section'] for e in RESULTS['errors']]}")
    return "\n".join(out)


def frame_estimate() -> dict:
    """Per M: 15 x (predictor pass + cp head + cp in-projection + top-k sample) + talker pass + talker head +
    sample, from the measured pieces (the predictor's first step has 2 rows a stream: counted as 1)."""
    est = {}
    passes = {(r["name"], r["M"]): r["us"] for r in RESULTS["passes"]}
    kern = {(r["name"], r["M"]): r["us"] for r in RESULTS["kernels"]}
    for (name, M), us in passes.items():
        if name != "talker pass" or ("predictor pass", M) not in passes:
            continue
        try:
            cp_step = passes[("predictor pass", M)] + kern[("cp.head", M)] + kern[("cp.in_proj", M)]
            cp_step += kern[("sample cp top_k", M)]
            est[M] = us + 15 * cp_step + kern[("talker.head", M)] + kern[("sample talker top_k", M)]
        except KeyError:
            continue
    return est


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    ap.add_argument("--sections", default="check,kernels,passes,sweep")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--sweep-budget", type=float, default=75.0, help="seconds for the config sweep")
    ap.add_argument(
        "--budget", type=float, default=225.0, help="seconds for everything (sections past it skip)"
    )
    ap.add_argument("--rep-ms", type=int, default=30, help="do_bench repetition time per measurement")
    args = ap.parse_args()
    t0 = time.time()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        sys.exit("no CUDA device: run with --smoke for the CPU check")
    sh = TINY if args.smoke else REAL
    Ms = (1, 3) if args.smoke else (1, 8, 64)
    sweep_Ms = (1, 16) if args.smoke else (1, 2, 4, 8, 16, 32, 64)
    import triton

    RESULTS["env"] = dict(
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu (interpreter)",
        torch=torch.__version__,
        triton=triton.__version__,
        smoke=args.smoke,
    )
    log("env", RESULTS["env"])
    timer = Timer(device, args.rep_ms)
    sections = args.sections.split(",")
    runs = dict(
        check=lambda: section_check(sh, device, args.smoke),
        kernels=lambda: section_kernels(sh, device, timer, Ms, args.smoke),
        passes=lambda: section_passes(sh, device, timer, Ms),
        sampler=lambda: section_sampler(sh, device, timer, Ms),
        sweep=lambda: section_sweep(sh, device, timer, sweep_Ms, sweep_budget(), args.smoke),
        tiles=lambda: section_tiles(sh, device, timer, (3, 16) if args.smoke else (8, 16, 32, 64, 128),
                                    sweep_budget()),
    )  # fmt: skip

    def sweep_budget():  # what is left of the whole budget, at most --sweep-budget
        return max(0.0, min(args.sweep_budget, args.budget - (time.time() - t0) - 15))

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench_kernels" + ("_smoke" if args.smoke else "") + ".json")
    for name in sections:
        t = time.time()
        if t - t0 > args.budget and not args.smoke:
            RESULTS["errors"].append(
                dict(section=name, error=f"skipped: past the {args.budget:.0f} s budget")
            )
            continue
        try:
            runs[name]()
        except Exception as e:  # keep going: the other sections' numbers are still worth having
            traceback.print_exc()
            RESULTS["errors"].append(dict(section=name, error=f"{type(e).__name__}: {e}"))
        log(f"section {name} took {time.time() - t:.0f} s")
        RESULTS["seconds"] = time.time() - t0
        with open(path, "w") as f:  # after every section: a killed run still leaves its numbers
            json.dump(RESULTS, f, indent=1, default=str)
    print()
    print(table(Ms))
    print(f"(JSON: {path}; {RESULTS['seconds']:.0f} s)")
    failed = any(not c["ok"] for c in RESULTS["checks"]) or RESULTS["errors"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
