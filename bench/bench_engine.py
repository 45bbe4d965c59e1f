"""GPU benchmark of our engine on full-size random 1.7B checkpoints (forced lengths: real-weight compute).

Usage (on the GPU machine, from the repo root, after bench/run_gpu.sh built the checkpoints):
  python bench/bench_engine.py --base CKPT_BASE --design CKPT_DESIGN --out OUT_DIR [--sections ...]
Sections: env parity single ttfa concurrency memory capped floor. Each writes into OUT/ours.json.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import gzip
import io
import json
import logging
import os
import pstats
import statistics
import sys
import threading
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from utter_tts import stack  # noqa: E402
from utter_tts.api import TTS  # noqa: E402
from utter_tts.codec.decoder import DEFAULT_PRECISION  # noqa: E402
from utter_tts.engine.engine import Engine  # noqa: E402
from utter_tts.engine.runner import attention_backend  # noqa: E402
from utter_tts.model.frame import Trace  # noqa: E402
from utter_tts.request import Request  # noqa: E402

TEXT = (
    "This is a simple test of the speech system. It should read this line out loud at a normal pace, "
    "so that we can measure how long it takes to make about ten seconds of audio on one GPU."
)
FRAME_SECONDS = 0.08
RESULTS: dict = {}
KERNELS: bool | None = None  # --kernels: the engine's frame step (None: fused on CUDA)


COMPILES: list[str] = []  # Triton compiles while serving (each ~1 s: a stall for every stream)


def _note_compile(*args, **kwargs):
    COMPILES.append(f"{time.strftime('%H:%M:%S')} {str(kwargs.get('repr', '?'))[:400]}")
    return None


def watch_compiles():
    try:
        import triton

        triton.knobs.runtime.jit_post_compile_hook = _note_compile
    except Exception as e:  # an older Triton: no hook, no log
        log("no Triton compile hook:", e)


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def forced(frames: int, **extra) -> dict:
    """Settings giving exactly `frames` frames (EOS masked; +1: the last token gets no residual codes)."""
    return dict(max_new_tokens=frames + 1, min_new_tokens=frames + 1, **extra)


def reference(seconds=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(24000 * seconds))).astype(np.float32)


def sync():
    torch.cuda.synchronize()


def pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else None


# ---- sections --------------------------------------------------------------------------------------------


def section_env(args, ctx):
    p = torch.cuda.get_device_properties(0)
    RESULTS["date"] = time.strftime("%Y-%m-%d", time.gmtime())  # the summary's date (UTC)
    RESULTS["env"] = dict(
        gpu=p.name,
        sms=p.multi_processor_count,
        memory_gib=round(p.total_memory / 2**30, 1),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=sys.version.split()[0],
        attention=attention_backend(torch.device("cuda")),
        codec_precision=os.environ.get("UTTER_TTS_CODEC_PRECISION", DEFAULT_PRECISION),
        triton=stack.installed().get("triton"),
        pdl=os.environ.get("UTTER_TTS_PDL", "1") != "0",
        # where this run's torch/Triton differ from the deployment's pinned stack (utter_tts/stack.json)
        stack_differences=stack.differences(stack.installed()),
    )
    # measured copy bandwidth (bytes read + written), for the per-frame floor
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    sync()
    RESULTS["env"]["copy_bandwidth_gbs"] = round(2 * 10 * x.numel() / (time.perf_counter() - t) / 1e9, 1)
    del x, y
    log("env", RESULTS["env"])


TEXTS = [  # mixed prompt lengths
    "Hi there.",
    "This is a short test sentence.",
    TEXT,
    "Another sentence, of a middling length, to vary the prompts a little bit more.",
]


def _parity_batch(tts, voice, batch: int, frames: int, trace_plain: bool):
    """The fused engine (requests joining mid-flight) vs the eager plain loop (one batch), greedy:
    per request, the first frame where the codes differ (None: equal)."""
    reqs = [
        Request(TEXTS[i % len(TEXTS)], "clone", "english", voice=voice, seed=i,
                sampling=forced(frames, do_sample=False, subtalker_dosample=False))
        for i in range(batch)
    ]  # fmt: skip
    pipeline = tts.pipeline
    trace = Trace() if trace_plain else None
    plain = pipeline.generate_codes([pipeline.prepare(r) for r in reqs], trace)
    eng = Engine(pipeline, max_streams=batch, max_frames=frames + 8, max_prompt=256, max_text_tokens=256,
                 kernels=KERNELS)  # fmt: skip
    try:
        half = max(1, batch // 2)
        gens = [eng.submit(r) for r in reqs[:half]]
        while gens[0].frames < min(10, frames - 1):  # the rest join mid-flight
            time.sleep(0.001)
        gens += [eng.submit(r) for r in reqs[half:]]
        got = [g.result(600) for g in gens]
        fused = eng.runner.fused is not None
    finally:
        eng.close()
    firsts = []
    for a, b in zip(plain, got):
        diff = (a != b).any(dim=1).nonzero() if a.shape == b.shape else torch.zeros(1, 1)
        firsts.append(int(diff[0]) if len(diff) else None)
    return firsts, trace, fused


def section_parity(args, ctx):
    """Fused engine vs the eager plain model. fp32 greedy: token for token over 60 frames at batch 1, 8
    and 64 (mixed prompt lengths, half joining mid-flight). bf16: the first divergent frame and the
    logit margin there. A 3,000-frame bf16 stream: codes stay valid, audio RMS stays within 2x."""
    out = {}
    for dtype in args.parity_dtypes:
        tts = TTS.from_pretrained(args.base, device="cuda", dtype=dtype)
        voice = tts.create_voice((reference(), 24000))
        entry = {}
        batches = args.parity_batches if dtype == "float32" else args.parity_bf16_batches
        for batch in [b for b in batches if b <= args.max_streams]:
            firsts, trace, fused = _parity_batch(tts, voice, batch, 60, trace_plain=dtype == "bfloat16")
            diverged = [(i, f) for i, f in enumerate(firsts) if f is not None]
            e = dict(requests=batch, frames=60, fused=fused, equal=sum(f is None for f in firsts),
                     first_divergent_frames=sorted(f for _, f in diverged)[:10])  # fmt: skip
            if diverged and trace is not None:
                i, f = min(diverged, key=lambda x: x[1])
                top2 = trace.talker_logits[f][i].topk(2).values  # codebook 0 of frame f
                e["codebook0_margin_at_first_divergence"] = float(top2[0] - top2[1])
                cp_top2 = trace.predictor_logits[f][i].topk(2, dim=-1).values
                e["min_predictor_margin_at_first_divergence"] = float((cp_top2[:, 0] - cp_top2[:, 1]).min())
            entry[f"batch{batch}"] = e
            log("parity", dtype, batch, e)
        if dtype == "bfloat16" and args.long_frames:
            entry["long_stream"] = _long_stream(tts, voice, args.long_frames)
            log("parity long stream", entry["long_stream"])
        out[dtype] = entry
        del tts
        torch.cuda.empty_cache()
    RESULTS["parity"] = out


def _long_stream(tts, voice, frames: int) -> dict:
    """One bf16 stream of `frames` frames on the fused engine: every code decodable, and no numerical
    blow-up (the RMS of the audio of its last 100 frames within 2x of its first 100)."""
    eng = Engine(tts.pipeline, max_streams=1, max_frames=frames + 8, max_prompt=256, max_text_tokens=256,
                 kernels=KERNELS)  # fmt: skip
    try:
        t = time.perf_counter()
        codes = eng.generate_codes(
            [Request(TEXT, "clone", "english", voice=voice, seed=5, sampling=forced(frames))]
        )[0]
        wall = time.perf_counter() - t
    finally:
        eng.close()
    audio = tts.decode(codes)
    n = 100 * 1920
    rms_first = float(np.sqrt(np.mean(audio[:n] ** 2)))
    rms_last = float(np.sqrt(np.mean(audio[-n:] ** 2)))
    return dict(
        frames=int(codes.shape[0]),
        codes_valid=bool(((codes >= 0) & (codes < 2048)).all()),
        rms_first_100=round(rms_first, 5),
        rms_last_100=round(rms_last, 5),
        rms_within_2x=bool(rms_first > 0 and 0.5 <= rms_last / rms_first <= 2.0),
        wall_s=round(wall, 2),
    )


def _engine(ctx, args, slots=64):
    clock = int(os.environ.get("UTTER_BENCH_CLOCK_FRAMES", "0"))
    if clock:  # an experiment: all streams' frames decoded together every `clock` frames
        from utter_tts.engine import decoding

        decoding.CLOCK_FRAMES = clock
        decoding.GRAPH_FRAMES = tuple(sorted({*decoding.GRAPH_FRAMES, clock}))
        RESULTS["clock_frames"] = clock
    if ctx.get("engine") is None or ctx["engine"].runner.max_slots < slots:
        if ctx.get("engine") is not None:
            ctx["engine"].close()
        tts = ctx.get("tts") or TTS.from_pretrained(args.base, device="cuda", dtype="bfloat16")
        ctx["tts"] = tts
        ctx["voice"] = tts.create_voice((reference(), 24000))
        ctx["engine"] = Engine(
            tts.pipeline,
            max_streams=slots,
            max_frames=512,
            max_prompt=256,
            max_text_tokens=256,
            kernels=KERNELS,
        )
        t = time.perf_counter()
        n = ctx["engine"].warmup((256, 512))
        RESULTS["graph_capture"] = dict(graphs=n, seconds=round(time.perf_counter() - t, 2))
        log("captured", RESULTS["graph_capture"])
    return ctx["engine"]


def section_single(args, ctx):
    eng = _engine(ctx, args, slots=args.max_streams)
    tts, voice = ctx["tts"], ctx["voice"]
    req = Request(TEXT, "clone", "english", voice=voice, seed=3, sampling=forced(125))
    eng.generate([req])  # warm-up: graph capture
    walls, gen_ms, decode_s = [], [], []
    for i in range(5):
        sync()
        t0 = time.perf_counter()
        gen = eng.submit(Request(TEXT, "clone", "english", voice=voice, seed=10 + i, sampling=forced(125)))
        codes = gen.result()
        t1 = time.perf_counter()
        audio = tts.decode(codes, gen.job.ref_codes)
        sync()
        t2 = time.perf_counter()
        assert codes.shape[0] == 125 and len(audio) == 125 * 1920
        walls.append(t2 - t0)
        gen_ms.append((t1 - gen.first_frame_at) / (codes.shape[0] - 1) * 1e3)
        decode_s.append(t2 - t1)
    # streamed (codec slots, batched decode thread, graphs) == one-shot decode of the same codes; 400
    # frames cross the official 300-frame chunk restart (replayed from the stream's host-side history)
    req = Request(TEXT, "clone", "english", voice=voice, seed=42, sampling=forced(400))
    streamed = np.concatenate(list(eng.stream(req, chunk_frames=4, first_chunk_frames=1)))
    one_shot = tts.decode(eng.generate_codes([req])[0])
    stream_err = float(np.abs(streamed - one_shot).max() / max(1e-9, np.abs(one_shot).max()))
    wall = statistics.median(walls)
    RESULTS["single"] = dict(
        streamed_vs_one_shot_max_rel=stream_err,
        audio_s=10.0,
        wall_s=round(wall, 4),
        rtf=round(10.0 / wall, 2),
        ms_per_frame=round(statistics.median(gen_ms), 3),
        decode_s=round(statistics.median(decode_s), 4),
        decode_share=round(statistics.median(decode_s) / wall, 3),
        runs=[round(w, 4) for w in walls],
    )
    log("single", RESULTS["single"])


def _stream_once(eng, req, first, chunk, timings=None):
    """Consume one stream through the engine's streaming API, as a player would; returns (ttfa, wall,
    audio_s, ran_dry). With `timings`, also records where the first chunk's time went."""
    t0 = time.perf_counter()
    gen = eng.submit(req)
    got, arrivals = 0, []
    for audio in eng.audio(gen, chunk_frames=chunk, first_chunk_frames=first):
        arrivals.append((time.perf_counter() - t0, len(audio) / 24000))
        got += len(audio)
    wall = time.perf_counter() - t0
    ttfa = arrivals[0][0]
    if timings is not None:
        first_frame = gen.first_frame_at - t0
        timings.append(
            dict(
                first_frame_s=first_frame,
                first_decode_s=ttfa - first_frame,
                submit_s=gen.submitted - t0,  # validation and the prompt, on the caller's thread
                admitted_s=gen.admitted_at - t0,  # queued, then prefilled (first token sampled)
            )
        )
    played, dry = ttfa, False  # playback starts when the first chunk lands
    for at, dur in arrivals:
        if at > played + 1e-3:
            dry = True
        played = max(played, at) + dur
    return ttfa, wall, got / 24000, dry


