#!/usr/bin/env bash
# One command on the GPU machine: install the carried wheels, build full-size random 1.7B checkpoints
# (Base + VoiceDesign, official layout, forced lengths), then measure ours and the peers on this card.
#   bash bench/run_gpu.sh STAGE      STAGE: probe | predictor | quant | dualtrack | cold | samecall | kernels | tiles | engine | load | timeline | parts | conc | ab | verify | stress | ours | peers | capped | official
#                                           | all | final | checks
# Needs (git-ignored, carried): .whl/ (wheels of qwen-tts-hf, faster-qwen3-tts, qwen3-tts-triton and their
# audio deps), .peer-bench/ (the peers' harness from shared/peer-bench), and for the stages that run the
# server or the compat layer (probe, dualtrack, cold, samecall) .whl-serve/ (av, fastapi, uvicorn, pydantic, websockets, ...).
# Results go to $OUT.
set -u
STAGE=${1:-all}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl*/*.whl \
  || { echo "wheel install failed"; exit 1; }
# one Triton cache for the whole call: the cold-start bench empties it first, later stages find it warm
export TRITON_CACHE_DIR=/tmp/utter-triton-cache
export UTTER_T0=$(date +%s)
export PYTHONPATH=/tmp/site:$PWD/src
quiet() { grep -v -i 'sox\|flash-attn\|^\*\*\*\|^ *$\|If you do\|double-check\|path variables\|Loading weights'; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
  # the stack the deployment runs (src/utter_tts/stack.json): numbers measured on another are labelled so
  python3 -m utter_tts.stack
} | tee "$OUT/env.txt"

T0=$(date +%s)
case "$STAGE" in stress)  # the engine under concurrent load == the plain model, stream by stream
  timeout 150 python3 bench/stress_engine.py 2>&1 | quiet | tail -25 | tee "$OUT/stress.log"
  echo "== stress exit ${PIPESTATUS[0]} after $(( $(date +%s) - T0 ))s" ;;
esac
[ "$STAGE" = stress ] && exit 0
kinds="base voice_design"; case "$STAGE" in cold|samecall|coldonly|probe) kinds="base voice_design" ;; predictor) kinds=voice_design ;; dualtrack) kinds=custom_voice ;; kernels|tune|tiles|engine|load|timeline|parts|conc|verify|ab) kinds=base ;; esac
for kind in $kinds; do
  [ -f /tmp/ckpt_$kind/config.json ] && continue  # kept from an earlier call on this warm machine
  python3 -m utter_tts.demo /tmp/ckpt_$kind --model-type $kind --shape 1.7b --dtype bfloat16 --device cuda \
    > "$OUT/build_$kind.log" 2>&1 || { echo "building $kind failed:"; tail -30 "$OUT/build_$kind.log"; exit 1; }
done
echo "checkpoints built in $(( $(date +%s) - T0 ))s"

ours() {  # ours TAG TIMEOUT args...
  local tag=$1 to=$2; shift 2
  timeout "$to" python3 bench/bench_engine.py --base /tmp/ckpt_base --design /tmp/ckpt_voice_design \
    --out "$OUT" --tag "$tag" "$@" 2>&1 | quiet
}
cold_start() {  # cold_start TIMEOUT args...: the deployed configuration from fresh processes
  local to=$1; shift
  timeout "$to" python3 bench/bench_cold_start.py --base /tmp/ckpt_base --design /tmp/ckpt_voice_design \
    --out "$OUT" --runs empty warm --tag deploy "$@" 2>&1 | quiet
}
peer() {  # peer MODE TIMEOUT args...
  local mode=$1 to=$2; shift 2
  timeout "$to" python3 .peer-bench/bench.py "$mode" --model /tmp/ckpt_base --out "$OUT/peer_${mode}.json" "$@" 2>&1 | quiet
  echo "== peer $mode exit ${PIPESTATUS[0]}"
}

case "$STAGE" in
  cold)   # the deployed configuration from a fresh process, Triton cache empty then warm; FA2 vs ours;
          # then the engine's steady state and the new peer while time is left
          cold_start 280 | tail -8
          timeout 60 python3 bench/bench_attention.py --out "$OUT" 2>&1 | tail -8
          left=$(( 575 - ($(date +%s) - UTTER_T0) ))
          [ "$left" -gt 90 ] && ours ours_cold $(( left > 230 ? 230 : left )) --sections env single ttfa concurrency floor
          left=$(( 585 - ($(date +%s) - UTTER_T0) ))
          [ "$left" -gt 60 ] && timeout "$left" python3 bench/peer_qwen3_tts_triton.py --model /tmp/ckpt_base \
            --out "$OUT/peer_triton.json" 2>&1 | quiet | tail -15 ;;
  samecall) # issue 22's same-call run: the cold start of the deployed configuration (empty, then warm Triton
          # cache), ours as the A10G runs it (no PDL, 21 GiB) beside the default, and the peers on the same
          # warm card (one command, one machine)
          cold_start 210 --timeout 100 --graph-wait 50 | tail -4
          ours ours 140 --sections env single ttfa concurrency floor
          UTTER_TTS_PDL=0 ours no_pdl 110 --memory-cap-gib 21 --sections env single concurrency
          peer faster 55 --runs 3 --ttfa-runs 3 --chunk-sizes 1
          left=$(( 590 - ($(date +%s) - UTTER_T0) ))
          [ "$left" -gt 40 ] && timeout "$left" python3 bench/peer_qwen3_tts_triton.py --model /tmp/ckpt_base \
            --out "$OUT/peer_triton.json" 2>&1 | quiet | tail -3 ;;
  coldonly) cold_start 140 --timeout 65 --graph-wait 30 | tail -4 ;;
  probe)  # issue 22: the cold start (empty, warm Triton cache), where a codec capture's time goes, and the
          # packed prefill with FlashAttention-2 against ours in the fused step (ms, agreement)
          cold_start 140 --timeout 65 --graph-wait 30 | tail -4
          timeout 150 python3 bench/bench_codec_capture.py --base /tmp/ckpt_base --out "$OUT" 2>&1 | quiet | tail -50
          left=$(( 590 - ($(date +%s) - UTTER_T0) ))
          [ "$left" -gt 40 ] && timeout "$left" python3 bench/bench_prefill.py --ckpt /tmp/ckpt_voice_design \
            --out "$OUT" 2>&1 | quiet | tail -8 ;;
  predictor) # issue 26: the code predictor's passes as layers or in one launch, every arm of
          # bench_predictor.ARMS (ms and kernels a frame, codes; fp32 codes equal)
          timeout 560 python3 bench/bench_predictor.py --ckpt /tmp/ckpt_voice_design --out "$OUT" --fp32 \
            --batches 1 2 8 2>&1 | quiet | tail -40 ;;
  quant)  # issue 26: 8-bit weights against fp32 and bf16 (teacher-forced agreement, KL, a long stream, ms)
          timeout 560 python3 bench/quant_report.py --out "$OUT" --batches 1 64 --long-frames 3000 2>&1 \
            | quiet | tail -30 ;;
  dualtrack) # issue 26: first audio after the first text token through the WebSocket (live vs sentence
          # mode), one session and 32 at once, the server on a 1.7B CustomVoice checkpoint
          timeout 420 python3 bench/bench_dual_track.py --model /tmp/ckpt_custom_voice --device cuda \
            --sessions 32 --frames 120 --out "$OUT/dual_track.json" 2>&1 | quiet | tail -20 ;;
  ours)   ours ours 480 ;;
  peers)  ours ours_rerun 200 --sections env single ttfa floor
          peer faster 150 --runs 3 --ttfa-runs 5 --chunk-sizes 4 1
          peer qwen_tts 150 --runs 1 --icl-runs 1 ;;
  capped) ours profile 120 --max-streams 64 --sections env profile
          ours memory 100 --sections env memory
          ours capped21 240 --memory-cap-gib 21 --max-streams 16 --sections env memory deploy ;;
  all)    ours ours 300 --sections env parity single ttfa concurrency floor
          peer faster 130 --runs 3 --ttfa-runs 3 --chunk-sizes 4 1 ;;
  final)  ours ours 200 --sections env single ttfa concurrency profile floor  # the profiler after the streams
          peer faster 100 --runs 2 --ttfa-runs 3 --chunk-sizes 4 1
          peer faster_batch 80 --batch-sizes 8 32 --batch-runs 1
          peer qwen_tts 90 --runs 1 --icl-runs 1
          ours capped21 90 --memory-cap-gib 21 --max-streams 16 --sections env memory ;;
  checks) ours parity 200 --sections env parity --parity-batches 1 8 64 --parity-dtypes float32 bfloat16 \
            --parity-bf16-batches 1 --long-frames 3000
          ours capped21 100 --memory-cap-gib 21 --max-streams 16 --sections env memory ;;
  official) peer qwen_tts 110 --runs 1 --icl-runs 1 ;;
  verify)   ours parity 200 --sections env parity --parity-batches 1 8 64 --parity-dtypes float32 ;;
  tune)     ours fused 330 --max-streams 64 --sections env single ttfa profile concurrency ;;
  load)     ours load 250 --max-streams 64 --sections env single ttfa concurrency ;;
  timeline) ours timeline 300 --max-streams 64 --sections env timeline
            timeout 100 python3 bench/bench_parts.py --base /tmp/ckpt_base --out "$OUT" --parts prepare 2>&1 \
              | quiet | tail -40 ;;
  parts)    timeout 240 python3 bench/bench_parts.py --base /tmp/ckpt_base --out "$OUT" --parts ${PARTS:-prepare codec codec_ops} \
              2>&1 | quiet | tail -60 ;;
  ab)       ours ab 260 --max-streams 64 --sections env ab single ttfa ;;
  conc)     ours conc 200 --max-streams 64 --sections env concurrency ;;
  engine)   ours fused 270 --max-streams 64 --sections env single ttfa profile concurrency
            ours parity 230 --sections env parity --parity-batches 1 8 64 --parity-dtypes float32 bfloat16 \
              --parity-bf16-batches 1 --long-frames 3000 ;;
  tiles)    timeout 230 python3 bench/bench_kernels.py --sections check,tiles --budget 220 --sweep-budget 170 \
              2>&1 | tail -40
            ours tiles 300 --max-streams 64 --sections env profile concurrency ;;
  kernels)  ours fused 330 --max-streams 64 --sections env single profile floor parity
            timeout 200 python3 bench/bench_kernels.py --budget 170 2>&1 | tail -80
            cp "$OUT"/bench_kernels.json "$OUT"/kernels.json 2>/dev/null ;;
esac
# at most 8 files come back from the GPU machine: logs and profiles travel as one archive per stage (two
# stages in one call keep both)
( cd "$OUT" && tar czf "extras_$STAGE.tgz" --ignore-failed-read build_*.log profile_*.txt env.txt *.log 2>/dev/null; \
  rm -f build_*.log profile_*.txt env.txt )
echo "== done in $(( $(date +%s) - T0 ))s"
