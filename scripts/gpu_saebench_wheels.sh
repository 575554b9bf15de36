#!/usr/bin/env bash
# Download (on this machine, from the package registry) the wheels the GPU machine (Python 3.12, torch 2.11,
# transformers 5.17, no internet) needs to run `python -m benchmarks run`, without their own dependencies; pass
# the folder to ../shared/tools/gpu_bundle.sh with --wheels. The core set below is 68 MB (26 wheels, measured
# 2026-11-29); what the GPU machine lacks beyond it shows up as an ImportError on the first staged call.
# Usage: bash scripts/gpu_saebench_wheels.sh [DIR]   (default /work/gpu_extra/wheels_saebench)
set -euo pipefail
dir=${1:-/work/gpu_extra/wheels_saebench}
mkdir -p "$dir"
python3 -m pip download -q --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --only-binary=:all: -d "$dir" \
  sae-bench==0.6.0 sae-lens==6.54.12 transformer-lens==3.9.0 sae-probes==0.4.2 openai==3.57.0 jiter distro sniffio \
  beartype==0.23.1 jaxtyping==0.3.11 wadler-lindig typeguard better-abc fancy-einsum simple-parsing \
  docstring-parser tenacity python-dotenv babe nltk joblib threadpoolctl scikit-learn tabulate sentencepiece \
  zstandard
du -sh "$dir"
