"""Router: which edit, if any, fires for each question of a batch.

Two keys, chosen by EditorConfig.key:

    sentence (default):  fire(q) = the most similar active edit i whose question s_i has
                         cos(MiniLM(q), MiniLM(s_i)) >= similarity_threshold  and  names(s_i) ⊆ words(q)
    tophash (MEMOIR):    fire(q) = argmax_i overlap(TopHash(q), mask_i)  if >= mask_overlap

The sentence key reads the question text alone, so it is the same in any conversation, and is
decided before the forward; TopHash reads the memory layer's input pooled over the question's
tokens, so it is decided inside the first forward. Measured side by side in docs/keys.md and the
benchmarks: questions of one template about different subjects overlap under TopHash about as
much as paraphrases do. Either way an edit's delta is read from the store only when it fires.
The router owns the routing state; the editor tells it when edits come and go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sam.core.fingerprinter import TopHashFingerprinter
from sam.core.memory_layer import Route
from sam.core.sentence_key import DIM, SentenceKey, names_match
from sam.memory.mask_index import MaskIndex

CANDIDATES = 8  # nearest questions checked, in order, against the name veto


@dataclass(frozen=True)
class Decision:
    edit_id: int | None  # the edit that fires, or None
    overlap: float  # the best similarity found: key cosine, or mask overlap (0.0 with no edits)
    nearest: int | None  # the nearest edit, whether or not it fires


class Router:
    def __init__(self, fingerprinter: TopHashFingerprinter, d_model: int,
                 delta: Callable[[int], tuple[torch.Tensor, torch.Tensor]], device: str | torch.device = "cpu",
                 key: str = "sentence", similarity_threshold: float = 0.8, mask_overlap: float = 0.45):
        self.fingerprinter, self.d_model, self.key = fingerprinter, d_model, key
        self.similarity_threshold, self.mask_overlap = similarity_threshold, mask_overlap
        self.device = torch.device(device)
        self._delta = delta  # edit id -> (cols (k,), delta (d_model, k))
        self.index = MaskIndex(fingerprinter.size, fingerprinter.top_k, device)
        self.sentences = SentenceKey(self.device)
        self._keys = torch.zeros(0, DIM, device=self.device)  # (capacity, 384), rows of the active edits
        self._ids: list[int] = []
        self._questions: list[str] = []
        self._row: dict[int, int] = {}

    # --- the active set --------------------------------------------------------------------------------
    def load(self, ids, cols, questions: list[str], keys: torch.Tensor) -> None:
        """The active edits at open: ids (N,), TopHash columns (N, k), questions, sentence keys (N, 384)."""
        self.index.add(ids, cols)
        self._append([int(i) for i in ids], questions, keys)

    def add(self, edit_id: int, cols: torch.Tensor, question: str, key: torch.Tensor | None = None) -> None:
        self.index.add([edit_id], cols.view(1, -1))
        self._append([edit_id], [question], key.view(1, -1) if key is not None else self.encode([question]))

    def _append(self, ids: list[int], questions: list[str], keys: torch.Tensor) -> None:
        n = len(self._ids)
        need = n + len(ids)
        if need > self._keys.shape[0]:  # grow by doubling
            grown = torch.zeros(max(need, 2 * self._keys.shape[0], 64), DIM, device=self.device)
            grown[:n] = self._keys[:n]
            self._keys = grown
        self._keys[n:need] = keys.to(self.device, torch.float32)
        for i, q in zip(ids, questions):
            self._row[i] = len(self._ids)
            self._ids.append(i)
            self._questions.append(q)

    def remove(self, edit_id: int) -> None:
        self.index.remove(edit_id)
        r = self._row.pop(edit_id, None)
        if r is None:
            return
        last = len(self._ids) - 1
        if r != last:  # move the last row into the hole
            self._keys[r] = self._keys[last]
            self._ids[r], self._questions[r] = self._ids[last], self._questions[last]
            self._row[self._ids[r]] = r
        self._ids.pop()
        self._questions.pop()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._row

    def encode(self, questions: list[str]) -> torch.Tensor:
        """Sentence keys (N, 384) of questions."""
        return self.sentences.encode(questions)

    # --- decisions -------------------------------------------------------------------------------------
    def columns(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d_ff) pooled question activations -> (B, k) TopHash masks: the columns an edit trains."""
        return self.fingerprinter.columns(pooled)

    def decide_questions(self, questions: list[str]) -> list[Decision]:
        """The sentence key: decided from the question texts, before any forward."""
        n = len(self._ids)
        if n == 0:
            return [Decision(None, 0.0, None) for _ in questions]
        sims = self.encode(questions).to(self.device) @ self._keys[:n].T  # (B, N)
        top = sims.topk(min(CANDIDATES, n), dim=1)
        out = []
        for b, q in enumerate(questions):
            values, rows = top.values[b].tolist(), top.indices[b].tolist()
            fired = next((self._ids[r] for v, r in zip(values, rows)
                          if v >= self.similarity_threshold and names_match(self._questions[r], q)), None)
            out.append(Decision(fired, values[0], self._ids[rows[0]]))
        return out

    def decide_pooled(self, pooled: torch.Tensor) -> list[Decision]:
        """TopHash: decided from the memory layer's input pooled over each question's tokens."""
        out = []
        for match in self.index.nearest(self.columns(pooled)):
            if match is None:
                out.append(Decision(None, 0.0, None))
            else:
                fires = match.overlap >= self.mask_overlap and match.edit_id in self._row
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
