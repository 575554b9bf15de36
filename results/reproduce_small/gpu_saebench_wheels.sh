#!/usr/bin/env bash
# Download (on this machine, from the package registry) the wheels the GPU machine (Python 3.12, torch 2.11,
# transformers 5.17, no internet) needs to run `python -m benchmarks run`, without their own dependencies; pass
# the wheels to ../shared/tools/gpu_bundle.sh with --wheels "$(ls DIR/*.whl)". The first set is SAEBench and what
# it imports (68 MB); the second what the GPU image lacks at import time (found by blocking imports here and
# running tests/test_saebench.py: wandb, datasets, httpx2, opentelemetry..., 22 MB); the last, xgboost-cpu
# (6 MB), is imported by sae_probes for the sparse-probing eval (missing in the 2026-11-29 session, which
# therefore ran without sparse probing).
# Usage: bash results/reproduce_small/gpu_saebench_wheels.sh [DIR]   (default gpu_extra/wheels_saebench in the current folder)
set -euo pipefail
dir=${1:-gpu_extra/wheels_saebench}
mkdir -p "$dir"
python3 -m pip download -q --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --only-binary=:all: -d "$dir" \
  sae-bench==0.6.0 sae-lens==6.54.12 transformer-lens==3.9.0 sae-probes==0.4.2 openai==3.57.0 jiter distro sniffio \
  beartype==0.23.1 jaxtyping==0.3.11 wadler-lindig typeguard better-abc fancy-einsum simple-parsing \
  docstring-parser tenacity python-dotenv babe nltk joblib threadpoolctl scikit-learn tabulate sentencepiece \
  zstandard
python3 -m pip download -q --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --only-binary=:all: -d "$dir" \
  wandb==0.31.0 datasets==3.6.0 dill==0.3.8 multiprocess==0.70.16 defusedxml==0.7.1 pytz platformdirs truststore \
  httpx2==2.16.2 httpcore2==2.16.2 googleapis-common-protos opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 \
  opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 \
  opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-common==0.66b2 \
  opentelemetry-exporter-http-transport==0.66b2 opentelemetry-semantic-conventions==0.66b2 xgboost-cpu==3.4.1
du -sh "$dir"
