"""CMRNConfig: every knob of the composable memory routing network in one small dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from sam.errors import InvalidInputError

EXPERT_TYPES = ("general", "symbolic", "pattern", "generative")
ROUTING_STRATEGIES = ("learned", "hash", "random")


@dataclass
class CMRNConfig:
    # tokens
    vocab_size: int = 256  # byte-level by default (see docs/cmrn.md for why)
    d_model: int = 256
    # experts: expert_types is cycled over num_experts (4 experts -> one of each type)
    num_experts: int = 4
    expert_types: list[str] = field(default_factory=lambda: list(EXPERT_TYPES))
    expert_hidden: int = 512  # hidden width of the MLP-like experts
    pattern_slots: int = 512  # learned prototypes of a PatternMatcher (2*S*D parameters, as a general MLP of width S)
    symbolic_props: int = 340  # fuzzy propositions of a SymbolicLogicUnit (3*P*D parameters)
    # persistent memory (token memory used by update_memory / use_memory)
    memory_size: int = 65536  # slots; least recently used slot is overwritten when full
    memory_dim: int = 64  # key width; values are d_model wide
    memory_update_rate: float = 1.0  # fraction of positions written to memory: every round(1/r)-th position
    memory_k: int = 8  # memories retrieved per query
    # routing
    routing_strategy: str = "learned"  # learned | hash | random
    routing_k: int = 2  # top-k experts per token
    routing_temperature: float = 1.0
    gumbel_noise: bool = True  # Gumbel noise on router logits while training (learned routing)
    load_balance_coef: float = 0.01
    z_loss_coef: float = 1e-3
    # temporal abstraction
    temporal_layers: int = 3
    timescale_base: float = 8.0  # layer i's channels have timescales log-spread in [base**i, base**(i+1)]
    scan_chunk: int = 256  # block length of the parallel scan; blocks are chained, so cost is linear in T
    # training
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        self.expert_types = list(self.expert_types)
        for name in ("vocab_size", "d_model", "num_experts", "expert_hidden", "pattern_slots", "symbolic_props",
                     "memory_size", "memory_dim", "memory_k", "temporal_layers", "scan_chunk"):
            if int(getattr(self, name)) <= 0:
                raise InvalidInputError(f"CMRNConfig.{name} must be > 0, got {getattr(self, name)}")
        if not self.expert_types or any(t not in EXPERT_TYPES for t in self.expert_types):
            raise InvalidInputError(f"expert_types must be a non-empty list drawn from {EXPERT_TYPES}, got {self.expert_types}")
        if self.routing_strategy not in ROUTING_STRATEGIES:
            raise InvalidInputError(f"routing_strategy must be one of {ROUTING_STRATEGIES}, got {self.routing_strategy!r}")
        if not 1 <= self.routing_k <= self.num_experts:
            raise InvalidInputError(f"routing_k must be in [1, num_experts={self.num_experts}], got {self.routing_k}")
        if self.routing_temperature <= 0:
            raise InvalidInputError(f"routing_temperature must be > 0, got {self.routing_temperature}")
        if not 0.0 < self.memory_update_rate <= 1.0:
            raise InvalidInputError(f"memory_update_rate must be in (0, 1], got {self.memory_update_rate}")
        if self.timescale_base <= 1.0:
            raise InvalidInputError(f"timescale_base must be > 1, got {self.timescale_base}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def write_stride(self) -> int:
        return max(1, round(1.0 / self.memory_update_rate))

    def expert_type(self, i: int) -> str:
        return self.expert_types[i % len(self.expert_types)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CMRNConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInputError(f"unknown CMRNConfig fields: {sorted(unknown)}")
        return cls(**d)
