#!/usr/bin/env python
"""The six memory-enhanced MoE demos: storage/retrieval, few-shot, consolidation, specialization, pruning, benchmark."""

import argparse

from sam.research.moe.demo import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    main(device=ap.parse_args().device)
