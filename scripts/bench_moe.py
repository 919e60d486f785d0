#!/usr/bin/env python
"""Memory-enhanced MoE vs. standard MoE: few-shot, continual learning, specialization, cost.

    python scripts/bench_moe.py                 # full run, 5 seeds (~10 min on 2 cores)
    python scripts/bench_moe.py --quick --seeds 1
"""

import sys

from sam.research.moe.bench import main

if __name__ == "__main__":
    sys.exit(main())