def section_ttfa(args, ctx):
    eng = _engine(ctx, args, slots=args.max_streams)
    voice = ctx["voice"]
    out = {}
    for first, chunk in ((1, 4), (2, 8)):
        _stream_once(
            eng, Request(TEXT, "clone", "english", voice=voice, seed=1, sampling=forced(40)), first, chunk
        )
        ttfas, dry, timings = [], 0, []
        for i in range(20):
            t, _, _, d = _stream_once(
                eng,
                Request(TEXT, "clone", "english", voice=voice, seed=i, sampling=forced(40)),
                first,
                chunk,
                timings,
            )
            ttfas.append(t)
            dry += d
        out[f"first{first}_chunk{chunk}"] = dict(
            p50_ms=round(pct(ttfas, 50) * 1e3, 1),
            p95_ms=round(pct(ttfas, 95) * 1e3, 1),
            runs_ran_dry=dry,
            first_frame_p50_ms=round(pct([t["first_frame_s"] for t in timings], 50) * 1e3, 1),
            first_decode_p50_ms=round(pct([t["first_decode_s"] for t in timings], 50) * 1e3, 1),
            submitted_p50_ms=round(pct([t["submit_s"] for t in timings], 50) * 1e3, 1),
            admitted_p50_ms=round(pct([t["admitted_s"] for t in timings], 50) * 1e3, 1),
        )
    RESULTS["ttfa_single_stream"] = out
    log("ttfa", out)


