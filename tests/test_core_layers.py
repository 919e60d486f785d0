"""ResidualMemoryLayer and attach_memory on tiny Llama (nn.Linear) and GPT-2 (Conv1D) models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from conftest import TINY_D_FF, tiny_config
from sam.core.model_layers import (MEMOIRTransformerBlock, ResidualMemoryLayer, Route, attach_memory, find_site,
                                   num_layers)
from sam.errors import InvalidInputError

VOCAB = 500


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(kind, VOCAB)).eval()


def ids(seed: int = 0, shape=(3, 9)) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def router_for(rows: list[int], cols: torch.Tensor, expert: int = 0):
    """A router that fires `expert` with `cols` on the given batch rows, silent elsewhere."""

    def route(pooled: torch.Tensor) -> Route:
        b = pooled.shape[0]
        experts = torch.full((b,), -1, dtype=torch.long)
        experts[rows] = expert
        return Route(experts, cols.expand(b, -1).clone(), [0 if i in rows else None for i in range(b)], [0.0] * b)

    return route


@pytest.mark.parametrize("kind,base_type", [("llama", "Linear"), ("gpt2", "Conv1D")])
def test_zero_impact_until_something_routes(kind, base_type):
    model = tiny(kind)
    x = ids()
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # a padded row too
    with torch.no_grad():
        before = model(input_ids=x, attention_mask=mask).logits
    layer, site = attach_memory(model, 1)
    assert type(layer.base).__name__ == base_type
    assert layer.in_features == TINY_D_FF and layer.out_features == 64
    with torch.no_grad():
        wrapped = model(input_ids=x, attention_mask=mask).logits
        layer.set_expert(0, torch.randn(64, TINY_D_FF))  # a non-zero expert...
        layer.router = router_for([], torch.arange(8))  # ...that nothing routes to
        silent = model(input_ids=x, attention_mask=mask).logits
        layer.router = router_for([1], torch.arange(8))
        fired = model(input_ids=x, attention_mask=mask).logits
    assert torch.equal(before, wrapped)
    assert torch.equal(before, silent)
    assert torch.equal(fired[[0, 2]], before[[0, 2]])  # rows without a match are untouched
    assert not torch.equal(fired[1], before[1])
    # outside begin()/end() only the last position answers: the earlier ones are untouched
    assert torch.equal(fired[1, :-1], before[1, :-1])
    assert layer.last_route is not None and layer.last_route.expert.tolist() == [-1, 0, -1]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_memory_adds_exactly_the_sparse_columns(kind):
    """y = base(x) + x[..., m] @ W_e[:, m].T, with x the down-projection input, on Linear and Conv1D."""
    model = tiny(kind)
    layer, _ = attach_memory(model, 0)
    w = torch.randn(layer.out_features, layer.in_features, generator=torch.Generator().manual_seed(1))
    layer.set_expert(0, w)
    cols = torch.tensor([3, 9, 40, 77, 100])
    layer.router = router_for([0, 1], cols)
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(2))
    prompt = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # row 0: 3 prompt tokens
    with torch.no_grad():
        base = layer.base(x)
        layer.begin(prompt)
        y = layer(x)
        step = layer(x[:, -1:])  # a decode step reuses the route and acts everywhere
        layer.end()
    add = x[..., cols] @ w[:, cols].T
    active = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)  # from the last prompt token on
    want = base + add * active.unsqueeze(-1)
    assert torch.allclose(y, want, atol=1e-5)
    assert torch.equal(y[~active], base[~active])  # before the last prompt token: bit-identical
    assert torch.allclose(step, layer.base(x[:, -1:]) + add[:, -1:], atol=1e-5)
    # disabled: exactly the base layer
    layer.enabled = False
    with torch.no_grad():
        assert torch.equal(layer(x), base)


def test_train_slot_reads_the_edit_columns_on_every_row():
    from sam.core.model_layers import TrainSlot

    model = tiny("llama").requires_grad_(False)  # frozen, as load_model leaves it
    layer, _ = attach_memory(model, 2)
    layer.add_expert()
    cols = torch.tensor([1, 2, 5])
    delta = nn.Parameter(torch.randn(layer.out_features, 3))
    layer.train_slot = TrainSlot(0, cols, delta)
    x = torch.randn(2, 4, layer.in_features)
    y = layer(x)
    assert torch.allclose(y, layer.base(x) + x[..., cols] @ delta.T, atol=1e-5)
    y.sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0  # the delta, and only it, trains
    assert all(p.grad is None for p in model.parameters())


def test_attach_is_idempotent_and_finds_the_site():
    model = tiny("llama")
    a, site = attach_memory(model, 1)
    b, _ = attach_memory(model, 1)
    assert a is b
    assert site.name == "model.layers.1.mlp.down_proj" and site.index == 1
    assert model.get_submodule(site.name) is a
    gpt = tiny("gpt2")
    assert find_site(gpt, 1).name == "transformer.h.1.mlp.c_proj"  # not attn.c_proj
    assert num_layers(model) == 3 and num_layers(gpt) == 2


@pytest.mark.parametrize("layer", [3, 99, -1])
def test_find_site_refuses_a_missing_layer(layer):
    with pytest.raises(InvalidInputError, match="layer"):
        find_site(tiny("llama"), layer)


def test_set_expert_checks_the_shape():
    layer = ResidualMemoryLayer(nn.Linear(16, 8), 16, 8)
    with pytest.raises(InvalidInputError):
        layer.set_expert(0, torch.zeros(16, 8))
    layer.set_expert(2, torch.ones(8, 16))  # opens experts 0..2
    assert layer.num_experts == 3 and layer.memory[:2].abs().sum() == 0 and layer.memory[2].sum() == 128


def test_begin_checks_the_prompt_mask_shape():
    layer = ResidualMemoryLayer(nn.Linear(16, 8), 16, 8)
    layer.add_expert()
    layer.router = router_for([0], torch.arange(4))
    layer.begin(torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="prompt mask"):
        layer(torch.randn(1, 5, 16))


def test_memoir_block_runs_the_models_own_layer():
    model = tiny("llama")
    x = ids(3, (2, 6))
    with torch.no_grad():
        before = model(input_ids=x).logits
    block = MEMOIRTransformerBlock(model, 1)
    assert block.block is model.model.layers[1]
    assert isinstance(block.block.mlp.down_proj, ResidualMemoryLayer) and block.memory is block.block.mlp.down_proj
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, before)


def test_opening_experts_keeps_the_others_and_starts_at_zero():
    model = tiny("llama").requires_grad_(False)
    layer, _ = attach_memory(model, 2)
    weights = []
    for e in range(20):  # past two doublings of the spare buffer (8, 16, 32)
        assert layer.add_expert() == e
        assert not layer.memory[e].any()
        w = torch.randn(layer.out_features, layer.in_features)
        layer.set_expert(e, w)
        weights.append(w)
    assert layer.memory.shape == (20, layer.out_features, layer.in_features)
    assert all(torch.equal(layer.memory[e], w) for e, w in enumerate(weights))
    saved = layer.memory[:3].clone()
    layer.memory = saved  # a memory swapped in from outside is copied into a fresh buffer, not lost
    assert layer.add_expert() == 3 and torch.equal(layer.memory[:3], saved) and not layer.memory[3].any()
