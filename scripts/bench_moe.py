#!/usr/bin/env python
"""Memory-enhanced MoE vs. standard MoE: few-shot, continual learning, specialization, cost.

    python scripts/bench_moe.py                 # full run, 5 seeds (~10 min on 2 cores)
    python scripts/bench_moe.py --quick --seeds 1
"""

import argparse
import json
from pathlib import Path

from sam.research.moe.bench import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("results/moe"))
    ap.add_argument("--quick", action="store_true", help="tiny settings, well under a minute")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="also print the summary as JSON")
    a = ap.parse_args()
    res = main(seeds=a.seeds, out_dir=a.out, quick=a.quick, device=a.device)
    if a.json:
        print(json.dumps(dict(summary=res["summary"], memory_wins=res["memory_wins"]), indent=1, default=float))
