"""Tokenising prompts, and (prompt, target) pairs for teacher forcing.

A target is scored in context, as the format joins it to its prompt (`prompt + " " + target`, or
directly after a chat template's assistant header), followed by the format's end-of-turn text,
which training also teaches. Token roles come from character offsets, so no assumption is made
about how the tokenizer splits a boundary: prompt tokens, key tokens (inside the question span),
target tokens and end-of-turn tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam.core.prompts import Prompt, PromptFormat
from sam.errors import InvalidInputError


@dataclass
class Encoded:
    ids: list[int]
    n_prompt: int  # the first n_prompt ids are the prompt
    n_target: int  # then the target; the rest is the end of turn
    key: list[bool]  # per prompt token: inside the question


def _roles(offsets, prompt: Prompt, cut: int) -> tuple[int, list[bool]]:
    # the first token ending past the prompt starts the target; special tokens have (0, 0) offsets
    n_prompt = next((i for i, (s, e) in enumerate(offsets) if e > cut and e > s), len(offsets))
    key = [e > s and s < prompt.end and e > prompt.start for s, e in offsets[:n_prompt]]
    return n_prompt, key


def encode(tokenizer, fmt: PromptFormat, prompt: Prompt, target: str | None = None) -> Encoded:
    """Token ids of the prompt (and target, and end of turn, when a target is given)."""
    if target is None:
        enc = tokenizer(prompt.text, return_offsets_mapping=True, add_special_tokens=fmt.add_special_tokens)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        n_prompt, key = len(ids), [e > s and s < prompt.end and e > prompt.start for s, e in offsets]
        return Encoded(ids, n_prompt, 0, key)
    text = fmt.join(prompt.text, target)
    # a chat prompt ends with the assistant header's newline, which is prompt; elsewhere trailing
    # whitespace before the answer goes with it, as the model reads it
    cut = len(prompt.text) if fmt.style == "chat" else len(prompt.text.rstrip())
    enc = tokenizer(text + fmt.end_of_turn, return_offsets_mapping=True, add_special_tokens=fmt.add_special_tokens)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    n_prompt, key = _roles(offsets, prompt, cut)
    n_before_end = next((i for i, (s, e) in enumerate(offsets) if s >= len(text) and e > s), len(ids))
    if n_prompt == 0 or n_before_end <= n_prompt:
        raise InvalidInputError(f"cannot split {text!r} into prompt and target tokens")
    if not any(key):
        raise InvalidInputError("the question has no tokens of its own in the prompt")
    return Encoded(ids, n_prompt, n_before_end - n_prompt, key)


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # (B, T), left-padded
    attention_mask: torch.Tensor  # (B, T)
    key_mask: torch.Tensor  # (B, T) True on the question's tokens: the fingerprint pools these

    def to(self, device) -> "PromptBatch":
        return PromptBatch(*(v.to(device) for v in self.__dict__.values()))


def encode_prompts(tokenizer, fmt: PromptFormat, prompts: list[Prompt], pad_id: int) -> PromptBatch:
    encoded = [encode(tokenizer, fmt, p) for p in prompts]
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)
    key = torch.zeros(len(encoded), width, dtype=torch.bool)
    for b, e in enumerate(encoded):
        n = len(e.ids)
        ids[b, width - n:] = torch.tensor(e.ids)
        mask[b, width - n:] = 1
        key[b, width - n:] = torch.tensor(e.key)
    return PromptBatch(ids, mask, key)


@dataclass
class PairBatch:
    input_ids: torch.Tensor  # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    key_mask: torch.Tensor  # (B, T) True on the question's tokens
    answer_mask: torch.Tensor  # (B, T) True from each row's last prompt token on: where the memory acts
    target_ids: list[torch.Tensor]  # per row (n_i,), without the end of turn
    rows: torch.Tensor  # (N,) row of each target token, all rows concatenated
    positions: torch.Tensor  # (N,) position whose logits predict that token
    labels: torch.Tensor  # (N,) the target token
    train_rows: torch.Tensor  # (M,) as rows/positions/labels, with the end-of-turn tokens
    train_positions: torch.Tensor  # (M,)
    train_labels: torch.Tensor  # (M,)

    def to(self, device) -> "PairBatch":
        return PairBatch(*(v.to(device) if isinstance(v, torch.Tensor) else [t.to(device) for t in v]
                           for v in self.__dict__.values()))


def encode_pairs(tokenizer, fmt: PromptFormat, pairs: list[tuple[Prompt, str]], pad_id: int) -> PairBatch:
    encoded = [encode(tokenizer, fmt, p, t) for p, t in pairs]
    width = max(len(e.ids) for e in encoded)
    B = len(encoded)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention = torch.zeros(B, width, dtype=torch.long)
    key = torch.zeros(B, width, dtype=torch.bool)
    answer = torch.zeros(B, width, dtype=torch.bool)
    targets, rows, positions, trows, tpositions = [], [], [], [], []
    for b, e in enumerate(encoded):
        n = len(e.ids)
        input_ids[b, :n] = torch.tensor(e.ids)
        attention[b, :n] = 1
        key[b, : e.n_prompt] = torch.tensor(e.key)
        answer[b, e.n_prompt - 1: n] = True
        targets.append(torch.tensor(e.ids[e.n_prompt: e.n_prompt + e.n_target]))
        rows.append(torch.full((e.n_target,), b))
        positions.append(torch.arange(e.n_prompt - 1, e.n_prompt - 1 + e.n_target))
        trows.append(torch.full((n - e.n_prompt,), b))
        tpositions.append(torch.arange(e.n_prompt - 1, n - 1))
    rows, positions = torch.cat(rows), torch.cat(positions)
    trows, tpositions = torch.cat(trows), torch.cat(tpositions)
    return PairBatch(input_ids, attention, key, answer, targets, rows, positions, input_ids[rows, positions + 1],
                     trows, tpositions, input_ids[trows, tpositions + 1])