def _concurrent(eng, voice, n, poisson_rate, seed):
    """n streams with varied lengths (80..170 frames), consumed by player threads; Poisson arrivals."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(80, 171, size=n)
    gaps = rng.exponential(1.0 / poisson_rate, size=n) if poisson_rate else np.zeros(n)
    recs = [None] * n
    threads = []

    errors = []

    def run(i):
        try:
            _run(i)
        except Exception:
            errors.append(traceback.format_exc())

    timings = []

    def _run(i):
        req = Request(
            TEXT, "clone", "english", voice=voice, seed=int(seed * 1000 + i), sampling=forced(int(frames[i]))
        )
        t0 = time.perf_counter()
        ttfa, wall, audio_s, dry = _stream_once(eng, req, 1, 4, timings)
        recs[i] = dict(start=t0, end=t0 + wall, ttfa=ttfa, audio_s=audio_s, dry=dry)

    passes = eng.decoding.batches
    compiles_before = len(COMPILES)
    cpu = _cpu_clocks(eng)
    t_start = time.perf_counter()
    for i in range(n):
        th = threading.Thread(target=run, args=(i,))
        th.start()
        threads.append(th)
        if gaps[i] > 0:
            time.sleep(float(gaps[i]))
    for th in threads:
        th.join()
    if errors:
        raise RuntimeError(f"{len(errors)} streams failed; first:\n{errors[0]}")
    end = max(r["end"] for r in recs)
    # CPU seconds per wall second: the process (all threads) and the engine's two threads; a thread near
    # 1.0 (or the process near 1.0 with Python-bound threads) means the GIL, not the GPU, sets the pace
    cpu = {k: round((v2 - cpu[k]) / (end - t_start), 2) for k, v2 in _cpu_clocks(eng).items()}
    total_audio = sum(r["audio_s"] for r in recs)
    per_stream = [r["audio_s"] / (r["end"] - r["start"]) for r in recs]
    ttfas = [r["ttfa"] for r in recs]
    return dict(
        streams=n,
        poisson_rate_per_s=poisson_rate,
        audio_s=round(total_audio, 2),
        wall_s=round(end - t_start, 3),
        aggregate_rtf=round(total_audio / (end - t_start), 1),
        slowest_stream_rtf=round(min(per_stream), 2),
        median_stream_rtf=round(statistics.median(per_stream), 2),
        ttfa_p50_ms=round(pct(ttfas, 50) * 1e3, 1),
        ttfa_p95_ms=round(pct(ttfas, 95) * 1e3, 1),
        streams_ran_dry=int(sum(r["dry"] for r in recs)),
        codec_passes=eng.decoding.batches - passes,
        # where the first audio's time went (p50 / max over streams, ms from the stream's start)
        **{
            f"{k[:-2]}_{q}_ms": round(f(t[k] for t in timings) * 1e3, 1)
            for k in ("submit_s", "admitted_s", "first_frame_s", "first_decode_s")
            for q, f in (("p50", lambda xs: pct(list(xs), 50)), ("max", max))
        },
        triton_compiles=COMPILES[compiles_before:],
        cpu_per_wall_s=cpu,
    )


def _cpu_clocks(eng) -> dict:
    """CPU seconds so far: the whole process, the scheduler's thread and the decoder's thread."""
    out = {"process": time.process_time()}
    for name, th in (("scheduler", eng.scheduler.thread), ("decoder", eng.decoding.thread)):
        try:
            out[name] = time.clock_gettime(time.pthread_getcpuclockid(th.ident))
        except (OSError, AttributeError, TypeError):  # not Linux, or the thread is gone
            out[name] = 0.0
    return out


def section_concurrency(args, ctx):
    eng = _engine(ctx, args, slots=args.max_streams)
    voice = ctx["voice"]
    # warm every batch bucket's graphs
    _concurrent(eng, voice, min(64, args.max_streams), 0, 99)
    out = []
    # 64 at once is the target's "64 concurrent streams"; 64 with Poisson arrivals is kept for comparison
    for n, rate in ((1, 0), (8, 0), (32, 20.0), (64, 0), (64, 40.0)):
        if n > args.max_streams:
            continue
        r = _concurrent(eng, voice, n, rate, n)
        out.append(r)
        log("concurrency", r)
    RESULTS["concurrency"] = out


def _generate_both(eb, ed, reqs_b, reqs_d):
    """Run requests on two engines at once (Base in this thread, VoiceDesign in another): wall, all audio."""
    t = time.perf_counter()
    done = {}
    th = threading.Thread(target=lambda: done.setdefault("d", ed.generate(reqs_d)))
    th.start()
    done["b"] = eb.generate(reqs_b)
    th.join()
    if "d" not in done:
        raise RuntimeError("the VoiceDesign engine's requests failed (see the thread's traceback above)")
    return time.perf_counter() - t, done["b"] + done["d"]


def section_memory(args, ctx):
    """Base + VoiceDesign resident, 8 streams x 2048 frames each (16 in total), after a run on each."""
    for k in ("engine", "tts"):
        if ctx.get(k) is not None and k == "engine":
            ctx[k].close()
        ctx[k] = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = TTS.from_pretrained(args.base, device="cuda", dtype="bfloat16")
    design = TTS.from_pretrained(args.design, device="cuda", dtype="bfloat16")
    after_load = torch.cuda.memory_allocated()
    eb = Engine(
        base.pipeline, max_streams=8, max_frames=2048, max_prompt=512, max_text_tokens=512, kernels=KERNELS
    )
    ed = Engine(
        design.pipeline, max_streams=8, max_frames=2048, max_prompt=512, max_text_tokens=512, kernels=KERNELS
    )
    voice = base.create_voice((reference(), 24000))
    reqs_b = [Request(TEXT, "clone", "english", voice=voice, seed=i, sampling=forced(100)) for i in range(8)]
    reqs_d = [
        Request(
            TEXT, "design", "english", instruct="A deep, rasping pirate voice.", seed=i, sampling=forced(100)
        )
        for i in range(8)
    ]
    wall, _ = _generate_both(eb, ed, reqs_b, reqs_d)
    RESULTS["memory"] = dict(
        after_load_gib=round(after_load / 2**30, 2),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2),
        streams=16,
        frames_per_stream_capacity=2048,
        run_16_streams_wall_s=round(wall, 2),
        audio_s=round(16 * 100 * FRAME_SECONDS, 1),
    )
    eb.close()
    ed.close()
    log("memory", RESULTS["memory"])


def section_floor(args, ctx):
    tts = ctx.get("tts") or TTS.from_pretrained(args.base, device="cuda", dtype="bfloat16")
    t = tts.pipeline.talker
    n_layers = sum(p.numel() for p in t.model.layers.parameters())
    cp = t.code_predictor
    cp_layers = sum(p.numel() for p in cp.model.layers.parameters())
    proj = sum(p.numel() for p in cp.small_to_mtp_projection.parameters())
    head = t.codec_head.weight.numel()
    cp_head = cp.lm_head[0].weight.numel()
    per_frame = 2 * (n_layers + head + 15 * (cp_layers + proj + cp_head))
    bw = RESULTS.get("env", {}).get("copy_bandwidth_gbs") or 3000
    RESULTS["floor"] = dict(
        bytes_per_frame=per_frame,
        floor_ms=round(per_frame / (bw * 1e9) * 1e3, 3),
        floor_rtf=round(FRAME_SECONDS / (per_frame / (bw * 1e9)), 1),
    )
    log("floor", RESULTS["floor"])


def section_deploy(args, ctx):
    """The Modal container as deployed (compat.deploy defaults: Base + VoiceDesign, an engine each),
    ideally under --memory-cap-gib 21: peak memory, a ~3 s clip's latency, 10 minutes of audio."""
    from utter_tts.compat.deploy import DeploySettings, load_service

    if ctx.get("engine") is not None:
        ctx["engine"].close()
    ctx["engine"] = ctx["tts"] = None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    settings = DeploySettings(base_model=args.base, design_model=args.design)
    t = time.perf_counter()
    svc = load_service(settings)
    load_s = time.perf_counter() - t
    eb, ed = svc.base_engine, svc.design_engine
    voice = svc.base.create_voice((reference(), 24000))
    clip = forced(38)  # 3.04 s

    def clone(seed, sampling=clip, text=TEXT):
        return Request(text, "clone", "english", voice=voice, seed=seed, sampling=sampling)

    def design(seed):
        pirate = "A deep, rasping pirate voice."
        return Request(TEXT, "design", "english", instruct=pirate, seed=seed, sampling=clip)

    lat = {"clone": [], "design": []}
    for i in range(6):  # the first of each captures graphs: dropped
        for name, eng, req in (("clone", eb, clone(i)), ("design", ed, design(i))):
            t = time.perf_counter()
            wav = eng.generate([req])[0]
            lat[name].append(time.perf_counter() - t)
            assert len(wav) == 38 * 1920
    # 10 minutes of audio as a long job runs it: 10 s sentences (125 frames), all submitted at once
    reqs = [clone(100 + i, forced(125)) for i in range(60)]
    t = time.perf_counter()
    wavs = eb.generate(reqs)
    ten_min_s = time.perf_counter() - t
    audio_s = sum(len(w) for w in wavs) / 24000
    # clone and design at the configured concurrency together: each engine full
    both = [clone(200 + i, forced(125)) for i in range(settings.engine_streams)]
    both_d = [design(300 + i) for i in range(settings.engine_streams)]
    mixed_s, wavs = _generate_both(eb, ed, both, both_d)
    mixed_audio_s = sum(len(w) for w in wavs) / 24000
    RESULTS["deploy"] = dict(
        memory_cap_gib=args.memory_cap_gib,
        engine_streams_per_model=settings.engine_streams,
        engine_frames=settings.engine_frames,
        load_s=round(load_s, 1),
        clip_3s_clone_p50_s=round(statistics.median(lat["clone"][1:]), 3),
        clip_3s_design_p50_s=round(statistics.median(lat["design"][1:]), 3),
        ten_minutes_audio_s=round(audio_s, 1),
        ten_minutes_wall_s=round(ten_min_s, 2),
        ten_minutes_rtf=round(audio_s / ten_min_s, 1),
        clone_and_design_full_wall_s=round(mixed_s, 2),
        clone_and_design_full_audio_s=round(mixed_audio_s, 1),
        peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2),
    )
    eb.close()
    ed.close()
    log("deploy", RESULTS["deploy"])


