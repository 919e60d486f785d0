"""Run only the decoder layers at and above the edited one.

The base model is frozen and the memory sits inside layer L, so the residual stream entering layer
L is the same at every optimisation step of an edit. It is computed once; during the steps the
layers below L are swapped for pass-throughs and layer L is fed the cached stream. Inside layer L the
attention's output and the MLP's input are the same at every step too: they are recorded in the first
pass and replayed, so only the memory runs there. The model's own forward still runs (masks, rotary
embeddings, norms, residuals): nothing of its code is copied.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


class _PassThrough(nn.Module):
    def forward(self, hidden_states=None, *args, **kwargs):
        return hidden_states


@contextmanager
def capture_layer_input(layers: nn.ModuleList, index: int):
    """Record the hidden states entering layers[index] during the forwards inside the block."""
    box: dict[str, torch.Tensor] = {}

    def hook(_module, args, kwargs):
        box["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = layers[index].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


@contextmanager
def start_at_layer(layers: nn.ModuleList, index: int, hidden: torch.Tensor):
    """Inside the block, a forward of the model skips layers[:index] and feeds `hidden` to layers[index]."""
    originals = [layers[i] for i in range(index)]

    def hook(_module, args, kwargs):
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    for i in range(index):
        layers[i] = _PassThrough()
    handle = layers[index].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for i, layer in enumerate(originals):
            layers[i] = layer


_ATTENTION_NAMES = ("self_attn", "attn", "attention")


@dataclass
class EditedLayer:
    """The edited layer's attention module and the module whose child is the memory (its MLP)."""

    attn: nn.Module
    mlp: nn.Module
    memory: nn.Module

    @classmethod
    def find(cls, layer: nn.Module, memory: nn.Module) -> "EditedLayer | None":
        attn = next((getattr(layer, n) for n in _ATTENTION_NAMES if isinstance(getattr(layer, n, None), nn.Module)),
                    None)
        mlp = next((m for m in layer.modules() if any(c is memory for c in m.children())), None)
        return cls(attn, mlp, memory) if attn is not None and mlp is not None else None

    @contextmanager
    def capture_attention(self):
        """Record the attention's output during the forwards inside the block: box["attn"] = (output, how many
        Nones followed it in a tuple, -1: no tuple); nothing where it returns its weights."""
        box: dict = {}

        def hook(_module, _args, out):
            if not isinstance(out, tuple):
                box["attn"] = out.detach(), -1
            elif all(r is None for r in out[1:]):
                box["attn"] = out[0].detach(), len(out) - 1

        handle = self.attn.register_forward_hook(hook)
        try:
            yield box
        finally:
            handle.remove()

    @contextmanager
    def replay(self, attn: tuple[torch.Tensor, int], x: torch.Tensor):
        """Inside the block the attention returns `attn` (as capture_attention recorded it) and the MLP returns
        memory(x), x being the memory's recorded input. Both are what the layer computes from a stream that
        does not change; only the memory's output does, so a step runs the memory, not the layer's other
        products:

            layer(h) = norms and residuals of (attn(h), memory(x)),   attn(h) and x constant in h's edit
        """
        out, n_rest = attn
        self.attn.forward = lambda *a, **k: out if n_rest < 0 else (out, *([None] * n_rest))
        self.mlp.forward = lambda *a, **k: self.memory(x)
        try:
            yield
        finally:
            del self.attn.forward, self.mlp.forward
