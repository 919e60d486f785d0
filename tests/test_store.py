"""Store: the folder of one model's edits. Real SQLite files, real locks, real safetensors.

Rules under test (sam/core/store.py): one writer at a time; readers never create, migrate or clean;
a store is created only where no store files are; a missing or empty database next to other store
files is refused, never replaced; deltas are checksummed; a writer open drops orphaned temp files
and upgrades a schema-1 store once, keeping a backup.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
import torch

import sam.core.store as store_mod
from sam.constants import BACKUP_DIR, DB_FILE, FINGERPRINTER_FILE, LOCK_FILE, SCHEMA_VERSION
from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation
from sam.core.store import Store
from sam.errors import CorruptStoreError, StoreLockedError, UnknownEditError
from sam.memory.edit_mask_db import checksum, pack

D_FF, D_MODEL, K = 32, 6, 4
IDENTITY = {"model": "tiny:abc", "layer": 1, "d_ff": D_FF, "d_model": D_MODEL, "top_k": K, "fingerprinter": None}


def fingerprinter(seed: int = 0) -> TopHashFingerprinter:
    fp = TopHashFingerprinter(generate_permutation(D_FF, seed), K)
    fp.fit_background(torch.randn(5, D_FF, generator=torch.Generator().manual_seed(seed)))
    return fp


def delta_of(n: int, d_model: int = D_MODEL) -> torch.Tensor:
    return torch.randn(d_model, K, generator=torch.Generator().manual_seed(100 + n))


def cols_of(n: int) -> torch.Tensor:
    return torch.arange(n * K, (n + 1) * K) % D_FF


def add(st: Store, n: int, **kw) -> int:
    row = dict(prompt=f"q{n}\n", question=f"q{n}", target=f"t{n}", cols=cols_of(n), delta=delta_of(n), source="test",
               importance=1.0, steps=3, loss=0.1)
    return st.add_edit(**{**row, **kw})


def make_store(root, n_edits: int = 2) -> list[int]:
    """A complete store (database with identity, fingerprinter, edits), closed again."""
    fp = fingerprinter()
    with Store(root) as st:
        assert st.created
        st.claim({**IDENTITY, "fingerprinter": fp.digest()})
        st.save_fingerprinter(fp)
        return [add(st, n) for n in range(n_edits)]


def listing(root) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# --- creation ---------------------------------------------------------------------------------------------
def test_a_store_is_created_in_a_new_folder_and_reopened_as_it_is(tmp_path):
    root = tmp_path / "a" / "store"
    ids = make_store(root)
    assert {DB_FILE, FINGERPRINTER_FILE, LOCK_FILE} <= set(listing(root))
    assert Store.exists(root) and not Store.exists(tmp_path / "a")
    with Store(root) as st:
        assert not st.created and st.db.schema == SCHEMA_VERSION
        assert [r.id for r in st.edits()] == ids
        assert st.load_fingerprinter().digest() == fingerprinter().digest()
    with Store(root, read_only=True) as ro:
        assert [r.id for r in ro.edits()] == ids and torch.equal(ro.delta(ids[1])[1], delta_of(1))


def test_a_store_is_created_in_an_empty_folder_and_unrelated_files_are_kept(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with Store(empty) as st:
        assert st.created
    other = tmp_path / "home"
    other.mkdir()
    (other / "plans.json").write_text("{}")  # the orchestrator's file lives beside a store
    with Store(other) as st:
        assert st.created
    assert (other / "plans.json").read_text() == "{}"


def test_a_database_a_failed_first_open_left_unclaimed_is_still_a_new_store(tmp_path):
    root = tmp_path / "store"
    with Store(root) as st:  # created, then the open failed before claiming it (bad option, missing model)
        assert st.created
    with Store(root, read_only=True) as st:
        assert st.check()["bad_deltas"] == []  # checking it does not trip over the shape it never recorded
    with Store(root) as st:  # not mistaken for schema 1, not refused for its missing fingerprinter
        assert st.created and st.db.schema == SCHEMA_VERSION and st.load_fingerprinter() is None
        st.claim({**IDENTITY, "fingerprinter": fingerprinter().digest()})
        add(st, 0)
    with Store(root) as st:
        assert not st.created and st.db.count() == 1


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("beside", [FINGERPRINTER_FILE, "memory"])
def test_a_missing_database_next_to_store_files_is_refused_never_replaced(tmp_path, read_only, beside):
    root = tmp_path / "store"
    make_store(root)
    (root / DB_FILE).unlink()
    if beside == "memory":
        (root / FINGERPRINTER_FILE).unlink()
        (root / "memory").mkdir()
    before = listing(root)
    with pytest.raises(CorruptStoreError, match="missing") as err:
        Store(root, read_only=read_only)
    assert "\n" not in str(err.value) and beside in str(err.value)
    assert listing(root) == before and not (root / DB_FILE).exists()
    with pytest.raises(CorruptStoreError):  # and again: the refusal left no lock behind
        Store(root, read_only=read_only)


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("alone", [False, True])
def test_an_empty_database_is_refused_never_replaced(tmp_path, read_only, alone):
    root = tmp_path / "store"
    make_store(root)
    (root / DB_FILE).write_bytes(b"")  # truncated to 0 bytes
    if alone:
        (root / FINGERPRINTER_FILE).unlink()
    with pytest.raises(CorruptStoreError, match="empty"):
        Store(root, read_only=read_only)
    assert (root / DB_FILE).stat().st_size == 0
    assert not (root / f"{DB_FILE}-wal").exists()


@pytest.mark.parametrize("read_only", [False, True])
def test_a_garbled_database_is_one_line_corrupt_store_error(tmp_path, read_only):
    root = tmp_path / "store"
    make_store(root)
    garbage = os.urandom(8192)
    (root / DB_FILE).write_bytes(garbage)
    for _ in range(2):  # a failed writer open releases its lock: the second attempt fails the same way
        with pytest.raises(CorruptStoreError) as err:
            Store(root, read_only=read_only)
        msg = str(err.value)
        assert "\n" not in msg and str(root / DB_FILE) in msg and "Traceback" not in msg
    assert (root / DB_FILE).read_bytes() == garbage


def test_a_read_only_open_of_a_folder_without_a_store_raises_and_creates_nothing(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(CorruptStoreError, match="no sam store"):
        Store(missing, read_only=True)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorruptStoreError, match="no sam store"):
        Store(empty, read_only=True)
    assert listing(empty) == []


# --- lock -------------------------------------------------------------------------------------------------
def test_one_writer_at_a_time_readers_alongside(tmp_path):
    root = tmp_path / "store"
    ids = make_store(root)
    writer = Store(root)
    try:
        with pytest.raises(StoreLockedError, match="in use"):
            Store(root)
        with Store(root, read_only=True) as reader:  # a reader does not take the lock
            assert [r.id for r in reader.edits()] == ids
        new = add(writer, 5)
        with Store(root, read_only=True) as reader:  # and sees what the writer committed
            assert torch.equal(reader.delta(new)[1], delta_of(5))
    finally:
        writer.close()
    writer.close()  # closing twice is harmless
    with Store(root) as again:  # the lock went with close()
        assert again.db.count() == 3


def test_the_lock_is_held_across_processes(tmp_path):
    """flock on <store>/.lock, seen from another process (plain Python: no torch import to pay for)."""
    import subprocess
    import sys

    root = tmp_path / "store"
    make_store(root)
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")
    with Store(root):
        assert subprocess.run([sys.executable, "-c", probe, str(root / LOCK_FILE)], timeout=60).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, str(root / LOCK_FILE)], timeout=60).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()\n",
                               str(root / LOCK_FILE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError):
            Store(root)
        with Store(root, read_only=True) as ro:
            assert ro.db.count() == 2
    finally:
        holder.communicate("", timeout=60)
    with Store(root) as st:
        assert st.db.count() == 2


# --- orphans ----------------------------------------------------------------------------------------------
def test_orphaned_temp_files_are_removed_by_a_writer_not_by_a_reader(tmp_path):
    root = tmp_path / "store"
    make_store(root)
    orphans = [f".{FINGERPRINTER_FILE}.k3j2_x.tmp", f".{DB_FILE}.abc.tmp"]
    keep = ["notes.tmp", "fingerprinter.tmp.bak"]  # not the atomic writes' `.<name>.*.tmp`
    for name in orphans + keep:
        (root / name).write_bytes(b"half a file")
    with Store(root, read_only=True):
        pass
    assert all((root / n).exists() for n in orphans + keep)
    with Store(root):
        pass
    assert not any((root / n).exists() for n in orphans)
    assert all((root / n).exists() for n in keep)


def test_atomic_fingerprinter_write_leaves_no_temp_file(tmp_path):
    root = tmp_path / "store"
    make_store(root)
    assert not list(root.glob(".*.tmp"))


# --- deltas, checksums, cache -------------------------------------------------------------------------------
def corrupt_delta(root, edit_id: int) -> None:
    con = sqlite3.connect(root / DB_FILE)
    (d,) = con.execute("SELECT delta FROM edits WHERE id = ?", (edit_id,)).fetchone()
    flipped = bytearray(d)
    flipped[7] ^= 0x10
    con.execute("UPDATE edits SET delta = ? WHERE id = ?", (bytes(flipped), edit_id))
    con.commit()
    con.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_a_checksum_mismatch_is_caught_by_delta_and_by_check(tmp_path, read_only):
    root = tmp_path / "store"
    ids = make_store(root, 3)
    corrupt_delta(root, ids[1])
    with Store(root, read_only=read_only) as st:
        with pytest.raises(CorruptStoreError, match="checksum") as err:
            st.delta(ids[1])
        assert "\n" not in str(err.value)
        assert torch.equal(st.delta(ids[0])[1], delta_of(0)) and torch.equal(st.delta(ids[2])[1], delta_of(2))
        report = st.check()
    assert report["ok"] is False and report["integrity"] == "ok" and report["fingerprinter"] == "ok"
    assert report["bad_deltas"] == [{"id": ids[1], "status": "active", "problem": "checksum mismatch"}]
    assert (report["edits"], report["active"], report["schema"]) == (3, 3, SCHEMA_VERSION)


def test_check_reports_a_non_finite_delta(tmp_path):
    root = tmp_path / "store"
    ids = make_store(root)
    bad = delta_of(9)
    bad[0, 0] = float("inf")
    with Store(root) as st:
        nan_id = add(st, 9, delta=bad)
        st.set_status(ids[0], "reverted")
        report = st.check()
    assert report["bad_deltas"] == [{"id": nan_id, "status": "active", "problem": "non-finite delta"}]
    assert not report["ok"] and report["active"] == 2 and report["edits"] == 3


def test_a_bad_delta_of_an_edit_not_in_use_is_listed_but_not_a_failure(tmp_path):
    root = tmp_path / "store"
    ids = make_store(root, 3)
    corrupt_delta(root, ids[0])
    with Store(root) as st:
        st.set_status(ids[0], "reverted")  # what `sam repair` does with it
        report = st.check()
    assert report["bad_deltas"] == [{"id": ids[0], "status": "reverted", "problem": "checksum mismatch"}]
    assert report["ok"]


def test_check_of_a_healthy_store_and_of_a_missing_or_foreign_fingerprinter(tmp_path):
    root = tmp_path / "store"
    make_store(root)
    with Store(root, read_only=True) as st:
        report = st.check()
    assert report["ok"] and report["bad_deltas"] == [] and report["fingerprinter"] == "ok"
    fingerprinter(seed=1).save(root / FINGERPRINTER_FILE)  # another permutation: its digest is not recorded
    with Store(root, read_only=True) as st:
        with pytest.raises(CorruptStoreError, match="repair"):
            st.load_fingerprinter()
        report = st.check()
    assert not report["ok"] and "not the fingerprinter" in report["fingerprinter"]
    (root / FINGERPRINTER_FILE).unlink()
    with Store(root, read_only=True) as st:
        with pytest.raises(CorruptStoreError, match="missing"):
            st.load_fingerprinter()
    with Store(root) as st:  # a writer is told there is none (the editor decides: refuse, or repair)
        assert st.load_fingerprinter() is None
        assert st.check()["fingerprinter"] == "missing" and not st.check()["ok"]


def test_transactions_roll_back_rows_statuses_and_meta(tmp_path):
    root = tmp_path / "store"
    ids = make_store(root)
    with Store(root) as st:
        st.delta(ids[0])  # cached
        with pytest.raises(KeyError):
            with st.transaction():
                new = add(st, 4)
                st.set_status(ids[0], "superseded")
                st.set_meta(prefixes="[]")
                raise KeyError("crash")
        assert st.get(ids[0]).status == "active" and st.db.count(None) == 2
        with pytest.raises(UnknownEditError):
            st.get(new)
        assert torch.equal(st.delta(ids[0])[1], delta_of(0))
    with Store(root, read_only=True) as st:
        assert st.db.count(None) == 2 and st.meta("prefixes") is None and st.get(ids[0]).status == "active"


def test_the_delta_cache_returns_what_the_database_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "DELTA_CACHE", 3)
    root = tmp_path / "store"
    ids = make_store(root, 6)
    with Store(root) as st:
        for _ in range(2):
            for n, i in enumerate(ids):
                cols, delta = st.delta(i)
                db_cols, db_delta = st.db.sparse(i)
                assert torch.equal(cols, db_cols) and torch.equal(delta, db_delta)
                assert torch.equal(cols, cols_of(n)) and torch.equal(delta, delta_of(n))
                assert len(st._cache) <= 3
        assert list(st._cache) == ids[-3:]  # least recently used out first
        st.delta(ids[3])
        assert list(st._cache) == [ids[4], ids[5], ids[3]]
        hit = st.delta(ids[3])
        assert hit is st.delta(ids[3])  # a hit: no SQLite read
        st.set_status(ids[3], "reverted")  # a status change drops the entry
        assert ids[3] not in st._cache


def test_a_cached_delta_is_read_back_from_the_database_by_a_new_store(tmp_path):
    root = tmp_path / "store"
    ids = make_store(root)
    with Store(root) as st:
        st.delta(ids[0])
    corrupt_delta(root, ids[0])
    with Store(root, read_only=True) as st:  # a new Store has no cache: the corruption shows
        with pytest.raises(CorruptStoreError, match="checksum"):
            st.delta(ids[0])


def test_unknown_edit_ids(tmp_path):
    root = tmp_path / "store"
    make_store(root)
    with Store(root) as st:
        for bad in (999, 0, "x", None):
            with pytest.raises(UnknownEditError):
                st.delta(bad)
            with pytest.raises(UnknownEditError):
                st.get(bad)
        with pytest.raises(UnknownEditError):
            st.set_status(999, "reverted")


def test_meta_round_trip(tmp_path):
    root = tmp_path / "store"
    make_store(root)
    with Store(root) as st:
        st.set_meta(prefixes='["a", "b"]', n=3)
        assert st.meta("n") == "3" and st.meta("absent", "dflt") == "dflt"
    with Store(root, read_only=True) as st:
        assert st.meta("prefixes") == '["a", "b"]'


# --- schema 1 -> 2 ----------------------------------------------------------------------------------------
V1_IDENTITY = {"model": "tiny:abc", "layer": 1, "d_ff": D_FF, "top_k": K, "fingerprinter": "f00d"}


def v1_rows() -> list[dict]:
    return [{"prompt": f"Question {n}?\n", "target": f"answer {n}", "cols": cols_of(n), "delta": delta_of(n),
             "status": "reverted" if n == 1 else "active", "steps": n, "loss": 0.25 * n} for n in range(3)]


def test_a_schema_1_store_is_upgraded_once_in_place_with_a_backup(tmp_path, build_v1_store):
    root = build_v1_store(tmp_path / "store", v1_rows(), V1_IDENTITY, memory_files=2)
    v1_bytes = (root / DB_FILE).read_bytes()
    with Store(root) as st:
        assert st.db.schema == SCHEMA_VERSION and not st.created
        assert st.meta("upgraded_from") == "1" and st.meta("prompt_format") == "line"
        assert st.meta("d_model") == str(D_MODEL)
        recs = st.edits(None)
        assert [(r.id, r.prompt, r.question, r.target, r.status, r.steps, r.loss, r.supersedes) for r in recs] == \
            [(n + 1, f"Question {n}?\n", f"Question {n}?", f"answer {n}", "reverted" if n == 1 else "active", n,
              0.25 * n, None) for n in range(3)]
        assert recs[0].created == "2025-01-02T03:04:05+00:00"
        for n in range(3):
            cols, delta = st.delta(n + 1)
            assert torch.equal(cols, cols_of(n)) and torch.equal(delta, delta_of(n))  # exactly
        ids, cols = st.active_columns()
        assert ids.tolist() == [1, 3]
        report = st.check()
        assert report["integrity"] == "ok" and report["bad_deltas"] == [] and report["schema"] == 2
        tables = {r[0] for r in st.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {r[0] for r in st.db.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert tables == {"meta", "edits"} and {"edits_status", "edits_question"} <= indexes
    assert not (root / "memory").exists()
    backups = listing(root / BACKUP_DIR)
    assert len(backups) == 2 and backups[0].startswith(f"{DB_FILE}.v1.") and backups[1].startswith("memory.v1.")
    assert len(listing(root / BACKUP_DIR / backups[1])) == 2  # the dense expert files, moved whole
    con = sqlite3.connect(root / BACKUP_DIR / backups[0])  # the backup is the schema-1 database as it was
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)
    assert con.execute("SELECT COUNT(*) FROM edits").fetchone() == (3,)
    assert con.execute("SELECT sparse FROM edits WHERE id = 1").fetchone()[0] == v1_rows_blob(0)
    con.close()
    assert (root / DB_FILE).read_bytes() != v1_bytes

    with Store(root) as st:  # a second open: nothing to upgrade
        assert st.db.schema == SCHEMA_VERSION and st.db.count(None) == 3
        assert torch.equal(st.delta(3)[1], delta_of(2))
    assert len(listing(root / BACKUP_DIR)) == 2
    with Store(root, read_only=True) as ro:  # and readers open it now
        assert ro.db.schema == SCHEMA_VERSION and torch.equal(ro.delta(1)[0], cols_of(0))


def v1_rows_blob(n: int) -> bytes:
    from safetensors.torch import save as st_save

    return st_save({"cols": cols_of(n).to(torch.int64).contiguous(), "delta": delta_of(n)})


def test_a_reader_refuses_a_schema_1_store_and_names_sam_upgrade(tmp_path, build_v1_store):
    root = build_v1_store(tmp_path / "store", v1_rows(), V1_IDENTITY)
    before = (root / DB_FILE).read_bytes()
    with pytest.raises(CorruptStoreError, match="sam upgrade") as err:
        Store(root, read_only=True)
    assert "\n" not in str(err.value)
    assert (root / DB_FILE).read_bytes() == before and (root / "memory").is_dir()
    assert not (root / BACKUP_DIR).exists()


def test_an_empty_schema_1_store_upgrades(tmp_path, build_v1_store):
    root = build_v1_store(tmp_path / "store", [], V1_IDENTITY, memory_files=0)
    with Store(root) as st:
        assert st.db.schema == SCHEMA_VERSION and st.db.count(None) == 0
        assert st.meta("d_model") is None  # no delta to learn it from: the editor's claim records it
        report = st.check()  # `sam doctor --check` right after `sam upgrade`
        assert report["bad_deltas"] == [] and report["integrity"] == "ok" and report["edits"] == 0
        st.claim({**V1_IDENTITY, "d_model": D_MODEL})
        new = add(st, 0)
        assert torch.equal(st.delta(new)[1], delta_of(0))


def test_an_unreadable_schema_1_delta_stops_the_upgrade_and_leaves_the_store_as_it_was(tmp_path, build_v1_store):
    rows = v1_rows()
    rows[2] = {**rows[2], "sparse": b"\x07 not safetensors"}
    root = build_v1_store(tmp_path / "store", rows, V1_IDENTITY)
    with pytest.raises(CorruptStoreError, match="edit 3") as err:
        Store(root)
    assert "\n" not in str(err.value)
    with pytest.raises(CorruptStoreError, match="sam upgrade"):  # still format 1, nothing half-done
        Store(root, read_only=True)
    con = sqlite3.connect(root / DB_FILE)
    assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == \
        {"meta", "edits", "experts"}
    assert con.execute("SELECT COUNT(*) FROM edits").fetchone() == (3,)
    con.close()
    assert (root / "memory").is_dir()


def test_an_upgrade_that_stopped_after_its_commit_moves_the_legacy_folder_at_the_next_writer_open(
        tmp_path, build_v1_store):
    root = build_v1_store(tmp_path / "store", v1_rows(), V1_IDENTITY, memory_files=0)
    with Store(root):
        pass
    (root / "memory").mkdir()  # as if the process had died between the upgrade's commit and the move
    (root / "memory" / "expert_000.x.safetensors").write_bytes(b"\x00")
    with Store(root, read_only=True):  # a reader leaves it
        pass
    assert (root / "memory").exists()
    with Store(root) as st:
        assert st.db.count(None) == 3
    assert not (root / "memory").exists()
    assert sum(n.startswith("memory.v1.") for n in listing(root / BACKUP_DIR)) == 1


def test_pack_matches_the_stored_checksum(tmp_path):
    root = tmp_path / "store"
    ids = make_store(root)
    con = sqlite3.connect(root / DB_FILE)
    c, d, digest = con.execute("SELECT cols, delta, checksum FROM edits WHERE id = ?", (ids[0],)).fetchone()
    con.close()
    assert (c, d, digest) == pack(cols_of(0), delta_of(0)) and digest == checksum(c, d)
