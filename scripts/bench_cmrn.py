#!/usr/bin/env python
"""Thin wrapper: `python scripts/bench_cmrn.py [--smoke] [--seeds N] [--out DIR]` == `sam bench cmrn ...`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam.research.cmrn.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
