"""ResidualMemoryLayer, attach_memory and the Router on tiny Llama (nn.Linear) and GPT-2 (Conv1D) models.

    y = base_layer(x) + W_i @ x[..., m_i]   at the answer positions of a row routed to edit i
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from conftest import TINY_D_FF, tiny_config
from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation
from sam.core.memory_layer import (ResidualMemoryLayer, Route, TrainSlot, attach_memory, find_site, gather_columns,
                                   num_layers)
from sam.core.router import Decision, Router
from sam.core.sentence_key import DIM as KEY_DIM
from sam.core.sentence_key import SentenceKey, names, swapped, words
from sam.errors import InvalidInputError

VOCAB = 500
D_MODEL = 64


@pytest.fixture(autouse=True)
def _threads(one_thread):
    pass


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(kind, VOCAB)).eval().requires_grad_(False)


def ids(seed: int = 0, shape=(3, 9)) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def weight(seed: int, k: int, d_model: int = D_MODEL) -> torch.Tensor:
    return torch.randn(d_model, k, generator=torch.Generator().manual_seed(seed))


def route(rows: list[int], cols: list[list[int]], seeds: list[int]) -> Route:
    return Route(torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                 torch.stack([weight(s, len(cols[0])) for s in seeds]), list(seeds))


def expected(layer, x, r: Route, positions: torch.Tensor | None) -> torch.Tensor:
    """The formula, row by row, without the layer's batching."""
    y = layer.base_layer(x).clone()
    for a, b in enumerate(r.rows.tolist()):
        add = x[b][:, r.cols[a]] @ r.weight[a].T  # (T, d_model)
        if positions is not None:
            add = add * positions[b].unsqueeze(-1)
        y[b] += add
    return y


# --- zero impact ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,base_type", [("llama", "Linear"), ("gpt2", "Conv1D")])
def test_wrapping_and_an_empty_route_are_bit_identical(kind, base_type):
    model = tiny(kind)
    x = ids()
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # a padded row too
    with torch.no_grad():
        before = model(input_ids=x, attention_mask=mask).logits
    layer, site = attach_memory(model, 1)
    assert type(layer.base_layer).__name__ == base_type
    assert layer.in_features == TINY_D_FF and layer.out_features == D_MODEL
    with torch.no_grad():
        wrapped = model(input_ids=x, attention_mask=mask).logits
        with layer.applying(Route.empty(8, D_MODEL, "cpu")):
            empty = model(input_ids=x, attention_mask=mask).logits
        with layer.applying(lambda pooled: Route.empty(8, D_MODEL, "cpu"), None, mask.bool()):
            silent = model(input_ids=x, attention_mask=mask).logits
        with layer.applying(route([1], [list(range(8))], [0])):
            fired = model(input_ids=x, attention_mask=mask).logits
        after = model(input_ids=x, attention_mask=mask).logits  # the route ended with its block
    for got in (wrapped, empty, silent, after):
        assert torch.equal(got, before)
    assert torch.equal(fired[[0, 2]], before[[0, 2]])  # rows without a match are untouched
    assert not torch.equal(fired[1], before[1])


# --- the formula ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_memory_adds_exactly_each_rows_sparse_columns(kind):
    layer, _ = attach_memory(tiny(kind), 0)
    x = torch.randn(3, 5, TINY_D_FF, generator=torch.Generator().manual_seed(2))
    r = route([0, 2], [[3, 9, 40, 77, 100], [1, 2, 3, 4, 127]], [1, 2])  # two edits, each with its own columns
    first = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad(), layer.applying(r, first) as resolved:
        y = layer(x)
        step = layer(x[:, -1:])  # a decode step: the same route, every position is an answer token
    assert resolved == [r]
    want = expected(layer, x, r, first.float())
    assert torch.allclose(y, want, atol=1e-5)
    base = layer.base_layer(x)
    assert torch.equal(y[~first], base[~first])  # before the answer: bit-identical
    assert torch.equal(y[1], base[1])  # row 1 has no edit
    assert torch.allclose(step, expected(layer, x[:, -1:], r, None), atol=1e-5)
    with torch.no_grad(), layer.applying(r):  # no positions: every position of the first forward
        assert torch.allclose(layer(x), expected(layer, x, r, None), atol=1e-5)


