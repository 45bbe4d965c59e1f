"""Measure the peer qwen3-tts-triton 0.3.0 in its Hybrid mode (faster-qwen3-tts CUDA graphs + Triton kernels).

Same method and field names as the `faster` mode of .peer-bench/bench.py, so the numbers sit beside it:
one stream, non-streaming, x-vector voice clone, exactly FRAMES (=125) codec frames (min = max new tokens,
10 s of 24 kHz audio), 1 warm-up + RUNS timed runs, wall time including codec decode; then streaming
time-to-first-audio at the smallest chunk size (TTFA_RUNS runs after 1 warm-up).

The model is loaded by the package's own Hybrid runner (TritonFasterRunner.load_model: FasterQwen3TTS
from_pretrained, then its Triton RMSNorm / SwiGLU / fused add+RMSNorm patches, before the first call so
the CUDA graphs capture them). Generation goes straight to the loaded FasterQwen3TTS object, because the
runner's own voice-clone wrapper loads a second model from the hub id and cannot force the length.

  python3 bench/peer_qwen3_tts_triton.py --model /tmp/ckpt_base --out $OUT/peer_triton.json   (GPU)
  python3 bench/peer_qwen3_tts_triton.py --model /tmp/ckpt_tiny --out x.json --cpu-test --frames 8
      (tiny checkpoint on CPU: graphs run eagerly, Triton kernels under TRITON_INTERPRET=1)
  python3 bench/peer_qwen3_tts_triton.py --import-check   (imports everything the GPU run imports)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

TEXT = (
    "This is a simple test of the speech system. It should read this line out loud at a normal pace, "
    "so that we can measure how long it takes to make about ten seconds of audio on one GPU."
)
LANG = "English"
SR = 24000
FRAME_HZ = 12.5
SAMPLES_PER_FRAME = 1920
MODE = "hybrid"  # qwen3_tts_triton.models._RUNNER_MAP["hybrid"] is TritonFasterRunner
REPO = Path(__file__).resolve().parent.parent

# every module the measured run imports (checked by --import-check)
IMPORTS = [
    "numpy",
    "torch",
    "triton",
    "transformers",
    "accelerate",
    "soundfile",
    "librosa",
    "scipy.stats",
    "qwen_tts",
    "faster_qwen3_tts",
    "faster_qwen3_tts.generate",
    "faster_qwen3_tts.streaming",
    "faster_qwen3_tts.predictor_graph",
    "faster_qwen3_tts.talker_graph",
    "faster_qwen3_tts.sampling",
    "qwen3_tts_triton",
    "qwen3_tts_triton.kernels",
    "qwen3_tts_triton.models",
    "qwen3_tts_triton.models.patching",
    "qwen3_tts_triton.models.triton_faster_runner",
    "compat",
]


def log(*a: object) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def summarize(xs: list[float]) -> dict:
    xs = [float(x) for x in xs]
    return {
        "median": round(statistics.median(xs), 4),
        "min": round(min(xs), 4),
        "max": round(max(xs), 4),
        "all": [round(x, 4) for x in xs],
    }


def import_check() -> int:
    bad = []
    for name in IMPORTS:
        try:
            m = importlib.import_module(name)
            log("ok", name, getattr(m, "__version__", ""))
        except Exception as ex:  # noqa: BLE001 - report every failure, then exit non-zero
            bad.append(name)
            log("FAILED", name, f"{type(ex).__name__}: {ex}")
    from qwen3_tts_triton.models import get_runner_class

    log("runner for", MODE, "=", get_runner_class(MODE).__name__)
    if bad:
        log("import check failed:", ", ".join(bad))
        return 1
    log("import check ok")
    return 0


def patch_for_cpu_test(torch) -> None:  # noqa: ANN001
    """CPU smoke test only: the Hybrid runner's load path, minus what needs a GPU."""
    import faster_qwen3_tts
    from compat import patch_cuda_graphs_for_cpu_test

    patch_cuda_graphs_for_cpu_test()  # graph bodies run eagerly (peer-bench's shim)
    torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.cuda.max_memory_allocated = lambda *a, **k: 0

    def from_pretrained_cpu(model_name, device="cpu", dtype=None, **_kw):  # noqa: ANN001
        # same construction as FasterQwen3TTS.from_pretrained, which refuses a non-CUDA device
        from faster_qwen3_tts.predictor_graph import PredictorGraph
        from faster_qwen3_tts.talker_graph import TalkerGraph
        from qwen_tts import Qwen3TTSModel

        dtype = torch.float32
        base = Qwen3TTSModel.from_pretrained(
            model_name, device_map="cpu", dtype=dtype, attn_implementation="sdpa"
        )
        talker = base.model.talker
        pg = PredictorGraph(
            talker.code_predictor,
            talker.code_predictor.model.config,
            talker.config.hidden_size,
            device="cpu:0",
            dtype=dtype,
            do_sample=True,
            top_k=50,
            temperature=0.9,
        )
        tg = TalkerGraph(
            talker.model, base.model.config.talker_config, device="cpu:0", dtype=dtype, max_seq_len=2048
        )
        return faster_qwen3_tts.FasterQwen3TTS(base, pg, tg, device="cpu:0", dtype=dtype, max_seq_len=2048)

    faster_qwen3_tts.FasterQwen3TTS.from_pretrained = staticmethod(from_pretrained_cpu)

    # The SwiGLU wrapper refuses CPU tensors; launch the same Triton kernel (interpreted) without that check.
    import qwen3_tts_triton.models.patching as patching
    from qwen3_tts_triton.kernels import swiglu
    from qwen3_tts_triton.kernels.utils import calculate_settings

    def swiglu_cpu(gate, up):  # noqa: ANN001
        shape = gate.shape
        g = gate.contiguous().view(-1, shape[-1])
        u = up.contiguous().view(-1, shape[-1])
        out = torch.empty_like(g)
        block, warps = calculate_settings(shape[-1])
        swiglu._swiglu_forward_kernel[(g.shape[0],)](
            g, u, out, out.stride(0), n_cols=shape[-1], BLOCK_SIZE=block, num_warps=warps
        )
        return out.view(*shape)

    patching.triton_swiglu_forward = swiglu_cpu
    # The interpreter has no libdevice: the kernels' rsqrt becomes tl.rsqrt (on the GPU, libdevice's).
    import triton
    import triton.language as tl
    from qwen3_tts_triton.kernels import fused_norm_residual, rms_norm

    globals()["tl"] = tl  # a jitted function looks triton.language up in its module's globals

    @triton.jit
    def rsqrt(x):  # noqa: ANN001, ANN202
        return tl.rsqrt(x)

    rms_norm.rsqrt = fused_norm_residual.rsqrt = rsqrt


