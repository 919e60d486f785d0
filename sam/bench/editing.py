"""Sequential-editing benchmark on zsRE: edit T facts one after another, then evaluate all of them.

One sequential run goes up to the largest T; the evaluation at each checkpoint T sees exactly the
state a fresh run of T edits would (the edits are deterministic and in the same order).
Per checkpoint, teacher-forced token accuracy (EasyEdit's definition) and greedy exact match for
  Rel  the edit prompt -> the new answer,
  Gen  its paraphrase -> the new answer,
  Loc  an unrelated question: the edited model's predictions vs the unedited model's,
plus seconds per edit, inference overhead against the unedited model, and bytes stored per edit.
zsRE repeats subjects with conflicting answers (the same question asked of the same entity with a
different `alt`); a paraphrase can only follow one of them, so Gen is also given over the records
whose subject is edited once ("Gen, unique subject").
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sam.core.editor import EditorConfig, MemoirEditor

console = Console(stderr=True)


def default_data() -> Path:
    """The full 3,939-record file in ../shared when present, else the 200-record sample in data/."""
    repo = Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "data" / "zsre" / "_full_prefix.json"
    return shared if shared.exists() else repo / "data" / "zsre_sample.json"


def load_records(path: Path, n: int) -> list[dict]:
    """The first n usable records; records with an empty field are skipped with a message."""
    records = json.loads(Path(path).read_text())
    usable = []
    for i, r in enumerate(records):
        missing = [k for k in ("src", "rephrase", "alt", "loc", "loc_ans") if not str(r.get(k, "")).strip()]
        if missing:
            console.print(f"[yellow]skipping zsRE record {i}: empty {', '.join(missing)}[/]")
            continue
        usable.append(r | {"index": i})
        if len(usable) == n:
            break
    if len(usable) < n:
        console.print(f"[yellow]only {len(usable)} usable records in {path} (asked for {n})[/]")
    return usable


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _teacher_forced(ed: MemoirEditor, pairs, memory=True, bs=32):
    out = []
    for chunk in _batches(pairs, bs):
        out.extend(ed.predict_batch(chunk, memory=memory))
    return out


def _generated(ed: MemoirEditor, prompts, lengths, memory=True, bs=32):
    out = []
    for chunk, lens in zip(_batches(prompts, bs), _batches(lengths, bs)):
        out.extend(ed.generate_tokens(chunk, max_new_tokens=max(lens), memory=memory))
    return out


def evaluate(ed: MemoirEditor, recs: list[dict], subjects: Counter, generation: bool = True, bs: int = 32,
             neighbours: list[dict] = ()) -> dict:
    """neighbours: unedited records; their questions share templates with the edited ones, a harder
    locality test than zsRE's `loc` (natural questions of another form)."""
    rel = _teacher_forced(ed, [(r["src"], r["alt"]) for r in recs], bs=bs)
    gen = _teacher_forced(ed, [(r["rephrase"], r["alt"]) for r in recs], bs=bs)
    loc_pairs = [(r["loc"], r["loc_ans"]) for r in recs]
    loc_post = _teacher_forced(ed, loc_pairs, bs=bs)
    loc_pre = _teacher_forced(ed, loc_pairs, memory=False, bs=bs)
    acc = lambda pt: float((pt[0] == pt[1]).float().mean())
    unique = [i for i, r in enumerate(recs) if subjects[r["subject"]] == 1]
    m = {
        "rel_tf": statistics.fmean(acc(x) for x in rel),
        "gen_tf": statistics.fmean(acc(x) for x in gen),
        "gen_tf_unique_subject": statistics.fmean(acc(gen[i]) for i in unique) if unique else None,
        "n_unique_subject": len(unique),
        "loc_tf": statistics.fmean(float((a[0] == b[0]).float().mean()) for a, b in zip(loc_post, loc_pre)),
    }
    if neighbours:
        pairs = [(r["src"], r["pred"] or r["alt"]) for r in neighbours]
        post, pre = _teacher_forced(ed, pairs, bs=bs), _teacher_forced(ed, pairs, memory=False, bs=bs)
        m["loc_neighbour_tf"] = statistics.fmean(float((a[0] == b[0]).float().mean()) for a, b in zip(post, pre))
        m["n_neighbours"] = len(pairs)
    if generation:
        lens = [len(t) for _, t in rel]
        g_rel = _generated(ed, [r["src"] for r in recs], lens, bs=bs)
        g_gen = _generated(ed, [r["rephrase"] for r in recs], lens, bs=bs)
        loc_lens = [len(t) for _, t in loc_pre]
        g_loc = _generated(ed, [r["loc"] for r in recs], loc_lens, bs=bs)
        g_loc0 = _generated(ed, [r["loc"] for r in recs], loc_lens, memory=False, bs=bs)
        em = lambda g, t: float(g[: len(t)] == t.tolist())
        m["rel_em"] = statistics.fmean(em(g, t) for g, (_, t) in zip(g_rel, rel))
        m["gen_em"] = statistics.fmean(em(g, t) for g, (_, t) in zip(g_gen, rel))
        m["gen_em_unique_subject"] = statistics.fmean(em(g_gen[i], rel[i][1]) for i in unique) if unique else None
        m["loc_em"] = statistics.fmean(float(a == b) for a, b in zip(g_loc, g_loc0))
    return m