def section_profile(args, ctx):
    """Where a frame's GPU time goes: kernels of eager frames (same kernels as the graph) at batch 1
    and 64, summed by name; the top ones are written to profile_b*.txt."""
    from torch.profiler import ProfilerActivity, profile

    eng = _engine(ctx, args, slots=args.max_streams)
    runner = eng.runner
    voice = ctx["voice"]
    out = {}
    for b in (1, min(64, args.max_streams)):
        streams = [
            eng.submit(Request(TEXT, "clone", "english", voice=voice, seed=i, sampling=forced(400)))
            for i in range(b)
        ]
        while eng.scheduler.active < b:
            time.sleep(0.01)
        with eng.scheduler.lock:  # pause the scheduler thread between frames: we drive frames here
            span = 256
            if runner.fused:
                span = runner.max_len
            with torch.cuda.stream(runner.cuda_stream), torch.no_grad():
                for _ in range(3):
                    runner._step(b, span, graph_safe=True)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        runner._step(b, span, graph_safe=True)
                    torch.cuda.synchronize()
        for s in streams:
            s.cancel()
        total, kernels, table = _kernel_profile(prof, os.path.join(args.out, f"profile_b{b}.txt"), runs=5)
        out[f"batch{b}"] = dict(kernel_ms_per_frame=round(total, 2), kernels_per_frame=round(kernels))
        log("profile", b, out[f"batch{b}"])
        print(table[:6000])
    out["codec"] = _codec_passes(eng, args.out)
    log("profile codec", out["codec"])
    RESULTS["profile"] = out


