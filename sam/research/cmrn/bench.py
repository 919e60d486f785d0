"""`sam bench cmrn`: CMRN against a same-parameter Transformer on real text, every claim of design notes 004 measured.

Per seed, in one run:
  perplexity   both models trained on the same Shakespeare windows (half of them carry a planted fact) for the same
               steps; held-out loss curves, final held-out bits/byte and perplexity
  recall       a fact early in a long held-out document, its key asked for after `distance` bytes; CMRN streams the
               document in chunks with update_memory (FAISS memory), with and without memory; the Transformer sees
               its window
  domain       the A-trained CMRN gets a Python expert trained with everything else frozen (continual_train), against
               retraining CMRN on A+B from scratch, fine-tuning all of CMRN on B, and fine-tuning the Transformer on B
  routing      per-expert usage on each domain, how differently the domains route, the symbolic expert's share
Once:
  cost         tokens/s and peak memory vs sequence length (forward, batch 1)

Writes results/cmrn/cmrn_bench.json and PNGs; prints rich tables.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sam.bench.results import write_result
from sam.research.cmrn.config import CMRNConfig
from sam.research.cmrn.data import lm_batch, load_domain, make_fact, random_windows
from sam.research.cmrn.model import CMRN
from sam.research.cmrn.trainer import CMRNTrainer, TrainingConfig, evaluate, train_lm
from sam.research.cmrn.transformer import TransformerLM, matched_transformer

LN2 = math.log(2)


def settings(smoke: bool) -> dict:
    if smoke:
        return dict(
            model=dict(d_model=32, expert_hidden=64, pattern_slots=64, symbolic_props=42, temporal_layers=2,
                       memory_dim=16, memory_k=4, memory_size=4096, scan_chunk=32),
            train=dict(learning_rate=3e-3, batch_size=4, seq_len=64, segment_len=32, max_steps=16, warmup_steps=4,
                       fact_rate=0.5, eval_every=8, eval_batches=2),
            domain_steps=8, final_eval_batches=2, recall_distances=[16, 96], recall_docs=3,
            cost_lengths=[64, 256], cost_reps=1, routing_batches=1)
    return dict(
        model=dict(d_model=256, expert_hidden=512, pattern_slots=512, symbolic_props=340, temporal_layers=3,
                   memory_dim=64, memory_k=8, memory_size=65536, scan_chunk=128),
        train=dict(learning_rate=2e-3, batch_size=64, seq_len=512, segment_len=128, max_steps=400, warmup_steps=40,
                   fact_rate=0.5, eval_every=50, eval_batches=4),
        domain_steps=200, final_eval_batches=8, recall_distances=[64, 256, 1024, 4096, 8192], recall_docs=16,
        cost_lengths=[512, 2048, 8192, 32768], cost_reps=2, routing_batches=2)


def ms(v) -> dict:
    a = np.asarray([x for x in v if x is not None], dtype=float)
    if a.size == 0:
        return dict(mean=None, std=None, values=[])
    return dict(mean=float(a.mean()), std=float(a.std()), values=[float(x) for x in a])


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def clone_cmrn(m: CMRN) -> CMRN:
    """A fresh CMRN with the same config, experts and weights (no deepcopy of the FAISS-backed memory)."""
    c = CMRN(m.config)
    for e in m.added_experts:
        c.add_expert(e["type"], e["domain"])
    c.load_state_dict(m.state_dict())
    return c.to(m.wte.weight.device)


# ---------------------------------------------------------------------- recall
def recall_docs(filler: np.ndarray, distance: int, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Documents: 16 bytes of text, a fact, `distance` bytes of held-out text, the fact's key and value again.

    Returns (bytes, q) with q the index of the first value digit of the repeat (the 4 digits to predict)."""
    docs = []
    for _ in range(n):
        k, v = make_fact(rng)
        pre, mid = random_windows(filler, 1, 16, rng)[0], random_windows(filler, 1, distance, rng)[0]
        seq = np.concatenate([pre, np.frombuffer(k + v, np.uint8), mid, np.frombuffer(k + v, np.uint8)])
        docs.append((seq, seq.size - 5))
    return docs


def _digits_ok(logits: torch.Tensor, seq: np.ndarray, q: int, offset: int) -> tuple[bool, float]:
    """logits over positions [offset, ...): are the 4 digits at q..q+3 each the argmax from the previous position?"""
    pred = logits[q - 1 - offset : q + 3 - offset].argmax(-1).cpu().numpy()
    ok = pred == seq[q : q + 4]
    return bool(ok.all()), float(ok.mean())


