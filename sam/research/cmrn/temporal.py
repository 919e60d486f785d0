"""TemporalAbstraction: a stack of gated linear recurrences, each layer on its own range of timescales.

This is what mixes information across positions in CMRN (there is no attention). Layer i is

    u_t = LN(x_t)
    a_t = sigmoid(W_a u_t + b_a)                      decay per channel, in (0, 1)
    h_t = a_t * h_{t-1} + (1 - a_t) * (W_v u_t)       (elementwise)
    y_t = x_t + W_o (h_t * silu(W_g u_t))

b_a is initialised so that channel c of layer i starts with timescale tau_c = 1 / (1 - sigmoid(b_a,c)) spread
log-uniformly over [base**i, base**(i+1)]: layer 0 looks back a few bytes, layer 2 a few hundred.

The recurrence is evaluated with a Hillis-Steele parallel scan inside blocks of `scan_chunk` positions and chained
sequentially across blocks, so a sequence of T positions costs O(T log C) work and the final state h_T can be
passed back in (`previous_states`) to continue a stream chunk by chunk, or one token at a time when generating.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def linear_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for t = 0..T-1 with h_{-1} = h0 (zeros if None).

    a, b: (B, T, D); h0: (B, D) or None. Returns h: (B, T, D).
    """
    B, T, D = a.shape
    h_prev = h0
    outs = []
    for s in range(0, T, chunk):
        A, H = a[:, s : s + chunk], b[:, s : s + chunk]  # (B, C, D)
        off = 1
        C = A.shape[1]
        while off < C:  # Hillis-Steele: after the step at offset o, H_t sums the last 2o inputs
            H = torch.cat([H[:, :off], H[:, off:] + A[:, off:] * H[:, :-off]], dim=1)
            A = torch.cat([A[:, :off], A[:, off:] * A[:, :-off]], dim=1)
            off *= 2
        if h_prev is not None:
            H = H + A * h_prev.unsqueeze(1)  # A_t = prod_{s<=t} a_s within the block
        outs.append(H)
        h_prev = H[:, -1]
    return torch.cat(outs, dim=1)


class TemporalLayer(nn.Module):
    def __init__(self, d_model: int, tau_min: float, tau_max: float, chunk: int = 256, dropout: float = 0.0,
                 eps: float = 1e-5):
        super().__init__()
        self.ln = nn.LayerNorm(d_model, eps=eps)
        self.in_proj = nn.Linear(d_model, 3 * d_model)  # -> decay logits, value, gate
        self.out_proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.chunk = chunk
        self.tau_min, self.tau_max = tau_min, tau_max
        with torch.no_grad():
            tau = torch.exp(torch.linspace(math.log(tau_min), math.log(tau_max), d_model))  # (D,)
            tau = tau[torch.randperm(d_model)]
            a0 = (1.0 - 1.0 / tau).clamp(1e-4, 1 - 1e-4)
            self.in_proj.bias[:d_model] = torch.log(a0 / (1 - a0))  # sigmoid(bias) = a0
            self.in_proj.weight[:d_model].mul_(0.1)  # decays start close to their initial timescales

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), h0 (B, D) or None -> y (B, T, D), h_T (B, D)."""
        z, v, g = self.in_proj(self.ln(x)).chunk(3, dim=-1)  # each (B, T, D)
        a = torch.sigmoid(z)
        h = linear_scan(a, (1 - a) * v, h0, self.chunk)  # (B, T, D)
        y = x + self.drop(self.out_proj(h * F.silu(g)))
        return y, h[:, -1]


class TemporalAbstraction(nn.Module):
    """Multi-timescale stack: layer i has timescales in [base**i, base**(i+1)] positions."""

    def __init__(self, d_model: int, num_layers: int = 3, timescale_base: float = 8.0, chunk: int = 256,
                 dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.layers = nn.ModuleList([
            TemporalLayer(d_model, timescale_base**i, timescale_base ** (i + 1), chunk, dropout, eps)
            for i in range(num_layers)
        ])

    def forward(self, x: torch.Tensor, previous_states: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, T, D) -> x (B, T, D), one final state (B, D) per layer (pass them back to continue the stream)."""
        if previous_states is not None and len(previous_states) != len(self.layers):
            raise ValueError(f"previous_states has {len(previous_states)} states, expected {len(self.layers)}")
        states = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, previous_states[i] if previous_states is not None else None)
            states.append(s)
        return x, states
