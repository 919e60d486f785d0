"""Run only the decoder layers at and above the edited one.

The base model is frozen and the memory sits inside layer L, so the residual stream entering layer
L is the same at every optimisation step of an edit. It is computed once; during the steps the
layers below L are swapped for pass-throughs and layer L is fed the cached stream. The model's own
forward still runs (masks, rotary embeddings, final norm): nothing of its code is copied.
"""

from __future__ import annotations

from contextlib import contextmanager

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
