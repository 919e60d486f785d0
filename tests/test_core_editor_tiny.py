"""MemoirEditor end to end on tiny random Llama and GPT-2 models saved as HF folders (seconds, not minutes).

Their tokenizer carries SmolLM2's chat template, so prompt_format "auto" is chat; "line" is tested too.
Every store is a real folder (SQLite, fingerprinter, lock); each test starts from a copy of an empty
fitted store made once per model and format.
"""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch

from sam.constants import DB_FILE, FINGERPRINTER_FILE, LOCK_FILE
from sam.core.editor import EditorConfig, MemoirEditor, PendingEdit
from sam.core.fingerprinter import generate_permutation, save_permutation
from sam.core.output_loss import TargetNLL
from sam.core.prompts import Turn
from sam.core.repair import repair_store
from sam.core.sentence_key import DIM as KEY_DIM
from sam.core.store import Store
from sam.errors import (CorruptStoreError, EditFailedError, InvalidInputError, SamError, StoreLockedError,
                        StoreMismatchError, UnknownEditError)

FACT = ("What university did Watts Humphrey attend?", "University of Michigan")
FACT2 = ("Which family does Ramalinaceae belong to?", "Lamiinae")
OTHER = [("What is the capital of France?", "Paris"), ("Write a haiku about the sea.", "Waves")]
KINDS = ["llama", "gpt2"]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


def config(**kw) -> EditorConfig:
    return EditorConfig(**{"layer": 1, "top_k": 16, "max_steps": 10, **kw})  # the default optimiser and rate


@pytest.fixture(scope="module")
def templates(tmp_path_factory, tiny_llama_dir, tiny_gpt2_dir):
    """(kind, prompt_format) -> a fitted, empty store folder to copy (the background fit is paid once)."""
    dirs = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}
    made = {}

    def get(kind: str, fmt: str = "auto"):
        if (kind, fmt) not in made:
            path = tmp_path_factory.mktemp(f"tpl-{kind}-{fmt}") / "store"
            with MemoirEditor.open(path, model=str(dirs[kind]), config=config(), prompt_format=fmt) as ed:
                ed.prefixes  # sampled once and kept in the store
            made[kind, fmt] = path
        return made[kind, fmt]

    return dirs, get


@pytest.fixture
def tiny(tmp_path, templates):
    """tiny(kind, fmt="auto", name="store", **open_kw) -> an editor on a fresh copy of the template store."""
    dirs, get = templates
    opened = []

    def make(kind: str = "llama", fmt: str = "auto", name: str = "store", copy: bool = True, **kw) -> MemoirEditor:
        store = tmp_path / name
        if copy and not store.exists():
            shutil.copytree(get(kind, fmt), store, ignore=shutil.ignore_patterns(LOCK_FILE))
        kw.setdefault("config", config())
        ed = MemoirEditor.open(store, model=str(dirs[kind]), prompt_format=fmt, **kw)
        opened.append(ed)
        return ed

    make.dirs = dirs
    yield make
    for ed in opened:
        ed.close()


def tf(ed: MemoirEditor, pairs) -> list[torch.Tensor]:
    return [logits for logits, _ in ed.teacher_forced(pairs)]


def rows(store) -> int:
    con = sqlite3.connect(store / DB_FILE)
    try:
        return con.execute("SELECT COUNT(*) FROM edits").fetchone()[0]
    finally:
        con.close()


def snapshot(folder) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir() if p.is_file()}


