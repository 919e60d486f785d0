"""Where one edit's training time goes, by phase and by op, on the CPU or a GPU.

Trains zsRE edits one at a time through `MemoirEditor.train_many` (nothing written) and reports:

    phases   per edit: the first pass (the model once over the rows), the steps' forwards, their loss (lm_head
             and the NLL), backwards and optimiser steps, and the rest (encoding, bookkeeping). On a GPU
             each phase ends with a synchronize so its kernels count in it; the sum is then a little above
             the unprofiled time, which is printed beside it.
    ops      torch.profiler over the last edits: the busiest ops by self time on the host, and on a GPU the
             time its kernels kept the device busy against the wall time (launch-bound when far below).

    python scripts/profile_edit.py --edits 40 [--device cuda] [--eager]

On a GPU the first pass and the steps are CUDA graphs (sam/core/edit_graphs.py) unless --eager; their replays
are the phases "first pass (graph)" and "steps (graph)", and a bucket's capture counts in the eager phases.
Prints rich tables and writes results/edit/profile_edit_DEVICE[_eager].json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sam.bench.facts import default_zsre, zsre  # noqa: E402
from sam.bench.results import write_result  # noqa: E402
from sam.core.edit_graphs import GraphedPass, GraphedStep  # noqa: E402
from sam.core.editor import MemoirEditor  # noqa: E402
from sam.core.output_loss import TargetNLL  # noqa: E402


class PhaseClock:
    """Times calls of a few public callables while installed; `sync` makes GPU work count where it is launched."""

    def __init__(self, sync):
        self.sync, self.seconds, self._undo = sync, {}, []

    def wrap(self, owner, name: str, phase):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            self.sync()
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                key = phase() if callable(phase) else phase
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t

        own = name in vars(owner)  # else it was found on the class: delete the wrapper to uncover it again
        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original) if own else delattr(owner, name))

    def remove(self):
        for undo in reversed(self._undo):
            undo()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=40, help="zsRE facts edited (the first 3 warm up, the last 5 profiled)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", type=Path, help="zsRE-style JSON (default: ../shared's records, else the sample)")
    p.add_argument("--out", type=Path, default=Path("results/edit"))
    p.add_argument("--eager", action="store_true", help="no CUDA graphs on a GPU (the eager loop)")
    a = p.parse_args(argv)
    facts = zsre(a.data or default_zsre(), log=lambda *_: None)[: a.edits]
    ed = MemoirEditor.open(Path(tempfile.mkdtemp()) / "store", device=a.device)
    cuda = torch.device(a.device).type == "cuda"
    ed.trainer.graph_steps = ed.trainer.graph_steps and not a.eager  # the trainer's default: on a GPU
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def train(fact):
        return ed.train_many([(ed.render(fact.question), fact.target)])[0]

    warm, timed, profiled = facts[:3], facts[3:-5], facts[-5:]
    for f in warm:
        train(f)
    plain = [train(f).seconds for f in timed]  # unprofiled, for comparison

    clock = PhaseClock(sync)
    calls = {"base": 0}

    def forward_phase():
        calls["base"] += 1
        return "first pass" if calls["base"] == 1 else "step forwards"

    clock.wrap(ed.trainer.base, "forward", forward_phase)
    clock.wrap(TargetNLL, "__call__", "step loss (lm_head, NLL)")
    clock.wrap(torch.Tensor, "backward", "step backwards")
    clock.wrap(torch.optim.Adam, "step", "optimiser steps")
    clock.wrap(GraphedPass, "__call__", "first pass (graph)")
    clock.wrap(GraphedStep, "step", "steps (graph)")
    per_edit, steps = [], []
    try:
        for f in timed:
            calls["base"] = 0
            clock.seconds = {}
            pending = train(f)
            phases = dict(clock.seconds)
            phases["rest"] = pending.seconds - sum(phases.values())
            per_edit.append(phases)
            steps.append(pending.outcome.steps)
    finally:
        clock.remove()
    names = list(dict.fromkeys(n for e in per_edit for n in e))  # graphed edits skip the eager phases
    phases = {n: statistics.fmean(e.get(n, 0.0) for e in per_edit) for n in names}

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for f in profiled:
            train(f)
        sync()
    wall = time.perf_counter() - t
    events = prof.key_averages()
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    ops = [{"op": e.key, "calls": e.count, "self_host_ms_per_edit": e.self_cpu_time_total / 1e3 / len(profiled),
            **({"self_device_ms_per_edit": getattr(e, "self_device_time_total", 0) / 1e3 / len(profiled)}
               if cuda else {})} for e in top]
    res = {"device": a.device, "graphs": ed.trainer.graph_steps, "graphs_made": len(ed.trainer.graphs),
           "graphs_captured": ed.trainer.graphs.captured, "graph_error": ed.trainer.graphs.error,
           "gpu": torch.cuda.get_device_name() if cuda else None, "threads": torch.get_num_threads(),
           "edits_timed": len(timed), "median_train_seconds_unprofiled": statistics.median(plain),
           "mean_train_seconds_unprofiled": statistics.fmean(plain),
           "mean_train_seconds_phased": statistics.fmean(sum(e.values()) for e in per_edit),
           "mean_steps": statistics.fmean(steps), "phases_mean_seconds": phases,
           "profiled_edits": len(profiled), "profiled_wall_seconds_per_edit": wall / len(profiled), "ops": ops}
    if cuda:  # kernels only (their self time on the device), against the wall time
        busy = sum(getattr(e, "self_device_time_total", 0) for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        res["device_busy_seconds_per_edit"] = busy / 1e6 / len(profiled)

    console = Console()
    table = Table(title=f"one edit's training on {a.device}, mean of {len(timed)} zsRE edits "
                        f"({res['mean_steps']:.1f} steps; unprofiled median {res['median_train_seconds_unprofiled']:.3f} s)")
    table.add_column("phase")
    table.add_column("s per edit", justify="right")
    table.add_column("share", justify="right")
    total = sum(phases.values())
    for n, s in phases.items():
        table.add_row(n, f"{s:.4f}", f"{s / total:.0%}")
    console.print(table)
    ops_table = Table(title=f"busiest ops over {len(profiled)} edits (torch.profiler), ms per edit")
    for col in ("op", "calls", "host self") + (("device self",) if cuda else ()):
        ops_table.add_column(col, justify="left" if col == "op" else "right")
    for o in ops:
        ops_table.add_row(o["op"][:60], str(o["calls"]), f"{o['self_host_ms_per_edit']:.2f}",
                          *((f"{o['self_device_ms_per_edit']:.2f}",) if cuda else ()))
    console.print(ops_table)
    if cuda:
        print(f"device busy {res['device_busy_seconds_per_edit']:.4f} s per edit of {res['profiled_wall_seconds_per_edit']:.4f} s wall")
    if ed.trainer.graphs.error:
        print(f"a capture failed (those edits ran eagerly): {ed.trainer.graphs.error}")
    write_result(a.out, f"profile_edit_{torch.device(a.device).type}{'_eager' if a.eager else ''}", res)
    return res


if __name__ == "__main__":
    main()
