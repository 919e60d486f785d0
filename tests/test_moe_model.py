import json

import pytest
import torch
import torch.nn.functional as F

from sam.research.moe import ExpertSpecialization, MemoryConfig, MemoryEnhancedMoE, create_memory_enhanced_moe
from sam.errors import InvalidInputError


pytestmark = pytest.mark.usefixtures("one_thread")


def model(**kw):
    torch.manual_seed(0)
    c = MemoryConfig(**({"similarity_threshold": 0.0, "memory_dim": 16, "num_heads": 4, "short_term_capacity": 200} | kw))
    return create_memory_enhanced_moe(8, 4, num_experts=3, hidden_dim=32, memory_config=c)


def data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 8, generator=g) * 3
    y = torch.arange(n) % 4
    return protos[y] + 0.2 * torch.randn(n, 8, generator=g), y


def test_forward_shapes_and_info():
    m = model()
    x, y = data(10)
    out, info = m(x)
    assert out.shape == (10, 4)
    assert info["total_memories_retrieved"] == 0 and info["routing_weights"].shape == (10, 3)
    assert set(info["active_experts"]) <= {0, 1, 2} and info["top_k_indices"].shape == (10, 2)
    assert info["aux_loss"].requires_grad
    out1, _ = m(x[0])  # a single (D,) input works too
    assert out1.shape == (1, 4)


def test_store_experience_in_forward_then_memory_changes_the_output():
    m = model().eval()
    x, y = data(20)
    off, _ = m(x, use_memory=False)
    _, info = m(x, store_experience=True, targets=y)
    assert info["stored"] == 40  # each input into its 2 routed experts
    assert m.get_memory_statistics()["total_memories"] == 40
    on, info = m(x, use_memory=True)
    assert info["total_memories_retrieved"] > 0 and not torch.allclose(on, off)
    assert (on.argmax(-1) == y).float().mean() == 1.0  # exact recall of what it stored


def test_store_without_targets_keeps_pseudo_labels_at_low_importance():
    m = model()
    x, _ = data(4)
    m(x, store_experience=True)
    es = [e for ex in m.experts for e in ex.memory.entries()]
    assert es and all(e.metadata.get("pseudo") and e.importance < 0.5 for e in es)
    assert all(torch.isclose(e.value.sum(), torch.tensor(1.0)) for e in es)


def test_store_experience_method_routes_or_targets_an_expert():
    m = model()
    x, y = data(5)
    got = m.store_experience(x, target=y, importance=0.9)
    assert len(got) == 10 and all(0 <= e < 3 for e, _ in got)
    got = m.store_experience(x[0], metadata={"label": 3, "task": "t"}, target_expert=2)
    assert got[0][0] == 2 and m.experts[2].memory.get(got[0][1]).metadata == {"label": 3, "task": "t"}
    with pytest.raises(InvalidInputError):
        m.store_experience(x, target_expert=7)


def test_few_shot_adapt_writes_memory_and_lowers_the_loss():
    m = model()
    x, y = data(12)
    ex = [(x[i], int(y[i])) for i in range(12)]
    with torch.no_grad():
        before = float(F.cross_entropy(m(x)[0], y))
    info = m.few_shot_adapt(ex, steps=10, lr=1e-2)
    assert info["stored"] == 24 and info["steps"] == 10 and info["specialization"] == "general"
    assert info["adaptation_loss"] < before
    stats = m.get_memory_statistics()
    assert stats["semantic_count"] > 0  # prototypes of the new classes right away
    assert (m.eval()(x)[0].argmax(-1) == y).all()


def test_few_shot_adapt_into_one_expert_and_without_memory():
    m = model()
    x, y = data(6)
    info = m.few_shot_adapt([(x[i], torch.tensor(int(y[i]))) for i in range(6)], target_expert=1, steps=0)
    assert info["expert_id"] == 1 and info["experts"] == [1]
    st = m.experts[1].memory.get_statistics()
    assert (st["episodic"], st["semantic"]) == (6, 4) and len(m.experts[0].memory) == 0  # + one prototype per label
    w0 = m.experts[0].head.weight.clone()
    info = m.few_shot_adapt([(x[i], int(y[i])) for i in range(6)], target_expert=1, steps=3, use_memory=False)
    assert info["stored"] == 0 and torch.equal(m.experts[0].head.weight, w0)  # other experts untouched


