"""oneDNN products on reordered weights (sam/core/packed.py) against torch's own, forwards and backwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sam.core.packed import PackedWeight, packable, packed_linears

pytestmark = pytest.mark.skipif(not packable(torch.zeros(2, 2)), reason="no oneDNN on this CPU build")


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


@pytest.mark.parametrize("rows", [1, 12, 66])
def test_a_packed_weight_gives_torchs_products(rows):
    torch.manual_seed(0)
    w, b = torch.randn(96, 40), torch.randn(96)
    x, g = torch.randn(3, rows, 40), torch.randn(rows, 96)
    p = PackedWeight(w)
    assert torch.allclose(p.forward(x, b), nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert torch.allclose(p.input_grad(g), g @ w, rtol=1e-5, atol=1e-5)
    assert torch.allclose(p.input_grad(g.T.contiguous().T), g @ w, rtol=1e-5, atol=1e-5)  # any layout


def test_a_bf16_copy_packs_where_the_cpu_has_bf16_dot_products():
    w = torch.randn(64, 32)
    lo = w.to(torch.bfloat16)
    if not packable(lo):
        pytest.skip("no AVX512-BF16")
    h = torch.randn(5, 32).to(torch.bfloat16)
    assert torch.allclose(PackedWeight(lo).forward(h).float(), (h @ lo.T).float(), rtol=1e-2, atol=1e-2)


def test_an_fp32_weight_packed_in_bf16_computes_in_bf16_and_answers_in_fp32():
    w = torch.randn(64, 32)
    if not packable(w, torch.bfloat16):
        pytest.skip("no AVX512-BF16")
    x, g = torch.randn(5, 32), torch.randn(5, 64)
    p = PackedWeight(w, torch.bfloat16)
    y, gx = p.forward(x), p.input_grad(g)
    assert y.dtype == gx.dtype == torch.float32
    lo = w.to(torch.bfloat16)
    assert torch.allclose(y, (x.to(torch.bfloat16) @ lo.T).float(), rtol=1e-2, atol=1e-2)
    assert torch.allclose(gx, (g.to(torch.bfloat16) @ lo).float(), rtol=1e-2, atol=1e-2)
    assert not torch.equal(y, x @ w.T)  # it did round: bf16, not fp32
    assert (y - x @ w.T).abs().max() < 0.1 * (x @ w.T).abs().max()


def test_packed_linears_change_no_output_or_input_gradient_and_restore_the_modules():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 8, bias=False)).requires_grad_(False)
    trainable = nn.Linear(8, 8)  # a weight that learns is left to torch (no weight gradient here)
    layers = nn.ModuleList([net, trainable])
    x = torch.randn(4, 16, requires_grad=True)

    def run():
        x.grad = None
        y = trainable(net(x))
        y.square().sum().backward()
        return y.detach(), x.grad.clone(), trainable.weight.grad.clone()

    want = run()
    packs: dict = {}
    before = {k: v.clone() for k, v in layers.state_dict().items()}
    trainable.weight.grad = None
    with packed_linears(layers, packs):
        got = run()
        assert set(packs) == {(net[0], torch.float32), (net[2], torch.float32)}
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, want))
    assert "forward" not in net[0].__dict__ and "forward" not in net[2].__dict__  # their own forward is back
    assert all(torch.equal(v, before[k]) for k, v in layers.state_dict().items())
    with pytest.raises(RuntimeError), packed_linears(layers, packs):
        raise RuntimeError("an error inside")
    assert "forward" not in net[0].__dict__


def test_packs_are_made_per_precision():
    net = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8)).requires_grad_(False)
    if not packable(net[0].weight, torch.bfloat16):
        pytest.skip("no AVX512-BF16")
    packs: dict = {}
    x = torch.randn(3, 16)
    with packed_linears([net], packs):
        exact = net(x)
    with packed_linears([net], packs, torch.bfloat16):
        rounded = net(x)
    assert sorted(str(p.dtype) for p in packs.values()) == ["torch.bfloat16"] * 2 + ["torch.float32"] * 2
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, exact)
    assert torch.allclose(rounded, exact, rtol=5e-2, atol=5e-2)
