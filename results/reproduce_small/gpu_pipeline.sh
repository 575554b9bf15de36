#!/usr/bin/env bash
# The one-H200 GPU session of 2026-11-29 (the fourth development session, the third with a GPU): one background pipeline instead of separate phases, so
# no device time is lost between calls. Staged first with ../shared/tools/gpu_bundle.sh .gpu --part-mib 32 (40 until the
# checkout grew past 24 MB: a call carries at most 64 MiB)
# <SmolLM2 GGUF> <all_english_mixed.jsonl.gz> <saebench_data.tar> --wheels "<results/reproduce_small/gpu_saebench_wheels.sh's
# wheels + dictionary-learning 0.1.0>"; the last part runs `bash results/reproduce_small/gpu_pipeline.sh start run` (on
# 2026-11-29 `start 440`, before plans were named), which launches the plan in its own process session (it
# outlives the call) and then waits; later calls run
# `bash results/reproduce_small/gpu_pipeline.sh wait SECONDS` back to back. Every call returns what exists so far as
# $OUT/*.tar.gz (records, SAEBench JSON, speed JSON, logs; no weights).
#
# `run` (times are seconds after its start; every job is cut at DEADLINE_S so the last call gets its results):
#   1. alone on the GPU: the speed benchmark (issue 6): plain/default/sparse paths + dictionary_learning 0.1.0 +
#      harvesting + end to end; a Gemma-2-2B-sized dictionary (2304 x 65536); the compile/fast paths at 65536.
#   2. `main` TopK k 64 (4096, 3 seeds, standard and aligned), harvesting the 20M-token cache first (issue 5's
#      4096 dictionaries, weights kept on the machine).
#   3. once the cache exists, together: `sizes` TopK k 64 at 16384 (3 seeds; issues 4 and 5) and `sizes` at
#      65536 (ReLU L1 0.04, TopK k 64, seed 0; Figs. 17-18).
#   4. SAEBench (issue 5), one process per dictionary: sparse probing + autointerp on the 4096 ones as soon as
#      they exist, all five evals (core, SCR, TPP, sparse probing, autointerp) on the 16384 ones.
#   5. after the 65536 runs: `sizes` at 16384, seed 0, for BatchTopK, p-anneal and TopK k 32/128 (Figs. 15-16).
# What ran on 2026-11-29: all of `run` (speed 252 s, reproduction to 1368 s: results/speed_h200/,
# results/reproduce_small/), except SAEBench: the xgboost wheel had not been staged (it was missing from the wheel
# folder), so every SAEBench process failed at import; `resb` then could not install it either (no wheel), and a
# last manual call with an empty `xgboost` module on the path ran sparse probing on the 4096 dictionaries, while
# autointerp failed everywhere (the local judge's server refused SAEBench's concurrent requests; fixed since).
# Next time: check `ls .gpu/*/ | grep xgboost` before staging, and run at most a few SAEBench processes at once.
#
# `next` (the fifth session, 2026-11-29): the same staging (with xgboost-cpu among the wheels), last part `bash
# .gpu/pN/stage.sh bash results/reproduce_small/gpu_pipeline.sh start next 440`, then `bash results/reproduce_small/gpu_pipeline.sh wait 560`
# calls back to back. It stops at once if an import is missing; retrains the TopK k 64 dictionaries at 4096 and
# 16384 (3 seeds; weights are not kept between sessions) and runs SAEBench on them, one process per dictionary
# (autointerp at 4096, all five evals at 16384); then, if time is left, times the default and compiled paths
# again (the reparameterization now reads W_dec.T row-major) and trains ReLU L1 0.02 and TopK k 128 at 65536.
# What ran (commit 1008232): all of it, done at 1178 s (trainings to 385 s, SAEBench 337-841 s, speed 841-935 s,
# 65536 935-1178 s); results/reproduce_small/ (logs/log_s5_*) and results/speed_h200/ (s5_*). Device time 1,247 s
# of 1,800 including the 60 s of staging; then `massive` (below; staged again in 7 parts of 32 MiB without
# sae_probes or the SAEBench data, 298 s): 1,608 s in all.
set -uo pipefail
cmd=${1:?usage: bash results/reproduce_small/gpu_pipeline.sh start run|next [SECONDS] | wait SECONDS}
export PYTHONPATH=/tmp/site:$PWD GPU_FILES=/tmp/gpu/files PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
export DLA_SMOLLM2_GGUF=$GPU_FILES/SmolLM2-135M-Instruct.Q4_1.gguf
C=$GPU_FILES/all_english_mixed.jsonl.gz
R=/tmp/res                      # everything that comes back
STORE=$R/store                  # results store of the reproduction (dictionaries stay out of the tarball)
DEADLINE_S=${DEADLINE_S:-1430}  # the pipeline's own end, counted from `run`'s start

left() { local n=$(( DEADLINE_S - $(date +%s) + $(cat $R/t0) )); echo $(( n > 1 ? n : 1 )); }
t() { echo "[$(( $(date +%s) - $(cat $R/t0) )) s] $*"; }