def inference_overhead(ed: MemoirEditor, recs: list[dict], n: int = 96, repeats: int = 3, bs: int = 32) -> dict:
    """Teacher-forced forward time over a mix of edited and unrelated prompts, memory on vs off."""
    pairs = [(r["src"], r["alt"]) for r in recs[: n // 2]] + [(r["loc"], r["loc_ans"]) for r in recs[: n // 2]]
    def timed(memory):
        best = []
        for _ in range(repeats):
            if ed.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            _teacher_forced(ed, pairs, memory=memory, bs=bs)
            if ed.device.type == "cuda":
                torch.cuda.synchronize()
            best.append(time.perf_counter() - t)
        return min(best)
    timed(True)  # warm-up
    off, on = timed(False), timed(True)
    return {"seconds_unedited": off, "seconds_edited": on, "overhead": on / off - 1.0, "prompts": len(pairs)}


def _store_bytes(ed: MemoirEditor) -> int:
    s = ed.stats()
    return s["db_bytes"] + s["memory_bytes"]


def run(sizes: list[int], data: Path | None = None, model: str = "default", device: str = "cpu",
        config: EditorConfig | None = None, compare_naive: int = 5, generation: bool = True,
        store: Path | None = None, batch_size: int = 32, partial: Path | None = None,
        n_neighbours: int = 200, generation_max: int | None = None) -> dict:
    """partial: a JSON path rewritten after every checkpoint, so a cut-short run keeps what it measured.
    Neighbours at checkpoint T are the next n_neighbours records, not yet edited at that point.
    generation_max: skip greedy exact match at checkpoints past this T (it is the slow part)."""
    sizes = sorted(set(sizes))
    config = config or EditorConfig()
    pool = load_records(data or default_data(), sizes[-1] + n_neighbours)
    usable = min(len(pool), sizes[-1])
    if usable < sizes[-1]:
        console.print(f"[yellow]T={sizes[-1]} asked for; {usable} usable records: the last checkpoint is T={usable}[/]")
        sizes = sorted({min(s, usable) for s in sizes})
    recs = pool[:usable]
    tmp = Path(tempfile.mkdtemp(prefix="sam-bench-"))
    store = store or tmp / "store"
    result = {"model": model, "device": device, "config": asdict(config), "sizes": sizes,
              "data": str(data or default_data()), "host": platform.node(),
              "threads": torch.get_num_threads(), "checkpoints": []}
    try:
        ed = MemoirEditor.open(store, model=model, device=device, config=config)
        result["layer"] = ed.layer
        seconds, steps, success = [], [], []
        with Progress(TextColumn("[bold]editing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=console) as bar:
            task = bar.add_task("edit", total=len(recs), info="")
            for i, r in enumerate(recs, start=1):
                res = ed.edit(r["src"], r["alt"], source="zsre")
                seconds.append(res.seconds)
                steps.append(res.steps)
                success.append(res.success)
                bar.update(task, advance=1, info=f"{res.seconds:.2f}s {res.steps} steps, {ed.memory.num_experts} experts")
                if i in sizes:
                    bar.update(task, info=f"evaluating T={i}")
                    done = recs[:i]
                    gen_here = generation and (generation_max is None or i <= generation_max)
                    cp = {"T": i, **evaluate(ed, done, Counter(r["subject"] for r in done), gen_here, batch_size,
                                             pool[i: i + n_neighbours]),
                          "median_edit_seconds": statistics.median(seconds),
                          "mean_edit_seconds": statistics.fmean(seconds),
                          "median_steps": statistics.median(steps), "train_success": statistics.fmean(success),
                          "experts": ed.memory.num_experts,
                          "bytes_per_edit": _store_bytes(ed) / i,
                          "sparse_bytes_per_edit": ed.fingerprinter.top_k * (ed.memory.out_features * 4 + 8),
                          **{f"infer_{k}": v for k, v in inference_overhead(ed, done, bs=batch_size).items()}}
                    result["checkpoints"].append(cp)
                    console.print(_row_text(cp))
                    if partial is not None:
                        partial.write_text(json.dumps(result, indent=2))
        ed.close()
        if compare_naive:
            result["naive_vs_fast"] = compare_loops(recs[:compare_naive], model, device, config, tmp, seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def compare_loops(recs, model, device, config, tmp: Path, fast_seconds: list[float]) -> dict:
    """The same first edits with the naive loop (whole model every step), for the side-by-side timing."""
    naive_cfg = EditorConfig(**{**asdict(config), "fast": False})
    seconds = []
    with MemoirEditor.open(tmp / "naive", model=model, device=device, config=naive_cfg) as ed:
        for r in recs:
            seconds.append(ed.edit(r["src"], r["alt"]).seconds)
    fast = fast_seconds[: len(recs)]
    return {"edits": len(recs), "naive_median_seconds": statistics.median(seconds),
            "fast_median_seconds": statistics.median(fast),
            "speedup": statistics.median(seconds) / statistics.median(fast)}


def _row_text(cp: dict) -> str:
    return (f"T={cp['T']}: Rel {cp['rel_tf']:.3f} Gen {cp['gen_tf']:.3f} (unique subject "
            f"{cp['gen_tf_unique_subject'] or float('nan'):.3f}) Loc {cp['loc_tf']:.3f} "
            f"Loc-neighbour {cp.get('loc_neighbour_tf', float('nan')):.3f} "
            f"(EM {cp.get('rel_em', float('nan')):.3f}/{cp.get('gen_em', float('nan')):.3f}/"
            f"{cp.get('loc_em', float('nan')):.3f}), {cp['median_edit_seconds']:.2f} s/edit, "
            f"{cp['experts']} experts, overhead {cp['infer_overhead']:+.1%}")


def render(result: dict) -> Table:
    t = Table(title=f"sequential zsRE editing — {result['model']} on {result['device']}, layer {result.get('layer')}")
    cols = ["T", "Rel", "Gen", "Gen uniq", "Loc", "Loc nbr", "Rel EM", "Gen EM", "Loc EM", "s/edit (median)",
            "experts", "overhead", "bytes/edit"]
    for c in cols:
        t.add_column(c, justify="right")
    f = lambda v: "—" if v is None else f"{v:.3f}"
    for cp in result["checkpoints"]:
        t.add_row(str(cp["T"]), f(cp["rel_tf"]), f(cp["gen_tf"]), f(cp["gen_tf_unique_subject"]), f(cp["loc_tf"]),
                  f(cp.get("loc_neighbour_tf")),
                  f(cp.get("rel_em")), f(cp.get("gen_em")), f(cp.get("loc_em")),
                  f"{cp['median_edit_seconds']:.3f}", str(cp["experts"]), f"{cp['infer_overhead']:+.1%}",
                  f"{cp['bytes_per_edit'] / 1024:.0f} KiB")
    return t


def main(sizes: str = "1,10,100,1000", device: str = "cpu", out: Path = Path("results/edit"),
         model: str = "default", data: Path | None = None, compare_naive: int = 5, generation: bool = True,
         json_out: bool = False, tag: str | None = None, generation_max: int | None = None, **overrides) -> dict:
    """Run, print a rich table (or JSON) and write results/edit/<tag>.json."""
    config = EditorConfig(**{k: v for k, v in overrides.items() if v is not None})
    size_list = [int(s) for s in str(sizes).split(",") if s.strip()]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = tag or f"edit_{device.split(':')[0]}_T{max(size_list)}"
    path = out / f"{name}.json"
    result = run(size_list, data, model, device, config, compare_naive, generation, partial=path,
                 generation_max=generation_max)
    path.write_text(json.dumps(result, indent=2))
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        Console(width=200).print(render(result))
        if "naive_vs_fast" in result:
            nf = result["naive_vs_fast"]
            Console().print(f"edit loop, first {nf['edits']} edits: naive {nf['naive_median_seconds']:.2f} s, "
                            f"fast {nf['fast_median_seconds']:.2f} s (x{nf['speedup']:.1f})")
        Console().print(f"wrote {path}")
    return result