@torch.no_grad()
def recall_cmrn(model: CMRN, docs, chunk: int, use_memory: bool, device) -> tuple[float, float]:
    model.eval()
    full = digit = 0.0
    for seq, q in docs:
        model.reset_memory()
        ids = torch.from_numpy(seq.astype(np.int64)).to(device).unsqueeze(0)
        logits = []
        for s in range(0, ids.shape[1], chunk):
            logits.append(model(ids[:, s : s + chunk], use_memory=use_memory, update_memory=True).logits[0])
        a, b = _digits_ok(torch.cat(logits), seq, q, 0)
        full, digit = full + a, digit + b
    model.reset_memory()
    return full / len(docs), digit / len(docs)


@torch.no_grad()
def recall_cmrn_state_only(model: CMRN, docs, chunk: int, device) -> tuple[float, float]:
    """Memory off: only the carried temporal state links the chunks. Same maths as streaming chunk by chunk with
    use_memory=False (forward_segments carries the states the same way), batched over the documents."""
    model.eval()
    x = torch.from_numpy(np.stack([s for s, _ in docs]).astype(np.int64)).to(device)  # same length per distance
    logits = model.forward_segments(x, segment_len=chunk, use_memory=False).logits
    oks = [_digits_ok(logits[i], seq, q, 0) for i, (seq, q) in enumerate(docs)]
    return float(np.mean([a for a, _ in oks])), float(np.mean([b for _, b in oks]))


@torch.no_grad()
def recall_transformer(model: TransformerLM, docs, device) -> tuple[float, float]:
    model.eval()
    W = model.config.block_size
    full = digit = 0.0
    for seq, q in docs:
        start = max(0, seq.size - W)
        ids = torch.from_numpy(seq[start:].astype(np.int64)).to(device).unsqueeze(0)
        a, b = _digits_ok(model(ids)[0][0], seq, q, start)
        full, digit = full + a, digit + b
    return full / len(docs), digit / len(docs)


# ---------------------------------------------------------------------- routing
@torch.no_grad()
def routing_usage(model: CMRN, arr: np.ndarray, tc: TrainingConfig, batches: int, device) -> dict:
    model.eval()
    model.router.reset_usage_statistics()
    rng = np.random.default_rng(99)
    for _ in range(batches):
        x = torch.from_numpy(random_windows(arr, tc.batch_size, tc.seq_len, rng).astype(np.int64)).to(device)
        model.forward_segments(x, segment_len=tc.segment_len)
    s = model.router.get_usage_statistics()
    model.router.reset_usage_statistics()
    return dict(fractions=s["expert_fractions"], mean_weight=s["mean_weight"])


def routing_report(model: CMRN, A, B, tc, batches, device) -> dict:
    ua, ub = routing_usage(model, A.val, tc, batches, device), routing_usage(model, B.val, tc, batches, device)
    tv = 0.5 * float(np.abs(np.array(ua["fractions"]) - np.array(ub["fractions"])).sum())
    types = [e.expert_type for e in model.experts]
    sym = [i for i, t in enumerate(types) if t == "symbolic"]
    return dict(types=types, domains=[e.domain for e in model.experts], usage_A=ua, usage_B=ub, tv_distance=tv,
                symbolic_share_A=sum(ua["fractions"][i] for i in sym), symbolic_share_B=sum(ub["fractions"][i] for i in sym),
                symbolic_weight_A=sum(ua["mean_weight"][i] for i in sym),
                symbolic_weight_B=sum(ub["mean_weight"][i] for i in sym))


# ---------------------------------------------------------------------- cost
def _stream(cm: CMRN, ids: torch.Tensor, chunk: int) -> None:
    for s in range(0, ids.shape[1], chunk):  # outputs are dropped: only the model's state and memory persist
        cm(ids[:, s : s + chunk], update_memory=True)


@torch.no_grad()
def cost_curve(cmrn_cfg: CMRNConfig, tf_like, lengths, reps: int, chunk: int, device) -> list[dict]:
    rows = []
    cm = CMRN(cmrn_cfg).to(device).eval()
    for L in lengths:
        tf = TransformerLM(type(tf_like)(**{**tf_like.to_dict(), "block_size": L})).to(device).eval()
        ids = torch.randint(0, 256, (1, L), device=device)
        row = dict(length=L)
        runs = dict(
            transformer=lambda: tf(ids),
            cmrn_no_memory=lambda: cm(ids, use_memory=False),
            cmrn_stream_memory=lambda: _stream(cm, ids, chunk),
        )
        for name, fn in runs.items():
            try:
                times, peaks = [], []
                for r in range(reps + 1):
                    cm.reset_memory()
                    if torch.device(device).type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                    _sync(device)
                    t0 = time.perf_counter()
                    fn()
                    _sync(device)
                    if r:  # first run is warm-up
                        times.append(time.perf_counter() - t0)
                        if torch.device(device).type == "cuda":
                            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
                t = float(np.median(times))
                row[name] = dict(seconds=t, tokens_per_s=L / t, peak_mib=max(peaks) if peaks else None,
                                 memory_store_mib=(cm.memory.stats()["bytes"] / 2**20) if name == "cmrn_stream_memory" else None)
            except torch.OutOfMemoryError:
                row[name] = dict(seconds=None, tokens_per_s=None, peak_mib=None, oom=True)
        cm.reset_memory()
        rows.append(row)
        del tf
    return rows