def test_bad_inputs_raise_invalid_input():
    m = model()
    with pytest.raises(InvalidInputError):
        m(torch.randn(3, 7))
    with pytest.raises(InvalidInputError):
        m(torch.full((2, 8), float("nan")))
    with pytest.raises(InvalidInputError):
        m(torch.zeros(0, 8))
    with pytest.raises(InvalidInputError):
        m.few_shot_adapt([])
    with pytest.raises(InvalidInputError):
        m.few_shot_adapt([(torch.randn(5), 1)])
    with pytest.raises(InvalidInputError):
        m(torch.randn(2, 8), store_experience=True, targets=torch.tensor([0, 9]))
    with pytest.raises(InvalidInputError):
        create_memory_enhanced_moe(8, 4, num_experts=0)
    with pytest.raises(InvalidInputError):
        create_memory_enhanced_moe(8, 4, num_experts=2, expert_specializations=[ExpertSpecialization.VISION])
    with pytest.raises(InvalidInputError):
        model(long_term_capacity=0)


def test_automatic_consolidation_and_pruning_every_n_forwards():
    m = model(consolidation_interval=3, prune_interval=4, min_importance=0.5)
    x, y = data(8)
    flags = [m(x, store_experience=True)[1] for _ in range(4)]  # pseudo-labelled: importance 0.3 < 0.5
    assert [f["consolidated"] for f in flags] == [False, False, True, False]
    assert [f["pruned"] for f in flags] == [False, False, False, True]
    s = m.get_memory_statistics()
    assert s["consolidations"] == 3 and s["prunes"] == 3 and s["total_memories"] == 0  # all below min_importance


def test_consolidate_and_prune_report_per_expert():
    m = model()
    x, y = data(10)
    m.store_experience(x, target=y, importance=0.9)
    c = m.consolidate_memory()
    assert set(c) == {0, 1, 2} and sum(r["promoted"] for r in c.values()) == 20
    p = m.prune_memory()
    assert sum(r["remaining"] for r in p.values()) == m.get_memory_statistics()["total_memories"]


def test_memory_statistics_totals_match_per_expert():
    m = model()
    x, y = data(10)
    m.store_experience(x, target=y)
    s = m.get_memory_statistics()
    assert s["total_memories"] == sum(v["total"] for v in s["per_expert"].values()) == 20
    assert s["episodic_count"] == 20 and s["short_term_count"] == 20 and s["per_expert"][0]["specialization"] == "general"
    u = m.gate.get_usage_statistics()
    assert u["total_forwards"] == 0  # storing routes without counting usage


def test_save_load_round_trip_is_exact(tmp_path):
    m = model()
    x, y = data(16)
    m.train()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(3):
        out, info = m(x, store_experience=True, targets=y)
        (F.cross_entropy(out, y) + info["aux_loss"]).backward()
        opt.step()
        opt.zero_grad()
    m.consolidate_memory()
    m.eval()
    d = m.save(tmp_path / "moe")
    assert not list(d.glob("*.pt")) and not list(d.glob("*.pkl"))
    json.loads((d / "config.json").read_text())
    m2 = MemoryEnhancedMoE.load(d).eval()
    q = torch.randn(9, 8)
    with torch.no_grad():
        assert torch.equal(m(q)[0], m2(q)[0]) and torch.equal(m(q, use_memory=False)[0], m2(q, use_memory=False)[0])
    for a, b in zip(m.experts, m2.experts):
        assert [e.id for e in a.memory.entries()] == [e.id for e in b.memory.entries()]
        assert all(torch.equal(e.content, f.content) for e, f in zip(a.memory.entries(), b.memory.entries()))
    assert m2.n_forwards == m.n_forwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    m = model().cuda()
    x, y = data(8)
    m(x.cuda(), store_experience=True, targets=y.cuda())
    out, info = m(x.cuda())
    assert out.is_cuda and info["total_memories_retrieved"] > 0
