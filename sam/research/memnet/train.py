"""The one training loop every model in the benchmark goes through (same optimiser, schedule, clipping, AMP).

AdamW(beta = (0.9, 0.98), weight decay 0.01 on matrices), linear warm-up over the first 5% of steps, then cosine
decay to 10% of the peak rate; gradients clipped to norm 1; bf16 autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Optional

import torch
import torch.nn as nn


def autocast(device: torch.device | str, amp: bool = True):
    device = torch.device(device)
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    fused = all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.98), fused=fused or None)


def lr_at(step: int, steps: int, lr: float, warmup_frac: float = 0.05, floor: float = 0.1) -> float:
    """lr * step / warmup during warm-up, then lr * (floor + (1 - floor) * (1 + cos(pi * progress)) / 2)."""
    warmup = max(1, int(warmup_frac * steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def detach_state(state):
    if state is None:
        return None
    if hasattr(state, "detach"):
        return state.detach()
    return tuple(s.detach() for s in state)


def train(model: nn.Module, batch_fn: Callable[[int], tuple], steps: int, lr: float, device, amp: bool = True,
          carry_state: bool = False, state=None, on_step: Optional[Callable[[int, float], None]] = None,
          optimizer: Optional[torch.optim.Optimizer] = None, schedule_steps: Optional[int] = None, step0: int = 0):
    """Runs `steps` optimiser steps. batch_fn(step) -> (idx, targets) on `device`.

    carry_state=True passes each batch's final model state (detached) into the next batch: streams that persist
    across episodes. Returns (final state, list of (step, loss) every 10 steps)."""
    model.train()
    opt = optimizer or make_optimizer(model, lr)
    total = schedule_steps or steps
    log = []
    for i in range(steps):
        step = step0 + i
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, total, lr)
        idx, targets = batch_fn(step)
        with autocast(device, amp):
            out = model(idx, state=state if carry_state else None, targets=targets)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if carry_state:
            state = detach_state(out.state)
        if i % 10 == 0 or i == steps - 1:
            log.append((step, float(out.loss.detach())))
        if on_step is not None:
            on_step(step, out)
    model.eval()
    return state, log
