"""Routing cost at scale: the sentence key deciding a batch of questions against N active edits (CPU).

The router's work per question at inference, without the model: the MiniLM embeddings of the questions
(cached after the first call, as in a conversation's later turns), the (B, N) cosines, the name check
and the template check. The keys of the stored edits are random unit vectors (the cost does not depend
on their values); their questions are real (zsRE, then synthetic facts), so the name check sees the
names a 50,000-edit store has. Prints the median seconds per batch and writes results/route/route_N.json.

    python scripts/bench_route.py --edits 50000 --batch 96
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sam.bench import facts as F  # noqa: E402
from sam.bench.results import write_result  # noqa: E402
from sam.core.fingerprinter import TopHashFingerprinter  # noqa: E402
from sam.core.router import Router  # noqa: E402
from sam.core.sentence_key import DIM  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=50000)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("results/route"))
    p.add_argument("--tag", default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    facts = (F.zsre(log=lambda *_: None) + F.synthetic(a.edits, seed=0))[: a.edits]
    questions = [f.question for f in facts]
    router = Router(TopHashFingerprinter(torch.randperm(1536), 128), 576,
                    lambda i: (torch.arange(128), torch.zeros(576, 128)), key="sentence")
    keys = torch.nn.functional.normalize(torch.randn(len(questions), DIM), dim=-1)
    t0 = time.perf_counter()
    router.load(list(range(len(questions))), torch.randint(0, 1536, (len(questions), 128)), questions, keys)
    load_s = time.perf_counter() - t0
    probe = random.Random(0).sample(questions, a.batch)
    router.decide_questions(probe)  # the embeddings of the probe are cached from here on
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        router.decide_questions(probe)
        times.append(time.perf_counter() - t0)
    result = dict(edits=len(questions), batch=a.batch, repeats=a.repeats, threads=torch.get_num_threads(),
                  load_seconds=load_s, decide_seconds_median=statistics.median(times), decide_seconds=times)
    print(f"{len(questions):,} active edits: load {load_s:.2f} s; deciding {a.batch} questions "
          f"{result['decide_seconds_median'] * 1000:.1f} ms median of {a.repeats} "
          f"({result['decide_seconds_median'] / a.batch * 1000:.2f} ms per question)")
    write_result(a.out, a.tag or f"route_{len(questions)}", result)
    return result


if __name__ == "__main__":
    main()
