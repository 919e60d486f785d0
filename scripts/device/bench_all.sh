#!/usr/bin/env bash
# On the GPU machine, after stage.sh. `bench_all.sh main`: the sequential run T=1..1000 with the
# current defaults, exact match and the naive-loop comparison. `bench_all.sh sweep`: the T=1000 sweep
# of one setting at a time, side by side (the GPU has room; each run takes 2 CPU threads).
# Each run is its own process under setsid; the script waits up to $WAIT s, then copies what has
# finished to $OUT. Re-running it only collects.
set -u
export PYTHONPATH=/root/site:$PWD SAM_MODEL_CACHE=/root/cache OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
R=/root/results; mkdir -p $R
python3 -c "from sam.core.model_loader import resolve_model_dir; from pathlib import Path; print(resolve_model_dir('default', Path('/root/cache')))"
launch() { tag=$1; shift; [ -f $R/$tag.started ] && return; touch $R/$tag.started
  setsid nohup python3 scripts/bench_editing.py --device cuda --data /root/zsre.json --out $R --tag $tag "$@" > $R/$tag.log 2>&1 & }
case "${1:-main}" in
  main) want=1
    launch edit_cuda_T1000 --sizes 1,10,100,1000 --compare-naive 5 ;;
  sweep) want=6
    launch sweep_k64 --sizes 100,1000 --no-generation --compare-naive 0 --top-k 64
    launch sweep_k256 --sizes 100,1000 --no-generation --compare-naive 0 --top-k 256
    launch sweep_bound1 --sizes 100,1000 --no-generation --compare-naive 0 --expert-load-bound 1
    launch sweep_bound16 --sizes 100,1000 --no-generation --compare-naive 0 --expert-load-bound 16
    launch sweep_th055 --sizes 100,1000 --no-generation --compare-naive 0 --threshold 0.55
    launch sweep_lr10 --sizes 100,1000 --no-generation --compare-naive 0 --lr 10 ;;
esac
end=$((SECONDS + ${WAIT:-500}))
while [ $SECONDS -lt $end ]; do  # a run is finished when its log says where it wrote the JSON
  n=$(grep -l "^wrote " $R/*.log 2>/dev/null | wc -l); [ "$n" -ge "$want" ] && break; sleep 10; done
for f in $R/*.log; do echo "== $f"; grep -v -i "warn\|loading\|it/s" $f | tail -4; done
cp $R/*.json $OUT/ 2>/dev/null; tar czf $OUT/logs.tgz -C $R $(cd $R; ls *.log) 2>/dev/null; ls $OUT
