#!/usr/bin/env bash
# On the GPU machine, after stage.sh: the T=1..3939 sequential run plus a T=1000 sweep, side by side,
# each its own process (the GPU has room; each takes 2 CPU threads). Waits up to $WAIT s, then copies
# what has finished to $OUT. Re-running it only collects (the runs go on in their own sessions).
set -u
export PYTHONPATH=/root/site:$PWD SAM_MODEL_CACHE=/root/cache OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
R=/root/results; mkdir -p $R
python3 -c "from sam.core.model_loader import resolve_model_dir; from pathlib import Path; print(resolve_model_dir('default', Path('/root/cache')))"
launch() { tag=$1; shift; [ -f $R/$tag.started ] && return; touch $R/$tag.started
  setsid nohup python3 scripts/bench_editing.py --device cuda --data /root/zsre.json --out $R --tag $tag "$@" > $R/$tag.log 2>&1 & }
launch edit_cuda_T3939 --sizes 1,10,100,1000,3939 --compare-naive 10
launch sweep_k64 --sizes 100,1000 --no-generation --compare-naive 0 --top-k 64
launch sweep_k256 --sizes 100,1000 --no-generation --compare-naive 0 --top-k 256
launch sweep_bound1 --sizes 100,1000 --no-generation --compare-naive 0 --expert-load-bound 1
launch sweep_bound16 --sizes 100,1000 --no-generation --compare-naive 0 --expert-load-bound 16
launch sweep_th055 --sizes 100,1000 --no-generation --compare-naive 0 --threshold 0.55
launch sweep_lr10 --sizes 100,1000 --no-generation --compare-naive 0 --lr 10
end=$((SECONDS + ${WAIT:-500}))
while [ $SECONDS -lt $end ]; do
  n=$(ls $R/*.json 2>/dev/null | wc -l); [ "$n" -ge 7 ] && break; sleep 10; done
for f in $R/*.log; do echo "== $f"; grep -v -i "warn\|loading\|it/s" $f | tail -4; done
cp $R/*.json $OUT/ 2>/dev/null; tar czf $OUT/logs.tgz -C $R $(cd $R; ls *.log) 2>/dev/null; ls $OUT
