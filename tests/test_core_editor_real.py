"""MemoirEditor on the real default model (SmolLM2-135M-Instruct): two zsRE facts in one store.

The module shares one store (copied from a fitted empty template) and one set of edits; each test
reopens the editor as it needs, so any of them also runs alone. The last one reverts the edits.
"""

from __future__ import annotations

import pytest
import torch

from sam.core.editor import MemoirEditor
from sam.errors import CorruptStoreError, InvalidInputError, UnknownEditError
from sam.orchestration.testing import fresh_store
from sam.verify.phase_b import teacher_forced_logits

RECORDS = (0, 1)  # Watts Humphrey -> University of Michigan (13 SGD steps), Ramalinaceae -> Lamiinae (4)


@pytest.fixture(scope="module")
def real(tmp_path_factory, zsre):
    store = fresh_store(tmp_path_factory.mktemp("core-real") / "store")
    facts = [(zsre[i]["src"], zsre[i]["alt"]) for i in RECORDS]
    locs = [(zsre[i]["loc"], zsre[i]["loc_ans"]) for i in RECORDS]
    state = {"store": store, "facts": facts, "locs": locs}
    ed = MemoirEditor.open(store)
    state["ed"] = ed
    state["before"] = teacher_forced_logits(ed, facts + locs)
    state["scores_before"] = [ed.score(*f) for f in facts]
    state["loc_gen_before"] = ed.generate_batch([p for p, _ in locs], 6)
    state["results"] = [ed.edit(*f) for f in facts]
    state["edited"] = teacher_forced_logits(ed, facts + locs)
    yield state
    state["ed"].close()


def reopen(state, **kw) -> MemoirEditor:
    state["ed"].close()
    state["ed"] = MemoirEditor.open(state["store"], **kw)
    return state["ed"]


def test_edits_take(real):
    ed = real["ed"]
    assert any(s < 1.0 for s in real["scores_before"])  # the model did not know them all already
    for r, (prompt, target) in zip(real["results"], real["facts"]):
        assert r.success, r
        assert ed.score(prompt, target) == 1.0
        assert target.lower() in ed.generate(prompt, 8).lower()
        assert ed.route(prompt)[0] == r.edit_id
    assert len({r.edit_id for r in real["results"]}) == len(RECORDS)


def test_locality_on_loc_prompts(real):
    ed = real["ed"]
    n = len(real["facts"])
    for b, e in zip(real["before"][n:], real["edited"][n:]):
        assert torch.equal(b, e)  # unrelated prompts: the memory stayed silent, bit-identical logits
    assert all(ed.route(p)[0] is None for p, _ in real["locs"])
    assert ed.generate_batch([p for p, _ in real["locs"]], 6) == real["loc_gen_before"]


def test_edits_survive_reopen_exactly(real):
    ed = reopen(real)
    again = teacher_forced_logits(ed, real["facts"] + real["locs"])
    assert all(torch.equal(a, e) for a, e in zip(again, real["edited"]))
    assert [e.id for e in ed.edits()] == [r.edit_id for r in real["results"]]
    assert all(ed.score(*f) == 1.0 for f in real["facts"])


def test_bad_input_errors(real):
    ed = real["ed"]
    prompt, target = real["facts"][0]
    with pytest.raises(InvalidInputError):
        ed.edit("", target)
    with pytest.raises(InvalidInputError):
        ed.edit(prompt, "   ")
    with pytest.raises(InvalidInputError, match="tokens long"):
        ed.edit(prompt, " ".join(["Michigan"] * 80))
    with pytest.raises(UnknownEditError):
        ed.revert(424242)
    with pytest.raises(InvalidInputError):
        ed.score("", target)
    assert len(ed.edits(status=None)) == len(RECORDS)


def test_corrupt_expert_file_then_repair(real):
    real["ed"].close()
    files = sorted((real["store"] / "memory").glob("*.safetensors"))
    assert len(files) == real["ed"].memory.num_experts  # one file per expert, older ones removed
    files[0].write_bytes(files[0].read_bytes()[:200])  # truncated mid-write, say
    with pytest.raises(CorruptStoreError, match="repair"):
        real["ed"] = MemoirEditor.open(real["store"])
    ed = real["ed"] = MemoirEditor.open(real["store"], repair=True)
    assert all(ed.score(*f) == 1.0 for f in real["facts"])
    got = teacher_forced_logits(ed, real["facts"] + real["locs"])
    assert all(torch.allclose(g, e, atol=1e-4) for g, e in zip(got, real["edited"]))
    ed = reopen(real)  # repair rewrote the file
    assert all(ed.score(*f) == 1.0 for f in real["facts"])


def test_revert_restores_each_answer(real):
    ed = real["ed"]
    n = len(real["facts"])
    for r in real["results"]:
        assert ed.revert(r.edit_id).status == "reverted"
    after = teacher_forced_logits(ed, real["facts"] + real["locs"])
    for a, b in zip(after, real["before"]):
        assert torch.equal(a, b)  # nothing routes any more: exactly the unedited model
    assert [ed.score(*f) for f in real["facts"]] == real["scores_before"]
    assert all(ed.route(p)[0] is None for p, _ in real["facts"])
    assert ed.edits() == [] and len(after) == 2 * n