# --- edit, reopen, revert ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,key", [("llama", "sentence"), ("gpt2", "sentence"), ("llama", "tophash")])
def test_edit_persists_exactly_and_reverts_exactly(tiny, kind, key):
    ed = tiny(kind, config=config(key=key))
    store = ed.store.root
    assert ed.prompts.style == "chat"
    p = ed.render(FACT[0])
    pairs = [(p, FACT[1])] + [(ed.render(q), a) for q, a in OTHER]
    before = tf(ed, pairs)
    gen_before = ed.generate(p, 6)
    assert ed.score(p, FACT[1]) < 1.0  # a random model does not know it yet
    r = ed.edit(p, FACT[1])
    assert r.success and r.target_accuracy == 1.0 and 1 <= r.steps <= 10 and r.supersedes is None
    assert not r.already_present and r.prompt == p.text and r.target == FACT[1]
    assert ed.score(p, FACT[1]) == 1.0
    assert ed.generate(p, 8).startswith(FACT[1])  # greedy decoding gives the target
    assert ed.generate(p, 6, memory=False) == gen_before
    edit_id, similarity = ed.route(p)
    assert edit_id == r.edit_id and similarity == pytest.approx(1.0, abs=1e-5)
    assert all(ed.route(q)[0] is None for q, _ in pairs[1:])
    edited = tf(ed, pairs)
    assert not torch.equal(edited[0], before[0])
    for b, e in zip(before[1:], edited[1:]):  # unrelated prompts: bit-identical
        assert torch.equal(b, e)
    assert ed.stats()["edits"] == 1 and ed.stats()["db_bytes"] > 0
    ed.close()

    ed = tiny(kind, config=config(key=key))  # a new editor on the same store: exactly the same model
    assert all(torch.equal(a, e) for a, e in zip(tf(ed, pairs), edited))
    assert ed.route(p)[0] == r.edit_id
    rec = ed.get_edit(r.edit_id)
    assert (rec.prompt, rec.question, rec.target, rec.status, rec.steps, rec.source) == \
        (p.text, FACT[0], FACT[1], "active", r.steps, "user")
    assert ed.revert(r.edit_id).status == "reverted"
    after = tf(ed, pairs)
    assert all(torch.equal(a, b) for a, b in zip(after, before))  # exactly the unedited model
    assert ed.route(p)[0] is None and ed.generate(p, 6) == gen_before
    ed.close()

    ed = tiny(kind, config=config(key=key))  # the revert persisted too
    assert ed.edits() == [] and [e.status for e in ed.edits(status=None)] == ["reverted"]
    assert all(torch.equal(a, b) for a, b in zip(tf(ed, pairs), before))
    assert store == ed.store.root


def test_the_line_format_keys_the_question_and_is_kept_by_the_store(tiny):
    ed = tiny("llama", fmt="line")
    assert ed.prompts.style == "line" and ed.store.meta("prompt_format") == "line"
    p = ed.render(FACT[0])
    assert p.text == FACT[0] + "\n" and p.question == FACT[0]
    r = ed.edit(p, FACT[1])
    assert r.success and ed.score(p, FACT[1]) == 1.0
    assert ed.generate(p, 8).lstrip().startswith(FACT[1])
    assert ed.route(FACT[0] + "\n")[0] == r.edit_id  # a bare string is its own prompt, keyed on its text
    edited = tf(ed, [(p, FACT[1])])
    ed.close()
    ed = tiny("llama", fmt="auto")  # "auto" on this store: the format its keys were made in
    assert ed.prompts.style == "line"
    assert torch.equal(tf(ed, [(ed.render(FACT[0]), FACT[1])])[0], edited[0])


# --- supersede, already present -------------------------------------------------------------------------------------
def test_a_new_answer_supersedes_and_its_revert_brings_the_old_one_back(tiny):
    ed = tiny("llama")
    p = ed.render(FACT[0])
    first = ed.edit(p, FACT[1])
    state_first = tf(ed, [(p, FACT[1]), (p, "Harvard")])
    gen_first = ed.generate(p, 8)
    second = ed.edit(p, "Harvard")
    assert second.supersedes == first.edit_id and second.success
    assert ed.get_edit(first.edit_id).status == "superseded" and ed.get_edit(second.edit_id).supersedes == first.edit_id
    assert [e.id for e in ed.edits()] == [second.edit_id]
    assert ed.route(p)[0] == second.edit_id and ed.generate(p, 8).startswith("Harvard")
    assert ed.score(p, "Harvard") == 1.0
    back = ed.revert(second.edit_id)
    assert back.status == "reverted" and ed.get_edit(first.edit_id).status == "active"
    assert ed.route(p)[0] == first.edit_id
    assert ed.generate(p, 8) == gen_first  # answering as before
    assert all(torch.equal(a, b) for a, b in zip(tf(ed, [(p, FACT[1]), (p, "Harvard")]), state_first))
    with pytest.raises(InvalidInputError, match="already reverted"):
        ed.revert(second.edit_id)
    ed.close()
    ed = tiny("llama")  # all of it persisted
    assert [(e.id, e.status) for e in ed.edits(None)] == [(first.edit_id, "active"), (second.edit_id, "reverted")]
    assert ed.route(p)[0] == first.edit_id


def test_a_superseded_edit_cannot_be_reverted_on_its_own(tiny):
    ed = tiny("llama")
    p = ed.render(FACT[0])
    first = ed.edit(p, FACT[1])
    ed.edit(p, "Harvard")
    with pytest.raises(InvalidInputError, match="already superseded"):
        ed.revert(first.edit_id)