def _kernel_profile(prof, path: str, runs: int = 1, rows: int = 30) -> tuple[float, float, str]:
    """A profile's GPU kernels per run (ms, count) and its top-`rows` table, also written to `path`."""
    events = prof.key_averages()
    ms = sum(e.device_time_total for e in events) / runs / 1e3
    kernels = sum(e.count for e in events if e.device_time_total > 0) / runs
    table = events.table(sort_by="device_time_total", row_limit=rows)
    with open(path, "w") as f:
        f.write(table)
    return ms, kernels, table


def _codec_passes(eng, out_dir) -> dict:
    """The streaming decoder's capacity: one pass of `size` streams x `n` frames (codec slots, a CUDA
    graph), median of 20, and the audio seconds per second that rate could decode."""
    slots = eng.decoding.slots
    res = {}
    with torch.cuda.stream(eng.decoding.cuda_stream):
        for size, n in ((1, 1), (1, 4), (8, 4), (32, 4), (64, 4)):
            if size > len(slots.free):
                continue
            ms = _codec_pass_ms(slots, torch.randint(0, 2048, (size, n, 16), device="cuda"), runs=20)
            res[f"{size}x{n}"] = dict(
                ms=round(ms, 2), audio_s_per_s=round(size * n * FRAME_SECONDS / (ms / 1e3), 1)
            )
        res["eager_64x4"] = _codec_eager(slots, out_dir)
    return res


def _codec_pass_ms(slots, codes: torch.Tensor, runs: int) -> float:
    """Median ms of one codec pass of codes [B, n, 16] over slots 0..B-1 (on the current stream), warm."""
    rows = list(range(codes.shape[0]))
    for _ in range(3):
        slots.run(rows, codes)
    times = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        slots.run(rows, codes)
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def codec_op_table(slots, codes: torch.Tensor, path: str, rows: int) -> str:
    """Which operations of one eager codec pass over slots 0..B-1 launch its kernels (CPU ops with their
    kernels, by device time), written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    index = torch.arange(codes.shape[0], device="cuda")
    slots._pass(index, codes)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        slots._pass(index, codes)
        sync()
    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows)
    with open(path, "w") as f:
        f.write(table)
    return table


def _codec_eager(slots, out_dir) -> dict:
    """One 64-stream x 4-frame pass run eagerly, with the fused Snake and without (ms, kernels), and the
    profile of the fused one's kernels (profile_codec.txt)."""
    from torch.profiler import ProfilerActivity, profile

    from utter_tts.codec.decoder import fused_snake

    size = min(64, len(slots.free))
    index = torch.arange(size, device="cuda")
    codes = torch.randint(0, 2048, (size, 4, 16), device="cuda")
    res = {}
    for label, flag in (("eager_snake", "0"), ("fused_snake", "1")):
        os.environ["UTTER_TTS_CODEC_KERNELS"] = flag
        fused_snake.cache_clear()
        for _ in range(2):
            slots._pass(index, codes)
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            slots._pass(index, codes)
            sync()
        ms, kernels, _ = _kernel_profile(prof, os.path.join(out_dir, f"profile_codec_{label}.txt"), rows=25)
        res[label] = dict(kernel_ms=round(ms, 2), kernels=round(kernels))
    os.environ["UTTER_TTS_CODEC_KERNELS"] = "1"
    fused_snake.cache_clear()
    return res


def _timed(obj, name, log_list):
    """Wrap obj.name so each call's (start, seconds, first arg's length or value) lands in log_list."""
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            arg = a[0] if a else None
            size = len(arg) if isinstance(arg, list) else arg if isinstance(arg, int) else None
            log_list.append((t, time.perf_counter() - t, size))

    setattr(obj, name, wrapper)
    return fn


