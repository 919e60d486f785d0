#!/usr/bin/env bash
# On the GPU machine, after stage.sh: start the 50,000-edit run (every usable zsRE record, then synthetic
# facts) in the background (launch.sh); scripts/device/collect.sh follows it. Resumable: the store lives
# under /root/jobs/edit50k, so launching again on the same machine carries on where --max-minutes stopped.
exec bash scripts/device/launch.sh edit50k python3 scripts/bench_editing.py --device cuda --data /root/zsre.json \
  --synthetic 50000 --zsre-first --sizes "${SIZES:-1000,10000,25000,50000}" --batch "${BATCH:-256}" \
  --eval-sample "${EVAL:-1000}" --neighbours 200 --batch-size 128 --store /root/jobs/edit50k/store \
  --out /root/jobs/edit50k/out --tag edit_cuda_50k --max-minutes "${MIN:-24}"
