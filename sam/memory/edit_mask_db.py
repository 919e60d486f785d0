"""EditMaskDatabase: every edit, its key mask and its sparse delta, in one SQLite file.

The database is the single source of truth of a store: an edit's row holds the question it
answers, its k memory columns and its (d_model, k) delta, with a sha256 over both, so nothing
else on disk has to agree with it. Writes happen in transactions (a crash leaves the last
committed state), reads of a delta check its checksum. The database records the model, layer
and fingerprinter it belongs to and refuses to open for any other.

Schema 2 (this one): edits(id, prompt, question, target, source, created, importance, status,
supersedes, steps, loss, cols, delta, checksum). Schema 1 (sam <= 0.1) kept a safetensors blob per
edit and dense memory files per expert; `upgrade_v1` converts it in place.
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from sam.constants import SCHEMA_VERSION
from sam.core.failpoints import failpoint
from sam.errors import CorruptStoreError, StoreMismatchError, UnknownEditError

IDENTITY_KEYS = ("model", "layer", "d_ff", "d_model", "top_k", "fingerprinter", "prompt_format")
STATUSES = ("active", "reverted", "superseded")
MAX_ID = 2**63 - 1

_COLUMNS = "id, prompt, question, target, source, created, importance, status, supersedes, steps, loss"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edits (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,          -- the prompt the edit was trained on (rendered)
    question TEXT NOT NULL,        -- the question it answers (its key)
    question_key TEXT NOT NULL,    -- the question normalised: one active edit per key
    target TEXT NOT NULL,
    source TEXT NOT NULL,
    created TEXT NOT NULL,
    importance REAL NOT NULL,
    status TEXT NOT NULL,          -- active | reverted | superseded
    supersedes INTEGER,            -- the edit this one replaced (it comes back when this one is reverted)
    steps INTEGER NOT NULL,
    loss REAL NOT NULL,
    cols BLOB NOT NULL,            -- k int32, sorted
    delta BLOB NOT NULL,           -- (d_model, k) float32, row-major
    checksum TEXT NOT NULL,        -- sha256 of cols || delta
    qkey BLOB                      -- the question's sentence key: 768 float32 (recomputable from the question)
);
CREATE INDEX IF NOT EXISTS edits_status ON edits(status);
CREATE INDEX IF NOT EXISTS edits_question ON edits(question_key, status);
"""


# The tables sam 0.1 wrote (schema 1); `upgrade_v1` reads them, the tests and fault cases build one.
SCHEMA_V1 = """
CREATE TABLE [meta] ([key] TEXT PRIMARY KEY, [value] TEXT);
CREATE TABLE [edits] ([id] INTEGER PRIMARY KEY, [prompt] TEXT, [target] TEXT, [source] TEXT, [created] TEXT,
    [importance] FLOAT, [expert] INTEGER, [status] TEXT, [steps] INTEGER, [loss] FLOAT, [sparse] BLOB);
CREATE INDEX [idx_edits_status] ON [edits] ([status]);
CREATE TABLE [experts] ([id] INTEGER PRIMARY KEY, [file] TEXT, [n_edits] INTEGER);
"""


@dataclass
class EditRecord:
    id: int
    prompt: str
    question: str
    target: str
    source: str
    created: str
    importance: float
    status: str
    supersedes: int | None
    steps: int
    loss: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def question_key(question: str) -> str:
    """What makes two questions the same question: case, accents, punctuation and spacing aside."""
    from sam.core.prompts import normalize

    return normalize(question)


def checksum(cols: bytes, delta: bytes) -> str:
    return hashlib.sha256(cols + delta).hexdigest()


def pack(cols: torch.Tensor, delta: torch.Tensor) -> tuple[bytes, bytes, str]:
    """(k,) columns and (d_model, k) delta -> the blobs and checksum a row stores."""
    c = cols.detach().to("cpu", torch.int32).contiguous().numpy().tobytes()
    d = delta.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return c, d, checksum(c, d)


def check_edit_id(edit_id) -> int:
    """An edit id as an int in SQLite's range, or UnknownEditError."""
    try:
        value = int(edit_id)
    except (TypeError, ValueError, OverflowError):
        raise UnknownEditError(f"no edit with id {edit_id!r}") from None
    if not 0 < value <= MAX_ID:
        raise UnknownEditError(f"no edit with id {edit_id!r}")
    return value


