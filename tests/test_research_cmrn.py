"""CMRN (sam.research.cmrn): behaviour that could fail, on tiny CPU configurations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sam.errors import InvalidInputError
from sam.research.cmrn import (CMRN, CMRNConfig, CMRNTrainer, DynamicRouter, PersistentMemory, SymbolicLogicUnit,
                               TemporalAbstraction, TrainingConfig, TransformerConfig, TransformerLM)
from sam.research.cmrn.temporal import linear_scan

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> CMRNConfig:
    base = dict(d_model=32, expert_hidden=48, pattern_slots=48, symbolic_props=24, temporal_layers=2, memory_dim=16,
                memory_k=4, memory_size=512, scan_chunk=16, num_experts=4, routing_k=2)
    return CMRNConfig(**{**base, **kw})


def model(seed=0, **kw) -> CMRN:
    torch.manual_seed(seed)
    return CMRN(tiny(**kw)).eval()


def ids(B=2, T=40, seed=1):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- shapes and routing
@pytest.mark.parametrize("strategy", ["learned", "hash", "random"])
def test_forward_shapes_and_topk_routing(strategy):
    m = model(routing_strategy=strategy)
    out = m(ids(), use_memory=False)
    assert out.logits.shape == (2, 40, 256)
    assert out.routing_weights.shape == (2, 40, 4) and out.routing_indices.shape == (2, 40, 2)
    nz = (out.routing_weights > 0).sum(-1)
    assert torch.all(nz == 2)  # exactly k experts per token
    assert torch.allclose(out.routing_weights.sum(-1), torch.ones(2, 40), atol=1e-5)
    picked = torch.zeros_like(out.routing_weights).scatter(-1, out.routing_indices, 1.0)
    assert torch.equal(picked > 0, out.routing_weights > 0)  # the weights sit on the reported indices
    assert set(out.memory_stats) >= {"size", "capacity", "null_weight"}


def test_learned_routing_picks_the_top_logits_at_eval_and_hash_is_a_function_of_the_token():
    r = DynamicRouter(8, 5, k=2).eval()
    x = torch.randn(3, 7, 8)
    info = r(x)
    top = r.logits(x).topk(2, -1).indices
    assert torch.equal(info.indices.sort(-1).values, top.sort(-1).values)
    h = DynamicRouter(8, 5, k=2, strategy="hash")
    t = torch.tensor([[3, 9, 3, 9]])
    i = h(torch.randn(1, 4, 8), t).indices
    assert torch.equal(i[0, 0], i[0, 2]) and torch.equal(i[0, 1], i[0, 3]) and not torch.equal(i[0, 0], i[0, 1])
    s = r.get_usage_statistics()
    assert s["tokens"] == 21 and sum(s["expert_counts"]) == 42


def test_router_losses_penalise_collapse():
    r = DynamicRouter(4, 4, k=1, gumbel_noise=False, load_balance_coef=1.0, z_loss_coef=0.0).train()
    with torch.no_grad():
        r.proj.weight.zero_()
        r.proj.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
    uniform = float(r(torch.randn(2, 64, 4)).aux_loss.detach())
    with torch.no_grad():
        r.proj.bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0]))
    collapsed = float(r(torch.randn(2, 64, 4)).aux_loss.detach())
    assert collapsed > 3.0 * uniform


def test_symbolic_unit_ops_are_fuzzy_logic():
    p, q = torch.tensor([0.0, 1.0, 1.0, 0.3]), torch.tensor([1.0, 1.0, 0.0, 0.5])
    AND, OR, NOT, IMP = SymbolicLogicUnit.apply_ops(p, q).unbind(-2)
    assert torch.allclose(AND, torch.tensor([0.0, 1.0, 0.0, 0.15]))
    assert torch.allclose(OR, torch.tensor([1.0, 1.0, 1.0, 0.65]))
    assert torch.allclose(NOT, torch.tensor([1.0, 0.0, 0.0, 0.7]))
    assert torch.allclose(IMP, torch.tensor([1.0, 1.0, 0.0, 0.85]))  # 1 -> 0 is false


# ---------------------------------------------------------------- temporal recurrence
def test_linear_scan_matches_the_recurrence_and_states_continue_a_stream():
    a, b, h0 = torch.rand(2, 45, 6), torch.randn(2, 45, 6), torch.randn(2, 6)
    h = linear_scan(a, b, h0, chunk=8)
    ref, hp = [], h0
    for t in range(45):
        hp = a[:, t] * hp + b[:, t]
        ref.append(hp)
    assert torch.allclose(h, torch.stack(ref, 1), atol=1e-5)
    ta = TemporalAbstraction(16, 3, 4.0, chunk=8).eval()
    x = torch.randn(2, 30, 16)
    full, s_full = ta(x)
    y1, s1 = ta(x[:, :13])
    y2, s2 = ta(x[:, 13:], previous_states=s1)
    assert torch.allclose(torch.cat([y1, y2], 1), full, atol=1e-5)
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(s2, s_full))


def test_cmrn_is_causal_with_memory_on():
    m = model()
    x = ids(1, 48)
    y = x.clone()
    y[0, 30] = (y[0, 30] + 1) % 256
    with torch.no_grad():
        a = m.forward_segments(x, segment_len=8).logits
        b = m.forward_segments(y, segment_len=8).logits
    assert torch.allclose(a[:, :30], b[:, :30], atol=1e-6)
    assert not torch.allclose(a[:, 30:], b[:, 30:])


def test_streaming_with_faiss_memory_equals_the_training_path():
    m = model()
    x = ids(1, 64)
    with torch.no_grad():
        seg = m.forward_segments(x, segment_len=16).logits
        m.reset_memory()
        stream = torch.cat([m(x[:, s : s + 16], update_memory=True).logits for s in range(0, 64, 16)], 1)
    assert torch.allclose(seg, stream, atol=1e-5)
    assert len(m.memory) == 63 and m.memory.check_consistency()  # every position but the last (no next token yet)
    m.reset_memory()
    assert len(m.memory) == 0 and m.memory.index.ntotal == 0


def test_memory_update_rate_thins_the_writes():
    m = model(memory_update_rate=0.25)
    with torch.no_grad():
        for s in range(0, 64, 16):
            m(ids(1, 64)[:, s : s + 16], update_memory=True)
    assert len(m.memory) == 16  # positions 0, 4, ..., 60


# ---------------------------------------------------------------- persistent memory
def test_persistent_memory_lru_keeps_the_faiss_index_in_step():
    torch.manual_seed(0)
    mem = PersistentMemory(capacity=6, key_dim=4, value_dim=3)
    k = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    slots = mem.write(k, torch.arange(18.0).view(6, 3))
    assert sorted(slots.tolist()) == list(range(6)) and mem.check_consistency()
    ids_, _ = mem.query(k[[1, 4]], 1)  # touch slots 1 and 4: they become most recently used
    assert ids_[:, 0].tolist() == [1, 4]
    k2 = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    new = mem.write(k2, torch.full((4, 3), -1.0))
    assert set(new.tolist()) == {0, 2, 3, 5}  # the four least recently used
    assert len(mem) == 6 and mem.index.ntotal == 6 and mem.evictions == 4 and mem.check_consistency()
    ids_, sc = mem.query(k2, 1)
    assert ids_[:, 0].tolist() == new.tolist() and torch.allclose(sc[:, 0], torch.ones(4), atol=1e-5)
    keys, values, mask = mem.gather(ids_)
    assert torch.equal(values[:, 0], torch.full((4, 3), -1.0)) and mask.all()
    ids_, _ = mem.query(k[[1]], 8)  # asking for more than stored pads with -1
    assert (ids_ == -1).sum() == 2
    with pytest.raises(InvalidInputError):
        mem.write(torch.randn(2, 5), torch.randn(2, 3))
    with pytest.raises(InvalidInputError):
        mem.query(torch.randn(2, 3), 1)


# ---------------------------------------------------------------- persistence
def test_save_load_is_exact_and_pickle_free(tmp_path):
    m = model()
    m.add_expert("symbolic", "python")
    x = ids(1, 32)
    with torch.no_grad():
        m(x, update_memory=True)
        ref = m(x, use_memory=True).logits
    m.save(tmp_path / "m", include_memory=True)
    files = sorted(p.name for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert files == ["config.json", "memory.json", "memory.safetensors", "model.safetensors"]
    r = CMRN.load(tmp_path / "m")
    assert [e.expert_type for e in r.experts][-1] == "symbolic" and r.router.num_experts == 5
    assert r.memory.check_consistency() and len(r.memory) == len(m.memory)
    with torch.no_grad():
        got = r(x, use_memory=True).logits
    assert torch.equal(ref, got)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["added_experts"] == [{"type": "symbolic", "domain": "python"}]
    with pytest.raises(InvalidInputError):
        CMRN.load(tmp_path / "missing")


# ---------------------------------------------------------------- training, domains
def test_continual_train_changes_only_the_new_expert():
    m = model()
    tc = TrainingConfig(learning_rate=1e-2, batch_size=2, seq_len=32, segment_len=16, max_steps=3, warmup_steps=1)
    tr = CMRNTrainer(m, tc)
    new = tr.add_domain_expert("python")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = np.frombuffer(b"def f(x):\n    return x + 1\n" * 40, dtype=np.uint8).copy()
    hist = tr.continual_train(data, "python", freeze_existing_experts=True, steps=3)
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(f"experts.{new}.") or k.startswith("router.extra.0.") for k in changed)
    assert any(k.startswith(f"experts.{new}.") for k in changed)
    assert hist["trainable_parameters"] == sum(p.numel() for p in m.experts[new].parameters()) + 32 + 1
    assert all(p.requires_grad for p in m.parameters())  # unfrozen afterwards
    with pytest.raises(InvalidInputError):
        tr.continual_train(data, "medical")


def test_training_lowers_the_loss():
    m = model()
    m.train()
    data = np.frombuffer(b"to be or not to be, that is the question. " * 60, dtype=np.uint8).copy()
    tc = TrainingConfig(learning_rate=1e-2, batch_size=4, seq_len=32, segment_len=16, max_steps=30, warmup_steps=3,
                        eval_every=30)
    h = CMRNTrainer(m, tc).train(data, {"A": data})
    assert h["train_loss"][-1] < h["train_loss"][0] - 1.0 and h["eval"]["A"][-1] < 4.0


# ---------------------------------------------------------------- generation and knowledge
def test_incremental_generation_matches_full_recomputation():
    m = model()
    prompt = ids(1, 12)
    with torch.no_grad():
        g = m.generate(prompt, 10, temperature=0, use_memory=False)
        assert g.shape == (1, 22) and torch.equal(g[:, :12], prompt)
        for t in range(12, 22):  # each greedy token is the argmax of a full pass over the prefix
            assert int(m(g[:, :t], use_memory=False).logits[0, -1].argmax()) == int(g[0, t])


def test_populate_from_text_and_read_knowledge_with_a_given_encoder():
    m = model()

    def enc(texts):  # deterministic bag-of-letters embedding (the MiniLM path is tested in the slow suite)
        v = np.zeros((len(texts), 26), np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    v[i, ord(ch) - 97] += 1
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    texts = ["zebra zone zigzag", "apple banana", "quick quiet queen"]
    assert m.populate_from_text(texts, batch_size=2, embedding_model=enc) == 3
    hits = m.memory_system.retrieve_text("queen quiz", 1, embedding_model=enc)
    assert hits[0][0] == "quick quiet queen"
    got = m.read_knowledge("zigzag zebra", k=1, embedding_model=enc)
    assert got == ["zebra zone zigzag"] and len(m.memory) == len("zebra zone zigzag") - 1
    with pytest.raises(InvalidInputError):
        m.populate_from_text([""], embedding_model=enc)


@pytest.mark.slow
def test_populate_from_text_with_the_packaged_minilm():
    m = model()
    m.populate_from_text(["The capital of France is Paris.", "Photosynthesis happens in chloroplasts.",
                          "The Python GIL serialises bytecode execution."])
    hits = m.memory_system.retrieve_text("Which city is France's capital?", 1)
    assert hits[0][0].startswith("The capital of France") and m.memory_system.knowledge.check_consistency()


# ---------------------------------------------------------------- errors and the baseline
def test_clear_errors_on_bad_input():
    m = model()
    for bad in (torch.tensor([1, 2, 3]), torch.tensor([[1, 300]]), torch.tensor([[-1, 2]]), torch.zeros(1, 0).long(),
                torch.rand(1, 4)):
        with pytest.raises(InvalidInputError):
            m(bad)
    for kw in (dict(routing_k=5), dict(routing_strategy="greedy"), dict(expert_types=["neural"]),
               dict(memory_update_rate=0.0), dict(d_model=0)):
        with pytest.raises(InvalidInputError):
            tiny(**kw)
    with pytest.raises(InvalidInputError):
        DynamicRouter(8, 4, strategy="hash")(torch.randn(1, 2, 8))
    with pytest.raises(InvalidInputError):
        m.generate(ids(1, 4), -1)


def test_transformer_baseline_is_causal_and_keeps_its_window():
    torch.manual_seed(0)
    tf = TransformerLM(TransformerConfig(d_model=32, n_layer=2, n_head=2, d_ff=64, block_size=32)).eval()
    x = ids(1, 32)
    y = x.clone()
    y[0, 20] = (y[0, 20] + 1) % 256
    with torch.no_grad():
        a, b = tf(x)[0], tf(y)[0]
    assert torch.allclose(a[:, :20], b[:, :20], atol=1e-5) and not torch.allclose(a[:, 20:], b[:, 20:])
    with pytest.raises(ValueError):
        tf(ids(1, 33))
