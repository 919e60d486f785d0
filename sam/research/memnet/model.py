"""MemNet: Transformer controller + semantic bottleneck + multi-head slot memory + residual fusion + prediction head.

A sequence is processed in chunks of `window` tokens. For chunk c with token embeddings x (B, T, d):

    h, iface   = TransformerController(x)                  # causal attention inside the chunk only
    v          = SemanticBottleneck(h)                     # what would be written
    r, state'  = MultiHeadMemoryBank(state, iface, v)      # read from the state before the chunk, then write
    h'         = h + MLP([LN(h); r_1 .. r_Hr])             # residual fusion of the read vectors
    logits     = W_e LN(h')                                # prediction head, tied to the token embedding

so anything further back than the chunk reaches the prediction only through memory. The memory state is carried
across chunks (with gradients) and returned, so the caller can carry it across episodes as well.

Training loss: CE + util_weight * L_util + pressure_weight * L_press + read_entropy_weight * L_read (see losses.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.errors import InvalidInputError

from .bottleneck import SemanticBottleneck
from .config import MemNetConfig
from .controller import MLP, TransformerController
from .losses import entropy, pressure_loss, utilisation_loss
from .memory import MemoryState, MultiHeadMemoryBank


@dataclass
class SeqOutput:
    logits: torch.Tensor  # (B, L, V)
    state: object = None  # MemoryState for MemNet, (h, c) for the LSTM, None for the Transformer
    loss: Optional[torch.Tensor] = None  # CE (+ auxiliary terms) when targets were given
    aux: dict = field(default_factory=dict)
    trace: Optional[dict] = None  # per-chunk memory diagnostics (MemNet, trace=True)


def check_tokens(idx, vocab_size: int) -> None:
    if not isinstance(idx, torch.Tensor):
        raise InvalidInputError(f"idx must be a tensor of token ids, got {type(idx).__name__}")
    if idx.dim() != 2:
        raise InvalidInputError(f"idx must have shape (B, L), got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise InvalidInputError(f"idx must hold integer token ids, got {idx.dtype}")
    if idx.numel() == 0:
        raise InvalidInputError("idx is empty")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        raise InvalidInputError(f"token ids must lie in [0, {vocab_size}), got [{lo}, {hi}]")


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean CE over positions whose target is not -100."""
    if targets.shape != logits.shape[:2]:
        raise InvalidInputError(f"targets must have shape {tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def init_gpt(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class ResidualFusion(nn.Module):
    """h' = h + W_2 GELU(W_1 [LN(h); r_1 .. r_Hr] + b_1) + b_2."""

    def __init__(self, config: MemNetConfig):
        super().__init__()
        m = config.memory
        self.ln = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config.d_model + m.n_read_heads * m.slot_dim, 2 * config.d_model, config.d_model)

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """h (B, T, d), r (B, T, Hr, D) -> (B, T, d)."""
        return h + self.mlp(torch.cat([self.ln(h), r.flatten(2).to(h.dtype)], dim=-1))


