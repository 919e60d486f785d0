#!/usr/bin/env python
"""Write a fixed random TopHash permutation of range(hidden_size) to a safetensors file.

The file holds one int64 tensor, "permutation", with its size and seed in the metadata (no pickle).
A store built with `MemoirEditor.open(..., permutation_file=<file>)` then uses this permutation.

    python scripts/generate_permutation.py --hidden_size 1536 --output data/perm_1536.safetensors --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from sam.core.fingerprinter import generate_permutation, load_permutation, save_permutation
from sam.errors import SamError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden_size", "--hidden-size", type=int, required=True,
                        help="width of the down-projection input (the model's intermediate size, d_ff)")
    parser.add_argument("--output", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.output.suffix != ".safetensors":
        print(f"error: --output should end in .safetensors, got {args.output}", file=sys.stderr)
        return 2
    try:
        perm = generate_permutation(args.hidden_size, args.seed)
        save_permutation(perm, args.output, seed=args.seed)
        back = load_permutation(args.output)  # read it back: what was written is what a store will load
    except SamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not back.equal(perm):
        print(f"error: {args.output} did not read back as written", file=sys.stderr)
        return 1
    digest = hashlib.sha256(back.numpy().tobytes()).hexdigest()[:16]
    head = ", ".join(str(int(v)) for v in back[:8])
    print(f"wrote {args.output}: permutation of {back.numel()} (seed {args.seed}, sha256 {digest}), "
          f"starts [{head}{', ...' if back.numel() > 8 else ''}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
