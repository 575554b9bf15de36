#!/usr/bin/env bash
# Run the reproduction on a GPU machine (one H200) and pack the results store's records (weights excluded)
# into $OUT/NAME.tar.gz. Needs $GPU_FILES with the SmolLM2 GGUF and the all-English corpus
# (scripts/build_gpu_corpus.py --sources all_english). The store and the activation cache live under /tmp, so
# calls on the same warm machine share them (one harvest for every call).
# Usage: bash results/reproduce_small/gpu_reproduce.sh NAME EXPERIMENT [reproduce flags...]
set -uo pipefail
name=$1; shift
export DLA_SMOLLM2_GGUF=$GPU_FILES/SmolLM2-135M-Instruct.Q4_1.gguf PYTHONUNBUFFERED=1
store=/tmp/store; mkdir -p $store
trap 'tar -czf "$OUT/$name.tar.gz" --exclude=dictionaries -C $store . ' EXIT
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$store/gpu.txt"
timeout "${BUDGET_S:-560}" python3 -m dictionary_learning_aligned.reproduce "$@" --scale small --device cuda \
  --results $store --cache /tmp/dla_cache --corpus "$GPU_FILES/${CORPUS:-all_english_mixed.jsonl.gz}" \
  --eval-batches 20 --ce-batches 20 --ce-batch-size 32 2>&1 \
  | grep --line-buffered -v "training:" | tee -a "$store/log_$name.txt"
