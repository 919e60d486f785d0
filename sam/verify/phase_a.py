"""Phase A: the editing machinery is inert and deterministic before any edit, on the real model.

1. zero impact: wrapping the down-projection (memory attached, empty store, even a live edit
   with a random delta that no prompt routes to) leaves the logits bit-identical (torch.equal)
   to the unwrapped model on several prompts, batched with padding and one by one, and greedy
   generation unchanged;
2. determinism: TopHash masks of real activations are the same from two fingerprinter
   instances, from a permutation written to and read back from safetensors, from the store's
   reloaded fingerprinter, and from a fresh Python process (another hash seed) that loads the
   model and the store on its own;
3. mask storage and nearest search: EditMaskDatabase stores real masks and reads them back
   exactly, the FAISS index built from it returns the right edit (overlap 1.0) and the exact
   overlap of a half-overlapping mask, survives a reopen, a failed transaction rolls back, and
   another fingerprinter or d_ff is refused with StoreMismatchError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

PROMPTS = [
    "What university did Watts Humphrey attend?",
    "The capital of France is",
    "Which family does Ramalinaceae belong to?",
    "Write a haiku about the sea.",
    "In 1969, the first person to walk on the moon was",
    "def fibonacci(n):",
]
UNRELATED = "Who composed the opera Carmen?"  # the question of phase A's silent edit


class Checks:
    """Collects (check, ok, measured) rows; a check that raises fails with the error as its figure."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, ok: bool, measured: str) -> bool:
        self.rows.append({"check": name, "ok": bool(ok), "measured": measured})
        return bool(ok)

    def run(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        try:
            ok, measured = fn()
        except Exception as exc:  # noqa: BLE001 - a verification reports every failure, it does not stop
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            ok, measured = False, f"{type(exc).__name__}: {exc} ({Path(tb.filename).name}:{tb.lineno})"
        return self.add(name, ok, measured)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r["ok"] for r in self.rows)


