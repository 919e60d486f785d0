"""Sequential-editing benchmark: edit T facts one after another (or in batches), evaluate at checkpoints.

    sam bench edit --sizes 1,10,100,1000                   # zsRE, the model's chat template
    sam bench edit --sizes 1000 --format line              # the same with "question + newline" prompts
    sam bench edit --natural                               # the hand-written natural set
    sam bench edit --synthetic 50000 --sizes 1000,10000,50000 --store runs/s50k --max-minutes 9   # resumable

One run edits up to the largest T; the evaluation at checkpoint T sees exactly the state a fresh run
of T edits would. Per checkpoint, teacher-forced token accuracy (EasyEdit's definition) and greedy
exact match (EM) for
  Rel  the edited question -> the new answer,
  Gen  its paraphrase -> the new answer,
  Loc  an unrelated question: the edited model's predictions vs the unedited model's,
  Loc nbr  questions of the same form about subjects not edited (the next zsRE records; the natural
       and synthetic sets' neighbours), edited vs unedited;
plus routing itself (does a paraphrase route to its own edit; does anything fire on a neighbour),
seconds per edit, bytes stored per edit against the sparse delta, RAM, the time to open the store,
and inference overhead. zsRE asks the same question of the same subject with conflicting answers;
a later answer supersedes the earlier edit, so Rel and Gen are also given over the latest edit of
each question ("latest": the facts whose own edit is still the active one). Bytes per edit count every
stored edit (superseded and reverted ones are kept, for undo). With --store the run keeps its store and results and resumes where it
stopped (--max-minutes stops it cleanly), so one run can span several GPU calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sam.bench.facts import Fact, default_zsre, natural, synthetic, zsre
from sam.bench.results import write_result
from sam.config import EditorConfig, add_editor_options, editor_config_from
from sam.core.editor import MemoirEditor
from sam.core.failpoints import failpoint
from sam.core.prompts import normalize
from sam.core.store import Store

console = Console(stderr=True)
PROGRESS_KEY = "bench_progress"  # store meta: facts processed so far (a resumed run starts there)
PER_EDIT = ("edit_seconds", "edit_steps", "train_success")  # the result's per-fact lists, in editing order


class Journal:
    """The per-fact records (timings, steps, edit ids) of the chunks edited since the result JSON was last
    written, one JSON line per chunk, appended before the store's progress moves: a run killed between
    checkpoints resumes with every fact's record, not only those of the last checkpoint. Lines at or past
    the store's progress (a chunk whose progress was never recorded is edited again) are ignored."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def replay(self, result: dict, done: int) -> None:
        """Bring `result`'s per-fact lists up to `done` facts from the journal's lines."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                break
            start = entry["start"]
            if start == len(result["edit_seconds"]) and start + len(entry["edit_seconds"]) <= done:
                for key in PER_EDIT:
                    result[key].extend(entry[key])
                result["edit_of"].update(entry["edit_of"])

    def append(self, result: dict, start: int, facts: list[Fact]) -> None:
        """Record the chunk of `facts` that began at fact `start`."""
        entry = {"start": start, **{k: result[k][start:] for k in PER_EDIT},
                 "edit_of": {str(f.index): result["edit_of"][str(f.index)] for f in facts
                             if str(f.index) in result["edit_of"]}}
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()  # in the OS's hands: a killed process loses none of it

    def reset(self) -> None:
        """The result JSON holds everything now: the journal starts empty."""
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _tf(ed: MemoirEditor, pairs, memory=True, bs=32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for chunk in _batches(pairs, bs):
        out.extend(ed.predict_batch(chunk, memory=memory))
    return out


def _generated(ed: MemoirEditor, prompts, lengths, memory=True, bs=32) -> list[list[int]]:
    out = []
    for chunk, lens in zip(_batches(prompts, bs), _batches(lengths, bs)):
        gens = ed.answer(chunk, max_new_tokens=max(lens), memory=memory)
        out.extend(ed.tokenizer(g.text, add_special_tokens=False)["input_ids"] if g.text else [] for g in gens)
    return out


def _acc(pt) -> float:
    return float((pt[0] == pt[1]).float().mean())


def _same(a, b) -> float:
    return float((a[0] == b[0]).float().mean())


def _mean(xs) -> float | None:
    xs = list(xs)
    return statistics.fmean(xs) if xs else None


def current_edits(ed: MemoirEditor, edit_of: dict) -> tuple[dict[int, int], set[int]]:
    """For each fact (by index): the active edit that answers it now (its own, or the later edit of the same
    question that superseded it), and the facts whose own edit is still the active one ("latest")."""
    rows = ed.edits(None)
    successor = {r.supersedes: r.id for r in rows if r.supersedes is not None}
    active = {r.id for r in rows if r.status == "active"}
    current, latest = {}, set()
    for index, edit_id in edit_of.items():
        e, seen = edit_id, set()
        while e not in active and e in successor and e not in seen:
            seen.add(e)
            e = successor[e]
        if e in active:
            current[int(index)] = e
        if edit_id in active:
            latest.add(int(index))
    return current, latest


def evaluate(ed: MemoirEditor, facts: list[Fact], edit_of: dict, neighbours: list[str], generation: bool,
             bs: int = 32) -> dict:
    """Rel/Gen/Loc (teacher-forced and EM), neighbour locality and routing over `facts` (all edited)."""
    current, latest = current_edits(ed, edit_of)
    render = ed.render
    q = [render(f.question) for f in facts]
    p = [render(f.paraphrases[0]) for f in facts]
    loc = [render(f.loc) for f in facts]
    rel = _tf(ed, list(zip(q, [f.target for f in facts])), bs=bs)
    gen = _tf(ed, list(zip(p, [f.target for f in facts])), bs=bs)
    loc_answers = [a.text or "." for a in _answers(ed, loc, bs, memory=False)]
    loc_pairs = list(zip(loc, loc_answers))
    loc_post, loc_pre = _tf(ed, loc_pairs, bs=bs), _tf(ed, loc_pairs, memory=False, bs=bs)
    is_latest = [f.index in latest for f in facts]
    m = {
        "n_eval": len(facts),
        "rel_tf": _mean(_acc(x) for x in rel),
        "gen_tf": _mean(_acc(x) for x in gen),
        "rel_tf_latest": _mean(_acc(x) for x, ok in zip(rel, is_latest) if ok),
        "gen_tf_latest": _mean(_acc(x) for x, ok in zip(gen, is_latest) if ok),
        "n_latest": sum(is_latest),
        "loc_tf": _mean(_same(a, b) for a, b in zip(loc_post, loc_pre)),
    }
    # routing: a paraphrase should fire the edit that answers its fact now; a neighbour should fire nothing
    routed = [d.edit_id for chunk in _batches(p, 64) for d in ed.decide(chunk)]
    m["para_routed_own"] = _mean(float(e is not None and e == current.get(f.index)) for e, f in zip(routed, facts))
    if neighbours:
        nq = [render(x) for x in neighbours]
        fired = [d.edit_id is not None for chunk in _batches(nq, 64) for d in ed.decide(chunk)]
        m["nbr_silent"] = 1.0 - _mean(fired)
        nb_answers = [a.text or "." for a in _answers(ed, nq, bs, memory=False)]
        pairs = list(zip(nq, nb_answers))
        post, pre = _tf(ed, pairs, bs=bs), _tf(ed, pairs, memory=False, bs=bs)
        m["loc_nbr_tf"] = _mean(_same(a, b) for a, b in zip(post, pre))
        m["n_neighbours"] = len(pairs)
    if generation:
        lens = [len(t) for _, t in rel]
        g_rel = _generated(ed, q, lens, bs=bs)
        g_gen = _generated(ed, p, lens, bs=bs)
        em = [float(g[: len(t)] == t.tolist()) for g, (_, t) in zip(g_rel, rel)]
        em_gen = [float(g[: len(t)] == t.tolist()) for g, (_, t) in zip(g_gen, rel)]
        m["rel_em"], m["gen_em"] = _mean(em), _mean(em_gen)
        m["rel_em_latest"] = _mean(x for x, ok in zip(em, is_latest) if ok)
        m["gen_em_latest"] = _mean(x for x, ok in zip(em_gen, is_latest) if ok)
        loc_lens = [len(t) for _, t in loc_pre]
        m["loc_em"] = _mean(float(a == b) for a, b in zip(_generated(ed, loc, loc_lens, bs=bs),
                                                            _generated(ed, loc, loc_lens, memory=False, bs=bs)))
    return m


def _answers(ed: MemoirEditor, prompts, bs: int, memory: bool = True, n: int = 12):
    out = []
    for chunk in _batches(prompts, bs):
        out.extend(ed.answer(chunk, max_new_tokens=n, memory=memory))
    return out


def inference_overhead(ed: MemoirEditor, facts: list[Fact], n: int = 96, repeats: int = 3, bs: int = 32) -> dict:
    """Teacher-forced forward time over a mix of edited and unrelated questions, memory on vs off."""
    half = facts[: n // 2]
    pairs = [(ed.render(f.question), f.target) for f in half] + [(ed.render(f.loc), "Yes") for f in half]

    def timed(memory):
        best = []
        for _ in range(repeats):
            if ed.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            _tf(ed, pairs, memory=memory, bs=bs)
            if ed.device.type == "cuda":
                torch.cuda.synchronize()
            best.append(time.perf_counter() - t)
        return min(best)

    timed(True)  # warm-up
    off, on = timed(False), timed(True)
    return {"seconds_unedited": off, "seconds_edited": on, "overhead": on / off - 1.0, "prompts": len(pairs)}


def open_seconds(store: Path) -> float:
    """Opening the store read-only and loading every active mask into a routing index (no model)."""
    from sam.memory.mask_index import MaskIndex

    t = time.perf_counter()
    with Store(store, read_only=True) as st:
        ids, cols = st.active_columns()
        MaskIndex(int(st.meta("d_ff")), int(st.meta("top_k"))).add(ids, cols)
    return time.perf_counter() - t


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in Path(store).glob("edits.sqlite*"))


def load_facts(args) -> tuple[list[Fact], str]:
    if args.synthetic and args.zsre_first:  # every usable zsRE record, then synthetic facts up to N
        first, _ = load_facts(argparse.Namespace(**{**vars(args), "synthetic": None, "zsre_first": False}))
        rest = synthetic(max(args.synthetic - len(first), 0), seed=args.data_seed)
        offset = max((f.index for f in first), default=-1) + 1
        for f in rest:
            f.index += offset
        return (first + rest)[: args.synthetic], f"zsre+synthetic:{args.synthetic}:seed{args.data_seed}"
    if args.synthetic:
        return synthetic(args.synthetic, seed=args.data_seed), f"synthetic:{args.synthetic}:seed{args.data_seed}"
    if args.natural:
        return natural(), "natural"
    path = args.data or default_zsre()
    skipped: list[str] = []
    facts = zsre(path, log=skipped.append)
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} zsRE records with an empty field[/]")
    return facts, f"zsre:{Path(path).name}"


def run(args) -> dict:
    facts, dataset = load_facts(args)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()} or {len(facts)})
    if sizes[-1] > len(facts):
        console.print(f"[yellow]T={sizes[-1]} asked for; {len(facts)} facts: the last checkpoint is T={len(facts)}[/]")
        sizes = sorted({min(s, len(facts)) for s in sizes})
    total = sizes[-1]
    out = Path(args.out)
    tag = args.tag or f"edit_{dataset.split(':')[0]}_{args.format}_{args.device.split(':')[0]}_T{total}"
    path = out / f"{tag}.json"
    store = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="sam-bench-")) / "store"
    config = editor_config_from(args)
    result = {"model": args.model, "device": args.device, "dtype": args.dtype, "format": args.format,
              "dataset": dataset, "config": config.model_dump(), "sizes": sizes, "batch": args.batch,
              "host": platform.node(), "threads": torch.get_num_threads(), "checkpoints": [],
              **{k: [] for k in PER_EDIT}, "edit_of": {}}
    if path.exists() and args.store and Store.exists(store):
        previous = json.loads(path.read_text())
        if previous.get("dataset") == dataset and previous.get("config") == result["config"]:
            result = previous  # resume: its checkpoints and per-edit timings carry on
    journal = Journal(out / f"{tag}.journal.jsonl")
    started = time.perf_counter()
    ed = MemoirEditor.open(store, model=args.model, device=args.device, config=config, prompt_format=args.format,
                           dtype=args.dtype)
    try:
        result["layer"], result["format"] = ed.layer, ed.prompts.style
        ed.trainer.graph_steps = ed.trainer.graph_steps and args.cuda_graphs
        result["cuda_graphs"] = ed.trainer.graph_steps
        done = int(ed.store.meta(PROGRESS_KEY, "0"))
        if done:
            console.print(f"resuming at fact {done} of {total} ({len(ed.router)} active edits in {store})")
            journal.replay(result, done)
        else:
            journal.reset()  # a fresh store: an older run's records are not this one's
        if len(result["edit_seconds"]) != done:
            raise SystemExit(f"{path} records {len(result['edit_seconds'])} facts and its journal no more, but the "
                             f"store has {done}: use a fresh --store or --tag")
        sparse = ed.fingerprinter.top_k * (ed.memory.out_features * 4 + 4)
        with Progress(TextColumn("[bold]editing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=console) as bar:
            task = bar.add_task("edit", total=total, completed=done, info="")
            i = done
            while i < total:
                if args.max_minutes and time.perf_counter() - started > 60 * args.max_minutes:
                    console.print(f"[yellow]stopping at T={i} (--max-minutes {args.max_minutes}); run the same "
                                  f"command again to resume[/]")
                    result["paused_at"] = i
                    if i and all(cp["T"] != i for cp in result["checkpoints"]):  # report the state it stopped in
                        cp = checkpoint(ed, facts, i, args, store, sparse, result)
                        cp["paused"] = True
                        result["checkpoints"].append(cp)
                        console.print(_row_text(cp))
                    break
                nxt = next(s for s in sizes if s > i)
                chunk = facts[i: min(i + args.batch, nxt)]
                _edit_chunk(ed, chunk, result)
                journal.append(result, i, chunk)  # before the progress: a fact counted done has its record
                i += len(chunk)
                ed.store.set_meta(**{PROGRESS_KEY: i})
                failpoint("bench.chunk.after")
                bar.update(task, completed=i, info=f"{result['edit_seconds'][-1]:.2f}s/edit")
                if i in sizes and all(cp["T"] != i for cp in result["checkpoints"]):
                    bar.update(task, info=f"evaluating T={i}")
                    cp = checkpoint(ed, facts, i, args, store, sparse, result)
                    result["checkpoints"].append(cp)
                    console.print(_row_text(cp))
                    write_result(out, tag, result, quiet=True)  # each checkpoint survives what follows
                    journal.reset()
            else:
                result.pop("paused_at", None)
        if ed.trainer.graph_steps:
            result["graphs_captured"], result["graph_error"] = ed.trainer.graphs.captured, ed.trainer.graphs.error
    finally:
        journal.close()
        ed.close()
    if args.compare_naive and "naive_vs_fast" not in result and "paused_at" not in result:
        result["naive_vs_fast"] = compare_loops(facts[: args.compare_naive], args, config, result["edit_seconds"])
    result["path"] = str(write_result(out, tag, result, quiet=True))
    journal.reset()
    if not args.store:
        import shutil

        shutil.rmtree(store.parent, ignore_errors=True)
    return result


def _edit_chunk(ed: MemoirEditor, chunk: list[Fact], result: dict) -> None:
    """Edit the facts of a chunk: one at a time, or trained together (--batch) then committed one by one."""
    if len(chunk) == 1:
        f = chunk[0]
        r = ed.edit(ed.render(f.question), f.target, source=f"bench:{f.index}")
        result["edit_of"][str(f.index)] = r.edit_id
        result["edit_seconds"].append(r.seconds)
        result["edit_steps"].append(r.steps)
        result["train_success"].append(r.success)
        return
    fresh = []
    for f, old in zip(chunk, ed.existing_many([ed.render(f.question) for f in chunk])):
        if old is not None and normalize(old.target) == normalize(f.target):  # the same correction again
            result["edit_of"][str(f.index)] = old.id
            result["edit_seconds"].append(0.0)
            result["edit_steps"].append(0)
            result["train_success"].append(True)
        else:
            fresh.append(f)
    pending = ed.train_many([(ed.render(f.question), f.target) for f in fresh], source="bench") if fresh else []
    for p, f in zip(pending, fresh):
        p.source = f"bench:{f.index}"
    kept = [(p, f) for p, f in zip(pending, fresh) if p.outcome.finite]
    for r, (_, f) in zip(ed.commit_many([p for p, _ in kept]), kept):
        result["edit_of"][str(f.index)] = r.edit_id
    for p in pending:
        result["edit_seconds"].append(p.seconds)
        result["edit_steps"].append(p.outcome.steps)
        result["train_success"].append(p.success)


def checkpoint(ed: MemoirEditor, facts: list[Fact], T: int, args, store: Path, sparse: int, result: dict) -> dict:
    edited = facts[:T]
    rng = random.Random(T)
    sample = edited if len(edited) <= args.eval_sample else sorted(rng.sample(edited, args.eval_sample),
                                                                       key=lambda f: f.index)
    # the sets' own neighbours (never edited); for zsRE the next records, not edited yet, which share
    # templates with the edited ones
    neighbours = [q for f in sample if f.neighbours for q in f.neighbours[:1]][: args.neighbours]
    if len(neighbours) < args.neighbours:  # questions about subjects no edit is about
        edited_subjects = {f.subject for f in edited}
        neighbours += [f.question for f in facts[T:] if not f.neighbours and f.subject not in edited_subjects][
            : args.neighbours - len(neighbours)]
    gen_here = args.generation and (args.generation_max is None or T <= args.generation_max)
    secs = result["edit_seconds"][:T]
    n_active = len(ed.router)
    n_stored = len(ed.edits(None))
    return {"T": T, **evaluate(ed, sample, result["edit_of"], neighbours, gen_here, args.batch_size),
            "median_edit_seconds": statistics.median(secs), "mean_edit_seconds": statistics.fmean(secs),
            "median_steps": statistics.median(result["edit_steps"][:T]),
            "train_success": statistics.fmean(result["train_success"][:T]),
            "active_edits": n_active, "stored_edits": n_stored, "bytes_per_edit": store_bytes(store) / max(n_stored, 1),
            "sparse_bytes_per_edit": sparse, "rss_mb": rss_mb(), "open_store_seconds": open_seconds(store),
            **{f"infer_{k}": v for k, v in inference_overhead(ed, sample, bs=args.batch_size).items()}}


def compare_loops(facts: list[Fact], args, config: EditorConfig, fast_seconds: list[float]) -> dict:
    """The same first edits with the naive loop (whole model every step), for the side-by-side timing."""
    naive = config.model_copy(update={"fast": False})
    seconds = []
    with tempfile.TemporaryDirectory() as tmp, MemoirEditor.open(Path(tmp) / "naive", model=args.model,
                                                                device=args.device, config=naive,
                                                                prompt_format=args.format, dtype=args.dtype) as ed:
        for f in facts:
            seconds.append(ed.edit(ed.render(f.question), f.target).seconds)
    fast = fast_seconds[: len(facts)]
    return {"edits": len(facts), "naive_median_seconds": statistics.median(seconds),
            "fast_median_seconds": statistics.median(fast),
            "speedup": statistics.median(seconds) / statistics.median(fast)}


def _fmt(v, spec=".3f") -> str:
    return "—" if v is None else format(v, spec)


def _row_text(cp: dict) -> str:
    return (f"T={cp['T']}: Rel {_fmt(cp['rel_tf'])} Gen {_fmt(cp['gen_tf'])} (latest {_fmt(cp['rel_tf_latest'])}/"
            f"{_fmt(cp['gen_tf_latest'])}) "
            f"Loc {_fmt(cp['loc_tf'])} Loc-nbr {_fmt(cp.get('loc_nbr_tf'))} nbr-silent {_fmt(cp.get('nbr_silent'))} "
            f"para->own {_fmt(cp['para_routed_own'])} (EM {_fmt(cp.get('rel_em'))}/{_fmt(cp.get('gen_em'))}/"
            f"{_fmt(cp.get('loc_em'))}), {cp['median_edit_seconds']:.3f} s/edit, "
            f"overhead {cp['infer_overhead']:+.1%}, {cp['bytes_per_edit'] / 1024:.0f} KiB/edit")


def render(result: dict) -> Table:
    t = Table(title=f"sequential editing — {result['dataset']}, {result['model']} ({result['format']} prompts) on "
                    f"{result['device']}, layer {result.get('layer')}, batch {result.get('batch', 1)}")
    cols = [("T", "T"), ("Rel", "rel_tf"), ("Gen", "gen_tf"), ("Rel latest", "rel_tf_latest"),
            ("Gen latest", "gen_tf_latest"), ("Loc", "loc_tf"),
            ("Loc nbr", "loc_nbr_tf"), ("nbr silent", "nbr_silent"), ("para→own", "para_routed_own"),
            ("Rel EM", "rel_em"), ("Gen EM", "gen_em"), ("Loc EM", "loc_em"), ("s/edit", "median_edit_seconds"),
            ("overhead", "infer_overhead"), ("KiB/edit", "bytes_per_edit"), ("RSS MB", "rss_mb"),
            ("open s", "open_store_seconds")]
    for name, _ in cols:
        t.add_column(name, justify="right")
    for cp in result["checkpoints"]:
        row = []
        for name, key in cols:
            v = cp.get(key)
            if key == "T":
                row.append(str(v))
            elif key == "infer_overhead":
                row.append(f"{v:+.1%}")
            elif key == "bytes_per_edit":
                row.append(f"{v / 1024:.0f}")
            elif key in ("rss_mb",):
                row.append(f"{v:.0f}")
            else:
                row.append(_fmt(v))
        t.add_row(*row)
    return t


def plot(result: dict, path: Path) -> Path | None:
    """Rel/Gen/Loc, s/edit, KiB/edit and overhead against T (PNG), when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cps = result["checkpoints"]
    if not cps:
        return None
    T = [cp["T"] for cp in cps]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for key, label in (("rel_tf", "Rel"), ("gen_tf", "Gen"), ("gen_tf_latest", "Gen latest"), ("loc_tf", "Loc"),
                       ("loc_nbr_tf", "Loc nbr")):
        if all(cp.get(key) is not None for cp in cps):
            axes[0].plot(T, [cp[key] for cp in cps], marker="o", label=label)
    axes[0].set_ylim(0, 1.02)
    axes[0].legend()
    axes[0].set_title("quality")
    axes[1].plot(T, [cp["median_edit_seconds"] for cp in cps], marker="o")
    axes[1].set_title("median s/edit")
    axes[2].plot(T, [cp["bytes_per_edit"] / 1024 for cp in cps], marker="o", label="stored")
    axes[2].plot(T, [cp["sparse_bytes_per_edit"] / 1024 for cp in cps], ls="--", label="sparse delta")
    axes[2].legend()
    axes[2].set_title("KiB per edit")
    axes[3].plot(T, [100 * cp["infer_overhead"] for cp in cps], marker="o")
    axes[3].set_title("inference overhead %")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("T (edits)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam bench edit", description="Sequential-editing benchmark (see "
                                "sam/bench/editing.py): Rel/Gen/Loc, routing, s/edit, storage, RAM, overhead.")
    src = p.add_mutually_exclusive_group()
    p.add_argument("--data", type=Path, help="zsRE-style JSON (default: ../shared's 3,939 records, else the sample)")
    src.add_argument("--natural", action="store_true", help="the hand-written natural set (data/natural_facts.jsonl)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N seeded synthetic counterfactual facts")
    p.add_argument("--zsre-first", action="store_true", help="with --synthetic N: every usable zsRE record first, "
                   "then synthetic facts up to N")
    p.add_argument("--sizes", default="1,10,100,1000", help="comma-separated checkpoints T")
    p.add_argument("--format", default="auto", choices=("auto", "chat", "line", "qa", "raw"))
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="the base model's dtype (the memory trains in fp32)")
    p.add_argument("--batch", type=int, default=1, help="facts trained together per step (1: one at a time)")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    p.add_argument("--eval-sample", type=int, default=2000, help="evaluate at most this many edited facts per "
                   "checkpoint (a seeded sample)")
    p.add_argument("--neighbours", type=int, default=200)
    p.add_argument("--generation", action=argparse.BooleanOptionalAction, default=True,
                   help="also score greedy generation (exact match)")
    p.add_argument("--generation-max", type=int, help="no generation past this T")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="on a GPU, replay one-at-a-time edits' passes as CUDA graphs (sam/core/edit_graphs.py)")
    p.add_argument("--compare-naive", type=int, default=0, help="also time this many edits with the naive loop")
    p.add_argument("--store", type=Path, help="keep the store here, and resume from it")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this long (resume with the same command)")
    p.add_argument("--data-seed", type=int, default=0, help="seeds the synthetic facts and the conversations")
    p.add_argument("--out", type=Path, default=Path("results/edit"))
    p.add_argument("--tag")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_editor_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.batch < 1 or args.eval_sample < 1:
        parser().error("--batch and --eval-sample must be at least 1")
    if not all(s.strip().isdigit() and int(s) > 0 for s in args.sizes.split(",")):
        parser().error(f"--sizes wants comma-separated positive integers, got '{args.sizes}'")
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("SAM_THREADS", torch.get_num_threads())))
    result = run(args)
    png = plot(result, Path(result["path"]).with_suffix(".png"))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        out = Console(width=220)
        out.print(render(result))
        if "naive_vs_fast" in result:
            nf = result["naive_vs_fast"]
            out.print(f"edit loop, first {nf['edits']} edits: naive {nf['naive_median_seconds']:.2f} s, "
                      f"fast {nf['fast_median_seconds']:.2f} s (x{nf['speedup']:.1f})")
        out.print(f"wrote {result['path']}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
