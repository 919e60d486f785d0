"""EditTrainer on tiny models: the fast loop (cached head, tail through the upper layers) against the naive
loop (the whole model every step), and the key it trains against the key inference routes on."""

from __future__ import annotations

import pytest
import torch

from sam.core.editor import EditorConfig, MemoirEditor
from sam.core.trainer import EditRequest

FACT = ("What university did Watts Humphrey attend?", "University of Michigan")
KINDS = ["llama", "gpt2"]


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


@pytest.fixture(scope="module")
def editors(tmp_path_factory, tiny_llama_dir, tiny_gpt2_dir):
    """One editor per (kind, format) with an fp32 lm_head copy: the fast loop's logits are then exact, and
    only the layer caching is compared."""
    made = {}

    def get(kind: str, fmt: str = "auto") -> MemoirEditor:
        if (kind, fmt) not in made:
            model = {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[kind]
            made[kind, fmt] = MemoirEditor.open(tmp_path_factory.mktemp(f"trainer-{kind}") / "store", model=str(model),
                                                prompt_format=fmt,
                                                config=EditorConfig(layer=1, top_k=16, train_dtype="float32"))
        return made[kind, fmt]

    yield get
    for ed in made.values():
        ed.close()


def run(ed: MemoirEditor, fast: bool, steps: int, fmt_prompt=None):
    p = fmt_prompt or ed.render(FACT[0])
    return ed.trainer.train([EditRequest(ed._variants(p), FACT[1])], lr=ed.config.learning_rate, max_steps=steps,
                            stop_loss=0.0, fast=fast)[0]


@pytest.mark.parametrize("kind,fmt", [("llama", "auto"), ("gpt2", "auto"), ("llama", "line")])
def test_fast_and_naive_loops_give_the_same_loss_sequence(editors, kind, fmt):
    ed = editors(kind, fmt)
    fast = [run(ed, True, s) for s in range(4)]  # the loss after 0, 1, 2, 3 optimiser steps
    naive = [run(ed, False, s) for s in range(4)]
    fast_losses, naive_losses = [o.loss for o in fast], [o.loss for o in naive]
    assert fast_losses == pytest.approx(naive_losses, rel=1e-4, abs=1e-5)
    assert len(set(round(x, 6) for x in fast_losses)) == 4  # the loss does move: the comparison means something
    assert torch.equal(fast[-1].cols, naive[-1].cols)  # the same key...
    assert torch.allclose(fast[-1].delta, naive[-1].delta, rtol=1e-3, atol=1e-4)  # ...and the same trained delta
    assert [o.steps for o in fast] == [o.steps for o in naive] == list(range(4))
    assert [o.accuracy for o in fast] == [o.accuracy for o in naive]
    assert all(o.finite for o in fast + naive)
    assert not fast[0].delta.any()  # an edit starts from zero: it owns its delta


@pytest.mark.parametrize("kind", KINDS)
def test_the_trained_key_is_the_key_inference_routes_on(editors, kind):
    ed = editors(kind)
    prompts = [ed.render(FACT[0]), ed.render("Hi"), ed.render("Which family does Ramalinaceae belong to?")]
    for p in prompts:
        o = ed.trainer.train([EditRequest(ed._variants(p), "x")], lr=0.1, max_steps=0, stop_loss=0.0)[0]
        want = ed.fingerprinter.columns(ed.pooled([p]))[0]
        assert torch.equal(o.cols, want)
        assert o.cols.shape == (16,) and bool((o.cols[1:] > o.cols[:-1]).all())
        naive = ed.trainer.train([EditRequest(ed._variants(p), "x")], lr=0.1, max_steps=0, stop_loss=0.0,
                                 fast=False)[0]
        assert torch.equal(naive.cols, want)


def test_training_stops_at_the_stop_loss_and_leaves_the_model_alone(editors):
    ed = editors("llama")
    weights = {k: v.clone() for k, v in ed.model.state_dict().items()}
    o = run(ed, True, 30)
    start = run(ed, True, 0).loss
    threshold = (start + o.loss) / 2
    stop = ed.trainer.train([EditRequest(ed._variants(ed.render(FACT[0])), FACT[1])], lr=ed.config.learning_rate,
                            max_steps=30, stop_loss=threshold)[0]
    assert 0 < stop.steps < 30 and stop.loss < threshold
    assert all(torch.equal(v, weights[k]) for k, v in ed.model.state_dict().items())  # the model is frozen
    assert all(p.grad is None for p in ed.model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_the_edited_layer_is_replayed_in_the_steps_and_that_changes_nothing(editors, kind):
    """Each step takes the edited layer's attention output and the memory's input from the first pass: its
    attention runs once per edit, not once per step, and the losses and deltas are those of running it."""
    ed = editors(kind)
    layer = ed.trainer.layers[ed.trainer.layer]
    attn = layer.self_attn if hasattr(layer, "self_attn") else layer.attn
    projection = next(m for m in attn.modules() if m is not attn and not list(m.children()))  # runs only in attn
    run(ed, True, 0)  # the model-written prefixes and the frames' cache are made here
    calls = []
    handle = projection.register_forward_hook(lambda *_: calls.append(1))
    try:
        replayed = run(ed, True, 3)
        n_replayed = len(calls)
        ed.trainer.replay_edited = False
        try:
            calls.clear()
            computed = run(ed, True, 3)
        finally:
            ed.trainer.replay_edited = True
    finally:
        handle.remove()
    assert n_replayed == 1 and len(calls) == 1 + 4  # the first pass, then each of 3 steps and the final loss
    assert replayed.steps == computed.steps == 3
    assert replayed.loss == pytest.approx(computed.loss, rel=1e-5, abs=1e-6)
    assert torch.allclose(replayed.delta, computed.delta, rtol=1e-4, atol=1e-5) and replayed.delta.abs().max() > 0
    assert "forward" not in vars(attn)  # the module's own forward is back


@pytest.mark.parametrize("kind", KINDS)
def test_the_frames_cache_changes_nothing_and_is_not_changed_by_training(editors, kind):
    """The frames (system prompt, earlier turns) are run once and kept: a cached frame trains bit for bit as a
    freshly run one, and both as the whole prompt run in one pass (the frames cache turned off)."""
    ed = editors(kind)
    ed.trainer.clear_frames()
    fresh = run(ed, True, 3)
    assert ed.trainer.cached_frames == 1
    cached = run(ed, True, 3)  # from the kept cache, which the first training must have left as it was
    assert torch.equal(cached.delta, fresh.delta) and cached.loss == fresh.loss
    ed.trainer.reuse_frames = False
    try:
        whole = run(ed, True, 3)
    finally:
        ed.trainer.reuse_frames = True
    assert torch.equal(whole.cols, fresh.cols)
    assert whole.loss == pytest.approx(fresh.loss, rel=1e-5, abs=1e-6)
    assert torch.allclose(whole.delta, fresh.delta, rtol=1e-4, atol=1e-5)


def test_the_frames_cache_keeps_a_few_sets_of_frames(editors):
    ed = editors("llama")
    ed.trainer.clear_frames()
    for i in range(ed.trainer.FRAME_CACHES + 2):  # another system prompt: another set of frames
        p = ed.prompts.render(FACT[0], system=f"System prompt number {i}.")
        ed.trainer.train([EditRequest([p], FACT[1])], lr=0.1, max_steps=0, stop_loss=0.0)
    assert ed.trainer.cached_frames == ed.trainer.FRAME_CACHES


SECOND = ("Which family does Ramalinaceae belong to?", "Lecanorales")


def _graphed(ed: MemoirEditor, on: bool, steps: int, fact=FACT):
    ed.trainer.graph_steps = on
    try:
        return ed.trainer.train([EditRequest(ed._variants(ed.render(fact[0])), fact[1])], lr=ed.config.learning_rate,
                                max_steps=steps, stop_loss=0.0)[0]
    finally:
        ed.trainer.graph_steps = False


@pytest.mark.parametrize("kind", KINDS)
def test_the_static_padded_passes_of_the_edit_graphs_train_as_the_eager_loop(editors, kind):
    """sam/core/edit_graphs.py pads an edit to its bucket's shapes and runs its first pass and steps on static
    tensors (CUDA graphs on a GPU, the same tensors run eagerly here): the losses, steps, accuracy and delta are the
    eager loop's, and the next edit of the bucket (its inputs copied in, W and Adam zeroed) trains as it would
    alone."""
    ed = editors(kind)
    ed.trainer.graphs.clear()
    for fact in (FACT, SECOND, FACT):
        for steps in (0, 3):
            eager, graphed = _graphed(ed, False, steps, fact), _graphed(ed, True, steps, fact)
            assert graphed.steps == eager.steps == steps
            assert graphed.loss == pytest.approx(eager.loss, rel=1e-4, abs=1e-5)
            assert graphed.accuracy == eager.accuracy and graphed.finite
            assert torch.equal(graphed.cols, eager.cols)
            assert torch.allclose(graphed.delta, eager.delta, rtol=1e-3, atol=1e-5)
            assert bool(graphed.delta.any()) == (steps > 0)  # it trained, from zero each time
    # a first pass and a step per bucket; the two facts share buckets or not; nothing is captured on a CPU
    assert 2 <= len(ed.trainer.graphs) <= 4 and ed.trainer.graphs.captured == 0
    stop = ed.trainer.train([EditRequest(ed._variants(ed.render(FACT[0])), FACT[1])], lr=ed.config.learning_rate,
                            max_steps=30, stop_loss=_graphed(ed, False, 2).loss)[0]  # stops where the eager loop does
    ed.trainer.graph_steps = True
    try:
        graphed_stop = ed.trainer.train([EditRequest(ed._variants(ed.render(FACT[0])), FACT[1])],
                                        lr=ed.config.learning_rate, max_steps=30, stop_loss=stop.loss + 1e-4)[0]
    finally:
        ed.trainer.graph_steps = False
    assert graphed_stop.steps == stop.steps and torch.allclose(graphed_stop.delta, stop.delta, rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("model", ["tiny", "default"])
def test_the_cuda_graphs_train_as_the_eager_loop(tmp_path, tiny_llama_dir, model):
    tiny = {"model": str(tiny_llama_dir), "config": EditorConfig(layer=1, top_k=16)} if model == "tiny" else {}
    ed = MemoirEditor.open(tmp_path / "store", device="cuda", **tiny)
    try:
        assert ed.trainer.graph_steps  # on by default on a GPU
        for fact in (FACT, SECOND, FACT):
            for steps in (0, 4):
                eager, graphed = _graphed(ed, False, steps, fact), _graphed(ed, True, steps, fact)
                assert graphed.steps == eager.steps == steps
                assert graphed.loss == pytest.approx(eager.loss, rel=1e-3, abs=1e-4)
                assert torch.equal(graphed.cols, eager.cols)
                # padding changes the attention kernels' reductions, and Adam's first steps (about lr * sign of
                # the gradient) turn that into ~1e-3 on the smallest entries: on the H200 |delta| ~0.3, off by
                # up to 7e-4 (results/edit/cuda/graphs.log); the edits' Rel/Gen/Loc agree to every digit
                assert float((graphed.delta - eager.delta).norm()) <= 1e-2 * float(eager.delta.norm())
        assert ed.trainer.graphs.captured == len(ed.trainer.graphs) >= 2 and ed.trainer.graphs.error is None
    finally:
        ed.close()
