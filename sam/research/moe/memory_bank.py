"""MemoryBank: an expert's external memory.

Entries live in two tiers: a bounded short-term FIFO (every store lands there) and a long-term store split
into episodic (single experiences) and semantic (prototypes built by consolidation) memories. Each entry keeps
its raw content and an optional target vector; search keys are re-encoded from the content by a learned
encoder (so the metric keeps learning), cached until the encoder's weights change, and searched with one
matrix product over the stacked key matrix (or FAISS for big banks).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.errors import CorruptStoreError, InvalidInputError

from .config import MemoryConfig
from .types import MemoryEntry, MemoryType

_TYPE_CODE = {MemoryType.EPISODIC: 0, MemoryType.SEMANTIC: 1}
_SELF_SIM = 1.0 - 1e-5  # cosine above this counts as "the query itself" when exclude_self is on


def check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.is_floating_point(t):
        raise InvalidInputError(f"{what} must be a floating point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{what} contains NaN or Inf")


class MemoryEncoder(nn.Module):
    """key = P x + MLP(x). P is a fixed random orthogonal projection, so an untrained encoder already ranks by
    (nearly) the raw cosine; the MLP starts at zero and learns a residual. Without the fixed part, a metric
    learned on the pre-training classes collapsed classes it never saw (measured: kNN on new digit classes fell
    well below raw-pixel kNN), which is exactly where memory has to help."""

    def __init__(self, input_dim: int, mem_dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(input_dim * 7919 + mem_dim)
        q, _ = torch.linalg.qr(torch.randn(max(input_dim, mem_dim), max(input_dim, mem_dim), generator=g))
        self.register_buffer("proj", q[:input_dim, :mem_dim].contiguous())  # (D, M)
        self.mlp = nn.Sequential(nn.Linear(input_dim, 2 * mem_dim), nn.GELU(), nn.Linear(2 * mem_dim, mem_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj + self.mlp(x)  # (..., M)


class MemoryBank(nn.Module):
    def __init__(self, input_dim: int, value_dim: int = 0, config: Optional[MemoryConfig] = None):
        super().__init__()
        if input_dim <= 0 or value_dim < 0:
            raise InvalidInputError(f"input_dim must be > 0 and value_dim >= 0, got {input_dim}, {value_dim}")
        self.config = config or MemoryConfig()
        self.input_dim, self.value_dim = int(input_dim), int(value_dim)
        M = self.config.memory_dim
        # learned memory encoder: content (D,) -> key (M,); trained through the expert's memory attention
        self.encoder = MemoryEncoder(input_dim, M)
        self.short_term: "OrderedDict[int, MemoryEntry]" = OrderedDict()  # insertion order = age
        self.long_term: dict[int, MemoryEntry] = {}
        self._next_id = 0
        self._by_hash: dict[str, int] = {}  # content hash -> id, so re-storing an experience refreshes it
        self._hash_of: dict[int, str] = {}  # id -> content hash (reverse, so forgetting is O(1))
        self._n_long = {t: 0 for t in MemoryType}  # long-term entries per type, so capacity checks are O(1)
        self._prototype_ids: dict[str, int] = {}  # label -> id of its semantic prototype
        self.counters = dict(consolidations=0, prunes=0, promoted=0, pruned=0, evicted=0, retrievals=0)
        self._rows: Optional[dict] = None  # stacked view of all entries, rebuilt when entries change
        self._keys: Optional[tuple] = None  # (signature, (N, M) normalised keys)
        self._faiss: dict = {}  # type code or None -> (signature, index, row map)

    # ------------------------------------------------------------------ storage
    def __len__(self) -> int:
        return len(self.short_term) + len(self.long_term)

    def entries(self) -> list[MemoryEntry]:
        return list(self.short_term.values()) + list(self.long_term.values())

    def get(self, memory_id: int) -> Optional[MemoryEntry]:
        return self.short_term.get(memory_id) or self.long_term.get(memory_id)

    def _device(self) -> torch.device:
        return self.encoder.proj.device

    def _check_content(self, content: torch.Tensor) -> torch.Tensor:
        if not isinstance(content, torch.Tensor):
            raise InvalidInputError(f"content must be a tensor, got {type(content).__name__}")
        if content.dim() == 2 and content.shape[0] == 1:
            content = content[0]
        if content.dim() != 1 or content.shape[0] != self.input_dim:
            raise InvalidInputError(f"content must have shape ({self.input_dim},), got {tuple(content.shape)}")
        check_finite(content, "content")
        return content

    def _make_value(self, value: Any, metadata: dict) -> Optional[torch.Tensor]:
        if value is None and "target" in metadata:  # the notes' style: metadata={'target': y}
            value = metadata.pop("target")
        if value is None and isinstance(metadata.get("label"), int) and self.value_dim:
            value = int(metadata["label"])
        if value is None:
            return None
        if not self.value_dim:
            raise InvalidInputError("this bank was built with value_dim=0 and stores no targets")
        if isinstance(value, torch.Tensor) and value.dim() == 0 and not torch.is_floating_point(value):
            value = int(value)
        if isinstance(value, int):
            if not 0 <= value < self.value_dim:
                raise InvalidInputError(f"label {value} out of range [0, {self.value_dim})")
            metadata.setdefault("label", value)
            return F.one_hot(torch.tensor(value), self.value_dim).float()
        value = torch.as_tensor(value, dtype=torch.float32).flatten()
        if value.shape[0] != self.value_dim:
            raise InvalidInputError(f"value must have {self.value_dim} elements, got {value.shape[0]}")
        check_finite(value, "value")
        return value

    def store(
        self,
        content: torch.Tensor,
        metadata: Optional[dict] = None,
        memory_type: MemoryType = MemoryType.EPISODIC,
        importance: float = 0.5,
        value: Any = None,
    ) -> int:
        """Store one experience; returns its id. Storing the same content again refreshes that entry."""
        content = self._check_content(content)
        memory_type = MemoryType(memory_type)
        if not 0.0 <= float(importance) <= 1.0 or math.isnan(float(importance)):
            raise InvalidInputError(f"importance must be in [0, 1], got {importance}")
        metadata = dict(metadata or {})
        value = self._make_value(value, metadata)
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"metadata must be JSON-serialisable: {e}") from None
        content = content.detach().to(self._device(), torch.float32).clone()  # clone: never keep a view of a batch
        if value is not None:
            value = value.detach().to(self._device())
        h = hashlib.blake2b(content.cpu().numpy().tobytes() + memory_type.value.encode(), digest_size=16).hexdigest()
        old = self.get(self._by_hash.get(h, -1))
        if old is not None:  # refresh instead of duplicating
            old.timestamp, old.importance = time.time(), max(old.importance, float(importance))
            old.metadata.update(metadata)
            if value is not None:
                old.value = value
            self._rows = None
            return old.id
        entry = MemoryEntry(self._next_id, content, value, memory_type, float(importance), 0, time.time(), metadata)
        self._next_id += 1
        self._by_hash[h] = entry.id
        self._hash_of[entry.id] = h
        self.short_term[entry.id] = entry
        while len(self.short_term) > self.config.short_term_capacity:  # FIFO overflow: promote or forget
            _, oldest = self.short_term.popitem(last=False)
            if self._should_promote(oldest, time.time()):
                self._promote(oldest)
            else:
                self._forget(oldest)
                self.counters["evicted"] += 1
        self._enforce_capacity()
        self._rows = None
        return entry.id

    def store_batch(self, contents: torch.Tensor, values: Any = None, memory_type: MemoryType = MemoryType.EPISODIC,
                    importance: float = 0.5, metadata: Optional[list] = None) -> list[int]:
        """Store N rows of (N, D) contents with optional (N,) labels or (N, O) targets."""
        if not isinstance(contents, torch.Tensor) or contents.dim() != 2:
            raise InvalidInputError("contents must be a (N, D) tensor")
        n = contents.shape[0]
        if metadata is not None and len(metadata) != n:
            raise InvalidInputError("metadata must have one dict per row")
        return [
            self.store(contents[i], metadata[i] if metadata else None, memory_type, importance,
                       None if values is None else (int(values[i]) if values.dim() == 1 else values[i]))
            for i in range(n)
        ]

    def _forget(self, e: MemoryEntry) -> None:
        self.short_term.pop(e.id, None)
        if self.long_term.pop(e.id, None) is not None:
            self._n_long[e.memory_type] -= 1
        h = self._hash_of.pop(e.id, None)
        if h is not None and self._by_hash.get(h) == e.id:
            del self._by_hash[h]
        if e.memory_type == MemoryType.SEMANTIC:  # a handful of prototypes: a scan is fine
            for k in [k for k, v in self._prototype_ids.items() if v == e.id]:
                del self._prototype_ids[k]

    def _promote(self, e: MemoryEntry) -> None:
        self.short_term.pop(e.id, None)
        e.tier = "long"
        self.long_term[e.id] = e
        self._n_long[e.memory_type] += 1
        self.counters["promoted"] += 1

    def _score(self, e: MemoryEntry, now: float) -> float:
        # promotion score of the notes: half recency, half how often it was recalled
        recency = math.exp(-max(now - e.timestamp, 0.0) / self.config.recency_tau_s)
        access = min(e.access_count / self.config.access_saturation, 1.0)
        return 0.5 * recency + 0.5 * access

    def _should_promote(self, e: MemoryEntry, now: float) -> bool:
        thr = self.config.consolidation_threshold
        return e.importance >= thr or self._score(e, now) >= thr

    def _enforce_capacity(self) -> int:
        """Drop the least important long-term entries (then least used, then oldest) until within every capacity."""
        c, dropped = self.config, 0
        n = self._n_long
        if (n[MemoryType.EPISODIC] <= c.episodic_capacity and n[MemoryType.SEMANTIC] <= c.semantic_capacity
                and len(self.long_term) <= c.long_term_capacity):
            return 0  # fast path: within every capacity
        rank = lambda e: (e.importance, e.access_count, e.timestamp)  # noqa: E731
        for mtype, cap in ((MemoryType.EPISODIC, c.episodic_capacity), (MemoryType.SEMANTIC, c.semantic_capacity)):
            of_type = [e for e in self.long_term.values() if e.memory_type == mtype]
            for e in sorted(of_type, key=rank)[: max(len(of_type) - cap, 0)]:
                self._forget(e)
                dropped += 1
        extra = len(self.long_term) - c.long_term_capacity
        for e in sorted(self.long_term.values(), key=rank)[: max(extra, 0)]:
            self._forget(e)
            dropped += 1
        if dropped:
            self._rows = None
        return dropped

    # ------------------------------------------------------------------ consolidation and pruning
    def consolidate(self) -> dict:
        """Promote short-term entries by recency and access (or stored importance); rebuild class prototypes."""
        now, promoted = time.time(), 0
        for e in list(self.short_term.values()):
            if self._should_promote(e, now):
                e.importance = max(e.importance, self._score(e, now))
                self._promote(e)
                promoted += 1
        # semantic memory: one prototype per label = mean content and mean target of its long-term episodes
        groups: dict[str, list[MemoryEntry]] = {}
        for e in self.long_term.values():
            if e.memory_type == MemoryType.EPISODIC and e.value is not None:
                label = e.metadata.get("label", int(e.value.argmax()))
                groups.setdefault(str(label), []).append(e)
        for label, members in groups.items():
            content = torch.stack([m.content for m in members]).mean(0)
            value = torch.stack([m.value for m in members]).mean(0)
            importance = float(np.mean([m.importance for m in members]))
            meta = {"label": int(label) if label.lstrip("-").isdigit() else label, "prototype_of": len(members)}
            pid = self._prototype_ids.get(label)
            if pid is not None and pid in self.long_term:
                p = self.long_term[pid]
                p.content, p.value, p.importance, p.metadata, p.timestamp = content, value, importance, meta, now
            else:
                p = MemoryEntry(self._next_id, content, value, MemoryType.SEMANTIC, importance, 0, now, meta, "long")
                self._next_id += 1
                self.long_term[p.id] = p
                self._n_long[MemoryType.SEMANTIC] += 1
                self._prototype_ids[label] = p.id
        dropped = self._enforce_capacity()
        self.counters["consolidations"] += 1
        self._rows = None
        return dict(promoted=promoted, prototypes=len(groups), dropped=dropped,
                    short_term=len(self.short_term), long_term=len(self.long_term))

    def prune(self) -> dict:
        """Drop entries below min_importance, then trim every store to its capacity."""
        low = [e for e in self.entries() if e.importance < self.config.min_importance]
        for e in low:
            self._forget(e)
        dropped = len(low) + self._enforce_capacity()
        self.counters["prunes"] += 1
        self.counters["pruned"] += dropped
        self._rows = None
        return dict(pruned=dropped, remaining=len(self))

    # ------------------------------------------------------------------ search
    def _stack(self) -> dict:
        if self._rows is None:
            es = self.entries()
            self._rows_version = getattr(self, "_rows_version", 0) + 1
            dev, D, O = self._device(), self.input_dim, max(self.value_dim, 1)
            self._rows = dict(
                entries=es,
                contents=torch.stack([e.content.to(dev) for e in es]) if es else torch.zeros(0, D, device=dev),  # (N, D)
                values=torch.stack([e.value.to(dev) if e.value is not None else torch.zeros(O, device=dev) for e in es])
                if es else torch.zeros(0, O, device=dev),  # (N, O)
                has_value=torch.tensor([e.value is not None for e in es], dtype=torch.bool, device=dev),  # (N,)
                types=torch.tensor([_TYPE_CODE[e.memory_type] for e in es], dtype=torch.long, device=dev),  # (N,)
                version=self._rows_version,
            )
        return self._rows

    def _signature(self) -> tuple:
        # tensor._version bumps on every in-place update (optimizer steps, load_state_dict), data_ptr on moves
        ps = list(self.encoder.parameters()) + [self.encoder.proj]
        return (self._stack()["version"],) + tuple((p.data_ptr(), p._version) for p in ps)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x), dim=-1)  # (..., M) unit keys: dot product = cosine

    def keys(self) -> torch.Tensor:
        """(N, M) normalised keys of every entry, cached until entries or encoder weights change."""
        sig = self._signature()
        if self._keys is None or self._keys[0] != sig:
            with torch.no_grad():
                self._keys = (sig, self.encode(self._stack()["contents"]), {})
        return self._keys[1]

    def _typed(self, tcode: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (N_t,), keys (N_t, M)) of one memory type, cached with the keys (no per-query gather)."""
        keys = self.keys()
        sub = self._keys[2]
        if tcode not in sub:
            rows = (self._stack()["types"] == tcode).nonzero().squeeze(1)
            sub[tcode] = (rows, keys[rows])
        return sub[tcode]

    def _use_faiss(self, n: int) -> bool:
        return self.config.use_faiss or n >= self.config.faiss_auto_size

    def _faiss_search(self, q: torch.Tensor, rows: Optional[torch.Tensor], tcode: Optional[int], k: int):
        """FAISS top-k over all keys (tcode None) or one memory type's rows; the index is cached per subset."""
        import faiss

        sig = self._signature()
        hit = self._faiss.get(tcode)
        if hit is None or hit[0] != sig:
            keys = self.keys() if tcode is None else self._typed(tcode)[1]
            kn = np.ascontiguousarray(keys.detach().float().cpu().numpy())
            n, M = kn.shape
            if n >= self.config.faiss_ivf_min_size:  # big enough for IVF (sqrt(n) lists, nprobe probed): approximate but sub-linear
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(M), M, int(math.sqrt(n)), faiss.METRIC_INNER_PRODUCT)
                index.train(kn)
                index.nprobe = self.config.faiss_nprobe
            else:  # exact
                index = faiss.IndexFlatIP(M)
            index.add(kn)
            hit = self._faiss[tcode] = (sig, index)
        sims, idx = hit[1].search(np.ascontiguousarray(q.detach().float().cpu().numpy()), k)
        sims, idx = torch.from_numpy(sims).to(q.device), torch.from_numpy(idx).to(q.device)
        sims = torch.where(idx < 0, torch.full_like(sims, -2.0), sims)  # IVF may find fewer than k
        idx = idx.clamp_min(0)
        return sims, (idx if rows is None else rows[idx])

    def search(self, query: torch.Tensor, top_k: Optional[int] = None, memory_type: Optional[MemoryType] = None,
               exclude_self: bool = False, count_access: bool = True, q_emb: Optional[torch.Tensor] = None) -> dict:
        """Batched top-k search. query (B, D) -> dict of (B, K) rows, sims, mask plus the stacked tensors.

        The search itself runs without grad; callers that train re-encode the K chosen contents with grad.
        q_emb: the query already encoded (B, M), to skip encoding it once per search.
        """
        if not isinstance(query, torch.Tensor):
            raise InvalidInputError("query must be a tensor")
        if query.dim() == 1:
            query = query.unsqueeze(0)
        if query.dim() != 2 or query.shape[1] != self.input_dim:
            raise InvalidInputError(f"query must have shape (B, {self.input_dim}), got {tuple(query.shape)}")
        check_finite(query, "query")
        k = int(top_k or self.config.top_k_retrieve)
        if k <= 0:
            raise InvalidInputError(f"top_k must be > 0, got {k}")
        st = self._stack()
        B, N = query.shape[0], len(st["entries"])
        rows, tcode, keys = None, None, None
        if memory_type is not None:
            tcode = _TYPE_CODE[MemoryType(memory_type)]
            rows, keys = self._typed(tcode)  # (N_t,), (N_t, M)
        n_avail = N if rows is None else rows.numel()
        k = min(k, n_avail)
        out = dict(stack=st, rows=torch.zeros(B, 0, dtype=torch.long, device=query.device),
                   sims=torch.zeros(B, 0, device=query.device), mask=torch.zeros(B, 0, dtype=torch.bool, device=query.device))
        if k == 0:
            return out
        self.counters["retrievals"] += 1
        with torch.no_grad():
            q = self.encode(query.to(self._device(), torch.float32)) if q_emb is None else q_emb.detach()  # (B, M)
            kk = k + 1 if exclude_self else k  # one spare slot for the query's own entry
            kk = min(kk, n_avail)
            if self._use_faiss(n_avail):
                sims, idx = self._faiss_search(q, rows, tcode, kk)
            else:
                keys = self.keys() if keys is None else keys
                sims, idx = (q @ keys.T).topk(kk, dim=-1)  # (B, N) -> (B, K): one matrix product for the batch
                if rows is not None:
                    idx = rows[idx]
            if exclude_self:  # push self-matches to the end and keep k
                self_hit = sims >= _SELF_SIM
                sims = torch.where(self_hit, torch.full_like(sims, -2.0), sims)
                sims, order = sims.sort(dim=-1, descending=True)
                idx = idx.gather(1, order)
                sims, idx = sims[:, :k], idx[:, :k]
            mask = sims >= self.config.similarity_threshold  # (B, K)
        if count_access and bool(mask.any()):
            for r in idx[mask].unique().tolist():
                st["entries"][r].access_count += 1
        out.update(rows=idx, sims=sims, mask=mask)
        return out

    def retrieve(self, query: torch.Tensor, top_k: Optional[int] = None,
                 memory_type: Optional[MemoryType] = None) -> Union[list, list[list]]:
        """Entries most similar to the query, best first, as (entry, cosine); a (B, D) query gives one list per row."""
        single = isinstance(query, torch.Tensor) and query.dim() == 1
        r = self.search(query, top_k, memory_type)
        es = r["stack"]["entries"]
        res = [[(es[i], float(s)) for i, s, m in zip(ri.tolist(), si.tolist(), mi.tolist()) if m]
               for ri, si, mi in zip(r["rows"], r["sims"], r["mask"])]
        return res[0] if single else res

    # ------------------------------------------------------------------ stats and persistence
    def footprint_bytes(self) -> int:
        """Bytes held by stored tensors (contents, targets) and the cached key matrix."""
        n = sum(e.content.numel() * e.content.element_size() + (0 if e.value is None else e.value.numel() * 4)
                for e in self.entries())
        return n + (0 if self._keys is None else self._keys[1].numel() * self._keys[1].element_size())

    def get_statistics(self) -> dict:
        es = self.entries()
        return dict(
            total=len(es),
            short_term=len(self.short_term),
            long_term=len(self.long_term),
            episodic=sum(e.memory_type == MemoryType.EPISODIC for e in es),
            semantic=sum(e.memory_type == MemoryType.SEMANTIC for e in es),
            mean_importance=float(np.mean([e.importance for e in es])) if es else 0.0,
            footprint_bytes=self.footprint_bytes(),
            **self.counters,
        )

    def memory_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything but the encoder weights: (tensors for safetensors, JSON-able metadata)."""
        es = self.entries()
        O = max(self.value_dim, 1)
        tensors = {
            "contents": torch.stack([e.content.cpu() for e in es]) if es else torch.zeros(0, self.input_dim),
            "values": torch.stack([e.value.cpu() if e.value is not None else torch.zeros(O) for e in es])
            if es else torch.zeros(0, O),
        }
        meta = dict(
            entries=[dict(id=e.id, type=e.memory_type.value, importance=e.importance, access_count=e.access_count,
                          timestamp=e.timestamp, metadata=e.metadata, tier=e.tier, has_value=e.value is not None)
                     for e in es],
            next_id=self._next_id, by_hash=self._by_hash, prototype_ids=self._prototype_ids, counters=self.counters,
        )
        return tensors, meta

    def load_memory_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        try:
            contents, values = tensors["contents"], tensors["values"]
            if contents.shape[0] != len(meta["entries"]) or (len(meta["entries"]) and contents.shape[1] != self.input_dim):
                raise CorruptStoreError("memory tensors do not match their JSON entries or this bank's input_dim")
            dev = self._device()
            self.short_term, self.long_term = OrderedDict(), {}
            for i, m in enumerate(meta["entries"]):
                e = MemoryEntry(int(m["id"]), contents[i].to(dev).clone(), values[i].to(dev).clone() if m["has_value"] else None,
                                MemoryType(m["type"]), float(m["importance"]), int(m["access_count"]), float(m["timestamp"]),
                                dict(m["metadata"]), m["tier"])
                (self.short_term if e.tier == "short" else self.long_term)[e.id] = e
            self._next_id = int(meta["next_id"])
            self._by_hash = {k: int(v) for k, v in meta["by_hash"].items()}
            self._hash_of = {v: k for k, v in self._by_hash.items()}
            self._n_long = {t: sum(e.memory_type == t for e in self.long_term.values()) for t in MemoryType}
            self._prototype_ids = {k: int(v) for k, v in meta["prototype_ids"].items()}
            self.counters = {k: int(v) for k, v in meta["counters"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptStoreError(f"memory state cannot be read back: {e}") from None
        self._rows, self._keys, self._faiss = None, None, {}

    def save(self, path: Union[str, Path]) -> Path:
        """Write <path>.safetensors (encoder weights + memory tensors) and <path>.json (entries, config)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self.memory_state()
        tensors = {f"mem.{k}": v.contiguous() for k, v in tensors.items()}
        tensors.update({f"encoder.{k}": v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()})
        save_file(tensors, str(path.with_suffix(".safetensors")))
        meta.update(input_dim=self.input_dim, value_dim=self.value_dim, config=self.config.to_dict())
        path.with_suffix(".json").write_text(json.dumps(meta))
        return path

    @classmethod
    def load(cls, path: Union[str, Path], map_location: str = "cpu") -> "MemoryBank":
        from safetensors.torch import load_file

        path = Path(path)
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            tensors = load_file(str(path.with_suffix(".safetensors")), device=str(map_location))
        except (OSError, ValueError) as e:
            raise CorruptStoreError(f"cannot read memory bank at {path}: {e}") from None
        bank = cls(meta["input_dim"], meta["value_dim"], MemoryConfig.from_dict(meta["config"])).to(map_location)
        bank.encoder.load_state_dict({k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")})
        bank.load_memory_state({k[len("mem."):]: v for k, v in tensors.items() if k.startswith("mem.")}, meta)
        return bank