def report(phase: str, title: str, checks: Checks, json_out: bool, seconds: float) -> int:
    if json_out:
        print(json.dumps({"phase": phase, "ok": checks.ok, "seconds": round(seconds, 1), "checks": checks.rows},
                         indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{title} ({'PASS' if checks.ok else 'FAIL'}, {seconds:.0f} s)")
        table.add_column("check", overflow="fold")
        table.add_column("result")
        table.add_column("measured", overflow="fold")
        for r in checks.rows:
            table.add_row(r["check"], "[green]pass[/green]" if r["ok"] else "[red]FAIL[/red]", r["measured"])
        Console(width=None if sys.stdout.isatty() else 130).print(table)
    return 0 if checks.ok else 1


def expect_error(fn: Callable[[], object], error: type[BaseException]) -> tuple[bool, str]:
    """(raised `error`?, what happened)."""
    try:
        fn()
    except error as exc:
        return True, f"{type(exc).__name__}: {str(exc)[:90]}"
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__} instead of {error.__name__}: {str(exc)[:90]}"
    return False, f"no error (wanted {error.__name__})"


def fresh_store_dir(dest: Path, model: str, device: str) -> Path:
    """An empty fitted store: copied from the shared template when that helper is there."""
    try:
        from sam.orchestration.testing import fresh_store
    except ImportError:
        return dest
    return fresh_store(dest, model=model, device=device)


@torch.no_grad()
def prompt_logits(model, tokenizer, prompts: list[str], device) -> list[torch.Tensor]:
    """Logits (T_i, V) of each prompt: one left-padded batch (real tokens only) and one by one."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    out = model(**enc, use_cache=False).logits
    batched = [out[i][enc["attention_mask"][i].bool()].cpu() for i in range(len(prompts))]
    single = []
    for p in prompts:
        e = tokenizer(p, return_tensors="pt").to(device)
        single.append(model(**e, use_cache=False).logits[0].cpu())
    return batched + single


@torch.no_grad()
def greedy_ids(model, tokenizer, prompt: str, device, n: int = 8) -> list[int]:
    e = tokenizer(prompt, return_tensors="pt").to(device)
    out = model.generate(**e, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, e["input_ids"].shape[1]:].tolist()


_SUBPROCESS = r"""
import sys, torch
from safetensors.torch import save_file
from sam.core.editor import MemoirEditor
store, model, device, out = sys.argv[1:5]
prompts = sys.argv[5:]
ed = MemoirEditor.open(store, model=model, device=device, read_only=True)
cols = ed.fingerprinter.columns(ed.pooled([ed.render(p) for p in prompts])).cpu().contiguous()
save_file({"cols": cols}, out)
ed.close()
"""


def run_checks(model: str = "default", device: str = "cpu") -> Checks:
    from safetensors.torch import load_file

    from sam.config import EditorConfig
    from sam.core.editor import MemoirEditor, PendingEdit
    from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation, load_permutation, save_permutation
    from sam.core.model_loader import load_model
    from sam.core.store import Store
    from sam.core.trainer import TrainOutcome
    from sam.errors import StoreMismatchError
    from sam.memory.edit_mask_db import EditMaskDatabase
    from sam.memory.mask_index import MaskIndex

    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="sam-phase-a-") as tmp:
        tmp = Path(tmp)
        loaded = load_model(model, device=device)
        dev = torch.device(device)
        plain = prompt_logits(loaded.model, loaded.tokenizer, PROMPTS, dev)
        plain_gen = [greedy_ids(loaded.model, loaded.tokenizer, p, dev) for p in PROMPTS[:2]]

        store = fresh_store_dir(tmp / "store", model, device)
        ed = MemoirEditor(loaded, Store(store), EditorConfig(), device)
        try:
            # --- 1. zero impact ---------------------------------------------------------------------------
            def zero_impact():
                wrapped = prompt_logits(ed.model, ed.tokenizer, PROMPTS, dev)
                same = sum(torch.equal(a, b) for a, b in zip(plain, wrapped))
                diff = max(float((a - b).abs().max()) for a, b in zip(plain, wrapped))
                return same == len(plain), (f"{same}/{len(plain)} logit tensors torch.equal "
                                            f"({len(PROMPTS)} prompts batched + single), max |diff| {diff:g}")

            checks.run(f"zero impact: wrapped layer {ed.layer} == unwrapped model", zero_impact)

            def silent_edit():
                # a live edit with a random delta, of a question none of the prompts asks, on columns no prompt's
                # mask is near (so neither key routes a prompt to it): nothing may change
                gen = torch.Generator().manual_seed(0)
                k, d_ff = ed.fingerprinter.top_k, ed.fingerprinter.size
                keys = ed.fingerprinter.columns(ed.pooled(PROMPTS))
                used = set(keys.flatten().tolist())
                free = torch.tensor([c for c in range(d_ff) if c not in used])
                cols = free[torch.randperm(len(free), generator=gen)[:k]].sort().values
                outcome = TrainOutcome(cols, torch.randn(ed.memory.out_features, k, generator=gen), 0, 0.0, 1.0, True)
                with ed.trial(PendingEdit(ed.render(UNRELATED), "x", outcome, 0.0, None)):
                    got = ed.answer([PROMPTS[0], PROMPTS[1]], 8)
                    preds = ed.predict_batch([(p, "Paris") for p in PROMPTS])
                ref = ed.predict_batch([(p, "Paris") for p in PROMPTS], memory=False)
                same = sum(torch.equal(a[0], b[0]) for a, b in zip(preds, ref))
                want = [ed.tokenizer.decode(g, skip_special_tokens=True) for g in plain_gen]
                texts = [g.text for g in got]
                ok = same == len(PROMPTS) and texts == want and all(g.edit_id is None for g in got)
                return ok, (f"a live random edit nothing routes to: {same}/{len(PROMPTS)} teacher-forced predictions "
                            f"and {sum(a == b for a, b in zip(texts, want))}/2 generations unchanged, routes "
                            f"{[g.edit_id for g in got]}")

            checks.run("zero impact: a live edit no prompt routes to", silent_edit)

            def generation():
                got = [ed.generate_batch([p], 8)[0] for p in PROMPTS[:2]]
                want = [ed.tokenizer.decode(g, skip_special_tokens=True) for g in plain_gen]
                return got == want, f"greedy 8 tokens identical on {sum(a == b for a, b in zip(got, want))}/2: {got[0]!r}"

            checks.run("zero impact: greedy generation unchanged", generation)

            # --- 2. determinism -----------------------------------------------------------------------------
            pooled = ed.pooled([ed.render(p) for p in PROMPTS])  # (N, d_ff): the key of each question
            fp = ed.fingerprinter
            ref = fp.columns(pooled)
            d_ff, k = fp.size, fp.top_k

            def two_instances():
                a = TopHashFingerprinter(generate_permutation(d_ff, ed.config.seed), k, fp.background)
                b = TopHashFingerprinter(generate_permutation(d_ff, ed.config.seed), k, fp.background.clone())
                ca, cb = a.columns(pooled), b.columns(pooled.clone())
                stable = all(fp.validate_determinism(pooled[i]) for i in range(len(PROMPTS)))
                dense = a.to_dense(ca)
                ok = torch.equal(ca, cb) and torch.equal(ca, ref) and stable and bool((dense.sum(1) == k).all())
                return ok, f"{len(PROMPTS)} masks of {k}/{d_ff} columns equal across instances and the store's"

            checks.run("determinism: two fingerprinter instances", two_instances)

            def reloaded_permutation():
                path = tmp / f"perm_{d_ff}.safetensors"
                save_permutation(generate_permutation(d_ff, ed.config.seed), path, seed=ed.config.seed)
                perm = load_permutation(path)
                c1 = TopHashFingerprinter(perm, k, fp.background).columns(pooled)
                fp2 = TopHashFingerprinter.load(ed.store.fingerprinter_path)
                c2 = fp2.columns(pooled)
                ok = torch.equal(c1, ref) and torch.equal(c2, ref) and fp2.digest() == fp.digest()
                return ok, f"permutation file {path.stat().st_size} B and store fingerprinter {fp2.digest()}: same masks"

            checks.run("determinism: permutation and fingerprinter reloaded from safetensors", reloaded_permutation)
        finally:
            ed.close()

        def subprocess_masks():
            out = tmp / "sub_cols.safetensors"
            env = {**os.environ, "PYTHONHASHSEED": "12345"}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, str(store), model, device, str(out), *PROMPTS],
                                  capture_output=True, text=True, timeout=900, env=env)
            if proc.returncode != 0:
                return False, f"subprocess exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
            sub = load_file(str(out))["cols"]
            return torch.equal(sub, ref.cpu()), (f"{len(PROMPTS)} masks from a new process (model reloaded, "
                                                 f"PYTHONHASHSEED=12345) equal: {torch.equal(sub, ref.cpu())} "
                                                 f"({time.perf_counter() - t0:.0f} s)")

        checks.run("determinism: a fresh subprocess gives the same masks", subprocess_masks)

        # --- 3. mask storage and nearest search -------------------------------------------------------------
        identity = {"model": "phase-a", "layer": 0, "d_ff": d_ff, "d_model": 8, "top_k": k,
                    "fingerprinter": fp.digest()}
        db_path = tmp / "masks.sqlite"
        gen = torch.Generator().manual_seed(1)
        ids: list[int] = []

        def open_db(create: bool = False) -> EditMaskDatabase:
            db = EditMaskDatabase(db_path, create=create)
            db.claim(identity)
            return db

        def indexed(db: EditMaskDatabase) -> MaskIndex:
            index = MaskIndex(d_ff, k)
            index.add(*db.active_columns())  # rebuilt from SQLite, as every open does
            return index

        def store_and_find():
            db = open_db(create=True)
            try:
                with db.transaction():
                    for i, p in enumerate(PROMPTS):
                        ids.append(db.insert_edit(prompt=p, question=p, target=f"t{i}", cols=ref[i],
                                                  delta=torch.randn(8, k, generator=gen), source="phase-a",
                                                  importance=1.0, steps=0, loss=0.0))
                hits = indexed(db).nearest(ref)
                right = sum(h is not None and h.edit_id == ids[i] and h.overlap == 1.0 for i, h in enumerate(hits))
                exact = all(torch.equal(db.sparse(i)[0], ref[n].cpu()) for n, i in enumerate(ids))
            finally:
                db.close()
            return right == len(PROMPTS) and exact, (f"{right}/{len(PROMPTS)} masks -> their own edit at overlap 1.0; "
                                                     f"stored columns read back exactly: {exact}")

        checks.run("mask storage: nearest search returns the right edit", store_and_find)

        def threshold():
            db = open_db()  # reopened: the index is rebuilt from SQLite
            try:
                half = ref[0].clone()
                used = set(ref.flatten().tolist())
                free = torch.tensor([c for c in range(d_ff) if c not in used][: k // 2])
                half[: k // 2] = free  # half of edit 1's columns, half columns no stored mask has
                m = indexed(db).nearest(half.sort().values.view(1, -1))[0]
                own = indexed(db).nearest(ref)
                ok = (m is not None and m.edit_id == ids[0] and m.overlap == 0.5
                      and all(o is not None and o.edit_id == ids[i] for i, o in enumerate(own)))
            finally:
                db.close()
            return ok, (f"half-overlap mask: nearest edit {m.edit_id if m else None} at overlap "
                        f"{m.overlap if m else None} (fires only at a threshold <= 0.5); after reopen all "
                        f"{len(own)} found")

        checks.run("nearest search: overlap exact, index survives reopen", threshold)

        def rollback():
            db = open_db()
            try:
                before = db.count()
                try:
                    with db.transaction():
                        db.insert_edit(prompt="x", question="x", target="y", cols=ref[0], delta=torch.zeros(8, k),
                                       source="phase-a", importance=1.0, steps=0, loss=0.0)
                        raise RuntimeError("crash inside the transaction")
                except RuntimeError:
                    pass
                after = db.count()
            finally:
                db.close()
            return after == before, f"{before} edits before, {after} after a failed transaction"

        checks.run("mask storage: a failed transaction rolls back", rollback)

        def mismatch():
            def claim(other):
                db = EditMaskDatabase(db_path)
                try:
                    db.claim(other)
                finally:
                    db.close()

            ok, what = expect_error(lambda: claim({**identity, "fingerprinter": "0" * 16}), StoreMismatchError)
            ok2, what2 = expect_error(lambda: claim({**identity, "d_ff": d_ff + 1}), StoreMismatchError)
            return ok and ok2, f"another fingerprinter: {what}; another d_ff: {what2.split(':')[0]}"

        checks.run("identity mismatch refused", mismatch)
    return checks


def main(model: str = "default", device: str = "cpu", json_out: bool = False) -> int:
    t0 = time.perf_counter()
    try:
        checks = run_checks(model, device)
    except Exception as exc:  # noqa: BLE001 - the model or the store did not even open
        checks = Checks()
        checks.add("phase A ran", False, f"{type(exc).__name__}: {exc}")
    return report("a", "Phase A — zero impact, determinism, mask storage", checks, json_out, time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
