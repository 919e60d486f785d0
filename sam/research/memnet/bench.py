"""`sam bench memnet`: MemNet against a same-window Transformer and an LSTM of equal parameter count.

    1. long-term recall    accuracy vs distance (chunks of `window` tokens), at the trained length and 4x longer;
                           MemNet with its memory wiped every chunk as the ablation; slot reuse, read sparsity
    2. continual learning  5 tasks in sequence (new keys, new facts); GEM accuracy matrix, ACC and BWT of retention
                           (queries only) and in-context recall, for sequential (fine-tune) and joint training
    3. learned forgetting  write gate by token kind, read entropy, slot lifetimes, decay over training (MemNet)

Each (experiment, model, seed) is one job. On CUDA the jobs run as parallel processes on the one GPU; with
--time-budget they first time a few steps together and pick the step counts that fit (the same steps for every
model of an experiment), else the preset's steps are used. Writes memnet_bench.json, memnet_jobs.jsonl and PNGs.
--merge-jobs aggregates the memnet_jobs.jsonl of earlier runs made with the same settings (say the baselines and
MemNet trained in separate calls) into one report, training nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import sys
import time
import traceback
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sam.bench.results import write_result
from sam.errors import InvalidInputError

from .experiments import (KINDS, MODELS, ContinualSettings, ModelSize, RecallSettings, continual_job, model_specs,
                          recall_job)
from .tasks import ContinualTask, RecallTask

CALIB_STEPS = 12  # steps timed (after 4 warm-up steps) to size a --time-budget run


PRESETS = ("full", "cpu", "smoke")


def presets(name: str) -> tuple[RecallSettings, ContinualSettings]:
    """full: the GPU configuration (d=64, 64 slots, W=16, 8-chunk sequences, 5 tasks, batch 256).
    cpu: what fits in about half an hour of one CPU thread (d=32, 32 slots, W=8, 4-chunk sequences, 3 tasks,
    batch 32). smoke: CI, seconds."""
    if name == "smoke":
        size = ModelSize(d_model=16, n_layer=1, n_head=2, bottleneck_dim=4, n_slots=8, slot_dim=8, n_read_heads=2,
                         n_write_heads=1, top_k=2)
        rec = RecallSettings(task=RecallTask(n_filler=4, n_keys=4, n_values=4, window=8, n_chunks=2, n_pairs=2),
                             size=size, batch=4, steps=3, lr=2e-3, eval_batches=1, eval_batch=8, long_chunks=4,
                             probes=2, probe_batch=2, probe_episodes=2)
        con = ContinualSettings(task=ContinualTask(n_tasks=2, keys_per_task=3, n_values=4, n_filler=4, window=8,
                                                   n_chunks=2, n_pairs=2, n_queries=2),
                                size=size, batch=4, steps_per_task=2, lr=2e-3, eval_batches=1)
        return rec, con
    if name == "cpu":
        size = ModelSize(d_model=32, n_layer=2, n_head=4, bottleneck_dim=16, n_slots=32, slot_dim=32, top_k=4)
        rec = RecallSettings(task=RecallTask(n_filler=8, n_keys=16, n_values=16, window=8, n_chunks=4, n_pairs=4),
                             size=size, batch=32, steps=1500, lr=2e-3, eval_batches=4, eval_batch=256, long_chunks=16,
                             probes=10, probe_batch=16, probe_episodes=4)
        con = ContinualSettings(task=ContinualTask(n_tasks=3, keys_per_task=8, n_values=16, n_filler=16, window=8,
                                                   n_chunks=5, n_pairs=4, n_queries=4),
                                size=size, batch=32, steps_per_task=300, lr=2e-3, eval_batches=4)
        return rec, con
    if name == "full":
        return RecallSettings(), ContinualSettings()
    raise ValueError(name)


# ---------------------------------------------------------------------- jobs
def _run(job: dict, device: str) -> dict:
    if job["experiment"] == "recall":
        return recall_job(job["model"], job["seed"], job["settings"], device)
    return continual_job(job["model"], job["seed"], job["settings"], device, job["mode"])


def _calibrate(job: dict, device: str) -> float:
    """Seconds per training step of this job's model and batch (a throw-away model; the job rebuilds its own)."""
    from .experiments import build
    from .train import autocast, make_optimizer

    S = job["settings"]
    task = S.task
    spec = model_specs(task.vocab_size, task.window, S.size)
    model = build(job["model"], spec, 0, device)
    opt = make_optimizer(model, 1e-4)
    g = torch.Generator().manual_seed(0)
    t0 = None
    for i in range(4 + CALIB_STEPS):
        if i == 4:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if job["experiment"] == "recall":
            idx, targets, _, _ = task.batch(S.batch, g)
        else:
            idx, targets, _ = task.batch(torch.zeros(S.batch, dtype=torch.long), task.mapping(0), g, "train")
        with autocast(device):
            out = model(idx.to(device), targets=targets.to(device))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / CALIB_STEPS