def test_the_same_correction_twice_returns_the_existing_edit(tiny):
    ed = tiny("llama")
    p = ed.render(FACT[0])
    r = ed.edit(p, FACT[1])
    n = rows(ed.store.root)
    again = ed.edit(ed.render(FACT[0].upper()), "  university of  michigan! ")
    assert again.already_present and again.edit_id == r.edit_id and again.steps == 0 and again.supersedes is None
    assert again.target == FACT[1]
    assert rows(ed.store.root) == n and ed.get_edit(r.edit_id).status == "active"


def test_one_question_keeps_one_active_edit_however_edits_are_committed(tiny):
    ed = tiny("llama")
    p = ed.render(FACT[0])
    a, b = ed.train(p, "Yale"), ed.train(p, "Harvard")  # trained before either is written
    ra, rb = ed.commit(a), ed.commit(b)
    assert rb.supersedes == ra.edit_id
    again = ed.commit(b)  # the same pending edit twice
    assert again.supersedes == rb.edit_id
    active = ed.edits()
    assert [e.id for e in active] == [again.edit_id] and len(ed.router) == 1
    assert ed.route(p)[0] == again.edit_id


def test_commit_many_writes_in_one_transaction_and_later_edits_supersede_earlier_ones(tiny):
    ed = tiny("llama")
    store = ed.store.root
    p1, p2 = ed.render(FACT[0]), ed.render(FACT2[0])
    a, b, c = ed.train_many([(p1, "Yale"), (p2, FACT2[1]), (p1, FACT[1])])
    poisoned = ed.train(p2, "x")
    poisoned.outcome.finite = False  # as a diverged training reports itself
    with pytest.raises(EditFailedError):
        ed.commit_many([a, b, poisoned])  # all or none
    assert rows(store) == 0 and len(ed.router) == 0
    ra, rb, rc = ed.commit_many([a, b, c])
    assert rc.supersedes == ra.edit_id and rb.supersedes is None and ra.supersedes is None
    assert [e.id for e in ed.edits()] == [rb.edit_id, rc.edit_id] and len(ed.router) == 2
    assert ed.get_edit(ra.edit_id).status == "superseded"
    assert ed.route(p1)[0] == rc.edit_id and ed.route(p2)[0] == rb.edit_id
    assert ed.score(p1, FACT[1]) == 1.0 and ed.score(p2, FACT2[1]) == 1.0


# --- trial ------------------------------------------------------------------------------------------------------------
def test_trial_applies_a_pending_edit_and_writes_nothing(tiny):
    ed = tiny("llama")
    store = ed.store.root
    p = ed.render(FACT[0])
    first = ed.edit(p, FACT[1])
    pending = ed.train(p, "Harvard")
    assert isinstance(pending, PendingEdit) and pending.success and pending.supersedes == first.edit_id
    before_files, n_rows, n_router = snapshot(store), rows(store), len(ed.router)
    before = tf(ed, [(p, "Harvard")])
    with ed.trial(pending):
        assert ed.score(p, "Harvard") == 1.0 and ed.score(p, FACT[1]) < 1.0  # the old one is hidden
        g = ed.answer([p])[0]
        assert g.text.startswith("Harvard") and g.edit_id not in (None, first.edit_id)
        assert g.overlap == pytest.approx(1.0, abs=1e-5)
        assert rows(store) == n_rows
    assert snapshot(store) == before_files and rows(store) == n_rows and len(ed.router) == n_router
    assert torch.equal(tf(ed, [(p, "Harvard")])[0], before[0])  # back as it was
    assert ed.route(p)[0] == first.edit_id
    with pytest.raises(RuntimeError):  # an error inside the block restores the routing too
        with ed.trial(pending):
            raise RuntimeError
    assert ed.route(p)[0] == first.edit_id and len(ed.router) == n_router
    result = ed.commit(pending)  # and the same pending edit can still be written
    assert result.supersedes == first.edit_id and ed.route(p)[0] == result.edit_id and rows(store) == n_rows + 1