# ---------------------------------------------------------------------- one seed
def run_seed(seed: int, S: dict, A, B, cmrn_cfg: CMRNConfig, tf_cfg, device, progress, task, domain: bool = True
             ) -> dict:
    tr = S["train"]
    tc = TrainingConfig(**tr, seed=seed)
    tcB = TrainingConfig(**{**tr, "fact_rate": 0.0}, seed=seed + 100)
    evalA = {"A": A.val}
    step = lambda n: progress.advance(task, 1)  # noqa: E731
    res = dict(seed=seed)

    # --- perplexity: same batches (same rng seed), same steps
    torch.manual_seed(seed)
    cm = CMRN(cmrn_cfg).to(device)
    h_cm = CMRNTrainer(cm, tc, device).train(A.train, evalA, on_step=step)
    torch.manual_seed(seed)
    tf = TransformerLM(tf_cfg).to(device)
    h_tf = train_lm(tf, tf.parameters(), _single(A.train, tc, device), tc, device, eval_sets=evalA, on_step=step)
    fe = S["final_eval_batches"]
    res["ppl"] = dict(
        cmrn_loss=evaluate(cm, A.val, tc, device, fe), transformer_loss=evaluate(tf, A.val, tc, device, fe),
        cmrn_loss_no_memory=_eval_no_mem(cm, A.val, tc, device, fe),
        cmrn_train_s=h_cm["wall_s"], transformer_train_s=h_tf["wall_s"],
        cmrn_tokens_per_s=h_cm["tokens"] / h_cm["wall_s"], transformer_tokens_per_s=h_tf["tokens"] / h_tf["wall_s"],
        curves=dict(cmrn=_curve(h_cm, "A"), transformer=_curve(h_tf, "A")))

    # --- long-context recall on held-out Shakespeare
    rng = np.random.default_rng(seed + 7)
    rec = {}
    for d in S["recall_distances"]:
        docs = recall_docs(A.val, d, S["recall_docs"], rng)
        rec[str(d)] = dict(
            cmrn_memory=recall_cmrn(cm, docs, tc.segment_len, True, device),
            cmrn_no_memory=recall_cmrn_state_only(cm, docs, tc.segment_len, device),
            transformer=recall_transformer(tf, docs, device))
        progress.advance(task, 1)
    res["recall"] = rec
    if not domain:
        return res

    # --- adding a domain (B = Python stdlib)
    evalAB = {"A": A.val, "B": B.val}
    dom = dict(A_only=dict(A=res["ppl"]["cmrn_loss"], B=evaluate(cm, B.val, tc, device, fe)))
    stepsB = S["domain_steps"]
    # retrain from scratch on A+B, as many steps as A then B took
    torch.manual_seed(seed)
    rt = CMRN(cmrn_cfg).to(device)
    mix = _mixed_sampler(A.train, B.train, tc, device)
    h_rt = train_lm(rt, rt.parameters(), mix, tc, device, steps=tc.max_steps + stepsB, eval_sets=evalAB, on_step=step)
    dom["retrain_AB"] = dict(A=evaluate(rt, A.val, tc, device, fe), B=evaluate(rt, B.val, tc, device, fe),
                             wall_s=h_rt["wall_s"], steps=h_rt["steps"], curve=_curve(h_rt, "B"))
    # add a Python expert, train it alone (router row + expert), everything else frozen
    ad = clone_cmrn(cm)
    trainer = CMRNTrainer(ad, tcB, device)
    new = trainer.add_domain_expert("python", {"type": "general"})
    frozen_before = {k: v.detach().clone() for k, v in ad.state_dict().items() if not k.startswith(f"experts.{new}.")
                     and not k.startswith("router.extra.")}
    h_ad = trainer.continual_train(B.train, "python", freeze_existing_experts=True, eval_data=evalAB, steps=stepsB,
                                   on_step=step)
    unchanged = all(torch.equal(v, ad.state_dict()[k]) for k, v in frozen_before.items())
    first_reach = next((w for w, l in zip(h_ad["eval_wall_s"], h_ad["eval"]["B"]) if l <= dom["retrain_AB"]["B"]), None)
    dom["add_expert"] = dict(A=evaluate(ad, A.val, tc, device, fe), B=evaluate(ad, B.val, tc, device, fe),
                             wall_s=h_ad["wall_s"], steps=h_ad["steps"], trainable=h_ad["trainable_parameters"],
                             frozen_unchanged=unchanged, curve=_curve(h_ad, "B"), wall_to_reach_retrain_B=first_reach)
    # fine-tune every CMRN parameter on B (the forgetting comparator)
    ft = clone_cmrn(cm)
    h_ft = train_lm(ft, ft.parameters(), _single(B.train, tcB, device), tcB, device, steps=stepsB, eval_sets=evalAB,
                    on_step=step)
    dom["finetune_all"] = dict(A=evaluate(ft, A.val, tc, device, fe), B=evaluate(ft, B.val, tc, device, fe),
                               wall_s=h_ft["wall_s"], steps=h_ft["steps"], curve=_curve(h_ft, "B"))
    h_tft = train_lm(tf, tf.parameters(), _single(B.train, tcB, device), tcB, device, steps=stepsB, eval_sets=evalAB,
                     on_step=step)
    dom["transformer_A"] = dict(A=res["ppl"]["transformer_loss"])
    dom["transformer_finetune_B"] = dict(A=evaluate(tf, A.val, tc, device, fe), B=evaluate(tf, B.val, tc, device, fe),
                                         wall_s=h_tft["wall_s"], curve=_curve(h_tft, "B"))
    dom["time_ratio_add_over_retrain"] = dom["add_expert"]["wall_s"] / dom["retrain_AB"]["wall_s"]
    res["domain"] = dom

    # --- routing
    rb = S["routing_batches"]
    res["routing"] = dict(A_only=routing_report(cm, A, B, tc, rb, device), retrain_AB=routing_report(rt, A, B, tc, rb, device),
                          add_expert=routing_report(ad, A, B, tc, rb, device))
    progress.advance(task, 1)
    return res


