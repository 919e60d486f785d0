"""MaskIndex: nearest-mask search over the active edits' k-sparse column sets (FAISS, binary).

A mask is a set of k columns out of d_ff, stored as a d_ff-bit code. Two masks sharing o columns
are at Hamming distance 2(k - o), so the nearest code is the largest overlap, and FAISS's binary
index searches it exactly (IndexBinaryFlat: a scan of N codes of d_ff/8 bytes, N = active edits).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch


@dataclass(frozen=True)
class Match:
    edit_id: int
    overlap: float  # |query ∩ edit| / k


class MaskIndex:
    def __init__(self, d_ff: int, top_k: int):
        self.d_ff, self.top_k = d_ff, top_k
        self.bits = (d_ff + 7) // 8 * 8
        self._index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.bits))

    def codes(self, cols: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N, k) column indices -> (N, bits/8) packed binary codes."""
        cols = cols.cpu().numpy() if isinstance(cols, torch.Tensor) else np.asarray(cols)
        dense = np.zeros((cols.shape[0], self.bits), dtype=np.uint8)
        np.put_along_axis(dense, cols.astype(np.int64), 1, axis=1)
        return np.packbits(dense, axis=1)

    def add(self, ids: list[int] | np.ndarray, cols: torch.Tensor | np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids):
            self._index.add_with_ids(self.codes(cols), ids)

    def remove(self, edit_id: int) -> None:
        self._index.remove_ids(np.array([edit_id], dtype=np.int64))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def nearest(self, cols: torch.Tensor) -> list[Match | None]:
        """For each query mask (B, k): the stored mask with the largest overlap, or None when empty."""
        if len(self) == 0:
            return [None] * cols.shape[0]
        dist, ids = self._index.search(self.codes(cols), 1)
        k = cols.shape[1]
        return [Match(int(i), float((k - d / 2) / k)) if i >= 0 else None for d, i in zip(dist[:, 0], ids[:, 0])]
