"""Conversational benchmark: edits made in one conversation, asked in others, scored by free generation.

    sam bench chat --sizes 100,1000                 # zsRE: T edits, each made inside a conversation
    sam bench chat --sizes 1000 --format line       # the same with "question + newline" prompts
    sam bench chat --natural                        # the hand-written natural set, every fact edited

Each edit is made as `sam correct` makes one from a chat: the question in a fresh conversation is
the key and the training prompt, and the conversation it was corrected in (a system prompt from a
small set, 0-3 unrelated earlier turns) is trained on too. Then every fact is asked inside OTHER
conversations (another system prompt, other earlier turns) and the generated answer is scored:
  Rel   the question           -> the answer contains the new target
  Gen   its paraphrase(s)      -> the answer contains the new target
  Nbr   same-form questions about subjects not edited -> the answer is unchanged (natural set)
  Loc   unrelated questions    -> the answer is unchanged (same conversation, memory on vs off)
  repeats  edited answers that state the target more than once
  Rel/Gen latest   the same over the facts whose own edit is still active (zsRE asks some questions
                   several times with different answers; a later answer replaces an earlier one)
  ends     edited answers that end their turn (end of turn / EOS) within 32 new tokens
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sam.bench.facts import Fact, default_zsre, natural, zsre
from sam.bench.results import write_result
from sam.config import add_editor_options, editor_config_from
from sam.core.editor import MemoirEditor
from sam.core.prompts import Prompt, Turn, contains_answer, repeats

console = Console(stderr=True)
MAX_NEW = 32

SYSTEM_PROMPTS = [None, "You are a helpful assistant.", "You are a concise assistant. Answer in a few words.",
                  "You are a friendly tutor who explains things clearly."]
SMALL_TALK = [
    Turn("Hi! How are you today?", "I'm doing well, thank you! How can I help you today?"),
    Turn("Can you recommend a good book?", "Sure! 'To Kill a Mockingbird' by Harper Lee is a classic."),
    Turn("What's a good way to relax after work?", "A short walk, some music or a good book can help you unwind."),
    Turn("Give me a tip for learning a new language.", "Practise a little every day and speak it as often as you can."),
    Turn("What should I cook for dinner?", "A simple pasta with tomatoes, garlic and basil is quick and tasty."),
    Turn("Tell me a fun fact.", "Honey never spoils: edible honey has been found in ancient Egyptian tombs."),
    Turn("How do I stay focused while studying?", "Work in short blocks with breaks, and put your phone away."),
    Turn("Any ideas for a weekend trip?", "A hike in a nearby park or a visit to a small town can be lovely."),
]


def conversation(rng: random.Random, avoid: tuple | None = None) -> tuple[str | None, list[Turn]]:
    """A system prompt and 0-3 earlier turns, different from `avoid` (the conversation of the edit)."""
    while True:
        system = rng.choice(SYSTEM_PROMPTS)
        history = rng.sample(SMALL_TALK, rng.randint(0, 3))
        if avoid is None or (system, tuple(history)) != avoid:
            return system, history


def _generate(ed: MemoirEditor, prompts: list[Prompt], memory: bool = True, bs: int = 16):
    out = []
    for i in range(0, len(prompts), bs):
        out.extend(ed.answer(prompts[i: i + bs], max_new_tokens=MAX_NEW, memory=memory))
    return out


def _ends(ed: MemoirEditor, gen_text: str) -> bool:
    """Whether the answer ended its turn within MAX_NEW tokens (fewer tokens generated than the limit)."""
    return len(ed.tokenizer(gen_text, add_special_tokens=False)["input_ids"]) < MAX_NEW


def run(args) -> dict:
    rng = random.Random(args.data_seed)
    if args.natural:
        facts, dataset = natural(), "natural"
        sizes = [len(facts)]
    else:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
        facts, dataset = zsre(args.data or default_zsre(), n=sizes[-1], log=lambda m: None), "zsre"
        sizes = sorted({min(s, len(facts)) for s in sizes})
    config = editor_config_from(args)
    result = {"dataset": dataset, "model": args.model, "device": args.device, "config": config.model_dump(),
              "checkpoints": [], "seed": args.data_seed}
    made_in, edit_of = {}, {}
    seconds = []
    with tempfile.TemporaryDirectory(prefix="sam-bench-chat-") as tmp, \
            MemoirEditor.open(Path(tmp) / "store", model=args.model, device=args.device, config=config,
                              prompt_format=args.format) as ed:
        result["format"] = ed.prompts.style
        with Progress(TextColumn("[bold]editing in conversations"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("edit", total=sizes[-1])
            for i, f in enumerate(facts[: sizes[-1]], start=1):
                system, history = conversation(rng)
                made_in[f.index] = (system, tuple(history))
                context = ed.render(f.question, history, system)
                t0 = time.perf_counter()
                pending = ed.train(ed.render(f.question), f.target, contexts=[context] if history or system else [],
                                   source="bench-chat")
                if pending.outcome.finite:
                    edit_of[f.index] = ed.commit(pending).edit_id
                seconds.append(time.perf_counter() - t0)
                bar.update(task, advance=1)
                if i in sizes:
                    cp = {"T": i, **evaluate(ed, facts[:i], made_in, rng, args.eval_sample, edit_of),
                          "median_edit_seconds": statistics.median(seconds)}
                    result["checkpoints"].append(cp)
                    console.print(_row_text(cp))
    return result


def evaluate(ed: MemoirEditor, facts: list[Fact], made_in: dict, rng: random.Random, sample: int,
             edit_of: dict[int, int]) -> dict:
    if len(facts) > sample:
        facts = random.Random(len(facts)).sample(facts, sample)
    convs = {f.index: conversation(rng, avoid=made_in[f.index]) for f in facts}
    q = [ed.render(f.question, convs[f.index][1], convs[f.index][0]) for f in facts]
    paras = [(f, p) for f in facts for p in f.paraphrases]
    pq = [ed.render(p, convs[f.index][1], convs[f.index][0]) for f, p in paras]
    loc = [ed.render(f.loc, convs[f.index][1], convs[f.index][0]) for f in facts]
    rel = _generate(ed, q)
    gen = _generate(ed, pq)
    loc_on, loc_off = _generate(ed, loc), _generate(ed, loc, memory=False)
    answers = [ed.prompts.clean(g.text) for g in rel]
    m = {
        "n_eval": len(facts),
        "rel": statistics.fmean(contains_answer(a, f.target) for a, f in zip(answers, facts)),
        "gen": statistics.fmean(contains_answer(ed.prompts.clean(g.text), f.target) for g, (f, _) in zip(gen, paras)),
        "loc_unchanged": statistics.fmean(a.text == b.text for a, b in zip(loc_on, loc_off)),
        "repeats": statistics.fmean(repeats(a, f.target) for a, f in zip(answers, facts)),
        "ends_within_32": statistics.fmean(_ends(ed, g.text) for g in rel),
        "rel_fired": statistics.fmean(g.edit_id is not None for g in rel),
        "gen_fired": statistics.fmean(g.edit_id is not None for g in gen),
        "loc_fired": statistics.fmean(g.edit_id is not None for g in loc_on),
    }
    # zsRE asks one question with several answers; a later one replaces an earlier (as for a user):
    # "latest" scores the facts whose own edit still answers their question
    latest = {f.index for f in facts if f.index in edit_of and ed.store.get(edit_of[f.index]).status == "active"}
    rel_l = [contains_answer(a, f.target) for a, f in zip(answers, facts) if f.index in latest]
    gen_l = [contains_answer(ed.prompts.clean(g.text), f.target) for g, (f, _) in zip(gen, paras) if f.index in latest]
    m.update(n_latest=len(latest), rel_latest=statistics.fmean(rel_l) if rel_l else None,
             gen_latest=statistics.fmean(gen_l) if gen_l else None)
    nbrs = [(f, n) for f in facts for n in f.neighbours]
    if nbrs:
        nq = [ed.render(n, convs[f.index][1], convs[f.index][0]) for f, n in nbrs]
        on, off = _generate(ed, nq), _generate(ed, nq, memory=False)
        m["nbr_unchanged"] = statistics.fmean(a.text == b.text for a, b in zip(on, off))
        m["nbr_fired"] = statistics.fmean(a.edit_id is not None for a in on)
    m["examples"] = [{"question": f.question, "target": f.target, "asked_in": convs[f.index][0],
                      "turns_before": len(convs[f.index][1]), "answer": a} for f, a in list(zip(facts, answers))[:5]]
    return m


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def _row_text(cp: dict) -> str:
    return (f"T={cp['T']}: Rel {_fmt(cp['rel'])} Gen {_fmt(cp['gen'])} (latest {_fmt(cp.get('rel_latest'))}/"
            f"{_fmt(cp.get('gen_latest'))}) Nbr unchanged {_fmt(cp.get('nbr_unchanged'))} "
            f"Loc unchanged {_fmt(cp['loc_unchanged'])} repeats {_fmt(cp['repeats'])} ends<=32 "
            f"{_fmt(cp['ends_within_32'])} ({cp['median_edit_seconds']:.2f} s/edit)")


def render(result: dict) -> Table:
    t = Table(title=f"edits in conversations — {result['dataset']}, {result['model']} ({result['format']} prompts) "
                    f"on {result['device']}; free generation, asked in other conversations")
    cols = [("T", "T"), ("Rel", "rel"), ("Gen", "gen"), ("Rel latest", "rel_latest"), ("Gen latest", "gen_latest"),
            ("Nbr unchanged", "nbr_unchanged"),
            ("Loc unchanged", "loc_unchanged"), ("repeats target", "repeats"), ("ends ≤32 tok", "ends_within_32"),
            ("Rel fired", "rel_fired"), ("Gen fired", "gen_fired"), ("Nbr fired", "nbr_fired"),
            ("Loc fired", "loc_fired"), ("s/edit", "median_edit_seconds")]
    for name, _ in cols:
        t.add_column(name, justify="right")
    for cp in result["checkpoints"]:
        t.add_row(*[str(cp["T"]) if k == "T" else _fmt(cp.get(k)) for _, k in cols])
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sam bench chat", description=__doc__.splitlines()[0])
    p.add_argument("--natural", action="store_true", help="the hand-written natural set (every fact edited)")
    p.add_argument("--data", type=Path, help="zsRE-style JSON")
    p.add_argument("--sizes", default="100")
    p.add_argument("--format", default="auto", choices=("auto", "chat", "line", "qa", "raw"))
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--eval-sample", type=int, default=1000, help="evaluate at most this many edited facts")
    p.add_argument("--data-seed", type=int, default=0, help="seeds the synthetic facts and the conversations")
    p.add_argument("--out", type=Path, default=Path("results/chat"))
    p.add_argument("--tag")
    p.add_argument("--json", action="store_true")
    add_editor_options(p)
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("SAM_THREADS", torch.get_num_threads())))
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"chat_{result['dataset']}_{result['format']}_T{result['checkpoints'][-1]['T']}"
    path = write_result(args.out, tag, result, quiet=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        Console(width=200).print(render(result))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
