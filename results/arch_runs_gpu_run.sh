#!/usr/bin/env bash
# Run one demo on a GPU machine with the common GPU settings plus the given flags, and pack its outputs
# (weights excluded) into $OUT/NAME.tar.gz. Needs $GPU_FILES with the SmolLM2 GGUF and the mixed corpus
# (scripts/build_gpu_corpus.py); see results/*/README.md for the runs made with it.
# Usage: bash results/arch_runs_gpu_run.sh NAME [demo flags...]
set -uo pipefail
name=$1; shift
export DLA_SMOLLM2_GGUF=$GPU_FILES/SmolLM2-135M-Instruct.Q4_1.gguf PYTHONUNBUFFERED=1
runs=/tmp/runs; mkdir -p $runs
trap 'tar -czf "$OUT/$name.tar.gz" --exclude=dictionaries -C $runs "$name"' EXIT
mkdir -p "$runs/$name"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$runs/$name/gpu.txt"
timeout "${BUDGET_S:-560}" python3 -m dictionary_learning_aligned demo --device cuda --autocast bfloat16 \
  --corpus "$GPU_FILES/${CORPUS:-wiki_gutenberg_mixed.jsonl.gz}" --buffer-ctxs 8000 --refresh-batch-size 256 \
  --eval-batches 20 --ce-batches 20 --ce-batch-size 32 --out "$runs/$name/run" "$@" 2>&1 \
  | grep --line-buffered -v "training:" | tee "$runs/$name/log.txt"