def test_gather_columns_reads_each_rows_own_columns():
    x = torch.arange(2 * 3 * 6, dtype=torch.float32).view(2, 3, 6)
    cols = torch.tensor([[0, 5], [2, 3]])
    got = gather_columns(x, cols)
    assert torch.equal(got[0], x[0][:, [0, 5]]) and torch.equal(got[1], x[1][:, [2, 3]])


def test_a_router_is_called_once_on_the_first_forwards_key_tokens():
    layer = ResidualMemoryLayer(nn.Linear(16, 8), 16, 8)
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    key = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    calls = []
    r = Route(torch.tensor([1]), torch.tensor([[0, 3, 5]]), torch.randn(1, 8, 3), [7])

    def router(pooled):
        calls.append(pooled)
        return r

    with torch.no_grad(), layer.applying(router, key.clone(), key) as resolved:
        assert resolved == []
        y = layer(x)
        assert resolved == [r]
        layer(x[:, -1:])
        layer(x[:, -1:])
    assert len(calls) == 1  # decode steps reuse the route
    assert torch.allclose(calls[0], TopHashFingerprinter.pool(x, key))
    assert torch.allclose(calls[0][0], x[0, 1:3].mean(0))
    want = layer.base_layer(x)
    want[1] += (x[1][:, [0, 3, 5]] @ r.weight[0].T) * key[1].unsqueeze(-1)
    assert torch.allclose(y, want, atol=1e-6)


def test_shape_errors_are_invalid_input():
    layer = ResidualMemoryLayer(nn.Linear(16, 8), 16, 8)
    x = torch.randn(1, 5, 16)
    with layer.applying(lambda p: Route.empty(2, 8, "cpu")):  # a router without the key mask
        with pytest.raises(InvalidInputError, match="key mask"):
            layer(x)
    with layer.applying(lambda p: Route.empty(2, 8, "cpu"), None, torch.ones(1, 3, dtype=torch.bool)):
        with pytest.raises(InvalidInputError, match="key mask"):
            layer(x)
    r = Route(torch.tensor([0]), torch.tensor([[1, 2]]), torch.ones(1, 8, 2), [1])
    with layer.applying(r, torch.ones(1, 3, dtype=torch.bool)):
        with pytest.raises(InvalidInputError, match="positions"):
            layer(x)


# --- switches -----------------------------------------------------------------------------------------------------
def test_disabled_capture_and_applying_nest_and_restore_even_on_errors():
    layer = ResidualMemoryLayer(nn.Linear(16, 8), 16, 8)
    x = torch.randn(1, 3, 16)
    r = Route(torch.tensor([0]), torch.tensor([[1, 2]]), torch.ones(1, 8, 2), [1])
    base = layer.base_layer(x)
    with torch.no_grad(), layer.applying(r):
        assert not torch.equal(layer(x), base)
        with layer.disabled():
            assert torch.equal(layer(x), base)
            with layer.disabled():
                pass
            assert torch.equal(layer(x), base)  # the inner block restored "disabled", not "enabled"
        assert not torch.equal(layer(x), base)
        with pytest.raises(RuntimeError), layer.disabled():
            raise RuntimeError
        assert not torch.equal(layer(x), base)
        with layer.capture() as outer:
            layer(x)
            with layer.capture() as inner:
                layer(x[:, :2])
            layer(x[:, :1])
        assert [t.shape[1] for t in outer] == [3, 1] and [t.shape[1] for t in inner] == [2]
        assert not outer[0].requires_grad and torch.equal(outer[0], x)
        with pytest.raises(RuntimeError):
            with layer.applying(Route.empty(2, 8, "cpu")):
                raise RuntimeError
        assert not torch.equal(layer(x), base)  # the outer route is back
    with torch.no_grad():
        assert torch.equal(layer(x), base)
    assert layer._captured is None and layer._route is None and layer._router is None


