"""A fitted, empty store to copy: tests and phase C start from it instead of paying the fit.

Opening a brand-new store fits the TopHash fingerprinter on background prompts (about a minute
on 2 busy cores). An empty store is a plain folder, so one is made once per (model, editor
code) and copied. The key hashes the editor's source and data, so a change there rebuilds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

_KEY_FILES = ("core/editor.py", "core/fingerprinter.py", "core/model_layers.py", "memory/edit_mask_db.py",
              "data/background_prompts.txt")


def _key(model: str) -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(model.encode())
    for rel in _KEY_FILES:
        p = root / rel
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()[:16]


def template_dir(model: str = "default") -> Path:
    cache = Path(os.environ.get("SAM_MODEL_CACHE") or Path.home() / ".cache" / "sam")
    return cache / "store-templates" / _key(model)


def fresh_store(dest: Path, model: str = "default", device: str = "cpu") -> Path:
    """Copy an empty fitted store to `dest` (made on first use, under a file lock)."""
    from sam.core.editor import MemoirEditor

    tpl = template_dir(model)
    tpl.parent.mkdir(parents=True, exist_ok=True)
    with open(tpl.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not fit it twice at once
        if not (tpl / "edits.sqlite").exists():
            building = tpl.with_name(tpl.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            MemoirEditor.open(building, model=model, device=device).close()
            os.replace(building, tpl)
    dest = Path(dest)
    shutil.copytree(tpl, dest, ignore=shutil.ignore_patterns(".lock"), dirs_exist_ok=True)
    return dest