class Bench:
    def __init__(self, args: argparse.Namespace, torch) -> None:  # noqa: ANN001
        import numpy as np

        self.args = args
        self.torch = torch
        self.cpu = args.cpu_test
        self.res: dict = {
            "peer": "qwen3-tts-triton",
            "mode": MODE,
            "frames_target": args.frames,
            "text": TEXT,
            "language": LANG,
            "one_stream_rtf": None,
            "ms_per_frame": None,
            "ttfa_p50_ms": None,
        }
        rng = np.random.default_rng(0)
        self.ref_wav = (0.1 * rng.standard_normal(3 * SR)).astype(np.float32)  # 3 s random reference
        self.rec: dict = {"timing": [], "dec": []}

    def now(self) -> float:
        if not self.cpu:
            self.torch.cuda.synchronize()
        return time.perf_counter()

    def mem(self, tag: str) -> None:
        if self.cpu:
            return
        c = self.torch.cuda
        self.res.setdefault("memory_gib", {})[tag] = {
            "allocated": round(c.memory_allocated() / 2**30, 3),
            "max_allocated": round(c.max_memory_allocated() / 2**30, 3),
            "max_reserved": round(c.max_memory_reserved() / 2**30, 3),
        }
        log("mem", tag, self.res["memory_gib"][tag])

    def save(self) -> None:
        with open(self.args.out, "w") as f:
            json.dump(self.res, f, indent=1, default=str)

    def env(self) -> None:
        import transformers
        import triton

        torch = self.torch
        e = {
            "qwen3_tts_triton": dist_version("qwen3-tts-triton"),
            "faster_qwen3_tts": dist_version("faster-qwen3-tts"),
            "qwen_tts_hf": dist_version("qwen-tts-hf"),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
            "python": sys.version.split()[0],
            "gpu": None if self.cpu else torch.cuda.get_device_name(0),
            "device": "cpu (TRITON_INTERPRET=1)" if self.cpu else "cuda",
            "dtype": "float32" if self.cpu else "bfloat16",
        }
        self.res["versions"] = e
        self.res["gpu"] = e["gpu"]

    def load(self):  # noqa: ANN201
        from qwen3_tts_triton.models import get_runner_class
        from qwen3_tts_triton.models.patching import find_patchable_model

        cls = get_runner_class(MODE)
        runner = cls(device="cpu" if self.cpu else "cuda", model_id=self.args.model, dtype="bf16")
        t0 = self.now()
        runner.load_model()  # FasterQwen3TTS.from_pretrained, then apply_triton_kernels on the inner model
        self.res["load_s"] = round(self.now() - t0, 2)
        m = runner.model
        inner = find_patchable_model(m.model)
        n_norm = sum(type(x).__name__ == "TritonRMSNorm" for x in inner.modules())
        n_mlp = sum("forward" in vars(x) and hasattr(x, "gate_proj") for x in inner.modules())
        n_layer = sum(
            "forward" in vars(x) and hasattr(x, "post_attention_layernorm") for x in inner.modules()
        )
        self.res["runner"] = {
            "class": type(runner).__name__,
            "is_hybrid_runner": cls.__name__ == "TritonFasterRunner",
            "patch_range": list(runner.patch_range) if runner.patch_range else None,
            "enable_fused_norm": runner.enable_fused_norm,
            "enable_turboquant": runner.enable_turboquant,
            "patched_rmsnorm_modules": n_norm,
            "patched_mlp_forwards": n_mlp,
            "patched_decoder_layer_forwards": n_layer,
            "max_seq_len": getattr(m, "max_seq_len", None),
            "attn_implementation": getattr(m.model.model.config, "_attn_implementation", None),
        }
        self.res["loaded_dtype"] = str(next(m.model.model.talker.parameters()).dtype)
        log("loaded", self.res["load_s"], "s", self.res["runner"])
        if n_norm == 0 or n_mlp == 0:
            raise RuntimeError(
                "Hybrid runner applied no Triton patches: this would measure plain faster-qwen3-tts"
            )
        return m

    def instrument(self, m) -> None:  # noqa: ANN001
        import faster_qwen3_tts.generate as fg

        if not getattr(fg.fast_generate, "_wrapped", False):
            orig = fg.fast_generate

            def fast_generate(*a, **kw):  # noqa: ANN002, ANN003
                t0 = self.now()
                codes, timing = orig(*a, **kw)
                timing = dict(timing)
                timing["wall_s"] = self.now() - t0
                self.rec["timing"].append(timing)
                return codes, timing

            fast_generate._wrapped = True
            fg.fast_generate = fast_generate  # model.py imports it from the module at each call
        st = m.model.model.speech_tokenizer
        orig_decode = st.decode

        def decode(*a, **kw):  # noqa: ANN002, ANN003
            t0 = self.now()
            out = orig_decode(*a, **kw)
            self.rec["dec"].append(self.now() - t0)
            return out

        st.decode = decode

    def one(self, m, prompt) -> dict:  # noqa: ANN001
        fr = self.args.frames
        self.rec["timing"].clear()
        self.rec["dec"].clear()
        t0 = self.now()
        wavs, sr = m.generate_voice_clone(
            text=TEXT,
            language=LANG,
            voice_clone_prompt=prompt,
            max_new_tokens=fr,
            min_new_tokens=fr,
            non_streaming_mode=False,
        )
        tot = self.now() - t0
        tm = self.rec["timing"][0]
        n = len(wavs[0])
        return {
            "total_s": tot,
            "gen_s": tm["wall_s"],
            "prefill_s": tm["prefill_ms"] / 1000,
            "decode_loop_s": tm["decode_s"],
            "decode_s": self.rec["dec"][0],
            "frames": tm["steps"],
            "samples": n,
            "sample_rate": sr,
            "audio_s": n / sr,
        }

    def check_len(self, r: dict) -> None:
        fr = self.args.frames
        if r["frames"] != fr or r["samples"] != fr * SAMPLES_PER_FRAME:
            raise RuntimeError(
                f"forced length broken: {r['frames']} frames / {r['samples']} samples, want {fr}"
            )

    def run(self) -> None:
        m = self.load()
        self.mem("after_load")
        self.instrument(m)
        t0 = self.now()
        xv = m.model.create_voice_clone_prompt(ref_audio=(self.ref_wav, SR), x_vector_only_mode=True)
        self.res["prompt_build_s"] = {"xvector_first_call": round(self.now() - t0, 3)}
        if not self.cpu:
            self.torch.cuda.reset_peak_memory_stats()

        log("hybrid: first call (includes CUDA-graph capture with the Triton kernels)")
        t0 = self.now()
        first = self.one(m, xv)
        self.res["first_call_incl_graph_capture_s"] = round(self.now() - t0, 3)
        log("first", first)
        warm = self.one(m, xv)
        log("warm-up", warm)
        runs = []
        for i in range(self.args.runs):
            r = self.one(m, xv)
            self.check_len(r)
            log(f"run {i}", r)
            runs.append(r)
        fr = self.args.frames
        a: dict = {"warmup": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in warm.items()}}
        for k in runs[0]:
            v = [r[k] for r in runs]
            a[k] = summarize(v) if isinstance(runs[0][k], float) else v
        a["rtf_audio_s_per_wall_s"] = round(
            statistics.median(r["audio_s"] for r in runs) / a["total_s"]["median"], 3
        )
        a["ms_per_frame_gen_loop"] = round(1000 * a["gen_s"]["median"] / fr, 2)
        a["ms_per_frame_decode_loop_only"] = round(1000 * a["decode_loop_s"]["median"] / fr, 2)
        self.res["nonstream_xvector"] = a
        self.res["one_stream_rtf"] = a["rtf_audio_s_per_wall_s"]
        self.res["ms_per_frame"] = a["ms_per_frame_gen_loop"]
        self.res["ms_per_frame_note"] = (
            "fast_generate wall (prefill included) / frames, as bench.py's ms_per_frame_gen_loop"
        )
        self.mem("peak_after_nonstream_xvector")
        self.save()

        stream: dict = {}
        for cs in self.args.chunk_sizes:
            w = self.stream_once(m, xv, cs)
            log(f"stream cs={cs} warm-up", w)
            sruns = []
            for i in range(self.args.ttfa_runs):
                r = self.stream_once(m, xv, cs)
                log(f"stream cs={cs} run {i}", r)
                sruns.append(r)
            stream[f"chunk_{cs}"] = {
                "chunk_size_frames": cs,
                "chunk_audio_s": cs / FRAME_HZ,
                "ttfa_s": summarize([r["ttfa_s"] for r in sruns]),
                "total_s": summarize([r["total_s"] for r in sruns]),
                "audio_s": [round(r["audio_s"], 4) for r in sruns],
                "chunks": [r["chunks"] for r in sruns],
                "first_chunk_audio_s": sruns[0]["first_chunk_audio_s"],
                "rtf_audio_s_per_wall_s": round(
                    statistics.median(r["audio_s"] for r in sruns)
                    / statistics.median(r["total_s"] for r in sruns),
                    3,
                ),
            }
            self.res["streaming"] = stream
            self.save()
        smallest = min(self.args.chunk_sizes)
        self.res["ttfa_p50_ms"] = round(1000 * stream[f"chunk_{smallest}"]["ttfa_s"]["median"], 1)
        self.res["ttfa_note"] = (
            f"FasterQwen3TTS.generate_voice_clone_streaming (the API the Hybrid runner streams through), "
            f"chunk_size={smallest} frames, median of {self.args.ttfa_runs} runs after 1 warm-up; "
            "time from the call to the first audio chunk on the host"
        )
        self.mem("peak_after_streaming")

    def stream_once(self, m, prompt, cs: int) -> dict:  # noqa: ANN001
        fr = self.args.frames
        t0 = self.now()
        first_t = None
        n_samples = chunks = first_len = 0
        for audio, _sr, _timing in m.generate_voice_clone_streaming(
            text=TEXT,
            language=LANG,
            voice_clone_prompt=prompt,
            max_new_tokens=fr,
            min_new_tokens=fr,
            non_streaming_mode=False,
            chunk_size=cs,
        ):
            if first_t is None:
                first_t = time.perf_counter() - t0  # the chunk is a numpy array: already on the host
                first_len = len(audio)
            n_samples += len(audio)
            chunks += 1
        tot = self.now() - t0
        if first_t is None:
            raise RuntimeError(f"streaming at chunk {cs} yielded no audio")
        return {
            "ttfa_s": first_t,
            "total_s": tot,
            "audio_s": n_samples / SR,
            "chunks": chunks,
            "first_chunk_audio_s": first_len / SR,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint dir (official layout, Base)")
    ap.add_argument("--out", help="JSON result file")
    ap.add_argument("--frames", type=int, default=125)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ttfa-runs", type=int, default=5)
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[1], help="streaming chunk sizes (frames)")
    ap.add_argument(
        "--peer-bench", default=str(REPO / ".peer-bench"), help="dir holding peer-bench's compat.py"
    )
    ap.add_argument("--cpu-test", action="store_true", help="tiny checkpoint on CPU, Triton interpreted")
    ap.add_argument("--import-check", action="store_true", help="only import what the GPU run imports")
    args = ap.parse_args()

    if args.cpu_test:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    sys.path.insert(0, args.peer_bench)
    if args.import_check:
        return import_check()
    if not args.model or not args.out:
        ap.error("--model and --out are required")

    import torch

    if not args.cpu_test and not torch.cuda.is_available():
        print("peer_qwen3_tts_triton: Hybrid mode needs CUDA (or pass --cpu-test)", file=sys.stderr)
        return 2
    from compat import patch_rope_default

    patch_rope_default()  # transformers 5.17: Mimi encoder config has no rope_theta (peer-bench README)
    if args.cpu_test:
        patch_for_cpu_test(torch)
    torch.manual_seed(0)
    b = Bench(args, torch)
    try:
        b.env()
        b.save()
        b.run()
        b.res["status"] = "ok"
    except Exception as ex:  # noqa: BLE001 - record the failure in the JSON, exit non-zero
        b.res["status"] = f"FAILED: {type(ex).__name__}: {ex}"
        b.res["traceback"] = traceback.format_exc()
        traceback.print_exc()
    b.save()
    log(
        "done",
        MODE,
        b.res["status"],
        "| rtf",
        b.res["one_stream_rtf"],
        "| ms/frame",
        b.res["ms_per_frame"],
        "| ttfa_p50_ms",
        b.res["ttfa_p50_ms"],
    )
    if b.res["status"] != "ok":
        print(f"peer_qwen3_tts_triton: {b.res['status']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