def test_trial_on_a_read_only_editor_and_an_unrelated_prompt(tiny):
    ed = tiny("llama")
    p = ed.render(FACT[0])
    pending = ed.train(p, FACT[1])
    ed.close()
    ro = tiny("llama", read_only=True)
    other = ro.render(OTHER[0][0])
    plain = tf(ro, [(other, OTHER[0][1])])
    with ro.trial(pending):
        assert ro.score(p, FACT[1]) == 1.0
        assert torch.equal(tf(ro, [(other, OTHER[0][1])])[0], plain[0])
    assert ro.route(p)[0] is None
    with pytest.raises(SamError, match="read-only"):
        ro.commit(pending)


# --- failures write nothing -----------------------------------------------------------------------------------------
def poison_head(ed: MemoirEditor) -> None:
    """A NaN in the training loss: the lm_head copy the training logits go through (the model is untouched)."""
    nll = TargetNLL(ed.model, torch.bfloat16)
    nll.weight_lo = torch.full_like(nll.weight_lo, float("nan"))
    ed.trainer._nll = nll


def test_a_diverged_training_raises_and_writes_nothing(tiny):
    ed = tiny("llama")
    store = ed.store.root
    p = ed.render(FACT[0])
    ed.prefixes  # noqa: B018 (already in the template store: nothing left to write)
    files, n = snapshot(store), rows(store)
    poison_head(ed)
    with pytest.raises(EditFailedError, match="diverged") as err:
        ed.edit(p, FACT[1])
    assert "\n" not in str(err.value)
    pending = ed.train(p, FACT[1])
    assert not pending.outcome.finite and not pending.success
    with pytest.raises(EditFailedError):
        ed.commit(pending)
    with pytest.raises(EditFailedError), ed.trial(pending):
        pass
    assert snapshot(store) == files and rows(store) == n and len(ed.router) == 0 and ed.route(p)[0] is None


def test_an_edit_that_does_not_take_is_written_only_with_keep_failed(tiny):
    ed = tiny("llama", config=config(max_steps=1, learning_rate=1e-6))
    p = ed.render(FACT[0])
    with pytest.raises(EditFailedError, match="did not take"):
        ed.edit(p, FACT[1], keep_failed=False)
    assert rows(ed.store.root) == 0
    r = ed.edit(p, FACT[1])
    assert not r.success and r.target_accuracy < 1.0 and rows(ed.store.root) == 1


def test_bad_input_is_refused_and_changes_nothing(tiny):
    ed = tiny("llama")
    p = ed.render(FACT[0])
    r = ed.edit(p, FACT[1])
    state = tf(ed, [(p, FACT[1])])
    long_target = " ".join(["word"] * (ed.config.max_target_tokens + 5))
    for prompt, target in [("", "x"), ("   \n", "x"), (p, ""), (p, "  "), (None, "x"), (p, None), (p, long_target),
                           ("a\x00b", "x"), ("why " * 1000, "x")]:
        with pytest.raises(InvalidInputError) as err:
            ed.edit(prompt, target)
        assert "\n" not in str(err.value)
    for call in (lambda: ed.route(""), lambda: ed.generate(" "), lambda: ed.score("", "x"), lambda: ed.render("  "),
                 lambda: ed.decide(["fine", ""])):
        with pytest.raises(InvalidInputError):
            call()
    for bad in (12345, "x", None, -1):
        with pytest.raises(UnknownEditError):
            ed.revert(bad)
        with pytest.raises(UnknownEditError):
            ed.get_edit(bad)
    assert [e.id for e in ed.edits(status=None)] == [r.edit_id] and len(ed.router) == 1
    assert torch.equal(tf(ed, [(p, FACT[1])])[0], state[0])


def test_render_drops_the_oldest_turns_to_fit_and_refuses_a_question_that_cannot(tiny):
    ed = tiny("llama")  # tiny models: 256 positions, so a prompt may have 256 - max_target_tokens tokens
    history = [Turn(f"Question number {i} about a topic of some length?", f"Answer number {i}.") for i in range(20)]
    p = ed.render(FACT[0], history)
    n = len(ed.tokenizer(p.text, add_special_tokens=False)["input_ids"])
    assert n + ed.config.max_target_tokens <= ed.prompt_limit == 256
    assert p.question == FACT[0] and "Answer number 19." in p.text and "Question number 0 " not in p.text
    assert ed.render(FACT[0], history[-1:]).text.count("Answer number") == 1
    with pytest.raises(InvalidInputError, match="limit"):
        ed.render("why " * 300)


# --- batching --------------------------------------------------------------------------------------------------------
FACTS3 = [FACT, FACT2, ("Who designed Lahti Town Hall?", "Alfred Lahti and the architects of the Finnish romantic style")]


