"""EditMaskDatabase (schema 2, plain sqlite3) and MaskIndex (FAISS binary nearest mask), on real files."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from sam.constants import SCHEMA_VERSION
from sam.errors import CorruptStoreError, StoreMismatchError, UnknownEditError
from sam.memory.edit_mask_db import MAX_ID, EditMaskDatabase, check_edit_id, checksum, pack
from sam.memory.mask_index import MaskIndex

D_FF, K, D_MODEL = 100, 10, 6
IDENTITY = {"model": "tiny:abc", "layer": 1, "d_ff": D_FF, "d_model": D_MODEL, "top_k": K, "fingerprinter": "f00d"}
MASKS = [torch.arange(0, 10), torch.arange(10, 20), torch.arange(50, 60)]


def delta_of(n: int) -> torch.Tensor:
    return torch.randn(D_MODEL, K, generator=torch.Generator().manual_seed(n))


def insert(db: EditMaskDatabase, cols: torch.Tensor, n: int = 0, **kw) -> int:
    row = dict(prompt=f"<p>q{n}</p>", question=f"q{n}", target=f"t{n}", cols=cols, delta=delta_of(n), source="test",
               importance=1.0, steps=n, loss=0.5)
    return db.insert_edit(**{**row, **kw})


@pytest.fixture
def db(tmp_path):
    d = EditMaskDatabase(tmp_path / "edits.sqlite", create=True)
    d.claim(IDENTITY)
    d.ids = [insert(d, m, i) for i, m in enumerate(MASKS)]
    yield d
    d.close()


def reopen(db: EditMaskDatabase, **kw) -> EditMaskDatabase:
    db.close()
    return EditMaskDatabase(db.path, **kw)


# --- creation, identity ---------------------------------------------------------------------------------
def test_a_new_database_records_schema_and_identity(db):
    again = reopen(db)
    try:
        assert again.schema == SCHEMA_VERSION == 2
        assert {k: again.meta[k] for k in IDENTITY} == {k: str(v) for k, v in IDENTITY.items()}
        again.claim(IDENTITY)  # the same identity opens it again
    finally:
        again.close()


@pytest.mark.parametrize("key,value", [("model", "other:123"), ("layer", 2), ("d_ff", 64), ("d_model", 7),
                                       ("top_k", 5), ("fingerprinter", "beef")])
def test_identity_mismatch_is_refused_and_changes_nothing(db, key, value):
    again = reopen(db)
    try:
        with pytest.raises(StoreMismatchError, match=key):
            again.claim({**IDENTITY, key: value})
        assert again.meta[key] == str(IDENTITY[key])
        assert again.count() == 3
    finally:
        again.close()


def test_an_identity_key_the_store_lacks_is_recorded_once_the_rest_matches(tmp_path):
    """A store that predates a key (d_model: schema 1 upgraded with no edits) learns it from the model."""
    path = tmp_path / "edits.sqlite"
    d = EditMaskDatabase(path, create=True)
    d.claim({k: v for k, v in IDENTITY.items() if k != "d_model"})
    assert "d_model" not in d.meta
    d.claim(IDENTITY)
    assert d.meta["d_model"] == str(D_MODEL)
    new = insert(d, MASKS[0], 4)
    d.close()
    again = EditMaskDatabase(path)
    try:
        assert again.meta["d_model"] == str(D_MODEL)  # persisted
        assert torch.equal(again.sparse(new)[1], delta_of(4))
    finally:
        again.close()


def test_missing_empty_and_garbled_files_are_refused_and_left_alone(tmp_path):
    with pytest.raises(CorruptStoreError, match="no edit database"):
        EditMaskDatabase(tmp_path / "nothing.sqlite")
    assert not (tmp_path / "nothing.sqlite").exists()
    with pytest.raises(CorruptStoreError, match="no edit database"):
        EditMaskDatabase(tmp_path / "nothing.sqlite", read_only=True)
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for kw in ({}, {"read_only": True}, {"create": True}):  # 0 bytes: never used nor replaced, even by create
        with pytest.raises(CorruptStoreError, match="empty"):
            EditMaskDatabase(empty, **kw)
        assert empty.stat().st_size == 0
    garbled = tmp_path / "garbled.sqlite"
    garbled.write_bytes(b"this is not an sqlite database" * 100)
    for kw in ({}, {"read_only": True}):
        with pytest.raises(CorruptStoreError) as err:
            EditMaskDatabase(garbled, **kw)
        assert "\n" not in str(err.value) and str(garbled) in str(err.value)
    assert garbled.read_bytes() == b"this is not an sqlite database" * 100


# --- rows and deltas ------------------------------------------------------------------------------------
def test_rows_and_sparse_deltas_round_trip_exactly_across_reopen(db):
    again = reopen(db)
    try:
        for n, (i, m) in enumerate(zip(db.ids, MASKS)):
            cols, delta = again.sparse(i)
            assert cols.dtype == torch.int64 and delta.dtype == torch.float32 and delta.shape == (D_MODEL, K)
            assert torch.equal(cols, m) and torch.equal(delta, delta_of(n))
            rec = again.get(i)
            assert (rec.prompt, rec.question, rec.target, rec.source, rec.status, rec.supersedes, rec.steps) == \
                (f"<p>q{n}</p>", f"q{n}", f"t{n}", "test", "active", None, n)
            assert rec.loss == 0.5 and rec.importance == 1.0 and rec.created.endswith("+00:00")
        assert [r.id for r in again.edits()] == db.ids
        assert [r.id for r in again.find("q1")] == [db.ids[1]] and again.find("nope") == []
    finally:
        again.close()


def test_returned_deltas_do_not_alias_the_database(db):
    cols, delta = db.sparse(db.ids[0])
    delta.add_(1.0)
    cols.add_(1)
    assert torch.equal(db.sparse(db.ids[0])[1], delta_of(0))
    assert torch.equal(db.sparse(db.ids[0])[0], MASKS[0])


def test_active_columns_and_statuses(db):
    ids, cols = db.active_columns()
    assert ids.dtype == np.int64 and ids.tolist() == db.ids
    assert cols.shape == (3, K) and np.array_equal(cols, torch.stack(MASKS).numpy())
    db.set_status(db.ids[1], "reverted")
    db.set_status(db.ids[2], "superseded")
    ids, cols = db.active_columns()
    assert ids.tolist() == [db.ids[0]] and np.array_equal(cols[0], MASKS[0].numpy())
    assert [r.status for r in db.edits(None)] == ["active", "reverted", "superseded"]
    assert (db.count(), db.count("reverted"), db.count("superseded"), db.count(None)) == (1, 1, 1, 3)
    db.set_status(db.ids[1], "reverted")  # idempotent
    db.set_status(db.ids[0], "reverted")
    empty_ids, empty_cols = db.active_columns()
    assert empty_ids.shape == (0,) and empty_cols.shape == (0, K)


def test_supersedes_is_stored(db):
    new = insert(db, MASKS[0], 7, question="q0", supersedes=db.ids[0])
    assert db.get(new).supersedes == db.ids[0]
    assert [r.id for r in db.find("q0")] == [db.ids[0], new]


@pytest.mark.parametrize("bad", [0, -1, MAX_ID + 1, 2**64, "x", "1.5", None, [1], 999])
def test_unknown_or_malformed_ids(db, bad):
    with pytest.raises(UnknownEditError) as err:
        db.get(bad)
    assert "no edit with id" in str(err.value) and not str(err.value).startswith("'")
    with pytest.raises(UnknownEditError):
        db.sparse(bad)
    with pytest.raises(UnknownEditError):
        db.set_status(bad, "reverted")
    assert db.count(None) == 3


def test_check_edit_id_accepts_the_sqlite_range():
    assert check_edit_id(1) == 1 and check_edit_id("42") == 42 and check_edit_id(MAX_ID) == MAX_ID
    assert check_edit_id(np.int64(7)) == 7


def test_pack_and_checksum():
    c, d, digest = pack(MASKS[0], delta_of(0))
    assert len(c) == 4 * K and len(d) == 4 * K * D_MODEL  # int32 columns, float32 delta
    assert digest == checksum(c, d) and len(digest) == 64
    assert checksum(c, d[:-1] + b"\x00") != digest


# --- transactions ----------------------------------------------------------------------------------------
def test_failed_transaction_rolls_everything_back(db):
    with pytest.raises(RuntimeError):
        with db.transaction():
            new = insert(db, torch.arange(30, 40), 7)
            db.set_status(db.ids[0], "superseded")
            db.set_meta({"prefixes": "[]"})
            with db.transaction():  # a nested block joins the outer one
                insert(db, torch.arange(40, 50), 8)
            raise RuntimeError("crash before commit")
    assert db.count(None) == 3 and db.get(db.ids[0]).status == "active"
    with pytest.raises(UnknownEditError):
        db.get(new)
    again = reopen(db)  # nothing reached the file either
    try:
        assert again.count(None) == 3 and "prefixes" not in again.meta
        with again.transaction():  # and a committed one sticks
            insert(again, torch.arange(30, 40), 7)
            again.set_status(db.ids[0], "reverted")
    finally:
        again.close()
    again = EditMaskDatabase(db.path)
    try:
        assert again.count(None) == 4 and again.get(db.ids[0]).status == "reverted"
    finally:
        again.close()


def test_a_failing_statement_rolls_back_its_own_write(db):
    with pytest.raises(UnknownEditError):
        with db.transaction():
            db.set_status(db.ids[0], "reverted")
            db.set_status(12345, "reverted")
    assert db.get(db.ids[0]).status == "active"


def test_read_only_reads_and_refuses_writes(db):
    ro = reopen(db, read_only=True)
    try:
        assert ro.count() == 3 and torch.equal(ro.sparse(db.ids[2])[1], delta_of(2))
        ro.claim(IDENTITY)
        with pytest.raises(StoreMismatchError):
            ro.claim({**IDENTITY, "layer": 9})
        with pytest.raises(CorruptStoreError, match="read-only"):
            with ro.transaction():
                pass
        with pytest.raises(CorruptStoreError, match="read-only"):
            insert(ro, MASKS[0], 9)
        assert ro.count(None) == 3
    finally:
        ro.close()


def test_a_read_only_open_of_a_database_without_identity_is_refused(tmp_path):
    EditMaskDatabase(tmp_path / "bare.sqlite", create=True).close()
    ro = EditMaskDatabase(tmp_path / "bare.sqlite", read_only=True)
    try:
        with pytest.raises(CorruptStoreError, match="identity"):
            ro.claim(IDENTITY)
    finally:
        ro.close()


# --- checks -----------------------------------------------------------------------------------------------
def test_checksum_mismatch_is_detected_on_read_and_by_verify(db):
    c, d, digest = pack(MASKS[1], delta_of(1))
    flipped = bytearray(d)
    flipped[5] ^= 0x01
    db.conn.execute("UPDATE edits SET delta = ? WHERE id = ?", (bytes(flipped), db.ids[1]))
    with pytest.raises(CorruptStoreError, match="checksum") as err:
        db.sparse(db.ids[1])
    assert "\n" not in str(err.value) and f"sam edits revert {db.ids[1]}" in str(err.value)
    assert torch.equal(db.sparse(db.ids[0])[1], delta_of(0))  # the others still read
    problems = {i: p for i, _, p in db.verify_rows()}
    assert problems == {db.ids[0]: None, db.ids[1]: "checksum mismatch", db.ids[2]: None}
    assert db.integrity() == "ok"  # SQLite itself sees nothing wrong: only the checksum can tell


def test_verify_reports_non_finite_and_wrong_size_deltas(db):
    bad = delta_of(5)
    bad[2, 3] = float("nan")
    nan_id = insert(db, torch.arange(20, 30), 5, delta=bad)
    inf_id = insert(db, torch.arange(30, 40), 6, delta=torch.full((D_MODEL, K), float("inf")))
    short_c, short_d, _ = pack(torch.arange(5), torch.zeros(D_MODEL, 5))
    db.conn.execute("UPDATE edits SET cols = ?, delta = ?, checksum = ? WHERE id = ?",
                    (short_c, short_d, checksum(short_c, short_d), db.ids[2]))
    problems = {i: p for i, _, p in db.verify_rows()}
    assert problems[nan_id] == problems[inf_id] == "non-finite delta"
    assert problems[db.ids[2]] == "wrong size" and problems[db.ids[0]] is None


# --- MaskIndex (FAISS, and the torch backend used on a GPU or where FAISS is missing) ----------------------------
@pytest.fixture(params=["faiss", "torch"])
def backend(request, monkeypatch):
    if request.param == "torch":  # as on a machine without FAISS: the same exact search, on torch
        import sam.memory.mask_index as mi

        monkeypatch.setattr(mi, "_faiss", lambda: None)
    return request.param


def test_mask_index_finds_the_largest_overlap_exactly(backend):
    index = MaskIndex(D_FF, K)
    assert index.backend == backend and len(index) == 0
    assert index.nearest(torch.stack(MASKS)) == [None, None, None]
    index.add([11, 22, 33], torch.stack(MASKS))
    assert len(index) == 3
    q = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 90, 91, 92],  # 7 of mask 11's columns
                      *[m.tolist() for m in MASKS],
                      list(range(80, 90))])  # overlaps nothing
    got = index.nearest(q)
    assert (got[0].edit_id, got[0].overlap) == (11, pytest.approx(0.7))
    assert [(g.edit_id, g.overlap) for g in got[1:4]] == [(11, 1.0), (22, 1.0), (33, 1.0)]
    assert got[4].overlap == 0.0
    index.remove(11)
    assert len(index) == 2 and index.nearest(q[:1])[0].edit_id != 11
    index.remove(999)  # removing an id it does not hold is harmless
    assert len(index) == 2


def test_mask_index_overlap_is_exact_for_every_overlap_size(backend):
    gen = torch.Generator().manual_seed(3)
    index = MaskIndex(D_FF, K)
    base = torch.randperm(D_FF, generator=gen)[:K].sort().values
    index.add([5], base.view(1, -1))
    rest = torch.tensor([c for c in range(D_FF) if c not in set(base.tolist())])
    for o in range(K + 1):
        q = torch.cat([base[:o], rest[: K - o]]).sort().values
        m = index.nearest(q.view(1, -1))[0]
        assert m.edit_id == 5 and m.overlap == pytest.approx(o / K)


def test_mask_index_codes_are_the_column_sets():
    index = MaskIndex(12, 3)
    codes = index.codes(np.array([[0, 1, 11]]))
    assert codes.shape == (1, 2)
    assert np.unpackbits(codes[0]).nonzero()[0].tolist() == [0, 1, 11]


def test_the_faiss_bits_round_d_ff_up_to_bytes():
    assert MaskIndex(D_FF, K).bits == 104 and MaskIndex(128, K).bits == 128


def test_mask_index_backends_agree_through_adds_and_removes(monkeypatch):
    """A random sequence of adds and removes (the torch backend fills a removed row with the last one):
    both backends report the same best overlap for every query, and an id that was removed never comes back."""
    import random

    import sam.memory.mask_index as mi

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    faiss_index = MaskIndex(D_FF, K)
    monkeypatch.setattr(mi, "_faiss", lambda: None)
    torch_index = MaskIndex(D_FF, K)
    assert (faiss_index.backend, torch_index.backend) == ("faiss", "torch")
    live: dict[int, torch.Tensor] = {}
    next_id = 1
    for step in range(120):
        if live and rng.random() < 0.35:
            victim = rng.choice(sorted(live))
            del live[victim]
            for ix in (faiss_index, torch_index):
                ix.remove(victim)
        else:
            cols = torch.randperm(D_FF, generator=gen)[:K].sort().values
            live[next_id] = cols
            for ix in (faiss_index, torch_index):
                ix.add([next_id], cols.view(1, -1))
            next_id += 1
        assert len(faiss_index) == len(torch_index) == len(live)
        if step % 10 == 0 and live:
            queries = torch.stack([torch.randperm(D_FF, generator=gen)[:K].sort().values for _ in range(5)]
                                  + [live[rng.choice(sorted(live))]])
            for q, a, b in zip(queries, faiss_index.nearest(queries), torch_index.nearest(queries)):
                assert a.overlap == pytest.approx(b.overlap) and b.edit_id in live and a.edit_id in live
                for m in (a, b):  # the overlap reported is the overlap with the edit reported
                    assert m.overlap == pytest.approx(float(torch.isin(q, live[m.edit_id]).sum()) / K)
            exact = torch_index.nearest(queries[-1:])[0]
            assert exact.overlap == 1.0
