"""Training one edit: only the memory columns of the edit's mask move; the model is frozen.

The memory acts from the last prompt token on (the positions that produce the answer), so
everything before that position is the same at every step. The fast loop therefore runs the
model once over head (prompt minus its last token) + tail (last prompt token + target), keeps the
head's KV cache and the stream entering the edited layer, and then each step runs only the tail
through the layers from the edited one up, attending to the cached head. Its logits go through
sam/core/output_loss.py (a bf16 copy of lm_head where that is fast). The naive loop (fast=False)
runs the whole model over whole sequences every step, for comparison.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam.core.batching import encode_pair, encode_pairs
from sam.core.fingerprinter import TopHashFingerprinter
from sam.core.layer_cache import capture_layer_input, start_at_layer
from sam.core.model_layers import ResidualMemoryLayer, TrainSlot
from sam.core.output_loss import TargetNLL


@dataclass
class TrainOutcome:
    cols: torch.Tensor  # (k,)
    delta: torch.Tensor  # (d_model, k)
    steps: int
    loss: float
    accuracy: float  # teacher-forced accuracy of the plain prompt's target tokens


def _cache_kwarg(module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _fork_cache(cache):
    """A copy of a KV cache that a forward may extend without touching the original. Cache layers
    grow by torch.cat into new tensors, so copying the containers is enough (a deepcopy costs
    ~0.25 s a step on CPU)."""
    fork = copy.copy(cache)
    if isinstance(getattr(cache, "layers", None), list):
        fork.layers = [copy.copy(layer) for layer in cache.layers]
    for name in ("key_cache", "value_cache"):  # older transformers
        if isinstance(getattr(cache, name, None), list):
            setattr(fork, name, list(getattr(cache, name)))
    return fork


def _head_cache(cache, n_tail: int, n_head: int):
    """The cache of a head + tail pass cut back to the head, or None where the cache can't be cut."""
    try:
        cache.crop(-n_tail)  # negative: drop that many tokens (every transformers version reads it so)
    except (AttributeError, RuntimeError, ValueError, NotImplementedError):
        return None
    return cache if cache.get_seq_length() == n_head else None


