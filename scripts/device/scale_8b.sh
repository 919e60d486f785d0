#!/usr/bin/env bash
# On the GPU machine, in one call: an 8B-shaped Llama with random weights in bf16 (sam/bench/scale.py).
# Carries .gpu/d: the wheels the image lacks (whl/), SmolLM2's tokenizer files (tok/) and MiniLM (minilm/).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site .gpu/d/whl/*.whl
export PYTHONPATH=/root/site:$PWD SAM_SENTENCE_MODEL=$PWD/.gpu/d/minilm PYTHONUNBUFFERED=1
timeout "${LIMIT:-420}" python3 -m sam.bench.scale --device cuda --tokenizer .gpu/d/tok --edits "${EDITS:-1000}" \
  --out "$OUT" 2>&1 | grep -v "Loading\|it/s" | tail -30
