"""TransformerController: a causal Transformer over one chunk that emits the memory interface.

The controller sees only its window (the current chunk). From each token's hidden state h_t it emits

    read keys   q_t = W_q h_t                        (H_r, D)
    write keys  k_t = W_k h_t                        (H_w, D)   content address for in-place updates
    write gate  g_t = sigmoid(w_g . h_t + b_g)       (H_w,)     how much to write at all
    erase       e_t = sigmoid(w_e . h_t + b_e)       (H_w,)     how much of the addressed slot to clear first
    content     c_t = sigmoid(w_c . h_t + b_c)       (H_w,)     update a matching slot (1) vs. take a fresh one (0)

Positions enter through rotary codes inside attention (relative, parameter-free). `Block` and
`CausalSelfAttention` are shared with the window-limited Transformer baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MemNetConfig


_ROPE_CACHE: dict = {}


def rope(x: torch.Tensor) -> torch.Tensor:
    """Rotary position code on (B, nh, T, hs): pairs (x_i, x_{i+hs/2}) at position t are rotated by the angle
    t / 10000^(2i/hs). Attention scores then depend on relative positions only; no parameters."""
    T, hs = x.shape[-2], x.shape[-1]
    key = (T, hs, x.device, x.dtype)
    if key not in _ROPE_CACHE:  # the angles depend on the shape only: computed once per shape, device and dtype
        inv = torch.exp(torch.arange(0, hs // 2, device=x.device, dtype=torch.float32) * (-2.0 * math.log(10000.0) / hs))
        ang = torch.arange(T, device=x.device, dtype=torch.float32).unsqueeze(1) * inv  # (T, hs/2)
        _ROPE_CACHE[key] = (ang.cos().to(x.dtype), ang.sin().to(x.dtype))
    cos, sin = _ROPE_CACHE[key]
    x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def window_mask(T: int, window: int, device=None) -> torch.Tensor:
    """(T, T) bool, True where query i may attend key j: j <= i and i - j < window."""
    i = torch.arange(T, device=device).unsqueeze(1)
    j = torch.arange(T, device=device).unsqueeze(0)
    return (j <= i) & (i - j < window)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = rope(q), rope(k)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.c_fc = nn.Linear(d_in, d_hidden)
        self.c_proj = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, n_head: int, d_ff: Optional[int] = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff or 4 * d_model, d_model)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


@dataclass
class MemoryInterface:
    read_keys: torch.Tensor  # (B, T, Hr, D)
    write_keys: torch.Tensor  # (B, T, Hw, D)
    write_gate: torch.Tensor  # (B, T, Hw) in (0, 1)
    erase: torch.Tensor  # (B, T, Hw) in (0, 1)
    content_gate: torch.Tensor  # (B, T, Hw) in (0, 1)


class TransformerController(nn.Module):
    def __init__(self, config: MemNetConfig):
        super().__init__()
        self.config = config
        m = config.memory
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_head) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self._split = (m.n_read_heads * m.slot_dim, m.n_write_heads * m.slot_dim, m.n_write_heads, m.n_write_heads,
                       m.n_write_heads)
        self.interface = nn.Linear(config.d_model, sum(self._split))
        with torch.no_grad():  # start writing half-strength into fresh slots: gate 0.5, erase 0.5, content 0.12
            b = self.interface.bias
            o = self._split[0] + self._split[1]
            b[o + 2 * m.n_write_heads:].fill_(-2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MemoryInterface]:
        """x (B, T, d) token embeddings of one chunk, T <= window -> hidden (B, T, d) and the memory interface."""
        B, T, _ = x.shape
        m = self.config.memory
        h = x
        for block in self.blocks:
            h = block(h)  # causal within the chunk
        h = self.ln_f(h)  # (B, T, d)
        rk, wk, g, e, c = self.interface(h).split(self._split, dim=-1)
        iface = MemoryInterface(rk.view(B, T, m.n_read_heads, m.slot_dim), wk.view(B, T, m.n_write_heads, m.slot_dim),
                                torch.sigmoid(g), torch.sigmoid(e), torch.sigmoid(c))
        return h, iface
