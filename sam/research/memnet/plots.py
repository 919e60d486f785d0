"""Figures (matplotlib, Agg): accuracy vs distance, accuracy matrices, forgetting dynamics, slot heatmap, survival."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = dict(memnet="MemNet", transformer="Transformer (same window)", lstm="LSTM",
              memnet_wiped="MemNet, memory wiped every chunk")
COLORS = dict(memnet="C0", transformer="C1", lstm="C2", memnet_wiped="C7")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bin_label(b, window: int) -> str:
    lo, hi = b
    return f"{lo // window}-{hi / window:g}W"


def recall_plot(summary: dict, out: Path) -> str:
    plt = _plt()
    rec = summary["recall"]
    W = rec["window"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, title in ((axes[0], "eval", f"trained length ({rec['chunks']} chunks)"),
                           (axes[1], "eval_long", f"longer sequences ({rec['long_chunks']} chunks, not trained on)")):
        for name in ("memnet", "transformer", "lstm", "memnet_wiped"):
            r = rec["models"].get(name)
            if r is None:
                continue
            mu, sd = np.array(r[key]["acc_mean"]), np.array(r[key]["acc_std"])
            x = np.arange(len(mu))
            ax.errorbar(x, mu, yerr=sd, marker="o", capsize=3, label=LABELS[name], color=COLORS[name],
                        linestyle="--" if name == "memnet_wiped" else "-")
        bins = next(iter(rec["models"].values()))[key]["bins"]
        ax.set_xticks(np.arange(len(bins)))
        ax.set_xticklabels([_bin_label(b, W) for b in bins])
        ax.axhline(1.0 / rec["n_values"], color="k", lw=0.8, ls=":", label="chance")
        ax.set_xlabel(f"distance from query back to its pair (window W = {W} tokens)")
        ax.set_ylabel("recall accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    p = out / "recall_accuracy.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p.name


def continual_plot(summary: dict, out: Path) -> str:
    plt = _plt()
    cl = summary["continual"]
    names = [n for n in ("memnet", "transformer", "lstm") if cl["models"].get(n, {}).get("sequential")]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    im = None
    for ax, name in zip(axes[0], names):
        R = np.array(cl["models"][name]["sequential"]["retention"]["R_mean"])
        im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if R[i, j] < 0.6 else "k")
        ax.set_title(f"{LABELS[name]}: retention", fontsize=9)
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    p = out / "continual_matrices.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p.name


def forgetting_plot(summary: dict, out: Path) -> str:
    plt = _plt()
    f = summary["forgetting"]
    steps = np.array(f["steps"])
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    kinds = f["kinds"]
    g_mu, g_sd = np.array(f["gate_by_kind_mean"]), np.array(f["gate_by_kind_std"])
    for k, name in enumerate(kinds):
        axes[0].errorbar(steps, g_mu[:, k], yerr=g_sd[:, k], label=name, capsize=2)
    axes[0].set_title("write gate by token kind (write frequency)")
    axes[0].legend(fontsize=7)
    for key, label in (("read_entropy", "all reads"), ("read_entropy_query", "reads at query keys")):
        axes[1].errorbar(steps, f[key + "_mean"], yerr=f[key + "_std"], label=label, capsize=2)
    axes[1].set_title("read entropy / log k (1 = uniform top-k)")
    axes[1].legend(fontsize=7)
    axes[2].errorbar(steps, f["rmst_mean"], yerr=f["rmst_std"], capsize=2, label="restricted mean lifetime")
    axes[2].set_title(f"slot lifetime (chunks, capped at {f['horizon']})")
    axes[3].errorbar(steps, f["decay_mean_mean"], yerr=f["decay_mean_std"], capsize=2, label="mean decay gate")
    axes[3].errorbar(steps, f["read_hit_mean"], yerr=f["read_hit_std"], capsize=2, label="read hits the pair's slot")
    axes[3].set_title("decay gate per chunk; read hit rate")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    p = out / "forgetting_curves.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p.name


def heatmap_plot(heatmap: dict, out: Path) -> str:
    plt = _plt()
    wm, us = np.array(heatmap["write_mass"]), np.array(heatmap["usage"])  # (N, C)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, M, title in ((axes[0], wm, "write mass per slot and chunk"), (axes[1], us, "usage per slot after each chunk")):
        im = ax.imshow(M, aspect="auto", cmap="magma", interpolation="nearest")
        for c in range(heatmap["chunks_per_episode"], M.shape[1], heatmap["chunks_per_episode"]):
            ax.axvline(c - 0.5, color="w", lw=0.6, ls="--")
        ax.set_xlabel("chunk (dashed: episode boundary, memory kept)")
        ax.set_ylabel("slot")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.8)
    p = out / "slot_heatmap.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p.name


def survival_plot(summary: dict, out: Path) -> str:
    plt = _plt()
    f = summary["forgetting"]
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = f["survival_by_probe"]
    steps = f["steps"]
    picks = sorted({0, len(curves) // 2, len(curves) - 1})
    for i in picks:
        mu, sd = np.array(curves[i]["mean"]), np.array(curves[i]["std"])
        t = np.arange(len(mu))
        ax.plot(t, mu, marker="o", label=f"step {steps[i]}")
        ax.fill_between(t, mu - sd, mu + sd, alpha=0.2)
    ax.set_xlabel("chunks since the write")
    ax.set_ylabel("P(content not yet overwritten or faded)")
    ax.set_ylim(0, 1.02)
    ax.set_title("slot survival (Kaplan-Meier)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    p = out / "slot_survival.png"
    fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return p.name
