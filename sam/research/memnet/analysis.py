"""Read-outs of memory behaviour from a MemNet trace (see MemNet.forward(trace=True)). numpy in, numpy/floats out.

write event     slot i at chunk c receives write mass  m_ci = sum_t g_t w_ti >= threshold (0.25)
lifetime        chunks from a write event until the slot's next write event (overwritten) or until the product of its
                decay gates since the write falls below 1/2 (faded); streams that end first are censored
survival S(t)   Kaplan-Meier estimate of P(lifetime > t);  RMST(H) = sum_{t=0}^{H-1} S(t), the mean lifetime capped at H
slot reuse      write events per slot per episode, over the slots written at least once
read sparsity   effective slots per read exp(H(w)) (k for a uniform top-k read, 1 for a one-hot read)
"""

from __future__ import annotations

import numpy as np


def lifetimes(write_mass: np.ndarray, decay: np.ndarray, threshold: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """write_mass, decay (B, C, N). Returns (durations, observed) for every write event: duration in chunks,
    observed=False when the stream ended before the content was overwritten or faded."""
    B, C, N = write_mass.shape
    written = write_mass >= threshold  # (B, C, N)
    durations, observed = [], []
    logd = np.log(np.clip(decay, 1e-12, 1.0))
    for b in range(B):
        for i in range(N):
            events = np.flatnonzero(written[b, :, i])
            for j, c in enumerate(events):
                end = events[j + 1] if j + 1 < len(events) else C
                # decay applied at steps c+1 .. end-1 (the decay at a step acts on what was there before its write)
                cum = np.cumsum(logd[b, c + 1 : end, i])
                fade = np.flatnonzero(cum < np.log(0.5))
                if len(fade):
                    durations.append(fade[0] + 1)
                    observed.append(True)
                elif j + 1 < len(events):
                    durations.append(end - c)
                    observed.append(True)
                else:
                    durations.append(C - c)
                    observed.append(False)
    return np.asarray(durations, dtype=float), np.asarray(observed, dtype=bool)


def kaplan_meier(durations: np.ndarray, observed: np.ndarray, horizon: int) -> np.ndarray:
    """S(t) for t = 0..horizon: P(lifetime > t), with right censoring."""
    S = np.ones(horizon + 1)
    s = 1.0
    for t in range(1, horizon + 1):
        at_risk = np.sum(durations >= t)
        died = np.sum((durations == t) & observed)
        if at_risk > 0:
            s *= 1.0 - died / at_risk
        S[t] = s
    return S


def rmst(S: np.ndarray) -> float:
    """Restricted mean survival time over the curve's horizon: sum_{t < H} S(t)."""
    return float(S[:-1].sum())


def slot_reuse(write_mass: np.ndarray, threshold: float = 0.25, n_episodes: int = 1) -> dict:
    """Write events per slot per episode (over the slots written at least once) and the fraction of slots written."""
    events = (write_mass >= threshold).sum(1)  # (B, N)
    used = events > 0
    per_slot = events[used].mean() / n_episodes if used.any() else 0.0
    return dict(writes_per_used_slot=float(per_slot), slots_used=float(used.mean()))


def effective_slots(read_entropy: np.ndarray) -> float:
    """Mean exp(H) over reads: read_entropy holds per-token entropies (nats), averaged over heads."""
    return float(np.exp(read_entropy).mean())


def read_hits(read_slot: np.ndarray, write_slot: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """For every query (dist >= 0): did any read head's top slot equal the slot its pair's value token wrote to?
    read_slot (B, L, Hr), write_slot (B, L), dist (B, L). Returns a bool array over queries (row-major)."""
    b, p = np.nonzero(dist >= 0)
    src = write_slot[b, p - dist[b, p]]
    return (read_slot[b, p] == src[:, None]).any(-1)


def gate_by_kind(gate: np.ndarray, kind: np.ndarray, n_kinds: int) -> list:
    """Mean write gate (over write heads) for each token kind; NaN for kinds that do not occur."""
    g = gate.mean(-1)
    return [float(g[kind == k].mean()) if (kind == k).any() else float("nan") for k in range(n_kinds)]


def decay_by_owner(write_mass: np.ndarray, decay: np.ndarray, write_slot: np.ndarray, kind: np.ndarray,
                   window: int, n_kinds: int, threshold: float = 0.25) -> list:
    """Mean decay gate applied to a slot at the step after it was written, grouped by the kind of token that wrote it
    (the last token of the chunk whose write went mostly there). Shows whether forgetting depends on content."""
    B, C, N = write_mass.shape
    sums, counts = np.zeros(n_kinds), np.zeros(n_kinds)
    for c in range(C - 1):
        ws = write_slot[:, c * window : (c + 1) * window]  # (B, T)
        kd = kind[:, c * window : (c + 1) * window]
        for b in range(B):
            owner = {}
            for t in range(ws.shape[1]):
                owner[int(ws[b, t])] = int(kd[b, t])
            for i, k in owner.items():
                if write_mass[b, c, i] >= threshold:
                    sums[k] += decay[b, c + 1, i]
                    counts[k] += 1
    return [float(s / n) if n else float("nan") for s, n in zip(sums, counts)]
