"""The portable edit set: `sam edits export` writes it, `sam edits import` replays it.

A JSON file, versioned and checksummed:
    {"format": "sam-edits", "version": 2, "model": ..., "prompt_format": ..., "exported": ...,
     "sha256": <sha256 of the canonical JSON of "edits">, "edits": [{"question", "target", ...}]}
It holds questions and answers, not weights, so it replays on another model or layer: every edit is
made again through the same path as `sam correct` (confidence floor, verification). Version 1 files
(sam 0.1, no checksum, `prompt` in the line format) are read too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sam.constants import EXPORT_FORMAT, EXPORT_VERSION
from sam.core.failpoints import failpoint
from sam.errors import InvalidInputError

MAX_TEXT = 4000  # characters of a question or answer in a file (the model's own limit is checked later)


class ExportedEdit(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    id: int | None = None
    question: str = Field(min_length=1, max_length=MAX_TEXT)
    target: str = Field(min_length=1, max_length=MAX_TEXT)
    source: str = Field("import", max_length=200)
    importance: float = Field(1.0, ge=0.0, le=1e6, allow_inf_nan=False)
    created: str | None = None
    status: Literal["active", "reverted", "superseded"] = "active"

    @model_validator(mode="before")
    @classmethod
    def _v1(cls, data):
        if isinstance(data, dict) and "question" not in data and isinstance(data.get("prompt"), str):
            data = {**data, "question": data["prompt"].strip()}  # version 1: the line format's "question\n"
        if isinstance(data, dict) and type(data.get("importance")) is int:  # not a bool: True is no importance
            data = {**data, "importance": float(data["importance"])}
        return data

    @model_validator(mode="after")
    def _nonblank(self):
        if not self.question.strip() or not self.target.strip():
            raise ValueError("question and target must not be blank")
        return self


class ExportFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: Literal["sam-edits"]
    version: Literal[1, 2]
    model: str | None = None
    prompt_format: str | None = None
    exported: str | None = None
    sha256: str | None = None
    edits: list[ExportedEdit]


def _digest(edits: list) -> str:
    return hashlib.sha256(json.dumps(edits, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_export(path: Path, records, model: str, prompt_format: str) -> None:
    from sam.memory.atomic import atomic_write

    edits = [{"id": r.id, "question": r.question, "target": r.target, "source": r.source,
              "importance": r.importance, "created": r.created, "status": r.status} for r in records]
    doc = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": model, "prompt_format": prompt_format,
           "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "sha256": _digest(edits),
           "edits": edits}
    text = json.dumps(doc, indent=2, ensure_ascii=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:  # UTF-8 whatever the locale: read_export reads UTF-8
            f.write(text[: len(text) // 2])
            f.flush()
            failpoint("export.partial")  # killed here: half a temp file, the export file untouched
            f.write(text[len(text) // 2:])

    atomic_write(Path(path), write)


def read_export(path: Path) -> list[ExportedEdit]:
    """The edits of an export file, validated; any problem is one InvalidInputError line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path} is not UTF-8 text") from None
    except RecursionError:  # json's parser recurses: a file nested thousands deep is not an export
        raise InvalidInputError(f"{path} is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT:
        raise InvalidInputError(f"{path} is not a sam edits export (want format '{EXPORT_FORMAT}')")
    try:
        doc = ExportFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(f"{path}: {where}: {first['msg']}") from None
    if doc.version >= 2:
        if doc.sha256 != _digest(raw["edits"]):
            raise InvalidInputError(f"{path}: checksum mismatch: the edits were changed after export")
    return doc.edits