def _stream_busy(events, t0, t1) -> dict:
    """Per CUDA stream within [t0, t1] (us): kernels, summed kernel time, busy union; and the union over
    all streams, the time two streams ran at once, the launch gaps of each stream."""
    by_stream: dict = {}
    for e in events:
        s, a, b = e
        a, b = max(a, t0), min(b, t1)
        if b > a:
            by_stream.setdefault(s, []).append((a, b))

    def union(iv):
        iv = sorted(iv)
        out, cur = [], None
        for a, b in iv:
            if cur and a <= cur[1]:
                cur[1] = max(cur[1], b)
            else:
                if cur:
                    out.append(tuple(cur))
                cur = [a, b]
        if cur:
            out.append(tuple(cur))
        return out

    res, unions = {}, {}
    for s, iv in by_stream.items():
        u = union(iv)
        unions[s] = u
        gaps = [u[i + 1][0] - u[i][1] for i in range(len(u) - 1)]
        res[str(s)] = dict(
            kernels=len(iv),
            kernel_ms=round(sum(b - a for a, b in iv) / 1e3, 2),
            busy_ms=round(sum(b - a for a, b in u) / 1e3, 2),
            gaps_under_5us_ms=round(sum(g for g in gaps if g < 5) / 1e3, 2),
            gaps_5_50us_ms=round(sum(g for g in gaps if 5 <= g < 50) / 1e3, 2),
            gaps_over_50us_ms=round(sum(g for g in gaps if g >= 50) / 1e3, 2),
            gaps_over_50us=sum(1 for g in gaps if g >= 50),
        )
    every = union([x for u in unions.values() for x in u])
    busy_all = sum(b - a for a, b in every)
    busy_sum = sum(sum(b - a for a, b in u) for u in unions.values())
    return dict(
        window_ms=round((t1 - t0) / 1e3, 2),
        gpu_busy_ms=round(busy_all / 1e3, 2),
        streams_overlap_ms=round((busy_sum - busy_all) / 1e3, 2),
        streams=res,
    )


