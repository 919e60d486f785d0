"""MultiHeadMemoryBank, MemoryState, the configs and the auxiliary losses."""

import math

import pytest
import torch

from sam.errors import InvalidInputError, StoreMismatchError
from sam.research.memnet import MemNetConfig, MemoryConfig, MultiHeadMemoryBank
from sam.research.memnet.losses import entropy, pressure_loss, read_entropy_loss, utilisation_loss
from sam.research.memnet.memory import sparse_address

pytestmark = pytest.mark.usefixtures("one_thread")


def bank(**kw) -> MultiHeadMemoryBank:
    torch.manual_seed(0)
    cfg = dict(n_slots=8, slot_dim=4, n_read_heads=2, n_write_heads=1, top_k=3)
    cfg.update(kw)
    return MultiHeadMemoryBank(MemoryConfig(**cfg))


def write_args(B, T, Hw, D, gate=1.0, erase=1.0, content=0.0, values=None):
    values = torch.randn(B, T, Hw, D) if values is None else values
    full = lambda v: torch.full((B, T, Hw), float(v))  # noqa: E731
    return torch.randn(B, T, Hw, D), values, full(gate), full(erase), full(content)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("kw", [dict(n_slots=0), dict(slot_dim=0), dict(top_k=9), dict(n_read_heads=0),
                                dict(usage_decay=1.5), dict(init_temperature=0.0), dict(top_k=2.5)])
def test_memory_config_rejects_bad_values(kw):
    with pytest.raises(InvalidInputError):
        MemoryConfig(**{**dict(n_slots=8, top_k=2), **kw})


def test_memnet_config_validation_and_round_trip():
    with pytest.raises(InvalidInputError, match="multiple of n_head"):
        MemNetConfig(d_model=30, n_head=4)
    with pytest.raises(InvalidInputError, match="window"):
        MemNetConfig(window=32, memory=MemoryConfig(n_slots=16))
    with pytest.raises(InvalidInputError, match="unknown"):
        MemNetConfig.from_dict({"vocab_size": 10, "bogus": 1})
    c = MemNetConfig(vocab_size=33, window=8, memory=MemoryConfig(n_slots=16, top_k=2))
    assert MemNetConfig.from_dict(c.to_dict()) == c


# ---------------------------------------------------------------------- addressing
def test_sparse_address_keeps_exactly_the_top_k_by_strength_weighted_cosine():
    torch.manual_seed(1)
    q, M = torch.randn(2, 5, 3, 4), torch.randn(2, 8, 4)
    M[:, 0] = 1e-3 * M[:, 0] + 0.0  # a faint slot
    M[:, 1] = 0.0  # an empty slot
    w, idx, topw = sparse_address(q, M, torch.tensor([1.0, 5.0, 20.0]), 3)
    assert w.shape == (2, 5, 3, 8)
    assert torch.all((w > 0).sum(-1) == 3)
    assert torch.allclose(w.sum(-1), torch.ones(2, 5, 3))
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(M, dim=-1).transpose(1, 2).unsqueeze(1)
    sq = M.pow(2).sum(-1)
    score = cos * (sq / (sq + 0.25**2 * 4)).view(2, 1, 1, 8)
    score[..., 1] = -2.0
    third = score.topk(3, -1).values[..., -1:]
    assert torch.all((w > 0) == (score >= third))  # the nonzeros are the 3 best strength-weighted cosines
    assert not bool((w[..., 1] > 0).any())  # the empty slot never makes the top 3 of 8
    # a faint slot pointing exactly at the query ranks below a strong slot at 60 degrees
    M2 = torch.zeros(1, 4, 4)
    M2[0, 0, 0] = 1e-2  # faint, cos 1
    M2[0, 1, :2] = torch.tensor([2.0, 3.4])  # strong, cos 0.5
    M2[0, 2, 1] = 2.0  # strong, cos 0
    q2 = torch.zeros(1, 1, 1, 4)
    q2[..., 0] = 1.0
    _, idx2, _ = sparse_address(q2, M2, torch.tensor([10.0]), 2)
    assert idx2.flatten().tolist() == [1, 0]
    # a larger temperature gives a sharper (lower entropy) distribution over the same slots
    ent = entropy(topw)  # (B, Q, H)
    assert torch.all(ent[..., 2] < ent[..., 0])


