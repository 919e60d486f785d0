"""A fitted, empty store to copy: tests and phase C start from it instead of paying the fit.

Opening a brand-new store fits the TopHash fingerprinter on background prompts (tens of seconds
on 2 busy cores). An empty store is a plain folder, so one is made once per (model, prompt format,
editor code) and copied. The key hashes the editor's source and data, so a change there rebuilds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

from sam.config import model_cache_dir
from sam.constants import DB_FILE, LOCK_FILE

_KEY_FILES = ("core/editor.py", "core/fingerprinter.py", "core/memory_layer.py", "core/prompts.py", "core/store.py",
              "memory/edit_mask_db.py", "data/background_prompts.txt")


def _key(model: str, prompt_format: str) -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(f"{model}:{prompt_format}".encode())
    for rel in _KEY_FILES:
        p = root / rel
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()[:16]


def template_dir(model: str = "default", prompt_format: str = "auto") -> Path:
    return model_cache_dir() / "store-templates" / _key(model, prompt_format)


def fresh_store(dest: Path, model: str = "default", device: str = "cpu", prompt_format: str = "auto") -> Path:
    """Copy an empty fitted store to `dest` (made on first use, under a file lock)."""
    from sam.core.editor import MemoirEditor

    tpl = template_dir(model, prompt_format)
    tpl.parent.mkdir(parents=True, exist_ok=True)
    with open(tpl.parent / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not fit it twice at once
        if not (tpl / DB_FILE).exists():
            building = tpl.with_name(tpl.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            with MemoirEditor.open(building, model=model, device=device, prompt_format=prompt_format) as ed:
                ed.prefixes  # sampled once and kept in the store
            os.replace(building, tpl)
    dest = Path(dest)
    shutil.copytree(tpl, dest, ignore=shutil.ignore_patterns(LOCK_FILE), dirs_exist_ok=True)
    return dest
