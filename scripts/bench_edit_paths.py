#!/usr/bin/env python
"""One edit's training time by path, interleaved in one process on the same requests (machine drift cancels):

    before         the whole prompt in the first pass, torch's GEMMs (the code before issue 13)
    frames         + the frames' KV cache kept across edits (sam/core/trainer.py)
    frames+packed  + the steps' products on oneDNN-reordered weights (sam/core/packed.py)

    .venv/bin/python scripts/bench_edit_paths.py 30      # the first 30 zsRE facts, default model, CPU
"""
import tempfile, time, contextlib, statistics, sys
from pathlib import Path
import torch
from sam.bench.facts import default_zsre, zsre
from sam.config import EditorConfig
from sam.core.editor import MemoirEditor
from sam.core.trainer import EditRequest
import sam.core.trainer as T
facts = zsre(default_zsre(), log=lambda *_: None)
ed = MemoirEditor.open(Path(tempfile.mkdtemp()) / "s", config=EditorConfig())
tr = ed.trainer
frames_real, packed_real = tr._frames_cache, T.packed_linears
nll = tr.nll
head_pack = nll.packed
def mode(frames, packs):
    tr._frames_cache = frames_real if frames else (lambda f: None)
    T.packed_linears = packed_real if packs else (lambda *a, **k: contextlib.nullcontext())
    nll._packed = head_pack if packs else None
cfg = ed.config
reqs = [[EditRequest(ed._variants(ed.render(f.question)), ed.check_target(f.target))] for f in facts[:int(sys.argv[1]) if len(sys.argv) > 1 else 30]]
modes = {"before": (0, 0), "frames": (1, 0), "frames+packed": (1, 1)}
for m in modes.values():  # warm-up
    mode(*m); tr.train(reqs[0], lr=cfg.learning_rate, max_steps=cfg.max_steps, stop_loss=cfg.stop_loss)
times = {k: [] for k in modes}; steps = {k: [] for k in modes}; losses = {k: [] for k in modes}
for r in reqs:
    for k, m in modes.items():
        mode(*m)
        t = time.perf_counter()
        o = tr.train(r, lr=cfg.learning_rate, max_steps=cfg.max_steps, stop_loss=cfg.stop_loss)[0]
        times[k].append(time.perf_counter() - t); steps[k].append(o.steps); losses[k].append(o.loss)
for k in modes:
    print(f"{k:14s} median {statistics.median(times[k]):.3f} s  mean {statistics.fmean(times[k]):.3f} s  steps {sum(steps[k])}")
print("same steps:", steps["before"] == steps["frames"] == steps["frames+packed"],
      "max |loss diff|:", max(abs(a - b) for a, b in zip(losses["before"], losses["frames+packed"])))
