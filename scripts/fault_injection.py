#!/usr/bin/env python
"""Fault injection (issue 11): run the whole table of sam/verify/faults.py and summarise it.

    python scripts/fault_injection.py                  # every case (the real model's too): ~15 min on 2 CPU cores
    python scripts/fault_injection.py --fast           # only the cases that load no model: ~2-4 min
    python scripts/fault_injection.py --group kill --case commit

Prints a table per group (cases, passed, refused cleanly, data lost) and the failures, writes
results/faults/faults.json, and exits 1 when a case failed or any data was lost.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sam.verify.faults import REFUSAL_S, Env, all_cases, run_cases, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fault_injection.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true", help="only the cases that load no model")
    p.add_argument("--group", action="append", choices=("kill", "corrupt", "setting", "input"),
                   help="only this group (repeatable)")
    p.add_argument("--case", help="only cases whose id contains this text")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once (each is one-thread sam processes)")
    p.add_argument("--model", default="default", help="the model of the real store (slow cases)")
    p.add_argument("--work", type=Path, help="keep the case folders here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=Path("results/faults/faults.json"))
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")

    cases = [c for c in all_cases() if (not args.fast or not c.slow) and (not args.group or c.group in args.group)
             and (not args.case or args.case in c.id)]
    console = Console(stderr=True, highlight=False)
    if args.list:
        for c in cases:
            print(f"{c.id}{'  (model)' if c.slow else ''}")
        return 0
    if not cases:
        p.error("no case matches")
    work = args.work or Path(tempfile.mkdtemp(prefix="sam-faults-"))
    console.print(f"{len(cases)} cases ({sum(c.slow for c in cases)} load the model), {args.jobs} at a time, in {work}")
    done = []

    def progress(o) -> None:
        done.append(o)
        mark = "[green]ok[/green]" if o.ok else "[red]FAIL[/red]"
        console.print(f"[{len(done)}/{len(cases)}] {mark} {o.id} ({o.seconds:.0f}s)"
                      + ("" if o.ok else f": {o.detail}"), markup=True)

    t0 = time.perf_counter()
    outcomes = run_cases(cases, Env(work, args.model), jobs=args.jobs, progress=progress)
    report = summary(outcomes)
    report.update(seconds=round(time.perf_counter() - t0), host=platform.node(), refusal_limit_s=REFUSAL_S,
                  selection={"fast": args.fast, "group": args.group, "case": args.case})

    out = Console(highlight=False)
    table = Table(title=f"fault injection: {report['cases']} cases in {report['seconds']} s")
    for col in ("group", "cases", "passed", "expected refusals", "refused cleanly", "data lost"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for name, g in report["groups"].items():
        table.add_row(name, str(g["cases"]), str(g["passed"]), str(g["expected_refusals"]), str(g["refused_cleanly"]),
                      f"[red]{g['data_lost']}[/red]" if g["data_lost"] else "0")
    table.add_row("[bold]all[/bold]", *(f"[bold]{report[k]}[/bold]" for k in (
        "cases", "passed", "expected_refusals", "refused_cleanly", "data_lost")))
    out.print(table)
    for f in report["failed"]:
        out.print(f"[red]FAIL[/red] {f['id']}: {f['detail']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    out.print(f"wrote {args.out}")
    return 0 if not report["failed"] and not report["data_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
