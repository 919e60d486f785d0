#!/usr/bin/env python
"""Sequential zsRE editing benchmark (same as `sam bench edit`). Example:

    python scripts/bench_editing.py --sizes 1,10,100 --device cpu
"""

import argparse
from pathlib import Path

from sam.bench.editing import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,10,100,1000", help="comma-separated T values (edits before evaluating)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=None, help="zsRE JSON (default: ../shared or data/zsre_sample.json)")
    ap.add_argument("--out", type=Path, default=Path("results/edit"))
    ap.add_argument("--tag", default=None, help="name of the JSON file written under --out")
    ap.add_argument("--compare-naive", type=int, default=5, help="edits to repeat with the naive loop (0: skip)")
    ap.add_argument("--no-generation", action="store_true", help="skip greedy exact-match (faster)")
    ap.add_argument("--generation-max", type=int, default=None, help="no exact match at checkpoints past this T")
    ap.add_argument("--json", action="store_true")
    for name, typ in [("layer", int), ("top_k", int), ("threshold", float), ("lr", float), ("max_steps", int),
                      ("stop_loss", float), ("n_prefixes", int), ("expert_load_bound", float)]:
        ap.add_argument(f"--{name.replace('_', '-')}", type=typ, default=None)
    a = ap.parse_args()
    main(a.sizes, a.device, a.out, a.model, a.data, a.compare_naive, not a.no_generation, a.json, a.tag,
         generation_max=a.generation_max,
         layer=a.layer, top_k=a.top_k, threshold=a.threshold, lr=a.lr, max_steps=a.max_steps,
         stop_loss=a.stop_loss, n_prefixes=a.n_prefixes, expert_load_bound=a.expert_load_bound)
