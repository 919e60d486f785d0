"""MemNet end to end, TransformerController, SemanticBottleneck, the baselines, and safetensors persistence."""

import pytest
import torch

from sam.errors import CorruptStoreError, InvalidInputError, StoreMismatchError
from sam.research.memnet import (LSTMBaseline, MemNet, MemNetConfig, MemoryConfig, SemanticBottleneck,
                                 TransformerController, WindowTransformer, load_model, load_state, save_model,
                                 save_state)
from sam.research.memnet.baselines import lstm_params, match_lstm, match_transformer
from sam.research.memnet.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> MemNetConfig:
    base = dict(vocab_size=12, d_model=16, n_layer=1, n_head=2, window=4, bottleneck_dim=4,
                memory=MemoryConfig(n_slots=8, slot_dim=8, n_read_heads=2, n_write_heads=1, top_k=2))
    base.update(kw)
    return MemNetConfig(**base)


def model(**kw) -> MemNet:
    torch.manual_seed(0)
    return MemNet(cfg(**kw)).eval()


def test_controller_and_bottleneck_shapes():
    c = cfg()
    ctrl = TransformerController(c)
    h, iface = ctrl(torch.randn(3, 4, 16))
    assert h.shape == (3, 4, 16)
    assert iface.read_keys.shape == (3, 4, 2, 8) and iface.write_keys.shape == (3, 4, 1, 8)
    for g in (iface.write_gate, iface.erase, iface.content_gate):
        assert g.shape == (3, 4, 1) and bool(((g > 0) & (g < 1)).all())
    # causal: a later token cannot change an earlier hidden state
    x = torch.randn(1, 4, 16)
    x2 = x.clone()
    x2[0, 3] += 1.0
    assert torch.allclose(ctrl(x)[0][0, :3], ctrl(x2)[0][0, :3], atol=1e-6)
    assert SemanticBottleneck(c)(h).shape == (3, 4, 1, 8)


def test_memnet_shapes_loss_and_trace():
    m = model()
    idx = torch.randint(0, 12, (2, 10))  # 3 chunks, the last one short
    targets = torch.full((2, 10), -100)
    targets[:, -1] = 3
    out = m(idx, targets=targets, trace=True)
    assert out.logits.shape == (2, 10, 12)
    assert out.state.memory.shape == (2, 8, 8)
    assert torch.isfinite(out.loss) and out.loss > out.aux["ce"] - 1e-6
    assert out.trace["write_mass"].shape == (2, 3, 8) and out.trace["gate"].shape == (2, 10, 1)
    assert out.trace["read_slot"].shape == (2, 10, 2)
    out.loss.backward()
    assert m.memory.log_beta_read.grad is not None and m.controller.interface.weight.grad.abs().sum() > 0


def test_information_crosses_chunks_only_through_memory():
    m = model()
    idx = torch.randint(0, 12, (1, 8))
    idx2 = idx.clone()
    idx2[0, 0] = (idx[0, 0] + 1) % 12  # change a token of chunk 0
    with torch.no_grad():
        a, b = m(idx).logits, m(idx2).logits
        assert not torch.allclose(a[0, 4:], b[0, 4:])  # chunk 1 sees it, through memory
        a, b = m(idx, wipe_memory=True).logits, m(idx2, wipe_memory=True).logits
        assert torch.allclose(a[0, 4:], b[0, 4:], atol=1e-6)  # without memory it cannot
        # and nothing flows backwards in time
        idx3 = idx.clone()
        idx3[0, 7] = (idx[0, 7] + 1) % 12
        assert torch.allclose(m(idx).logits[0, :7], m(idx3).logits[0, :7], atol=1e-6)


def test_state_carried_across_calls_equals_one_pass():
    m = model()
    idx = torch.randint(0, 12, (2, 12))
    with torch.no_grad():
        full = m(idx)
        first = m(idx[:, :8])
        second = m(idx[:, 8:], state=first.state)
    assert torch.allclose(torch.cat([first.logits, second.logits], 1), full.logits, atol=1e-5)
    assert torch.allclose(second.state.memory, full.state.memory, atol=1e-5)


