"""DynamicRouter: top-k routing of each token to experts (learned, hash or random), with usage statistics.

learned:  l = (W x + b) / temperature                                   (B, T, E)
          while training, the top-k set is chosen on l + g, g ~ Gumbel(0, 1) (exploration); at eval on l
          w_e = softmax(l)_e / sum_{j in topk} softmax(l)_j  for e in topk, else 0
          load balance (Switch):  L_lb = E * sum_e f_e * P_e,  f_e = share of the top-k slots given to e,
                                  P_e = mean router probability of e (1.0 when uniform)
          z-loss (ST-MoE):        L_z  = mean_tokens (logsumexp l)^2
hash:     expert set {(h(id) + j) mod E : j < k}, h(id) = id * 2654435761 mod 2^32; w = 1/k
random:   k distinct experts drawn uniformly per token at every call; w = 1/k

Experts added later (`add_expert`) get their own router row in `extra`, so the existing rows can stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.errors import InvalidInputError


@dataclass
class RoutingInfo:
    weights: torch.Tensor  # (B, T, E) zero outside each token's top-k, rows sum to 1
    indices: torch.Tensor  # (B, T, k)
    probs: torch.Tensor  # (B, T, E) full softmax (uniform for hash/random)
    aux_loss: torch.Tensor  # () load-balance + z-loss, already weighted (0 for hash/random)


class DynamicRouter(nn.Module):
    def __init__(self, d_model: int, num_experts: int, k: int = 2, strategy: str = "learned",
                 temperature: float = 1.0, gumbel_noise: bool = True, load_balance_coef: float = 0.01,
                 z_loss_coef: float = 1e-3):
        super().__init__()
        self.d_model, self.k, self.strategy = d_model, k, strategy
        self.temperature, self.gumbel_noise = temperature, gumbel_noise
        self.lb_coef, self.z_coef = load_balance_coef, z_loss_coef
        self.proj = nn.Linear(d_model, num_experts)
        self.extra = nn.ModuleList()  # one Linear(d_model, 1) per expert added after construction
        self.register_buffer("_counts", torch.zeros(num_experts, dtype=torch.long), persistent=False)
        self.register_buffer("_weight_sum", torch.zeros(num_experts), persistent=False)
        self._tokens = 0

    @property
    def num_experts(self) -> int:
        return self.proj.out_features + len(self.extra)

    def add_expert(self) -> int:
        """Append a router row for a new expert; returns its index."""
        row = nn.Linear(self.d_model, 1).to(self.proj.weight.device, self.proj.weight.dtype)
        with torch.no_grad():
            row.weight.normal_(0.0, 0.02)
            row.bias.zero_()
        self.extra.append(row)
        dev = self._counts.device
        self._counts = torch.cat([self._counts, torch.zeros(1, dtype=torch.long, device=dev)])
        self._weight_sum = torch.cat([self._weight_sum, torch.zeros(1, device=dev)])
        return self.num_experts - 1

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.proj(x)  # (B, T, E0)
        if len(self.extra):
            out = torch.cat([out] + [r(x) for r in self.extra], dim=-1)  # (B, T, E)
        return out / self.temperature

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor | None = None) -> RoutingInfo:
        """x (B, T, D), input_ids (B, T) (needed by hash routing) -> RoutingInfo."""
        B, T, _ = x.shape
        E, k = self.num_experts, self.k
        zero = x.new_zeros(())
        if self.strategy == "learned":
            logits = self.logits(x)  # (B, T, E)
            probs = F.softmax(logits.float(), dim=-1)
            sel = logits
            if self.training and self.gumbel_noise:
                u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
                sel = logits - torch.log(-torch.log(u))
            idx = sel.topk(k, dim=-1).indices  # (B, T, k)
            topv = probs.gather(-1, idx)
            weights = torch.zeros_like(probs).scatter(-1, idx, topv / topv.sum(-1, keepdim=True))
            frac = F.one_hot(idx, E).float().sum(-2).mean((0, 1)) / k  # (E,)
            aux = self.lb_coef * E * (frac * probs.mean((0, 1))).sum()
            aux = aux + self.z_coef * torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        elif self.strategy == "hash":
            if input_ids is None:
                raise InvalidInputError("hash routing needs input_ids")
            h = (input_ids.long() * 2654435761) % (2**32)
            idx = (h.unsqueeze(-1) + torch.arange(k, device=x.device)) % E  # (B, T, k)
            probs = x.new_full((B, T, E), 1.0 / E, dtype=torch.float32)
            weights = torch.zeros_like(probs).scatter(-1, idx, 1.0 / k)
            aux = zero
        else:  # random
            idx = torch.rand(B, T, E, device=x.device).topk(k, dim=-1).indices
            probs = x.new_full((B, T, E), 1.0 / E, dtype=torch.float32)
            weights = torch.zeros_like(probs).scatter(-1, idx, 1.0 / k)
            aux = zero
        with torch.no_grad():
            self._counts += F.one_hot(idx, E).sum((0, 1, 2)).to(self._counts.dtype)
            self._weight_sum += weights.sum((0, 1)).to(self._weight_sum.dtype)
            self._tokens += B * T
        return RoutingInfo(weights.to(x.dtype), idx, probs, aux)

    def get_usage_statistics(self) -> dict:
        counts = self._counts.tolist()
        n = max(sum(counts), 1)
        return dict(
            tokens=self._tokens,
            expert_counts=counts,  # top-k slots given to each expert
            expert_fractions=[c / n for c in counts],
            mean_weight=[w / max(self._tokens, 1) for w in self._weight_sum.tolist()],  # mean gate weight per token
        )

    def reset_usage_statistics(self) -> None:
        self._counts.zero_()
        self._weight_sum.zero_()
        self._tokens = 0
