"""Time to a first answer: wall time of `sam ask QUESTION` from a new process to the printed answer.

Each run is a fresh `python -m sam.cli ask` subprocess (so imports, model load and store open all
count), after one untimed warm-up run that converts the model if needed and fills the OS page
cache, as a user's second question would find it. Prints a rich table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sam.bench.results import write_result


def time_ask(question: str, runs: int, env: dict[str, str]) -> list[float]:
    cmd = [sys.executable, "-m", "sam.cli", "ask", question]
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # warm-up: conversion, page cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if not out.stdout.strip():
            raise RuntimeError(f"`sam ask` printed no answer: {out.stderr.strip()[-300:]}")
    return times


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--question", default="What is the capital of France?")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tag", default="ask")
    p.add_argument("--out", type=Path, default=Path("results/startup"))
    args = p.parse_args(argv)
    env = dict(os.environ)
    load_before = os.getloadavg()[0]
    times = time_ask(args.question, args.runs, env)
    res = {"question": args.question, "runs": args.runs, "seconds": [round(t, 3) for t in times],
           "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
           "max_s": round(max(times), 3), "cpu_count": os.cpu_count(),
           # the 1-minute load average before and after (the runs themselves raise it towards 1): other
           # processes on 2 cores change these times by seconds
           "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    table = Table(title=f"`sam ask` wall time, new process to printed answer ({args.runs} runs)")
    for col in ("median s", "min s", "max s"):
        table.add_column(col, justify="right")
    table.add_row(f"{res['median_s']:.2f}", f"{res['min_s']:.2f}", f"{res['max_s']:.2f}")
    Console().print(table)
    write_result(args.out, args.tag, res)
    return res


if __name__ == "__main__":
    main()
