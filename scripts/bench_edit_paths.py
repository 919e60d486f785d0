"""One edit's training time by path, interleaved on the same facts in one process (machine drift cancels).

    before              the whole prompt in the first pass, torch's GEMMs (the code before issue 13)
    frames              + the frames' KV cache kept across edits (EditTrainer.reuse_frames, sam/core/trainer.py)
    frames+packed       + the steps' products on oneDNN-reordered fp32 weights (EditTrainer.packed, sam/core/packed.py)
    frames+packed bf16  + every product of the training passes on bf16 reordered weights (the default where the
                        CPU has bf16 dot products)
    + replayed          + the edited layer's attention and MLP input taken from the first pass in each step
                        (EditTrainer.replay_edited, sam/core/layer_cache.py): the default

lm_head's copy is the default training precision's (bf16 on such a CPU) on every path, as it was before.

Each edit is trained by `MemoirEditor.train_many` (nothing written); its time is the trainer's
(`PendingEdit.seconds`). Prints a rich table and writes results/edit/TAG.json.

    python scripts/bench_edit_paths.py --edits 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sam.bench.facts import default_zsre, zsre  # noqa: E402
from sam.bench.results import write_result  # noqa: E402
from sam.core.editor import MemoirEditor  # noqa: E402

PATHS = {"before": (False, None, False), "frames": (True, None, False), "frames+packed": (True, torch.float32, False),
         "frames+packed bf16": (True, torch.bfloat16, False), "+ replayed": (True, torch.bfloat16, True)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=30, help="the first N zsRE facts")
    p.add_argument("--tag", default="edit_train_paths_cpu")
    p.add_argument("--out", type=Path, default=Path("results/edit"))
    a = p.parse_args(argv)
    facts = zsre(default_zsre(), log=lambda *_: None)[: a.edits]
    ed = MemoirEditor.open(Path(tempfile.mkdtemp()) / "store")
    trainer = ed.trainer

    def train(path: str, fact):
        trainer.reuse_frames, trainer.packed, trainer.replay_edited = PATHS[path]
        return ed.train_many([(ed.render(fact.question), fact.target)])[0]

    for path in PATHS:  # warm-up: the frames' cache and the reordered weights are made here
        train(path, facts[0])
    runs = {path: [] for path in PATHS}
    for fact in facts:
        for path in PATHS:
            runs[path].append(train(path, fact))
    res = {"edits": len(facts), "paths": {
        path: {"median_s": statistics.median(e.seconds for e in edits), "mean_s": statistics.fmean(e.seconds for e in edits),
               "steps": sum(e.outcome.steps for e in edits)} for path, edits in runs.items()}}
    res["same_steps"] = len({tuple(e.outcome.steps for e in edits) for edits in runs.values()}) == 1
    res["max_loss_diff_from_before"] = {path: max(abs(x.outcome.loss - y.outcome.loss)
                                                   for x, y in zip(runs["before"], runs[path])) for path in list(PATHS)[1:]}
    table = Table(title=f"one edit's training by path, {len(facts)} zsRE edits interleaved")
    for col in ("path", "median s", "mean s", "steps"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for path, r in res["paths"].items():
        table.add_row(path, f"{r['median_s']:.3f}", f"{r['mean_s']:.3f}", str(r["steps"]))
    Console().print(table)
    print(f"same steps on every path: {res['same_steps']}; max |final loss difference| from before: "
          + ", ".join(f"{path} {d:.2e}" for path, d in res["max_loss_diff_from_before"].items()))
    write_result(a.out, a.tag, res)
    return res


if __name__ == "__main__":
    main()