@torch.no_grad()
def _eval_no_mem(m: CMRN, arr, tc, device, batches) -> float:
    m.eval()
    rng = np.random.default_rng(1234)
    tot = 0.0
    for _ in range(batches):
        x, y = lm_batch(arr, tc.batch_size, tc.seq_len, rng, device)
        tot += float(m.forward_segments(x, y, tc.segment_len, use_memory=False).lm_loss)
    return tot / batches


def _curve(h: dict, key: str) -> dict:
    return dict(step=h["eval_step"], wall_s=h["eval_wall_s"], loss=h["eval"].get(key, []),
                **({"A": h["eval"]["A"]} if "A" in h["eval"] and key != "A" else {}))


def _single(arr, tc, device):
    return lambda rng: lm_batch(arr, tc.batch_size, tc.seq_len, rng, device, tc.fact_rate)


def _mixed_sampler(a, b, tc, device):
    """Half of each batch from A (with planted facts, as A was trained), half from B."""
    def f(rng):
        h = tc.batch_size // 2
        xa, ya = lm_batch(a, tc.batch_size - h, tc.seq_len, rng, device, tc.fact_rate)
        xb, yb = lm_batch(b, h, tc.seq_len, rng, device)
        return torch.cat([xa, xb]), torch.cat([ya, yb])

    return f


# ---------------------------------------------------------------------- summary, tables, plots
def _loss_at_wall(curve: dict, wall: float) -> float | None:
    """Held-out loss interpolated at a training wall time (None past the end of the curve)."""
    if not curve["wall_s"] or wall > curve["wall_s"][-1]:
        return None
    return float(np.interp(wall, [0.0] + curve["wall_s"], [curve["loss"][0]] + curve["loss"]))