def section_timeline(args, ctx):
    """Where the wall time of 64 streams at once goes: host timings of the scheduler's launch / collect /
    update and the decoder's passes, and a CUDA trace of the middle of the run (per-stream busy time,
    overlap, launch gaps). Also the same streams' codes alone (no audio) and one codec pass alone."""
    from torch.profiler import ProfilerActivity, profile

    eng = _engine(ctx, args, slots=args.max_streams)
    voice = ctx["voice"]
    n = min(64, args.max_streams)
    _concurrent(eng, voice, n, 0, 99)  # warm
    out = {}
    # codes only: the frame loop without the codec
    reqs = [Request(TEXT, "clone", "english", voice=voice, seed=i, sampling=forced(128)) for i in range(n)]
    t = time.perf_counter()
    gens = [eng.submit(r) for r in reqs]
    t_sub = time.perf_counter() - t
    [g.result() for g in gens]
    wall = time.perf_counter() - t
    first = min(g.first_frame_at for g in gens)
    last = max(g.first_frame_at for g in gens)
    out["codes_only"] = dict(
        streams=n,
        frames=128,
        submit_ms=round(t_sub * 1e3, 1),
        wall_s=round(wall, 3),
        first_frame_ms=round((first - t) * 1e3, 1),
        last_first_frame_ms=round((last - t) * 1e3, 1),
        ms_per_step=round((t + wall - first) / 128 * 1e3, 2),
        audio_s_per_s=round(n * 128 * FRAME_SECONDS / wall, 1),
    )
    log("timeline codes only", out["codes_only"])
    # the frame graph alone at the full batch, replayed back to back (GPU time of a frame, launch gaps in)
    runner = eng.runner
    if runner.use_graphs:
        with eng.scheduler.lock, torch.cuda.stream(runner.cuda_stream):
            saved = [t.clone() for t in runner._mutable()]
            graph = runner.graphs.get((n, runner.max_len)) or next(iter(runner.graphs.values()))
            graph.replay()
            sync()
            t = time.perf_counter()
            for _ in range(20):
                graph.replay()
            sync()
            out["frame_graph_ms"] = round((time.perf_counter() - t) / 20 * 1e3, 3)
            for dst, src in zip(runner._mutable(), saved):
                dst.copy_(src)
            sync()
        log("timeline frame graph", out["frame_graph_ms"])
    # a packed prefill of n prompts (what admitting n streams at once costs before their first frame)
    jobs = [eng.pipeline.prepare(r, limit=runner.max_frames) for r in reqs]
    with eng.scheduler.lock, torch.cuda.stream(runner.cuda_stream):
        for _ in range(2):
            runner.prefill(0, [(j.prompt, j.sampling, j.request.seed) for j in jobs])
            sync()
        t = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner.prefill(0, [(j.prompt, j.sampling, j.request.seed) for j in jobs])
            sync()
        wall = time.perf_counter() - t
        walls = []  # without the profiler (its per-launch callbacks slow a host-bound pass)
        for _ in range(3):
            t = time.perf_counter()
            runner.prefill(0, [(j.prompt, j.sampling, j.request.seed) for j in jobs])
            walls.append(time.perf_counter() - t)
        host_prof = cProfile.Profile()
        host_prof.enable()
        runner.prefill(0, [(j.prompt, j.sampling, j.request.seed) for j in jobs])
        host_prof.disable()
        for i in range(n):
            runner.clear(i)
    stats = io.StringIO()
    pstats.Stats(host_prof, stream=stats).sort_stats("tottime").print_stats(25)
    with open(os.path.join(args.out, "profile_prefill_host.txt"), "w") as f:
        f.write(stats.getvalue())
    kernel_ms, kernels, table = _kernel_profile(prof, os.path.join(args.out, "profile_prefill.txt"), rows=12)
    out["prefill"] = dict(
        prompts=n,
        rows=sum(j.prompt.embeds.shape[0] for j in jobs),
        wall_ms_profiled=round(wall * 1e3, 1),
        wall_ms=round(statistics.median(walls) * 1e3, 1),
        kernel_ms=round(kernel_ms, 1),
        kernels=round(kernels),
    )
    # an untraced run's admissions: when each began (ms after the first request), how many, how long
    admits: list = []
    restore = _timed(sched := eng.scheduler, "_admit", admits)
    try:
        t_run = time.perf_counter()
        out["run_untraced"] = _concurrent(eng, voice, n, 0, n + 1)
    finally:
        sched._admit = restore
    out["admissions_untraced"] = [
        [round((t - t_run) * 1e3, 1), size, round(d * 1e3, 1)] for t, d, size in admits if size
    ]
    log("timeline prefill", out["prefill"])
    print(table[:5000])
    # host timings and a trace of a full run with audio
    logs: dict = {k: [] for k in ("launch", "collect", "update", "admit", "decode")}
    sched, runner, dec = eng.scheduler, eng.runner, eng.decoding
    saved = [
        (runner, "launch", _timed(runner, "launch", logs["launch"])),
        (runner, "collect", _timed(runner, "collect", logs["collect"])),
        (sched, "_update", _timed(sched, "_update", logs["update"])),
        (sched, "_admit", _timed(sched, "_admit", logs["admit"])),
        (dec, "_serve", _timed(dec, "_serve", logs["decode"])),
    ]
    trace_path = os.path.join("/tmp", "timeline_trace.json")
    collections_seen: list = []  # (generation, ms) of the garbage collector's passes during the run
    started: dict = {}

    def on_gc(phase, info):
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started:
            collections_seen.append((info["generation"], (time.perf_counter() - started.pop("t")) * 1e3))

    gc.callbacks.append(on_gc)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            r = _concurrent(eng, voice, n, 0, n)
        prof.export_chrome_trace(trace_path)
    finally:
        gc.callbacks.remove(on_gc)
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    out["gc"] = {
        f"gen{k}": dict(
            passes=sum(1 for g, _ in collections_seen if g == k),
            total_ms=round(sum(ms for g, ms in collections_seen if g == k), 1),
            max_ms=round(max([ms for g, ms in collections_seen if g == k], default=0), 1),
        )
        for k in (0, 1, 2)
    }
    out["run"] = r
    host = {}
    for k, v in logs.items():
        if not v:
            continue
        secs = [d for _, d, _ in v]
        sizes = [s for _, _, s in v if s is not None]
        host[k] = dict(
            calls=len(v),
            total_ms=round(sum(secs) * 1e3, 1),
            p50_ms=round(pct(secs, 50) * 1e3, 3),
            p95_ms=round(pct(secs, 95) * 1e3, 3),
            max_ms=round(max(secs) * 1e3, 2),
            size_p50=pct(sizes, 50) if sizes else None,
        )
    steps = sorted(t for t, _, _ in logs["launch"])
    host["launch_interval_ms"] = (
        dict(
            p50=round(pct(list(np.diff(steps)), 50) * 1e3, 2),
            p95=round(pct(list(np.diff(steps)), 95) * 1e3, 2),
        )
        if len(steps) > 2
        else None
    )
    out["host"] = host
    # the trace: kernels and copies with their streams
    with open(trace_path) as f:
        trace = json.load(f)
    events, names = [], {}
    for e in trace.get("traceEvents", []):
        if e.get("ph") != "X" or e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        s = e.get("args", {}).get("stream", -1)
        events.append((s, float(e["ts"]), float(e["ts"]) + float(e["dur"])))
        key = e.get("name", "?")[:40]
        names.setdefault(s, {}).setdefault(key, 0)
        names[s][key] += 1
    if events:
        t0 = min(a for _, a, _ in events)
        t1 = max(b for _, _, b in events)
        span = t1 - t0
        out["trace_all"] = _stream_busy(events, t0, t1)
        out["trace_middle"] = _stream_busy(events, t0 + 0.3 * span, t0 + 0.6 * span)
        # which stream is which: their most frequent kernels
        out["trace_top_kernels_by_stream"] = {
            str(k): dict(sorted(v.items(), key=lambda kv: -kv[1])[:4]) for k, v in names.items()
        }
    try:
        gz = os.path.join(args.out, "timeline_trace.json.gz")
        with open(trace_path, "rb") as f, gzip.open(gz, "wb") as g:
            g.write(f.read())
        if os.path.getsize(gz) > 15 * 2**20:  # over what comes back from the GPU machine
            os.remove(gz)
    except OSError:
        pass
    # one codec pass alone, the same shape as the run's
    slots = dec.slots
    codes = torch.randint(0, 2048, (n, 4, 16), device="cuda")
    with torch.cuda.stream(dec.cuda_stream):
        out["codec_pass_ms"] = round(_codec_pass_ms(slots, codes, runs=10), 2)
    with torch.cuda.stream(dec.cuda_stream):
        table = codec_op_table(slots, codes, os.path.join(args.out, "profile_codec_ops.txt"), rows=45)
    print(table[:9000])
    RESULTS["timeline"] = out
    log("timeline", json.dumps(out)[:6000])


def _frame_graphs(eng) -> dict:
    """Each batch bucket's frame graph replayed alone: GPU ms a frame (back to back, synced) and host ms a
    replay call takes to return (the launch's CPU cost, what the scheduler's thread pays per frame)."""
    runner, out = eng.runner, {}
    if not runner.use_graphs:
        return out
    with eng.scheduler.lock, torch.cuda.stream(runner.cuda_stream):
        saved = [t.clone() for t in runner._mutable()]
        for (B, _span), graph in sorted(runner.graphs.items(), key=lambda kv: kv[0]):
            graph.replay()
            sync()
            host = []
            t = time.perf_counter()
            for _ in range(10):
                h = time.perf_counter()
                graph.replay()
                host.append(time.perf_counter() - h)
            sync()
            out[str(B)] = dict(
                gpu_ms=round((time.perf_counter() - t) / 10 * 1e3, 3),
                launch_host_ms=round(statistics.median(host) * 1e3, 3),
            )
        for dst, src in zip(runner._mutable(), saved):
            dst.copy_(src)
        sync()
    return out


