"""Engine under concurrent load vs the plain model, stream by stream (any device; on CUDA with graphs).

Builds a tiny random checkpoint (fp32), starts many streams from player threads with staggered
arrivals and varied lengths (so streams join and retire mid-flight across batch buckets), and checks
that each stream's codes equal the plain model's codes for the same request (seeded sampling: the
counter-based randomness makes a request's codes independent of its batch).
  python bench/stress_engine.py [--device cuda] [--streams 40] [--slots 16] [--no-graphs]
Exit status 1 when any stream differs or fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from utter_tts.api import TTS  # noqa: E402
from utter_tts.demo import build_checkpoint  # noqa: E402
from utter_tts.engine.engine import Engine  # noqa: E402
from utter_tts.request import Request  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--no-graphs", action="store_true")
    args = ap.parse_args()
    folder = build_checkpoint(tempfile.mkdtemp(), "base", "tiny-1.7b", 0, "float32", args.device)
    tts = TTS.from_pretrained(folder, device=args.device, dtype="float32")
    rng = np.random.default_rng(0)
    voice = tts.create_voice(((0.1 * rng.standard_normal(72000)).astype(np.float32), 24000))
    eng = Engine(
        tts,
        max_streams=args.slots,
        max_frames=256,
        max_prompt=256,
        max_text_tokens=256,
        use_graphs=False if args.no_graphs else None,
    )
    print("graphs captured:", eng.warmup((256,)), flush=True)
    n = args.streams
    frames = rng.integers(10, 60, size=n)
    reqs = [
        Request(
            f"Hello there, this is stream number {i} speaking.",
            "clone",
            "english",
            voice=voice,
            seed=i,
            sampling=dict(max_new_tokens=int(f) + 1, min_new_tokens=int(f) + 1),
        )
        for i, f in enumerate(frames)
    ]
    got: list = [None] * n

    def play(i):
        try:
            stream, _ = eng.submit(reqs[i])
            got[i] = torch.stack(list(stream)).cpu()
        except Exception as e:  # reported below, per stream
            got[i] = e

    threads = []
    for i in range(n):
        th = threading.Thread(target=play, args=(i,))
        th.start()
        threads.append(th)
        time.sleep(float(rng.exponential(0.02)))
    for th in threads:
        th.join()
    eng.close()
    bad = 0
    for i in range(n):
        want = tts.generate_codes([reqs[i]])[0].cpu()
        if isinstance(got[i], Exception):
            print(f"stream {i}: failed: {got[i]!r}")
            bad += 1
        elif want.shape != got[i].shape or not bool((want == got[i]).all()):
            m = min(len(want), len(got[i]))
            first = (want[:m] != got[i][:m]).any(1).nonzero()[:1].flatten().tolist()
            shapes = f"{tuple(got[i].shape)} vs plain {tuple(want.shape)}"
            print(f"stream {i}: {shapes}, first differing frame {first}")
            bad += 1
    print(f"{args.device} graphs={eng.runner.use_graphs}: {n - bad} of {n} streams equal the plain model")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
