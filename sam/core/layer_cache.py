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


def _parts(layer: nn.Module, memory: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The edited layer's attention module and the module whose child is the memory (its MLP), or None."""
    attn = next((getattr(layer, n) for n in _ATTENTION_NAMES if isinstance(getattr(layer, n, None), nn.Module)), None)
    mlp = next((m for m in layer.modules() if any(c is memory for c in m.children())), None)
    return (attn, mlp) if attn is not None and mlp is not None else None


@contextmanager
def capture_attention_output(layer: nn.Module, memory: nn.Module):
    """Record the output of the edited layer's attention during the forwards inside the block (box["attn"];
    nothing where the layer's parts are not found or the attention returns its weights)."""
    box: dict = {}
    parts = _parts(layer, memory)

    def hook(_module, _args, out):
        if not isinstance(out, tuple):
            box["attn"] = out.detach(), -1
        elif all(r is None for r in out[1:]):
            box["attn"] = out[0].detach(), len(out) - 1

    handle = parts[0].register_forward_hook(hook) if parts else None
    try:
        yield box
    finally:
        if handle is not None:
            handle.remove()


@contextmanager
def replay_edited_layer(layer: nn.Module, memory: nn.Module, attn: tuple[torch.Tensor, int], x: torch.Tensor):
    """Inside the block the edited layer's attention returns `attn` (its output recorded by
    capture_attention_output, and how many Nones followed it in a tuple, -1: no tuple) and its MLP returns
    memory(x), x being the memory's recorded input. Both are what the layer computes from a stream that does
    not change; only the memory's output does, so a step runs the memory, not the layer's other products:

        layer(h) = norms and residuals of (attn(h), memory(x)),   attn(h) and x constant in h's edit
    """
    (attn_module, mlp), (out, n_rest) = _parts(layer, memory), attn
    attn_module.forward = lambda *a, **k: out if n_rest < 0 else (out, *([None] * n_rest))
    mlp.forward = lambda *a, **k: memory(x)
    try:
        yield
    finally:
        del attn_module.forward, mlp.forward
