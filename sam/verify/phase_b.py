"""Phase B: one real edit takes, persists, stays local and reverts exactly; bad input is refused.

On the real model in a temporary store:
1. the edit takes: teacher-forced score 1.0 on the target and greedy generation contains it;
2. it persists: after close(), a new MemoirEditor on the same store gives bit-identical
   teacher-forced logits (and so predictions) and routes the prompt to the same edit;
3. locality: unrelated prompts (zsRE `loc` questions) route to no edit and their teacher-forced
   logits and generations are bit-identical to before the edit;
4. damage is found, not hidden: a corrupt fingerprinter makes the open fail with
   CorruptStoreError and repair rebuilds it (the edit then answers exactly as before); a garbled
   delta fails its checksum in the store check;
5. revert restores the pre-edit logits and generation exactly;
6. bad input is refused: empty prompt, over-long target, unknown edit id, a second revert.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from sam.bench.facts import ZSRE_SAMPLE
from sam.verify.phase_a import Checks, expect_error, fresh_store_dir, report

FACT = ("What university did Watts Humphrey attend?", "University of Michigan")  # zsRE record 0
UNRELATED = [  # zsRE `loc` prompts with their answers, and two plain prompts
    ("nq question: who played desmond doss father in hacksaw ridge", "Hugo Weaving"),
    ("nq question: where does the last name painter come from", "England"),
    ("The capital of France is", "Paris"),
    ("What is the largest planet in the solar system?", "Jupiter"),
]


def _cases() -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """The fact and the unrelated questions, from the committed zsRE sample when it is there."""
    try:
        recs = json.loads(ZSRE_SAMPLE.read_text())
        return (recs[0]["src"], recs[0]["alt"]), [(r["loc"], r["loc_ans"]) for r in recs[:2]] + UNRELATED[2:]
    except (OSError, ValueError, KeyError, IndexError):
        return FACT, UNRELATED


def teacher_forced_logits(ed, pairs: list[tuple[str, str]]) -> list[torch.Tensor]:
    """Per pair, the logits (n_target, V) at the target positions, memory routed as at inference."""
    return [logits for logits, _ in ed.teacher_forced(pairs)]


def _all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[int, float]:
    same = sum(torch.equal(x, y) for x, y in zip(a, b))
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    return same, diff


def run_checks(model: str = "default", device: str = "cpu") -> Checks:
    from sam.core.editor import MemoirEditor
    from sam.core.repair import repair_store
    from sam.core.store import Store
    from sam.errors import CorruptStoreError, InvalidInputError, UnknownEditError

    checks = Checks()
    (question, target), unrelated_q = _cases()
    with tempfile.TemporaryDirectory(prefix="sam-phase-b-") as tmp:
        store = fresh_store_dir(Path(tmp) / "store", model, device)
        ed = MemoirEditor.open(store, model=model, device=device)
        prompt = ed.render(question)
        unrelated = [(ed.render(q), a) for q, a in unrelated_q]
        try:
            before = teacher_forced_logits(ed, [(prompt, target)] + unrelated)
            gen_before = ed.generate_batch([prompt] + [p for p, _ in unrelated], 12)
            score_before = ed.score(prompt, target)

            # --- 1. the edit takes ------------------------------------------------------------------------
            r = ed.edit(prompt, target)
            score_after = ed.score(prompt, target)
            gen_after = ed.generate(prompt, 12)
            checks.add("edit takes (teacher-forced)", r.success and score_after == 1.0,
                       f"score {score_before:.2f} -> {score_after:.2f} in {r.steps} steps, {r.seconds:.1f} s, "
                       f"loss {r.loss:.3f}")
            checks.add("edit takes (generation)", target.lower() in gen_after.lower(),
                       f"{gen_before[0]!r} -> {gen_after!r}")
            routed = ed.route(prompt)
            checks.add("edit routes", routed[0] == r.edit_id, f"route -> edit {routed[0]} (overlap {routed[1]:.2f})")
            edited = teacher_forced_logits(ed, [(prompt, target)] + unrelated)
        finally:
            ed.close()

        # --- 2. persistence ---------------------------------------------------------------------------------
        def persists():
            with MemoirEditor.open(store, model=model, device=device, read_only=True) as ed2:
                again = teacher_forced_logits(ed2, [(prompt, target)] + unrelated)
                route = ed2.route(prompt)[0]
                n = len(ed2.edits())
            same, diff = _all_equal(edited, again)
            ok = same == len(edited) and route == r.edit_id and n == 1
            return ok, (f"a new read-only editor after close(): {same}/{len(edited)} logit tensors torch.equal "
                        f"(max |diff| {diff:g}), route -> {route}, {n} active edit")

        checks.run("edit persists across reopen", persists)

        # --- 3. locality ------------------------------------------------------------------------------------
        def locality():
            with MemoirEditor.open(store, model=model, device=device, read_only=True) as ed3:
                routes = [ed3.route(p) for p, _ in unrelated]
                gens = ed3.generate_batch([p for p, _ in unrelated], 12)
            same, diff = _all_equal(before[1:], edited[1:])
            ok = same == len(unrelated) and all(rt[0] is None for rt in routes) and gens == gen_before[1:]
            top = max(o for _, o in routes)
            return ok, (f"{len(unrelated)} unrelated questions: routes {[rt[0] for rt in routes]} (best overlap "
                        f"{top:.2f} < threshold), {same}/{len(unrelated)} logits torch.equal to pre-edit, "
                        f"generations equal {gens == gen_before[1:]}")

        checks.run("locality: unrelated questions unchanged", locality)

        # --- 4. damage is found; what can be rebuilt is -----------------------------------------------------
        def corrupt_fingerprinter_and_repair():
            fp_file = Path(store) / "fingerprinter.safetensors"
            good = fp_file.read_bytes()
            fp_file.write_bytes(b"\x00garbage" * 64)
            ok1, what = expect_error(lambda: MemoirEditor.open(store, model=model, device=device).close(),
                                     CorruptStoreError)
            report = repair_store(Path(store), model=model, device=device)
            rebuilt = fp_file.read_bytes() == good
            with MemoirEditor.open(store, model=model, device=device) as ed4:
                logits = teacher_forced_logits(ed4, [(prompt, target)] + unrelated)
            exact = torch.equal(logits[0], edited[0])
            ok = ok1 and report["ok"] and rebuilt and exact
            return ok, (f"{what.split(':')[0]} on open; repair: {'; '.join(report['actions'])}; file identical to "
                        f"the original: {rebuilt}; edited logits exact after: {exact}")

        checks.run("corrupt fingerprinter -> CorruptStoreError; repair rebuilds it exactly",
                   corrupt_fingerprinter_and_repair)

        def garbled_delta_is_found():
            import sqlite3

            with Store(store) as st:  # a copy of the store (below): the real edit stays intact
                con = sqlite3.connect(st.db_path)
                blob = bytearray(con.execute("SELECT delta FROM edits WHERE id = ?", (r.edit_id,)).fetchone()[0])
                blob[100:108] = b"\xff" * 8
                con.execute("UPDATE edits SET delta = ? WHERE id = ?", (bytes(blob), r.edit_id))
                con.commit()
                con.close()
                report = st.check()
                bad = [b["id"] for b in report["bad_deltas"]]
                ok1, what = expect_error(lambda: st.delta(r.edit_id), CorruptStoreError)
            return ok1 and bad == [r.edit_id] and not report["ok"], (
                f"store check: bad deltas {bad}, ok={report['ok']}; reading it: {what.split(':')[0]}")

        with tempfile.TemporaryDirectory(prefix="sam-phase-b-copy-") as copy_dir:
            import shutil

            original = Path(store)
            store = Path(copy_dir) / "store"  # garble a copy: the edit stays good for the checks below
            shutil.copytree(original, store, ignore=shutil.ignore_patterns(".lock"))
            checks.run("garbled delta -> checksum mismatch found by the store check", garbled_delta_is_found)
            store = original

        # --- 5. revert, 6. bad input --------------------------------------------------------------------------
        with MemoirEditor.open(store, model=model, device=device) as ed6:
            def revert():
                rec = ed6.revert(r.edit_id)
                after = teacher_forced_logits(ed6, [(prompt, target)] + unrelated)
                gen = ed6.generate(prompt, 12)
                same, diff = _all_equal(before, after)
                route = ed6.route(prompt)[0]
                ok = rec.status == "reverted" and same == len(before) and gen == gen_before[0] and route is None
                return ok, (f"status {rec.status}; {same}/{len(before)} logits torch.equal to pre-edit (max |diff| "
                            f"{diff:g}); generation {gen!r}; route {route}; score {ed6.score(prompt, target):.2f}")

            checks.run("revert restores the pre-edit answer exactly", revert)

            long_target = " ".join(["word"] * (ed6.config.max_target_tokens + 10))
            cases = {
                "empty prompt": (lambda: ed6.edit("   ", target), InvalidInputError),
                "empty target": (lambda: ed6.edit(prompt, ""), InvalidInputError),
                f"target > {ed6.config.max_target_tokens} tokens": (lambda: ed6.edit(prompt, long_target),
                                                                   InvalidInputError),
                "prompt longer than the context": (lambda: ed6.edit("why " * 5000, target), InvalidInputError),
                "unknown edit id": (lambda: ed6.revert(987654), UnknownEditError),
                "edit id past 64 bits": (lambda: ed6.revert(10**20), UnknownEditError),
                "second revert": (lambda: ed6.revert(r.edit_id), InvalidInputError),
            }
            for name, (fn, err) in cases.items():
                checks.run(f"bad input refused: {name}", lambda fn=fn, err=err: expect_error(fn, err))
            n_after = len(ed6.edits(status=None))
            checks.add("bad input changed nothing", n_after == 1, f"{n_after} edit row(s) in the store")
    return checks


def main(model: str = "default", device: str = "cpu", json_out: bool = False) -> int:
    t0 = time.perf_counter()
    try:
        checks = run_checks(model, device)
    except Exception as exc:  # noqa: BLE001 - the model or the store did not even open, or the edit failed
        checks = Checks()
        checks.add("phase B ran", False, f"{type(exc).__name__}: {exc}")
    return report("b", "Phase B — one edit: takes, persists, local, reverts; bad input", checks, json_out,
                  time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
