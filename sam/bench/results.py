"""Where a benchmark's figures go: results/.../TAG.json, written atomically, and said on stdout."""

from __future__ import annotations

import json
from pathlib import Path

from sam.memory.atomic import atomic_write


def write_result(out_dir: Path, tag: str, result: dict, quiet: bool = False) -> Path:
    """Write `result` as out_dir/TAG.json (a crash leaves the old file or the new one) and, unless quiet (a
    benchmark that says it itself, or prints its JSON), print its path."""
    path = Path(out_dir) / f"{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # default=float: numpy scalars, which the research benchmarks' summaries hold, are written as numbers
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2, default=float)))
    if not quiet:
        print(f"wrote {path}")
    return path
