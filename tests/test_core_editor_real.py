"""MemoirEditor on the real default model (SmolLM2-135M-Instruct, chat format): two zsRE facts in one store.

Kept cheap (it runs in the default suite on 2 shared cores): two facts that converge in few steps, one
store copied from a fitted empty template, one set of edits. Each test reopens the editor as it needs, so
any of them also runs alone; the last one reverts the edits.
"""

from __future__ import annotations

import pytest
import torch

from sam.core.editor import MemoirEditor
from sam.core.prompts import Turn
from sam.errors import InvalidInputError, UnknownEditError
from sam.orchestration.testing import fresh_store

RECORDS = (0, 4)  # Watts Humphrey -> University of Michigan, Lahti Town Hall -> Alfred Lahti: both take in few steps


def tf(ed: MemoirEditor, pairs) -> list[torch.Tensor]:
    return [logits for logits, _ in ed.teacher_forced(pairs)]


@pytest.fixture(scope="module")
def real(tmp_path_factory, zsre, one_thread):  # 2 threads on 2 shared cores: ~4x slower
    store = fresh_store(tmp_path_factory.mktemp("core-real") / "store")
    ed = MemoirEditor.open(store)
    facts = [(ed.render(zsre[i]["src"]), zsre[i]["alt"]) for i in RECORDS]
    locs = [(ed.render(zsre[i]["loc"]), zsre[i]["loc_ans"]) for i in RECORDS]
    state = {"store": store, "facts": facts, "locs": locs, "ed": ed, "zsre": [zsre[i] for i in RECORDS]}
    state["before"] = tf(ed, facts + locs)
    state["scores_before"] = [ed.score(*f) for f in facts]
    state["loc_gen_before"] = ed.generate_batch([p for p, _ in locs], 6)
    state["results"] = [ed.edit(*f) for f in facts]
    state["edited"] = tf(ed, facts + locs)
    yield state
    state["ed"].close()


def reopen(state, **kw) -> MemoirEditor:
    state["ed"].close()
    state["ed"] = MemoirEditor.open(state["store"], **kw)
    return state["ed"]


def test_edits_take(real):
    ed = real["ed"]
    assert ed.prompts.style == "chat" and ed.layer == 25 and ed.fingerprinter.top_k == 128
    assert any(s < 1.0 for s in real["scores_before"])  # the model did not know them all already
    for r, (prompt, target) in zip(real["results"], real["facts"]):
        assert r.success and r.target_accuracy == 1.0 and r.steps <= ed.config.max_steps, r
        assert ed.score(prompt, target) == 1.0
        assert ed.prompts.clean(ed.generate(prompt, 10)) == target
        edit_id, similarity = ed.route(prompt)
        assert edit_id == r.edit_id and similarity == pytest.approx(1.0, abs=1e-5)
    assert len({r.edit_id for r in real["results"]}) == len(RECORDS)


def test_an_edit_holds_in_another_conversation(real):
    """Keyed on the question, not its frame: the same question after a system prompt and an earlier turn."""
    ed = real["ed"]
    for r, (prompt, target) in zip(real["results"], real["facts"]):
        other = ed.render(prompt.question, [Turn("What is 2 + 2?", "4")], system="You are a terse assistant.")
        edit_id, overlap = ed.route(other)
        assert edit_id == r.edit_id and overlap >= min(ed.config.similarity_threshold, ed.config.mask_overlap)
        assert ed.prompts.clean(ed.answer([other], 10)[0].text) == target


def test_locality_on_unrelated_prompts(real):
    ed = real["ed"]
    n = len(real["facts"])
    for b, e in zip(real["before"][n:], real["edited"][n:]):
        assert torch.equal(b, e)  # the memory stayed silent: bit-identical logits
    assert all(ed.route(p)[0] is None for p, _ in real["locs"])
    assert ed.generate_batch([p for p, _ in real["locs"]], 6) == real["loc_gen_before"]
    gens = ed.answer([real["facts"][0][0], real["locs"][0][0], real["facts"][1][0]], 6)  # mixed in one batch
    assert [g.edit_id for g in gens] == [real["results"][0].edit_id, None, real["results"][1].edit_id]
    assert gens[1].text == real["loc_gen_before"][0]


def test_edits_survive_reopen_exactly(real):
    ed = reopen(real, read_only=True)
    again = tf(ed, real["facts"] + real["locs"])
    assert all(torch.equal(a, e) for a, e in zip(again, real["edited"]))
    assert [e.id for e in ed.edits()] == [r.edit_id for r in real["results"]]
    assert all(ed.score(*f) == 1.0 for f in real["facts"])
    assert ed.store.check()["ok"]


def test_bad_input_errors(real):
    ed = reopen(real)
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
    again = ed.edit(prompt, target)  # the same correction: nothing trained, nothing written
    assert again.already_present and again.edit_id == real["results"][0].edit_id
    assert len(ed.edits(status=None)) == len(RECORDS)


def test_revert_restores_each_answer(real):
    ed = reopen(real)
    n = len(real["facts"])
    for r in real["results"]:
        assert ed.revert(r.edit_id).status == "reverted"
    after = tf(ed, real["facts"] + real["locs"])
    for a, b in zip(after, real["before"]):
        assert torch.equal(a, b)  # nothing routes any more: exactly the unedited model
    assert [ed.score(*f) for f in real["facts"]] == real["scores_before"]
    assert all(ed.route(p)[0] is None for p, _ in real["facts"])
    assert ed.edits() == [] and len(after) == 2 * n
