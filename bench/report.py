"""Turn the GPU run's JSON files (bench/results/*.json) into the markdown table the README shows."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def fmt(x, unit="", nd=2):
    return "n/a" if x is None else f"{x:.{nd}f}{unit}"


def main(folder: str = "bench/results", prefix: str = "h100") -> str:
    d = Path(folder)
    ours, faster, official = (
        load(d / f"{prefix}_{n}.json") for n in ("ours", "peer_faster", "peer_official")
    )
    env = ours.get("env", {})
    single = ours.get("single", {})
    ttfa = ours.get("ttfa_single_stream", {}).get("first1_chunk4", {})
    f_x = faster.get("nonstream_xvector", {})
    f_total = f_x.get("total_s", {}).get("median")
    f_loop = f_x.get("gen_s", {}).get("median")
    f_ttfa1 = faster.get("streaming", {}).get("chunk_1", {}).get("ttfa_s", {}).get("median")
    f_ttfa4 = faster.get("streaming", {}).get("chunk_4", {}).get("ttfa_s", {}).get("median")
    o_total = official.get("nonstream_xvector", {}).get("total_s", {}).get("median")
    floor = ours.get("floor", {})
    rows = [
        (
            "10 s utterance, wall (codec decode included)",
            fmt(single.get("wall_s"), " s"),
            fmt(f_total, " s"),
            fmt(o_total, " s"),
        ),
        (
            "real-time factor (audio s / wall s)",
            fmt(single.get("rtf"), "x"),
            fmt(10 / f_total if f_total else None, "x"),
            fmt(10 / o_total if o_total else None, "x"),
        ),
        (
            "generation per frame",
            fmt(single.get("ms_per_frame"), " ms", 1),
            fmt(f_loop / 125 * 1e3 if f_loop else None, " ms", 1),
            fmt(o_total / 125 * 1e3 if o_total else None, " ms", 0),
        ),
        (
            "time to first audio, first chunk 1 frame (p50)",
            fmt(ttfa.get("p50_ms"), " ms", 0),
            fmt(f_ttfa1 * 1e3 if f_ttfa1 else None, " ms", 0),
            "no streaming",
        ),
        (
            "  of which: first frame / first codec push",
            f"{fmt(ttfa.get('first_frame_p50_ms'), ' ms', 0)} / "
            f"{fmt(ttfa.get('first_decode_p50_ms'), ' ms', 0)}",
            f"(chunk 4: {fmt(f_ttfa4 * 1e3 if f_ttfa4 else None, ' ms', 0)})",
            "",
        ),
        ("codec decode share of the 10 s request", fmt(single.get("decode_share"), "", 3), "", ""),
    ]
    out = [
        f"Card: {env.get('gpu', '?')}, torch {env.get('torch', '?')} (CUDA {env.get('cuda', '?')}), Python "
        f"{env.get('python', '?')}; random weights, real 1.7B shapes, bf16, forced 125 frames (10 s).",
        "Peers: faster-qwen3-tts 0.5.4; the official code via qwen-tts-hf 0.1.1.post1 (transformers 5.17.0).",
        "",
        "| metric | utter-tts | faster-qwen3-tts | official (qwen-tts-hf) |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows],
        "",
        f"Per-frame floor: {floor.get('bytes_per_frame', 0) / 1e9:.2f} GB of weights read per frame at the "
        f"measured {env.get('copy_bandwidth_gbs', '?')} GB/s = {fmt(floor.get('floor_ms'), ' ms', 2)} "
        f"({fmt(floor.get('floor_rtf'), 'x', 0)} real time).",
        f"GPU parity (engine vs plain model, 60 frames greedy): {json.dumps(ours.get('parity', {}))}.",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
