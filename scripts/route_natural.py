"""Routing alone, no model: add a fact set's questions to a sentence-key Router in order (a question that
routes to an earlier edit supersedes it), then count paraphrases routed to their own edit and neighbours
that fire. `python scripts/route_natural.py natural` prints the figures docs/keys.md quotes."""
import sys, torch, json
from sam.core.router import Router
from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation
from sam.bench.facts import natural, zsre, default_zsre
which = sys.argv[1]
facts = natural() if which == "natural" else zsre(default_zsre(), n=int(sys.argv[2]), log=lambda m: None)
fp = TopHashFingerprinter(generate_permutation(1536, 0), 128)
r = Router(fp, 576, lambda i: None, key="sentence")
cols = torch.arange(128)
sup = 0
owner = {}
for i, f in enumerate(facts):
    d = r.decide_questions([f.question], replacing=True)[0]  # as the editor decides what a new answer replaces
    if d.edit_id is not None:
        sup += 1
        if which == "natural": print("supersedes:", f.question, "<-", facts[d.edit_id].question)
        r.remove(d.edit_id)
    r.add(i, cols, f.question, r.encode([f.question])[0])
    owner[f.question] = i
active = {i for i in range(len(facts)) if i in r}
paras = [(i, p) for i, f in enumerate(facts) for p in f.paraphrases]
ds = r.decide_questions([p for _, p in paras])
hit = sum(d.edit_id == i for (i, _), d in zip(paras, ds) if i in active) / max(1, sum(i in active for i, _ in paras))
nb = [n for f in facts for n in f.neighbours]
dn = r.decide_questions(nb) if nb else []
print(json.dumps({"facts": len(facts), "superseded": sup, "para_routes_own(active)": round(hit, 4),
                  "nbr_fired": round(sum(d.edit_id is not None for d in dn) / max(1, len(dn)), 4), "n_nbr": len(nb)}))
