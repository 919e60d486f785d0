"""Tokenising (prompt, target) pairs for teacher forcing.

The target is scored in context, as `prompt + " " + target`: under a BPE tokenizer " Paris" and
"Paris" are different tokens, and the model only ever sees the first. Token roles come from the
character offsets, so no assumption is made about how the tokenizer splits the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam.errors import InvalidInputError


def join(prompt: str, target: str) -> str:
    return prompt + target if prompt[-1:].isspace() else f"{prompt} {target}"


@dataclass
class PairBatch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    prompt_mask: torch.Tensor  # (B, T) True on prompt tokens: the fingerprint reads these
    target_ids: list[torch.Tensor]  # per row (n_i,)
    rows: torch.Tensor  # (N,) row of each target token, all rows concatenated
    positions: torch.Tensor  # (N,) position whose logits predict that token
    labels: torch.Tensor  # (N,) the target token

    def to(self, device) -> "PairBatch":
        return PairBatch(*(v.to(device) if isinstance(v, torch.Tensor) else [t.to(device) for t in v]
                           for v in self.__dict__.values()))


def encode_pair(tokenizer, prompt: str, target: str) -> tuple[list[int], int]:
    """Token ids of prompt+target and how many of them are prompt tokens."""
    text = join(prompt, target)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = len(prompt.rstrip())
    # special tokens have (0, 0) offsets and count as prompt; the first token ending past the prompt starts the target
    n_prompt = next((i for i, (s, e) in enumerate(offsets) if e > cut and e > s), len(ids))
    if n_prompt == 0 or n_prompt == len(ids):
        raise InvalidInputError(f"cannot split {text!r} into prompt and target tokens")
    return ids, n_prompt


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], pad_id: int) -> PairBatch:
    encoded = [encode_pair(tokenizer, p, t) for p, t in pairs]
    width = max(len(ids) for ids, _ in encoded)
    B = len(encoded)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention = torch.zeros(B, width, dtype=torch.long)
    prompt_mask = torch.zeros(B, width, dtype=torch.bool)
    targets, rows, positions, labels = [], [], [], []
    for b, (ids, n_prompt) in enumerate(encoded):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
        prompt_mask[b, :n_prompt] = True
        tgt = torch.tensor(ids[n_prompt:])
        targets.append(tgt)
        rows.append(torch.full((len(tgt),), b))
        positions.append(torch.arange(n_prompt - 1, len(ids) - 1))
        labels.append(tgt)
    return PairBatch(input_ids, attention, prompt_mask, targets, torch.cat(rows), torch.cat(positions),
                     torch.cat(labels))
