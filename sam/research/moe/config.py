"""MemoryConfig: every knob of the memory banks in one small dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from sam.errors import InvalidInputError


@dataclass
class MemoryConfig:
    # capacity (per expert bank)
    short_term_capacity: int = 100  # bounded FIFO of recent entries
    long_term_capacity: int = 10000  # consolidated entries, both types together
    episodic_capacity: int = 5000  # long-term episodic (single experiences)
    semantic_capacity: int = 5000  # long-term semantic (class prototypes, facts)
    # retrieval
    top_k_retrieve: int = 5
    similarity_threshold: float = 0.7  # cosine in encoder space; hits below are masked out
    memory_dim: int = 64  # width of the learned memory encoder's output
    num_heads: int = 4  # heads of the attention over retrieved memories
    # consolidation (short -> long)
    consolidation_interval: int = 1000  # forwards between automatic consolidations (0 = never)
    consolidation_threshold: float = 0.8  # promotion score (or stored importance) to reach
    recency_tau_s: float = 3600.0  # recency factor = exp(-age / tau)
    access_saturation: int = 10  # access factor = min(access_count / this, 1)
    # pruning
    enable_pruning: bool = True
    prune_interval: int = 5000  # forwards between automatic prunings (0 = never)
    min_importance: float = 0.1
    # search backend
    use_faiss: bool = False  # force FAISS; otherwise torch brute force below faiss_auto_size
    faiss_auto_size: int = 50000  # brute force and exact flat FAISS cost the same up to 100k (see bench cost)
    faiss_ivf_min_size: int = 8192  # FAISS index is exact (flat) below this, IVF (sqrt(n) lists) from here
    faiss_nprobe: int = 32  # IVF lists probed

    def __post_init__(self) -> None:
        for name in ("short_term_capacity", "long_term_capacity", "episodic_capacity", "semantic_capacity"):
            if int(getattr(self, name)) <= 0:
                raise InvalidInputError(f"MemoryConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.top_k_retrieve <= 0:
            raise InvalidInputError(f"MemoryConfig.top_k_retrieve must be > 0, got {self.top_k_retrieve}")
        if not -1.0 <= self.similarity_threshold <= 1.0:
            raise InvalidInputError(f"similarity_threshold must be a cosine in [-1, 1], got {self.similarity_threshold}")
        if self.memory_dim <= 0 or self.num_heads <= 0 or self.memory_dim % self.num_heads:
            raise InvalidInputError(f"memory_dim ({self.memory_dim}) must be a positive multiple of num_heads ({self.num_heads})")
        if min(self.consolidation_interval, self.prune_interval) < 0:
            raise InvalidInputError("intervals must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
