"""Router: which edit, if any, fires for each prompt of a batch.

    key(prompt)  = TopHash(mean of the memory layer's input over the question's tokens)
    fire(prompt) = argmax_i overlap(key, mask_i)   if that overlap >= threshold, else nothing

The masks of the active edits live in a FAISS binary index (sam/memory/mask_index.py); an edit's
delta is read from the store only when it fires. The router owns the routing state; the editor
tells it when edits come and go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sam.core.fingerprinter import TopHashFingerprinter
from sam.core.memory_layer import Route
from sam.memory.mask_index import MaskIndex


@dataclass(frozen=True)
class Decision:
    edit_id: int | None  # the edit that fires, or None
    overlap: float  # best mask overlap found (0.0 with no edits)
    nearest: int | None  # the nearest edit, whether or not it fires


class Router:
    def __init__(self, fingerprinter: TopHashFingerprinter, threshold: float, d_model: int,
                 delta: Callable[[int], tuple[torch.Tensor, torch.Tensor]], device: str | torch.device = "cpu"):
        self.fingerprinter, self.threshold, self.d_model = fingerprinter, threshold, d_model
        self._delta = delta  # edit id -> (cols (k,), delta (d_model, k))
        self.index = MaskIndex(fingerprinter.size, fingerprinter.top_k, device)
        self._active: set[int] = set()

    # --- the active set --------------------------------------------------------------------------------
    def load(self, ids, cols) -> None:
        self.index.add(ids, cols)
        self._active.update(int(i) for i in ids)

    def add(self, edit_id: int, cols: torch.Tensor) -> None:
        self.index.add([edit_id], cols.view(1, -1))
        self._active.add(edit_id)

    def remove(self, edit_id: int) -> None:
        self.index.remove(edit_id)
        self._active.discard(edit_id)

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._active

    # --- decisions -------------------------------------------------------------------------------------
    def columns(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d_ff) pooled question activations -> (B, k) key masks."""
        return self.fingerprinter.columns(pooled)

    def decide(self, pooled: torch.Tensor) -> list[Decision]:
        out = []
        for match in self.index.nearest(self.columns(pooled)):
            if match is None:
                out.append(Decision(None, 0.0, None))
            else:
                fires = match.overlap >= self.threshold and match.edit_id in self._active
                out.append(Decision(match.edit_id if fires else None, match.overlap, match.edit_id))
        return out

    def route(self, decisions: list[Decision], device, dtype=torch.float32) -> Route:
        """The Route a memory layer applies: the firing rows with their edits' columns and deltas."""
        rows = [b for b, d in enumerate(decisions) if d.edit_id is not None]
        if not rows:
            return Route.empty(self.fingerprinter.top_k, self.d_model, device, dtype)
        ids = [decisions[b].edit_id for b in rows]
        parts = [self._delta(i) for i in ids]
        cols = torch.stack([c for c, _ in parts]).to(device)
        weight = torch.stack([w for _, w in parts]).to(device, dtype)
        return Route(torch.tensor(rows, device=device), cols, weight, ids)
