#!/usr/bin/env bash
# On the GPU machine: start one long job in the background, in its own process session and its own copy
# of the tree (later calls re-send the working tree), so it outlives the call that started it and runs
# while the machine is held. Later calls read /root/jobs/NAME/log.txt (scripts/device/collect.sh).
#   bash scripts/device/launch.sh NAME command...
set -u
name=$1; shift
dir=/root/jobs/$name
if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then echo "$name already running"; exit 0; fi
mkdir -p "$dir/out" && rm -rf "$dir/tree" && mkdir -p "$dir/tree"
tar --exclude=./.gpu --exclude=./.git --exclude=./.venv -cf - . | tar -C "$dir/tree" -xf -
cd "$dir/tree" || exit 1
export PYTHONPATH=/root/site:$dir/tree SAM_MODEL_CACHE=/root/cache SAM_SENTENCE_MODEL=/root/minilm PYTHONUNBUFFERED=1
setsid nohup "$@" > "$dir/log.txt" 2>&1 < /dev/null &
echo $! > "$dir/pid"
echo "started $name (pid $(cat "$dir/pid")): $*"
