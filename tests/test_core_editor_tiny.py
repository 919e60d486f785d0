"""MemoirEditor end to end on tiny random Llama and GPT-2 models saved as HF folders (seconds, not minutes)."""

from __future__ import annotations

import pytest
import torch

from sam.core.editor import EditorConfig, MemoirEditor
from sam.core.fingerprinter import generate_permutation, save_permutation
from sam.errors import (CorruptStoreError, InvalidInputError, SamError, StoreLockedError, StoreMismatchError,
                        UnknownEditError)
from sam.verify.phase_b import teacher_forced_logits

FACT = ("What university did Watts Humphrey attend?", "University of Michigan")
FACT2 = ("Which family does Ramalinaceae belong to?", "Lamiinae")
OTHER = [("The capital of France is", "Paris"), ("Write a haiku about the sea.", "Waves")]
KINDS = ["llama", "gpt2"]


def config(**kw) -> EditorConfig:
    return EditorConfig(**{"layer": 1, "top_k": 16, "max_steps": 10, "lr": 500.0, "expert_load_bound": 4.0, **kw})


@pytest.fixture(params=KINDS)
def model_dir(request, tiny_llama_dir, tiny_gpt2_dir):
    return {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]


def open_ed(store, model_dir, **kw) -> MemoirEditor:
    cfg = kw.pop("config", None) or config()
    return MemoirEditor.open(store, model=str(model_dir), config=cfg, **kw)


def test_edit_persists_exactly_and_reverts_exactly(tmp_path, model_dir):
    store = tmp_path / "store"
    pairs = [FACT] + OTHER
    with open_ed(store, model_dir) as ed:
        before = teacher_forced_logits(ed, pairs)
        gen_before = ed.generate(FACT[0], 6)
        assert ed.score(*FACT) < 1.0  # a random model does not know it yet
        r = ed.edit(*FACT)
        assert r.success and r.target_accuracy == 1.0 and 1 <= r.steps <= 10 and r.expert == 0
        assert ed.score(*FACT) == 1.0
        assert ed.generate(FACT[0], 8).strip().startswith(FACT[1])  # greedy decoding reproduces the target
        assert ed.generate(FACT[0], 6, memory=False) == gen_before
        assert ed.route(FACT[0]) == (r.edit_id, 1.0)
        assert all(ed.route(p)[0] is None for p, _ in OTHER)
        edited = teacher_forced_logits(ed, pairs)
        for b, e in zip(before[1:], edited[1:]):  # unrelated prompts: bit-identical
            assert torch.equal(b, e)
        assert ed.stats()["edits"] == 1 and ed.stats()["experts"] == 1
    with open_ed(store, model_dir) as ed:  # a new editor on the same store
        again = teacher_forced_logits(ed, pairs)
        assert all(torch.equal(a, e) for a, e in zip(again, edited))
        assert ed.route(FACT[0])[0] == r.edit_id
        rec = ed.get_edit(r.edit_id)
        assert (rec.prompt, rec.target, rec.status, rec.steps) == (FACT[0], FACT[1], "active", r.steps)
        reverted = ed.revert(r.edit_id)
        assert reverted.status == "reverted"
        after = teacher_forced_logits(ed, pairs)
        assert all(torch.equal(a, b) for a, b in zip(after, before))
        assert ed.route(FACT[0])[0] is None
        assert torch.equal(ed.memory.memory[0], torch.zeros_like(ed.memory.memory[0]))  # d - d == 0 exactly
        assert ed.generate(FACT[0], 6) == gen_before
    with open_ed(store, model_dir) as ed:  # the revert persisted too
        assert ed.edits() == [] and [e.status for e in ed.edits(status=None)] == ["reverted"]
        assert all(torch.equal(a, b) for a, b in zip(teacher_forced_logits(ed, pairs), before))


@pytest.mark.parametrize("kind", KINDS)
def test_fast_and_naive_loops_give_the_same_loss_sequence(tmp_path, kind, tiny_llama_dir, tiny_gpt2_dir):
    model_dir = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[kind]
    # an fp32 lm_head copy: the fast loop's logits are then exact, and only the layer caching is compared
    with open_ed(tmp_path / "store", model_dir, config=config(head_dtype="float32")) as ed:
        if ed.memory.num_experts == 0:
            ed.memory.add_expert()
        texts = [FACT[0]] + [f"{p} {FACT[0]}" for p in ed.prefixes]

        def run(fast: bool, steps: int):
            out, expert = ed.trainer.train(texts, FACT[1], ed.fingerprinter.columns, lambda cols: 0, lr=500.0,
                                           max_steps=steps, stop_loss=0.0, fast=fast)
            return out

        fast = [run(True, s) for s in range(4)]  # the loss after 0, 1, 2, 3 SGD steps
        naive = [run(False, s) for s in range(4)]
    fast_losses, naive_losses = [o.loss for o in fast], [o.loss for o in naive]
    assert fast_losses == pytest.approx(naive_losses, rel=1e-4, abs=1e-5)
    assert len(set(round(x, 6) for x in fast_losses)) == 4  # the loss does move: the comparison means something
    assert torch.equal(fast[-1].cols, naive[-1].cols)  # the same fingerprint...
    assert torch.allclose(fast[-1].delta, naive[-1].delta, rtol=1e-3, atol=1e-4)  # ...and the same trained delta
    assert [o.steps for o in fast] == list(range(4))