def _returned_cache(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


class EditTrainer:
    """Builds the training batch for (prompt, target), fingerprints the prompt and trains the delta."""

    def __init__(self, model, tokenizer, memory: ResidualMemoryLayer, layers, layer: int,
                 head_dtype: torch.dtype | None = None):
        self.model, self.tokenizer, self.memory, self.layers, self.layer = model, tokenizer, memory, layers, layer
        self.base = model.base_model
        self.cache_kw = _cache_kwarg(self.base)
        self.head_dtype = head_dtype  # None: bf16 where its matmul is fast (see output_loss)
        self._nll: TargetNLL | None = None  # built on the first edit: it holds a copy of lm_head

    @property
    def nll(self) -> TargetNLL:
        if self._nll is None:
            self._nll = TargetNLL(self.model, self.head_dtype)
        return self._nll

    def _steps(self, loss_fn, slot: TrainSlot, lr: float, max_steps: int, stop_loss: float):
        opt = torch.optim.SGD([slot.delta], lr=lr)
        self.memory.train_slot = slot
        steps = 0
        try:
            while True:
                loss, logits = loss_fn()
                value = float(loss.detach())
                if value < stop_loss or steps == max_steps:
                    return steps, value, logits.detach()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        finally:
            self.memory.train_slot = None

    def train(self, texts: list[str], target: str, fingerprint, choose_expert, *, lr: float, max_steps: int,
              stop_loss: float, fast: bool = True) -> tuple[TrainOutcome, int]:
        """texts[0] is the plain prompt, the rest prefixed copies. Returns the outcome and the expert used."""
        device = self.memory.memory.device
        rows = [encode_pair(self.tokenizer, t, target) for t in texts]
        n_target = len(rows[0][0]) - rows[0][1]
        same_tail = all(len(ids) - n == n_target and ids[n:] == rows[0][0][rows[0][1]:] for ids, n in rows)
        if fast and same_tail and max(n for _, n in rows) > 1:
            return self._train_fast(rows, n_target, fingerprint, choose_expert, lr, max_steps, stop_loss, device)
        return self._train_naive(texts, target, fingerprint, choose_expert, lr, max_steps, stop_loss, device)

    # --- fast: cached head, tail through the upper layers only -----------------------------------------
    def _train_fast(self, rows, n_target, fingerprint, choose_expert, lr, max_steps, stop_loss, device):
        pad = self.tokenizer.pad_token_id
        heads = [ids[: n - 1] for ids, n in rows]
        H, B = max(len(h) for h in heads), len(rows)
        head_ids = torch.full((B, H), pad, dtype=torch.long)
        head_mask = torch.zeros(B, H, dtype=torch.long)
        for b, h in enumerate(heads):  # left-pad the heads so every tail starts at column H
            head_ids[b, H - len(h):] = torch.tensor(h, dtype=torch.long)
            head_mask[b, H - len(h):] = 1
        tail_ids = torch.tensor([ids[n - 1: -1] for ids, n in rows])  # (B, n_target)
        labels = torch.tensor(rows[0][0][rows[0][1]:]).repeat(B)  # (B * n_target,)
        mask = torch.cat([head_mask, torch.ones(B, n_target, dtype=torch.long)], dim=1)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        head_ids, head_mask, tail_ids, labels, mask, pos = (t.to(device) for t in
                                                            (head_ids, head_mask, tail_ids, labels, mask, pos))
        box: dict[str, torch.Tensor] = {}
        self.memory.on_input = lambda x: box.__setitem__("x", x.detach())
        self.memory.enabled = False
        try:  # one pass over head + tail: the head's KV cache and the stream entering layer L
            with torch.no_grad(), capture_layer_input(self.layers, self.layer) as cap:
                out = self.base(input_ids=torch.cat([head_ids, tail_ids], dim=1), attention_mask=mask,
                                position_ids=pos, use_cache=True)
            x = box["x"]  # (B, H + n_target, d_ff)
            cache = _head_cache(_returned_cache(out), n_target, H)
            if cache is None:  # a cache that cannot drop the tail: run the head on its own
                with torch.no_grad():
                    cache = _returned_cache(self.base(input_ids=head_ids, attention_mask=head_mask,
                                                      position_ids=pos[:, :H], use_cache=True))
        finally:
            self.memory.on_input = None
            self.memory.enabled = True
        plain = x[0, H - len(heads[0]): H + 1]  # the plain prompt's tokens (its last one opens the tail)
        cols = fingerprint(plain.mean(dim=0, keepdim=True))[0]
        expert = choose_expert(cols)
        hidden = cap["hidden"][:, H:]  # (B, n_target, d)

        def loss_fn():
            with start_at_layer(self.layers, self.layer, hidden):
                h = self.base(input_ids=tail_ids, attention_mask=mask, position_ids=pos[:, H:], use_cache=True,
                              **{self.cache_kw: _fork_cache(cache)}).last_hidden_state  # (B, n_target, d)
            return self.nll(h.reshape(-1, h.shape[-1]), labels)  # loss, (B * n_target, V) logits

        slot = TrainSlot(expert, cols, torch.nn.Parameter(torch.zeros(self.memory.out_features, cols.numel(),
                                                                      device=device)))
        steps, loss, logits = self._steps(loss_fn, slot, lr, max_steps, stop_loss)
        acc = float((logits[:n_target].argmax(-1) == labels[:n_target]).float().mean())
        return TrainOutcome(cols, slot.delta.detach(), steps, loss, acc), expert

    # --- naive: the whole model, every step ---------------------------------------------------------------
    def _train_naive(self, texts, target, fingerprint, choose_expert, lr, max_steps, stop_loss, device):
        batch = encode_pairs(self.tokenizer, [(t, target) for t in texts], self.tokenizer.pad_token_id).to(device)
        box = {}
        self.memory.on_input = lambda x: box.__setitem__("x", x.detach())
        self.memory.enabled = False
        try:
            with torch.no_grad():
                self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        finally:
            self.memory.on_input = None
            self.memory.enabled = True
        cols = fingerprint(TopHashFingerprinter.pool(box["x"][:1], batch.prompt_mask[:1]))[0]
        expert = choose_expert(cols)
        answer = answer_positions(batch.prompt_mask) & batch.attention_mask.bool()

        def loss_fn():
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                use_cache=False).logits[batch.rows, batch.positions]
            return F.cross_entropy(logits.float(), batch.labels), logits

        slot = TrainSlot(expert, cols, torch.nn.Parameter(torch.zeros(self.memory.out_features, cols.numel(),
                                                                      device=device)), positions=answer)
        steps, loss, logits = self._steps(loss_fn, slot, lr, max_steps, stop_loss)
        first = batch.rows == 0
        acc = float((logits[first].argmax(-1) == batch.labels[first]).float().mean())
        return TrainOutcome(cols, slot.delta.detach(), steps, loss, acc), expert


def answer_positions(prompt_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) True from each row's last prompt token on: where the memory acts."""
    nxt = torch.cat([prompt_mask[:, 1:], torch.zeros_like(prompt_mask[:, :1])], dim=1)
    return ~nxt.bool()
