"""EditMaskDatabase: the edits, their masks and their sparse deltas, in one SQLite file.

Rows go in through sqlite-utils inside transactions, so a crash leaves the last committed state.
Nearest-mask search runs on a FAISS binary index: two k-sparse masks overlapping in o columns are
at Hamming distance 2(k - o), so the nearest code is the largest overlap. The database records the
model, layer and fingerprinter it belongs to and refuses to open for any other.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import sqlite_utils
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from sam.errors import CorruptStoreError, StoreMismatchError, UnknownEditError

SCHEMA_VERSION = "1"
IDENTITY_KEYS = ("model", "layer", "d_ff", "top_k", "fingerprinter")


@dataclass
class EditRecord:
    id: int
    prompt: str
    target: str
    source: str
    created: str
    importance: float
    expert: int
    status: str  # active | reverted
    steps: int
    loss: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Match:
    edit_id: int
    overlap: float  # |query ∩ edit| / k


class EditMaskDatabase:
    def __init__(self, path: Path | str, identity: dict[str, str] | None = None, read_only: bool = False):
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise CorruptStoreError(f"no edit database at {self.path}")
        try:
            uri = f"file:{self.path}?mode=ro" if read_only else str(self.path)
            conn = sqlite3.connect(uri, uri=read_only, timeout=10.0, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            if not read_only:
                self.db.enable_wal()
                self._create()
            self.meta = {r["key"]: r["value"] for r in self.db["meta"].rows}
        except sqlite3.DatabaseError as exc:
            raise CorruptStoreError(f"cannot read edit database {self.path}: {exc}") from exc
        if identity is not None:
            self._check_identity({k: str(v) for k, v in identity.items()}, read_only)
        self.top_k = int(self.meta.get("top_k", "0"))
        self.d_ff = int(self.meta.get("d_ff", "0"))
        self._index: faiss.IndexBinaryIDMap | None = None

    # --- schema and identity ----------------------------------------------------------------------------
    def _create(self) -> None:
        if "meta" not in self.db.table_names():
            with self.db.conn:
                self.db["meta"].create({"key": str, "value": str}, pk="key")
                self.db["edits"].create({
                    "id": int, "prompt": str, "target": str, "source": str, "created": str,
                    "importance": float, "expert": int, "status": str, "steps": int, "loss": float,
                    "sparse": bytes,  # safetensors: cols (k,) and delta (d_model, k)
                }, pk="id")
                self.db["edits"].create_index(["status"])
                self.db["experts"].create({"id": int, "file": str, "n_edits": int}, pk="id")
                self.db["meta"].insert({"key": "schema", "value": SCHEMA_VERSION})

    def _check_identity(self, identity: dict[str, str], read_only: bool) -> None:
        if not any(k in self.meta for k in IDENTITY_KEYS):
            if read_only:
                raise CorruptStoreError(f"{self.path} has no identity record")
            with self.db.conn:
                self.db["meta"].upsert_all([{"key": k, "value": v} for k, v in identity.items()], pk="key")
            self.meta.update(identity)
            return
        for key in IDENTITY_KEYS:
            if key in identity and self.meta.get(key) != identity[key]:
                raise StoreMismatchError(
                    f"store {self.path.parent} belongs to {key}={self.meta.get(key)!r}, not {identity[key]!r}; "
                    f"use another --store or the model it was made with")

    # --- writes ----------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self):
        """All writes inside commit together or not at all.

        sqlite-utils' own writes run in db.atomic(), which BEGINs and COMMITs when no transaction is
        open: under a bare `with conn:` each insert committed at once and nothing rolled back. Inside
        atomic() they become savepoints of this one transaction."""
        with self.db.atomic():
            yield

    def insert_edit(self, *, prompt: str, target: str, cols: torch.Tensor, delta: torch.Tensor, expert: int,
                    source: str, importance: float, steps: int, loss: float) -> int:
        """Insert inside an open transaction(); the index learns the mask once it commits via add_to_index."""
        blob = st_save({"cols": cols.to("cpu", torch.int64).contiguous(),
                        "delta": delta.detach().to("cpu", torch.float32).contiguous()})
        row = {"prompt": prompt, "target": target, "source": source, "importance": float(importance),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "expert": int(expert),
               "status": "active", "steps": int(steps), "loss": float(loss), "sparse": blob}
        return int(self.db["edits"].insert(row).last_pk)

    def set_status(self, edit_id: int, status: str) -> None:
        self.db["edits"].update(edit_id, {"status": status})

    def set_expert_file(self, expert: int, file: str, n_edits: int) -> None:
        self.db["experts"].upsert({"id": expert, "file": file, "n_edits": n_edits}, pk="id")

    # --- reads -------------------------------------------------------------------------------------------
    def get(self, edit_id: int) -> EditRecord:
        try:
            row = self.db["edits"].get(int(edit_id))
        except (sqlite_utils.db.NotFoundError, ValueError, TypeError):
            raise UnknownEditError(f"no edit with id {edit_id!r}") from None
        return _record(row)

    def sparse(self, edit_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cols (k,), delta (d_model, k)) of one edit."""
        row = next(self.db.query("select sparse from edits where id = ?", [int(edit_id)]), None)
        if row is None:
            raise UnknownEditError(f"no edit with id {edit_id!r}")
        t = st_load(row["sparse"])
        return t["cols"], t["delta"]

    def edits(self, status: str | None = "active") -> list[EditRecord]:
        cols = "id, prompt, target, source, created, importance, expert, status, steps, loss"
        if status is None:
            rows = self.db.query(f"select {cols} from edits order by id")
        else:
            rows = self.db.query(f"select {cols} from edits where status = ? order by id", [status])
        return [_record(r) for r in rows]

    def experts(self) -> list[dict]:
        return list(self.db["experts"].rows_where(order_by="id"))

    def count(self, status: str = "active") -> int:
        return self.db["edits"].count_where("status = ?", [status])

    def active_columns(self) -> dict[int, tuple[int, torch.Tensor]]:
        """edit id -> (expert, cols) for every active edit."""
        out = {}
        for r in self.db.query("select id, expert, sparse from edits where status = 'active'"):
            out[r["id"]] = (r["expert"], st_load(r["sparse"])["cols"])
        return out

    # --- nearest-mask search -----------------------------------------------------------------------------
    @property
    def _bits(self) -> int:
        return (self.d_ff + 7) // 8 * 8

    def _codes(self, cols: torch.Tensor) -> np.ndarray:
        """(N, k) column indices -> (N, bits/8) packed binary codes."""
        dense = np.zeros((cols.shape[0], self._bits), dtype=np.uint8)
        np.put_along_axis(dense, cols.cpu().numpy().astype(np.int64), 1, axis=1)
        return np.packbits(dense, axis=1)

    def index(self) -> faiss.IndexBinaryIDMap:
        if self._index is None:
            self._index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self._bits))
            active = self.active_columns()
            if active:
                ids = np.fromiter(active.keys(), dtype=np.int64)
                self._index.add_with_ids(self._codes(torch.stack([c for _, c in active.values()])), ids)
        return self._index

    def add_to_index(self, edit_id: int, cols: torch.Tensor) -> None:
        self.index().add_with_ids(self._codes(cols.view(1, -1)), np.array([edit_id], dtype=np.int64))

    def remove_from_index(self, edit_id: int) -> None:
        self.index().remove_ids(np.array([edit_id], dtype=np.int64))

    def nearest(self, cols: torch.Tensor) -> list[Match | None]:
        """For each query (B, k): the stored edit with the largest mask overlap."""
        index = self.index()
        if index.ntotal == 0:
            return [None] * cols.shape[0]
        dist, ids = index.search(self._codes(cols), 1)
        k = cols.shape[1]
        return [Match(int(i), (k - d / 2) / k) if i >= 0 else None for d, i in zip(dist[:, 0], ids[:, 0])]

    def find_closest(self, mask: torch.Tensor, threshold: float) -> Match | None:
        """The stored edit nearest to a mask (dense (d,) 0/1 or (k,) indices), if its overlap >= threshold."""
        cols = mask.nonzero().flatten() if mask.numel() == self.d_ff and mask.dtype != torch.int64 else mask
        match = self.nearest(cols.view(1, -1).long())[0]
        return match if match is not None and match.overlap >= threshold else None

    def close(self) -> None:
        self.db.conn.close()


def _record(row: dict) -> EditRecord:
    return EditRecord(**{k: row[k] for k in EditRecord.__dataclass_fields__})
