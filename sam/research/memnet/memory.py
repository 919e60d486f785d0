"""MultiHeadMemoryBank: N slots x D, sparse top-k cosine addressing, LRU-biased gated writes, learned decay.

The bank holds parameters only (read/write temperatures, the decay gate, the read LayerNorm). The memory itself is a
`MemoryState` that the caller passes in and gets back (state in, state out), so it persists across chunks, episodes
and processes exactly as long as the caller keeps it; `reset()` gives an empty one.

One memory step (one chunk of T tokens, all tokens and heads at once, no Python loop over slots or heads):

    strength  rho_i = |M_i|^2 / (|M_i|^2 + tau^2)                             # faint or empty slots ~0
    address   s = rho * cos(q, M);  w = scatter(topk_k(s), softmax(beta * topk s))   # (B, T, H, N), k nonzeros
    read      r_h = LayerNorm(sum_i w_hi M_i)                                # from the state before this step's writes
    allocate  slots a_1..a_{T*Hw} = the T*Hw smallest of  u_i - lambda_age * age_i / (1 + age_i)   (LRU, stale first)
    address   w_t = c_t * content_t + (1 - c_t) * onehot(a_t)                 # content update vs. fresh slot
    mass      m_ti = g_t * w_ti                                               # gated write
    decay     d_i = sigmoid(w_d . [M_i / |M_i|, log(1 + age_i)] + b_d)        # learned, slot-wise
    write     M_i <- d_i * prod_t (1 - e_t m_ti) * M_i + sum_t m_ti v_t       # learned erase, then add
    usage     u_i <- gamma_u * d_i * u_i + sum_t m_ti + rho * sum_{t,h} w_thi / H_r
    age       age_i <- (age_i + 1) * (1 - min(1, sum_t m_ti))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.errors import InvalidInputError, StoreMismatchError

from .config import MemoryConfig

_EPS = 1e-8
_EMPTY = -2.0  # address score of an empty slot: below every other score, so a slot with content ranks first


def check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.is_floating_point(t):
        raise InvalidInputError(f"{what} must be a floating point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{what} contains NaN or Inf")


@dataclass
class MemoryState:
    """The memory contents and bookkeeping of B independent streams."""

    memory: torch.Tensor  # (B, N, D) slot vectors
    usage: torch.Tensor  # (B, N) soft write/read counts, decayed each step
    age: torch.Tensor  # (B, N) memory steps since the slot was last written

    @property
    def batch_size(self) -> int:
        return self.memory.shape[0]

    def detach(self) -> "MemoryState":
        return MemoryState(self.memory.detach(), self.usage.detach(), self.age.detach())

    def clone(self) -> "MemoryState":
        return MemoryState(self.memory.clone(), self.usage.clone(), self.age.clone())

    def to(self, device) -> "MemoryState":
        return MemoryState(self.memory.to(device), self.usage.to(device), self.age.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"memory": self.memory, "usage": self.usage, "age": self.age}


def slot_strength(memory: torch.Tensor, scale: float) -> torch.Tensor:
    """rho_i = |M_i|^2 / (|M_i|^2 + tau^2), tau = scale * sqrt(D): ~1 for a slot written at full gate (writes are
    LayerNorm-ed, |v| ~ sqrt(D)), ~0 for a faint, decayed or empty one. (B, N)"""
    tau2 = (scale * scale) * memory.shape[-1]
    sq = memory.pow(2).sum(-1)
    return sq / (sq + tau2)


def sparse_address(queries: torch.Tensor, memory: torch.Tensor, beta: torch.Tensor, k: int,
                   strength_scale: float = 0.25):
    """Top-k cosine addressing, weighted by slot strength. queries (B, Q, H, D), memory (B, N, D), beta (H,).

    s_qhj = rho_j cos(q_qh, M_j)  (rho: slot_strength; -2 for an empty, all-zero slot, so it ranks last)
    w_qhi = softmax_{j in topk(s_qh)}(beta_h s_qhj)_i for i in topk(s_qh), else 0.
    Without the strength factor, slots that only ever received faint writes (filler tokens with a closed gate) have
    as much say in the ranking as real content, and crowd it out of the top-k (measured in development: the read
    almost never reached the slot its pair had written). Decay gates act on retrieval through rho.
    Returns dense weights (B, Q, H, N) with exactly k nonzeros per row, the top-k indices (B, Q, H, k) and their
    weights (B, Q, H, k)."""
    qn = F.normalize(queries, dim=-1, eps=_EPS)
    mn = F.normalize(memory, dim=-1, eps=_EPS)
    B, Q, H, D = queries.shape
    cos = torch.bmm(qn.reshape(B, Q * H, D), mn.transpose(1, 2)).view(B, Q, H, -1)  # (B, Q, H, N)
    score = cos * slot_strength(memory, strength_scale)[:, None, None, :]  # (B, Q, H, N)
    empty = memory.detach().abs().amax(-1) == 0  # (B, N) slots never written hold no content to match
    score = score.masked_fill(empty[:, None, None, :], _EMPTY)
    top, idx = score.topk(k, dim=-1)  # (B, Q, H, k)
    w = torch.softmax(beta.view(1, 1, -1, 1) * top, dim=-1)  # (B, Q, H, k)
    dense = torch.zeros_like(score).scatter(-1, idx, w)  # (B, Q, H, N)
    return dense, idx, w


class MultiHeadMemoryBank(nn.Module):
    def __init__(self, config: MemoryConfig):
        super().__init__()
        if not isinstance(config, MemoryConfig):
            raise InvalidInputError(f"config must be a MemoryConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.log_beta_read = nn.Parameter(torch.full((c.n_read_heads,), math.log(c.init_temperature)))
        self.log_beta_write = nn.Parameter(torch.full((c.n_write_heads,), math.log(c.init_temperature)))
        self.decay = nn.Linear(c.slot_dim + 1, 1)  # [slot direction, log(1 + age)] -> decay logit
        nn.init.zeros_(self.decay.weight)
        nn.init.constant_(self.decay.bias, c.init_decay_bias)
        self.read_ln = nn.LayerNorm(c.slot_dim)

    # ------------------------------------------------------------------ state
    def reset(self, batch_size: int, device=None) -> MemoryState:
        """An empty memory for `batch_size` streams: zero slots, zero usage, zero age."""
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        device = device if device is not None else self.decay.weight.device
        N, D = self.config.n_slots, self.config.slot_dim
        return MemoryState(torch.zeros(batch_size, N, D, device=device), torch.zeros(batch_size, N, device=device),
                           torch.zeros(batch_size, N, device=device))

    def check_state(self, state: MemoryState, batch_size: Optional[int] = None) -> None:
        if not isinstance(state, MemoryState):
            raise InvalidInputError(f"state must be a MemoryState, got {type(state).__name__}")
        N, D = self.config.n_slots, self.config.slot_dim
        if state.memory.dim() != 3 or tuple(state.memory.shape[1:]) != (N, D):
            raise StoreMismatchError(f"memory state has slots {tuple(state.memory.shape[1:])}, this bank has ({N}, {D}): "
                                     "a state from another config")
        B = state.memory.shape[0]
        for name in ("usage", "age"):
            if tuple(getattr(state, name).shape) != (B, N):
                raise StoreMismatchError(f"memory state {name} has shape {tuple(getattr(state, name).shape)}, expected {(B, N)}")
        if batch_size is not None and B != batch_size:
            raise InvalidInputError(f"memory state holds {B} streams, the input has {batch_size}")

    # ------------------------------------------------------------------ operations
    def read(self, state: MemoryState, keys: torch.Tensor):
        """keys (B, T, Hr, D) -> LayerNorm-ed read vectors (B, T, Hr, D) and dense read weights (B, T, Hr, N)."""
        w, _, _ = sparse_address(keys, state.memory, self.log_beta_read.exp(), self.config.top_k,
                                 self.config.strength_scale)
        B, T, H, N = w.shape
        r = torch.bmm(w.reshape(B, T * H, N), state.memory).view(B, T, H, -1)  # (B, T, Hr, D)
        return self.read_ln(r), w

    def allocation(self, usage: torch.Tensor, age: torch.Tensor, n: int) -> torch.Tensor:
        """The n slots to write fresh content to, least used first, the stalest first among equals: (B, n).

        score_i = usage_i - lambda_age * age_i / (1 + age_i); the n smallest scores, ascending."""
        if n > usage.shape[-1]:
            raise InvalidInputError(f"{n} writes in one step need {n} distinct slots, the bank has {usage.shape[-1]}")
        score = usage - self.config.age_bias * age / (1.0 + age)  # (B, N)
        return score.topk(n, dim=-1, largest=False, sorted=True).indices  # (B, n)

    def decay_gates(self, state: MemoryState) -> torch.Tensor:
        """d_i = sigmoid(w_d . [M_i / |M_i|, log(1 + age_i)] + b_d): (B, N), the fraction of slot i kept this step."""
        feats = torch.cat([F.normalize(state.memory, dim=-1, eps=_EPS), torch.log1p(state.age).unsqueeze(-1)], -1)
        return torch.sigmoid(self.decay(feats)).squeeze(-1)  # (B, N)

    def write(self, state: MemoryState, keys, values, gate, erase, content, read_weights: Optional[torch.Tensor] = None):
        """One gated, erase-then-add write of T tokens x Hw heads (see the module docstring).

        keys, values (B, T, Hw, D); gate, erase, content (B, T, Hw) in [0, 1]; read_weights (B, T, Hr, N) or None.
        Returns the new state and a dict of detached diagnostics (write mass and decay per slot, allocated slots)."""
        c = self.config
        B, T, Hw = gate.shape
        M = state.memory  # (B, N, D)
        cw, _, _ = sparse_address(keys, M, self.log_beta_write.exp(), c.top_k, c.strength_scale)  # (B, T, Hw, N)
        slots = self.allocation(state.usage, state.age, T * Hw)  # (B, T*Hw)
        alloc = torch.zeros(B, T * Hw, c.n_slots, device=M.device, dtype=M.dtype)
        alloc = alloc.scatter(-1, slots.unsqueeze(-1), 1.0).view(B, T, Hw, c.n_slots)  # (B, T, Hw, N) one-hot
        w = content.unsqueeze(-1) * cw + (1.0 - content.unsqueeze(-1)) * alloc  # (B, T, Hw, N)
        m = gate.unsqueeze(-1) * w  # (B, T, Hw, N) write mass
        keep = torch.exp(torch.log1p(-(erase.unsqueeze(-1) * m).clamp(max=1.0 - 1e-6)).sum((1, 2)))  # (B, N)
        add = torch.bmm(m.reshape(B, T * Hw, -1).transpose(1, 2), values.reshape(B, T * Hw, -1))  # (B, N, D)
        d = self.decay_gates(state)  # (B, N)
        memory = (d * keep).unsqueeze(-1) * M + add  # (B, N, D)
        mass = m.sum((1, 2)).detach()  # (B, N)
        usage = c.usage_decay * d.detach() * state.usage + mass
        if read_weights is not None:
            usage = usage + c.read_usage_weight * read_weights.detach().sum((1, 2)) / read_weights.shape[2]
        age = (state.age + 1.0) * (1.0 - mass.clamp(0.0, 1.0))
        info = dict(write_mass=mass, decay=d.detach(), alloc_slots=slots, keep=keep.detach(),
                    token_slot=m.detach().sum(2).argmax(-1))  # (B, T): where each token wrote most
        return MemoryState(memory, usage, age), info

    # ------------------------------------------------------------------ public step
    def forward(self, state: MemoryState, read_keys, write_keys, write_values, write_gate, erase, content_gate,
                validate: bool = True):
        """Read (from the state before this step's writes), then decay and write. Runs in float32 even under AMP.

        read_keys (B, T, Hr, D); write_keys, write_values (B, T, Hw, D); write_gate, erase, content_gate (B, T, Hw).
        Returns (read vectors (B, T, Hr, D), read weights (B, T, Hr, N), new state, write diagnostics)."""
        c = self.config
        if not isinstance(read_keys, torch.Tensor) or read_keys.dim() != 4:
            raise InvalidInputError(f"read_keys must be a (B, T, H_r, D) tensor, got "
                                    f"{tuple(read_keys.shape) if isinstance(read_keys, torch.Tensor) else type(read_keys)}")
        B, T = read_keys.shape[:2]
        self.check_state(state, B)
        expect = {"read_keys": (B, T, c.n_read_heads, c.slot_dim), "write_keys": (B, T, c.n_write_heads, c.slot_dim),
                  "write_values": (B, T, c.n_write_heads, c.slot_dim), "write_gate": (B, T, c.n_write_heads),
                  "erase": (B, T, c.n_write_heads), "content_gate": (B, T, c.n_write_heads)}
        got = dict(read_keys=read_keys, write_keys=write_keys, write_values=write_values, write_gate=write_gate,
                   erase=erase, content_gate=content_gate)
        for name, shape in expect.items():
            t = got[name]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise InvalidInputError(f"{name} must have shape {shape}, got "
                                        f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if validate:
                check_finite(t, name)
        if validate:
            for name in ("write_gate", "erase", "content_gate"):
                if bool(((got[name] < 0) | (got[name] > 1)).any()):
                    raise InvalidInputError(f"{name} must lie in [0, 1]")
            check_finite(state.memory, "memory state")
        with torch.autocast(device_type=read_keys.device.type, enabled=False):
            f = {k: v.float() for k, v in got.items()}
            r, rw = self.read(state, f["read_keys"])
            new, info = self.write(state, f["write_keys"], f["write_values"], f["write_gate"], f["erase"],
                                   f["content_gate"], read_weights=rw)
        return r, rw, new, info