def _worker(job, device, budget, q, barrier, steps, go):
    torch.set_num_threads(1)
    try:
        if budget:
            barrier.wait(timeout=300)
            q.put(("calib", job["id"], _calibrate(job, device)))
            go.wait(timeout=600)
            S = job["settings"]
            job["settings"] = replace(S, steps=steps[0]) if job["experiment"] == "recall" else \
                replace(S, steps_per_task=steps[1])
        q.put(("done", job["id"], _run(job, device)))
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the run
        q.put(("error", job["id"], traceback.format_exc()))


def _fit_steps(calib: dict, jobs: list, budget: float, rec: RecallSettings, con: ContinualSettings) -> tuple[int, int]:
    """Largest step counts (capped at the presets) such that the slowest job of each experiment fits the budget.
    Recall jobs also spend ~10% on probes and evaluation; a continual job trains 2 x n_tasks x steps_per_task
    (sequential, then joint, in separate jobs that run at the same time) plus its evaluations."""
    t_rec = max((calib[j["id"]] for j in jobs if j["experiment"] == "recall" and j["id"] in calib), default=0.0)
    t_con = max((calib[j["id"]] for j in jobs if j["experiment"] == "continual" and j["id"] in calib), default=0.0)
    s1 = rec.steps if not t_rec else min(rec.steps, max(50, int(0.85 * budget / t_rec)))
    s2 = con.steps_per_task if not t_con else \
        min(con.steps_per_task, max(20, int(0.85 * budget / (con.task.n_tasks * t_con))))
    return s1, s2


