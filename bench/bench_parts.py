"""GPU micro-benchmarks of parts of a 64-stream start and cycle: the codec pass per precision, the residual
units' convolutions done other ways, and building one request's prompt.

Usage (on the GPU machine, after bench/run_gpu.sh built the base checkpoint):
  python bench/bench_parts.py --base CKPT_BASE --out OUT_DIR
Writes OUT/parts.json and OUT/profile_codec_<variant>.txt / profile_prepare.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.dirname(__file__))

from bench_engine import TEXT, _codec_pass_ms, codec_op_table, forced, log, reference, sync  # noqa: E402

from utter_tts.codec.speech_tokenizer import SpeechTokenizer  # noqa: E402
from utter_tts.engine.decoding import CodecSlots  # noqa: E402
from utter_tts.request import Request  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _streamed(slots: CodecSlots, codes: torch.Tensor, step: int) -> torch.Tensor:
    rows = list(range(codes.shape[0]))
    slots.reset_many(rows)
    return torch.cat([slots.run(rows, codes[:, i : i + step]) for i in range(0, codes.shape[1], step)], 1)


def codec_variants(base: str, out_dir: str) -> dict:
    """Each codec variant's graph passes (64 streams x 1, 2, 4, 8 frames; 1 x 1), its error against an
    fp32 reference without TF32 (one-shot 2 x 200 frames), and its streamed (4-frame pushes) vs one-shot
    error. Variants: fp32 (channels last on the GPU), and the upsampling blocks' convolutions in fp16 or
    bf16 with the residual stream in fp32 (UTTER_TTS_CODEC_PRECISION)."""
    from utter_tts.engine import decoding

    folder = os.path.join(base, "speech_tokenizer")
    torch.manual_seed(0)
    codes = torch.randint(0, 2048, (2, 200, 16), device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    os.environ["UTTER_TTS_CODEC_CHANNELS_LAST"] = "0"
    ref_codec = SpeechTokenizer.from_dir(folder, device="cuda", dtype=torch.float32)
    ref_codec.chunk_frames = None
    reference_audio = ref_codec.decode(codes)
    del ref_codec
    torch.backends.cudnn.allow_tf32 = True
    res = {"reference_rms": float(reference_audio.pow(2).mean().sqrt())}
    saved_frames = decoding.GRAPH_FRAMES
    decoding.GRAPH_FRAMES = (1, 2, 3, 4, 8)  # 8: what a longer clock would cost per frame
    for name, dtype, channels_last, precision in (
        ("fp32", torch.float32, "1", "fp32"),
        ("mixed_fp16", torch.float32, "1", "mixed-fp16"),
        ("mixed_bf16", torch.float32, "1", "mixed-bf16"),
    ):
        os.environ["UTTER_TTS_CODEC_CHANNELS_LAST"] = channels_last
        os.environ["UTTER_TTS_CODEC_PRECISION"] = precision
        codec = SpeechTokenizer.from_dir(folder, device="cuda", dtype=dtype)
        codec.chunk_frames = None
        one_shot = codec.decode(codes)
        slots = CodecSlots(codec, 64, use_graphs=True)
        t = time.perf_counter()
        for n in (1, 2, 4, 8):
            slots._capture(64, n)
        capture_s = time.perf_counter() - t
        streamed = _streamed(slots, codes, 4)
        big = torch.randint(0, 2048, (64, 8, 16), device="cuda")
        one = torch.randint(0, 2048, (1, 1, 16), device="cuda")
        r = {f"pass_64x{n}_ms": round(_codec_pass_ms(slots, big[:, :n], runs=20), 3) for n in (1, 2, 4, 8)}
        r.update(
            pass_1x1_ms=round(_codec_pass_ms(slots, one, runs=20), 3),
            capture_64_s=round(capture_s, 1),
            rel_err_vs_fp32=_rel(one_shot, reference_audio),
            max_abs_err_vs_fp32=float((one_shot.float() - reference_audio).abs().max()),
            streamed_vs_one_shot=_rel(streamed, one_shot),
        )
        for n in (1, 4):
            path = os.path.join(out_dir, f"profile_codec_{name}_64x{n}.txt")
            codec_op_table(slots, big[:, :n], path, rows=40)
        res[name] = r
        log("codec", name, r)
        del slots, codec
        torch.cuda.empty_cache()
    decoding.GRAPH_FRAMES = saved_frames
    os.environ.pop("UTTER_TTS_CODEC_CHANNELS_LAST")
    os.environ.pop("UTTER_TTS_CODEC_PRECISION")
    return res


def _ms(fn, runs: int = 30) -> float:
    """Median ms of fn() on the GPU (CUDA events), warm."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def codec_ops(base: str, out_dir: str) -> dict:
    """The residual units' operations at a 64-stream x 4-frame pass's shapes, done as now and done other
    ways, each timed and compared with an fp64 result: the dilated convolution (cuDNN on [B, C, T] as now,
    or channels-last [B, C, 1, T] with no layout transposes), and the 1x1 convolution + bias + residual
    (cuDNN, its bias pass and the residual add as now; or one batched GEMM that adds the residual)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    g = torch.Generator(device="cuda").manual_seed(0)
    res = {}
    for C, T in ((768, 128), (384, 640), (192, 2560), (96, 7680)):
        res[f"C{C}_T{T}"] = r = _unit_ops(64, C, T, 3, g)
        log("codec op", C, T, r)
    torch.backends.cuda.matmul.allow_tf32 = False
    return res


def _unit_ops(B: int, C: int, T: int, d: int, g: torch.Generator) -> dict:
    import torch.nn.functional as F

    x = torch.randn(B, C, T, device="cuda", generator=g)
    h = torch.randn(B, C, T + 6 * d, device="cuda", generator=g)
    w7 = torch.randn(C, C, 7, device="cuda", generator=g) / (7 * C) ** 0.5
    w1 = torch.randn(C, C, 1, device="cuda", generator=g) / C**0.5
    b = torch.randn(C, device="cuda", generator=g)
    ref7 = F.conv1d(h.double(), w7.double(), dilation=d).float()
    h4 = h[:, :, None].contiguous(memory_format=torch.channels_last)
    w74 = w7[:, :, None].contiguous(memory_format=torch.channels_last)
    s = h[..., :T].contiguous()
    ref1 = (x.double() + F.conv1d(s.double(), w1.double(), b.double())).float()
    w1b = w1[:, :, 0].expand(B, C, C)

    def dilated_ncl():
        return F.conv1d(h, w7, dilation=d)

    def dilated_channels_last():
        return F.conv2d(h4, w74, dilation=(1, d))[:, :, 0]

    def pointwise_now():
        return x + F.conv1d(s, w1, b)

    def pointwise_gemm():
        return torch.baddbmm(x, w1b, s).add_(b[:, None])

    r = {}
    for name, fn, ref in (
        ("dilated_ncl", dilated_ncl, ref7),
        ("dilated_channels_last", dilated_channels_last, ref7),
        ("pointwise_now", pointwise_now, ref1),
        ("pointwise_gemm", pointwise_gemm, ref1),
    ):
        r[f"{name}_ms"] = round(_ms(fn), 4)
        r[f"{name}_err"] = _rel(fn(), ref)
    return r


def prepare_cost(base: str, out_dir: str) -> dict:
    """One clone request on an idle GPU: planning its prompt on the caller's thread (`Pipeline.prepare`)
    and making its embeddings (`Prepared.prompt`, the engine's admission step): ms each, and where the
    time goes (cProfile of both, profile_prepare.txt)."""
    from utter_tts.api import TTS

    tts = TTS.from_pretrained(base, device="cuda", dtype="bfloat16")
    voice = tts.create_voice((reference(), 24000))
    pipe = tts.pipeline
    reqs = [Request(TEXT, "clone", "english", voice=voice, seed=i, sampling=forced(128)) for i in range(64)]
    made = [pipe.prepare(r).prompt for r in reqs[:4]]  # warm (kernels, shared embeddings)
    sync()
    plan_s, make_s = [], []
    for r in reqs:
        t = time.perf_counter()
        job = pipe.prepare(r)
        t1 = time.perf_counter()
        made.append(job.prompt)
        plan_s.append(t1 - t)
        make_s.append(time.perf_counter() - t1)
    sync()
    prof = cProfile.Profile()
    prof.enable()
    made += [pipe.prepare(r).prompt for r in reqs[:16]]
    sync()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    with open(os.path.join(out_dir, "profile_prepare.txt"), "w") as f:
        f.write(s.getvalue())
    print(s.getvalue()[:5000])
    ms = {"plan": plan_s, "make": make_s}
    return {
        f"{k}_{q}_ms": round(f(v) * 1e3, 3)
        for k, v in ms.items()
        for q, f in (("p50", statistics.median), ("max", max))
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", nargs="*", default=["prepare", "codec", "codec_ops"])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    for part in args.parts:
        try:
            parts = {"prepare": prepare_cost, "codec": codec_variants, "codec_ops": codec_ops}
            res[part] = parts[part](args.base, args.out)
        except Exception as e:  # keep the other part
            import traceback

            traceback.print_exc()
            res[part] = {"error": f"{type(e).__name__}: {e}"}
        with open(os.path.join(args.out, "parts.json"), "w") as f:
            json.dump(res, f, indent=1)
    log("parts", json.dumps(res)[:3000])


if __name__ == "__main__":
    main()
