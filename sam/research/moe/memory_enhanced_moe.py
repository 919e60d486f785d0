"""MemoryEnhancedMoE: a top-k routed mixture of MemoryExperts.

forward(x, use_memory=False) is a plain MoE, which is the baseline the bench compares against: same experts,
same gate, same routing, no memory reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.errors import CorruptStoreError, InvalidInputError

from .config import MemoryConfig
from .gating import GatingNetwork
from .memory_bank import check_finite
from .memory_expert import MemoryExpert
from .types import ExpertSpecialization, MemoryType

LABELLED_IMPORTANCE = 0.9  # stored with a true target: worth keeping past the short-term FIFO
PSEUDO_IMPORTANCE = 0.3  # stored with the model's own prediction as target


class MemoryEnhancedMoE(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, num_experts: int = 8, hidden_dim: int = 512,
                 expert_specializations: Optional[Sequence[ExpertSpecialization]] = None,
                 memory_config: Optional[MemoryConfig] = None, top_k: int = 2, aux_loss_weight: float = 0.01):
        super().__init__()
        if min(input_dim, output_dim, num_experts, hidden_dim, top_k) <= 0:
            raise InvalidInputError("input_dim, output_dim, num_experts, hidden_dim and top_k must all be > 0")
        specs = list(expert_specializations or [ExpertSpecialization.GENERAL] * num_experts)
        if len(specs) != num_experts:
            raise InvalidInputError(f"{len(specs)} specializations given for {num_experts} experts")
        self.config = memory_config or MemoryConfig()
        self.input_dim, self.output_dim, self.num_experts, self.hidden_dim = input_dim, output_dim, num_experts, hidden_dim
        self.top_k, self.aux_loss_weight = min(top_k, num_experts), aux_loss_weight
        self.gate = GatingNetwork(input_dim, num_experts, self.top_k)
        self.experts = nn.ModuleList(MemoryExpert(input_dim, output_dim, hidden_dim, self.config, s) for s in specs)
        self.n_forwards = 0

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.gate.proj.weight.device

    def _check_x(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"input must be a tensor, got {type(x).__name__}")
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.input_dim:
            raise InvalidInputError(f"input must have shape (B, {self.input_dim}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise InvalidInputError("input batch is empty")
        check_finite(x, "input")
        return x.to(self.device, torch.float32)

    def _targets(self, y: Any, n: int) -> torch.Tensor:
        """Labels (n,) long or target distributions (n, O) float, validated."""
        y = torch.as_tensor(y, device=self.device)
        if not torch.is_floating_point(y):
            y = y.long().reshape(-1)
            if y.shape[0] != n or bool((y < 0).any()) or bool((y >= self.output_dim).any()):
                raise InvalidInputError(f"labels must be {n} ints in [0, {self.output_dim})")
            return y
        y = y.float().reshape(n, -1) if y.numel() == n * self.output_dim else None
        if y is None:
            raise InvalidInputError(f"float targets must have shape ({n}, {self.output_dim})")
        check_finite(y, "targets")
        return y

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, use_memory: bool = True, store_experience: bool = False,
                targets: Any = None, exclude_self: Optional[bool] = None) -> tuple[torch.Tensor, dict]:
        """x (B, D) -> logits (B, O), info. While training, a query never reads its own stored copy (exclude_self)."""
        x = self._check_x(x)
        exclude_self = self.training if exclude_self is None else exclude_self
        weights, topi, aux = self.gate(x)  # (B, E), (B, k), ()
        out = torch.zeros(x.shape[0], self.output_dim, device=x.device)  # (B, O)
        retrieved, active, hits = {}, [], torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for e, expert in enumerate(self.experts):
            idx = (topi == e).any(-1).nonzero().squeeze(1)  # rows routed to expert e
            if idx.numel() == 0:
                continue
            active.append(e)
            y_e, info_e = expert(x[idx], use_memory=use_memory, exclude_self=exclude_self)  # (b, O)
            out = out.index_add(0, idx, weights[idx, e : e + 1] * y_e)
            retrieved[e] = info_e["retrieved"]
            hits.index_add_(0, idx, info_e["hits"])
        info = dict(total_memories_retrieved=sum(retrieved.values()), memories_retrieved_per_expert=retrieved,
                    hits_per_input=hits, active_experts=active, routing_weights=weights.detach(),
                    top_k_indices=topi.detach(), aux_loss=self.aux_loss_weight * aux, stored=0)
        if store_experience:
            if targets is None:  # no ground truth: remember the model's own belief, at low importance
                tgt, imp, meta = F.softmax(out.detach(), -1), PSEUDO_IMPORTANCE, {"pseudo": True}
            else:
                tgt, imp, meta = self._targets(targets, x.shape[0]), LABELLED_IMPORTANCE, {}
            info["stored"] = self._store_rows(x, tgt, topi, imp, meta)
        self.n_forwards += 1
        c = self.config
        info["consolidated"] = bool(c.consolidation_interval and self.n_forwards % c.consolidation_interval == 0)
        info["pruned"] = bool(c.enable_pruning and c.prune_interval and self.n_forwards % c.prune_interval == 0)
        if info["consolidated"]:
            self.consolidate_memory()
        if info["pruned"]:
            self.prune_memory()
        return out, info

    def _store_rows(self, x: torch.Tensor, tgt: torch.Tensor, experts: torch.Tensor, importance: float,
                    meta: dict, memory_type: MemoryType = MemoryType.EPISODIC) -> int:
        """Store row i of x in every expert listed in experts[i] (the experts that will be asked about it)."""
        n = 0
        for i in range(x.shape[0]):
            value = int(tgt[i]) if tgt.dim() == 1 else tgt[i]
            for e in experts[i].tolist():
                self.experts[e].memory.store(x[i], dict(meta), memory_type, importance, value=value)
                n += 1
        return n

    # ------------------------------------------------------------------ memory API
    def store_experience(self, input_data: torch.Tensor, metadata: Optional[dict] = None, importance: float = 0.5,
                         target_expert: Optional[int] = None, target: Any = None,
                         memory_type: MemoryType = MemoryType.EPISODIC) -> list[tuple[int, int]]:
        """Store (N, D) inputs (with labels/targets or metadata['label']) in the routed experts, or in target_expert."""
        x = self._check_x(input_data)
        metadata = dict(metadata or {})
        if target is None and "label" in metadata:
            target = [metadata["label"]] * x.shape[0]
        if target is None and "target" in metadata:
            target = metadata.pop("target")
        experts = self._experts_for(x, target_expert)
        out = []
        tgt = None if target is None else self._targets(target, x.shape[0])
        for i in range(x.shape[0]):
            value = None if tgt is None else (int(tgt[i]) if tgt.dim() == 1 else tgt[i])
            for e in experts[i].tolist():
                out.append((e, self.experts[e].memory.store(x[i], dict(metadata), memory_type, importance, value=value)))
        return out

    def _experts_for(self, x: torch.Tensor, target_expert: Optional[int]) -> torch.Tensor:
        if target_expert is not None:
            if not 0 <= int(target_expert) < self.num_experts:
                raise InvalidInputError(f"target_expert must be in [0, {self.num_experts}), got {target_expert}")
            return torch.full((x.shape[0], 1), int(target_expert), dtype=torch.long)
        with torch.no_grad():
            return self.gate.proj(x).topk(self.top_k, dim=-1).indices.cpu()  # (N, k); no usage counting

    def few_shot_adapt(self, examples: Sequence[tuple[torch.Tensor, Any]], target_expert: Optional[int] = None,
                       steps: int = 5, lr: float = 1e-3, use_memory: bool = True,
                       importance: float = LABELLED_IMPORTANCE) -> dict:
        """Adapt from a few (x, y) pairs: write them into memory (when use_memory), then a few Adam steps on the
        experts they route to (the gate stays frozen so old inputs keep their route)."""
        if not examples:
            raise InvalidInputError("few_shot_adapt needs at least one (x, y) example")
        try:
            xs = torch.stack([self._check_x(x)[0] for x, _ in examples])  # (N, D)
            ys = [y.item() if isinstance(y, torch.Tensor) and y.numel() == 1 and not torch.is_floating_point(y) else y
                  for _, y in examples]
        except (TypeError, ValueError) as e:
            if isinstance(e, InvalidInputError):
                raise
            raise InvalidInputError(f"examples must be (x, y) pairs: {e}") from None
        y = self._targets(torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in ys])
                          if any(isinstance(v, torch.Tensor) and torch.is_floating_point(v) for v in ys) else ys, len(ys))
        experts = self._experts_for(xs, target_expert)  # (N, k)
        used = sorted(set(experts.flatten().tolist()))
        stored = 0
        if use_memory:
            stored = self._store_rows(xs, y, experts, importance, {"few_shot": True})
            for e in used:  # prototypes of the new classes go to semantic memory right away
                self.experts[e].memory.consolidate()
        was_training = self.training
        self.train()
        params = [p for e in used for p in self.experts[e].parameters()]
        opt = torch.optim.Adam(params, lr=lr) if steps > 0 else None
        losses = []
        for _ in range(max(steps, 0)):
            out, _ = self(xs, use_memory=use_memory, exclude_self=True)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        self.eval()
        with torch.no_grad():
            final = float(F.cross_entropy(self(xs, use_memory=use_memory, exclude_self=True)[0], y))
        self.train(was_training)
        main = used[0] if target_expert is None else int(target_expert)
        return dict(expert_id=main, experts=used, specialization=self.experts[main].specialization.value,
                    stored=stored, steps=max(steps, 0), initial_loss=losses[0] if losses else final,
                    adaptation_loss=final)

    def consolidate_memory(self) -> dict:
        return {e: ex.memory.consolidate() for e, ex in enumerate(self.experts)}

    def prune_memory(self) -> dict:
        return {e: ex.memory.prune() for e, ex in enumerate(self.experts)}

    def get_memory_statistics(self) -> dict:
        per = {}
        for e, ex in enumerate(self.experts):
            s = ex.memory.get_statistics()
            s["specialization"] = ex.specialization.value
            per[e] = s
        tot = lambda k: sum(s[k] for s in per.values())  # noqa: E731
        return dict(total_memories=tot("total"), episodic_count=tot("episodic"), semantic_count=tot("semantic"),
                    short_term_count=tot("short_term"), long_term_count=tot("long_term"),
                    consolidations=tot("consolidations"), prunes=tot("prunes"), footprint_bytes=tot("footprint_bytes"),
                    per_expert=per)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Union[str, Path]) -> Path:
        """config.json + weights.safetensors + one memory file pair per expert. No pickle anywhere."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = dict(input_dim=self.input_dim, output_dim=self.output_dim, num_experts=self.num_experts,
                   hidden_dim=self.hidden_dim, top_k=self.top_k, aux_loss_weight=self.aux_loss_weight,
                   expert_specializations=[ex.specialization.value for ex in self.experts],
                   memory_config=self.config.to_dict(), n_forwards=self.n_forwards)
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(d / "weights.safetensors"))
        tensors, metas = {}, {}
        for e, ex in enumerate(self.experts):
            t, m = ex.memory.memory_state()
            tensors.update({f"e{e}.{k}": v.contiguous() for k, v in t.items()})
            metas[str(e)] = m
        save_file(tensors, str(d / "memories.safetensors"))
        (d / "memories.json").write_text(json.dumps(metas))
        return d

    @classmethod
    def load(cls, directory: Union[str, Path], map_location: str = "cpu") -> "MemoryEnhancedMoE":
        from safetensors.torch import load_file

        d = Path(directory)
        try:
            cfg = json.loads((d / "config.json").read_text())
            weights = load_file(str(d / "weights.safetensors"), device=str(map_location))
            mem_t = load_file(str(d / "memories.safetensors"), device="cpu")
            metas = json.loads((d / "memories.json").read_text())
        except (OSError, ValueError) as e:
            raise CorruptStoreError(f"cannot read MemoryEnhancedMoE at {d}: {e}") from None
        model = cls(cfg["input_dim"], cfg["output_dim"], cfg["num_experts"], cfg["hidden_dim"],
                    [ExpertSpecialization(s) for s in cfg["expert_specializations"]],
                    MemoryConfig.from_dict(cfg["memory_config"]), cfg["top_k"], cfg["aux_loss_weight"]).to(map_location)
        model.load_state_dict(weights)
        for e, ex in enumerate(model.experts):
            ex.memory.load_memory_state({k.split(".", 1)[1]: v for k, v in mem_t.items() if k.startswith(f"e{e}.")},
                                        metas[str(e)])
        model.n_forwards = int(cfg["n_forwards"])
        return model


def create_memory_enhanced_moe(input_dim: int, output_dim: int, num_experts: int = 8, hidden_dim: int = 512,
                               expert_specializations: Optional[Sequence[ExpertSpecialization]] = None,
                               memory_config: Optional[MemoryConfig] = None, top_k: int = 2) -> MemoryEnhancedMoE:
    return MemoryEnhancedMoE(input_dim, output_dim, num_experts, hidden_dim, expert_specializations, memory_config, top_k)
