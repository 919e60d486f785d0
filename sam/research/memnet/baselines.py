"""Same-size baselines: a Transformer with the same attention window, and an LSTM. Same interface as MemNet.

WindowTransformer: token i attends to tokens j with i - W < j <= i (sliding window W = MemNet's chunk), so it sees
at least as much context as MemNet's controller at every position, and nothing older.
LSTMBaseline: embedding -> LSTM -> tied head; its (h, c) state runs over the whole sequence (and, like MemNet's
memory, can be carried across episodes).
`match_transformer` / `match_lstm` pick the widths whose parameter count is closest to a target.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from sam.errors import InvalidInputError

from .controller import Block, window_mask
from .model import SeqOutput, check_tokens, init_gpt, sequence_loss


class WindowTransformer(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, n_layer: int, n_head: int, d_ff: int, window: int):
        super().__init__()
        if min(vocab_size, d_model, n_layer, n_head, d_ff, window) <= 0 or d_model % n_head:
            raise InvalidInputError("WindowTransformer sizes must be positive and d_model a multiple of n_head")
        self.vocab_size, self.d_model, self.window = vocab_size, d_model, window
        self.wte = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, d_ff) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(init_gpt)  # the same init as MemNet's controller

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, state=None, targets: Optional[torch.Tensor] = None, **_) -> SeqOutput:
        """idx (B, L). `state` is accepted and ignored: nothing outlives the window."""
        check_tokens(idx, self.vocab_size)
        B, L = idx.shape
        x = self.wte(idx)  # (B, L, d); positions: rotary codes inside attention
        mask = window_mask(L, self.window, idx.device)  # (L, L)
        for block in self.blocks:
            x = block(x, mask)
        logits = self.lm_head(self.ln_f(x))  # (B, L, V)
        loss = sequence_loss(logits, targets) if targets is not None else None
        return SeqOutput(logits, None, loss, {"ce": loss} if loss is not None else {})


class LSTMBaseline(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, n_layer: int = 1):
        super().__init__()
        if min(vocab_size, hidden, n_layer) <= 0:
            raise InvalidInputError("LSTMBaseline sizes must be positive")
        self.vocab_size, self.hidden, self.n_layer = vocab_size, hidden, n_layer
        self.wte = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden, n_layer, batch_first=True)
        self.ln_f = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        nn.init.normal_(self.wte.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def reset(self, batch_size: int, device=None):
        device = device if device is not None else self.wte.weight.device
        z = torch.zeros(self.n_layer, batch_size, self.hidden, device=device)
        return (z, z.clone())

    def forward(self, idx: torch.Tensor, state=None, targets: Optional[torch.Tensor] = None, **_) -> SeqOutput:
        """idx (B, L); state (h, c), each (n_layer, B, hidden), or None for zeros."""
        check_tokens(idx, self.vocab_size)
        if state is not None and (state[0].shape[1] != idx.shape[0] or state[0].shape[2] != self.hidden):
            raise InvalidInputError(f"LSTM state has shape {tuple(state[0].shape)}, expected "
                                    f"({self.n_layer}, {idx.shape[0]}, {self.hidden})")
        with torch.autocast(device_type=idx.device.type, enabled=False):  # fp32 LSTM (cuDNN), also under AMP
            y, (h, c) = self.lstm(self.wte(idx).float(), state)  # (B, L, hidden)
        logits = self.lm_head(self.ln_f(y))  # (B, L, V)
        loss = sequence_loss(logits, targets) if targets is not None else None
        return SeqOutput(logits, (h, c), loss, {"ce": loss} if loss is not None else {})


def _count(module_fn) -> int:
    with torch.device("meta"):
        return module_fn().num_params()


def match_transformer(target: int, vocab_size: int, d_model: int, n_head: int, window: int,
                      layers=(1, 2, 3, 4, 5, 6)) -> tuple[dict, int]:
    """Widest-feasible search: for each depth, the d_ff in [d, 8d] closest to `target` parameters; best overall."""
    best = None
    for n_layer in layers:
        lo, hi = d_model, 8 * d_model
        per = _count(lambda: WindowTransformer(vocab_size, d_model, n_layer, n_head, lo + 1, window)) - \
            _count(lambda: WindowTransformer(vocab_size, d_model, n_layer, n_head, lo, window))
        base = _count(lambda: WindowTransformer(vocab_size, d_model, n_layer, n_head, lo, window))
        d_ff = min(hi, max(lo, lo + round((target - base) / per)))
        n = base + (d_ff - lo) * per
        cand = (abs(n - target), abs(d_ff - 4 * d_model), dict(vocab_size=vocab_size, d_model=d_model,
                                                               n_layer=n_layer, n_head=n_head, d_ff=d_ff,
                                                               window=window), n)
        if best is None or cand[:2] < best[:2]:
            best = cand
    return best[2], best[3]


def lstm_params(vocab_size: int, hidden: int, n_layer: int = 1) -> int:
    """V h (tied embedding/head) + n_layer (4 (2 h^2 + 2 h)) (LSTM, input width h) + 2 h (final LayerNorm)."""
    return vocab_size * hidden + n_layer * 4 * (2 * hidden * hidden + 2 * hidden) + 2 * hidden


def match_lstm(target: int, vocab_size: int, n_layer: int = 1) -> tuple[dict, int]:
    """The hidden width whose LSTMBaseline has the parameter count closest to `target`."""
    hidden = min(range(1, 4097), key=lambda h: abs(lstm_params(vocab_size, h, n_layer) - target))
    return dict(vocab_size=vocab_size, hidden=hidden, n_layer=n_layer), lstm_params(vocab_size, hidden, n_layer)
