"""The residual memory beside one FFN down-projection, and how it attaches to a HF model.

    y = down_proj(x) + W_e[:, m] @ x[..., m]

x is the down-projection input (B, T, d_ff); W_e (d_model, d_ff) is the memory of expert e, zero
at start; m is the k-sparse column set of the edit that matched the prompt. The memory experts are
full-size residual memories; the router (the edit-mask database, see sam/core/editor.py) picks for
each row of a batch which expert fires and with which columns, or that none does. Expert 0 alone is
plain MEMOIR; a new expert opens when an expert's columns crowd. When nothing fires the layer
returns down_proj(x) untouched, so an unedited model is bit-identical to the original.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sam.core.fingerprinter import TopHashFingerprinter
from sam.errors import InvalidInputError


@dataclass
class Route:
    """Per-row routing decision: expert index (-1 = silent) and the k columns to read."""

    expert: torch.Tensor  # (B,) long
    cols: torch.Tensor  # (B, k) long
    edit_id: list[int | None]
    overlap: list[float]


@dataclass
class TrainSlot:
    """While an edit trains: its expert, its columns and the trainable delta on those columns."""

    expert: int
    cols: torch.Tensor  # (k,)
    delta: nn.Parameter  # (d_model, k)
    positions: torch.Tensor | None = None  # (B, T) where the memory acts; None: every position


class ResidualMemoryLayer(nn.Module):
    """Wraps a down-projection (nn.Linear or GPT-2 Conv1D) with sparse residual memory experts."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int):
        super().__init__()
        self.base = base
        self.in_features = in_features  # d_ff
        self.out_features = out_features  # d_model
        w = _weight(base)
        self.register_buffer("memory", torch.zeros(0, out_features, in_features, dtype=w.dtype, device=w.device),
                             persistent=False)  # (E, d_model, d_ff); saved by the editor, not the model
        self._spare: torch.Tensor | None = None  # (capacity, d_model, d_ff) that `memory` views
        self.enabled = True
        self.router: Callable[[torch.Tensor], Route] | None = None
        self.train_slot: TrainSlot | None = None
        self.on_input: Callable[[torch.Tensor], None] | None = None  # capture hook (fingerprints)
        self._prompt_mask: torch.Tensor | None = None  # (B, T) prompt tokens of the next forward
        self._answer: torch.Tensor | None = None  # (B, T) positions of that forward the memory acts on
        self._route: Route | None = None
        self.last_route: Route | None = None

    # --- experts -----------------------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return self.memory.shape[0]

    def add_expert(self) -> int:
        """Open a zero expert. `memory` is a view of a buffer with spare rows that doubles when full,
        so opening expert E does not copy the E before it (hundreds of MiB at a thousand edits)."""
        n, spare = self.num_experts, self._spare
        if spare is None or spare.shape[0] <= n or (n and spare.data_ptr() != self.memory.data_ptr()):
            spare = self.memory.new_zeros(max(8, 2 * n), self.out_features, self.in_features)
            spare[:n] = self.memory
            self._spare = spare
        spare[n].zero_()
        self.memory = spare[: n + 1]
        return n

    def set_expert(self, index: int, weight: torch.Tensor) -> None:
        if weight.shape != (self.out_features, self.in_features):
            raise InvalidInputError(f"expert weight has shape {tuple(weight.shape)}, "
                                    f"want {(self.out_features, self.in_features)}")
        while self.num_experts <= index:
            self.add_expert()
        self.memory[index] = weight.to(self.memory)

    # --- routing -----------------------------------------------------------------------------------------
    def begin(self, prompt_mask: torch.Tensor) -> None:
        """Route the next forward from these prompt tokens (B, T); keep the route for decode steps.

        The memory acts from each row's last prompt token on: it changes the answer, not how the
        question is read. Decode steps after that first forward are all answer positions."""
        self._prompt_mask = prompt_mask
        nxt = torch.cat([prompt_mask[:, 1:], torch.zeros_like(prompt_mask[:, :1])], dim=1)
        self._answer = ~nxt.bool()
        self._route = None

    def end(self) -> None:
        self._prompt_mask = None
        self._answer = None
        self._route = None

    def _decide(self, x: torch.Tensor) -> Route | None:
        if self._route is not None:
            return self._route
        if self.router is None or self.num_experts == 0:
            return None
        mask = self._prompt_mask
        if mask is not None and mask.shape != x.shape[:2]:
            raise InvalidInputError(f"prompt mask {tuple(mask.shape)} does not match the input {tuple(x.shape[:2])}")
        pooled = TopHashFingerprinter.pool(x, mask)  # (B, d_ff)
        route = self.router(pooled)
        if self._prompt_mask is not None:  # inside begin()/end(): hold it for the decode steps
            self._route = route
        self.last_route = route
        return route

    # --- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_ff)
        y = self.base(x)  # (B, T, d_model)
        if self.on_input is not None:
            self.on_input(x)
        if not self.enabled:
            return y
        slot = self.train_slot
        if slot is not None:  # training one edit: every row reads the edit's columns
            w = self.memory[slot.expert][:, slot.cols] + slot.delta  # (d_model, k)
            add = x[..., slot.cols] @ w.T  # (B, T, d_model)
            return y + (add if slot.positions is None else add * slot.positions.unsqueeze(-1))
        route = self._decide(x)
        if route is None:
            return y
        rows = (route.expert >= 0).nonzero().flatten()
        if rows.numel() == 0:
            return y
        cols = route.cols[rows]  # (A, k)
        xs = torch.gather(x[rows], 2, cols[:, None, :].expand(-1, x.shape[1], -1))  # (A, T, k)
        w = self.memory[route.expert[rows][:, None, None],
                        torch.arange(self.out_features, device=x.device)[None, :, None],
                        cols[:, None, :]]  # (A, d_model, k)
        add = torch.einsum("atk,aok->ato", xs, w)  # (A, T, d_model)
        if self._answer is not None:  # the first forward after begin(); decode steps all answer
            add = add * self._answer[rows].unsqueeze(-1)
            self._answer = None
        elif self._prompt_mask is None:  # a plain forward outside begin(): the last position answers
            add = add * (torch.arange(x.shape[1], device=x.device) == x.shape[1] - 1).view(1, -1, 1)
        return y.index_add(0, rows, add)


