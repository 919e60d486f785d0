#!/usr/bin/env python
"""Phase A verification on the real model (see sam/verify/phase_a.py for the checks)."""

import argparse
import sys

from sam.verify.phase_a import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default", help="default, gemma3-270m or a HF model folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    sys.exit(main(model=args.model, device=args.device, json_out=args.json))
