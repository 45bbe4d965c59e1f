"""CPU: what flushing denormals to zero buys (utter_tts.model.denormals), streaming a demo checkpoint.

    python bench/bench_cpu_denormals.py [--runs 3]

Builds a tiny random checkpoint (utter_tts.demo), streams one sentence with the library's flushing on
(as shipped) and off (patched out), and prints the time to each chunk and in total, median over runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import utter_tts.api as api
from utter_tts.api import TTS
from utter_tts.demo import build_checkpoint
from utter_tts.model import denormals
from utter_tts.request import Request


def stream_times(tts: TTS, seed: int) -> list[float]:
    req = Request("Hello from utter-tts.", "speak", speaker="vivian", seed=seed,
                  sampling=dict(max_new_tokens=20))  # fmt: skip
    times, t0 = [], time.perf_counter()
    for _ in tts.stream(req, chunk_frames=4, first_chunk_frames=1):
        times.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tts = TTS.from_pretrained(build_checkpoint(tmp, "custom_voice"), device="cpu")
        off = contextlib.nullcontext
        for mode in ("on", "off", "on", "off"):
            api.flush_denormals = denormals.flush_denormals if mode == "on" else (lambda device=None: off())
            api.flush_each = denormals.flush_each if mode == "on" else (lambda items, device=None: items)
            runs = [stream_times(tts, 5) for _ in range(args.runs)]  # one request, repeated
            first = statistics.median(r[0] for r in runs)
            worst = statistics.median(max(r) for r in runs)
            totals = [round(sum(r)) for r in runs]
            print(f"flush {mode:3}: first chunk {first:5.0f} ms, slowest chunk {worst:5.0f} ms (medians), "
                  f"whole streams {totals} ms")  # fmt: skip


if __name__ == "__main__":
    main()