def test_read_is_layernormed_weighted_sum_and_sparse():
    b = bank()
    s = b.reset(2)
    s.memory.normal_()
    keys = torch.randn(2, 3, 2, 4)
    r, w = b.read(s, keys)
    assert r.shape == (2, 3, 2, 4) and w.shape == (2, 3, 2, 8)
    assert torch.all((w > 0).sum(-1) == 3)
    raw = torch.einsum("bthn,bnd->bthd", w, s.memory)
    assert torch.allclose(r, torch.nn.functional.layer_norm(raw, (4,)), atol=1e-5)


# ---------------------------------------------------------------------- allocation / writes
def test_lru_allocation_prefers_least_used_then_stalest():
    b = bank(n_slots=6, age_bias=0.5)
    usage = torch.tensor([[3.0, 0.0, 1.0, 0.0, 2.0, 0.0]])
    age = torch.tensor([[0.0, 1.0, 50.0, 9.0, 0.0, 3.0]])
    slots = b.allocation(usage, age, 4)[0].tolist()
    assert slots[:3] == [3, 5, 1]  # the three unused slots, stalest first
    assert slots[3] == 2  # then the least used (its large age does not outweigh one unit of usage)
    with pytest.raises(InvalidInputError):
        b.allocation(usage, age, 7)


def test_gated_write_goes_to_fresh_slots_and_is_exact():
    b = bank()
    s = b.reset(1)
    s.usage[0] = torch.tensor([5.0, 5, 0, 5, 5, 5, 5, 5])  # slot 2 is the only free one
    vals = torch.randn(1, 1, 1, 4)
    new, info = b.write(s, *write_args(1, 1, 1, 4, gate=1.0, erase=1.0, content=0.0, values=vals))
    assert torch.allclose(new.memory[0, 2], vals[0, 0, 0])  # empty slot: erase-then-add leaves exactly the value
    assert torch.count_nonzero(new.memory[0].abs().sum(-1)) == 1
    assert info["alloc_slots"][0].tolist() == [2]
    assert new.age[0, 2] == 0 and torch.all(new.age[0, [0, 1, 3]] == 1)
    assert new.usage[0, 2] == pytest.approx(1.0)  # usage of the empty slot: 0 * decay + one write


def test_closed_gate_writes_nothing_and_erase_controls_overwrite():
    b = bank()
    s = b.reset(1)
    s.memory.normal_()
    before = s.memory.clone()
    d = b.decay_gates(s)
    new, _ = b.write(s, *write_args(1, 4, 1, 4, gate=0.0))
    assert torch.allclose(new.memory, d.unsqueeze(-1) * before)  # only the decay acts
    # full gate, no erase: the value is added on top of the (decayed) old content of the allocated slot
    vals = torch.randn(1, 1, 1, 4)
    new, info = b.write(s, *write_args(1, 1, 1, 4, gate=1.0, erase=0.0, values=vals))
    i = info["alloc_slots"][0, 0]
    assert torch.allclose(new.memory[0, i], d[0, i] * before[0, i] + vals[0, 0, 0], atol=1e-6)


def test_content_write_updates_the_matching_slot_in_place():
    b = bank(top_k=1)
    s = b.reset(1)
    s.memory[0] = torch.eye(8, 4) * 3 + 0.01  # slot j points along axis j (j < 4)
    s.usage[0] = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])
    key = torch.zeros(1, 1, 1, 4)
    key[..., 1] = 1.0
    _, vals, g, e, _ = write_args(1, 1, 1, 4, gate=1.0, erase=1.0)
    new, _ = b.write(s, key, vals, g, e, torch.ones(1, 1, 1))
    assert torch.allclose(new.memory[0, 1], vals[0, 0, 0], atol=1e-5)  # slot 1 matched the key and was replaced
    changed = (new.memory[0] - b.decay_gates(s)[0].unsqueeze(-1) * s.memory[0]).abs().sum(-1) > 1e-5
    assert changed.tolist() == [False, True] + [False] * 6


