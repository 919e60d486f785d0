"""Auxiliary memory losses. All take dense address weights w (..., N) whose rows sum to 1 over k nonzeros.

    L_util  = (log N - H(w_bar)) / log N,   w_bar = mean of w over batch, tokens and heads,  H(p) = -sum p log(p + eps)
              0 when reads spread evenly over all N slots, 1 when every read hits one slot (addressing collapse).
    L_press = mean_t g_t                    mean write gate: memory pressure, the fraction of tokens that write.
    L_read  = mean over reads of H(w) / log k   read entropy, 0 for one-hot reads, 1 for uniform top-k reads.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-8


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """H(p) = -sum_i p_i log(p_i + eps) along `dim` (nats)."""
    return -(p * torch.log(p + _EPS)).sum(dim)


def utilisation_loss(mean_weights: torch.Tensor) -> torch.Tensor:
    """mean_weights (N,): w_bar, already averaged. Returns (log N - H(w_bar)) / log N in [0, 1]."""
    n = mean_weights.shape[-1]
    if n < 2:
        return mean_weights.new_zeros(())
    p = mean_weights / mean_weights.sum().clamp_min(_EPS)
    return (math.log(n) - entropy(p)) / math.log(n)


def pressure_loss(write_gate: torch.Tensor) -> torch.Tensor:
    """write_gate (..., Hw) in [0, 1] -> its mean."""
    return write_gate.mean()


def read_entropy_loss(weights: torch.Tensor, k: int) -> torch.Tensor:
    """weights (..., N) dense top-k read weights -> mean H(w) / log k (0 if k == 1)."""
    if k < 2:
        return weights.new_zeros(())
    return entropy(weights).mean() / math.log(k)