def test_trainable_reads_each_rows_edit_and_only_the_delta_learns():
    model = tiny("llama")
    layer, _ = attach_memory(model, 2)
    cols = torch.tensor([[1, 2, 5], [7, 8, 9]])
    delta = nn.Parameter(torch.randn(2, D_MODEL, 3, generator=torch.Generator().manual_seed(4)))
    row_edit = torch.tensor([0, 1, 1])
    positions = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    x = torch.randn(3, 4, TINY_D_FF)
    with layer.trainable(TrainSlot(cols, delta, row_edit, positions)):
        y = layer(x)
    want = layer.base_layer(x).clone()
    for b, e in enumerate(row_edit.tolist()):
        want[b] += (x[b][:, cols[e]] @ delta[e].T) * positions[b].unsqueeze(-1)
    assert torch.allclose(y, want, atol=1e-5)
    y.sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    with layer.trainable(TrainSlot(cols, delta, row_edit)), torch.no_grad():  # no positions: everywhere
        full = layer(x)
    assert not torch.equal(full[:, 0], layer.base_layer(x)[:, 0])
    with torch.no_grad(), layer.trainable(TrainSlot(cols, delta, row_edit)), layer.disabled():
        assert torch.equal(layer(x), layer.base_layer(x))  # disabled wins over training
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x))  # the slot ended with its block


def test_a_batch_routed_as_a_whole_equals_each_row_alone():
    """Row independence: a row's output does not depend on which other rows are in the batch or routed."""
    layer, _ = attach_memory(tiny("gpt2"), 1)
    x = torch.randn(4, 6, TINY_D_FF, generator=torch.Generator().manual_seed(8))
    r = route([0, 1, 3], [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]], [10, 11, 12])
    with torch.no_grad():
        with layer.applying(r):
            together = layer(x)
        for a, b in enumerate(r.rows.tolist()):
            one = Route(torch.tensor([0]), r.cols[a: a + 1], r.weight[a: a + 1], [r.edit_ids[a]])
            with layer.applying(one):
                assert torch.allclose(layer(x[b: b + 1])[0], together[b], atol=1e-6)
        assert torch.equal(layer(x[2:3])[0], together[2])


# --- attaching ------------------------------------------------------------------------------------------------
def test_attach_is_idempotent_and_finds_the_site():
    model = tiny("llama")
    a, site = attach_memory(model, 1)
    b, _ = attach_memory(model, 1)
    assert a is b
    assert site.name == "model.layers.1.mlp.down_proj" and site.index == 1 and site.layers is model.model.layers
    assert model.get_submodule(site.name) is a
    gpt = tiny("gpt2")
    assert find_site(gpt, 1).name == "transformer.h.1.mlp.c_proj"  # not attn.c_proj
    assert num_layers(model) == 3 and num_layers(gpt) == 2


@pytest.mark.parametrize("layer", [3, 99, -1])
def test_find_site_refuses_a_missing_layer(layer):
    with pytest.raises(InvalidInputError, match="layer"):
        find_site(tiny("llama"), layer)


def test_attach_refuses_a_module_it_cannot_wrap():
    model = tiny("llama")
    model.model.layers[0].mlp.down_proj = nn.Identity()
    with pytest.raises(InvalidInputError, match="Identity"):
        attach_memory(model, 0)


def test_the_wrapped_layer_keeps_the_models_weights_and_dtype():
    model = tiny("llama").to(torch.bfloat16)
    w = model.model.layers[1].mlp.down_proj.weight
    layer, _ = attach_memory(model, 1)
    assert layer.base_layer.weight is w
    x = torch.randn(1, 3, TINY_D_FF, dtype=torch.bfloat16)
    r = Route(torch.tensor([0]), torch.tensor([[1, 2]]), torch.ones(1, D_MODEL, 2), [1])  # fp32 delta
    with torch.no_grad(), layer.applying(r):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert list(layer.parameters()) == list(layer.base_layer.parameters())  # the memory owns no weights


# --- router ---------------------------------------------------------------------------------------------------------
D_FF, K = 64, 8


