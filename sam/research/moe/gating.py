"""GatingNetwork: top-k routing with a Switch-style load-balancing loss and usage counters."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GatingNetwork(nn.Module):
    def __init__(self, input_dim: int, num_experts: int, top_k: int = 2, noise_std: float = 0.0):
        super().__init__()
        self.num_experts, self.top_k, self.noise_std = num_experts, min(top_k, num_experts), noise_std
        self.proj = nn.Linear(input_dim, num_experts)
        self.register_buffer("_counts", torch.zeros(num_experts, dtype=torch.long), persistent=False)
        self.register_buffer("_top1", torch.zeros(num_experts, dtype=torch.long), persistent=False)
        self.total_forwards, self.total_tokens = 0, 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, D) -> weights (B, E) zero outside each row's top-k and renormalised, indices (B, k), aux loss ()."""
        logits = self.proj(x)  # (B, E)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = F.softmax(logits, dim=-1)  # (B, E)
        topv, topi = probs.topk(self.top_k, dim=-1)  # (B, k)
        weights = torch.zeros_like(probs).scatter(1, topi, topv / topv.sum(-1, keepdim=True))
        # load balancing (Switch Transformer): E * sum_e (fraction of assignments to e) * (mean prob of e);
        # equals 1 when routing is uniform, grows when a few experts take everything
        frac = F.one_hot(topi, self.num_experts).float().sum(1).mean(0) / self.top_k  # (E,)
        aux = self.num_experts * (frac * probs.mean(0)).sum()
        with torch.no_grad():
            self._counts += F.one_hot(topi, self.num_experts).sum((0, 1))
            self._top1 += torch.bincount(topi[:, 0], minlength=self.num_experts)
            self.total_forwards += 1
            self.total_tokens += x.shape[0]
        return weights, topi, aux

    def get_usage_statistics(self) -> dict:
        counts = self._counts.tolist()
        n = max(sum(counts), 1)
        return dict(
            total_forwards=self.total_forwards,
            total_tokens=self.total_tokens,
            expert_counts={i: c for i, c in enumerate(counts)},  # top-k assignments per expert
            expert_fractions={i: c / n for i, c in enumerate(counts)},
            top1_counts={i: c for i, c in enumerate(self._top1.tolist())},
        )

    def reset_usage_statistics(self) -> None:
        self._counts.zero_()
        self._top1.zero_()
        self.total_forwards = self.total_tokens = 0