def run_jobs(jobs: list, device: str, workers: int, budget: Optional[float], out_dir: Path, console,
             deadline: Optional[float] = None) -> tuple[list, dict]:
    """Runs the jobs (in-process when workers == 1 and no budget, else one process per job). A job that fails is
    recorded in info["errors"]; with `deadline` (seconds from now) jobs still running then are stopped and listed
    in info["unfinished"], so that what did finish still gets aggregated."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    results, info = [], {"errors": {}, "unfinished": []}
    t_end = time.monotonic() + deadline if deadline else None
    jsonl = out_dir / "memnet_jobs.jsonl"
    jsonl.write_text("")

    def record(res):
        results.append(res)
        with jsonl.open("a") as f:
            f.write(json.dumps(res, default=float) + "\n")

    cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} jobs"),
            TimeElapsedColumn())
    with Progress(*cols, console=console, transient=False) as prog:
        bar = prog.add_task("memnet bench", total=len(jobs))
        if workers <= 1 and not budget:
            for job in jobs:
                prog.update(bar, description=f"{job['experiment']} {job['model']} seed {job['seed']}")
                try:
                    record(_run(job, device))
                except Exception:  # noqa: BLE001 - recorded, the run goes on, main() exits non-zero
                    info["errors"][str(job["id"])] = traceback.format_exc()
                    console.log(f"job {job['id']} failed:\n{info['errors'][str(job['id'])]}")
                prog.advance(bar)
            return results, info
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        barrier = ctx.Barrier(len(jobs)) if budget else None
        steps = ctx.Array("i", 2)
        go = ctx.Event()
        procs = [ctx.Process(target=_worker, args=(j, device, budget, q, barrier, steps, go), daemon=True) for j in jobs]
        limit = len(procs) if budget else max(1, workers)  # a time budget times every job at once
        for p in procs[:limit]:
            p.start()
        started = limit
        try:
            pending = {j["id"] for j in jobs}

            def get():
                left = None if t_end is None else t_end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError
                kind, jid, val = q.get(timeout=left if left is not None else 3600)
                if kind == "error":
                    info["errors"][str(jid)] = val
                    pending.discard(jid)
                    console.log(f"job {jid} failed:\n{val}")
                return kind, jid, val

            if budget:
                prog.update(bar, description="timing a few steps of every job together")
                calib = {}
                try:
                    while len(calib) < len(pending):
                        kind, jid, val = get()
                        if kind == "calib":
                            calib[jid] = val
                except (TimeoutError, queue.Empty):
                    info["unfinished"] = sorted(pending)
                    console.log("deadline reached while timing the jobs: nothing was trained")
                    return results, info
                rec = next((j["settings"] for j in jobs if j["experiment"] == "recall"), None)
                con = next((j["settings"] for j in jobs if j["experiment"] == "continual"), None)
                s1, s2 = _fit_steps(calib, jobs, budget, rec or RecallSettings(), con or ContinualSettings())
                steps[0], steps[1] = s1, s2
                info.update(calibration_s_per_step={str(k): v for k, v in calib.items()}, recall_steps=s1,
                            steps_per_task=s2, budget_s=budget)
                console.log("concurrent step times (ms): " + ", ".join(
                    f"{j['experiment'][:3]}/{j['model']}/{j['seed']}{'/' + j['mode'][:3] if 'mode' in j else ''}="
                    f"{1e3 * calib[j['id']]:.0f}" for j in jobs if j["id"] in calib)
                    + f" -> recall steps {s1}, steps per task {s2}")
                go.set()
            prog.update(bar, description="training")
            while pending:
                try:
                    kind, jid, val = get()
                except (TimeoutError, queue.Empty):
                    info["unfinished"] = sorted(pending)
                    console.log(f"deadline reached: stopping {len(pending)} unfinished jobs {sorted(pending)}")
                    break
                if started < len(procs):  # a job ended (done or failed): start the next one
                    procs[started].start()
                    started += 1
                if kind != "done":
                    prog.advance(bar)
                    continue
                pending.discard(jid)
                record(val)
                prog.advance(bar)
                console.log(f"done: {val['experiment']} {val['model']} seed {val['seed']}"
                            f"{' ' + val['mode'] if 'mode' in val else ''} ({val['train_s']:.0f}s training)")
        finally:
            stop = bool(info["unfinished"])
            procs = procs[:started]
            for p in procs:
                if stop and p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
    return results, info


# ---------------------------------------------------------------------- aggregation
def ms(values) -> dict:
    """mean and std over seeds, ignoring NaN (a read-out with no events in one seed); NaN if none has a value."""
    a = np.asarray(values, dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return dict(mean=float(np.nanmean(a)), std=float(np.nanstd(a)), values=a.tolist())


def _acc_block(runs: list, key: str) -> dict:
    A = np.array([r[key]["acc"] for r in runs])
    return dict(bins=runs[0][key]["bins"], acc_mean=A.mean(0).tolist(), acc_std=A.std(0).tolist(),
                n=runs[0][key]["n"], overall=ms([r[key]["overall"] for r in runs]))


def verdict(mem: dict, base: dict) -> str:
    """'better' / 'worse' when the means differ by more than the two stds together, else 'no clear difference'."""
    d = mem["mean"] - base["mean"]
    margin = mem["std"] + base["std"]
    return "better" if d > margin else "worse" if d < -margin else "no clear difference"


def aggregate(results: list, rec: RecallSettings, con: ContinualSettings) -> dict:
    out = {}
    R = [r for r in results if r["experiment"] == "recall"]
    if R:
        models = {}
        for name in MODELS:
            runs = sorted([r for r in R if r["model"] == name], key=lambda r: r["seed"])
            if not runs:
                continue
            models[name] = dict(params=runs[0]["params"], steps=runs[0]["steps"],
                                train_s=ms([r["train_s"] for r in runs]), seeds=[r["seed"] for r in runs],
                                eval=_acc_block(runs, "eval"), eval_long=_acc_block(runs, "eval_long"))
        mem = sorted([r for r in R if r["model"] == "memnet"], key=lambda r: r["seed"])
        if mem:
            models["memnet_wiped"] = dict(params=mem[0]["params"], steps=mem[0]["steps"],
                                          eval=_acc_block(mem, "eval_wiped"), eval_long=_acc_block(mem, "eval_long_wiped"))
            fp = [r["final_probe"] for r in mem]
            diag = {k: ms([p[k] for p in fp]) for k in ("read_hit", "effective_slots", "effective_slots_query",
                                                       "read_entropy", "read_entropy_query", "writes_per_used_slot",
                                                       "slots_used", "rmst", "write_rate", "decay_mean", "acc")}
            diag["gate_by_kind"] = {KINDS[k]: ms([p["gate_by_kind"][k] for p in fp]) for k in range(len(KINDS))}
            diag["decay_by_owner"] = {KINDS[k]: ms([p["decay_by_owner"][k] for p in fp]) for k in range(len(KINDS))}
            out["memory_diagnostics"] = diag
            out["heatmap"] = fp[0]["heatmap"]
            n_probe = min(len(r["probes"]) for r in mem)
            if n_probe:
                P = [r["probes"][:n_probe] for r in mem]
                f = dict(steps=[p["step"] for p in P[0]], kinds=list(KINDS), horizon=rec.task.n_chunks)
                G = np.array([[p["gate_by_kind"] for p in run] for run in P])  # (seeds, probes, kinds)
                f["gate_by_kind_mean"], f["gate_by_kind_std"] = np.nanmean(G, 0).tolist(), np.nanstd(G, 0).tolist()
                for key in ("read_entropy", "read_entropy_query", "rmst", "decay_mean", "read_hit", "write_rate",
                            "effective_slots_query", "writes_per_used_slot", "slots_used", "acc"):
                    A = np.array([[p[key] for p in run] for run in P])
                    f[key + "_mean"], f[key + "_std"] = A.mean(0).tolist(), A.std(0).tolist()
                D = np.array([[p["decay_by_owner"] for p in run] for run in P])
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    f["decay_by_owner_mean"] = np.nanmean(D, 0).tolist()
                f["survival_by_probe"] = [dict(mean=np.mean([run[i]["survival"] for run in P], 0).tolist(),
                                               std=np.std([run[i]["survival"] for run in P], 0).tolist())
                                          for i in range(n_probe)]
                out["forgetting"] = f
        out["recall"] = dict(window=rec.task.window, chunks=rec.task.n_chunks, long_chunks=rec.long_chunks,
                             n_values=rec.task.n_values, models=models)
        if "memnet" in models:
            beyond = {}
            for name in ("transformer", "lstm", "memnet_wiped"):
                if name not in models:
                    continue
                beyond[name] = {}
                for key in ("eval", "eval_long"):
                    rows = []
                    for j, b in enumerate(models["memnet"][key]["bins"]):
                        m = dict(mean=models["memnet"][key]["acc_mean"][j], std=models["memnet"][key]["acc_std"][j])
                        o = dict(mean=models[name][key]["acc_mean"][j], std=models[name][key]["acc_std"][j])
                        rows.append(dict(bin=b, memnet=m["mean"], other=o["mean"], verdict=verdict(m, o)))
                    beyond[name][key] = rows
            out["recall_verdicts"] = beyond
    C = [r for r in results if r["experiment"] == "continual"]
    if C:
        models = {}
        for name in MODELS:
            models[name] = {}
            for mode in ("sequential", "joint"):
                runs = sorted([r for r in C if r["model"] == name and r["mode"] == mode], key=lambda r: r["seed"])
                if not runs:
                    continue
                blk = dict(params=runs[0]["params"], steps=runs[0]["steps"], train_s=ms([r["train_s"] for r in runs]))
                for key in ("retention", "in_context", "retention_reset"):
                    if key not in runs[0]:
                        continue
                    b = dict(R_mean=np.mean([r[key]["R"] for r in runs], 0).tolist(), acc=ms([r[key]["acc"] for r in runs]))
                    if mode == "sequential":
                        b["bwt"] = ms([r[key]["bwt"] for r in runs])
                    blk[key] = b
                models[name][mode] = blk
        verd = {}
        if models.get("memnet", {}).get("sequential"):
            m = models["memnet"]["sequential"]
            for name in ("transformer", "lstm"):
                o = models.get(name, {}).get("sequential")
                if o:
                    verd[name] = {f"{k}_{met}": verdict(m[k][met], o[k][met]) for k in ("retention", "in_context")
                                  for met in ("acc", "bwt")}
        out["continual"] = dict(n_tasks=con.task.n_tasks, models=models, verdicts=verd)
    return out


# ---------------------------------------------------------------------- merging earlier runs
def settings_from_dict(d: dict) -> tuple[RecallSettings, ContinualSettings]:
    """The inverse of `asdict` on the two settings (a memnet_bench.json's "settings")."""
    r, c = dict(d["recall"]), dict(d["continual"])
    rec = RecallSettings(**{**r, "task": RecallTask(**r["task"]), "size": ModelSize(**r["size"])})
    con = ContinualSettings(**{**c, "task": ContinualTask(**c["task"]), "size": ModelSize(**c["size"])})
    return rec, con


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b or a[k] != b[k]:
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    return f"{path} {a} vs {b}"


def _preset_of(rec: RecallSettings, con: ContinualSettings) -> Optional[str]:
    """The preset these settings come from (step counts aside), or None."""
    for name in PRESETS:
        r, c = presets(name)
        if asdict(replace(r, steps=rec.steps)) == asdict(rec) and \
                asdict(replace(c, steps_per_task=con.steps_per_task)) == asdict(con):
            return name
    return None


def merge_jobs(paths: list, rec: RecallSettings, con: ContinualSettings) -> tuple[list, RecallSettings,
                                                                                    ContinualSettings, list]:
    """Job results from earlier runs' memnet_jobs.jsonl files, checked to be one experiment's worth.

    A jsonl line is one finished job (experiment, model, seed, mode, params, steps, evaluations) without its
    settings: those come from the memnet_bench.json the run wrote beside it, and must be the same for every run that
    has one; `rec`/`con` (the preset and step options) are used only when none has. Every line must then match them:
    its step count, its parameter count (which fixes the model sizes and vocabulary) and its evaluation bins; and no
    (experiment, model, seed, mode) may come twice. Raises InvalidInputError (one line) otherwise. Returns the
    results, the settings and one `merged_from` entry per file."""
    results, sources, seen, settings = [], [], {}, None
    paths = [Path(x) for x in paths]
    twice = [str(x) for i, x in enumerate(paths) if x.resolve() in [y.resolve() for y in paths[:i]]]
    if twice:
        raise InvalidInputError(f"--merge-jobs: {twice[0]} is given twice")
    for path in paths:
        if not path.is_file():
            raise InvalidInputError(f"--merge-jobs: {path} does not exist")
        side = path.parent / "memnet_bench.json"
        src = dict(path=str(path), jobs=0)
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
                s = meta["settings"]
                settings_from_dict(s)
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"--merge-jobs: {side} has no readable settings ({exc})") from None
            if settings is None:
                settings = (side, s)
            elif s != settings[1]:
                raise InvalidInputError(f"--merge-jobs: {settings[0]} and {side} were run with different settings "
                                        f"({_first_difference(settings[1], s)}); refusing to merge")
            src.update({k: meta.get(k) for k in ("command", "device", "gpu", "torch", "wall_s", "scheduling")})
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError:
                raise InvalidInputError(f"--merge-jobs: {path}:{n}: not JSON") from None
            ok = isinstance(r, dict) and r.get("model") in MODELS and isinstance(r.get("seed"), int) and \
                isinstance(r.get("steps"), int) and (r.get("experiment") == "recall" or (
                    r.get("experiment") == "continual" and r.get("mode") in ("sequential", "joint")))
            if not ok:
                raise InvalidInputError(f"--merge-jobs: {path}:{n}: not a memnet job result")
            key = (r["experiment"], r["model"], r["seed"], r.get("mode"))
            if key in seen:
                raise InvalidInputError(f"--merge-jobs: {' '.join(str(k) for k in key if k is not None)} is in both "
                                        f"{seen[key]} and {path}:{n}; refusing to merge")
            seen[key] = f"{path}:{n}"
            r["_at"] = f"{path}:{n}"
            results.append(r)
            src["jobs"] += 1
        sources.append(src)
    if settings is not None:
        rec, con = settings_from_dict(settings[1])
    specs = {e: model_specs(S.task.vocab_size, S.task.window, S.size) for e, S in (("recall", rec), ("continual", con))}
    bins = {}
    for r in results:
        e, at = r["experiment"], r.pop("_at")
        what = f"{e} {r['model']} seed {r['seed']}{' ' + r['mode'] if e == 'continual' else ''} ({at})"
        want = rec.steps if e == "recall" else con.task.n_tasks * con.steps_per_task
        if r["steps"] != want:
            raise InvalidInputError(f"--merge-jobs: {what} trained {r['steps']} steps, the settings say {want}; "
                                    f"refusing to merge")
        if r.get("params") != specs[e][r["model"]]["params"]:
            raise InvalidInputError(f"--merge-jobs: {what} has {r.get('params')} parameters, the settings give "
                                    f"{specs[e][r['model']]['params']}; refusing to merge")
        for k in ("eval", "eval_long") if e == "recall" else ("retention",):
            got = r[k]["bins"] if e == "recall" else len(r[k]["R"][0])
            if bins.setdefault((e, k), got) != got:
                raise InvalidInputError(f"--merge-jobs: {what} was evaluated differently ({k}: {got} vs "
                                        f"{bins[(e, k)]}); refusing to merge")
        if e == "continual" and bins[(e, "retention")] != con.task.n_tasks:
            raise InvalidInputError(f"--merge-jobs: {what} has {bins[(e, 'retention')]} tasks, the settings say "
                                    f"{con.task.n_tasks}; refusing to merge")
    if not results:
        raise InvalidInputError("--merge-jobs: the files hold no job results")
    return results, rec, con, sources



