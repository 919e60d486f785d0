#!/usr/bin/env python
"""MemNet benchmark (docs/memnet.md): python scripts/bench_memnet.py --help"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam.research.memnet.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
