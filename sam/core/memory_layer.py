"""The residual memory beside one FFN down-projection, and how it attaches to a HF model.

    y = base_layer(x) + W_i @ x[..., m_i]        at the answer positions of a row routed to edit i

x is the down-projection input (B, T, d_ff); m_i is edit i's k-sparse column set and W_i
(d_model, k) its trained delta: each edit owns its slice of the memory, so no edit can change
another's. The router (sam/core/router.py) decides per row which edit fires, or that none does;
this layer only applies the decision. When nothing fires it returns base_layer(x) untouched, so an
unedited model is bit-identical to the original. The memory acts from each row's last prompt
token on (the positions that produce the answer): it changes the answer, not how the question is read.

In the style of PEFT the layer wraps the model's own module (`base_layer`) and is switched with
context managers: `disabled()`, `capture()` (record the layer's input), `applying(route)` and
`trainable(slot)`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from sam.core.fingerprinter import TopHashFingerprinter
from sam.errors import InvalidInputError


@dataclass
class Route:
    """The rows of a batch where an edit fires, each with that edit's columns and delta."""

    rows: torch.Tensor  # (A,) long, rows of the batch
    cols: torch.Tensor  # (A, k) long
    weight: torch.Tensor  # (A, d_model, k)
    edit_ids: list[int] = field(default_factory=list)  # (A,)

    @staticmethod
    def empty(k: int, d_model: int, device, dtype=torch.float32) -> "Route":
        return Route(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, k, dtype=torch.long, device=device),
                     torch.zeros(0, d_model, k, device=device, dtype=dtype), [])


@dataclass
class TrainSlot:
    """While edits train: per edit its columns and trainable delta, and which edit each batch row trains."""

    cols: torch.Tensor  # (N, k) long
    delta: nn.Parameter  # (N, d_model, k)
    row_edit: torch.Tensor  # (B,) long, index into the N edits
    positions: torch.Tensor | None = None  # (B, T) bool, where the memory acts; None: every position


def gather_columns(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x (A, T, d_ff), cols (A, k) -> (A, T, k): each row's own columns."""
    return torch.gather(x, 2, cols[:, None, :].expand(-1, x.shape[1], -1))


class ResidualMemoryLayer(nn.Module):
    """Wraps a down-projection (nn.Linear or GPT-2's Conv1D) with sparse per-edit residual memory."""

    def __init__(self, base_layer: nn.Module, in_features: int, out_features: int):
        super().__init__()
        self.base_layer = base_layer
        self.in_features = in_features  # d_ff
        self.out_features = out_features  # d_model
        self._enabled = True
        self._captured: list[torch.Tensor] | None = None
        self._route: Route | None = None
        self._router: Callable[[torch.Tensor], Route] | None = None
        self._key_mask: torch.Tensor | None = None
        self._resolved: list[Route] | None = None
        self._first_positions: torch.Tensor | None = None  # (B, T) for the first forward of a route
        self._slot: TrainSlot | None = None

    # --- switches ----------------------------------------------------------------------------------------
    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside the block the layer is its base layer: no memory fires."""
        before, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = before

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        """Inside the block every forward appends its input x (B, T, d_ff), detached, to the yielded list."""
        before, self._captured = self._captured, []
        try:
            yield self._captured
        finally:
            self._captured = before

    @contextmanager
    def applying(self, route: Route | Callable[[torch.Tensor], Route], first_positions: torch.Tensor | None = None,
                 key_mask: torch.Tensor | None = None) -> Iterator[list[Route]]:
        """Apply a route to the forwards inside the block.

        `route` is a Route, or a router: a function of the first forward's input pooled over `key_mask`
        (B, T), the question's tokens, (B, d_ff) -> Route, called once (no extra forward). The first
        forward acts where `first_positions` (B, T) is True (from each row's last prompt token on);
        later forwards are decode steps, every position of which is an answer token. The yielded list
        receives the Route once it is known."""
        saved = self._route, self._router, self._key_mask, self._first_positions, self._resolved
        resolved: list[Route] = []
        if isinstance(route, Route):
            self._route, self._router = route, None
            resolved.append(route)
        else:
            self._route, self._router = None, route
        self._key_mask, self._first_positions, self._resolved = key_mask, first_positions, resolved
        try:
            yield resolved
        finally:
            self._route, self._router, self._key_mask, self._first_positions, self._resolved = saved

    @contextmanager
    def trainable(self, slot: TrainSlot) -> Iterator[None]:
        """Inside the block every row reads its edit's columns with the trainable delta."""
        before, self._slot = self._slot, slot
        try:
            yield
        finally:
            self._slot = before

    # --- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, d_ff)
        y = self.base_layer(x)  # (B, T, d_model)
        if self._captured is not None:
            self._captured.append(x.detach())
        if not self._enabled:
            return y
        slot = self._slot
        if slot is not None:  # training: every row reads its own edit's columns
            cols = slot.cols[slot.row_edit]  # (B, k)
            w = slot.delta[slot.row_edit]  # (B, d_model, k)
            add = torch.einsum("btk,bok->bto", gather_columns(x, cols), w.to(x.dtype))  # (B, T, d_model)
            return y + (add if slot.positions is None else add * slot.positions.unsqueeze(-1).to(add.dtype))
        route = self._route
        if route is None and self._router is not None:  # the first forward: route from its own input
            if self._key_mask is None or self._key_mask.shape != x.shape[:2]:
                raise InvalidInputError("a router needs the key mask of the first forward's tokens")
            route = self._route = self._router(TopHashFingerprinter.pool(x, self._key_mask))
            self._resolved.append(route)
        if route is None or route.rows.numel() == 0:
            self._first_positions = None
            return y
        add = torch.einsum("atk,aok->ato", gather_columns(x[route.rows], route.cols),
                           route.weight.to(x.dtype))  # (A, T, d_model)
        positions = self._first_positions
        if positions is not None:  # the first forward; decode steps after it are all answer tokens
            if positions.shape != x.shape[:2]:
                raise InvalidInputError(f"positions {tuple(positions.shape)} do not match the input {tuple(x.shape[:2])}")
            add = add * positions[route.rows].unsqueeze(-1).to(add.dtype)
            self._first_positions = None
        return y.index_add(0, route.rows, add)


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


def num_layers(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))


def find_site(model: nn.Module, layer: int) -> LayerSite:
    """Locate decoder layer `layer`'s FFN down-projection (Llama-style or GPT-2-style)."""
    names = dict(model.named_modules())
    for name in names:
        for suffix in _DOWN_PROJ_NAMES:
            m = re.fullmatch(rf"(.*)\.(\d+)\.{re.escape(suffix)}", name)
            if m and int(m.group(2)) == layer:
                return LayerSite(layers=names[m.group(1)], index=layer, name=name)
    raise InvalidInputError(f"model has no FFN down-projection at layer {layer} (it has {num_layers(model)} layers)")


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
