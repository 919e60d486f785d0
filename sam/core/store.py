"""Store: the folder that holds one model's edits, and everything about its files.

    <store>/edits.sqlite               edits, keys, masks, sparse deltas (EditMaskDatabase)
    <store>/fingerprinter.safetensors  TopHash permutation and background
    <store>/.lock                      the writer lock
    <store>/backup/                    what an in-place upgrade kept of the previous format

Rules (issue: a store nothing can silently empty):
- one writer at a time (flock); readers never create, migrate or clean anything;
- a store is created only in an empty or new folder: a missing or empty database next to other
  store files is refused, never replaced;
- every delta carries a checksum, checked on read and by `check()`;
- a writer open removes the temp files a crash left behind and upgrades a schema-1 store once, in
  place, after copying it to backup/.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from sam.constants import (BACKUP_DIR, DB_FILE, FINGERPRINTER_FILE,
                           LEGACY_MEMORY_DIR, LOCK_FILE, SCHEMA_VERSION, STORE_FILES)
from sam.core.failpoints import failpoint
from sam.core.fingerprinter import TopHashFingerprinter
from sam.errors import CorruptStoreError, SamError, StoreLockedError
from sam.memory.edit_mask_db import EditMaskDatabase, EditRecord

DELTA_CACHE = 512  # deltas kept in RAM (LRU); a hit skips a SQLite read and a checksum


class Store:
    """Files, lock and database of one store. Opened by the editor; usable alone (doctor, export)."""

    def __init__(self, root: Path | str, read_only: bool = False):
        self.root = Path(root).expanduser()
        self.read_only = read_only
        self.db_path = self.root / DB_FILE
        self.fingerprinter_path = self.root / FINGERPRINTER_FILE
        self._lock_fd: int | None = None
        self.db: EditMaskDatabase | None = None
        self.created = False
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def exists(root: Path | str) -> bool:
        """True when a store (or what is left of one) lives in `root`."""
        root = Path(root).expanduser()
        return any((root / name).exists() for name in STORE_FILES)

    def _open(self) -> None:
        present = [name for name in STORE_FILES if (self.root / name).exists()]
        if self.read_only:
            if not present:
                raise CorruptStoreError(f"no sam store at {self.root} (nothing has been edited there yet)")
            if DB_FILE not in present:
                raise CorruptStoreError(f"{self.db_path} is missing but {', '.join(present)} are there: refusing "
                                        f"to open; restore the database or move the folder aside")
            self.db = EditMaskDatabase(self.db_path, read_only=True)
            if self.db.schema < SCHEMA_VERSION:
                raise CorruptStoreError(f"store {self.root} is in format {self.db.schema}; run `sam upgrade` once to "
                                        f"upgrade it in place (a backup is kept)")
            return
        self._lock()
        if present and DB_FILE not in present:
            raise CorruptStoreError(f"{self.db_path} is missing but {', '.join(present)} are there: refusing to "
                                    f"create a new, empty store over them; restore the database or move the "
                                    f"folder aside")
        self.created = DB_FILE not in present
        self.db = EditMaskDatabase(self.db_path, create=self.created)
        if not self.created and self.db.schema >= SCHEMA_VERSION and self.db.unclaimed:
            self.created = True  # made by an open that failed before claiming it (bad option, no model): still new
        self._clean_orphans()
        if not self.created and self.db.schema < SCHEMA_VERSION:
            self._upgrade_v1()

    def _lock(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SamError(f"store folder {self.root} is not writable: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"store {self.root} is in use by another sam process (one writer at a time)") from None
        self._lock_fd = fd

    def _clean_orphans(self) -> list[str]:
        """Temp files of interrupted atomic writes (`.<name>.*.tmp`): never referenced, safe to drop."""
        removed = []
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
        legacy = self.root / LEGACY_MEMORY_DIR
        if legacy.exists() and self.db is not None and self.db.schema >= SCHEMA_VERSION:
            self._move_to_backup(legacy, "memory.v1")  # an upgrade that stopped after its commit
            removed.append(LEGACY_MEMORY_DIR)
        return removed

    def _move_to_backup(self, path: Path, name: str) -> Path:
        dest = self.root / BACKUP_DIR / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}"
        dest.parent.mkdir(exist_ok=True)
        os.replace(path, dest)
        return dest

    # --- identity and fingerprinter ------------------------------------------------------------------
    def claim(self, identity: dict) -> None:
        self.db.claim(identity)

    def load_fingerprinter(self) -> TopHashFingerprinter | None:
        if not self.fingerprinter_path.exists():
            if not self.created and self.read_only:
                raise CorruptStoreError(f"{self.fingerprinter_path} is missing")
            return None
        fp = TopHashFingerprinter.load(self.fingerprinter_path)
        recorded = self.db.meta.get("fingerprinter")
        if recorded is not None and fp.digest() != recorded:
            raise CorruptStoreError(f"{self.fingerprinter_path} is not the fingerprinter this store was made with "
                                    f"(digest {fp.digest()}, recorded {recorded}); `sam repair` rebuilds it")
        return fp

    def save_fingerprinter(self, fp: TopHashFingerprinter) -> None:
        fp.save(self.fingerprinter_path)

    # --- edits ----------------------------------------------------------------------------------------
    def edits(self, status: str | None = "active") -> list[EditRecord]:
        return self.db.edits(status)

    def get(self, edit_id) -> EditRecord:
        return self.db.get(edit_id)

    def active_columns(self) -> tuple[np.ndarray, np.ndarray]:
        return self.db.active_columns()

    def active_keys(self, encode) -> tuple[list[str], torch.Tensor]:
        """Questions and sentence keys (N, 768) of the active edits, in id order; keys an older sam did not
        store are computed with `encode` (and kept, by a writer)."""
        from sam.core.sentence_key import DIM

        ids, questions, blobs = self.db.active_keys()
        missing = [n for n, b in enumerate(blobs) if b is None or len(b) != 4 * DIM]  # none, or another key's
        keys = torch.zeros(len(ids), DIM)
        present = [n for n, b in enumerate(blobs) if b is not None and len(b) == 4 * DIM]
        if present:
            keys[present] = torch.frombuffer(bytearray(b"".join(blobs[n] for n in present)),
                                             dtype=torch.float32).view(len(present), DIM)
        if missing:
            fresh = encode([questions[n] for n in missing]).cpu()
            keys[missing] = fresh
            if not self.read_only:
                self.db.set_qkeys([ids[n] for n in missing], fresh)
        return questions, keys

    def delta(self, edit_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cols (k,), delta (d_model, k)) of an edit, from the LRU cache or the database (checksummed)."""
        hit = self._cache.get(edit_id)
        if hit is not None:
            self._cache.move_to_end(edit_id)
            return hit
        value = self.db.sparse(edit_id)
        self._cache[edit_id] = value
        if len(self._cache) > DELTA_CACHE:
            self._cache.popitem(last=False)
        return value

    def add_edit(self, **row) -> int:
        return self.db.insert_edit(**row)

    def set_status(self, edit_id: int, status: str) -> None:
        self.db.set_status(edit_id, status)
        self._cache.pop(int(edit_id), None)

    def transaction(self):
        return self.db.transaction()

    def meta(self, key: str, default: str | None = None) -> str | None:
        return self.db.meta.get(key, default)

    def set_meta(self, **values) -> None:
        self.db.set_meta({k: str(v) for k, v in values.items()})

    # --- checks ---------------------------------------------------------------------------------------
    def check(self) -> dict:
        """Verify the store end to end: database integrity, every edit's delta, the fingerprinter."""
        report = {"store": str(self.root), "schema": self.db.schema, "integrity": self.db.integrity()}
        bad = [{"id": i, "status": s, "problem": p} for i, s, p in self.db.verify_rows() if p]
        report["edits"] = self.db.count(None)
        report["active"] = self.db.count("active")
        report["bad_deltas"] = bad
        try:
            fp = self.load_fingerprinter()
            report["fingerprinter"] = "ok" if fp is not None else "missing"
        except CorruptStoreError as exc:
            report["fingerprinter"] = str(exc)
        # a bad delta of an edit not in use (reverted, superseded) is listed but harmless: repair leaves it
        report["ok"] = report["integrity"] == "ok" and report["fingerprinter"] == "ok" and \
            not any(b["status"] == "active" for b in bad)
        return report

    # --- upgrade --------------------------------------------------------------------------------------
    def _upgrade_v1(self) -> None:
        """Schema 1 -> 2, in place, once: the database is copied to backup/ first, then every edit's
        safetensors blob becomes its cols/delta/checksum columns, in one transaction; the dense expert
        files are moved to backup/ (an edit now reads only its own delta)."""
        from safetensors.torch import load as st_load

        from sam.memory.edit_mask_db import pack, question_key

        conn = self.db.conn
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        backup = self.root / BACKUP_DIR / f"{DB_FILE}.v1.{time.strftime('%Y%m%d-%H%M%S')}"
        backup.parent.mkdir(exist_ok=True)
        shutil.copy2(self.db_path, backup)
        failpoint("store.upgrade.backup")
        rows = conn.execute("SELECT id, prompt, target, source, created, importance, status, steps, loss, sparse "
                            "FROM edits ORDER BY id").fetchall()
        d_model = None
        with self.db.transaction():
            conn.execute("ALTER TABLE edits RENAME TO edits_v1")
            conn.execute("DROP INDEX IF EXISTS idx_edits_status")
            from sam.memory.edit_mask_db import _SCHEMA

            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for (i, prompt, target, source, created, importance, status, steps, loss, blob) in rows:
                try:
                    t = st_load(blob)
                    c, d, digest = pack(t["cols"], t["delta"])
                except Exception as exc:  # the transaction rolls back: the store stays in format 1, as it was
                    raise CorruptStoreError(f"cannot upgrade {self.db_path}: edit {i}'s schema-1 delta is "
                                            f"unreadable ({type(exc).__name__}); the store is left as it was") from None
                d_model = t["delta"].shape[0]
                conn.execute("INSERT INTO edits(id, prompt, question, question_key, target, source, created, importance, "
                             "status, supersedes, steps, loss, cols, delta, checksum) "
                             "VALUES (?,?,?,?,?,?,?,?,?,NULL,?,?,?,?,?)",
                             (i, prompt, prompt.strip(), question_key(prompt), target, source, created, importance,
                              status, steps, loss, c, d, digest))
                failpoint("store.upgrade.mid")
            conn.execute("DROP TABLE edits_v1")
            conn.execute("DROP TABLE IF EXISTS experts")
            values = {"schema": str(SCHEMA_VERSION), "upgraded_from": "1", "backup": str(backup.name),
                      "prompt_format": "line"}  # sam 0.1 keyed every edit on "question\n"
            if d_model is not None:
                values["d_model"] = str(d_model)
            self.db.set_meta(values)
        failpoint("store.upgrade.after")
        legacy = self.root / LEGACY_MEMORY_DIR
        if legacy.exists():
            self._move_to_backup(legacy, "memory.v1")

    # --- export / import --------------------------------------------------------------------------------
    def export(self, path: Path, model: str, prompt_format: str, include_reverted: bool = False) -> int:
        """Write the edit set as a portable, versioned JSON file (replayed by `import_edits`)."""
        from sam.core.exchange import write_export

        rows = self.edits(None) if include_reverted else self.edits("active")
        write_export(Path(path), rows, model=model, prompt_format=prompt_format)
        return len(rows)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
