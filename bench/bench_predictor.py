"""The frame step with the code predictor's passes as layers (PackedDecoder) or in one launch each
(kernels.decoder_step), on one warm GPU: ms a frame (the step as a CUDA graph), kernels a frame, codes.

  python bench/bench_predictor.py --ckpt CKPT_VOICE_DESIGN --out OUT_DIR [--batches 1 2 4 8] [--fp32]

Arms: "layers" (today's default), "one-launch" (one program per SM, BLOCK_N 16, BLOCK_K 256, the next
phase's weights prefetched toward L2 before each barrier) and variants of it: wider tiles, shorter K
steps, half the grid, no prefetch, the o- and down-projections' K split in two, the talker's passes in
one launch too (UTTER_TTS_TALKER_PASS), and "phased" (one launch per phase, no barrier: the barrier's
price against launch gaps). Per arm and batch: the frame step
captured as a CUDA graph and replayed (median of 5 x 20 replays), the kernels one eager step launches
(torch.profiler), and the codes of 40 greedy frames against the layers arm (bf16: fraction equal; --fp32
also loads the checkpoint in fp32, where they must be equal). Writes OUT/predictor.json and a table.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from utter_tts.api import TTS  # noqa: E402
from utter_tts.engine.fused import FusedFrame  # noqa: E402
from utter_tts.kernels import decoder_step as ds  # noqa: E402
from utter_tts.kernels._jit import sm_count  # noqa: E402
from utter_tts.model.frame import FrameBatch  # noqa: E402
from utter_tts.request import Request  # noqa: E402

TEXT = "This is a simple test of the speech system, read out loud at a normal pace for about ten seconds."
ARMS = {  # name: (predictor pass, decoder_step overrides)
    "layers": ("layers", {}),
    "one-launch": ("one-launch", {}),
    "one-launch_bn32": ("one-launch", {"BLOCK_N": 32}),
    "one-launch_bk128": ("one-launch", {"BLOCK_K": 128}),
    "one-launch_half_grid": ("one-launch", {"programs": "half"}),
    "one-launch_phased": ("one-launch", {"phased": True}),
    "one-launch_no_prefetch": ("one-launch", {"prefetch": False}),
    "one-launch_split2": ("one-launch", {"split_narrow": 2}),
    "one-launch_split2_bn32": ("one-launch", {"split_narrow": 2, "BLOCK_N": 32}),
    "one-launch_talker_too": ("one-launch", {"talker": True}),
    "one-launch_talker_too_split2": ("one-launch", {"talker": True, "split_narrow": 2}),
}


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def _stepper(
    pipe, mode: str, slots: int, batch: int, talker: str = "layers"
) -> tuple[FrameBatch, FusedFrame]:
    fb = FrameBatch(pipe.talker, pipe.eos_id, slots, max_len=2560, max_text=256)
    st = FusedFrame(fb, predictor_pass=mode, talker_pass=talker)
    req = Request(TEXT, "design", "english", instruct="A calm, clear voice.", seed=1,
                  sampling=dict(do_sample=False, subtalker_dosample=False, max_new_tokens=400))  # fmt: skip
    jobs = [pipe.prepare(req) for _ in range(batch)]
    st.prefill(0, [j.prompt for j in jobs], [j.sampling for j in jobs], [j.request.seed for j in jobs])
    return fb, st


def _mutable(fb: FrameBatch) -> list[torch.Tensor]:
    return [fb.hidden, fb.code0, fb.col, fb.frame, fb.seen, fb.out]


def _overrides(over: dict):
    """Patch decoder_step's tiles / grid / phasing for one arm; returns an undo."""
    saved = {k: getattr(ds, k) for k in ("BLOCK_N", "BLOCK_K") if k in over}
    for k in saved:
        setattr(ds, k, over[k])
    original = ds.decoder_step
    kw = {}
    if over.get("programs") == "half":
        kw["programs"] = max(1, sm_count(torch.device("cuda")) // 2) if torch.cuda.is_available() else 2
    if over.get("phased"):
        kw["phased"] = True
    for name in ("prefetch", "split_narrow"):
        if name in over:
            kw[name] = over[name]
    if kw:
        ds.decoder_step = functools.partial(original, **kw)

    def undo():
        for k, v in saved.items():
            setattr(ds, k, v)
        ds.decoder_step = original

    return undo


def time_graph(fb, st, batch: int) -> float:
    """Median ms of one frame step replayed from a CUDA graph (state restored after); on the CPU (a smoke
    run under Triton's interpreter) one eager step."""
    saved = [t.clone() for t in _mutable(fb)]
    if fb.device.type != "cuda":
        t = time.perf_counter()
        st.step(batch)
        for dst, src in zip(_mutable(fb), saved):
            dst.copy_(src)
        return (time.perf_counter() - t) * 1e3
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            st.step(batch)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        st.step(batch)
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / 20 * 1e3)
    for dst, src in zip(_mutable(fb), saved):
        dst.copy_(src)
    del graph
    return statistics.median(times)


