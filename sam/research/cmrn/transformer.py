"""The baseline: a nanoGPT-style decoder-only Transformer with rotary positions (no positional parameters).

    x = E[ids];  for each block:  x = x + Attn(LN(x)),  x = x + W_2 GELU(W_1 LN(x));   logits = LN(x) E^T
    Attn: causal softmax(q k^T / sqrt(d_h)) v per head, q and k rotated by position (RoPE), window = block_size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TransformerConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_ff: int = 1024
    block_size: int = 512  # the attention window: longer inputs are an error, not silently truncated
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x (B, H, T, d) -> x rotated pairwise by angle t * base^(-2i/d)."""
    B, H, T, d = x.shape
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # (d/2,)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv  # (T, d/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.n_head = c.n_head
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.dropout = c.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
        q, k = rope(q), rope(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = CausalSelfAttention(c)
        self.mlp = nn.Sequential(nn.Linear(c.d_model, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, c.d_model), nn.Dropout(c.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        nn.init.normal_(self.wte.weight, 0.0, 0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        """ids (B, T) -> logits (B, T, V), mean cross-entropy (nats) or None."""
        if input_ids.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens is longer than the window {self.config.block_size}")
        x = self.drop(self.wte(input_ids))  # (B, T, D)
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss


def matched_transformer(target_params: int, vocab_size: int, d_model: int, block_size: int, n_head: int | None = None,
                        n_layer: int | None = None) -> TransformerConfig:
    """The TransformerConfig of width d_model whose parameter count is closest to target_params.

    Tries n_layer = 2..8 and, for each, the d_ff (multiple of 8) that matches best; prefers d_ff near 4 * d_model.
    """
    n_head = n_head or max(1, d_model // 64)
    best = None
    layers = [n_layer] if n_layer else range(2, 9)
    for L in layers:
        fixed = vocab_size * d_model + 2 * d_model  # tied embedding + final LN
        per_layer_fixed = 4 * d_model * d_model + 4 * d_model + 4 * d_model + d_model  # attn + LNs + mlp out bias
        per_ff = 2 * d_model + 1
        ff = (target_params - fixed - L * per_layer_fixed) / (L * per_ff)
        ff = int(round(ff / 8) * 8)
        if ff < 8:
            continue
        cfg = TransformerConfig(vocab_size, d_model, L, n_head, ff, block_size)
        n = TransformerLM(cfg).num_parameters()
        score = (abs(n - target_params) / target_params > 0.02, abs(ff / d_model - 4))
        if best is None or score < best[0]:
            best = (score, cfg)
    if best is None:
        raise ValueError(f"no Transformer of width {d_model} has about {target_params} parameters")
    return best[1]