def test_learned_decay_shrinks_slots_and_gets_gradients():
    b = bank()
    with torch.no_grad():
        b.decay.bias.fill_(math.log(0.5 / 0.5))  # sigmoid(0) = 0.5 per step
    s = b.reset(1)
    s.memory.normal_()
    new, _ = b.write(s, *write_args(1, 2, 1, 4, gate=0.0))
    assert torch.allclose(new.memory, 0.5 * s.memory, atol=1e-6)
    s2 = b.reset(1)
    s2.memory.normal_()
    rk = torch.randn(1, 2, 2, 4)
    r, _, out, _ = b(s2, rk, *write_args(1, 2, 1, 4, gate=0.0)[:2], torch.zeros(1, 2, 1), torch.zeros(1, 2, 1),
                     torch.zeros(1, 2, 1))
    r2, _, _, _ = b(out, rk, *write_args(1, 2, 1, 4, gate=0.0)[:2], torch.zeros(1, 2, 1), torch.zeros(1, 2, 1),
                    torch.zeros(1, 2, 1))
    (r2 * torch.randn_like(r2)).sum().backward()
    assert b.decay.bias.grad is not None and b.decay.bias.grad.abs() > 0


def test_usage_decays_and_age_counts_steps():
    b = bank(usage_decay=0.5)
    s = b.reset(1)
    s.usage.fill_(2.0)
    d = b.decay_gates(s)
    new, _ = b.write(s, *write_args(1, 1, 1, 4, gate=0.0))
    assert torch.allclose(new.usage, 0.5 * d * 2.0)
    assert torch.all(new.age == 1)
    new2, _ = b.write(new, *write_args(1, 1, 1, 4, gate=0.0))
    assert torch.all(new2.age == 2)


# ---------------------------------------------------------------------- forward / errors
def test_forward_state_in_state_out_and_reset():
    b = bank()
    s = b.reset(3)
    assert s.memory.shape == (3, 8, 4) and s.usage.shape == (3, 8) and s.age.shape == (3, 8)
    assert float(s.memory.abs().sum()) == 0.0
    r, rw, s2, info = b(s, torch.randn(3, 5, 2, 4), *write_args(3, 5, 1, 4))
    assert r.shape == (3, 5, 2, 4) and rw.shape == (3, 5, 2, 8)
    assert float(s2.memory.detach().abs().sum()) > 0 and s is not s2
    assert float(s.memory.abs().sum()) == 0.0  # the input state is not modified in place


def test_forward_rejects_bad_input():
    b = bank()
    s = b.reset(2)
    good = [torch.randn(2, 3, 2, 4), *write_args(2, 3, 1, 4)]
    with pytest.raises(InvalidInputError, match="read_keys"):
        b(s, torch.randn(2, 3, 4), *good[1:])
    with pytest.raises(InvalidInputError, match="write_values"):
        b(s, good[0], good[1], torch.randn(2, 3, 1, 5), *good[3:])
    bad = good[1].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        b(s, good[0], bad, *good[2:])
    with pytest.raises(InvalidInputError, match="gate"):
        b(s, *good[:3], torch.full((2, 3, 1), 1.5), *good[4:])
    with pytest.raises(InvalidInputError, match="streams"):
        b(b.reset(3), *good)
    with pytest.raises(StoreMismatchError, match="another config"):
        b(bank(n_slots=16).reset(2), *good)
    with pytest.raises(InvalidInputError):
        b.reset(0)


# ---------------------------------------------------------------------- losses
def test_losses():
    N = 8
    assert float(utilisation_loss(torch.full((N,), 1 / N))) == pytest.approx(0.0, abs=1e-6)
    assert float(utilisation_loss(torch.eye(N)[0])) == pytest.approx(1.0, abs=1e-6)
    assert 0 < float(utilisation_loss(torch.tensor([0.5, 0.5, 0, 0, 0, 0, 0, 0]))) < 1
    w = torch.zeros(3, N)
    w[:, :4] = 0.25
    assert float(read_entropy_loss(w, 4)) == pytest.approx(1.0, abs=1e-6)
    assert float(read_entropy_loss(torch.eye(N)[:3], 4)) == pytest.approx(0.0, abs=1e-6)
    assert float(pressure_loss(torch.tensor([0.0, 1.0, 0.5]))) == pytest.approx(0.5)