def count_kernels(st, batch: int) -> int:
    from torch.profiler import ProfilerActivity, profile

    if st.batch.device.type != "cuda":
        return -1

    st.step(batch)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        st.step(batch)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA" and "Memcpy" not in e.name)


def _timed_out(st) -> int:
    """Barriers that gave up (each one-launch decoder's flag): results of such a run are wrong."""
    return sum(int(ds.barrier_for(d)[2].item()) for d in (st.predictor, st.talker) if d.stacks is not None)


def codes_of(fb, st, batch: int, frames: int) -> torch.Tensor:
    out = []
    for _ in range(frames):
        st.step(batch)
        out.append(fb.out[:batch, :-1].clone())
    return torch.stack(out).cpu()


def run(args) -> dict:
    cuda = args.device == "cuda"
    gpu = torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter: a smoke run)"
    res: dict = dict(gpu=gpu, torch=torch.__version__, arms={}, parity={})
    import triton

    res["triton"] = triton.__version__
    pipe = TTS.from_pretrained(args.ckpt, device=args.device, dtype="bfloat16").pipeline
    slots = max(args.batches)
    reference_codes: dict[int, torch.Tensor] = {}
    for name in args.arms:
        mode, over = ARMS[name]
        undo = _overrides(over)
        try:
            arm = {}
            for batch in args.batches:
                talker = "one-launch" if over.get("talker") else "layers"
                fb, st = _stepper(pipe, mode, slots, batch, talker)
                ms = time_graph(fb, st, batch)
                kernels = count_kernels(st, batch)
                flag = _timed_out(st)
                del fb, st  # one FusedFrame a GPU may run one-launch passes (engine.fused)
                gc.collect()
                fb, st = _stepper(pipe, mode, slots, batch, talker)
                codes = codes_of(fb, st, batch, args.frames)
                if name == "layers":
                    reference_codes[batch] = codes
                agree = float((codes == reference_codes[batch]).float().mean())
                flag += _timed_out(st)
                assert (st.predictor_pass, st.talker_pass) == (mode, talker), "the arm ran as asked"
                arm[str(batch)] = dict(ms_per_frame=round(ms, 4), kernels_per_frame=kernels,
                                       codes_equal_to_layers=agree, barrier_timed_out=flag)  # fmt: skip
                log(name, batch, arm[str(batch)])
                del fb, st
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            res["arms"][name] = arm
        except Exception as e:  # noqa: BLE001 - an arm that fails is a result
            res["arms"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            log(name, "failed", res["arms"][name])
        finally:
            undo()
        with open(os.path.join(args.out, "predictor.json"), "w") as f:
            json.dump(res, f, indent=1)
    if args.fp32:  # token for token where the arithmetic is fp32
        del pipe
        if cuda:
            torch.cuda.empty_cache()
        pipe = TTS.from_pretrained(args.ckpt, device=args.device, dtype="float32").pipeline
        for batch in args.batches:
            got = {}
            for mode in ("layers", "one-launch"):  # one-launch: the talker's passes too
                fb, st = _stepper(pipe, mode, slots, batch, talker=mode)
                got[mode] = codes_of(fb, st, batch, args.frames)
                del fb, st
                gc.collect()
            res["parity"][f"fp32_batch_{batch}"] = bool(torch.equal(got["layers"], got["one-launch"]))
            log("fp32 codes equal, batch", batch, res["parity"][f"fp32_batch_{batch}"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--ckpt", required=True, help="a VoiceDesign checkpoint (the bench's requests design a voice)"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run (tiny checkpoint, a few frames)")
    ap.add_argument("--arms", nargs="*", default=list(ARMS))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res = run(args)
    with open(os.path.join(args.out, "predictor.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(f"{'arm':22} {'batch':>5} {'ms/frame':>9} {'kernels':>8} {'codes=':>7}")
    for name, arm in res["arms"].items():
        for batch, r in arm.items():
            if isinstance(r, dict):
                print(f"{name:22} {batch:>5} {r['ms_per_frame']:>9.3f} {r['kernels_per_frame']:>8} "
                      f"{r['codes_equal_to_layers']:>7.3f}")  # fmt: skip
            else:
                print(f"{name:22} {r}")


if __name__ == "__main__":
    main()