repro() {  # NAME EXPERIMENT [reproduce flags...]: the reproduction at --scale small, cut at the deadline
  local name=$1; shift
  t "reproduce $name: $*"
  timeout "$(left)" python3 -m dictionary_learning_aligned.reproduce "$@" --scale small --device cuda \
    --results "$STORE" --cache /tmp/dla_cache --corpus "$C" --eval-batches 20 --ce-batches 20 --ce-batch-size 32 \
    2>&1 | grep --line-buffered -v "training:" > "$R/logs/reproduce_$name.txt"
  t "reproduce $name ended ($(ls "$STORE/records" 2>/dev/null | wc -l) records in the store)"
}

saebench() {  # RECORDS EVALS [LOG NAME]: one SAEBench process for the records matching a glob, cut at the deadline
  local log=${3:-$1}
  t "SAEBench $2 on $1"
  OMP_NUM_THREADS=2 timeout "$(left)" python3 -m benchmarks run --results-store "$STORE" --records "$1" \
    --evals "$2" --device cuda --data-dir /tmp/sbdata --text-source "$C" --core-batches 50 \
    --core-sparsity-batches 250 --llm-batch-size 64 --autointerp-tokens 500000 --autointerp-latents 40 \
    > "$R/logs/saebench_$log.txt" 2>&1
  t "SAEBench on $1 ended (rc $?)"
}

saebench_topk64() {  # EXPERIMENT DICT_SIZE EVALS: one background SAEBench process per TopK k 64 dictionary of the
  # pair (standard and aligned x seeds 0-2); the caller waits for them
  for a in standard project; do for s in 0 1 2; do
    saebench "${1}__topk__${a}__d${2}__k64__s$s" "$3" &
  done; done
}

machine_setup() {  # the GPU's name and memory into the logs; the labelled SAEBench data unpacked
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $R/logs/gpu.txt
  mkdir -p /tmp/sbdata && tar -xf "$GPU_FILES/saebench_data.tar" -C /tmp/sbdata
}

wait_for_cache() {  # PID: until the activation cache is complete (meta.json written) or the harvesting job ended
  while ! ls /tmp/dla_cache/*/meta.json > /dev/null 2>&1 && kill -0 "$1" 2> /dev/null; do sleep 5; done
}

pack() {
  tar -czf "$OUT/store.tar.gz" --exclude=dictionaries --exclude=artifacts -C "$R" store 2>/dev/null
  tar -czf "$OUT/logs.tar.gz" -C "$R" logs speed 2>/dev/null
}

case $cmd in
start)  # start PLAN [SECONDS]: launch plan `run` (2026-11-29) or `next` in the background, then wait
  plan=${2:?start needs a plan: run or next}
  mkdir -p $R/logs $R/speed && date +%s > $R/t0
  setsid nohup bash results/reproduce_small/gpu_pipeline.sh "$plan" > $R/logs/pipeline.txt 2>&1 < /dev/null &
  bash results/reproduce_small/gpu_pipeline.sh wait "${3:-400}"
  ;;
wait)
  end=$(( $(date +%s) + ${2:?seconds} ))
  while [ "$(date +%s)" -lt "$end" ] && ! [ -f $R/done ]; do sleep 5; done
  cat $R/logs/pipeline.txt; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  pack; ls -la "$OUT"
  ;;
run)
  machine_setup
  python3 -c "import torch, sae_bench.evals.sparse_probing.main, sae_bench.evals.autointerp.main, xgboost, dictionary_learning
print('torch', torch.__version__, '| imports ok: sae_bench sparse_probing/autointerp, xgboost, dictionary_learning')"
  # 1. speed, alone on the GPU
  t "speed: plain, default, sparse; dictionary_learning; harvest; end to end"
  (cd $R/speed && timeout 260 python3 -m benchmarks.speed --paths plain,default,sparse \
    --compare-dictionary-learning --harvest --corpus "$C" --e2e-tokens 4000000 --e2e-paths default,sparse \
    --out speed.json > speed.txt 2>&1)
  t "speed ended (rc $?)"
  (cd $R/speed && timeout 90 python3 -m benchmarks.speed --activation-dim 2304 --dict-sizes 65536 \
    --archs relu,topk --paths default,sparse --compare-dictionary-learning --out speed_gemma_size.json \
    > speed_gemma_size.txt 2>&1)
  t "speed at 2304 x 65536 ended (rc $?)"
  (cd $R/speed && timeout 120 python3 -m benchmarks.speed --paths default,compile,fast --dict-sizes 65536 \
    --archs topk --out speed_compile.json > speed_compile.txt 2>&1)
  t "speed compile/fast ended (rc $?)"
  # 2. the cache and the 4096 dictionaries
  repro main_topk64 main --archs topk --sparsity 64 --chunk 6 &
  j1=$!
  wait_for_cache $j1
  t "cache ready: $(ls -d /tmp/dla_cache/*/ 2>/dev/null)"
  # 3. 16384 (3 seeds) and 65536 (seed 0), the latter reading batches from disk to leave GPU memory
  repro sizes16k_topk64 sizes --dict-sizes 16384 --archs topk --sparsity 64 --chunk 6 &
  j2=$!
  (repro sizes65k sizes --dict-sizes 65536 --archs relu,topk --sparsity 0.04,64 --seeds 1 --chunk 2 --no-preload
   # 5. then the other architectures at 16384, seed 0, as long as time is left
   repro sizes16k_batchtopk sizes --dict-sizes 16384 --archs batchtopk --seeds 1 --chunk 2
   repro sizes16k_panneal sizes --dict-sizes 16384 --archs panneal --seeds 1 --chunk 2
   repro sizes16k_topk sizes --dict-sizes 16384 --archs topk --seeds 1 --sparsity 32,128 --chunk 2) &
  j3=$!
  # 4. SAEBench, one process per dictionary
  wait $j1
  saebench_topk64 main 4096 sparse_probing,autointerp
  wait $j2
  saebench_topk64 sizes 16384 core,scr,tpp,sparse_probing,autointerp
  wait
  t "pipeline done"; touch $R/done
  ;;
