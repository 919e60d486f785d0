#!/usr/bin/env bash
# On the GPU machine, after stage.sh (started through launch.sh): one edit at a time with its first pass and
# steps as CUDA graphs (sam/core/edit_graphs.py) against the eager loop, on the same machine:
#   the GPU test (graphs give the eager loop's losses and deltas), the one-edit profile both ways, and
#   300 zsRE edits one at a time both ways (Rel/Gen/Loc and s/edit).
set -u
out=$PWD/../out
python3 -m pytest -q -p no:cacheprovider tests/test_core_trainer.py -k "cuda_graph or static_padded" 2>&1 | tail -15
for mode in "" --eager; do
  python3 scripts/profile_edit.py --device cuda --edits 60 --data /root/zsre.json --out "$out" $mode 2>&1 | grep -v Converting
done
for mode in --cuda-graphs --no-cuda-graphs; do
  python3 scripts/bench_editing.py --device cuda --data /root/zsre.json --sizes 100,300 --batch 1 --eval-sample 300 \
    --neighbours 100 --no-generation --out "$out" --tag "edit_cuda_one_at_a_time_${mode#--}" $mode 2>&1 \
    | grep -v "Converting\|it/s\]" | tail -8
done
echo "graphs done"