@pytest.mark.parametrize("kind", KINDS)
def test_train_many_gives_each_edit_what_it_gets_alone(tiny, kind):
    """Three edits with targets of 3, 3 and 12 tokens, batched: the same steps (each stops at its own
    convergence) and the same deltas as one by one. With fp32 training products (bf16 ones round the
    gradient differently in a batch of another shape), so only the batching is compared."""
    fp32 = "float32"
    probe = tiny(kind, name="probe", config=config(max_steps=4, stop_loss=1e-6, train_dtype=fp32))
    pairs = [(probe.render(q), t) for q, t in FACTS3]
    after4 = sorted(probe.train(p, t).outcome.loss for p, t in pairs)
    probe.close()
    # a stop loss the fastest edit reaches within 4 steps and the others later (or never): they stop apart.
    # A random model's losses sit near ln(vocab) ~ 10.8, above the range users may set, hence model_copy.
    ed = tiny(kind, config=config(max_steps=12, train_dtype=fp32))
    ed.config = ed.config.model_copy(update={"stop_loss": (after4[0] + after4[1]) / 2})
    many = ed.train_many(pairs)
    alone = [ed.train(p, t) for p, t in pairs]
    assert rows(ed.store.root) == 0  # training writes no edit
    for m, a in zip(many, alone):
        assert torch.equal(m.outcome.cols, a.outcome.cols)
        assert m.outcome.steps == a.outcome.steps
        assert m.outcome.loss == pytest.approx(a.outcome.loss, rel=1e-5)
        assert m.outcome.accuracy == a.outcome.accuracy
        assert torch.allclose(m.outcome.delta, a.outcome.delta, rtol=1e-4, atol=1e-4)
        assert m.outcome.delta.abs().max() > 0.01  # the deltas did move
    lens = [len(ed.tokenizer(t, add_special_tokens=False)["input_ids"]) for _, t in FACTS3]
    assert len(set(lens)) >= 2
    assert len({m.outcome.steps for m in many}) > 1  # the edits converged at different steps
    results = [ed.commit(m) for m in many]
    for (p, t), r in zip(pairs, results):
        assert ed.route(p)[0] == r.edit_id


def test_the_naive_loop_trains_several_edits_one_by_one(tiny):
    ed = tiny("llama", config=config(max_steps=3, fast=False))
    pairs = [(ed.render(q), t) for q, t in FACTS3[:2]]
    many = ed.train_many(pairs)
    alone = [ed.train(p, t) for p, t in pairs]
    for m, a in zip(many, alone):
        assert m.outcome.steps == a.outcome.steps == 3 and torch.equal(m.outcome.delta, a.outcome.delta)


@pytest.mark.parametrize("key", ["tophash", "sentence"])
def test_a_batch_is_keyed_and_answered_as_each_prompt_alone(tiny, key):
    """Left padding must not change a key: GPT-2's absolute positions would change a TopHash key, without
    position ids; the sentence key is read from the question text alone."""
    ed = tiny("gpt2", config=config(key=key))
    r1 = ed.edit(ed.render(FACT[0]), FACT[1])
    r2 = ed.edit(ed.render(FACT2[0]), FACT2[1])
    prompts = [ed.render(FACT[0]), ed.render("Hi"), ed.render(FACT2[0]),
               ed.render("A much longer question than the others, about nothing in particular at all?")]
    batch = ed.decide(prompts)
    single = [ed.decide([p])[0] for p in prompts]
    assert [(d.edit_id, d.nearest) for d in batch] == [(d.edit_id, d.nearest) for d in single]
    assert [d.overlap for d in batch] == pytest.approx([d.overlap for d in single], abs=1e-5)
    assert [d.edit_id for d in batch] == [r1.edit_id, None, r2.edit_id, None]
    assert torch.allclose(ed.pooled(prompts), torch.cat([ed.pooled([p]) for p in prompts]), atol=1e-5)
    gens = ed.answer(prompts, 6)
    assert [g.edit_id for g in gens] == [d.edit_id for d in batch]
    assert [g.overlap for g in gens] == pytest.approx([d.overlap for d in batch], abs=1e-5)
    assert gens[0].text.startswith(FACT[1]) and gens[2].text.startswith(FACT2[1])
    assert all(g.edit_id is None for g in ed.answer(prompts, 2, memory=False))
    got = ed.predict_batch([(prompts[0], FACT[1]), (prompts[2], FACT2[1])])
    assert all(torch.equal(pred, tgt) for pred, tgt in got)


