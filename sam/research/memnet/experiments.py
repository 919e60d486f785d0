"""The three experiments as independent jobs: one (experiment, model, seed) per call, JSON-able dict out.

Models of one experiment share the training data stream of a seed (same generator seed), the optimiser, the schedule,
the number of steps and the batch size; the baselines are sized to MemNet's parameter count (match_*).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import analysis
from .baselines import LSTMBaseline, WindowTransformer, match_lstm, match_transformer
from .config import MemNetConfig, MemoryConfig
from .model import MemNet
from .tasks import ContinualTask, RecallTask
from .train import autocast, make_optimizer, train

MODELS = ("memnet", "transformer", "lstm")
KINDS = ("filler", "pair key", "pair value", "QUERY", "query key")


@dataclass
class ModelSize:
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    bottleneck_dim: int = 32
    n_slots: int = 64
    slot_dim: int = 64
    n_read_heads: int = 2
    n_write_heads: int = 1
    top_k: int = 4
    init_temperature: float = 30.0  # sharper initial reads than MemoryConfig's default (single-seed dev comparison)
    read_entropy_weight: float = 0.0


@dataclass
class RecallSettings:
    task: RecallTask = field(default_factory=lambda: RecallTask(n_filler=16, n_keys=16, n_values=16, window=16,
                                                                n_chunks=8, n_pairs=6))
    size: ModelSize = field(default_factory=ModelSize)
    batch: int = 256
    steps: int = 4000
    lr: float = 2e-3
    eval_batches: int = 16
    eval_batch: int = 256
    long_chunks: int = 32  # length-generalisation evaluation: same pairs, sequences this many chunks long
    probes: int = 15  # forgetting-dynamics probes over training (MemNet)
    probe_batch: int = 32
    probe_episodes: int = 4  # episodes per probe stream (memory carried across them)


@dataclass
class ContinualSettings:
    task: ContinualTask = field(default_factory=ContinualTask)
    size: ModelSize = field(default_factory=ModelSize)
    batch: int = 256
    steps_per_task: int = 400
    lr: float = 2e-3
    eval_batches: int = 4


def memnet_config(vocab_size: int, window: int, s: ModelSize) -> MemNetConfig:
    return MemNetConfig(vocab_size=vocab_size, d_model=s.d_model, n_layer=s.n_layer, n_head=s.n_head, window=window,
                        bottleneck_dim=s.bottleneck_dim, read_entropy_weight=s.read_entropy_weight,
                        memory=MemoryConfig(n_slots=s.n_slots, slot_dim=s.slot_dim, n_read_heads=s.n_read_heads,
                                            n_write_heads=s.n_write_heads, top_k=s.top_k,
                                            init_temperature=s.init_temperature))


def model_specs(vocab_size: int, window: int, s: ModelSize) -> dict:
    """Constructor arguments and parameter counts of the three models, the baselines matched to MemNet."""
    cfg = memnet_config(vocab_size, window, s)
    with torch.device("meta"):
        n_mem = MemNet(cfg).num_params()
    tf, n_tf = match_transformer(n_mem, vocab_size, s.d_model, s.n_head, window)
    ls, n_ls = match_lstm(n_mem, vocab_size)
    return dict(memnet=dict(config=cfg.to_dict(), params=n_mem), transformer=dict(config=tf, params=n_tf),
                lstm=dict(config=ls, params=n_ls))


def build(name: str, spec: dict, seed: int, device) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "memnet":
        m = MemNet(MemNetConfig.from_dict(spec["memnet"]["config"]))
    elif name == "transformer":
        m = WindowTransformer(**spec["transformer"]["config"])
    elif name == "lstm":
        m = LSTMBaseline(**spec["lstm"]["config"])
    else:
        raise ValueError(name)
    return m.to(device)


def distance_bins(window: int, length: int) -> list[tuple[int, int]]:
    """[0, W), [W, 2W), [2W, 4W), ... up to the sequence length."""
    bins, lo, hi = [], 0, window
    while lo < length:
        bins.append((lo, min(hi, length)))
        lo, hi = hi, 2 * hi
    return bins


def _cpu(t):
    return t.detach().float().cpu().numpy() if torch.is_floating_point(t) else t.detach().cpu().numpy()


# ---------------------------------------------------------------------- experiment 1 (+ 3): long-term recall
@torch.no_grad()
def _recall_eval(model, task: RecallTask, seed: int, S: RecallSettings, device, n_chunks: int, wipe: bool = False):
    g = torch.Generator().manual_seed(50_000 + seed)  # the same test sequences for every model of a seed
    L = task.window * n_chunks
    bins = distance_bins(task.window, L)
    hits, counts = np.zeros(len(bins)), np.zeros(len(bins))
    for _ in range(S.eval_batches):
        idx, targets, dist, kind = task.batch(S.eval_batch, g, n_chunks)
        kw = dict(wipe_memory=True) if wipe else {}
        with autocast(device):
            out = model(idx.to(device), **kw)
        pred = out.logits.argmax(-1).cpu()
        m = targets >= 0
        ok, d = (pred[m] == targets[m]).numpy(), dist[m].numpy()
        for j, (lo, hi) in enumerate(bins):
            sel = (d >= lo) & (d < hi)
            hits[j] += ok[sel].sum()
            counts[j] += sel.sum()
    acc = (hits / np.maximum(counts, 1)).tolist()
    return dict(bins=[list(b) for b in bins], acc=acc, n=counts.tolist(), overall=float(hits.sum() / counts.sum()))


@torch.no_grad()
def memory_probe(model: MemNet, task: RecallTask, S: RecallSettings, device, seed: int, episodes: int,
                 keep_trace: bool = False) -> dict:
    """Runs `episodes` recall episodes back to back through one memory and reads out its behaviour."""
    g = torch.Generator().manual_seed(70_000 + seed)
    eps = [task.batch(S.probe_batch, g) for _ in range(episodes)]
    idx = torch.cat([e[0] for e in eps], 1)
    targets = torch.cat([e[1] for e in eps], 1)
    dist, kind = torch.cat([e[2] for e in eps], 1), torch.cat([e[3] for e in eps], 1)
    with autocast(device):
        out = model(idx.to(device), trace=True)
    tr = {k: _cpu(v) for k, v in out.trace.items()}
    pred = out.logits.argmax(-1).cpu()
    m = targets >= 0
    d, kd = dist.numpy(), kind.numpy()
    C = tr["write_mass"].shape[1]
    dur, obs = analysis.lifetimes(tr["write_mass"], tr["decay"])
    horizon = task.n_chunks
    S_t = analysis.kaplan_meier(dur, obs, horizon)
    q = kd == 4
    res = dict(
        acc=float((pred[m] == targets[m]).float().mean()),
        gate_by_kind=analysis.gate_by_kind(tr["gate"], kd, len(KINDS)),
        write_rate=float((tr["gate"] >= 0.5).mean()),
        read_entropy=float(tr["read_entropy"].mean() / math.log(max(model.config.memory.top_k, 2))),
        read_entropy_query=float(tr["read_entropy"][q].mean() / math.log(max(model.config.memory.top_k, 2))),
        effective_slots=analysis.effective_slots(tr["read_entropy"]),
        effective_slots_query=analysis.effective_slots(tr["read_entropy"][q]),
        read_hit=float(analysis.read_hits(tr["read_slot"], tr["write_slot"], d).mean()),
        rmst=analysis.rmst(S_t), survival=S_t.tolist(), write_events=int(len(dur)),
        decay_mean=float(tr["decay"].mean()),
        decay_by_owner=analysis.decay_by_owner(tr["write_mass"], tr["decay"], tr["write_slot"], kd, task.window,
                                               len(KINDS)),
        **analysis.slot_reuse(tr["write_mass"], n_episodes=episodes),
    )
    if keep_trace:  # one stream for the heatmaps: (N, C)
        res["heatmap"] = dict(write_mass=tr["write_mass"][0].T.round(3).tolist(), usage=tr["usage"][0].T.round(3).tolist(),
                              chunks_per_episode=C // episodes)
    return res


def recall_job(name: str, seed: int, S: RecallSettings, device) -> dict:
    task = S.task
    spec = model_specs(task.vocab_size, task.window, S.size)
    model = build(name, spec, seed, device)
    g = torch.Generator().manual_seed(seed)  # training stream: identical for the three models of a seed

    def batch_fn(step):
        idx, targets, _, _ = task.batch(S.batch, g)
        return idx.to(device), targets.to(device)

    probes = []
    every = max(1, S.steps // S.probes) if S.probes else 0

    def on_step(step, out):
        if name == "memnet" and every and (step % every == 0 or step == S.steps - 1):
            model.eval()
            probes.append(dict(step=step, **memory_probe(model, task, S, device, seed, S.probe_episodes)))
            model.train()

    t0 = time.perf_counter()
    _, log = train(model, batch_fn, S.steps, S.lr, device, on_step=on_step)
    train_s = time.perf_counter() - t0
    model.eval()
    res = dict(experiment="recall", model=name, seed=seed, params=spec[name]["params"], steps=S.steps,
               train_s=train_s, loss_log=log,
               eval=_recall_eval(model, task, seed, S, device, task.n_chunks),
               eval_long=_recall_eval(model, task, seed, S, device, S.long_chunks))
    if name == "memnet":
        res["eval_wiped"] = _recall_eval(model, task, seed, S, device, task.n_chunks, wipe=True)
        res["eval_long_wiped"] = _recall_eval(model, task, seed, S, device, S.long_chunks, wipe=True)
        res["probes"] = probes
        res["final_probe"] = memory_probe(model, task, S, device, seed, S.probe_episodes, keep_trace=True)
    return res


# ---------------------------------------------------------------------- experiment 2: continual learning
def _reset(model, B: int, device):
    return model.reset(B, device) if hasattr(model, "reset") else None


def _clone(state):
    if state is None:
        return None
    if hasattr(state, "clone"):
        return state.clone()
    return tuple(s.clone() for s in state)


@torch.no_grad()
def _continual_eval(model, S: ContinualSettings, facts, seed: int, task_id: int, state, device, mode: str) -> float:
    g = torch.Generator().manual_seed(90_000 + 100 * seed + task_id)  # same episodes for every model and stage
    hits = n = 0
    for _ in range(S.eval_batches):
        idx, targets, _ = S.task.batch(torch.full((S.batch,), task_id), facts, g, mode)
        with autocast(device):
            out = model(idx.to(device), state=_clone(state))
        pred = out.logits.argmax(-1).cpu()
        m = targets >= 0
        hits += int((pred[m] == targets[m]).sum())
        n += int(m.sum())
    return hits / n


def _eval_row(model, S, facts, seed, state, device, stateful: bool) -> dict:
    T = S.task.n_tasks
    row = dict(retention=[_continual_eval(model, S, facts, seed, j, state, device, "retention") for j in range(T)],
               in_context=[_continual_eval(model, S, facts, seed, j, state, device, "bind") for j in range(T)])
    if stateful:  # the same weights with a fresh memory / recurrent state at test time
        fresh = _reset(model, S.batch, device)
        row["retention_reset"] = [_continual_eval(model, S, facts, seed, j, fresh, device, "retention")
                                  for j in range(T)]
    return row


def gem_metrics(R: np.ndarray) -> dict:
    """GEM (Lopez-Paz & Ranzato 2017): ACC = mean_j R[T-1, j]; BWT = mean_{j<T-1} R[T-1, j] - R[j, j]."""
    T = R.shape[0]
    return dict(acc=float(R[-1].mean()), bwt=float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)])) if T > 1 else 0.0)


def continual_job(name: str, seed: int, S: ContinualSettings, device, mode: str = "sequential") -> dict:
    task = S.task
    spec = model_specs(task.vocab_size, task.window, S.size)
    model = build(name, spec, seed, device)
    facts = task.mapping(seed)
    stateful = name in ("memnet", "lstm")
    state = _reset(model, S.batch, device)
    T = task.n_tasks
    g = torch.Generator().manual_seed(20_000 + seed)
    opt = make_optimizer(model, S.lr)
    t0 = time.perf_counter()
    rows, logs = [], []
    if mode == "sequential":
        for t in range(T):
            def batch_fn(step, t=t):
                idx, targets, _ = task.batch(torch.full((S.batch,), t), facts, g, "train")
                return idx.to(device), targets.to(device)

            state, log = train(model, batch_fn, S.steps_per_task, S.lr, device, carry_state=stateful, state=state,
                               optimizer=opt)
            logs.append(log)
            rows.append(_eval_row(model, S, facts, seed, state, device, stateful))
    elif mode == "joint":
        def batch_fn(step):
            idx, targets, _ = task.batch(torch.randint(0, T, (S.batch,), generator=g), facts, g, "train")
            return idx.to(device), targets.to(device)

        state, log = train(model, batch_fn, T * S.steps_per_task, S.lr, device, carry_state=stateful, state=state,
                           optimizer=opt)
        logs.append(log)
        rows.append(_eval_row(model, S, facts, seed, state, device, stateful))
    else:
        raise ValueError(mode)
    out = dict(experiment="continual", model=name, seed=seed, mode=mode, params=spec[name]["params"],
               steps=S.steps_per_task * T, train_s=time.perf_counter() - t0, loss_log=logs, rows=rows)
    for key in rows[0]:
        R = np.array([r[key] for r in rows])
        out[key] = dict(R=R.tolist(), **(gem_metrics(R) if mode == "sequential" else dict(acc=float(R[-1].mean()))))
    return out


def settings_dict(S) -> dict:
    return asdict(S)
