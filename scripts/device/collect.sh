#!/usr/bin/env bash
# On the GPU machine: wait up to WAIT seconds (or until every job has ended), then bring back each job's
# log tail, and its out/ folder and log as $OUT/NAME.tgz (at most 8 files come back from one call).
set -u
WAIT=${WAIT:-0}
end=$((SECONDS + WAIT))
running() { for p in /root/jobs/*/pid; do kill -0 "$(cat "$p")" 2>/dev/null && return 0; done; return 1; }
while [ $SECONDS -lt $end ] && running; do sleep 10; done
for d in /root/jobs/*/; do
  n=$(basename "$d")
  state=ended; kill -0 "$(cat "$d/pid")" 2>/dev/null && state=running
  echo "=== $n ($state)"; grep -v "Converting\|it/s]" "$d/log.txt" | tail -${TAIL:-25} | cut -c1-220
done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
for d in /root/jobs/*/; do  # one archive per job: its out/ folder and log
  n=$(basename "$d"); cp "$d/log.txt" "$d/out/log.txt" 2>/dev/null
  tar -C "$d/out" --exclude='*.sqlite*' --exclude='*.db*' -czf "$OUT/$n.tgz" . 2>/dev/null
done
ls -la "$OUT"