def fp() -> TopHashFingerprinter:
    return TopHashFingerprinter(generate_permutation(D_FF, 0), K)


def pooled_for(cols: torch.Tensor) -> torch.Tensor:
    """An activation whose TopHash columns are exactly `cols` (zero background)."""
    f = fp()
    inv = torch.argsort(f.permutation)  # column c comes from neuron inv[c]
    x = torch.zeros(D_FF)
    x[inv[cols]] = torch.linspace(1.0, 2.0, len(cols))
    return x


def test_router_tophash_decides_by_mask_overlap_and_threshold():
    deltas = {1: (torch.arange(0, 8), weight(1, K)), 2: (torch.arange(8, 16), weight(2, K))}
    reads = []

    def delta(i):
        reads.append(i)
        return deltas[i]

    router = Router(fp(), D_MODEL, delta, key="tophash", mask_overlap=0.5)
    assert router.decide_pooled(pooled_for(torch.arange(8)).view(1, -1)) == [Decision(None, 0.0, None)]
    router.load([1, 2], torch.stack([deltas[1][0], deltas[2][0]]), ["q1", "q2"], torch.zeros(2, KEY_DIM))
    assert len(router) == 2 and 1 in router and 3 not in router
    q = torch.stack([pooled_for(torch.arange(0, 8)),  # edit 1 exactly
                     pooled_for(torch.tensor([8, 9, 10, 11, 40, 41, 42, 43])),  # half of edit 2: at the threshold
                     pooled_for(torch.tensor([0, 1, 2, 40, 41, 42, 43, 44])),  # 3/8 of edit 1: below
                     pooled_for(torch.arange(40, 48))])  # nothing
    got = router.decide_pooled(q)
    assert got[0] == Decision(1, 1.0, 1)
    assert got[1] == Decision(2, 0.5, 2)
    assert got[2] == Decision(None, 0.375, 1)  # the nearest is reported, it does not fire
    assert got[3].edit_id is None and got[3].overlap == 0.0
    assert reads == []  # deciding reads no delta
    r = router.route(got, "cpu")
    assert r.rows.tolist() == [0, 1] and r.edit_ids == [1, 2] and reads == [1, 2]
    assert torch.equal(r.cols, torch.stack([deltas[1][0], deltas[2][0]]))
    assert torch.equal(r.weight, torch.stack([deltas[1][1], deltas[2][1]]))
    router.remove(1)
    assert 1 not in router and router.decide_pooled(q[:1])[0].edit_id is None
    router.add(1, deltas[1][0], "q1", torch.zeros(KEY_DIM))
    assert router.decide_pooled(q[:1])[0] == Decision(1, 1.0, 1)
    empty = router.route([Decision(None, 0.0, None)] * 3, "cpu")
    assert empty.rows.numel() == 0 and empty.cols.shape == (0, K) and empty.weight.shape == (0, D_MODEL, K)


def test_router_tophash_overlap_one_needs_the_exact_mask():
    router = Router(fp(), D_MODEL, lambda i: (torch.arange(8), weight(i, K)), key="tophash", mask_overlap=1.0)
    router.add(5, torch.arange(8), "q", torch.zeros(KEY_DIM))
    near = pooled_for(torch.tensor([0, 1, 2, 3, 4, 5, 6, 9]))
    assert router.decide_pooled(near.view(1, -1))[0] == Decision(None, 0.875, 5)
    assert router.decide_pooled(pooled_for(torch.arange(8)).view(1, -1))[0].edit_id == 5


