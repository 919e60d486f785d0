#!/usr/bin/env python
"""Phase C verification (chat, feedback edit, restart, locality, undo) on the real default model."""

import argparse
import sys

from sam.verify.phase_c import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.exit(main(model=args.model, device=args.device, json_out=args.json))