# --- opening: read-only, lock, identity --------------------------------------------------------------------------------
def test_a_read_only_editor_on_a_missing_store_answers_and_creates_nothing(tmp_path, tiny):
    missing = tmp_path / "nothing" / "here"
    ed = tiny("llama", name="nothing/here", copy=False, read_only=True)
    assert ed.store is None and ed.read_only and ed.edits() == []
    assert ed.answer([ed.render(FACT[0])], 4)[0].edit_id is None
    assert ed.route(FACT[0]) == (None, 0.0)
    with pytest.raises(InvalidInputError):  # refused with no edit to route to as well
        ed.route("  ")
    assert ed.stats()["edits"] == 0
    with pytest.raises(SamError, match="read-only"):
        ed.edit(ed.render(FACT[0]), FACT[1])
    with pytest.raises(UnknownEditError):
        ed.get_edit(1)
    ed.close()
    assert not missing.exists() and not (tmp_path / "nothing").exists()


def test_writer_lock_and_readers_alongside(tiny):
    writer = tiny("llama")
    store = writer.store.root
    p = writer.render(FACT[0])
    r = writer.edit(p, FACT[1])
    with pytest.raises(StoreLockedError):
        tiny("llama")
    reader = tiny("llama", read_only=True)
    assert reader.score(p, FACT[1]) == 1.0 and reader.route(p)[0] == r.edit_id
    assert [e.id for e in reader.edits()] == [r.edit_id]
    for call in (lambda: reader.edit(writer.render(FACT2[0]), FACT2[1]), lambda: reader.revert(r.edit_id),
                 lambda: reader.train(p, "x")):
        with pytest.raises(SamError, match="read-only"):
            call()
    reader.close()
    assert writer.score(p, FACT[1]) == 1.0  # the reader changed nothing
    writer.close()
    with Store(store):  # the lock was released with close()
        pass


def test_a_store_of_another_model_or_layer_is_refused_and_the_lock_released(tiny):
    tiny("llama").close()
    with pytest.raises(StoreMismatchError, match="model"):  # same d_ff, another model
        tiny("gpt2", copy=False)
    with pytest.raises(StoreMismatchError, match="belongs to"):  # the same model, another layer
        tiny("llama", config=config(layer=2))
    ed = tiny("llama")  # the failed opens kept no lock
    assert ed.layer == 1


def test_permutation_file_is_used_and_checked(tmp_path, tiny):
    perm_file = tmp_path / "perm.safetensors"
    save_permutation(generate_permutation(128, 9), perm_file, seed=9)
    ed = tiny("llama", name="p1", copy=False, permutation_file=perm_file)
    assert torch.equal(ed.fingerprinter.permutation, generate_permutation(128, 9))
    assert ed.edit(ed.render(FACT[0]), FACT[1]).success
    save_permutation(generate_permutation(64, 9), perm_file)
    with pytest.raises(InvalidInputError, match="permutation"):
        tiny("llama", name="p2", copy=False, permutation_file=perm_file)


# --- damage and repair ----------------------------------------------------------------------------------------------
def test_a_missing_fingerprinter_is_refused_then_rebuilt_by_repair(tiny):
    ed = tiny("gpt2")
    store = ed.store.root
    p = ed.render(FACT[0])
    r = ed.edit(p, FACT[1])
    edited = tf(ed, [(p, FACT[1])])
    digest = ed.fingerprinter.digest()
    ed.close()
    (store / FINGERPRINTER_FILE).unlink()
    for kw in ({}, {"read_only": True}):
        with pytest.raises(CorruptStoreError, match="missing"):
            tiny("gpt2", **kw)
    ro = tiny("gpt2", read_only=True, repair=True)  # a reader repairs in memory and writes nothing
    assert ro.fingerprinter.digest() == digest and ro.route(p)[0] == r.edit_id
    ro.close()
    assert not (store / FINGERPRINTER_FILE).exists()
    ed = tiny("gpt2", repair=True)
    assert ed.fingerprinter.digest() == digest and torch.equal(tf(ed, [(p, FACT[1])])[0], edited[0])
    ed.close()
    ed = tiny("gpt2")  # the writer kept it: a plain open works again
    assert ed.route(p)[0] == r.edit_id


