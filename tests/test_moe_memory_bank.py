import math

import pytest
import torch

from sam.research.moe import MemoryBank, MemoryConfig, MemoryType
from sam.errors import CorruptStoreError, InvalidInputError


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw):
    base = dict(short_term_capacity=1000, similarity_threshold=-1.0, memory_dim=16, num_heads=4)
    return MemoryConfig(**(base | kw))


@pytest.fixture
def bank():
    torch.manual_seed(0)
    return MemoryBank(8, 3, cfg())


def test_store_returns_fresh_ids_and_dedups_same_content(bank):
    x = torch.randn(2, 8)
    a, b = bank.store(x[0], {"label": 1}), bank.store(x[1], {"label": 2})
    assert a != b and len(bank) == 2
    again = bank.store(x[0], {"label": 1}, importance=0.9)
    assert again == a and len(bank) == 2 and bank.get(a).importance == 0.9


def test_label_metadata_becomes_one_hot_value_and_target_is_accepted(bank):
    i = bank.store(torch.randn(8), {"label": 2})
    assert torch.equal(bank.get(i).value, torch.tensor([0.0, 0.0, 1.0]))
    j = bank.store(torch.randn(8), {"target": torch.tensor([0.2, 0.8, 0.0])})
    assert torch.allclose(bank.get(j).value, torch.tensor([0.2, 0.8, 0.0])) and "target" not in bank.get(j).metadata


def test_retrieve_finds_the_nearest_first(bank):
    x = torch.randn(20, 8)
    ids = bank.store_batch(x, torch.arange(20) % 3)
    res = bank.retrieve(x[7] + 0.01 * torch.randn(8), top_k=3)
    assert res[0][0].id == ids[7] and res[0][1] > res[1][1] >= res[2][1]


def test_batched_retrieve_matches_row_by_row(bank):
    x = torch.randn(30, 8)
    bank.store_batch(x)
    q = torch.randn(5, 8)
    batched = bank.retrieve(q, top_k=4)
    for i in range(5):
        assert [e.id for e, _ in batched[i]] == [e.id for e, _ in bank.retrieve(q[i], top_k=4)]


def test_threshold_filters_hits():
    torch.manual_seed(0)
    b = MemoryBank(8, 0, cfg(similarity_threshold=0.99))
    x = torch.randn(10, 8)
    b.store_batch(x)
    assert len(b.retrieve(x[3], top_k=5)) == 1  # only itself passes 0.99
    assert b.retrieve(-x[3], top_k=5) == []


def test_memory_type_filter(bank):
    x = torch.randn(6, 8)
    bank.store_batch(x[:3], memory_type=MemoryType.EPISODIC)
    sem = bank.store_batch(x[3:], memory_type=MemoryType.SEMANTIC)
    got = bank.retrieve(x[0], top_k=6, memory_type=MemoryType.SEMANTIC)
    assert sorted(e.id for e, _ in got) == sorted(sem)


def test_retrieval_counts_access(bank):
    i = bank.store(torch.randn(8))
    bank.retrieve(bank.get(i).content, top_k=1)
    bank.retrieve(bank.get(i).content, top_k=1)
    assert bank.get(i).access_count == 2


def test_short_term_overflow_keeps_important_and_forgets_the_rest():
    b = MemoryBank(8, 0, cfg(short_term_capacity=5))
    ids = [b.store(torch.randn(8), importance=0.9 if i == 0 else 0.2) for i in range(8)]
    assert len(b.short_term) == 5
    assert b.get(ids[0]).tier == "long"  # important: promoted on eviction
    assert b.get(ids[1]) is None and b.counters["evicted"] == 2


def test_consolidate_promotes_by_recency_and_access_and_builds_prototypes():
    b = MemoryBank(8, 3, cfg(consolidation_threshold=0.8, access_saturation=4))
    x = torch.randn(6, 8)
    ids = b.store_batch(x, torch.tensor([0, 0, 1, 1, 2, 2]), importance=0.5)
    b.get(ids[0]).access_count = 4  # recent + fully accessed -> score 1.0
    b.get(ids[1]).access_count = 4
    b.get(ids[1]).timestamp -= 10 * 3600  # old: recency ~0 -> score 0.5
    b.get(ids[2]).importance = 0.85  # important enough on its own
    r = b.consolidate()
    assert r["promoted"] == 2 and b.get(ids[0]).tier == "long" and b.get(ids[2]).tier == "long"
    assert b.get(ids[1]).tier == "short"
    protos = [e for e in b.entries() if e.memory_type == MemoryType.SEMANTIC]
    assert sorted(p.metadata["label"] for p in protos) == [0, 1]
    p0 = next(p for p in protos if p.metadata["label"] == 0)
    assert torch.allclose(p0.content, x[0]) and p0.metadata["prototype_of"] == 1


