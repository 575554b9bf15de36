#!/usr/bin/env bash
# Run the demo at a larger scale on a GPU machine (the command recorded in results/). Needs $GPU_FILES with the
# SmolLM2 GGUF file and a mixed Wikipedia + Gutenberg corpus (wiki_gutenberg_mixed.jsonl.gz, built from
# ../shared/data by scripts/build_gpu_corpus.py); writes a tarball of every run's outputs (weights excluded) to $OUT.
# Usage: bash results/demo_gpu_10M_d16384/gpu_demo.sh TOKENS DICT_SIZE L1 [L1 ...]
set -uo pipefail
tokens=$1; dict=$2; shift 2
export DLA_SMOLLM2_GGUF=$GPU_FILES/SmolLM2-135M-Instruct.Q4_1.gguf PYTHONUNBUFFERED=1
runs=/tmp/runs; rm -rf $runs; mkdir -p $runs
finish() { tar -czf "$OUT/runs.tar.gz" --exclude='dictionaries' -C $runs . ; }
trap finish EXIT
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $runs/gpu.txt
start=$(date +%s); budget=${BUDGET_S:-540}
for l1 in "$@"; do
  left=$((budget - $(date +%s) + start)); [ $left -gt 30 ] || { echo "no time left for l1=$l1"; break; }
  timeout $left python3 -m dictionary_learning_aligned demo --device cuda --autocast bfloat16 --tokens "$tokens" \
    --dict-size "$dict" --l1-penalty "$l1" --batch-size 4096 --buffer-ctxs 8000 --refresh-batch-size 256 \
    --eval-batches 20 --ce-batches 20 --ce-batch-size 32 --log-steps 250 \
    --corpus "$GPU_FILES/wiki_gutenberg_mixed.jsonl.gz" --out "$runs/l1_$l1" 2>&1 \
    | grep -v "training:" | tee "$runs/log_l1_$l1.txt"
done
