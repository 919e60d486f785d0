"""MemoryExpert: an MLP expert that reads its own memory bank.

Two paths read the retrieved memories:
  * multi-head attention over (key, target) pairs, fused into the MLP's hidden state (fusion starts at zero,
    so a fresh expert behaves exactly like its memory-less MLP);
  * a kNN-style vote: the similarity-weighted mean of the retrieved targets, added as log-probabilities with
    a learned scale. This is what lets an expert predict a class its MLP never saw, from a few stored examples.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MemoryConfig
from .memory_bank import MemoryBank
from .types import ExpertSpecialization

_VOTE_EPS = 1e-2  # floor of the vote distribution: caps how hard one vote can push (log(1/eps) per unit scale)


class MemoryAttention(nn.Module):
    """Multi-head attention of one query over K retrieved memories; rows without hits read zeros."""

    def __init__(self, mem_dim: int, value_dim: int, n_head: int):
        super().__init__()
        self.n_head, self.hd = n_head, mem_dim // n_head
        self.q = nn.Linear(mem_dim, mem_dim)
        self.k = nn.Linear(mem_dim, mem_dim)
        self.v = nn.Linear(mem_dim + value_dim, mem_dim)
        self.proj = nn.Linear(mem_dim, mem_dim)

    def forward(self, q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, K, M = keys.shape
        H, hd = self.n_head, self.hd
        qh = self.q(q).view(B, 1, H, hd).transpose(1, 2)  # (B, H, 1, hd)
        kh = self.k(keys).view(B, K, H, hd).transpose(1, 2)  # (B, H, K, hd)
        vh = self.v(torch.cat([keys, vals], -1)).view(B, K, H, hd).transpose(1, 2)  # (B, H, K, hd)
        att = (qh @ kh.transpose(-2, -1)) / math.sqrt(hd)  # (B, H, 1, K)
        att = att.masked_fill(~mask[:, None, None, :], float("-inf"))
        att = torch.nan_to_num(F.softmax(att, dim=-1), nan=0.0)  # all-masked rows -> zero weights, not NaN
        y = (att @ vh).transpose(1, 2).reshape(B, M)  # (B, M)
        return self.proj(y) * mask.any(-1, keepdim=True)


class MemoryExpert(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int = 512, config: Optional[MemoryConfig] = None,
                 specialization: ExpertSpecialization = ExpertSpecialization.GENERAL):
        super().__init__()
        self.config = config or MemoryConfig()
        self.specialization = ExpertSpecialization(specialization)
        self.input_dim, self.output_dim, self.hidden_dim = input_dim, output_dim, hidden_dim
        M = self.config.memory_dim
        self.trunk = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.head = nn.Linear(hidden_dim, output_dim)  # 3rd layer of the MLP
        self.memory = MemoryBank(input_dim, output_dim, self.config)
        self.attention = MemoryAttention(M, output_dim, self.config.num_heads)
        self.fusion = nn.Linear(hidden_dim + M, hidden_dim)
        nn.init.zeros_(self.fusion.weight)
        nn.init.zeros_(self.fusion.bias)
        self.vote_scale = nn.Parameter(torch.tensor(0.5413))  # softplus -> 1.0
        self.log_temp = nn.Parameter(torch.tensor(math.log(0.1)))  # temperature of the vote's softmax over cosines

    def forward(self, x: torch.Tensor, use_memory: bool = True, exclude_self: bool = False) -> tuple[torch.Tensor, dict]:
        h = self.trunk(x)  # (B, H)
        B = x.shape[0]
        if not use_memory or len(self.memory) == 0:
            return self.head(h), dict(retrieved=0, hits=torch.zeros(B, dtype=torch.long, device=x.device))
        r = self.memory.search(x, exclude_self=exclude_self)
        st, rows, mask = r["stack"], r["rows"], r["mask"]  # rows, mask (B, K)
        if rows.shape[1] == 0 or not bool(mask.any()):
            return self.head(h), dict(retrieved=0, hits=torch.zeros(B, dtype=torch.long, device=x.device))
        # re-encode the K chosen contents with grad so the encoder learns from the task loss
        keys = self.memory.encode(st["contents"][rows])  # (B, K, M)
        vals = st["values"][rows] * st["has_value"][rows].unsqueeze(-1)  # (B, K, O)
        q = self.memory.encode(x)  # (B, M)
        read = self.attention(q, keys, vals, mask)  # (B, M)
        h = h + self.fusion(torch.cat([h, read], -1))  # (B, H)
        out = self.head(h)  # (B, O)
        # kNN vote over retrieved targets, sharpened by a learned temperature
        vmask = mask & st["has_value"][rows]  # (B, K)
        sims = (keys * q.unsqueeze(1)).sum(-1)  # (B, K) cosines, differentiable
        w = F.softmax((sims / self.log_temp.exp()).masked_fill(~vmask, float("-inf")), dim=-1)
        w = torch.nan_to_num(w, nan=0.0)
        p = (w.unsqueeze(-1) * vals).sum(1)  # (B, O)
        voted = vmask.any(-1, keepdim=True)
        out = out + F.softplus(self.vote_scale) * voted * torch.log(p.clamp_min(0) + _VOTE_EPS)
        return out, dict(retrieved=int(mask.sum()), hits=mask.sum(-1))
