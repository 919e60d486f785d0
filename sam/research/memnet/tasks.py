"""Synthetic tasks, generated on the fly (no dataset files). Token ids are laid out as
[filler | keys | values | QUERY]; targets are -100 except where a value has to be recalled.

Associative recall over chunks (experiment 1): a sequence of n_chunks * window tokens holds n_pairs "key value"
pairs at random even positions (so a pair never straddles a chunk boundary), random filler elsewhere, and ends with
n_queries "QUERY key" pairs; at each query key the model must output that key's value. The distance of a query is
the number of tokens back to its pair's value token.

Continual learning (experiment 2): n_tasks tasks, each with its own keys_per_task keys (the input distribution shifts
to new tokens) and a fixed random mapping key -> value over a shared value vocabulary (the task's facts). Training
episodes are half "facts" (some facts studied, queries on studied and unstudied facts) and half "bind" (task keys
bound to fresh random values for one episode, then queried: recall across the window). Tested per task: retention
of facts (queries only, no study) and the in-context skill (bind episodes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sam.errors import InvalidInputError


def _distinct(B: int, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(B, k) distinct ints from [0, n) per row."""
    return torch.rand(B, n, generator=g).argsort(-1)[:, :k]


@dataclass
class RecallTask:
    n_filler: int = 16
    n_keys: int = 32
    n_values: int = 32
    window: int = 16
    n_chunks: int = 8
    n_pairs: int = 8

    def __post_init__(self) -> None:
        if self.window % 2:
            raise InvalidInputError("window must be even (a pair never straddles a chunk boundary)")
        if self.n_pairs > self.n_keys or 2 * self.n_pairs > self.length // 2:
            raise InvalidInputError("need n_pairs <= n_keys and 2 * n_pairs <= length / 2 two-token slots")

    @property
    def length(self) -> int:
        return self.window * self.n_chunks

    @property
    def vocab_size(self) -> int:
        return self.n_filler + self.n_keys + self.n_values + 1

    @property
    def query_token(self) -> int:
        return self.vocab_size - 1

    def to_dict(self) -> dict:
        return asdict(self)

    def batch(self, B: int, g: torch.Generator, n_chunks: int | None = None):
        """The sequence is L/2 two-token slots; 2 * n_pairs random slots carry the keys, each key twice in a random
        order: its first slot is "key value", its second "QUERY key" with the value as target. The rest is filler.
        Returns idx (B, L), targets (B, L) (-100 off-query), dist (B, L) (tokens from the query key back to its value token;
        -1 off-query) and the token kind (B, L): 0 filler, 1 pair key, 2 pair value, 3 QUERY, 4 query key."""
        C = n_chunks or self.n_chunks
        L, P = self.window * C, self.n_pairs
        if 2 * P > L // 2:
            raise InvalidInputError(f"{P} pairs do not fit in {C} chunks")
        ko, vo = self.n_filler, self.n_filler + self.n_keys
        idx = torch.randint(0, self.n_filler, (B, L), generator=g)
        kind = torch.zeros(B, L, dtype=torch.long)
        slots = _distinct(B, L // 2, 2 * P, g).sort(-1).values  # (B, 2P) slot numbers, ascending
        which = torch.arange(P).repeat_interleave(2).expand(B, -1)  # each pair twice
        which = which.gather(1, _distinct(B, 2 * P, 2 * P, g))  # (B, 2P) random order of the occurrences
        onehot = torch.nn.functional.one_hot(which, P)  # (B, 2P, P)
        first = (onehot.cumsum(1) * onehot).sum(-1) == 1  # (B, 2P) first occurrence = the pair
        keys = _distinct(B, self.n_keys, P, g) + ko  # (B, P)
        vals = torch.randint(0, self.n_values, (B, P), generator=g) + vo
        k_tok, v_tok = keys.gather(1, which), vals.gather(1, which)  # (B, 2P)
        pos = 2 * slots  # first token of each slot
        idx.scatter_(1, pos, torch.where(first, k_tok, torch.full_like(k_tok, self.query_token)))
        idx.scatter_(1, pos + 1, torch.where(first, v_tok, k_tok))
        kind.scatter_(1, pos, torch.where(first, 1, 3))
        kind.scatter_(1, pos + 1, torch.where(first, 2, 4))
        targets = torch.full((B, L), -100, dtype=torch.long)
        targets.scatter_(1, pos + 1, torch.where(first, torch.full_like(v_tok, -100), v_tok))
        # the value's position for every occurrence: pos of the first occurrence of the same pair, + 1
        first_pos = torch.zeros(B, P, dtype=torch.long)
        first_pos.scatter_(1, which[first].view(B, P), pos[first].view(B, P))
        dist = torch.full((B, L), -1, dtype=torch.long)
        dist.scatter_(1, pos + 1, torch.where(first, -1, pos - first_pos.gather(1, which)))
        return idx, targets, dist, kind


@dataclass
class ContinualTask:
    n_tasks: int = 5
    keys_per_task: int = 8
    n_values: int = 16
    n_filler: int = 16
    window: int = 16
    n_chunks: int = 5
    n_pairs: int = 4
    n_queries: int = 4

    def __post_init__(self) -> None:
        if self.window % 2 or 2 * self.n_queries > self.window or self.n_queries % 2:
            raise InvalidInputError("window must be even and hold the queries; n_queries must be even")
        if self.n_pairs + self.n_queries // 2 > self.keys_per_task or self.n_queries > self.n_pairs:
            raise InvalidInputError("need n_queries <= n_pairs and n_pairs + n_queries/2 <= keys_per_task")
        if self.n_pairs > (self.length - 2 * self.n_queries) // 2:
            raise InvalidInputError("too many pairs for the sequence length")

    @property
    def length(self) -> int:
        return self.window * self.n_chunks

    @property
    def vocab_size(self) -> int:
        return self.n_filler + self.n_tasks * self.keys_per_task + self.n_values + 1

    @property
    def query_token(self) -> int:
        return self.vocab_size - 1

    def to_dict(self) -> dict:
        return asdict(self)

    def mapping(self, seed: int) -> torch.Tensor:
        """(n_tasks, keys_per_task) value ids: the facts of each task, fixed by the seed."""
        g = torch.Generator().manual_seed(10_000 + seed)
        return torch.randint(0, self.n_values, (self.n_tasks, self.keys_per_task), generator=g) + \
            self.n_filler + self.n_tasks * self.keys_per_task

    def batch(self, task: torch.Tensor, facts: torch.Tensor, g: torch.Generator, mode: str = "train"):
        """task (B,) task ids. Episodes of `mode`:

        facts      n_pairs of the task's facts are studied ("key fact"); half the queries ask studied keys, half
                   ask keys not studied in the episode (answerable only from what the model retained)
        bind       n_pairs task keys are bound to fresh random values for this episode only; the queries ask them
                   (answerable only from the episode: the in-context skill, across the window through memory)
        retention  filler, then queries on distinct keys of the task: facts only from what was retained
        train      the first half of the rows `facts`, the second half `bind`
        Returns idx (B, L), targets (B, L), studied (B, L) bool: the query's answer was shown in this episode."""
        B = task.shape[0]
        if mode == "train":
            h = B // 2
            parts = [self.batch(task[:h], facts, g, "facts"), self.batch(task[h:], facts, g, "bind")]
            return tuple(torch.cat([p[i] for p in parts], 0) for i in range(3))
        if mode not in ("facts", "bind", "retention"):
            raise InvalidInputError(f"unknown episode mode {mode!r}")
        L, P, Q, K = self.length, self.n_pairs, self.n_queries, self.keys_per_task
        idx = torch.randint(0, self.n_filler, (B, L), generator=g)
        order = _distinct(B, K, K, g)  # (B, K) a random order of the task's keys
        key_of = lambda j: self.n_filler + task.unsqueeze(1) * K + j  # noqa: E731  local key j -> token
        qpos = L - 2 * Q + 2 * torch.arange(Q)
        targets = torch.full((B, L), -100, dtype=torch.long)
        studied = torch.zeros(B, L, dtype=torch.bool)
        if mode == "retention":
            qj = order[:, :Q]
            q_val = facts[task.unsqueeze(1), qj]
        else:
            sj = order[:, :P]  # studied keys
            if mode == "facts":
                s_val = facts[task.unsqueeze(1), sj]
            else:
                s_val = torch.randint(0, self.n_values, (B, P), generator=g) + self.n_filler + self.n_tasks * K
            pos = 2 * _distinct(B, (L - 2 * Q) // 2, P, g)
            idx.scatter_(1, pos, key_of(sj))
            idx.scatter_(1, pos + 1, s_val)
            if mode == "facts":  # half studied, half not, in random order
                qj = torch.cat([sj[:, : Q // 2], order[:, P : P + Q // 2]], 1)
                perm = _distinct(B, Q, Q, g)
                qj = qj.gather(1, perm)
                q_val = facts[task.unsqueeze(1), qj]
                studied[:, qpos + 1] = perm < Q // 2
            else:  # distinct studied pairs
                pick = _distinct(B, P, Q, g)
                qj, q_val = sj.gather(1, pick), s_val.gather(1, pick)
                studied[:, qpos + 1] = True
        idx[:, qpos] = self.query_token
        idx[:, qpos + 1] = key_of(qj)
        targets[:, qpos + 1] = q_val
        return idx, targets, studied