def summarise(all_seeds: list[dict], cost: list[dict] | None, S: dict) -> dict:
    seeds = all_seeds
    g = lambda f: ms([f(r) for r in seeds])  # noqa: E731
    out = dict(ppl={}, recall={}, domain={}, routing={}, n_seeds=dict(ppl=len(all_seeds), recall=len(all_seeds)))
    for k in ("cmrn_loss", "transformer_loss", "cmrn_loss_no_memory", "cmrn_tokens_per_s", "transformer_tokens_per_s",
              "cmrn_train_s", "transformer_train_s"):
        out["ppl"][k] = g(lambda r: r["ppl"][k])
    for k in ("cmrn_loss", "transformer_loss", "cmrn_loss_no_memory"):
        out["ppl"][k.replace("loss", "bpb")] = g(lambda r: r["ppl"][k] / LN2)
        out["ppl"][k.replace("loss", "ppl")] = g(lambda r: math.exp(r["ppl"][k]))
    # compute-matched view: CMRN's held-out loss after as much training wall time as the whole Transformer run took
    out["ppl"]["cmrn_loss_at_transformer_wall"] = g(
        lambda r: _loss_at_wall(r["ppl"]["curves"]["cmrn"], r["ppl"]["curves"]["transformer"]["wall_s"][-1]))
    for d in S["recall_distances"]:
        out["recall"][str(d)] = {m: dict(exact=g(lambda r: r["recall"][str(d)][m][0]),
                                         digit=g(lambda r: r["recall"][str(d)][m][1]))
                                 for m in ("cmrn_memory", "cmrn_no_memory", "transformer")}
    seeds = [r for r in all_seeds if "domain" in r]
    out["n_seeds"]["domain"] = out["n_seeds"]["routing"] = len(seeds)
    if not seeds:
        out["cost"] = cost
        return out
    for v in ("A_only", "retrain_AB", "add_expert", "finetune_all", "transformer_finetune_B"):
        out["domain"][v] = {k: g(lambda r: r["domain"][v].get(k)) for k in ("A", "B", "wall_s")}
    out["domain"]["transformer_A"] = g(lambda r: r["domain"]["transformer_A"]["A"])
    out["domain"]["time_ratio_add_over_retrain"] = g(lambda r: r["domain"]["time_ratio_add_over_retrain"])
    out["domain"]["add_expert_reached_retrain_B"] = [r["domain"]["add_expert"]["wall_to_reach_retrain_B"] is not None
                                                     for r in seeds]
    out["domain"]["frozen_unchanged"] = all(r["domain"]["add_expert"]["frozen_unchanged"] for r in seeds)
    out["domain"]["add_expert_trainable_parameters"] = seeds[0]["domain"]["add_expert"]["trainable"]

    def retrain_wall_to(r):  # wall time the A+B retrain needed to reach the add-expert model's final B loss
        c, target = r["domain"]["retrain_AB"]["curve"], r["domain"]["add_expert"]["B"]
        return next((w for w, l in zip(c["wall_s"], c["loss"]) if l <= target), None)

    out["domain"]["retrain_wall_to_add_expert_B"] = g(retrain_wall_to)
    out["domain"]["time_ratio_add_over_retrain_at_equal_B"] = g(
        lambda r: r["domain"]["add_expert"]["wall_s"] / retrain_wall_to(r) if retrain_wall_to(r) else None)
    for v in ("A_only", "retrain_AB", "add_expert"):
        rr = [r["routing"][v] for r in seeds]
        out["routing"][v] = dict(types=rr[0]["types"], domains=rr[0]["domains"],
                                 usage_A=np.mean([x["usage_A"]["fractions"] for x in rr], 0).tolist(),
                                 usage_B=np.mean([x["usage_B"]["fractions"] for x in rr], 0).tolist(),
                                 tv_distance=ms([x["tv_distance"] for x in rr]),
                                 symbolic_share_A=ms([x["symbolic_share_A"] for x in rr]),
                                 symbolic_share_B=ms([x["symbolic_share_B"] for x in rr]))
    out["cost"] = cost
    return out


def _f(d, scale=1.0, prec=3):
    if d is None or d.get("mean") is None:
        return "n/a"
    return f"{d['mean'] * scale:.{prec}f} ± {d['std'] * scale:.{prec}f}"


def print_tables(res: dict, console) -> None:
    from rich.table import Table

    s, meta = res["summary"], res["meta"]
    for k, name in (("A", "A shakespeare"), ("B", "B python stdlib")):
        d = meta["data"][k]
        console.print(f"data {name}: {d['train_docs']} train documents ({d['train_bytes']:,} bytes), {d['val_docs']} held out "
                      f"({d['val_bytes']:,} bytes): {', '.join(d['val_doc_names'][:6])}{' ...' if d['val_docs'] > 6 else ''}")
    t = Table(title=f"Parameters (CMRN active per token: {meta['cmrn_active_params']:,})")
    t.add_column("model"); t.add_column("parameters", justify="right"); t.add_column("config")
    t.add_row("CMRN", f"{meta['cmrn_params']:,}", json.dumps({k: meta["cmrn_config"][k] for k in (
        "d_model", "num_experts", "routing_k", "temporal_layers", "expert_hidden", "memory_dim", "memory_k")}))
    t.add_row("Transformer", f"{meta['transformer_params']:,}", json.dumps({k: meta["transformer_config"][k] for k in (
        "d_model", "n_layer", "n_head", "d_ff", "block_size")}))
    console.print(t)

    p = s["ppl"]
    t = Table(title=f"Held-out Shakespeare, {meta['train']['max_steps']} steps x {meta['train']['batch_size']}x"
                    f"{meta['train']['seq_len']} bytes, mean ± std over {len(meta['seeds'])} seed(s)")
    for c in ("model", "loss (nats/byte)", "bits/byte", "perplexity/byte", "train tokens/s"):
        t.add_column(c, justify="right")
    t.add_row("CMRN", _f(p["cmrn_loss"]), _f(p["cmrn_bpb"]), _f(p["cmrn_ppl"]), _f(p["cmrn_tokens_per_s"], prec=0))
    t.add_row("CMRN, memory off at eval", _f(p["cmrn_loss_no_memory"]), _f(p["cmrn_bpb_no_memory"]),
              _f(p["cmrn_ppl_no_memory"]), "")
    t.add_row("Transformer", _f(p["transformer_loss"]), _f(p["transformer_bpb"]), _f(p["transformer_ppl"]),
              _f(p["transformer_tokens_per_s"], prec=0))
    console.print(t)

    console.print(f"Compute-matched: CMRN held-out loss after the Transformer's whole training wall time "
                  f"({_f(p['transformer_train_s'], prec=1)} s): {_f(p['cmrn_loss_at_transformer_wall'])} nats/byte "
                  f"(Transformer at the end: {_f(p['transformer_loss'])})")

    t = Table(title=f"Recall of a planted fact after d bytes, exact 4-digit match (per-digit accuracy), "
                    f"{s['n_seeds']['recall']} seed(s); Transformer window {meta['transformer_config']['block_size']}; "
                    f"CMRN chunks of {meta['train']['segment_len']}")
    for c in ("distance d", "CMRN + memory", "CMRN, no memory", "Transformer"):
        t.add_column(c, justify="right")
    for d, r in s["recall"].items():
        t.add_row(d, *[f"{_f(r[m]['exact'], prec=2)} ({_f(r[m]['digit'], prec=2)})"
                       for m in ("cmrn_memory", "cmrn_no_memory", "transformer")])
    console.print(t)

    if s["n_seeds"]["domain"]:
        _domain_tables(s, console)
    if s.get("cost"):
        _cost_table(s, meta, console)