def test_memnet_rejects_bad_input():
    m = model()
    with pytest.raises(InvalidInputError, match="integer"):
        m(torch.rand(2, 4))
    with pytest.raises(InvalidInputError, match="token ids"):
        m(torch.tensor([[0, 12]]))
    with pytest.raises(InvalidInputError, match=r"\(B, L\)"):
        m(torch.zeros(4, dtype=torch.long))
    with pytest.raises(StoreMismatchError):
        m(torch.zeros(1, 4, dtype=torch.long), state=model(memory=MemoryConfig(n_slots=16, slot_dim=8)).reset(1))
    with pytest.raises(InvalidInputError, match="streams"):
        m(torch.zeros(1, 4, dtype=torch.long), state=m.reset(2))
    with pytest.raises(InvalidInputError, match="targets"):
        m(torch.zeros(1, 4, dtype=torch.long), targets=torch.zeros(1, 3, dtype=torch.long))


def test_save_load_round_trip_is_exact(tmp_path):
    m = model()
    with torch.no_grad():
        m.memory.decay.weight.normal_()  # make sure non-default parameters travel
    idx = torch.randint(0, 12, (2, 9))
    save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    assert m2.config == m.config and m2.lm_head.weight is m2.wte.weight
    with torch.no_grad():
        a, b = m(idx), m2(idx)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.state.memory, b.state.memory)
    save_state(a.state, tmp_path / "state.safetensors", m.config.memory)
    s = load_state(tmp_path / "state.safetensors", m.config.memory)
    for k in ("memory", "usage", "age"):
        assert torch.equal(getattr(s, k), getattr(a.state, k))
    with torch.no_grad():  # continuing from the loaded state is the same as continuing from the live one
        assert torch.equal(m2(idx, state=s).logits, m(idx, state=a.state).logits)
    with pytest.raises(StoreMismatchError):
        load_state(tmp_path / "state.safetensors", MemoryConfig(n_slots=16, slot_dim=8, top_k=2))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    with pytest.raises(CorruptStoreError):
        load_model(tmp_path / "bad")


def test_window_transformer_sees_nothing_beyond_its_receptive_field():
    torch.manual_seed(0)
    t = WindowTransformer(12, 16, 2, 2, 32, window=4).eval()
    idx = torch.randint(0, 12, (1, 20))
    idx2 = idx.clone()
    idx2[0, 0] = (idx[0, 0] + 1) % 12
    with torch.no_grad():
        a, b = t(idx).logits, t(idx2).logits
    # 2 layers of a 4-token window reach 2 * 3 = 6 tokens back: positions >= 7 cannot see position 0
    assert torch.allclose(a[0, 7:], b[0, 7:], atol=1e-6)
    assert not torch.allclose(a[0, 1:7], b[0, 1:7])


def test_lstm_state_carry_and_parameter_matching():
    torch.manual_seed(0)
    ls = LSTMBaseline(12, 10).eval()
    assert ls.num_params() == lstm_params(12, 10)
    idx = torch.randint(0, 12, (2, 9))
    with torch.no_grad():
        full = ls(idx)
        a = ls(idx[:, :5])
        b = ls(idx[:, 5:], state=a.state)
    assert torch.allclose(torch.cat([a.logits, b.logits], 1), full.logits, atol=1e-5)
    with pytest.raises(InvalidInputError):
        ls(idx, state=ls.reset(3))
    n = MemNet(cfg()).num_params()
    tc, nt = match_transformer(n, 12, 16, 2, 4)
    lc, nl = match_lstm(n, 12)
    assert abs(nt - n) / n < 0.01 and abs(nl - n) / n < 0.05  # the LSTM width moves in steps of ~4% here
    assert WindowTransformer(**tc).num_params() == nt and LSTMBaseline(**lc).num_params() == nl


def test_memnet_learns_to_carry_a_token_across_chunks():
    """Chunk 0 shows a token, chunk 1 must repeat it at its end: only memory can carry it. 300 steps."""
    torch.manual_seed(0)
    m = MemNet(cfg(vocab_size=8, d_model=32, n_head=2, bottleneck_dim=8,
                   memory=MemoryConfig(n_slots=8, slot_dim=16, top_k=2)))
    g = torch.Generator().manual_seed(0)

    def batch(B):
        x = torch.randint(0, 4, (B,), generator=g)
        idx = torch.randint(4, 8, (B, 8), generator=g)
        idx[:, 1] = x
        tg = torch.full((B, 8), -100)
        tg[:, 7] = x
        return idx, tg

    train(m, lambda s: batch(32), 300, 3e-3, "cpu")
    idx, tg = batch(256)
    with torch.no_grad():
        acc = (m(idx).logits[:, 7].argmax(-1) == tg[:, 7]).float().mean()
        wiped = (m(idx, wipe_memory=True).logits[:, 7].argmax(-1) == tg[:, 7]).float().mean()
    assert acc > 0.9 and wiped < 0.5  # chance is 0.25
