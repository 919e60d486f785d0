"""The four expert kinds of the design notes and the sparse mixture that runs them.

Every expert maps a normalised token state u (N, D) to an update (N, D); the mixture adds
    y = x + sum_{e in topk(x)} w_e * Expert_e(LN(x))
and runs each expert only on the tokens routed to it (gather, compute, scatter-add).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.research.cmrn.config import CMRNConfig
from sam.research.cmrn.routing import RoutingInfo


class GeneralProcessor(nn.Module):
    """y = W_2 GELU(W_1 u)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(u)))


class GenerativeUnit(nn.Module):
    """Gated (SwiGLU) unit: y = W_2 (silu(W_1 u) * W_3 u), hidden = 2/3 of `hidden` so it has the MLP's size."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        h = max(1, (2 * hidden) // 3)
        self.w1, self.w3, self.w2 = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False), nn.Linear(h, d)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(u)) * self.w3(u))


class PatternMatcher(nn.Module):
    """Soft match against S learned prototypes P (S, D) with values V (S, D):  y = softmax(u P^T / sqrt(D)) V."""

    def __init__(self, d: int, slots: int):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(slots, d) * d**-0.5)
        self.values = nn.Parameter(torch.randn(slots, d) * 0.02)
        self.scale = d**-0.5

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return F.softmax(u @ self.prototypes.t() * self.scale, dim=-1) @ self.values  # (N, S) @ (S, D)


class SymbolicLogicUnit(nn.Module):
    """Differentiable fuzzy logic over P propositions (product t-norm).

        p = sigmoid(W_p u), q = sigmoid(W_q u)                         truth values in [0, 1]^P
        AND = p q,  OR = p + q - p q,  NOT = 1 - p,  IMPLIES = 1 - p + p q      (Reichenbach implication)
        c = softmax(W_c u)                                             one weight per operator
        y = W_d (sum_o c_o * op_o(p, q))
    """

    OPS = ("AND", "OR", "NOT", "IMPLIES")

    def __init__(self, d: int, props: int):
        super().__init__()
        self.encode = nn.Linear(d, 2 * props)
        self.controller = nn.Linear(d, len(self.OPS))
        self.decode = nn.Linear(props, d)

    @staticmethod
    def apply_ops(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """p, q (..., P) -> (..., 4, P): AND, OR, NOT, IMPLIES."""
        pq = p * q
        return torch.stack([pq, p + q - pq, 1 - p, 1 - p + pq], dim=-2)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        p, q = torch.sigmoid(self.encode(u)).chunk(2, dim=-1)  # (N, P) each
        c = F.softmax(self.controller(u), dim=-1)  # (N, 4)
        logic = (c.unsqueeze(-1) * self.apply_ops(p, q)).sum(-2)  # (N, P)
        return self.decode(logic)


class ExpertModule(nn.Module):
    """One expert: a processor of the given type, tagged with the domain it was added for."""

    def __init__(self, config: CMRNConfig, expert_type: str = "general", domain: str = "base"):
        super().__init__()
        d, h = config.d_model, config.expert_hidden
        self.expert_type, self.domain = expert_type, domain
        if expert_type == "symbolic":
            self.processor = SymbolicLogicUnit(d, config.symbolic_props)
        elif expert_type == "pattern":
            self.processor = PatternMatcher(d, config.pattern_slots)
        elif expert_type == "generative":
            self.processor = GenerativeUnit(d, h)
        elif expert_type == "general":
            self.processor = GeneralProcessor(d, h)
        else:
            raise ValueError(f"unknown expert type {expert_type!r}")
        self.drop = nn.Dropout(config.dropout)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.drop(self.processor(u))


def mix_experts(experts: nn.ModuleList, u: torch.Tensor, routing: RoutingInfo) -> torch.Tensor:
    """u (B, T, D) -> sum_e w_e Expert_e(u) (B, T, D), each expert run only on its routed tokens."""
    B, T, D = u.shape
    flat = u.reshape(-1, D)  # (N, D)
    w = routing.weights.reshape(-1, routing.weights.shape[-1])  # (N, E)
    idx = routing.indices.reshape(-1, routing.indices.shape[-1])  # (N, k)
    out = torch.zeros_like(flat)
    for e, expert in enumerate(experts):
        tok = (idx == e).any(-1).nonzero(as_tuple=True)[0]  # (n_e,)
        if tok.numel() == 0:
            continue
        y = expert(flat[tok]) * w[tok, e].unsqueeze(-1)  # (n_e, D)
        out = out.index_add(0, tok, y.to(out.dtype))
    return out.view(B, T, D)