def _weight(module: nn.Module) -> torch.Tensor:
    return module.weight


def _features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a down-projection: nn.Linear stores (out, in), GPT-2's Conv1D (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    raise InvalidInputError(f"cannot attach memory to a {type(module).__name__}: want nn.Linear or Conv1D")


_DOWN_PROJ_NAMES = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h")


@dataclass
class LayerSite:
    """Where the memory sits: the decoder layer list, the layer index and the down-proj's name."""

    layers: nn.ModuleList
    index: int
    name: str  # full module name of the down-projection


def find_site(model: nn.Module, layer: int) -> LayerSite:
    """Locate decoder layer `layer`'s FFN down-projection (Llama-style or GPT-2-style)."""
    names = dict(model.named_modules())
    for name in names:
        for suffix in _DOWN_PROJ_NAMES:
            m = re.fullmatch(rf"(.*)\.(\d+)\.{re.escape(suffix)}", name)
            if m and int(m.group(2)) == layer:
                layers = names[m.group(1)]
                return LayerSite(layers=layers, index=layer, name=name)
    count = num_layers(model)
    raise InvalidInputError(f"model has no FFN down-projection at layer {layer} (it has {count} layers)")


def num_layers(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))


def attach_memory(model: nn.Module, layer: int) -> tuple[ResidualMemoryLayer, LayerSite]:
    """Replace layer `layer`'s down-projection by a ResidualMemoryLayer wrapping it (idempotent)."""
    site = find_site(model, layer)
    parent_name, _, child = site.name.rpartition(".")
    parent = model.get_submodule(parent_name)
    current = getattr(parent, child)
    if isinstance(current, ResidualMemoryLayer):
        return current, site
    d_in, d_out = _features(current)
    wrapper = ResidualMemoryLayer(current, d_in, d_out)
    setattr(parent, child, wrapper)
    return wrapper, site


class MEMOIRTransformerBlock(nn.Module):
    """A HF decoder layer with its down-projection wrapped: the model's own code runs unchanged."""

    def __init__(self, model: nn.Module, layer: int):
        super().__init__()
        self.memory, self.site = attach_memory(model, layer)
        self.block = self.site.layers[layer]

    def forward(self, *args, **kwargs):
        return self.block(*args, **kwargs)
