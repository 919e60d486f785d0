import pytest
import torch
import torch.nn.functional as F

from sam.research.moe import ExpertSpecialization, MemoryAttention, MemoryConfig, MemoryExpert


pytestmark = pytest.mark.usefixtures("one_thread")


def make(**kw):
    torch.manual_seed(0)
    c = MemoryConfig(similarity_threshold=kw.pop("thr", 0.0), memory_dim=16, num_heads=4, short_term_capacity=500,
                     top_k_retrieve=3)
    return MemoryExpert(8, 4, 32, c, ExpertSpecialization.VISION)


def test_without_memory_it_is_the_plain_mlp():
    e = make()
    x = torch.randn(5, 8)
    out, info = e(x, use_memory=False)
    assert torch.allclose(out, e.head(e.trunk(x))) and info["retrieved"] == 0
    e.memory.store_batch(torch.randn(10, 8), torch.randint(0, 4, (10,)))
    assert torch.allclose(e(x, use_memory=False)[0], out)  # memory off ignores the bank
    assert e.specialization is ExpertSpecialization.VISION


def test_empty_bank_and_no_hits_fall_back_to_the_mlp():
    e = make(thr=0.999)
    x = torch.randn(4, 8)
    plain = e.head(e.trunk(x))
    assert torch.allclose(e(x)[0], plain)
    e.memory.store(torch.randn(8), {"label": 1})
    out, info = e(x)  # random queries miss a 0.999 threshold
    assert info["retrieved"] == 0 and torch.allclose(out, plain)


def test_memory_vote_predicts_a_class_the_mlp_never_learned():
    e = make()
    protos = torch.randn(4, 8) * 3
    x = protos.repeat_interleave(5, 0) + 0.1 * torch.randn(20, 8)
    y = torch.arange(4).repeat_interleave(5)
    e.memory.store_batch(x, y, importance=0.9)
    q = protos + 0.1 * torch.randn(4, 8)
    with torch.no_grad():
        out, info = e(q)
    assert info["retrieved"] > 0 and not torch.isnan(out).any()
    assert torch.equal(out.argmax(-1), torch.arange(4))  # untrained MLP, right answers from memory alone


def test_gradients_reach_encoder_and_fusion():
    e = make()
    e.memory.store_batch(torch.randn(20, 8), torch.randint(0, 4, (20,)))
    out, _ = e(torch.randn(6, 8), exclude_self=True)
    F.cross_entropy(out, torch.randint(0, 4, (6,))).backward()
    assert e.memory.encoder.mlp[2].weight.grad.abs().sum() > 0  # zero-init output layer: its grad comes first
    assert e.fusion.weight.grad.abs().sum() > 0 and e.mix_b.grad is not None


def test_attention_rows_without_hits_read_zero_not_nan():
    att = MemoryAttention(16, 4, 4)
    q, k, v = torch.randn(3, 16), torch.randn(3, 5, 16), torch.randn(3, 5, 4)
    mask = torch.tensor([[True] * 5, [False] * 5, [True, False, False, False, False]])
    y = att(q, k, v, mask)
    assert y.shape == (3, 16) and not torch.isnan(y).any() and torch.equal(y[1], torch.zeros(16))
    v2 = v.clone()
    v2[2, 1:] = 100.0  # masked slots must not matter
    assert torch.allclose(att(q, k, v2, mask)[2], y[2])