class EditMaskDatabase:
    def __init__(self, path: Path | str, read_only: bool = False, create: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if not self.path.exists() and not create:
            raise CorruptStoreError(f"no edit database at {self.path}")
        if self.path.exists() and self.path.stat().st_size == 0:
            raise CorruptStoreError(f"edit database {self.path} is empty (0 bytes): refusing to use or replace it")
        self._depth = 0
        try:
            uri = f"file:{self.path}?mode=ro" if read_only else f"file:{self.path}"
            self.conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=False)
            if not read_only:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                if create:
                    with self.transaction():
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                self.conn.execute(statement)
                        # the format from the start: a database whose first open failed before claim() is
                        # not mistaken for schema 1 (meta without `schema`) and "upgraded"
                        self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)",
                                          (str(SCHEMA_VERSION),))
            self.meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            if not read_only and self.schema >= SCHEMA_VERSION:
                self._add_missing_columns()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise CorruptStoreError(f"cannot read edit database {self.path}: {exc}") from exc

    def _add_missing_columns(self) -> None:
        """Schema 2 grew two columns while it was new (question_key, qkey): add them to a store without."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(edits)")}
        if not have or {"question_key", "qkey"} <= have:
            return
        with self.transaction():
            if "question_key" not in have:
                self.conn.execute("ALTER TABLE edits ADD COLUMN question_key TEXT NOT NULL DEFAULT ''")
                rows = self.conn.execute("SELECT id, question FROM edits").fetchall()
                self.conn.executemany("UPDATE edits SET question_key = ? WHERE id = ?",
                                      [(question_key(q), i) for i, q in rows])
                self.conn.execute("CREATE INDEX IF NOT EXISTS edits_question ON edits(question_key, status)")
            if "qkey" not in have:
                self.conn.execute("ALTER TABLE edits ADD COLUMN qkey BLOB")

    # --- identity -------------------------------------------------------------------------------------
    @property
    def schema(self) -> int:
        return int(self.meta.get("schema", "1"))

    def claim(self, identity: dict) -> None:
        """A new database records whose it is; an existing one must match it."""
        identity = {k: str(v) for k, v in identity.items()}
        if not any(k in self.meta for k in IDENTITY_KEYS):
            if self.read_only:
                raise CorruptStoreError(f"{self.path} has no identity record")
            self.set_meta({**identity, "schema": str(SCHEMA_VERSION)})
            return
        for key in IDENTITY_KEYS:
            if key in identity and key in self.meta and self.meta[key] != identity[key]:
                raise StoreMismatchError(
                    f"store {self.path.parent} belongs to {key}={self.meta[key]!r}, not {identity[key]!r}; "
                    f"use another --store or the model and settings it was made with")
        # an identity key the store predates (d_model: a schema-1 store upgraded with no edits) is
        # recorded now, once the rest matched; reading a delta needs it
        missing = {k: identity[k] for k in IDENTITY_KEYS if k in identity and k not in self.meta}
        if missing and not self.read_only:
            self.set_meta(missing)

    @property
    def unclaimed(self) -> bool:
        """True for a database that never recorded whose it is and holds no edit (a first open that failed)."""
        return not any(k in self.meta for k in IDENTITY_KEYS) and self.count(None) == 0

    def set_meta(self, values: dict[str, str]) -> None:
        with self.transaction():
            failpoint("db.meta.before")
            self.conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                  "value = excluded.value", [(k, str(v)) for k, v in values.items()])
        self.meta.update({k: str(v) for k, v in values.items()})

    # --- writes ---------------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all; nested blocks join the outer one."""
        if self.read_only:
            raise CorruptStoreError("the store is open read-only")
        outer = self._depth == 0
        if outer:
            self.conn.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if outer:
                self.conn.execute("ROLLBACK")
            raise
        self._depth -= 1
        if outer:
            failpoint("db.commit.before")
            self.conn.execute("COMMIT")
            failpoint("db.commit.after")

    def insert_edit(self, *, prompt: str, question: str, target: str, cols: torch.Tensor, delta: torch.Tensor,
                    source: str, importance: float, steps: int, loss: float, supersedes: int | None = None,
                    qkey: torch.Tensor | None = None) -> int:
        c, d, digest = pack(cols, delta)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        k = None if qkey is None else qkey.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        with self.transaction():
            failpoint("db.insert.before")
            cur = self.conn.execute(
                f"INSERT INTO edits({_COLUMNS[4:]}, question_key, cols, delta, checksum, qkey) VALUES "
                "(?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?)",
                (prompt, question, target, source, created, float(importance), supersedes, int(steps), float(loss),
                 question_key(question), c, d, digest, k))
            failpoint("db.insert.after")
            return int(cur.lastrowid)

    def set_status(self, edit_id: int, status: str) -> None:
        assert status in STATUSES, status
        with self.transaction():
            failpoint("db.status.before")
            if self.conn.execute("UPDATE edits SET status = ? WHERE id = ?", (status, check_edit_id(edit_id))).rowcount != 1:
                raise UnknownEditError(f"no edit with id {edit_id!r}")
            failpoint("db.status.after")

    # --- reads ----------------------------------------------------------------------------------------
    def get(self, edit_id) -> EditRecord:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM edits WHERE id = ?", (check_edit_id(edit_id),)).fetchone()
        if row is None:
            raise UnknownEditError(f"no edit with id {edit_id!r}")
        return EditRecord(*row)

    def edits(self, status: str | None = "active") -> list[EditRecord]:
        if status is None:
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM edits ORDER BY id")
        else:
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM edits WHERE status = ? ORDER BY id", (status,))
        return [EditRecord(*r) for r in rows]

    def find(self, question: str, status: str = "active") -> list[EditRecord]:
        """The edits of this question (compared normalised), oldest first; an indexed lookup."""
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM edits WHERE question_key = ? AND status = ? ORDER BY id",
                                 (question_key(question), status))
        return [EditRecord(*r) for r in rows]

    def count(self, status: str | None = "active") -> int:
        if status is None:
            return self.conn.execute("SELECT COUNT(*) FROM edits").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM edits WHERE status = ?", (status,)).fetchone()[0]

    def active_columns(self) -> tuple[np.ndarray, np.ndarray]:
        """ids (N,) and columns (N, k) of every active edit: all an index needs (no delta is read)."""
        rows = self.conn.execute("SELECT id, cols FROM edits WHERE status = 'active' ORDER BY id").fetchall()
        k = int(self.meta.get("top_k", "0"))
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        cols = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int32).reshape(len(rows), k) if rows \
            else np.zeros((0, k), dtype=np.int32)
        return ids, cols

    def active_keys(self) -> tuple[list[int], list[str], list[bytes | None]]:
        """ids, questions and stored sentence keys (or None) of every active edit, in id order."""
        rows = self.conn.execute("SELECT id, question, qkey FROM edits WHERE status = 'active' ORDER BY id").fetchall()
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def set_qkeys(self, ids: list[int], keys: torch.Tensor) -> None:
        with self.transaction():
            self.conn.executemany("UPDATE edits SET qkey = ? WHERE id = ?",
                                  [(k.to("cpu", torch.float32).contiguous().numpy().tobytes(), int(i))
                                   for i, k in zip(ids, keys)])

    def sparse(self, edit_id) -> tuple[torch.Tensor, torch.Tensor]:
        """(cols (k,), delta (d_model, k)) of one edit, its checksum verified."""
        try:
            row = self.conn.execute("SELECT cols, delta, checksum FROM edits WHERE id = ?",
                                    (check_edit_id(edit_id),)).fetchone()
        except sqlite3.DatabaseError as exc:  # a damaged page under this row: the edit cannot be read back
            raise CorruptStoreError(f"edit {edit_id}'s stored delta cannot be read from {self.path} ({exc}): "
                                    f"run `sam doctor --check`") from None
        if row is None:
            raise UnknownEditError(f"no edit with id {edit_id!r}")
        c, d, digest = row
        if checksum(c, d) != digest:
            raise CorruptStoreError(f"edit {edit_id}'s stored delta fails its checksum in {self.path}: "
                                    f"run `sam doctor --check`, then `sam edits revert {edit_id}`")
        k, d_model = int(self.meta["top_k"]), int(self.meta["d_model"])
        cols = torch.frombuffer(bytearray(c), dtype=torch.int32).long()
        delta = torch.frombuffer(bytearray(d), dtype=torch.float32).view(d_model, k)
        return cols, delta

    def verify_rows(self) -> Iterator[tuple[int, str, str | None]]:
        """(id, status, problem or None) for every edit: checksum, shapes, finite values."""
        # a store that recorded no shape yet (unclaimed, or upgraded from schema 1 with no edit) has no rows to
        # size-check; reading the keys eagerly made check() raise KeyError on it
        k, d_model = self.meta.get("top_k"), self.meta.get("d_model")
        for edit_id, status in self.conn.execute("SELECT id, status FROM edits ORDER BY id").fetchall():
            try:  # row by row: a damaged page makes its edit unreadable, not the whole check
                c, d, digest = self.conn.execute("SELECT cols, delta, checksum FROM edits WHERE id = ?",
                                                 (edit_id,)).fetchone()
            except sqlite3.DatabaseError as exc:
                yield edit_id, status, f"unreadable ({exc})"
                continue
            problem = None
            if checksum(c, d) != digest:
                problem = "checksum mismatch"
            elif k is None or d_model is None or len(c) != 4 * int(k) or len(d) != 4 * int(k) * int(d_model):
                problem = "wrong size"
            elif not np.isfinite(np.frombuffer(d, dtype=np.float32)).all():
                problem = "non-finite delta"
            yield edit_id, status, problem

    def integrity(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None
