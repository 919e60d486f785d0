"""MaskIndex: nearest-mask search over the active edits' k-sparse column sets.

A mask is a set of k columns out of d_ff. Two masks sharing o columns are at Hamming distance
2(k - o), so the nearest code is the largest overlap. Two exact backends:
- "faiss" (CPU): FAISS's binary flat index, a scan of N codes of d_ff/8 bytes;
- "torch" (on the model's GPU, or where FAISS is missing): the masks as a 0/1 (N, d_ff) matrix on
  the device, overlaps = queries @ masks^T, so a GPU query never leaves the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Match:
    edit_id: int
    overlap: float  # |query ∩ edit| / k


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class MaskIndex:
    def __init__(self, d_ff: int, top_k: int, device: str | torch.device = "cpu"):
        self.d_ff, self.top_k = d_ff, top_k
        self.device = torch.device(device)
        faiss = _faiss() if self.device.type == "cpu" else None
        self.backend = "faiss" if faiss is not None else "torch"
        if faiss is not None:
            self.bits = (d_ff + 7) // 8 * 8
            self._index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.bits))
        else:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            self._masks = torch.zeros(0, d_ff, dtype=dtype, device=self.device)  # (capacity, d_ff)
            self._ids = torch.zeros(0, dtype=torch.long, device=self.device)
            self._n = 0
            self._row: dict[int, int] = {}

    def codes(self, cols: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N, k) column indices -> (N, bits/8) packed binary codes (the faiss backend's format)."""
        cols = cols.cpu().numpy() if isinstance(cols, torch.Tensor) else np.asarray(cols)
        dense = np.zeros((cols.shape[0], self.bits), dtype=np.uint8)
        np.put_along_axis(dense, cols.astype(np.int64), 1, axis=1)
        return np.packbits(dense, axis=1)

    def add(self, ids, cols) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if self.backend == "faiss":
            self._index.add_with_ids(self.codes(cols), ids)
            return
        cols = torch.as_tensor(np.asarray(cols.cpu() if isinstance(cols, torch.Tensor) else cols), dtype=torch.long)
        need = self._n + len(ids)
        if need > self._masks.shape[0]:  # grow by doubling
            grown = torch.zeros(max(need, 2 * self._masks.shape[0], 64), self.d_ff, dtype=self._masks.dtype,
                                device=self.device)
            grown[: self._n] = self._masks[: self._n]
            ids_grown = torch.zeros(grown.shape[0], dtype=torch.long, device=self.device)
            ids_grown[: self._n] = self._ids[: self._n]
            self._masks, self._ids = grown, ids_grown
        rows = torch.arange(self._n, need, device=self.device)
        self._masks[rows] = 0
        self._masks[rows[:, None], cols.to(self.device)] = 1
        self._ids[rows] = torch.as_tensor(ids, device=self.device)
        for r, i in zip(range(self._n, need), ids.tolist()):
            self._row[i] = r
        self._n = need

    def remove(self, edit_id: int) -> None:
        if self.backend == "faiss":
            self._index.remove_ids(np.array([edit_id], dtype=np.int64))
            return
        r = self._row.pop(int(edit_id), None)
        if r is None:
            return
        last = self._n - 1
        if r != last:  # move the last row into the hole
            self._masks[r] = self._masks[last]
            moved = int(self._ids[last])
            self._ids[r] = moved
            self._row[moved] = r
        self._n = last

    def __len__(self) -> int:
        return int(self._index.ntotal) if self.backend == "faiss" else self._n

    def nearest(self, cols: torch.Tensor) -> list[Match | None]:
        """For each query mask (B, k): the stored mask with the largest overlap, or None when empty."""
        if len(self) == 0:
            return [None] * cols.shape[0]
        k = cols.shape[1]
        if self.backend == "faiss":
            dist, ids = self._index.search(self.codes(cols), 1)
            return [Match(int(i), float((k - d / 2) / k)) if i >= 0 else None for d, i in zip(dist[:, 0], ids[:, 0])]
        query = torch.zeros(cols.shape[0], self.d_ff, dtype=self._masks.dtype, device=self.device)
        query.scatter_(1, cols.to(self.device).long(), 1)
        overlap = query @ self._masks[: self._n].T  # (B, N): shared columns
        best, row = overlap.max(dim=1)
        ids = self._ids[row]
        return [Match(int(i), float(o) / k) for i, o in zip(ids.tolist(), best.tolist())]