def _domain_tables(s: dict, console) -> None:
    from rich.table import Table

    d = s["domain"]
    t = Table(title=f"Adding domain B (Python stdlib) to a model trained on A (Shakespeare): held-out loss, nats/byte, "
                    f"{s['n_seeds']['domain']} seed(s)")
    for c in ("variant", "A loss", "B loss", "train wall s"):
        t.add_column(c, justify="right")
    names = dict(A_only="CMRN trained on A", add_expert="CMRN + B expert (rest frozen)", finetune_all="CMRN fine-tuned on B",
                 retrain_AB="CMRN retrained on A+B", transformer_finetune_B="Transformer fine-tuned on B")
    for k, n in names.items():
        t.add_row(n, _f(d[k]["A"]), _f(d[k]["B"]), _f(d[k]["wall_s"], prec=1))
    t.add_row("Transformer trained on A", _f(d["transformer_A"]), "", "")
    t.add_row("add-expert / retrain wall time", "", "", _f(d["time_ratio_add_over_retrain"]))
    console.print(t)
    console.print(f"add-expert reached the retrained model's B loss: {d['add_expert_reached_retrain_B']}; "
                  f"frozen parameters unchanged: {d['frozen_unchanged']}; "
                  f"trainable parameters while adding the expert: {d['add_expert_trainable_parameters']:,}")
    console.print(f"the A+B retrain reached the add-expert model's final B loss after "
                  f"{_f(d['retrain_wall_to_add_expert_B'], prec=1)} s of training (first evaluation at or below it); "
                  f"add-expert wall time / that: {_f(d['time_ratio_add_over_retrain_at_equal_B'])}")

    t = Table(title="Routing: share of top-k slots per expert on held-out A and B (mean over seeds)")
    t.add_column("model"); t.add_column("experts"); t.add_column("A usage"); t.add_column("B usage")
    t.add_column("TV(A,B)", justify="right"); t.add_column("symbolic share A / B", justify="right")
    for k, r in s["routing"].items():
        t.add_row(k, ",".join(x[:3] for x in r["types"]), " ".join(f"{x:.2f}" for x in r["usage_A"]),
                  " ".join(f"{x:.2f}" for x in r["usage_B"]), _f(r["tv_distance"]),
                  f"{_f(r['symbolic_share_A'], prec=2)} / {_f(r['symbolic_share_B'], prec=2)}")
    console.print(t)


def _cost_table(s: dict, meta: dict, console) -> None:
    from rich.table import Table

    t = Table(title=f"Cost: forward pass, batch 1, on {meta['device_name']}")
    t.add_column("length", justify="right")
    for c in ("transformer", "cmrn_no_memory", "cmrn_stream_memory"):
        t.add_column(f"{c} tok/s", justify="right"); t.add_column("peak MiB", justify="right")
    t.add_column("memory entries MiB", justify="right")
    for r in s["cost"]:
        row = [str(r["length"])]
        for c in ("transformer", "cmrn_no_memory", "cmrn_stream_memory"):
            x = r[c]
            row += ["OOM" if x.get("oom") else f"{x['tokens_per_s']:,.0f}",
                    "" if x.get("peak_mib") is None else f"{x['peak_mib']:.1f}"]
        st = r["cmrn_stream_memory"].get("memory_store_mib")
        t.add_row(*row, "" if st is None else f"{st:.1f}")
    console.print(t)


