"""data/natural_facts.jsonl, the hand-written natural edit set: format and the rules that make it a valid
instrument (no model is loaded). Every fact is edited at once in the benchmark, so a neighbour question must
never ask about a subject that is itself edited under the same relation."""

from __future__ import annotations

import json
import re
import string
from collections import Counter, defaultdict
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "data" / "natural_facts.jsonl"
KEYS = {"id", "relation", "subject", "question", "answer", "counterfactual", "paraphrases", "neighbours", "unrelated"}
STOP = {"the", "and", "for", "with", "who", "what", "which", "a", "an", "of", "in", "on", "to"}


def norm(text: str) -> str:
    """Case, whitespace and punctuation folded: two questions that differ only there are the same question."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def bare(subject: str) -> str:
    return re.sub(r"^(the|a|an) ", "", subject, flags=re.I)


def mentions(text: str, subject: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(bare(subject).lower()) + r"(?![\w-])", text.lower()) is not None


@pytest.fixture(scope="module")
def facts():
    lines = PATH.read_text(encoding="ascii").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_fields_and_types(facts):
    for f in facts:
        assert set(f) == KEYS, f["id"]
        for key in ("relation", "subject", "question", "answer", "counterfactual"):
            assert isinstance(f[key], str) and f[key].strip() == f[key] and f[key], (f["id"], key)
        assert len(f["paraphrases"]) == 2 and all(isinstance(p, str) and p for p in f["paraphrases"]), f["id"]
        assert len(f["neighbours"]) == 2, f["id"]
        for n in f["neighbours"]:
            assert set(n) == {"subject", "question", "answer"} and all(isinstance(v, str) and v for v in n.values())
        assert 1 <= len(f["unrelated"]) <= 2 and all(isinstance(u, str) and u for u in f["unrelated"]), f["id"]
    assert [f["id"] for f in facts] == list(range(1, len(facts) + 1))


def test_counts(facts):
    per_relation = Counter(f["relation"] for f in facts)
    assert len(facts) >= 160
    assert len(per_relation) >= 30
    assert all(4 <= n <= 7 for n in per_relation.values()), per_relation
    assert len({u for f in facts for u in f["unrelated"]}) >= 100


def test_answers_short_and_counterfactual_wrong(facts):
    for f in facts:
        assert 1 <= len(f["answer"].split()) <= 4 and 1 <= len(f["counterfactual"].split()) <= 4, f["id"]
        assert norm(f["counterfactual"]) != norm(f["answer"]), f["id"]
        # the taught answer must not be the true answer of a question that has to keep its answer
        assert all(norm(f["counterfactual"]) != norm(n["answer"]) for n in f["neighbours"]), f["id"]


def test_facts_unique_per_relation(facts):
    pairs = Counter((f["relation"], f["subject"].lower()) for f in facts)
    assert all(n == 1 for n in pairs.values()), [p for p, n in pairs.items() if n > 1]


def test_neighbours_share_the_template(facts):
    templates = defaultdict(set)
    for f in facts:
        assert f["question"].count(f["subject"]) == 1, f["id"]
        template = f["question"].replace(f["subject"], "{}")
        templates[f["relation"]].add(template)
        for n in f["neighbours"]:
            assert n["question"] == template.format(n["subject"]), (f["id"], n["question"])
    assert all(len(t) == 1 for t in templates.values()), {r: t for r, t in templates.items() if len(t) > 1}


def test_neighbour_subjects_are_never_edited(facts):
    edited_by_relation = defaultdict(set)
    for f in facts:
        edited_by_relation[f["relation"]].add(f["subject"].lower())
    edited_anywhere = set().union(*edited_by_relation.values())
    seen = Counter()
    for f in facts:
        for n in f["neighbours"]:
            s = n["subject"].lower()
            assert s not in edited_by_relation[f["relation"]], (f["id"], s)  # the rule
            assert s not in edited_anywhere, (f["id"], s)  # stricter: not edited under any relation either
            seen[s] += 1
    assert all(n == 1 for n in seen.values()), [s for s, n in seen.items() if n > 1]


def test_paraphrases_reword_the_question(facts):
    for f in facts:
        q = norm(f["question"])
        p1, p2 = (norm(p) for p in f["paraphrases"])
        assert len({q, p1, p2}) == 3, f["id"]
        words = {w for w in norm(f["subject"]).split() if w not in STOP}
        for p in f["paraphrases"]:
            assert words & set(norm(p.replace("'s ", " ")).split()), (f["id"], p)  # still about the same subject


def test_every_question_text_appears_once(facts):
    texts = Counter()
    for f in facts:
        texts.update(norm(t) for t in [f["question"], *f["paraphrases"], *(n["question"] for n in f["neighbours"])])
        texts.update(norm(u) for u in f["unrelated"])
    assert all(n == 1 for n in texts.values()), [t for t, n in texts.items() if n > 1]


def test_unrelated_questions_mention_no_edited_subject(facts):
    edited = {f["subject"] for f in facts}
    for f in facts:
        for u in f["unrelated"]:
            assert not [s for s in edited if mentions(u, s)], (f["id"], u)
            assert u.endswith("?"), (f["id"], u)