def _tail_pace(launches: list, graphs: dict) -> dict:
    """Whether the host kept the talker's stream fed as streams ended: per batch bucket of the run's
    frames, the interval between launches (p50) against that bucket's frame graph alone (GPU ms). An
    interval well above the graph's time is a frame the GPU waited for the host (or for the codec)."""
    from utter_tts.engine.runner import BATCH_BUCKETS, bucket

    by: dict = {}
    for (t0, _, _), (t1, _, n) in zip(launches, launches[1:]):
        by.setdefault(bucket(n, BATCH_BUCKETS), []).append(t1 - t0)
    return {
        str(B): dict(
            frames=len(v),
            interval_p50_ms=round(pct(v, 50) * 1e3, 2),
            interval_p95_ms=round(pct(v, 95) * 1e3, 2),
            graph_ms=graphs.get(str(B), {}).get("gpu_ms"),
        )
        for B, v in sorted(by.items())
    }


def section_ab(args, ctx):
    """64 streams at once, untraced, under a few runtime settings in turn (paired: each round runs every
    arm on the same lengths), with the scheduler's launch pace per batch bucket; and each bucket's frame
    graph alone. One call, one warm engine: the arms differ only in the setting."""
    from utter_tts.engine import scheduler as sched_mod

    eng = _engine(ctx, args, slots=args.max_streams)
    voice = ctx["voice"]
    n = min(64, args.max_streams)
    _concurrent(eng, voice, n, 0, 99)  # warm
    graphs = _frame_graphs(eng)
    log("ab frame graphs", graphs)
    ahead, switch = sched_mod.AHEAD, sys.getswitchinterval()
    arms = {
        "now": dict(ahead=ahead, switch=switch),
        "ahead3": dict(ahead=3, switch=switch),
        "ahead4": dict(ahead=4, switch=switch),
        "gil_0.2ms": dict(ahead=ahead, switch=0.0002),
    }
    runs: dict = {k: [] for k in arms}
    RESULTS["ab"] = dict(arms=arms, frame_graphs=graphs, runs=runs)
    for rnd in range(int(os.environ.get("UTTER_BENCH_AB_ROUNDS", "3"))):
        for name, arm in arms.items():
            sched_mod.AHEAD = arm["ahead"]
            sys.setswitchinterval(arm["switch"])
            launches: list = []
            restore = _timed(eng.runner, "launch", launches)
            try:
                r = _concurrent(eng, voice, n, 0, n + rnd)
            finally:
                eng.runner.launch = restore
                sched_mod.AHEAD = ahead
                sys.setswitchinterval(switch)
            r["pace"] = _tail_pace(launches, graphs)
            r["launch_host_p50_ms"] = round(pct([d for _, d, _ in launches], 50) * 1e3, 3)
            runs[name].append(r)
            with open(os.path.join(args.out, f"{args.tag}.json"), "w") as f:  # a cut-off call keeps these
                json.dump(RESULTS, f, indent=1)
            log(f"ab {name} round {rnd}", {k: r[k] for k in ("aggregate_rtf", "slowest_stream_rtf")})
    summary = {
        name: dict(
            aggregate_mean=round(statistics.mean(r["aggregate_rtf"] for r in rs), 1),
            slowest_mean=round(statistics.mean(r["slowest_stream_rtf"] for r in rs), 2),
            ttfa_p50_mean_ms=round(statistics.mean(r["ttfa_p50_ms"] for r in rs), 1),
            aggregate=[r["aggregate_rtf"] for r in rs],
        )
        for name, rs in runs.items()
        if rs
    }
    RESULTS["ab"]["summary"] = summary
    log("ab summary", summary)


SECTIONS = dict(
    env=section_env,
    parity=section_parity,
    single=section_single,
    ttfa=section_ttfa,
    concurrency=section_concurrency,
    floor=section_floor,
    memory=section_memory,
    deploy=section_deploy,
    profile=section_profile,
    timeline=section_timeline,
    ab=section_ab,
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--design", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-streams", type=int, default=64)
    ap.add_argument("--memory-cap-gib", type=float, default=None, help="torch per-process cap (A10G: 21)")
    ap.add_argument("--sections", nargs="*", default=list(SECTIONS))
    ap.add_argument("--tag", default="ours")
    ap.add_argument("--kernels", choices=["auto", "on", "off"], default="auto", help="fused frame kernels")
    ap.add_argument("--parity-batches", type=int, nargs="*", default=[1, 8, 64])
    ap.add_argument("--parity-dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--parity-bf16-batches", type=int, nargs="*", default=[1, 8, 64])
    ap.add_argument("--long-frames", type=int, default=3000, help="bf16 stability stream (0: skip)")
    args = ap.parse_args()
    global KERNELS
    KERNELS = {"auto": None, "on": True, "off": False}[args.kernels]
    RESULTS["kernels"] = args.kernels
    os.makedirs(args.out, exist_ok=True)
    if args.memory_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_cap_gib * 2**30 / total)
        RESULTS["memory_cap_gib"] = args.memory_cap_gib
    ctx: dict = {}
    watch_compiles()
    # the engine's own log (graph captures, faults) among the bench's lines: a capture mid-run is a stall
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(name)s: %(message)s")
    logging.getLogger("utter_tts").setLevel(logging.INFO)
    for name in args.sections:
        t = time.perf_counter()
        try:
            SECTIONS[name](args, ctx)
        except Exception as e:  # keep going: one broken section must not lose the others
            traceback.print_exc()
            RESULTS.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
        log(f"section {name} took {time.perf_counter() - t:.1f}s")
        with open(os.path.join(args.out, f"{args.tag}.json"), "w") as f:
            json.dump(RESULTS, f, indent=1)
    if ctx.get("engine") is not None:
        ctx["engine"].close()


if __name__ == "__main__":
    main()
