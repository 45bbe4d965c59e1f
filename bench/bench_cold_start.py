"""Cold start of a fresh process, as a Modal container starts: import, weights to the GPU, Triton's compiles,
graph captures, ready, first audio of a clone request, all graphs captured.

  python bench/bench_cold_start.py --base CKPT_BASE [--design CKPT_DESIGN] --out OUT_DIR
                                   [--runs empty warm] [--streams 8] [--frames 2048] [--tag NAME]

Each run is a new Python process started by this one (so import and CUDA initialisation count) with
TRITON_CACHE_DIR at --cache (default /tmp/utter-triton-cache): `empty` deletes it first (a container
whose cache is not kept), `warm` keeps what the run before it compiled (the cache on the Modal volume).
The child loads the models as the deployment does (`compat.deploy.load_service`: Base + VoiceDesign, an
engine each, warm-up in the background), streams a clone request built from reference audio, and
reports when every graph of both engines exists. Writes OUT_DIR/cold_start_TAG.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD_T0 = "UTTER_COLD_T0"


def parent(args) -> None:
    out = Path(args.out)
    cache = Path(args.cache)
    runs = {}
    for name in args.runs:
        if name == "empty":
            shutil.rmtree(cache, ignore_errors=True)
        env = dict(os.environ, TRITON_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
        env[CHILD_T0] = repr(time.time())
        cmd = [sys.executable, __file__, "--child", "--base", args.base, "--design", args.design or "",
               "--streams", str(args.streams), "--frames", str(args.frames), "--timeout", str(args.timeout),
               "--graph-wait", str(args.graph_wait)]  # fmt: skip
        t = time.time()
        try:  # a run past its time keeps what it printed (each phase prints a line) and its threads' stacks
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            printed, err, code = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            printed, err, code = _text(e.stdout), _text(e.stderr), "timeout"
        result: dict = {}
        for line in printed.splitlines():  # the phases so far, the last line the whole result
            if line.startswith("{"):
                result.update(json.loads(line))
        result.update(exit_code=code, process_s=round(time.time() - t, 2))
        if code:
            result["stderr_tail"] = err[-3000:]
            result["stdout_tail"] = "\n".join(ln for ln in printed.splitlines() if not ln.startswith("{"))[
                -6000:
            ]
        runs[name] = result
        print(name, json.dumps(result), flush=True)
    report = dict(streams=args.streams, frames=args.frames, design=bool(args.design), runs=runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cold_start_{args.tag}.json").write_text(json.dumps(report, indent=1))
    print(f"{'run':6} {'import':>7} {'weights':>8} {'ready':>7} {'1st audio':>9} {'all graphs':>10} "
          f"{'compile s':>9} {'captures s':>10}")  # fmt: skip
    for name, r in runs.items():
        p = r.get("parts", {})
        print(f"{name:6} {p.get('import_s', '-'):>7} {r.get('weights_s', '-'):>8} {r.get('ready_s', '-'):>7} "
              f"{r.get('first_audio_s', '-'):>9} {r.get('all_graphs_s', '-'):>10} "
              f"{p.get('triton_compile_s', '-'):>9} {p.get('capture_s', '-'):>10}")  # fmt: skip


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def child(args) -> None:
    import faulthandler

    t0 = float(os.environ[CHILD_T0])
    faulthandler.dump_traceback_later(max(1.0, args.timeout - 3), file=sys.stdout)  # a hang shows where

    def since() -> float:
        return round(time.time() - t0, 3)

    parts: dict = {"python_start_s": since()}
    import threading

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from utter_tts.compat.deploy import DeploySettings, load_service
    from utter_tts.engine import decoding, runner
    from utter_tts.request import Request

    parts["import_s"] = since()
    torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu")
    parts["cuda_init_s"] = since()

    # where the time goes: Triton's compiles (or cache loads) and graph captures, summed per thread
    lock = threading.Lock()
    spent = {"compile": 0.0, "compiles": 0, "frame_capture": 0.0, "codec_capture": 0.0, "captures": 0}

    def timed(owner, name, key, count):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                with lock:
                    spent[key] += time.perf_counter() - t
                    spent[count] += 1

        setattr(owner, name, wrapper)

    try:
        from triton.runtime.jit import JITFunction

        timed(JITFunction, "_do_compile", "compile", "compiles")
    except (ImportError, AttributeError):
        pass
    timed(runner.Runner, "_capture", "frame_capture", "captures")
    timed(decoding.CodecSlots, "_capture", "codec_capture", "captures")

    loaded_at = {}
    from utter_tts.api import TTS

    original_load = TTS.from_pretrained.__func__

    def load_timed(cls, source, **kw):  # the weights' share: from_pretrained without its engine warm-up
        t = time.perf_counter()
        tts = original_load(cls, source, **kw)
        loaded_at[source] = time.perf_counter() - t
        return tts

    TTS.from_pretrained = classmethod(load_timed)
    settings = DeploySettings(
        base_model=args.base, design_model=args.design or args.base,
        engine_streams=args.streams, engine_frames=args.frames,
    )  # fmt: skip
    svc = load_service(settings, load_design=bool(args.design))
    ready = since()
    print(json.dumps({"ready_s": ready, "weights_s": round(sum(loaded_at.values()), 3)}), flush=True)
    parts["weights_s"] = round(sum(loaded_at.values()), 3)
    parts["triton_compile_s_before_ready"] = round(spent["compile"], 3)
    parts["capture_s_before_ready"] = round(spent["frame_capture"] + spent["codec_capture"], 3)

    engines = [e for e in (svc.base_engine, svc.design_engine) if e is not None]

    complete: dict = {}

    def watch() -> None:  # beside the first request: the moment the last deferred graph exists
        if all(e.wait_warm(timeout=args.graph_wait) for e in engines):
            complete["at"] = since()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rng = np.random.default_rng(0)
    ref = (0.1 * rng.standard_normal(24000 * 3)).astype(np.float32)
    text = "Hello there. This is the first sentence a cold container speaks."
    t = time.perf_counter()
    voice = svc.base.create_voice((ref, 24000))
    sampling = dict(max_new_tokens=41, min_new_tokens=41)  # 40 frames, 3.2 s
    chunks = svc.base.stream(Request(text, "clone", "english", voice=voice, seed=1, sampling=sampling))
    first = next(chunks)
    first_audio = since()
    print(json.dumps({"first_audio_s": first_audio}), flush=True)
    got = len(first) + sum(len(c) for c in chunks)
    whole = time.perf_counter() - t

    watcher.join()
    all_graphs = complete.get("at")
    parts.update(
        triton_compile_s=round(spent["compile"], 3),
        triton_compiles=spent["compiles"],
        frame_capture_s=round(spent["frame_capture"], 3),
        codec_capture_s=round(spent["codec_capture"], 3),
        capture_s=round(spent["frame_capture"] + spent["codec_capture"], 3),
        captures=spent["captures"],
    )
    print(json.dumps(dict(
        ready_s=ready, first_audio_s=first_audio, first_request_s=round(whole, 3),
        first_request_audio_s=round(got / 24000, 2), all_graphs_s=all_graphs,
        graphs=sum(len(e.runner.graphs) + len(e.decoding.slots.graphs) for e in engines),
        parts=parts, torch=torch.__version__,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        triton=__import__("triton").__version__,
    )), flush=True)  # fmt: skip
    os._exit(0)  # the engines' threads need not wind down for a measurement


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--design", default="")
    ap.add_argument("--out", default="/tmp/out")
    ap.add_argument("--runs", nargs="*", default=["empty", "warm"], choices=["empty", "warm"])
    ap.add_argument("--streams", type=int, default=8, help="per engine (the Modal deployment's 8)")
    ap.add_argument("--frames", type=int, default=2048)
    ap.add_argument("--tag", default="deploy")
    ap.add_argument("--cache", default="/tmp/utter-triton-cache", help="TRITON_CACHE_DIR of the runs")
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--graph-wait", type=float, default=150)
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
