#!/usr/bin/env bash
# The two-H200 call of 2026-12-01 (issue 20) after the faithful-reproduction machine was lost: the multi-GPU timings
# with the stacked engine (whole stacks per GPU) and the cache preloaded on each GPU (`--preload auto`), on a
# synthetic activation cache (no model or corpus staged: 4M tokens x 576, float16, sparse non-negative codes over
# 2304 random unit directions plus a mean, built on the GPU; the timing depends on the shapes, not on the data).
# Staged: `git archive HEAD dictionary_learning_aligned benchmarks > .gpu/w/src.tar` and the simple-parsing 0.1.9
# and docstring-parser wheels in .gpu/w (carry .gpu/w). Run: bash results/multigpu_h200x2/gpu_preload.sh
set -uo pipefail
SRC=/tmp/dla_src; M=/tmp/mg; CACHE=/tmp/synthetic_cache
rm -rf $SRC $M && mkdir -p $SRC $M/logs && tar -xf .gpu/w/src.tar -C $SRC
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/w/*.whl
cd $SRC && export PYTHONPATH=/tmp/site:$SRC PYTHONUNBUFFERED=1
t0=$(date +%s); t() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $M/logs/gpu.txt
python3 - <<'PY'
import torch
from dictionary_learning_aligned.cache import build_cache
g = torch.Generator(device="cuda").manual_seed(0)
dirs = torch.nn.functional.normalize(torch.randn(2304, 576, device="cuda", generator=g), dim=-1)
mean = torch.randn(576, device="cuda", generator=g)
def batches():
    for _ in range(32):
        codes = torch.rand(131072, 2304, device="cuda", generator=g)
        codes = torch.where(codes > 0.98, codes * 4, torch.zeros_like(codes))
        yield (codes @ dirs + mean).half().cpu()
build_cache(batches(), "/tmp/synthetic_cache", n_tokens=32 * 131072,
            meta={"model": "synthetic", "layer": 0, "note": "sparse codes over 2304 random directions"})
PY
t "cache built"
S="--cache $CACHE --arch relu,topk,batchtopk,panneal --alignment none,project --dict-size 4096 --seeds 0,1,2"
S="$S --steps 600 --batch-size 2048 --log-steps 100 --overwrite --placement spread --preload auto --no-normalize"
T="--cache $CACHE --arch topk --alignment project --dict-size 65536 --seeds 0 --steps 600 --batch-size 8192"
T="$T --log-steps 50 --overwrite --preload auto --no-normalize"
for job in "sweep_one:1:$S" "sweep_two:2:$S" "ddp_one:1:$T" "ddp_two:2:$T"; do
  IFS=: read -r name n args <<< "$job"
  t "train $name"
  timeout 150 python3 -m torch.distributed.run --standalone --nproc_per_node "$n" -m dictionary_learning_aligned \
    train $args --out $M/$name > $M/logs/train_$name.txt 2>&1
  t "train $name ended (rc $?)"; tail -3 $M/logs/train_$name.txt
done
python3 -m benchmarks.multigpu --one $M/ddp_one --many $M/ddp_two --labels "bf16 autocast + preload" \
  --sweep-one $M/sweep_one --sweep-many $M/sweep_two --out $M/report 2>&1 | tee $M/logs/multigpu_report.txt
find $M -name "*.safetensors" -delete
tar -czf $OUT/preload.tar.gz -C $M .
t "done"
