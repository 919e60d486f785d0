#!/usr/bin/env bash
# On the GPU machine, after stage.sh: the 50,000-edit run (every usable zsRE record, then synthetic
# facts), resumable: the store and results live under /root, so the same command in a next call (while
# the machine is still held) carries on where --max-minutes stopped it. JSON, PNG and log go to $OUT.
set -u
export PYTHONPATH=/root/site:$PWD SAM_MODEL_CACHE=/root/cache SAM_SENTENCE_MODEL=/root/minilm PYTHONUNBUFFERED=1
timeout "${LIMIT:-540}" python3 scripts/bench_editing.py --device cuda --data /root/zsre.json --synthetic 50000 \
  --zsre-first --sizes "${SIZES:-1000,10000,50000}" --batch "${BATCH:-256}" --eval-sample "${EVAL:-1000}" \
  --neighbours 200 --batch-size 128 --store /root/store50k --out /root/results --tag edit_cuda_50k \
  --max-minutes "${MIN:-6}" 2>&1 | tee -a /root/results/edit_cuda_50k.log
cp /root/results/edit_cuda_50k.* "$OUT"/ 2>/dev/null
nvidia-smi --query-gpu=memory.used,memory.total --format=csv > "$OUT"/gpu_memory.csv 2>/dev/null || true
ls -la "$OUT"
