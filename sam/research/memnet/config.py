"""Configuration: two small dataclasses, one for the memory bank and one for the whole MemNet.

Both validate themselves (zero slots, top-k larger than the bank, ...) and round-trip through plain JSON dicts,
which is how they travel next to the safetensors weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from sam.errors import InvalidInputError


def _positive(obj, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise InvalidInputError(f"{type(obj).__name__}.{name} must be a positive int, got {v!r}")


def _unit(obj, *names: str, closed: bool = True) -> None:
    for name in names:
        v = float(getattr(obj, name))
        if not (0.0 <= v <= 1.0) or v != v:
            raise InvalidInputError(f"{type(obj).__name__}.{name} must be in [0, 1], got {v!r}")


@dataclass
class MemoryConfig:
    n_slots: int = 64  # N: number of memory slots
    slot_dim: int = 64  # D: width of one slot
    n_read_heads: int = 2  # independent read heads, each with its own top-k address
    n_write_heads: int = 1  # write heads per token
    top_k: int = 4  # slots touched by one content address (read or write)
    usage_decay: float = 0.99  # gamma_u: usage <- gamma_u * decay * usage + writes + rho * reads, per memory step
    read_usage_weight: float = 0.1  # rho: how much a read protects a slot from reallocation, relative to a write
    age_bias: float = 0.5  # lambda_age in the allocation score usage - lambda_age * age / (1 + age)
    init_decay_bias: float = 5.0  # decay gate starts at sigmoid(5) = 0.993 per memory step
    init_temperature: float = 10.0  # beta: sharpness of the cosine softmax over the top-k slots
    strength_scale: float = 0.25  # tau / sqrt(D) in the slot strength rho = |M|^2 / (|M|^2 + tau^2)

    def __post_init__(self) -> None:
        _positive(self, "n_slots", "slot_dim", "n_read_heads", "n_write_heads", "top_k")
        if self.top_k > self.n_slots:
            raise InvalidInputError(f"MemoryConfig.top_k ({self.top_k}) cannot exceed n_slots ({self.n_slots})")
        _unit(self, "usage_decay")
        if self.read_usage_weight < 0 or self.age_bias < 0 or self.init_temperature <= 0 or self.strength_scale <= 0:
            raise InvalidInputError("read_usage_weight and age_bias must be >= 0, init_temperature and "
                                    "strength_scale > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInputError(f"unknown MemoryConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class MemNetConfig:
    vocab_size: int = 64
    d_model: int = 64  # controller width
    n_layer: int = 2  # controller depth
    n_head: int = 4  # controller attention heads
    window: int = 16  # controller context: tokens per chunk; nothing older is visible except through memory
    bottleneck_dim: int = 16  # semantic bottleneck width (compression before writes)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    # auxiliary losses (weights; 0 switches a term off)
    util_weight: float = 0.01  # L_util: (log N - H(w_bar)) / log N, pushes reads to spread over all slots
    pressure_weight: float = 0.001  # L_press: mean write gate, pushes writes to be selective
    read_entropy_weight: float = 0.0  # L_read: mean entropy of each read's top-k weights, pushes reads to be sharp

    def __post_init__(self) -> None:
        if isinstance(self.memory, dict):
            self.memory = MemoryConfig.from_dict(self.memory)
        _positive(self, "vocab_size", "d_model", "n_layer", "n_head", "window", "bottleneck_dim")
        if self.d_model % self.n_head:
            raise InvalidInputError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.window * self.memory.n_write_heads > self.memory.n_slots:
            raise InvalidInputError(
                f"window * n_write_heads ({self.window * self.memory.n_write_heads}) must be <= n_slots "
                f"({self.memory.n_slots}): each write of a chunk gets its own allocation slot")
        for name in ("util_weight", "pressure_weight", "read_entropy_weight"):
            if float(getattr(self, name)) < 0:
                raise InvalidInputError(f"MemNetConfig.{name} must be >= 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = self.memory.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MemNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInputError(f"unknown MemNetConfig fields: {sorted(unknown)}")
        d = dict(d)
        if "memory" in d:
            d["memory"] = MemoryConfig.from_dict(d["memory"]) if isinstance(d["memory"], dict) else d["memory"]
        return cls(**d)