class MemNet(nn.Module):
    def __init__(self, config: MemNetConfig):
        super().__init__()
        if not isinstance(config, MemNetConfig):
            raise InvalidInputError(f"config must be a MemNetConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.controller = TransformerController(config)
        self.bottleneck = SemanticBottleneck(config)
        self.memory = MultiHeadMemoryBank(config.memory)
        self.fusion = ResidualFusion(config)
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in nanoGPT
        # nanoGPT init for the token embedding and the Transformer blocks (normal(0, 0.02) weights, zero biases);
        # the memory-side layers keep PyTorch's default init, with zero bottleneck biases so that what is written
        # depends on the token and not on a shared offset
        self.wte.apply(init_gpt)
        self.controller.blocks.apply(init_gpt)
        nn.init.zeros_(self.bottleneck.down.bias)
        nn.init.zeros_(self.bottleneck.up.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def reset(self, batch_size: int, device=None) -> MemoryState:
        """An empty memory for `batch_size` streams (a new episode)."""
        return self.memory.reset(batch_size, device if device is not None else self.wte.weight.device)

    def forward(self, idx: torch.Tensor, state: Optional[MemoryState] = None, targets: Optional[torch.Tensor] = None,
                trace: bool = False, wipe_memory: bool = False) -> SeqOutput:
        """idx (B, L) token ids; state from reset() or a previous call (None = empty); targets (B, L), -100 = no loss.

        wipe_memory=True empties the memory before every chunk (the ablation: the same network without long-term
        memory). trace=True returns per-chunk diagnostics, detached: write_mass, read_mass, decay, usage, age (B, C, N),
        gate (B, L, Hw), read_entropy (B, L), write_slot and read_slot (B, L, Hr) (the argmax slot of each write/read).
        """
        cfg, mc = self.config, self.config.memory
        check_tokens(idx, cfg.vocab_size)
        B, L = idx.shape
        state = self.reset(B) if state is None else state
        self.memory.check_state(state, B)
        x_all = self.wte(idx)  # (B, L, d)
        logits, gates, w_sum, ent_sum, n_reads = [], [], 0.0, 0.0, 0
        tr = {k: [] for k in ("write_mass", "read_mass", "decay", "usage", "age", "read_entropy", "write_slot",
                              "read_slot")} if trace else None
        for s in range(0, L, cfg.window):
            if wipe_memory:
                state = self.reset(B, idx.device)
            h, iface = self.controller(x_all[:, s : s + cfg.window])  # (B, T, d)
            v = self.bottleneck(h)  # (B, T, Hw, D)
            r, rw, state, info = self.memory(state, iface.read_keys, iface.write_keys, v, iface.write_gate, iface.erase,
                                             iface.content_gate, validate=False)
            h = self.fusion(h, r)  # (B, T, d)
            logits.append(self.lm_head(self.ln_f(h)))  # (B, T, V)
            gates.append(iface.write_gate)
            w_sum = w_sum + rw.sum((0, 1, 2))  # (N,)
            ent_sum = ent_sum + entropy(rw).sum()
            n_reads += rw.shape[0] * rw.shape[1] * rw.shape[2]
            if trace:
                wm = info["write_mass"]
                tr["write_mass"].append(wm)
                tr["read_mass"].append(rw.detach().sum((1, 2)) / mc.n_read_heads)
                tr["decay"].append(info["decay"])
                tr["usage"].append(state.usage.detach())
                tr["age"].append(state.age.detach())
                tr["read_entropy"].append(entropy(rw.detach()).mean(-1))  # (B, T)
                tr["write_slot"].append(info["token_slot"])  # (B, T)
                tr["read_slot"].append(rw.detach().argmax(-1))  # (B, T, Hr)
        logits = torch.cat(logits, 1)  # (B, L, V)
        gate = torch.cat(gates, 1)  # (B, L, Hw)
        aux = dict(util=utilisation_loss(w_sum / n_reads), pressure=pressure_loss(gate),
                   read_entropy=ent_sum / n_reads)
        aux["read_entropy_norm"] = aux["read_entropy"] / math.log(mc.top_k) if mc.top_k > 1 else aux["read_entropy"] * 0
        aux_loss = (cfg.util_weight * aux["util"] + cfg.pressure_weight * aux["pressure"]
                    + cfg.read_entropy_weight * aux["read_entropy_norm"])
        aux["aux_loss"] = aux_loss
        loss = None
        if targets is not None:
            aux["ce"] = sequence_loss(logits, targets)
            loss = aux["ce"] + aux_loss
        out_trace = None
        if trace:
            out_trace = {k: torch.stack(v, 1) for k, v in tr.items() if k not in ("read_entropy", "write_slot", "read_slot")}
            out_trace.update(read_entropy=torch.cat(tr["read_entropy"], 1), write_slot=torch.cat(tr["write_slot"], 1),
                             read_slot=torch.cat(tr["read_slot"], 1), gate=gate.detach())
        return SeqOutput(logits, state, loss, aux, out_trace)