def test_a_fingerprinter_of_another_seed_cannot_be_rebuilt(tiny):
    ed = tiny("llama")  # made with seed 0
    store = ed.store.root
    ed.close()
    (store / FINGERPRINTER_FILE).unlink()
    with pytest.raises(CorruptStoreError, match="cannot be rebuilt"):
        tiny("llama", config=config(seed=5), repair=True)
    assert not (store / FINGERPRINTER_FILE).exists()  # nothing was written in its place
    assert tiny("llama", repair=True).fingerprinter.top_k == 16  # the right seed rebuilds it


def test_repair_store_reverts_a_corrupt_delta_and_rebuilds_the_fingerprinter(tiny):
    ed = tiny("llama")
    store = ed.store.root
    p1, p2 = ed.render(FACT[0]), ed.render(FACT2[0])
    r1, r2 = ed.edit(p1, FACT[1]), ed.edit(p2, FACT2[1])
    ed.close()
    con = sqlite3.connect(store / DB_FILE)
    (d,) = con.execute("SELECT delta FROM edits WHERE id = ?", (r1.edit_id,)).fetchone()
    con.execute("UPDATE edits SET delta = ? WHERE id = ?", (d[:-4] + b"\x00\x00\xc0\x7f", r1.edit_id))  # a NaN
    con.commit()
    con.close()
    (store / FINGERPRINTER_FILE).write_bytes(b"garbage")
    with Store(store, read_only=True) as st:
        report = st.check()
    assert not report["ok"] and report["bad_deltas"][0]["id"] == r1.edit_id
    out = repair_store(store, model=str(tiny.dirs["llama"]), config=config())
    assert out["check"]["bad_deltas"] == [{"id": r1.edit_id, "status": "reverted", "problem": "checksum mismatch"}]
    assert out["ok"], out  # what could not be rebuilt is reverted: the store is usable
    assert any(f"#{r1.edit_id}" in a and "reverted" in a for a in out["actions"])
    assert any("fingerprinter" in a for a in out["actions"])
    ed = tiny("llama")
    assert ed.get_edit(r1.edit_id).status == "reverted" and ed.route(p1)[0] is None
    assert ed.route(p2)[0] == r2.edit_id and ed.score(p2, FACT2[1]) == 1.0


def test_sentence_keys_an_older_store_lacks_are_computed_and_kept_by_a_writer_only(tiny):
    ed = tiny("llama")
    store = ed.store.root
    p = ed.render(FACT[0])
    r = ed.edit(p, FACT[1])
    ed.close()
    con = sqlite3.connect(store / DB_FILE)
    con.execute("UPDATE edits SET qkey = NULL")  # as written before keys were stored
    con.commit()
    con.close()
    ro = tiny("llama", read_only=True)
    assert ro.route(p)[0] == r.edit_id and ro.score(p, FACT[1]) == 1.0
    ro.close()
    con = sqlite3.connect(store / DB_FILE)
    assert con.execute("SELECT qkey FROM edits").fetchone()[0] is None  # the reader wrote nothing
    con.close()
    ed = tiny("llama")
    assert ed.route(p)[0] == r.edit_id
    ed.close()
    con = sqlite3.connect(store / DB_FILE)
    assert len(con.execute("SELECT qkey FROM edits").fetchone()[0]) == KEY_DIM * 4  # the writer kept it
    con.close()


# --- stores from sam 0.1 --------------------------------------------------------------------------------------------
def test_a_schema_1_store_upgrades_and_answers_as_before(tmp_path, tiny, build_v1_store):
    """A line-format edit written as schema 1 (prompt "question\\n", safetensors blob, identity without
    d_model) opens in the editor, is upgraded in place and answers exactly as the edit it was made from."""
    ed = tiny("llama", fmt="line", name="v2")
    p = ed.render(FACT[0])
    r = ed.edit(p, FACT[1])
    cols, delta = ed.store.delta(r.edit_id)
    edited = tf(ed, [(p, FACT[1])] + [(ed.render(q), a) for q, a in OTHER])
    identity = {k: ed.store.meta(k) for k in ("model", "layer", "d_ff", "top_k", "fingerprinter")}
    fp_file = ed.store.fingerprinter_path
    v1 = build_v1_store(tmp_path / "v1", [{"prompt": p.text, "target": FACT[1], "cols": cols, "delta": delta,
                                           "steps": r.steps, "loss": r.loss}], identity, fingerprinter=fp_file)
    ed.close()
    with pytest.raises(CorruptStoreError, match="sam upgrade"):
        tiny("llama", name="v1", copy=False, read_only=True)
    up = tiny("llama", name="v1", copy=False)  # "auto": the upgrade recorded the line format
    assert up.prompts.style == "line" and up.store.meta("upgraded_from") == "1"
    assert (v1 / "backup").is_dir() and not (v1 / "memory").exists()
    assert up.route(p)[0] == 1 and up.edits()[0].question == FACT[0]
    got = tf(up, [(up.render(FACT[0]), FACT[1])] + [(up.render(q), a) for q, a in OTHER])
    assert all(torch.equal(a, b) for a, b in zip(got, edited))
    _, _, qkeys = up.store.db.active_keys()
    assert all(k is not None for k in qkeys)  # the writer stored the sentence keys schema 1 did not have
    r2 = up.edit(up.render(FACT[0]), "Harvard")  # the upgraded edit is superseded like any other
    assert r2.supersedes == 1
    up.close()


