"""SemanticBottleneck: compress the controller state before it is written.

    v_t = LN_0(W_2 GELU(W_1 LN(h_t) + b_1) + b_2),    W_1: d -> b (b << d), W_2: b -> H_w * D

Everything written to memory passes through the b-wide code, so a slot can only hold what survives the compression.
The output LayerNorm (no affine, per head) fixes |v| ~ sqrt(D): how strongly a slot holds content is then set by the
write gate and the decay, not by the scale of the code.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MemNetConfig


class SemanticBottleneck(nn.Module):
    def __init__(self, config: MemNetConfig):
        super().__init__()
        m = config.memory
        self.n_write_heads, self.slot_dim = m.n_write_heads, m.slot_dim
        self.ln = nn.LayerNorm(config.d_model)
        self.down = nn.Linear(config.d_model, config.bottleneck_dim)
        self.up = nn.Linear(config.bottleneck_dim, m.n_write_heads * m.slot_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) -> write values (B, T, Hw, D)."""
        B, T, _ = h.shape
        v = self.up(F.gelu(self.down(self.ln(h)))).view(B, T, self.n_write_heads, self.slot_dim)
        return F.layer_norm(v, (self.slot_dim,))
