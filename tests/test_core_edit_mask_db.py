"""EditMaskDatabase: transactions, nearest-mask search, identity, corruption."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from sam.errors import CorruptStoreError, StoreMismatchError, UnknownEditError
from sam.memory.edit_mask_db import EditMaskDatabase

D_FF, K, D_MODEL = 100, 10, 6
IDENTITY = {"model": "tiny:abc", "layer": 1, "d_ff": D_FF, "top_k": K, "fingerprinter": "f00d"}


def cols_of(*idx: int) -> torch.Tensor:
    return torch.tensor(sorted(idx), dtype=torch.int64)


MASKS = [cols_of(*range(0, 10)), cols_of(*range(10, 20)), cols_of(*range(50, 60))]


def insert(db: EditMaskDatabase, cols: torch.Tensor, n: int = 0, delta: torch.Tensor | None = None) -> int:
    delta = torch.full((D_MODEL, K), float(n)) if delta is None else delta
    return db.insert_edit(prompt=f"p{n}", target=f"t{n}", cols=cols, delta=delta, expert=0, source="test",
                          importance=1.0, steps=n, loss=0.5)


@pytest.fixture
def db(tmp_path):
    d = EditMaskDatabase(tmp_path / "edits.sqlite", identity=IDENTITY)
    with d.transaction():
        ids = [insert(d, m, i) for i, m in enumerate(MASKS)]
    for i, m in zip(ids, MASKS):
        d.add_to_index(i, m)
    d.ids = ids
    yield d
    d.close()


def dense(cols: torch.Tensor) -> torch.Tensor:
    m = torch.zeros(D_FF)
    m[cols] = 1.0
    return m


def test_find_closest_returns_the_right_edit(db):
    for i, m in zip(db.ids, MASKS):
        hit = db.find_closest(dense(m), threshold=1.0)  # dense 0/1 mask
        assert hit is not None and hit.edit_id == i and hit.overlap == 1.0
        hit = db.find_closest(m, threshold=1.0)  # or the k indices
        assert hit is not None and hit.edit_id == i


def test_threshold_is_respected(db):
    q = cols_of(0, 1, 2, 3, 4, 5, 6, 90, 91, 92)  # 7 of mask 0's 10 columns
    m = db.nearest(q.view(1, -1))[0]
    assert m.edit_id == db.ids[0] and m.overlap == pytest.approx(0.7)
    assert db.find_closest(q, threshold=0.7).edit_id == db.ids[0]
    assert db.find_closest(q, threshold=0.71) is None
    far = cols_of(*range(80, 90))  # overlaps nothing
    assert db.find_closest(far, threshold=0.01) is None
    assert db.nearest(far.view(1, -1))[0].overlap == 0.0


def test_nearest_is_batched_and_empty_index_gives_none(tmp_path, db):
    got = db.nearest(torch.stack([MASKS[2], MASKS[0]]))
    assert [g.edit_id for g in got] == [db.ids[2], db.ids[0]]
    empty = EditMaskDatabase(tmp_path / "empty.sqlite", identity=IDENTITY)
    assert empty.nearest(torch.stack(MASKS)) == [None, None, None]
    empty.close()


def test_failed_transaction_rolls_everything_back(db):
    before = db.count()
    with pytest.raises(RuntimeError):
        with db.transaction():
            new = insert(db, cols_of(*range(30, 40)), 7)
            db.set_expert_file(0, "expert_000.x.safetensors", 4)
            db.set_status(db.ids[0], "reverted")
            raise RuntimeError("crash before commit")
    assert db.count() == before
    assert db.experts() == []
    assert db.get(db.ids[0]).status == "active"
    with pytest.raises(UnknownEditError):
        db.get(new)
    # and a committed transaction sticks
    with db.transaction():
        db.set_expert_file(0, "expert_000.y.safetensors", 3)
    assert db.experts() == [{"id": 0, "file": "expert_000.y.safetensors", "n_edits": 3}]


def test_rows_and_sparse_deltas_round_trip_across_reopen(tmp_path, db):
    delta = torch.randn(D_MODEL, K, generator=torch.Generator().manual_seed(0))
    with db.transaction():
        new = insert(db, cols_of(*range(60, 70)), 9, delta)
    db.add_to_index(new, cols_of(*range(60, 70)))
    db.close()
    again = EditMaskDatabase(tmp_path / "edits.sqlite", identity=IDENTITY)  # index rebuilt from SQLite
    try:
        cols, d = again.sparse(new)
        assert torch.equal(cols, cols_of(*range(60, 70))) and torch.equal(d, delta)
        rec = again.get(new)
        assert (rec.prompt, rec.target, rec.steps, rec.status, rec.expert) == ("p9", "t9", 9, "active", 0)
        assert again.find_closest(cols_of(*range(60, 70)), threshold=1.0).edit_id == new
        assert [r.id for r in again.edits()] == db.ids + [new]
        assert set(again.active_columns()) == set(db.ids + [new])
    finally:
        again.close()


def test_reverted_edits_leave_the_index_and_the_active_list(tmp_path, db):
    with db.transaction():
        db.set_status(db.ids[1], "reverted")
    db.remove_from_index(db.ids[1])
    assert db.find_closest(MASKS[1], threshold=0.5) is None
    assert [r.id for r in db.edits()] == [db.ids[0], db.ids[2]]
    assert [r.status for r in db.edits(status=None)] == ["active", "reverted", "active"]
    assert db.count("reverted") == 1
    db.close()
    again = EditMaskDatabase(tmp_path / "edits.sqlite", identity=IDENTITY)
    assert again.find_closest(MASKS[1], threshold=0.5) is None  # not rebuilt into the index either
    again.close()


def test_unknown_ids(db):
    for bad in (999, "x", None):
        with pytest.raises(UnknownEditError):
            db.get(bad)
    with pytest.raises(UnknownEditError):
        db.sparse(999)


@pytest.mark.parametrize("key,value", [("model", "other:123"), ("layer", 2), ("d_ff", 64), ("top_k", 5),
                                       ("fingerprinter", "beef")])
def test_identity_mismatch_is_refused(tmp_path, db, key, value):
    db.close()
    with pytest.raises(StoreMismatchError, match=key):
        EditMaskDatabase(tmp_path / "edits.sqlite", identity={**IDENTITY, key: value})
    same = EditMaskDatabase(tmp_path / "edits.sqlite", identity=dict(IDENTITY))  # the right one still opens
    assert same.count() == 3
    same.close()


def test_read_only(tmp_path, db):
    with pytest.raises(CorruptStoreError):
        EditMaskDatabase(tmp_path / "nothing.sqlite", read_only=True)
    ro = EditMaskDatabase(tmp_path / "edits.sqlite", identity=IDENTITY, read_only=True)
    try:
        assert ro.count() == 3 and ro.find_closest(MASKS[2], threshold=1.0).edit_id == db.ids[2]
        with pytest.raises(sqlite3.OperationalError):
            with ro.transaction():
                insert(ro, MASKS[0])
    finally:
        ro.close()
    # a read-only open of a database that never recorded an identity is refused
    bare = EditMaskDatabase(tmp_path / "bare.sqlite")
    bare.close()
    with pytest.raises(CorruptStoreError, match="identity"):
        EditMaskDatabase(tmp_path / "bare.sqlite", identity=IDENTITY, read_only=True)


def test_a_corrupt_database_file_is_refused(tmp_path):
    path = tmp_path / "edits.sqlite"
    path.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(CorruptStoreError):
        EditMaskDatabase(path, identity=IDENTITY)
