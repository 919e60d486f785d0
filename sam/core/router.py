"""Router: which edit, if any, fires for each question of a batch.

Two keys, chosen by EditorConfig.key:

    sentence (default):  among the active edits i whose question s_i names only words q has
                         (names(s_i) ⊆ words(q)) and asks what q asks (template cosine >= template_threshold),
                         the most similar (question cosine) fires if >= similarity_threshold
                         (MiniLM sentence embeddings, see sam/core/sentence_key.py)
    tophash (MEMOIR):    fire(q) = argmax_i overlap(TopHash(q), mask_i)  if >= mask_overlap

The sentence key reads the question text alone, so it is the same in any conversation, and is
decided before the forward; TopHash reads the memory layer's input pooled over the question's
tokens, so it is decided inside the first forward. Measured side by side in docs/keys.md and the
benchmarks: questions of one template about different subjects overlap under TopHash about as
much as paraphrases do. Either way an edit's delta is read from the store only when it fires.
The router owns the routing state; the editor tells it when edits come and go.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from sam.core.fingerprinter import TopHashFingerprinter
from sam.core.memory_layer import Route
from sam.core.sentence_key import DIM, SentenceKey, names, swapped, words
from sam.memory.mask_index import MaskIndex


@dataclass(frozen=True)
class Decision:
    edit_id: int | None  # the edit that fires, or None
    overlap: float  # the best similarity found (key cosine, or mask overlap), allowed or not; 0.0 with no edits
    nearest: int | None  # the nearest edit, whether or not it fires


class Router:
    def __init__(self, fingerprinter: TopHashFingerprinter, d_model: int,
                 delta: Callable[[int], tuple[torch.Tensor, torch.Tensor]], device: str | torch.device = "cpu",
                 key: str = "sentence", similarity_threshold: float = 0.8, template_threshold: float = 0.5,
                 supersede_threshold: float = 0.8, mask_overlap: float = 0.45):
        self.fingerprinter, self.d_model, self.key = fingerprinter, d_model, key
        self.similarity_threshold, self.template_threshold = similarity_threshold, template_threshold
        self.supersede_threshold = supersede_threshold
        self.mask_overlap = mask_overlap
        self.device = torch.device(device)
        self._delta = delta  # edit id -> (cols (k,), delta (d_model, k))
        self.index = MaskIndex(fingerprinter.size, fingerprinter.top_k, device)
        self.sentences = SentenceKey(self.device)
        self._keys = torch.zeros(0, DIM, device=self.device)  # (capacity, 768), rows of the active edits
        self._ids: list[int] = []
        self._questions: list[str] = []
        self._row: dict[int, int] = {}
        self._known: Counter = Counter()  # the names of the active edits' questions
        self._name_ids: list[tuple[int, ...]] = []  # per row: its question's names, as ids in _vocab
        self._vocab: dict[str, int] = {}  # every name seen -> id (from 1; grows only)
        self._words: list[str] = [""]  # id -> name
        self._nameless: set[int] = set()  # rows whose question has no names (kept, not scanned: O(1) per edit)
        self._entries = _NameEntries()  # the (row, name id) pairs on the device, for allowed()

    # --- the active set --------------------------------------------------------------------------------
    def load(self, ids, cols, questions: list[str], keys: torch.Tensor) -> None:
        """The active edits at open: ids (N,), TopHash columns (N, k), questions, sentence keys (N, 768)."""
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
            r = len(self._ids)
            self._row[i] = r
            self._ids.append(i)
            self._questions.append(q)
            nm = names(q)
            for w in nm:
                if w not in self._vocab:
                    self._vocab[w] = len(self._words)
                    self._words.append(w)
            self._name_ids.append(tuple(self._vocab[w] for w in nm))
            if not nm:
                self._nameless.add(r)
            self._known.update(nm)

    def remove(self, edit_id: int) -> None:
        self.index.remove(edit_id)
        r = self._row.pop(edit_id, None)
        if r is None:
            return
        for w in map(self._words.__getitem__, self._name_ids[r]):
            self._known[w] -= 1
            if self._known[w] <= 0:  # no active edit has this name any more
                del self._known[w]
        self._nameless.discard(r)
        last = len(self._ids) - 1
        if r != last:  # move the last row into the hole
            self._keys[r] = self._keys[last]
            self._ids[r], self._questions[r] = self._ids[last], self._questions[last]
            self._name_ids[r] = self._name_ids[last]
            if last in self._nameless:
                self._nameless.discard(last)
                self._nameless.add(r)
            self._row[self._ids[r]] = r
        for lst in (self._ids, self._questions, self._name_ids):
            lst.pop()
        self._entries.stale()

    def active(self) -> list[tuple[int, str]]:
        """(edit id, question) of the active edits, in the order of allowed()'s columns."""
        return list(zip(self._ids, self._questions))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._row

    def encode(self, questions: list[str]) -> torch.Tensor:
        """Sentence keys (N, 768) of questions."""
        return self.sentences.encode(questions)

    # --- decisions -------------------------------------------------------------------------------------
    def columns(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d_ff) pooled question activations -> (B, k) TopHash masks: the columns an edit trains."""
        return self.fingerprinter.columns(pooled)

    def allowed(self, questions: list[str]) -> torch.Tensor:
        """(B, N) bool on the router's device: per question, the active edits whose names all appear in it;
        an edit without names, unless the question is its own with the subject words swapped
        (sentence_key.swapped). Counted on the device from the (row, name) pairs of the active edits:

            hits[b, r] = sum over r's names w of present[b, w],   allowed = (hits == |names(r)|) & (|names(r)| > 0)

        so only the (question, name) pairs of the batch cross to the device, and only the pairs whose name
        the batch mentions are summed. The earlier host-built (B, N) mask (numpy, copied once per batch)
        grew with N: with it the H200's inference overhead was +8.2% at 10,000 edits and +17.8% at
        50,000 (README)."""
        n, dev = len(self._ids), self.device
        rows, ids, need = self._entries.get(self._name_ids, dev)  # (E,), (E,), (N,)
        pairs = [(b, self._vocab[w]) for b, q in enumerate(questions) for w in words(q) if w in self._vocab]
        present = torch.zeros(len(questions), len(self._vocab) + 1, dtype=torch.bool, device=dev)  # (B, V + 1)
        if pairs:
            present[tuple(torch.tensor(pairs, device=dev).T)] = True
        hit = present.any(dim=0)[ids].nonzero().squeeze(1)  # (E',): the pairs whose name the batch mentions
        hits = torch.zeros(len(questions), n, dtype=torch.int32, device=dev)  # (B, N)
        hits.index_add_(1, rows[hit], present[:, ids[hit]].to(torch.int32))
        out = (hits == need) & (need > 0)
        if self._nameless:  # no names to check: only a swapped subject word vetoes
            rs = sorted(self._nameless)
            keep = [[not swapped(self._questions[r], q) for r in rs] for q in questions]
            out[:, torch.tensor(rs, device=dev)] = torch.tensor(keep, dtype=torch.bool, device=dev)
        return out

    def decide_questions(self, questions: list[str], replacing: bool = False) -> list[Decision]:
        """The sentence key: decided from the question texts, before any forward. Among the edits whose
        names the question mentions, the one with the most similar template fires if similar enough.
        replacing: the edit a new answer to the question would replace, which must also ask the same by
        the stricter template cosine (supersede_threshold). Measured (docs/keys.md): at 0.5 one synthetic
        question in seven about the same subject but another relation ("Where is X headquartered?" /
        "What industry is X in?", template cosine 0.73) passed, and its fact was replaced; at 0.8 none."""
        n = len(self._ids)
        if n == 0:
            return [Decision(None, 0.0, None) for _ in questions]
        half = DIM // 2
        keys = self.sentences.encode(questions, known=self._known).to(self.device)  # (B, 768)
        sims = keys[:, :half] @ self._keys[:n, :half].T  # (B, N): the questions
        ask = max(self.template_threshold, self.supersede_threshold) if replacing else self.template_threshold
        same_ask = keys[:, half:] @ self._keys[:n, half:].T >= ask  # (B, N): the templates
        masked = sims.masked_fill(~(self.allowed(questions) & same_ask), -2.0)  # (B, N)
        best, nearest = sims.max(dim=1)  # whether or not it may fire
        value, row = masked.max(dim=1)
        best, value = torch.stack([best, value]).tolist()  # one copy to the host for the batch
        nearest, row = torch.stack([nearest, row]).tolist()
        return [Decision(self._ids[r] if v >= self.similarity_threshold else None, max(bst, 0.0), self._ids[nr])
                for bst, nr, v, r in zip(best, nearest, value, row)]

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


class _NameEntries:
    """The active edits' (row, name id) pairs and names per row, as device tensors for Router.allowed.
    Rows only appended since the last build are appended; a removal (which moves the last row) rebuilds.
    A whole build at 50,000 edits (103,000 pairs, 5,354 names) took 40 ms on these CPUs (shared); an
    edit appends its own pairs only, and routing reads them many times between removals."""

    def __init__(self):
        self._rows = self._ids = self._need = None
        self._upto = 0  # rows covered

    def stale(self) -> None:
        self._upto, self._rows = 0, None

    def get(self, name_ids: list[tuple[int, ...]], device: torch.device):
        n = len(name_ids)
        if self._rows is None:
            self._upto = 0
            self._rows = self._ids = torch.zeros(0, dtype=torch.long, device=device)
            self._need = torch.zeros(0, dtype=torch.int32, device=device)
        if self._upto < n:
            new = name_ids[self._upto:]
            count = np.fromiter((len(t) for t in new), dtype=np.int64, count=len(new))
            rows = np.repeat(np.arange(self._upto, n, dtype=np.int64), count)
            ids = np.fromiter(chain.from_iterable(new), dtype=np.int64, count=int(count.sum()))
            self._rows = torch.cat([self._rows, torch.from_numpy(rows).to(device)])
            self._ids = torch.cat([self._ids, torch.from_numpy(ids).to(device)])
            self._need = torch.cat([self._need, torch.from_numpy(count).to(device, torch.int32)])
            self._upto = n
        return self._rows, self._ids, self._need