def test_an_empty_schema_1_store_takes_edits_after_its_upgrade(tmp_path, tiny, build_v1_store):
    ed = tiny("llama", fmt="line", name="v2")
    identity = {k: ed.store.meta(k) for k in ("model", "layer", "d_ff", "top_k", "fingerprinter")}
    build_v1_store(tmp_path / "v1", [], identity, fingerprinter=ed.store.fingerprinter_path)
    ed.close()
    up = tiny("llama", name="v1", copy=False)
    p = up.render(FACT[0])
    r = up.edit(p, FACT[1])  # reading its delta needs d_model, which the claim recorded
    assert up.store.meta("d_model") == "64" and up.route(p)[0] == r.edit_id and up.score(p, FACT[1]) == 1.0
    assert up.store.check()["ok"]


# --- PEFT-style adapter -------------------------------------------------------------------------------------------
def test_disable_adapter_answers_as_the_unedited_model(tiny):
    ed = tiny("llama")
    p = ed.render(FACT[0])
    before = tf(ed, [(p, FACT[1])])
    ed.edit(p, FACT[1])
    edited = tf(ed, [(p, FACT[1])])
    assert not torch.equal(edited[0], before[0])
    with ed.disable_adapter():
        assert torch.equal(tf(ed, [(p, FACT[1])])[0], before[0])
    assert torch.equal(tf(ed, [(p, FACT[1])])[0], edited[0])  # back on after the block


def test_save_pretrained_and_from_pretrained_round_trip_exactly(tmp_path, tiny):
    ed = tiny("llama")
    p, p2 = ed.render(FACT[0]), ed.render(FACT2[0])
    r1, r2 = ed.edit(p, FACT[1]), ed.edit(p2, FACT2[1])
    ed.revert(r2.edit_id)  # only active edits are saved
    pairs = [(p, FACT[1]), (p2, FACT2[1])] + [(ed.render(q), a) for q, a in OTHER]
    want = tf(ed, pairs)
    out = ed.save_pretrained(tmp_path / "adapter")
    assert {f.name for f in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                               "fingerprinter.safetensors"}
    with pytest.raises(InvalidInputError, match="already holds an adapter"):
        ed.save_pretrained(out)
    loaded = MemoirEditor.from_pretrained(out, tmp_path / "new-store", model=str(tiny.dirs["llama"]))
    try:
        got = tf(loaded, pairs)
        assert all(torch.equal(a, b) for a, b in zip(want, got))
        [rec] = loaded.store.edits("active")
        assert (rec.question, rec.target) == (FACT[0], FACT[1]) and loaded.route(p)[0] == rec.id
        assert all(torch.equal(a, b) for a, b in zip(loaded.store.delta(rec.id), ed.store.delta(r1.edit_id)))
    finally:
        loaded.close()


def test_from_pretrained_refuses_another_model_and_a_damaged_adapter(tmp_path, tiny):
    ed = tiny("llama")
    ed.edit(ed.render(FACT[0]), FACT[1])
    out = ed.save_pretrained(tmp_path / "adapter")
    with pytest.raises(StoreMismatchError):
        MemoirEditor.from_pretrained(out, tmp_path / "gpt2-store", model=str(tiny.dirs["gpt2"]))
    (out / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptStoreError, match="cannot read the adapter"):
        MemoirEditor.from_pretrained(out, tmp_path / "other", model=str(tiny.dirs["llama"]))
    with pytest.raises(InvalidInputError, match="not a sam adapter"):
        MemoirEditor.from_pretrained(tmp_path / "nowhere", tmp_path / "other2", model=str(tiny.dirs["llama"]))
