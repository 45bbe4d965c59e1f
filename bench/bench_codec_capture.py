"""Where a codec graph's capture time goes: the warm-up pass (cuDNN's algorithm choice for the new shapes),
the capture itself, and what the chosen algorithms cost at replay, per (batch bucket, frames) graph.

  python bench/bench_codec_capture.py --base CKPT_BASE --out OUT_DIR [--slots 8] [--modes benchmark heuristic]

Each mode runs in a fresh process (cuDNN's plan cache lives as long as the process and is shared by both
modes' lookups): `benchmark` times every algorithm per shape (what the engine does), `heuristic` takes
cuDNN's first pick. A second CodecSlots then captures the same graphs again (a second engine of the same
codec in one process: the deployment's Base + VoiceDesign). Writes OUT/codec_capture.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))


def child(base: str, slots_n: int, mode: str) -> dict:
    import torch

    from utter_tts.codec.speech_tokenizer import SpeechTokenizer
    from utter_tts.engine import decoding

    if mode == "heuristic":  # the engine's capture settings with cuDNN's first pick instead of its search
        engine_settings = decoding._capture_settings

        @contextlib.contextmanager
        def settings():
            with engine_settings():  # restores both flags after
                torch.backends.cudnn.benchmark = False
                yield

        decoding._capture_settings = settings
    t0 = time.perf_counter()
    folder = os.path.join(base, "speech_tokenizer")
    codec = SpeechTokenizer.from_dir(folder, device="cuda", dtype=torch.float32)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    slots = decoding.CodecSlots(codec, slots_n, use_graphs=True)
    passes: dict[str, dict] = {}
    orig_pass = slots._pass

    def timed_pass(index, codes):  # the first call per capture is the warm-up (timed), the second captures
        if timed_pass.times:
            return orig_pass(index, codes)
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = orig_pass(index, codes)
        torch.cuda.synchronize()
        timed_pass.times.append(time.perf_counter() - t)
        return out

    timed_pass.times = []
    slots._pass = timed_pass
    for size in slots.buckets:
        for n in decoding.GRAPH_FRAMES:
            timed_pass.times.clear()
            t = time.perf_counter()
            slots._capture(size, n)
            torch.cuda.synchronize()
            total = time.perf_counter() - t
            warm = timed_pass.times[0]
            passes[f"{size}x{n}"] = dict(total_s=round(total, 3), warmup_pass_s=round(warm, 3),
                                         capture_s=round(total - warm, 3))  # fmt: skip
    slots._pass = orig_pass
    replay = {}
    for size in slots.buckets:
        for n in decoding.GRAPH_FRAMES:
            codes = torch.randint(0, 2048, (size, n, 16), device="cuda")
            rows = list(range(size))
            for _ in range(3):
                slots.run(rows, codes)
            times = []
            for _ in range(20):
                torch.cuda.synchronize()
                t = time.perf_counter()
                slots.run(rows, codes)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            replay[f"{size}x{n}"] = round(statistics.median(times) * 1e3, 3)
    second = decoding.CodecSlots(codec, slots_n, use_graphs=True)
    t = time.perf_counter()
    second.warmup()
    torch.cuda.synchronize()
    second_s = time.perf_counter() - t
    return dict(
        mode=mode,
        load_s=round(load_s, 2),
        graphs=len(passes),
        capture_total_s=round(sum(p["total_s"] for p in passes.values()), 2),
        warmup_pass_total_s=round(sum(p["warmup_pass_s"] for p in passes.values()), 2),
        second_codec_capture_s=round(second_s, 2),
        passes=passes,
        replay_ms=replay,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--modes", nargs="*", default=["benchmark", "heuristic"])
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.base, args.slots, args.child)), flush=True)
        return
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--base", args.base, "--out", args.out, "--slots", str(args.slots),
               "--child", mode]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        failed = {"exit": proc.returncode, "err": proc.stderr[-3000:]}
        results[mode] = json.loads(lines[-1]) if lines else failed
        r = results[mode]
        print(mode, {k: v for k, v in r.items() if k not in ("passes", "replay_ms")}, flush=True)
        if "passes" in r:
            for key, p in r["passes"].items():
                print(f"  {key:>5} warm {p['warmup_pass_s']:.3f}s capture {p['capture_s']:.3f}s "
                      f"replay {r['replay_ms'][key]:.2f} ms", flush=True)  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "codec_capture.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
