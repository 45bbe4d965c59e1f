"""FlashAttention-2 against the engine's attention kernel, on the talker's shapes: decode and packed prefill.

  python bench/bench_attention.py --out OUT_DIR [--batches 1 8 64]

utter's deployment plan asks for FlashAttention 2. The flash-attn package has no wheel for this stack
(PyPI ships only its source, a long CUDA build), so FA2 is timed as PyTorch ships it: the same
FlashAttention-2 kernels, vendored in aten (`_flash_attention_forward`: the varlen entry that
`flash_attn_varlen_func` wraps; with `seqused_k` over a static cache, what `flash_attn_with_kvcache` does).
Each side gets its own cache layout ([B, L, kv, D] for FA2, the engine's [S, kv, L, D] for ours) and the
same tokens; outputs are compared before timing, so both compute one function. Times: CUDA-graph replays
of 20 calls (launch gaps out, as the engine's frame graph runs them), median of 30 replays.
Writes OUT/attention.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from utter_tts.kernels import decode_attention
from utter_tts.kernels.attention import default_splits

HEADS, KV, D = 16, 8, 128  # the 1.7B talker (the 0.6B has the same attention shapes)
CACHE = 2560  # columns of a stream's talker cache in the engine's default configuration
CONTEXT = 400  # a stream mid-utterance: prompt plus ~20 s of frames already in its cache
PROMPT = 120  # rows of one stream's packed prefill (a voice-clone prompt with a sentence)


def graph_ms(fn, calls: int = 20, replays: int = 30) -> float:
    """Median ms of one call, from CUDA-graph replays of `calls` back-to-back calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def fa2(q, k, v, cu_q, cu_k, max_q, max_k, causal, seqused_k=None):
    return torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, seqused_k=seqused_k
    )[0]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().flatten(), b.float().flatten()
    return float((a - b).norm() / b.norm())


def decode_case(B: int, dev) -> dict:
    """One query row per stream over CONTEXT cached columns (of a CACHE-column static cache)."""
    g = torch.Generator(device=dev).manual_seed(B)
    kv_ours = torch.randn(2, B, KV, CACHE, D, device=dev, dtype=torch.bfloat16, generator=g)
    q = torch.randn(B, HEADS, D, device=dev, dtype=torch.bfloat16, generator=g)
    slot = torch.arange(B, device=dev)
    col = torch.full((B,), CONTEXT - 1, device=dev)
    start = torch.zeros(B, dtype=torch.long, device=dev)
    ck, cv = kv_ours[0], kv_ours[1]
    splits = default_splits(B, KV, CACHE, dev)
    ws = (
        torch.empty(B, HEADS, splits, D, dtype=torch.float32, device=dev),
        torch.empty(B, HEADS, splits, dtype=torch.float32, device=dev),
    )
    out = torch.empty(B, HEADS * D, dtype=torch.bfloat16, device=dev)

    def ours():
        decode_attention(q, ck, cv, slot, col, start, out=out, num_splits=splits, workspace=ws)

    # FA2's layout: [B * CACHE, kv, D] with stream b at rows b * CACHE ..; seqused_k: its filled length
    fk = ck.transpose(1, 2).contiguous().view(B * CACHE, KV, D)
    fv = cv.transpose(1, 2).contiguous().view(B * CACHE, KV, D)
    cu_q = torch.arange(B + 1, device=dev, dtype=torch.int32)
    cu_k = cu_q * CACHE
    used = torch.full((B,), CONTEXT, device=dev, dtype=torch.int32)

    def flash():
        return fa2(q, fk, fv, cu_q, cu_k, 1, CACHE, False, seqused_k=used)  # one row: sees all it has

    ours()
    err = rel(flash().reshape(B, -1), out)
    return dict(case="decode", batch=B, context=CONTEXT, ours_ms=graph_ms(ours), fa2_ms=graph_ms(flash),
                fa2_vs_ours_rel=err, ours_splits=splits)  # fmt: skip


def prefill_case(B: int, dev) -> dict:
    """B prompts of PROMPT rows packed into one pass, causal within each (keys already written)."""
    g = torch.Generator(device=dev).manual_seed(100 + B)
    M = B * PROMPT
    kv = torch.randn(2, B, KV, CACHE, D, device=dev, dtype=torch.bfloat16, generator=g)
    q = torch.randn(M, HEADS, D, device=dev, dtype=torch.bfloat16, generator=g)
    slot = torch.arange(B, device=dev).repeat_interleave(PROMPT)
    col = torch.arange(PROMPT, device=dev).repeat(B)
    start = torch.zeros(M, dtype=torch.long, device=dev)
    out = torch.empty(M, HEADS * D, dtype=torch.bfloat16, device=dev)
    splits = default_splits(M, KV, CACHE, dev)

    def ours():  # the prefill runs eagerly, unsplit (packed_decoder's eager pass)
        decode_attention(q, kv[0], kv[1], slot, col, start, out=out, num_splits=1)

    # flash_attn_varlen_func's inputs: the prompts' keys packed as its own rows
    fk = kv[0, :, :, :PROMPT].transpose(1, 2).reshape(M, KV, D).contiguous()
    fv = kv[1, :, :, :PROMPT].transpose(1, 2).reshape(M, KV, D).contiguous()
    cu = torch.arange(B + 1, device=dev, dtype=torch.int32) * PROMPT

    def flash():
        return fa2(q, fk, fv, cu, cu, PROMPT, PROMPT, True)

    ours()
    err = rel(flash().reshape(M, -1), out)
    return dict(case="prefill", batch=B, rows=M, ours_ms=graph_ms(ours), fa2_ms=graph_ms(flash),
                fa2_vs_ours_rel=err, ours_splits_if_graph=splits)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 64])
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for B in args.batches:
        for case in (decode_case, prefill_case):
            try:
                r = case(B, dev)
            except Exception as e:  # noqa: BLE001 - a missing FA2 entry point is a result, not a crash
                r = dict(case=case.__name__, batch=B, error=f"{type(e).__name__}: {e}"[:300])
            r = {k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}
            r["fa2_over_ours"] = round(r["fa2_ms"] / r["ours_ms"], 3) if "fa2_ms" in r else None
            rows.append(r)
            print(json.dumps(r), flush=True)
    result = dict(
        gpu=torch.cuda.get_device_name(),
        torch=torch.__version__,
        fa2="FlashAttention-2 as vendored in PyTorch (aten._flash_attention_forward)",
        heads=HEADS, kv_heads=KV, head_dim=D, cache_columns=CACHE, decode_context=CONTEXT,
        prefill_rows_per_stream=PROMPT, rows=rows,
    )  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "attention.json").write_text(json.dumps(result, indent=1))
    print(f"{'case':8} {'batch':>5} {'ours ms':>9} {'FA2 ms':>9} {'FA2/ours':>9} {'rel err':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:8} {r['batch']:>5} error: {r['error']}")
        else:
            print(f"{r['case']:8} {r['batch']:>5} {r['ours_ms']:>9.4f} {r['fa2_ms']:>9.4f} "
                  f"{r['fa2_over_ours']:>9.3f} {r['fa2_vs_ours_rel']:>9.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