def test_two_edits_are_independent_and_one_file_per_expert(tmp_path, tiny_llama_dir):
    store = tmp_path / "store"
    with open_ed(store, tiny_llama_dir) as ed:
        r1, r2 = ed.edit(*FACT), ed.edit(*FACT2)
        assert r1.success and r2.success and r1.edit_id != r2.edit_id
        files = list((store / "memory").glob("*.safetensors"))
        assert ed.memory.num_experts == 1 and len(files) == 1  # the expert's older file was replaced, not kept
        ed.revert(r1.edit_id)
        assert ed.score(*FACT2) == 1.0 and ed.route(FACT2[0])[0] == r2.edit_id
        assert ed.route(FACT[0])[0] is None
    with open_ed(store, tiny_llama_dir) as ed:
        assert [e.id for e in ed.edits()] == [r2.edit_id] and ed.score(*FACT2) == 1.0


def test_writer_lock_and_read_only_alongside(tmp_path, tiny_llama_dir):
    store = tmp_path / "store"
    with pytest.raises(CorruptStoreError):  # nothing to read yet
        open_ed(store, tiny_llama_dir, read_only=True)
    writer = open_ed(store, tiny_llama_dir)
    try:
        r = writer.edit(*FACT)
        with pytest.raises(StoreLockedError):
            open_ed(store, tiny_llama_dir)
        with open_ed(store, tiny_llama_dir, read_only=True) as reader:
            assert reader.score(*FACT) == 1.0 and reader.route(FACT[0])[0] == r.edit_id
            assert [e.id for e in reader.edits()] == [r.edit_id]
            with pytest.raises(SamError, match="read-only"):
                reader.edit(*FACT2)
            with pytest.raises(SamError, match="read-only"):
                reader.revert(r.edit_id)
        assert writer.score(*FACT) == 1.0  # the reader changed nothing
    finally:
        writer.close()
    open_ed(store, tiny_llama_dir).close()  # the lock was released with close()


def test_store_mismatch_is_refused_and_releases_the_lock(tmp_path, tiny_llama_dir, tiny_gpt2_dir):
    store = tmp_path / "store"
    open_ed(store, tiny_llama_dir).close()
    with pytest.raises(StoreMismatchError, match="model"):  # same d_ff, another model
        open_ed(store, tiny_gpt2_dir)
    with pytest.raises(StoreMismatchError):  # the same model, another layer
        open_ed(store, tiny_llama_dir, config=config(layer=2))
    with open_ed(store, tiny_llama_dir) as ed:  # the failed opens did not keep the writer lock
        assert ed.layer == 1


def test_bad_input_is_refused_and_changes_nothing(tmp_path, tiny_llama_dir):
    with open_ed(tmp_path / "store", tiny_llama_dir) as ed:
        r = ed.edit(*FACT)
        long_target = " ".join(["word"] * (ed.config.max_target_tokens + 5))
        for prompt, target in [("", "x"), ("   \n", "x"), (FACT[0], ""), (FACT[0], "  "), (None, "x"),
                               (FACT[0], long_target)]:
            with pytest.raises(InvalidInputError):
                ed.edit(prompt, target)
        with pytest.raises(InvalidInputError):
            ed.route("")
        with pytest.raises(InvalidInputError):
            ed.generate(" ")
        with pytest.raises(UnknownEditError):
            ed.revert(12345)
        with pytest.raises(UnknownEditError):
            ed.get_edit(12345)
        ed.revert(r.edit_id)
        with pytest.raises(InvalidInputError, match="already reverted"):
            ed.revert(r.edit_id)
        assert [e.id for e in ed.edits(status=None)] == [r.edit_id] and ed.memory.num_experts == 1
    with pytest.raises(InvalidInputError, match="out of range"):
        open_ed(tmp_path / "other", tiny_llama_dir, config=config(layer=3))


def test_corrupt_memory_file_then_repair(tmp_path, tiny_gpt2_dir):
    store = tmp_path / "store"
    with open_ed(store, tiny_gpt2_dir) as ed:
        r1, r2 = ed.edit(*FACT), ed.edit(*FACT2)
        edited = teacher_forced_logits(ed, [FACT, FACT2])
    (bad,) = (store / "memory").glob("*.safetensors")
    bad.write_bytes(b"\x01" * 100)
    with pytest.raises(CorruptStoreError, match="repair"):
        open_ed(store, tiny_gpt2_dir)
    with open_ed(store, tiny_gpt2_dir, read_only=True, repair=True) as ro:  # repair in memory, file untouched
        assert ro.score(*FACT) == 1.0
    assert bad.exists()
    with open_ed(store, tiny_gpt2_dir, repair=True) as ed:
        assert ed.score(*FACT) == 1.0 and ed.score(*FACT2) == 1.0
        got = teacher_forced_logits(ed, [FACT, FACT2])
        assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, edited))  # rebuilt from the stored deltas
    assert not bad.exists() and len(list((store / "memory").glob("*.safetensors"))) == 1
    with open_ed(store, tiny_gpt2_dir) as ed:  # repair rewrote the file: a plain open works again
        assert ed.score(*FACT) == 1.0 and {e.id for e in ed.edits()} == {r1.edit_id, r2.edit_id}
    for f in (store / "memory").glob("*.safetensors"):
        f.unlink()  # a missing file is as bad as a corrupt one
    with pytest.raises(CorruptStoreError):
        open_ed(store, tiny_gpt2_dir)


def test_permutation_file_is_used_and_checked(tmp_path, tiny_llama_dir):
    perm_file = tmp_path / "perm.safetensors"
    save_permutation(generate_permutation(128, 9), perm_file, seed=9)
    with open_ed(tmp_path / "store", tiny_llama_dir, permutation_file=perm_file) as ed:
        assert torch.equal(ed.fingerprinter.permutation, generate_permutation(128, 9))
        assert ed.edit(*FACT).success
    save_permutation(generate_permutation(64, 9), perm_file)
    with pytest.raises(InvalidInputError, match="permutation"):
        open_ed(tmp_path / "store2", tiny_llama_dir, permutation_file=perm_file)