# ---------------------------------------------------------------------- report
def _f(d: dict, pct: bool = True) -> str:
    s = 100.0 if pct else 1.0
    return f"{d['mean'] * s:.1f} ± {d['std'] * s:.1f}"


def print_tables(summary: dict, console, seeds: int) -> None:
    from rich.table import Table

    from .plots import LABELS

    if "recall" in summary:
        rec = summary["recall"]
        W = rec["window"]
        t = Table(title="Models (parameters matched to MemNet; same data, steps, batch, optimiser)")
        for c in ("model", "parameters", "steps (recall)", "train s / run (recall)"):
            t.add_column(c, justify="right")
        for name in ("memnet", "transformer", "lstm"):
            r = rec["models"].get(name)
            if r:
                t.add_row(LABELS[name], f"{r['params']:,}", str(r["steps"]), _f(r["train_s"], False))
        console.print(t)
        for key, title in (("eval", f"trained length, {rec['chunks']} chunks of W={W}"),
                           ("eval_long", f"{rec['long_chunks']} chunks (longer than trained)")):
            first = next(iter(rec["models"].values()))
            bins = first[key]["bins"]
            t = Table(title=f"Experiment 1: recall accuracy % by distance ({title}), {seeds} seeds, mean ± std")
            t.add_column("model")
            for b in bins:
                t.add_column(f"{b[0]}-{b[1] - 1} tok", justify="right")
            t.add_column("all", justify="right")
            for name in ("memnet", "transformer", "lstm", "memnet_wiped"):
                r = rec["models"].get(name)
                if r:
                    t.add_row(LABELS[name], *[f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in
                                              zip(r[key]["acc_mean"], r[key]["acc_std"])], _f(r[key]["overall"]))
            t.add_row("chance", *[f"{100 / rec['n_values']:.1f}"] * (len(bins) + 1))
            console.print(t)
        d = summary.get("memory_diagnostics")
        if d:
            t = Table(title="Experiment 1: MemNet memory use after training (probe: 4 episodes through one memory)")
            t.add_column("measure")
            t.add_column("value", justify="right")
            t.add_row("queries whose read hits the slot its pair wrote (any head, top slot) %", _f(d["read_hit"]))
            t.add_row("read sparsity: effective slots per read at query keys (k max)", _f(d["effective_slots_query"], False))
            t.add_row("read entropy / log k, all reads", _f(d["read_entropy"], False))
            t.add_row("slot reuse: write events per written slot per episode", _f(d["writes_per_used_slot"], False))
            t.add_row("slots written at least once %", _f(d["slots_used"]))
            t.add_row("tokens with write gate >= 0.5 %", _f(d["write_rate"]))
            for k, v in d["gate_by_kind"].items():
                t.add_row(f"  mean write gate at {k} tokens", _f(v, False))
            t.add_row("restricted mean slot lifetime (chunks)", _f(d["rmst"], False))
            t.add_row("mean decay gate per chunk", _f(d["decay_mean"], False))
            for k, v in d["decay_by_owner"].items():
                if not math.isnan(v["mean"]):
                    t.add_row(f"  decay after a write by a {k} token", _f(v, False))
            console.print(t)
    if "continual" in summary:
        cl = summary["continual"]
        t = Table(title=f"Experiment 2: continual learning, {cl['n_tasks']} tasks in sequence (GEM ACC / BWT, %), "
                        f"{seeds} seeds")
        for c in ("model", "training", "retention ACC", "retention BWT", "in-context ACC", "in-context BWT",
                  "retention ACC, state reset at test"):
            t.add_column(c, justify="right")
        for name in ("memnet", "transformer", "lstm"):
            for mode in ("sequential", "joint"):
                b = cl["models"].get(name, {}).get(mode)
                if not b:
                    continue
                lab = "sequential (fine-tune)" if mode == "sequential" else "joint (upper bound)"
                t.add_row(LABELS[name], lab, _f(b["retention"]["acc"]),
                          _f(b["retention"]["bwt"]) if "bwt" in b["retention"] else "-",
                          _f(b["in_context"]["acc"]), _f(b["in_context"]["bwt"]) if "bwt" in b["in_context"] else "-",
                          _f(b["retention_reset"]["acc"]) if "retention_reset" in b else "-")
        console.print(t)
    f = summary.get("forgetting")
    if f:
        t = Table(title="Experiment 3: learned forgetting over MemNet training (mean over seeds)")
        cols = ["step"] + [f"gate: {k}" for k in f["kinds"]] + ["read ent.", "lifetime", "decay", "read hit %", "acc %"]
        for c in cols:
            t.add_column(c, justify="right")
        for i, s in enumerate(f["steps"]):
            t.add_row(str(s), *[f"{g:.2f}" for g in f["gate_by_kind_mean"][i]], f"{f['read_entropy_mean'][i]:.2f}",
                      f"{f['rmst_mean'][i]:.2f}", f"{f['decay_mean_mean'][i]:.3f}", f"{100 * f['read_hit_mean'][i]:.1f}",
                      f"{100 * f['acc_mean'][i]:.1f}")
        console.print(t)


