"""When may a new answer replace an active edit? The template cosine of question pairs (MiniLM).

Pairs: the natural set's question/paraphrase pairs, zsRE's (first 400 usable records), and synthetic
questions about one subject with another relation (350 synthetic facts, every pair per subject). For each,
the share that passes the firing rule (question cosine >= 0.8 and template cosine >= 0.5), the same
without a swapped-word match, and the replacing rule (template cosine >= 0.6 / 0.7 / 0.8). Prints a table
and writes results/keys/supersede.json. Used for EditorConfig.supersede_threshold (docs/keys.md).

    python scripts/study_supersede.py
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam.bench import facts as F  # noqa: E402
from sam.core.sentence_key import DIM, SentenceKey, names, swapped  # noqa: E402


def rates(sk: SentenceKey, pairs: list[tuple[str, str]]) -> dict:
    a, b = sk.encode([p[0] for p in pairs]), sk.encode([p[1] for p in pairs])
    half = DIM // 2
    q, t = (a[:, :half] * b[:, :half]).sum(1), (a[:, half:] * b[:, half:]).sum(1)
    fire = q >= 0.8
    same_form = [swapped(x, y) for x, y in pairs]
    kept = fire & ~__import__("torch").tensor(same_form)
    out = {"pairs": len(pairs), "fires_at_0.5": float((fire & (t >= 0.5)).float().mean()),
           "fires_at_0.5_not_swapped": float((kept & (t >= 0.5)).float().mean())}
    for th in (0.6, 0.7, 0.8):
        out[f"replaces_at_{th}"] = float((fire & (t >= th)).float().mean())
    return out


def main() -> dict:
    sk = SentenceKey("cpu")
    natural = [(f.question, p) for f in F.natural() for p in f.paraphrases]
    zsre = [(f.question, p) for f in F.zsre(n=400, log=lambda *_: None) for p in f.paraphrases]
    by_subject: dict[frozenset, list[str]] = {}
    for f in F.synthetic(350, seed=0):
        by_subject.setdefault(frozenset(names(f.question)), []).append(f.question)
    other = [pair for qs in by_subject.values() for pair in itertools.combinations(qs, 2)]
    result = {"natural paraphrases": rates(sk, natural), "zsRE paraphrases": rates(sk, zsre),
              "synthetic, same subject, other relation": rates(sk, other)}
    cols = list(next(iter(result.values())))
    print(f"{'pairs':42s}" + "".join(f"{c:>26s}" for c in cols))
    for name, r in result.items():
        print(f"{name:42s}" + "".join(f"{r[c]:>26.3f}" if c != "pairs" else f"{r[c]:>26d}" for c in cols))
    out = Path("results/keys/supersede.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