def plots(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    seeds = res["seeds"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(seeds):
        for name, col in (("cmrn", "C0"), ("transformer", "C1")):
            c = r["ppl"]["curves"][name]
            ax.plot(c["step"], np.array(c["loss"]) / LN2, color=col, alpha=0.8,
                    label=("CMRN" if name == "cmrn" else "Transformer") if i == 0 else None)
    ax.set_xlabel("training step"); ax.set_ylabel("held-out bits/byte (Shakespeare)"); ax.legend(); ax.grid(alpha=0.3)
    ax.set_title("Training curves, same batches and steps (one line per seed)")
    fig.tight_layout(); fig.savefig(out / "curves.png", dpi=120); plt.close(fig); files.append("curves.png")

    s = res["summary"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ds = [int(d) for d in s["recall"]]
    for m, lab in (("cmrn_memory", "CMRN + memory"), ("cmrn_no_memory", "CMRN, memory off"), ("transformer", "Transformer")):
        mu = [s["recall"][str(d)][m]["exact"]["mean"] for d in ds]
        sd = [s["recall"][str(d)][m]["exact"]["std"] for d in ds]
        ax.errorbar(ds, mu, yerr=sd, marker="o", capsize=3, label=lab)
    ax.axvline(res["meta"]["transformer_config"]["block_size"], color="gray", ls=":", label="Transformer window")
    ax.set_xscale("log"); ax.set_xlabel("distance from fact to question (bytes)"); ax.set_ylabel("exact recall")
    ax.set_ylim(-0.05, 1.05); ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(out / "recall.png", dpi=120); plt.close(fig); files.append("recall.png")

    if s.get("cost"):
        files.append(_cost_plot(s, out, plt))
    dseeds = [r for r in seeds if "domain" in r]
    if not dseeds:
        return files
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(dseeds):
        for k, col, lab in (("add_expert", "C2", "CMRN + B expert (rest frozen)"), ("retrain_AB", "C3", "CMRN retrained on A+B"),
                            ("finetune_all", "C4", "CMRN fine-tuned on B")):
            c = r["domain"][k]["curve"]
            ax.plot(c["wall_s"], np.array(c["loss"]) / LN2, color=col, alpha=0.8, label=lab if i == 0 else None)
    ax.set_xlabel("training wall time (s)"); ax.set_ylabel("held-out bits/byte, domain B (Python)")
    ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(out / "domain.png", dpi=120); plt.close(fig); files.append("domain.png")
    return files


def _cost_plot(s: dict, out: Path, plt) -> str:
    fig, axs = plt.subplots(1, 2, figsize=(11, 4.2))
    L = [r["length"] for r in s["cost"]]
    for c in ("transformer", "cmrn_no_memory", "cmrn_stream_memory"):
        axs[0].plot(L, [r[c]["tokens_per_s"] or np.nan for r in s["cost"]], marker="o", label=c)
        axs[1].plot(L, [r[c].get("peak_mib") or np.nan for r in s["cost"]], marker="o", label=c)
    for a, yl in zip(axs, ("tokens/s (forward, batch 1)", "peak device memory (MiB)")):
        a.set_xscale("log"); a.set_xlabel("sequence length"); a.set_ylabel(yl); a.grid(alpha=0.3)
        if any(np.isfinite(y).any() for y in (line.get_ydata() for line in a.get_lines())):
            a.set_yscale("log")
        else:
            a.text(0.5, 0.5, "measured on CUDA only", ha="center", transform=a.transAxes)
    axs[0].legend()
    fig.tight_layout(); fig.savefig(out / "cost.png", dpi=120); plt.close(fig)
    return "cost.png"


# ---------------------------------------------------------------------- main
def merge(paths: list[str], out: Path, console) -> dict:
    """Combine the seeds of several runs of the same configuration (e.g. two device calls) into one result."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("cmrn_config", "transformer_config", "train", "cmrn_params", "transformer_params")
    for r in runs[1:]:
        if any(r["meta"][k] != runs[0]["meta"][k] for k in keys):
            raise SystemExit(f"cannot merge runs with different configurations: {paths}")
    seeds, seen = [], set()
    for r in runs:
        for sd in r["seeds"]:
            if sd["seed"] not in seen:
                seen.add(sd["seed"])
                seeds.append(sd)
    cost = next((r["summary"]["cost"] for r in runs if r.get("summary", {}).get("cost")), None)
    meta = dict(runs[0]["meta"], seeds=sorted(seen), merged_from=[dict(path=str(p), command=r["meta"]["command"],
                wall_s=r["meta"].get("wall_s"), seeds=[x["seed"] for x in r["seeds"]]) for p, r in zip(paths, runs)])
    S = dict(recall_distances=[int(d) for d in seeds[0]["recall"]])
    res = dict(meta=meta, seeds=seeds)
    res["summary"] = summarise(seeds, cost, S)
    write_result(out, "cmrn_bench", res, quiet=True)
    print_tables(res, console)
    files = plots(res, out)
    console.print(f"merged {len(paths)} runs ({len(seeds)} seeds) into {out / 'cmrn_bench.json'} and {', '.join(files)}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sam bench cmrn", description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny configuration (CI, CPU, ~10 s)")
    ap.add_argument("--seeds", type=int, default=3, help="how many seeds")
    ap.add_argument("--seed-start", type=int, default=0, help="first seed")
    ap.add_argument("--out", default="results/cmrn")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-dir", default=None, help="corpus exported by `python -m sam.research.cmrn.data DIR`")
    ap.add_argument("--steps", type=int, default=None, help="override training steps on A")
    ap.add_argument("--domain-steps", type=int, default=None)
    ap.add_argument("--skip-domain", action="store_true", help="perplexity and recall only (no domain, no routing)")
    ap.add_argument("--skip-cost", action="store_true", help="no cost curve")
    ap.add_argument("--recall-docs", type=int, default=None)
    ap.add_argument("--recall-distances", default=None, help="comma-separated byte distances")
    ap.add_argument("--cost-lengths", default=None, help="comma-separated sequence lengths")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds: start another seed only if it should finish (with the cost curve) inside this")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="merge the seeds of earlier runs' cmrn_bench.json files, print and plot them; trains nothing")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(width=max(Console().width, 150))
    if args.merge:
        merge(args.merge, Path(args.out), console)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    S = settings(args.smoke)
    if args.steps:
        S["train"]["max_steps"] = args.steps
    if args.domain_steps:
        S["domain_steps"] = args.domain_steps
    if args.recall_docs:
        S["recall_docs"] = args.recall_docs
    if args.recall_distances:
        S["recall_distances"] = [int(v) for v in args.recall_distances.split(",")]
    if args.cost_lengths:
        S["cost_lengths"] = [int(v) for v in args.cost_lengths.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    A, B = load_domain("shakespeare", args.data_dir), load_domain("python", args.data_dir)
    cmrn_cfg = CMRNConfig(**S["model"])
    n_cm = CMRN(cmrn_cfg).num_parameters()
    tf_cfg = matched_transformer(n_cm, 256, cmrn_cfg.d_model, S["train"]["seq_len"])
    n_tf = TransformerLM(tf_cfg).num_parameters()
    meta = dict(cmrn_params=n_cm, cmrn_active_params=CMRN(cmrn_cfg).num_parameters(active=True), transformer_params=n_tf,
                cmrn_config=cmrn_cfg.to_dict(), transformer_config=tf_cfg.to_dict(), train=S["train"],
                domain_steps=S["domain_steps"], seeds=[], device=args.device,
                device_name=torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
                torch=torch.__version__, python=sys.version.split()[0], threads=torch.get_num_threads(),
                data=dict(A=A.describe(), B=B.describe(), source=args.data_dir or "installed packages"),
                command="sam bench cmrn " + " ".join(argv if argv is not None else sys.argv[1:]), smoke=args.smoke)
    console.print(f"CMRN {n_cm:,} parameters, Transformer {n_tf:,} ({tf_cfg.n_layer} layers, d_ff {tf_cfg.d_ff}); "
                  f"A {A.train.size:,}/{A.val.size:,} bytes, B {B.train.size:,}/{B.val.size:,} bytes (train/held-out)")
    tr = S["train"]
    per_seed = 2 * tr["max_steps"] + len(S["recall_distances"])
    if not args.skip_domain:
        per_seed += tr["max_steps"] + 4 * S["domain_steps"] + 1
    seeds, seed_s = [], []
    res = dict(meta=meta)
    cost = None
    reserve = 0 if args.skip_cost else 30
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("cmrn bench", total=per_seed * args.seeds + 1)
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            if args.time_budget and seed_s and time.time() - t_start + 1.1 * max(seed_s) + reserve > args.time_budget:
                console.print(f"[yellow]time budget {args.time_budget:.0f} s: stopping after {len(seeds)} seed(s)")
                break
            progress.update(task, description=f"seed {seed}")
            t_seed = time.time()
            seeds.append(run_seed(seed, S, A, B, cmrn_cfg, tf_cfg, args.device, progress, task,
                                  domain=not args.skip_domain))
            seed_s.append(time.time() - t_seed)
            meta["seeds"], meta["seed_wall_s"] = [r["seed"] for r in seeds], seed_s
            res["seeds"] = seeds
            write_result(out, "cmrn_bench", res, quiet=True)  # partial results survive a time-out
        if not args.skip_cost:
            progress.update(task, description="cost")
            cost = cost_curve(cmrn_cfg, tf_cfg, S["cost_lengths"], S["cost_reps"], tr["segment_len"], args.device)
        progress.advance(task, 1)
    res["summary"] = summarise(seeds, cost, S)
    meta["wall_s"] = time.time() - t_start
    write_result(out, "cmrn_bench", res, quiet=True)
    print_tables(res, console)
    files = plots(res, out)
    console.print(f"wrote {out / 'cmrn_bench.json'} and {', '.join(files)} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