def test_prune_drops_low_importance_and_enforces_capacity():
    b = MemoryBank(8, 0, cfg(min_importance=0.3, episodic_capacity=4, consolidation_threshold=0.0))
    imps = [0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9]
    for v in imps:
        b.store(torch.randn(8), importance=v)
    b.consolidate()  # all promoted (threshold 0), then capacity trims to the 4 most important
    assert sorted(e.importance for e in b.entries()) == [0.6, 0.7, 0.8, 0.9]
    b.store(torch.randn(8), importance=0.05)
    r = b.prune()
    assert r["pruned"] == 1 and min(e.importance for e in b.entries()) >= 0.3 and r["remaining"] == 4


def test_faiss_matches_brute_force_on_small_banks(bank):
    x = torch.randn(200, 8)
    bank.store_batch(x)
    q = torch.randn(7, 8)
    brute = bank.search(q, top_k=5, count_access=False)
    bank.config.use_faiss = True
    fa = bank.search(q, top_k=5, count_access=False)
    assert torch.equal(brute["rows"], fa["rows"]) and torch.allclose(brute["sims"], fa["sims"], atol=1e-5)


def test_key_cache_follows_encoder_updates(bank):
    bank.store_batch(torch.randn(10, 8))
    k0 = bank.keys().clone()
    assert bank.keys() is bank.keys()  # cached
    opt = torch.optim.SGD(bank.encoder.parameters(), lr=1.0)
    loss = bank.encode(torch.randn(4, 8)).sum() + bank.encoder.mlp(torch.randn(4, 8)).pow(2).sum()
    loss.backward()
    opt.step()
    assert not torch.allclose(bank.keys(), k0)


def test_exclude_self_skips_the_query_itself(bank):
    x = torch.randn(10, 8)
    ids = bank.store_batch(x)
    r = bank.search(x[:3], top_k=2, exclude_self=True)
    for i in range(3):
        assert ids[i] not in [bank._stack()["entries"][j].id for j in r["rows"][i].tolist()]


@pytest.mark.parametrize("bad", [torch.randn(7), torch.randn(2, 8), torch.full((8,), float("nan")), [1.0] * 8])
def test_bad_content_is_rejected(bank, bad):
    with pytest.raises(InvalidInputError):
        bank.store(bad)


def test_bad_arguments_are_rejected(bank):
    with pytest.raises(InvalidInputError):
        bank.store(torch.randn(8), importance=1.5)
    with pytest.raises(InvalidInputError):
        bank.store(torch.randn(8), {"label": 7})  # value_dim is 3
    with pytest.raises(InvalidInputError):
        bank.store(torch.randn(8), {"obj": object()})
    with pytest.raises(InvalidInputError):
        bank.retrieve(torch.randn(3, 5))
    with pytest.raises(InvalidInputError):
        bank.retrieve(torch.tensor([float("nan")] * 8))


def test_empty_bank_retrieves_nothing(bank):
    assert bank.retrieve(torch.randn(8)) == []
    assert bank.get_statistics()["total"] == 0


def test_statistics_and_footprint(bank):
    bank.store_batch(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
    bank.store(torch.randn(8), memory_type=MemoryType.SEMANTIC)
    s = bank.get_statistics()
    assert (s["total"], s["episodic"], s["semantic"], s["short_term"]) == (6, 5, 1, 6)
    assert s["footprint_bytes"] >= 6 * 8 * 4 + 5 * 3 * 4


def test_save_load_round_trip_is_exact(bank, tmp_path):
    x = torch.randn(12, 8)
    bank.store_batch(x, torch.arange(12) % 3, importance=0.9)
    bank.store(torch.randn(8), {"note": "plain"})
    bank.consolidate()
    bank.retrieve(x[:4])
    bank.save(tmp_path / "bank")
    assert (tmp_path / "bank.safetensors").exists() and (tmp_path / "bank.json").exists()
    b2 = MemoryBank.load(tmp_path / "bank")
    for e1, e2 in zip(bank.entries(), b2.entries()):
        assert (e1.id, e1.memory_type, e1.importance, e1.access_count, e1.timestamp, e1.metadata, e1.tier) == \
               (e2.id, e2.memory_type, e2.importance, e2.access_count, e2.timestamp, e2.metadata, e2.tier)
        assert torch.equal(e1.content, e2.content)
        assert (e1.value is None and e2.value is None) or torch.equal(e1.value, e2.value)
    assert torch.equal(bank.keys(), b2.keys())
    q = torch.randn(3, 8)
    assert torch.equal(bank.search(q, count_access=False)["rows"], b2.search(q, count_access=False)["rows"])


def test_load_of_missing_or_corrupt_files_raises(tmp_path):
    with pytest.raises(CorruptStoreError):
        MemoryBank.load(tmp_path / "nothing")
    (tmp_path / "x.json").write_text("{not json")
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(CorruptStoreError):
        MemoryBank.load(tmp_path / "x")


def test_recency_score_decays():
    b = MemoryBank(8, 0, cfg())
    i = b.store(torch.randn(8))
    e = b.get(i)
    fresh = b._score(e, e.timestamp)
    old = b._score(e, e.timestamp + 3600)
    assert math.isclose(fresh, 0.5) and math.isclose(old, 0.5 * math.exp(-1))