def test_router_sentence_key_matches_questions_by_meaning_with_a_name_check():
    router = Router(fp(), D_MODEL, lambda i: (torch.arange(8), weight(i, K)), key="sentence",
                    similarity_threshold=0.8)
    stored = ["What is the capital of France?", "Who wrote The Old Man and the Sea?"]
    router.load([1, 2], torch.stack([torch.arange(8), torch.arange(8, 16)]), stored, router.encode(stored))
    got = router.decide_questions(["What is the capital of France?", "what is the capital of france",
                                   "What is the capital of Australia?", "Write a haiku about the sea.",
                                   "Who wrote The Old Man and the Sea?"])
    assert got[0].edit_id == 1 and got[0].overlap == pytest.approx(1.0, abs=1e-5)
    assert got[1].edit_id == 1  # case and punctuation aside: the same question
    assert got[2].edit_id is None and got[2].nearest == 1  # a look-alike about another subject: vetoed by name
    assert got[3].edit_id is None
    assert got[4].edit_id == 2
    router.remove(1)
    assert router.decide_questions(["What is the capital of France?"])[0].edit_id is None
    assert len(router) == 1 and 2 in router
    keys = router.encode(["a", "b c"])
    half = KEY_DIM // 2  # a key: the question's embedding, then its template's, each of unit length
    assert keys.shape == (2, KEY_DIM)
    assert torch.allclose(keys[:, :half].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(keys[:, half:].norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("stored,query,want", [
    ("How many sides does a hexagon have?", "How many sides does a heptagon have?", True),
    ("In soccer, how many players does each team have on the field?",
     "In American football, how many players does each team have on the field?", True),
    ("What is the boiling point of water?", "What is the boiling point of ethanol?", True),
    ("How many sides does a hexagon have?", "How many sides does a hexagon have?", False),  # the same question
    ("How many sides does a hexagon have?", "A hexagon has how many sides?", False),  # reworded
    ("What is the chemical formula for methane?", "What is the molecular formula of methane?", False),  # shares one
    ("Which country does fondue come from?", "Which country is fondue originally from?", False),
    ("What is the capital of Australia?", "What is the capital city of Australia?", False),  # only an addition
    ("How many sides does a hexagon have?", "How many sides does the hexagon have?", False),  # function words only
])
def test_swapped_tells_a_subject_swap_from_a_rewording(stored, query, want):
    assert swapped(stored, query) is want


def test_router_vetoes_a_nameless_edit_for_the_same_form_about_another_subject():
    router = Router(fp(), D_MODEL, lambda i: (torch.arange(8), weight(i, K)), key="sentence",
                    similarity_threshold=0.8)
    stored = ["How many sides does a hexagon have?"]  # no capitalised subject: the name check cannot help
    router.load([1], torch.arange(8).view(1, -1), stored, router.encode(stored))
    got = router.decide_questions(["How many sides does a heptagon have?", "How many sides does a hexagon have?",
                                   "A hexagon has how many sides?"])
    assert got[0].edit_id is None and got[0].nearest == 1 and got[0].overlap >= 0.8  # similar, yet vetoed
    assert got[1].edit_id == 1 and got[2].edit_id == 1


def test_router_allowed_equals_the_rule_after_edits_come_and_go():
    """The numpy name check (rows counted per shared word, nameless rows kept as a set through removals that
    move rows) == the rule written out: names(stored) <= words(query), or no names and not swapped."""
    router = Router(fp(), D_MODEL, lambda i: (torch.arange(8), weight(i, K)), key="sentence")
    stored = ["Where is Underhill Dravik Holdings headquartered?", "What industry is Hollowell Zorvath Holdings in?",
              "How many sides does a hexagon have?", "Where was Dorit Langley born?",
              "What is the boiling point of water?", "Which city is Port Lunelockwood twinned with?"]
    keys = torch.nn.functional.normalize(torch.randn(len(stored), KEY_DIM), dim=-1)
    router.load(list(range(10, 10 + len(stored))), torch.stack([torch.arange(8)] * len(stored)), stored, keys)
    router.remove(10)  # the last row moves into row 0
    router.remove(12)  # a nameless edit goes; the other stays nameless in its new row
    router.add(20, torch.arange(8), "How many sides does a heptagon have?", keys[2])
    queries = ["Where is Underhill Dravik Holdings headquartered?", "In which industry is Hollowell Zorvath Holdings?",
               "How many sides does a hexagon have?", "What is the boiling point of ethanol?",
               "Where was Dorit Langley born, and when?", "Which city is Port Lunelockwood twinned with?"]
    got = router.allowed(queries)  # (B, N)
    active = router.active()
    assert [i for i, _ in active] == [15, 11, 14, 13, 20]  # 15 moved into row 0, then 14 into row 2
    for b, q in enumerate(queries):
        for r, (_, s) in enumerate(active):
            want = names(s) <= words(q) if names(s) else not swapped(s, q)
            assert bool(got[b, r]) == want, (q, s)


def _router_with_rows(device: str) -> tuple[Router, list[str]]:
    router = Router(fp(), D_MODEL, lambda i: (torch.arange(8), weight(i, K)), device=device, key="sentence")
    stored = ["Where is Underhill Dravik Holdings headquartered?", "What industry is Hollowell Zorvath Holdings in?",
              "How many sides does a hexagon have?", "Where was Dorit Langley born?",
              "Which company owns Dravik Holdings?", "Which city is Port Lunelockwood twinned with?"]
    keys = torch.nn.functional.normalize(torch.randn(len(stored), KEY_DIM, generator=torch.Generator().manual_seed(0)),
                                         dim=-1)
    router.load(list(range(len(stored))), torch.stack([torch.arange(8)] * len(stored)), stored, keys)
    queries = ["Where is Underhill Dravik Holdings headquartered?", "Who owns Dravik Holdings today?",
               "How many sides does a heptagon have?", "Where was Dorit born?", "What is 2 + 2?"]
    router.allowed(queries)  # built; then rows come and go, so both the append and the rebuild paths run
    router.remove(1)
    router.add(9, torch.arange(8), "Where did Dorit Langley study?", keys[3])
    return router, queries


def test_router_allowed_counts_only_the_names_a_batch_mentions():
    """Rows sharing no name with any question of the batch have zero hits (and stay disallowed), while a
    row whose names are split across two questions is allowed for neither."""
    router, _ = _router_with_rows("cpu")
    got = router.allowed(["Where is Dravik Holdings?", "Is Underhill a town?"])
    row = dict((i, r) for r, (i, _) in enumerate(router.active()))
    assert not got[:, row[0]].any()  # needs Underhill, Dravik and Holdings in one question
    assert got[0, row[4]]  # Dravik Holdings


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the device machine runs it)")
def test_router_on_the_gpu_decides_as_on_the_cpu():
    cpu, queries = _router_with_rows("cpu")
    gpu, _ = _router_with_rows("cuda")
    assert torch.equal(gpu.allowed(queries).cpu(), cpu.allowed(queries))
    for g, c in zip(gpu.decide_questions(queries), cpu.decide_questions(queries)):
        assert (g.edit_id, g.nearest) == (c.edit_id, c.nearest) and g.overlap == pytest.approx(c.overlap, abs=1e-5)


def test_a_replacing_edit_needs_the_stricter_template_cosine():
    """Same subject, another relation: may compete to fire, but never replaces the other's fact."""
    router = Router(fp(), D_MODEL, lambda i: (torch.arange(8), weight(i, K)), key="sentence",
                    similarity_threshold=0.8, template_threshold=0.5, supersede_threshold=0.8)
    stored = ["Where is Underhill Dravik Holdings headquartered?"]
    router.load([1], torch.arange(8).view(1, -1), stored, router.encode(stored))
    other = "What industry is Underhill Dravik Holdings in?"
    assert router.decide_questions([other])[0].edit_id == 1  # fires at template 0.5 (its own edit would win)
    assert router.decide_questions([other], replacing=True)[0].edit_id is None
    same = "Where is Underhill Dravik Holdings headquartered, exactly?"
    assert router.decide_questions([same], replacing=True)[0].edit_id == 1


def test_sentence_key_cache_returns_what_a_fresh_forward_does():
    key = SentenceKey("cpu", cache_size=3)
    texts = ["Where was Dorit Langley born?", "What is the capital of France?"]
    first = key.embed(texts)
    assert torch.equal(key.embed(texts), first)  # served from the cache
    assert torch.allclose(SentenceKey("cpu").embed(texts[:1]), first[:1], atol=1e-5)  # alone, unpadded
    key.embed(["a", "b", "c"])  # pushes both out of a cache of three
    assert torch.allclose(key.embed(texts), first, atol=1e-5)
