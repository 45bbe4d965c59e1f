"""8-bit weights vs fp32 on a random checkpoint: teacher-forced agreement and KL, a long stream, bytes, ms.

Usage (GPU): python bench/quant_report.py --out OUT [--ckpt DIR] [--weights int8 fp8] [--frames 500]
                 [--batches 1 64] [--long-frames 3000]
Smoke (CPU, Triton interpreter, a tiny checkpoint, a few frames): python bench/quant_report.py --device cpu
                 --tiny --out OUT

Every model (fp32, bf16, and each 8-bit mode: the bf16 checkpoint's fused frame with `weights=`) runs the
fused frame step's kernels, teacher-forced: each is fed the same history of codes, the fp32 model's greedy
ones (argmax of its logits, control ids and the end token masked, so every stream runs the full length),
and its logits are compared with fp32's at the same position: top-1 agreement for codebook 0 (talker) and
codebooks 1-15 (code predictor), and the mean KL(fp32 || model) of the softmaxed logits. Then a free-running
8-bit stream (seeded sampling, the engine) of --long-frames frames: codes decodable and the audio's RMS over
its last 100 frames within 2x of its first 100. Weight bytes a frame reads (the talker's layers and head
once, the predictor's layers, projection and one head per codebook: KV caches not counted) and ms/frame (the
step as a CUDA graph) for bf16 and each 8-bit mode. Writes OUT/quant.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from utter_tts.api import TTS  # noqa: E402
from utter_tts.demo import build_checkpoint  # noqa: E402
from utter_tts.engine.engine import Engine  # noqa: E402
from utter_tts.engine.fused import FusedFrame  # noqa: E402
from utter_tts.engine.runner import FP8_CAPABILITY  # noqa: E402
from utter_tts.kernels.linear import CONFIGS, LinearConfig, QuantWeight, linear  # noqa: E402
from utter_tts.model.frame import FrameBatch  # noqa: E402
from utter_tts.request import Request  # noqa: E402

TEXT = "This is a simple test of the speech system, reading one line out loud at a normal pace."
SPEAKERS = ("ryan", "vivian", "eric")
FRAME_SAMPLES = 1920  # 24 kHz audio, 12.5 frames a second


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def jobs_for(pipeline, n: int):
    """n greedy custom-voice requests (texts and speakers vary, so prompts differ in length)."""
    greedy = dict(do_sample=False, subtalker_dosample=False)
    reqs = [
        Request(f"{TEXT} Line {i}.", "speak", "english", speaker=SPEAKERS[i % 3], seed=i, sampling=greedy)
        for i in range(n)
    ]
    return [pipeline.prepare(r) for r in reqs]


class Forced:
    """One model's fused frame, teacher-forced: its talker / predictor passes and heads (the FusedFrame's
    own), inputs from a given history of codes instead of its samples; each frame returns its logits."""

    def __init__(self, pipeline, weights: str, jobs, max_len: int, max_text: int):
        n = len(jobs)
        self.n = n
        self.batch = FrameBatch(pipeline.talker, pipeline.eos_id, n, max_len, max_text)
        self.ff = FusedFrame(self.batch, weights)
        self.ff.prefill(
            0, [j.prompt for j in jobs], [j.sampling for j in jobs], [j.request.seed for j in jobs]
        )
        self.mask = self.batch.suppress.clone()
        self.mask[pipeline.eos_id] = True  # the history never ends: every frame is compared

    @torch.no_grad()
    def frame(self, codes: torch.Tensor | None = None):
        """One frame from codebook 0 in `batch.code0`; codes [n, 16] forces codebooks 1-15 (None: this
        model's argmax). Returns (codes [n, 16], predictor logits [n, 15, V], talker logits [n, V0])."""
        ff, b, n = self.ff, self.batch, self.n
        dev, dt = b.device, b.dtype
        slots = torch.arange(n, device=dev)
        zero = torch.zeros(n, dtype=torch.long, device=dev)
        out = torch.empty(n, 16, dtype=torch.long, device=dev)
        out[:, 0] = b.code0[:n]
        width = b.hidden.shape[1]
        first = torch.empty(n, 2, width, dtype=dt, device=dev)
        first[:, 0] = b.hidden[:n]
        first[:, 1] = ff.codec_table[b.code0[:n]]
        two = torch.arange(2, device=dev).repeat(n)
        h = ff.predictor.forward(
            ff._project(first.view(2 * n, width)), slots.repeat_interleave(2), two, two.expand(3, -1),
            zero.repeat_interleave(2), b.predictor_caches,
        )  # fmt: skip
        last = h.view(n, 2, -1)[:, 1]
        acc = first[:, 1].float()
        cp_logits = []
        for k in range(1, ff.steps + 1):
            logits = torch.empty(n, ff.heads[k - 1].shape[0], dtype=torch.float32, device=dev)
            linear(
                last, ff.heads[k - 1], norm_weight=ff.predictor.final_norm, eps=ff.predictor.eps, out=logits
            )
            cp_logits.append(logits)
            out[:, k] = logits.argmax(-1) if codes is None else codes[:, k]
            emb = ff.tables[k - 1][out[:, k]]
            acc += emb.float()
            if k < ff.steps:
                col = torch.full((n,), k + 1, dtype=torch.long, device=dev)
                last = ff.predictor.forward(
                    ff._project(emb.contiguous()), slots, col, col.expand(3, -1), zero, b.predictor_caches
                )
        acc = (acc + ff._text(n, b.frame[:n]).float()).to(dt)
        col = b.col[:n].clamp(max=b.max_len - 1)
        h = ff.talker.forward(acc, slots, col, col.expand(3, -1), zero, b.talker_caches)
        hidden = ff.talker_norm(h)
        talker_logits = torch.empty(n, ff.codec_head.shape[0], dtype=torch.float32, device=dev)
        linear(hidden, ff.codec_head, out=talker_logits)
        b.hidden[:n] = hidden
        b.col[:n] += 1
        b.frame[:n] += 1
        return out, torch.stack(cp_logits, 1), talker_logits

    def next_code0(self, talker_logits: torch.Tensor) -> torch.Tensor:
        return talker_logits.masked_fill(self.mask, float("-inf")).argmax(-1)


class Agreement:
    """Running top-1 agreement and mean KL(fp32 || model) of one model against fp32."""

    def __init__(self):
        self.n0 = self.hit0 = self.kl0 = 0.0
        self.ncp = self.hitcp = self.klcp = 0.0

    @staticmethod
    def _kl(ref, got):
        lp, lq = torch.log_softmax(ref.double(), -1), torch.log_softmax(got.double(), -1)
        return float((lp.exp() * (lp - lq)).sum(-1).sum())

    def add(self, codes, cp_ref, cp_got, next0, tk_ref, tk_got, keep):
        self.hitcp += float((cp_got.argmax(-1) == codes[:, 1:]).sum())
        self.ncp += codes[:, 1:].numel()
        self.klcp += self._kl(cp_ref, cp_got)
        got0 = tk_got.masked_fill(~keep, float("-inf")).argmax(-1)
        self.hit0 += float((got0 == next0).sum())
        self.n0 += next0.numel()
        self.kl0 += self._kl(tk_ref[:, keep], tk_got[:, keep])

    def result(self) -> dict:
        return dict(
            top1_codebook0=round(self.hit0 / self.n0, 5),
            top1_predictor=round(self.hitcp / self.ncp, 5),
            kl_codebook0=float(f"{self.kl0 / self.n0:.3e}"),
            kl_predictor=float(f"{self.klcp / self.ncp:.3e}"),
            positions_codebook0=int(self.n0),
            positions_predictor=int(self.ncp),
        )


def frame_bytes(ff: FusedFrame) -> int:
    """Weight bytes one frame reads: the talker's layers and head once; the predictor's layers and input
    projection once per pass (15 passes), one head per codebook."""

    def size(w) -> int:
        return w.nbytes if isinstance(w, QuantWeight) else w.numel() * w.element_size()

    def layers(packed) -> int:
        return sum(
            size(getattr(lay, f)) for lay in packed.layers for f in ("w_qkv", "w_o", "w_gate_up", "w_down")
        )

    proj = size(ff.proj_w) if ff.proj_w is not None else 0
    return (
        layers(ff.talker)
        + size(ff.codec_head)
        + ff.steps * (layers(ff.predictor) + proj)
        + sum(size(h) for h in ff.heads)
    )


def ms_per_frame(forced: Forced, frames: int) -> float:
    """The fused step (sampling on) of all n slots: a CUDA graph replayed `frames` times on the GPU; eager
    steps on the CPU (interpreter time: meaningless but proves the path)."""
    ff, n, dev = forced.ff, forced.n, forced.batch.device
    if dev.type != "cuda":
        t = time.perf_counter()
        for _ in range(frames):
            ff.step(n)
        return (time.perf_counter() - t) * 1e3 / frames
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(2):  # compiles and the allocator's first blocks outside the graph
            ff.step(n)
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ff.step(n)
    for _ in range(3):
        graph.replay()
    sync(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(frames):
        graph.replay()
    end.record()
    sync(dev)
    return start.elapsed_time(end) / frames


def teacher_forced(pipes, modes, n, frames, timing_frames, args):
    """fp32's greedy history fed to every model in lockstep, frame by frame."""
    jobs = jobs_for(pipes["fp32"], n)
    longest = max(j.prompt.embeds.shape[0] for j in jobs)
    max_len = longest + frames + timing_frames + 8
    max_text = max(j.prompt.trailing.shape[0] for j in jobs) + 1
    models = {"fp32": Forced(pipes["fp32"], "bf16", jobs, max_len, max_text)}
    bf16_jobs = jobs_for(pipes["bf16"], n)  # the same requests, prompts made in bf16
    for mode in ["bf16", *modes]:
        models[mode] = Forced(pipes["bf16"], mode, bf16_jobs, max_len, max_text)
    ref = models["fp32"]
    for m in models.values():  # the history's first codebook 0: fp32's
        m.batch.code0[:n] = ref.batch.code0[:n]
    stats = {mode: Agreement() for mode in models if mode != "fp32"}
    keep = ~ref.mask
    t = time.perf_counter()
    for i in range(frames):
        codes, cp_ref, tk_ref = ref.frame()
        next0 = ref.next_code0(tk_ref)
        for mode, st in stats.items():
            _, cp_got, tk_got = models[mode].frame(codes)
            st.add(codes, cp_ref, cp_got, next0, tk_ref, tk_got, keep)
        for m in models.values():
            m.batch.code0[:n] = next0
        if i % 100 == 99:
            log(f"batch {n}: {i + 1}/{frames} frames, {time.perf_counter() - t:.0f}s")
    out = {mode: st.result() for mode, st in stats.items()}
    for mode, m in models.items():
        out.setdefault(mode, {})["bytes_per_frame"] = frame_bytes(m.ff)
        if mode != "fp32":
            out[mode]["ms_per_frame"] = round(ms_per_frame(m, timing_frames), 3)
    del models
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return out


def long_stream(pipeline, mode: str, frames: int, kernels: bool | None) -> dict:
    """One free-running 8-bit stream on the engine: every code decodable and the audio's RMS over its last
    `window` frames within 2x of its first (window: 100 frames, less for a short smoke run)."""
    eng = Engine(pipeline, max_streams=1, max_frames=frames + 8, max_prompt=256, max_text_tokens=256,
                 kernels=kernels, weights=mode)  # fmt: skip
    req = Request(TEXT, "speak", "english", speaker="ryan", seed=5,
                  sampling=dict(max_new_tokens=frames + 1, min_new_tokens=frames + 1))  # fmt: skip
    try:
        t = time.perf_counter()
        codes = eng.generate_codes([req])[0]
        wall = time.perf_counter() - t
    finally:
        eng.close()
    audio = pipeline.decode(codes)
    window = min(100, max(1, codes.shape[0] // 3))
    first = float(np.sqrt(np.mean(audio[: window * FRAME_SAMPLES] ** 2)))
    last = float(np.sqrt(np.mean(audio[-window * FRAME_SAMPLES :] ** 2)))
    return dict(
        frames=int(codes.shape[0]),
        codes_valid=bool(((codes >= 0) & (codes < pipeline.talker.cfg.code_predictor.vocab_size)).all()),
        window_frames=window,
        rms_first=round(first, 5),
        rms_last=round(last, 5),
        rms_within_2x=bool(first > 0 and 0.5 <= last / first <= 2.0),
        wall_s=round(wall, 2),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--ckpt", help="a custom_voice checkpoint written in float32 (default: build a random one)"
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny checkpoint and a few frames (a smoke run)")
    ap.add_argument("--weights", nargs="*", default=["int8", "fp8"])
    ap.add_argument("--frames", type=int, default=None, help="teacher-forced frames (default 500; tiny 3)")
    ap.add_argument("--batches", type=int, nargs="*", default=None, help="default 1 64; tiny 1 2")
    ap.add_argument("--long-frames", type=int, default=None, help="default 3000; tiny 4 (0: skip)")
    ap.add_argument("--timing-frames", type=int, default=None, help="default 50; tiny 1")
    args = ap.parse_args()
    tiny = args.tiny
    frames = args.frames or (3 if tiny else 500)
    batches = args.batches or ([1, 2] if tiny else [1, 64])
    long_frames = args.long_frames if args.long_frames is not None else (4 if tiny else 3000)
    timing = args.timing_frames or (1 if tiny else 50)
    dev = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    modes = list(args.weights)
    result: dict = dict(device=str(dev), tiny=tiny, frames=frames, batches=batches, notes=[])
    kernels = None
    if dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        result["gpu"] = torch.cuda.get_device_name(dev)
        if "fp8" in modes and cap < FP8_CAPABILITY:
            modes.remove("fp8")
            result["notes"].append(f"fp8 skipped: sm_{cap[0]}{cap[1]} has no e4m3 conversions in Triton")
    else:
        kernels = True  # the fused kernels through Triton's interpreter
        # the interpreter runs every program in Python: wide one-row tiles (same math) keep it to seconds
        CONFIGS[1] = CONFIGS[2] = LinearConfig(1, 256, 128, 4, 1)
        result["notes"].append("CPU: Triton interpreter; ms/frame are interpreter times, not GPU ones")
    ckpt = args.ckpt
    if ckpt is None:
        ckpt = os.path.join(tempfile.gettempdir(), "utter_quant_ckpt")  # not under OUT: results only there
        log("building a random checkpoint at", ckpt)
        build_checkpoint(ckpt, "custom_voice", "tiny-1.7b" if tiny else "1.7b", seed=0, device=dev.type,
                         force=True)  # fmt: skip
    pipes = {
        "fp32": TTS.from_pretrained(ckpt, device=dev, dtype="float32").pipeline,
        "bf16": TTS.from_pretrained(ckpt, device=dev, dtype="bfloat16").pipeline,
    }
    result["modes"] = ["bf16", *modes]
    for n in batches:
        log(f"teacher-forced: batch {n}, {frames} frames, models fp32 bf16 {' '.join(modes)}")
        result[f"batch_{n}"] = teacher_forced(pipes, modes, n, frames, timing, args)
        log(json.dumps(result[f"batch_{n}"]))
    if long_frames:
        for mode in modes:
            log(f"free-running {mode} stream of {long_frames} frames")
            result[f"long_{mode}"] = long_stream(pipes["bf16"], mode, long_frames, kernels)
            log(json.dumps(result[f"long_{mode}"]))
    with open(os.path.join(args.out, "quant.json"), "w") as f:
        json.dump(result, f, indent=1)
    print_table(result)


def print_table(r: dict) -> None:
    head = f"{'batch':>5} {'weights':>7} {'top1 cb0':>9} {'top1 cp':>8} {'KL cb0':>9} {'KL cp':>9}"
    print(head + f" {'MB/frame':>9} {'ms/frame':>9}")
    for n in r["batches"]:
        b = r[f"batch_{n}"]
        mb = b["fp32"]["bytes_per_frame"] / 2**20
        print(f"{n:>5} {'fp32':>7} {'(ref)':>9} {'(ref)':>8} {'':>9} {'':>9} {mb:>9.1f}")
        for mode in r["modes"]:
            s = b[mode]
            print(
                f"{n:>5} {mode:>7} {s['top1_codebook0']:>9.4f} {s['top1_predictor']:>8.4f} "
                f"{s['kl_codebook0']:>9.2e} {s['kl_predictor']:>9.2e} {s['bytes_per_frame'] / 2**20:>9.1f} "
                f"{s['ms_per_frame']:>9.2f}"
            )
    for key in [k for k in r if k.startswith("long_")]:
        print(key, json.dumps(r[key]))
    for note in r["notes"]:
        print("note:", note)


if __name__ == "__main__":
    main()
