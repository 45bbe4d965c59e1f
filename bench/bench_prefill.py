"""The packed prefill with FlashAttention-2 (PyTorch's) or our attention kernel, in the fused frame step:
ms to admit 1, 8 and 64 prompts at once (eager, as the scheduler runs it) and how far the two results are
apart (the hidden states the first frame starts from, the first codebook-0 tokens).

  python bench/bench_prefill.py --ckpt CKPT_VOICE_DESIGN --out OUT_DIR [--batches 1 8 64]

Writes OUT/prefill.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from utter_tts.api import TTS  # noqa: E402
from utter_tts.engine.fused import FusedFrame  # noqa: E402
from utter_tts.kernels import attention  # noqa: E402
from utter_tts.model.frame import FrameBatch  # noqa: E402
from utter_tts.request import Request  # noqa: E402

TEXT = "This is a simple test of the speech system, read out loud at a normal pace for about ten seconds."


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def run(args) -> dict:
    dev = torch.device(args.device)
    pipe = TTS.from_pretrained(args.ckpt, device=dev, dtype="bfloat16").pipeline
    slots = max(args.batches)
    req = Request(TEXT, "design", "english", instruct="A calm, clear voice.", seed=1,
                  sampling=dict(do_sample=False, max_new_tokens=400))  # fmt: skip
    res: dict = dict(
        gpu=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        torch=torch.__version__,
        rows_per_prompt=None,
        runs={},
    )
    out: dict = {}
    for mode in ("flash-attention-2", "triton"):
        os.environ["UTTER_TTS_PREFILL_ATTENTION"] = "auto" if mode == "flash-attention-2" else "triton"
        attention.flash_prefill_usable.cache_clear()
        fb = FrameBatch(pipe.talker, pipe.eos_id, slots, max_len=512, max_text=256)
        st = FusedFrame(fb)
        res["runs"][mode] = {"prefill_attention": st.prefill_attention}
        st.warm_prefill(slots * 256)
        for batch in args.batches:
            jobs = [pipe.prepare(req) for _ in range(batch)]
            prompts = [j.prompt for j in jobs]
            res["rows_per_prompt"] = int(prompts[0].embeds.shape[0])
            times = []
            for _ in range(args.runs):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                token = st.prefill(0, prompts, [j.sampling for j in jobs], [j.request.seed for j in jobs])
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t) * 1e3)
            out[(mode, batch)] = (fb.hidden[:batch].float().clone(), token.clone())
            res["runs"][mode][str(batch)] = dict(ms=round(statistics.median(times), 3), all_ms=times)
            log(mode, batch, res["runs"][mode][str(batch)]["ms"], "ms")
        del fb, st
    os.environ.pop("UTTER_TTS_PREFILL_ATTENTION", None)
    res["agreement"] = {}
    for batch in args.batches:
        (h_fa, t_fa), (h_ours, t_ours) = out[("flash-attention-2", batch)], out[("triton", batch)]
        res["agreement"][str(batch)] = dict(
            hidden_rel=float((h_fa - h_ours).norm() / h_ours.norm()),
            first_tokens_equal=float((t_fa == t_ours).float().mean()),
        )
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True, help="a VoiceDesign checkpoint (its requests design a voice)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 64])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res = run(args)
    with open(os.path.join(args.out, "prefill.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(f"{'prompts':>7} {'FA2 ms':>8} {'ours ms':>8} {'hidden rel':>10} {'tokens =':>8}")
    fa, ours = res["runs"]["flash-attention-2"], res["runs"]["triton"]
    for b in args.batches:
        a = res["agreement"][str(b)]
        print(f"{b:>7} {fa[str(b)]['ms']:>8.2f} {ours[str(b)]['ms']:>8.2f} {a['hidden_rel']:>10.2e} "
              f"{a['first_tokens_equal']:>8.3f}")  # fmt: skip
    print("prefill attention in use:", fa["prefill_attention"], "/", ours["prefill_attention"])


if __name__ == "__main__":
    main()
