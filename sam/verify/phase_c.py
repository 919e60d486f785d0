"""Phase C: the chat layer end to end on the real model, through real `sam` processes.

1. a chat turn answers a question (the default model gets it wrong: "Pluto");
2. a feedback turn ("No, it's Jupiter") edits the model and the verification confirms it;
   a "thanks!" after it changes nothing;
3. a NEW process answers the question with the correction (it survived the restart);
4. an unrelated question answers exactly as before the edit;
5. /undo in another new process restores the original answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sam.core.prompts import contains_answer

QUESTION = "What is the largest planet in the solar system?"
CORRECTION = "No, it's Jupiter"
TARGET = "Jupiter"
UNRELATED = "What is the capital of France?"
TIMEOUT_S = 900


def _sam(store: Path, model: str, device: str, *args: str, stdin: str | None = None) -> list[dict]:
    cmd = [sys.executable, "-m", "sam.cli", "--store", str(store), "--model", model, "--device", device, "--json", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"`sam {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    out = proc.stdout.strip()
    if args[0] == "chat":  # one JSON object per reply
        return [json.loads(line) for line in out.splitlines() if line.strip()]
    return [json.loads(out)]


def run_checks(model: str = "default", device: str = "cpu", store: Path | None = None) -> list[dict]:
    from sam.orchestration.testing import fresh_store

    checks: list[dict] = []

    def check(name: str, ok: bool, observed: str, expected: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "observed": observed, "expected": expected})

    with tempfile.TemporaryDirectory(prefix="sam-phase-c-") as tmp:
        store = Path(store) if store else fresh_store(Path(tmp) / "store", model=model, device=device)
        t0 = time.perf_counter()
        unrelated_before = _sam(store, model, device, "ask", UNRELATED)[0]["answer"]

        replies = _sam(store, model, device, "chat", stdin=f"{QUESTION}\n{CORRECTION}\nthanks!\n/quit\n")
        kinds = [r["kind"] for r in replies]
        original = replies[0]["text"] if replies and replies[0]["kind"] == "answer" else ""
        check("chat turn answers", bool(original) and kinds[:1] == ["answer"], original or str(kinds), "an answer")
        check("the model starts out wrong", not contains_answer(original, TARGET), original, f"no '{TARGET}'")
        edit = replies[1] if len(replies) > 1 else {}
        v = edit.get("verification", {})
        check("feedback turn edits and verifies", edit.get("kind") == "edit" and v.get("recalled") is True,
              f"{edit.get('kind')}: {v.get('verdict')} -> {v.get('answer_after')}", f"edit, answer with '{TARGET}'")
        thanks = replies[2] if len(replies) > 2 else {}
        check("'thanks!' is not an edit", thanks.get("kind") == "feedback" and thanks.get("feedback_kind") == "confirmation",
              f"{thanks.get('kind')} ({thanks.get('feedback_kind')})", "feedback (confirmation)")

        after = _sam(store, model, device, "ask", QUESTION)[0]
        check("correction survives a restart", contains_answer(after["answer"], TARGET),
              f"{after['answer']} (edit #{after['routed_edit']})", f"'{TARGET}' from a new process")

        unrelated_after = _sam(store, model, device, "ask", UNRELATED)[0]["answer"]
        check("unrelated answer unchanged", unrelated_after == unrelated_before, unrelated_after, unrelated_before)

        undo = _sam(store, model, device, "chat", stdin=f"/undo\n{QUESTION}\n/quit\n")
        restored = undo[1]["text"] if len(undo) > 1 else ""
        check("/undo restores the original answer", undo[0]["kind"] == "undo" and restored == original,
              restored or str([u["kind"] for u in undo]), original)
        checks.append({"check": "seconds", "ok": True, "observed": f"{time.perf_counter() - t0:.0f}", "expected": ""})
    return checks


def main(model: str = "default", device: str = "cpu", json_out: bool = False) -> int:
    try:
        checks = run_checks(model, device)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
        checks = [{"check": "phase C ran", "ok": False, "observed": str(exc), "expected": "every step to run"}]
    ok = all(c["ok"] for c in checks)
    if json_out:
        print(json.dumps({"phase": "c", "ok": ok, "checks": checks}, indent=2))
    else:
        table = Table(title=f"Phase C — chat, feedback, persistence, undo ({'PASS' if ok else 'FAIL'})")
        for col in ("check", "observed", "expected", "ok"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(c["check"], c["observed"], c["expected"], "[green]yes[/green]" if c["ok"] else "[red]NO[/red]")
        Console().print(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