def _write_report(result: dict, out_dir: Path, console) -> None:
    """PNGs, memnet_bench.json and the tables of a run's (or a merge's) summary."""
    from . import plots

    summary = result["summary"]
    files = []
    if "recall" in summary:
        files += [plots.recall_plot(summary, out_dir)]
        if "forgetting" in summary:
            files += [plots.forgetting_plot(summary, out_dir), plots.survival_plot(summary, out_dir),
                      plots.heatmap_plot(summary["heatmap"], out_dir)]
    if "continual" in summary:
        files.append(plots.continual_plot(summary, out_dir))
    result["plots"] = files
    write_result(out_dir, "memnet_bench", result, quiet=True)
    print_tables(summary, console, result["seeds"])
    console.print(f"wall {result['wall_s']:.0f}s -> {out_dir / 'memnet_bench.json'}, {', '.join(files)}")


def _merge(a, argv, rec: RecallSettings, con: ContinualSettings, console) -> int:
    """--merge-jobs: aggregate earlier runs' job results as one run would; one-line error and exit 1 if they differ."""
    t0 = time.perf_counter()
    out_dir = Path(a.out)
    try:
        if any((Path(j).parent / "memnet_bench.json").resolve() == (out_dir / "memnet_bench.json").resolve()
               for j in a.merge_jobs):
            raise InvalidInputError("--merge-jobs: --out would overwrite the memnet_bench.json of a run being merged; "
                                    "pick another folder")
        results, rec, con, sources = merge_jobs(a.merge_jobs, rec, con)
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seeds = sorted({r["seed"] for r in results})
    groups = {}
    for r in results:
        groups.setdefault((r["experiment"], r["model"], r.get("mode")), set()).add(r["seed"])
    for key, got in sorted(groups.items(), key=str):
        if got != set(seeds):
            console.log(f"note: {' '.join(k for k in key if k)} has seeds {sorted(got)} only")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = aggregate(results, rec, con)
    exps = [e for e in ("recall", "continual") if any(r["experiment"] == e for r in results)]
    specs = {e: model_specs(S.task.vocab_size, S.task.window, S.size) for e, S in (("recall", rec), ("continual", con))
             if e in exps}
    same = {}
    for k in ("device", "gpu", "torch"):  # one value if the runs agree, else the list of them
        v = list(dict.fromkeys(s.get(k) for s in sources))
        same[k] = v[0] if len(v) == 1 else v
    console.log(f"merged {len(results)} job results from {len(sources)} files: "
                + "; ".join(f"{s['path']} ({s['jobs']} jobs)" for s in sources))
    cmd = " ".join(str(x) for x in (argv if argv is not None else sys.argv[1:]))
    result = dict(command="sam bench memnet " + cmd, merged_from=sources, **same, seeds=len(seeds),
                  preset=_preset_of(rec, con), settings=dict(recall=asdict(rec), continual=asdict(con)),
                  model_specs=specs, scheduling=dict(merged=True, errors={}, unfinished=[]), summary=summary,
                  wall_s=time.perf_counter() - t0)
    _write_report(result, out_dir, console)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="sam bench memnet", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default="full", help=presets.__doc__.replace("%", "%%"))
    p.add_argument("--smoke", action="store_true", help="same as --preset smoke (CI: seconds on one CPU thread)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("results/memnet"))
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    p.add_argument("--workers", type=int, default=None, help="parallel job processes (default: 1 on CPU, all on CUDA)")
    p.add_argument("--experiments", default="recall,continual", help="comma list of recall, continual")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--steps", type=int, default=None, help="recall training steps (overrides the preset)")
    p.add_argument("--steps-per-task", type=int, default=None, help="continual steps per task (overrides the preset)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--eval-batches", type=int, default=None, help="evaluation batches (overrides the preset)")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds after which unfinished jobs are stopped and the finished ones reported")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training per job: time a few steps of all jobs together and shrink the step "
                        "counts (same for every model) to fit")
    p.add_argument("--merge-jobs", nargs="+", type=Path, default=None, metavar="JSONL",
                   help="train nothing: aggregate the memnet_jobs.jsonl of earlier runs with the same settings (read "
                        "from the memnet_bench.json beside each, else the preset and step options) into --out")
    a = p.parse_args(argv)
    from rich.console import Console

    console = Console(width=160) if not Console().is_terminal else Console()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.seeds < 1:
        p.error("--seeds must be >= 1")
    preset = "smoke" if a.smoke else a.preset
    rec, con = presets(preset)
    if a.steps:
        rec = replace(rec, steps=a.steps)
    if a.steps_per_task:
        con = replace(con, steps_per_task=a.steps_per_task)
    if a.batch:
        rec, con = replace(rec, batch=a.batch), replace(con, batch=a.batch)
    if a.eval_batches:
        rec, con = replace(rec, eval_batches=a.eval_batches), replace(con, eval_batches=a.eval_batches)
    if a.merge_jobs:
        return _merge(a, argv, rec, con, console)
    exps = [e.strip() for e in a.experiments.split(",") if e.strip()]
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [e for e in exps if e not in ("recall", "continual")] + [m for m in models if m not in MODELS]
    if bad:
        p.error(f"unknown experiments/models: {bad}")
    jobs = []
    for seed in range(a.seeds):
        for name in models:
            if "recall" in exps:
                jobs.append(dict(experiment="recall", model=name, seed=seed, settings=rec))
            if "continual" in exps:
                for mode in ("sequential", "joint"):
                    jobs.append(dict(experiment="continual", model=name, seed=seed, mode=mode, settings=con))
    # longest first, so a pool with fewer workers than jobs does not end on a long tail
    jobs.sort(key=lambda j: (j["model"] != "memnet", j["experiment"] != "recall"))
    for i, j in enumerate(jobs):
        j["id"] = i
    workers = a.workers or (1 if device == "cpu" else len(jobs))
    if a.time_budget and workers < len(jobs):
        p.error("--time-budget runs every job at once: use --workers >= the number of jobs")
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    specs = {e: model_specs(s.task.vocab_size, s.task.window, s.size) for e, s in (("recall", rec), ("continual", con))
             if e in exps}
    console.log("parameters: " + "; ".join(f"{e}: " + ", ".join(f"{m} {v['params']:,}" for m, v in s.items())
                                           for e, s in specs.items()) + f"  | device {device}, {len(jobs)} jobs")
    try:
        results, info = run_jobs(jobs, device, workers, a.time_budget, out_dir, console, a.deadline)
    finally:
        torch.set_num_threads(n_threads)
    if "recall_steps" in info:
        rec, con = replace(rec, steps=info["recall_steps"]), replace(con, steps_per_task=info["steps_per_task"])
    summary = aggregate(results, rec, con)
    result = dict(command="sam bench memnet " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
                  device=device, gpu=torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                  torch=torch.__version__, seeds=a.seeds, preset=preset,
                  settings=dict(recall=asdict(rec), continual=asdict(con)), model_specs=specs, scheduling=info,
                  summary=summary, wall_s=time.perf_counter() - t0)
    _write_report(result, out_dir, console)
    if info["errors"] or info["unfinished"]:
        console.print(f"[red]{len(info['errors'])} jobs failed, {len(info['unfinished'])} unfinished: "
                      f"the tables above lack them[/red]")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
