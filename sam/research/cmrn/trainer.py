"""Training: one loop for CMRN and the Transformer (same batches, same steps), domain experts, continual training.

AdamW, linear warm-up then cosine decay to 10%, gradient clipping. CMRN's loss is
    L = CE(next byte) + L_lb + L_z          (router losses, see routing.py)
computed by `forward_segments`; the Transformer's is the CE over its whole window.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from sam.errors import InvalidInputError
from sam.research.cmrn.data import lm_batch
from sam.research.cmrn.model import CMRN


@dataclass
class TrainingConfig:
    learning_rate: float = 3e-3
    batch_size: int = 32
    seq_len: int = 512  # tokens per training window (the Transformer's attention window)
    segment_len: int = 256  # CMRN processes each window in segments of this length
    max_steps: int = 1000
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    fact_rate: float = 0.0  # share of windows with a planted fact (data.plant_facts)
    eval_every: int = 100
    eval_batches: int = 4
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def model_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, segment_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss to minimise, next-token cross-entropy in nats)."""
    if isinstance(model, CMRN):
        out = model.forward_segments(x, y, segment_len=segment_len)
        return out.loss, out.lm_loss
    _, loss = model(x, y)
    return loss, loss


@torch.no_grad()
def evaluate(model: nn.Module, arr: np.ndarray, cfg: TrainingConfig, device, batches: int | None = None,
             seed: int = 1234) -> float:
    """Mean next-byte cross-entropy (nats) on fixed windows of `arr` (the same windows for every model)."""
    was = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    tot = 0.0
    n = batches or cfg.eval_batches
    for _ in range(n):
        x, y = lm_batch(arr, cfg.batch_size, cfg.seq_len, rng, device)
        tot += float(model_loss(model, x, y, cfg.segment_len)[1])
    model.train(was)
    return tot / n


def lr_at(step: int, cfg: TrainingConfig, steps: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def train_lm(model: nn.Module, params: Iterable[nn.Parameter], sample: Callable[[np.random.Generator], tuple],
             cfg: TrainingConfig, device, steps: int | None = None, eval_sets: dict[str, np.ndarray] | None = None,
             on_step: Callable[[int], None] | None = None, stop_at: dict | None = None) -> dict:
    """Train `params` of `model` on batches from `sample(rng)`; returns the history (loss, evals, wall time).

    stop_at={"set": name, "loss": value} ends training at the first evaluation where that set's loss <= value.
    Wall time counts training steps only (evaluations are excluded).
    """
    steps = steps or cfg.max_steps
    params = [p for p in params if p.requires_grad]
    if not params:
        raise InvalidInputError("nothing to train: every parameter is frozen")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate, betas=(0.9, 0.95))
    rng = np.random.default_rng(cfg.seed)
    hist = dict(step=[], train_loss=[], eval_step=[], eval_wall_s=[], eval={k: [] for k in (eval_sets or {})},
                wall_s=0.0, tokens=0, steps=0, stopped_early=False)
    model.train()
    wall = 0.0
    run_loss = None
    for step in range(steps):
        x, y = sample(rng)
        _sync(device)
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, steps)
        loss, lm = model_loss(model, x, y, cfg.segment_len)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        _sync(device)
        wall += time.perf_counter() - t0
        lm_v = float(lm.detach())
        run_loss = lm_v if run_loss is None else 0.9 * run_loss + 0.1 * lm_v
        hist["step"].append(step + 1)
        hist["train_loss"].append(lm_v)
        hist["tokens"] += x.numel()
        last = step + 1 == steps
        if eval_sets and ((step + 1) % cfg.eval_every == 0 or last):
            hist["eval_step"].append(step + 1)
            hist["eval_wall_s"].append(wall)
            for k, arr in eval_sets.items():
                hist["eval"][k].append(evaluate(model, arr, cfg, device))
            if stop_at and hist["eval"][stop_at["set"]][-1] <= stop_at["loss"]:
                hist["stopped_early"] = True
                if on_step:
                    on_step(step + 1)
                hist["steps"] = step + 1
                break
        if on_step:
            on_step(step + 1)
        hist["steps"] = step + 1
    hist["wall_s"] = wall
    model.eval()
    return hist


class CMRNTrainer:
    """Trains a CMRN; adds domain experts and trains them with the rest of the model frozen."""

    def __init__(self, model: CMRN, config: TrainingConfig, device: str | torch.device = "cpu"):
        self.model, self.config, self.device = model, config, device

    def _sampler(self, arr: np.ndarray | Callable) -> Callable:
        if callable(arr):
            return arr
        c = self.config
        return lambda rng: lm_batch(arr, c.batch_size, c.seq_len, rng, self.device, c.fact_rate)

    def train(self, train_data, eval_data: dict | None = None, steps: int | None = None, **kw) -> dict:
        return train_lm(self.model, self.model.parameters(), self._sampler(train_data), self.config, self.device,
                        steps, eval_data, **kw)

    def add_domain_expert(self, domain: str, expert_config: dict | None = None) -> int:
        """Add an expert for `domain` ({"type": "general" | "symbolic" | "pattern" | "generative"})."""
        if not domain:
            raise InvalidInputError("domain must be a non-empty name")
        etype = (expert_config or {}).get("type", "general")
        return self.model.add_expert(etype, domain)

    def trainable_for(self, domain: str, freeze_existing_experts: bool = True) -> list[nn.Parameter]:
        """With freezing: only the domain's experts and their router rows; else every parameter."""
        m = self.model
        idx = [i for i, e in enumerate(m.experts) if e.domain == domain]
        if not idx:
            raise InvalidInputError(f"no expert for domain {domain!r}: call add_domain_expert first")
        for p in m.parameters():
            p.requires_grad_(not freeze_existing_experts)
        if freeze_existing_experts:
            base = m.router.proj.out_features
            for i in idx:
                for p in m.experts[i].parameters():
                    p.requires_grad_(True)
                if i >= base:
                    for p in m.router.extra[i - base].parameters():
                        p.requires_grad_(True)
        return [p for p in m.parameters() if p.requires_grad]

    def continual_train(self, new_domain_data, domain: str, freeze_existing_experts: bool = True,
                        eval_data: dict | None = None, steps: int | None = None, **kw) -> dict:
        params = self.trainable_for(domain, freeze_existing_experts)
        try:
            hist = train_lm(self.model, params, self._sampler(new_domain_data), self.config, self.device, steps,
                            eval_data, **kw)
        finally:
            for p in self.model.parameters():
                p.requires_grad_(True)
        hist["trainable_parameters"] = sum(p.numel() for p in params)
        return hist