next)  # the plan for the fifth session (issue 5 first; issue 6's timing and Figs. 17-18 only with time left)
  python3 -c "import torch, xgboost, sae_bench.evals.sparse_probing.main, sae_bench.evals.autointerp.main, dictionary_learning
print('imports ok: xgboost', xgboost.__version__)" || { t "a wheel is missing: stopping before any GPU work"; touch $R/done; exit 1; }
  machine_setup
  # 1. the cache and the SAEBench dictionaries (TopK k 64, 3 seeds, standard and aligned): 4096, then 16384
  repro main_topk64 main --archs topk --sparsity 64 --chunk 6 &
  j1=$!
  wait_for_cache $j1
  repro sizes16k_topk64 sizes --dict-sizes 16384 --archs topk --sparsity 64 --chunk 6 &
  j2=$!
  # 2. SAEBench, one process per dictionary (each with its own judge): at 4096 only autointerp is missing (core,
  #    SCR, TPP and sparse probing are committed); at 16384 all five, autointerp last (an eval that fails stops
  #    its process, and the ones before it are kept)
  wait $j1
  saebench_topk64 main 4096 autointerp
  wait $j2
  saebench_topk64 sizes 16384 core,scr,tpp,sparse_probing,autointerp
  wait
  # 3. with the GPU free again and time left: time the row-major reparameterization (issue 6), then second
  #    sparsities at 65536 (Figs. 17-18)
  if [ "$(left)" -gt 150 ]; then
    (cd $R/speed && timeout $(( $(left) < 200 ? $(left) - 20 : 200 )) python3 -m benchmarks.speed \
      --paths default,fast --compare-dictionary-learning --out speed_next.json > speed_next.txt 2>&1)
    t "speed ended (rc $?)"
  fi
  if [ "$(left)" -gt 420 ]; then
    repro sizes65k_more sizes --dict-sizes 65536 --archs relu,topk --sparsity 0.02,128 --seeds 1 --chunk 2 \
      --no-preload
  fi
  t "pipeline done"; touch $R/done
  ;;
massive)  # in the foreground, one call: retrain TopK k 64 at 16384 (seed 0, standard and aligned) and measure how
  # much of their error sits on massive-activation tokens (benchmarks/massive_tokens.py); ran 2026-11-29 after `next`
  mkdir -p $R/logs && date +%s > $R/t0
  export DEADLINE_S=${2:-420}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $R/logs/gpu.txt
  repro sizes16k_topk64_s0 sizes --dict-sizes 16384 --archs topk --sparsity 64 --seeds 1 --chunk 2
  t "massive-token check"
  timeout "$(left)" python3 -m benchmarks.massive_tokens --results "$STORE" --records 'sizes__topk__*__d16384__k64__s0' \
    --device cuda --batches 20 --out "$OUT/massive_tokens.json" 2>&1 | grep -v Warning | tee "$R/logs/massive_tokens.txt"
  t "done"
  pack
  ;;
resb)  # SAEBench again after installing a missing wheel (.whl/, carried): all twelve processes at once
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  python3 -c "import xgboost; print('xgboost', xgboost.__version__)"
  for a in standard project; do for s in 0 1 2; do
    setsid nohup bash results/reproduce_small/gpu_pipeline.sh sb1 "main__topk__${a}__d4096__k64__s$s" sparse_probing,autointerp \
      < /dev/null >> $R/logs/pipeline.txt 2>&1 &
    setsid nohup bash results/reproduce_small/gpu_pipeline.sh sb1 "sizes__topk__${a}__d16384__k64__s$s" \
      core,scr,tpp,sparse_probing,autointerp < /dev/null >> $R/logs/pipeline.txt 2>&1 &
  done; done
  bash results/reproduce_small/gpu_pipeline.sh wait "${2:-400}"
  ;;
sb1) saebench "$2" "$3";;
*) echo "unknown command $cmd" >&2; exit 2;;
esac
