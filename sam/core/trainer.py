"""Training edits: only each edit's own memory columns move; the model is frozen.

For each edit the delta W_i (d_model, k) on its columns m_i minimises the mean NLL of the target
(and the format's end of turn) after the prompt and after a few context variants of it:

    min_W  mean_{rows r of edit i, answer tokens t}  -log p(y_t | prompt_r, y_<t ; W)

with Adam from zero (SGD, the paper's optimiser, needed lr 50 here and then overshot on some facts until
the step limit; Adam at lr 0.1 converged on each of them in a few steps). Several edits train together in one batch (`train` takes a list): the loss is
the sum of the edits' own means, every row reads only its edit's delta, and an edit that has
converged stops moving, so each edit gets exactly the steps it would get alone.

The memory acts from the last prompt token on, so everything before that position is the same at
every step. The fast loop therefore runs the model once over head (prompt minus its last token) +
tail (last prompt token + answer), keeps the head's KV cache and the stream entering the edited
layer, and each step runs only the tail through the layers from the edited one up. Its logits go
through sam/core/output_loss.py. The naive loop (fast=False, one edit) runs the whole model over
whole sequences every step, for comparison: with fp32 training products (train_dtype) both give the
same losses.

Each row's frame, its tokens before the question (the chat template's system prompt, the earlier
turns of a context variant), is moreover the same in every edit, and attention is causal, so its
keys and values in every layer depend on those tokens alone:

    K_l, V_l (frame f) = F_l(f)        whatever follows f

They are run once (the distinct frames of a batch, left-padded) and kept by their token ids
(`_frames_cache`); an edit's one pass then runs only head minus frame, plus tail, after a fork of them.
With the default model's three rows (42, 34 and 69 tokens, frames of 24, 16 and 51) that pass goes
from 3 x 68 padded positions to 3 x 22, and one CPU edit's training from 0.89 s to 0.62 s median
(30 zsRE edits, the paths interleaved in one process, 2 cores; the same steps: `python
scripts/bench_edit_paths.py`, results/edit/edit_train_paths_cpu.json). The frame never
sees the memory (it acts from the last prompt token on), so this holds at every step; the losses
equal the whole-prompt pass's to float rounding (tests/test_core_trainer.py).

A step's products are skinny, (12, d) x (d, d') for 3 rows of a 4-token tail, and torch's CPU GEMM
repacks the weight at each call; the layers a step runs and lm_head's copy therefore go through
oneDNN on weights reordered once (sam/core/packed.py), the same products to float rounding. On one
edit's step, forward + backward, interleaved with torch's own: 54 -> 34 ms median, and one edit's
training 0.62 -> 0.48 s median (as above). The reordered copies (these layers' and lm_head's) cost
~130 MB RSS (benchmark: 1,402 -> 1,530 MB).

Where the CPU has bf16 dot products (AVX512-BF16, AMX) the frozen products of both passes run on bf16
copies (`train_dtype`, auto; lm_head's copy already was bf16), and the first pass, a third of an edit
with fp32 weights, runs every layer on them too. The stream, the deltas and Adam stay fp32. Interleaved
as above: 0.44 -> 0.35 s median (one step-count differs in 198; edit_train_paths_cpu_before_replay.json);
T = 100 zsRE Rel/Gen/Loc 0.770 / 0.690 / 1.000 against 0.770 / 0.689 / 1.000 with fp32 layers
(results/edit/edit_quality_cpu_bf16.json). The bf16 copies of all 30 layers cost +140 MB RSS over the
fp32 copies of the five upper ones (T = 100 benchmark: 1,585 -> 1,726 MB). An edit's columns come from
this pass, so they may differ from an fp32 pass's in a few of the k; they are stored with the edit and
the sentence key routes by the question's text, so nothing reads them again.

Within layer L itself only the memory's output changes from step to step: the attention's output and
the memory's input x come from the first pass (`EditedLayer.replay`, sam/core/layer_cache.py), so a
step runs the memory, not layer L's attention and up-projections. Interleaved: 0.370 -> 0.358 s median,
the same losses to 1e-5 (tests/test_core_trainer.py).

On a GPU one edit's first pass and its steps are CUDA graphs, made once per padded shape and replayed
(sam/core/edit_graphs.py): on the H200 0.137 -> 0.020 s median per edit, the same Rel/Gen/Loc.
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from sam.core.batching import Encoded, encode, encode_pairs
from sam.core.fingerprinter import TopHashFingerprinter
from sam.core.layer_cache import EditedLayer, capture_layer_input, start_at_layer
from sam.core.memory_layer import ResidualMemoryLayer, TrainSlot
from sam.core.packed import packed_linears
from sam.core.output_loss import TargetNLL, low_precision_dtype
from sam.core.prompts import Prompt, PromptFormat
from sam.core.edit_graphs import EditGraphs, bucketed


@dataclass
class EditRequest:
    prompts: list[Prompt]  # the prompt as asked first (its question is the key), then context variants
    target: str


@dataclass
class TrainOutcome:
    cols: torch.Tensor  # (k,)
    delta: torch.Tensor  # (d_model, k)
    steps: int
    loss: float
    accuracy: float  # teacher-forced accuracy of the first prompt's target tokens
    finite: bool  # False: the loss or the delta diverged (NaN/inf); such an edit must not be kept


def _cache_kwarg(module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _fork_cache(cache):
    """A copy of a KV cache that a forward may extend without touching the original. Cache layers
    grow by torch.cat into new tensors, so copying the containers is enough (a deepcopy costs
    ~0.25 s a step on CPU)."""
    fork = copy.copy(cache)
    if isinstance(getattr(cache, "layers", None), list):
        fork.layers = [copy.copy(layer) for layer in cache.layers]
    for name in ("key_cache", "value_cache"):  # older transformers
        if isinstance(getattr(cache, name, None), list):
            setattr(fork, name, list(getattr(cache, name)))
    return fork


def _head_cache(cache, n_tail: int, n_head: int):
    """The cache of a head + tail pass cut back to the head, or None where the cache can't be cut."""
    try:
        cache.crop(-n_tail)  # negative: drop that many tokens (every transformers version reads it so)
    except (AttributeError, RuntimeError, ValueError, NotImplementedError):
        return None
    return cache if cache.get_seq_length() == n_head else None


def _returned_cache(out):
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


class EditTrainer:
    """Encodes edit requests, fingerprints their questions and trains their deltas."""

    FRAME_CACHES = 4  # sets of frames whose KV cache is kept (the default model's 3 frames: ~7 MB)

    def __init__(self, model, tokenizer, fmt: PromptFormat, memory: ResidualMemoryLayer, layers, layer: int,
                 columns: Callable[[torch.Tensor], torch.Tensor], train_dtype: torch.dtype | None = None):
        self.model, self.tokenizer, self.fmt, self.memory = model, tokenizer, fmt, memory
        self.layers, self.layer, self.columns = layers, layer, columns
        self.base = model.base_model
        self.cache_kw = _cache_kwarg(self.base)
        # the precision of the frozen products while training (lm_head's copy, the reordered layers)
        self.train_dtype = train_dtype or low_precision_dtype(self.device)  # auto: bf16 where its matmul is fast
        self._nll: TargetNLL | None = None  # built on the first edit: it holds a copy of lm_head
        # the CPU speed-ups of the docstring, on by default; off only to measure the paths side by side
        # (scripts/bench_edit_paths.py) or to check that they change nothing (tests). packed: the precision of
        # the layers' reordered weights, None for torch's own products
        self.reuse_frames, self.packed, self.replay_edited = True, self.train_dtype, True
        self._edited = EditedLayer.find(layers[layer], memory)  # None: layer L is run whole in each step
        self._packs: dict = {}  # the layers' weights reordered for oneDNN, by module and precision (sam/core/packed.py)
        self._frames: OrderedDict[tuple, object] = OrderedDict()  # distinct frames' token ids -> their KV cache
        # one edit's first pass and steps replayed as CUDA graphs per shape bucket (sam/core/edit_graphs.py); on by
        # default on a GPU, where an edit is launch-bound; a CPU can run the same static tensors eagerly (tests)
        self.graph_steps = self.device.type == "cuda"
        self.graphs = EditGraphs()

    @property
    def nll(self) -> TargetNLL:
        if self._nll is None:
            self._nll = TargetNLL(self.model, self.train_dtype)
        return self._nll

    @property
    def cached_frames(self) -> int:
        """How many sets of frames have their KV cache kept (at most FRAME_CACHES)."""
        return len(self._frames)

    def clear_frames(self) -> None:
        """Drop the kept frames' KV caches: the next edit runs its frames again."""
        self._frames.clear()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def train(self, requests: list[EditRequest], *, lr: float, max_steps: int, stop_loss: float,
              fast: bool = True) -> list[TrainOutcome]:
        rows = [[encode(self.tokenizer, self.fmt, p, r.target) for p in r.prompts] for r in requests]
        tails_agree = all(len({tuple(e.ids[e.n_prompt:]) for e in edit}) == 1 for edit in rows)
        if fast and tails_agree and all(e.n_prompt > 1 for edit in rows for e in edit):
            return self._train_fast(rows, lr, max_steps, stop_loss)
        return [self._train_naive(r, lr, max_steps, stop_loss) for r in requests]  # one edit at a time

    # --- the optimisation, shared by both loops ----------------------------------------------------------
    def _optimise(self, loss_fn, slot: TrainSlot, edit_of: torch.Tensor, first: list[torch.Tensor], labels,
                  n_edits: int, lr: float, max_steps: int, stop_loss: float) -> list[TrainOutcome]:
        """loss_fn() -> (summed loss, (M, V) logits, (M,) weighted per-position NLL); edit_of (M,) says whose
        position each is; first[i] (n_i,) indexes edit i's first-prompt target positions."""
        opt = torch.optim.Adam([slot.delta], lr=lr)
        steps = torch.zeros(n_edits, dtype=torch.long)
        done = torch.zeros(n_edits, dtype=torch.bool)
        out: list[TrainOutcome | None] = [None] * n_edits
        with self.memory.trainable(slot):
            while True:
                total, logits, weighted = loss_fn()
                per_edit = torch.zeros(n_edits, device=weighted.device).index_add_(0, edit_of, weighted).cpu()
                finite = torch.isfinite(per_edit) & torch.isfinite(slot.delta.detach()).flatten(1).all(1).cpu()
                stop = ~done & ((per_edit < stop_loss) | (steps >= max_steps) | ~finite)
                for i in stop.nonzero().flatten().tolist():
                    pred = logits[first[i]].argmax(-1)
                    out[i] = TrainOutcome(slot.cols[i].detach().clone(), slot.delta[i].detach().clone(),
                                          int(steps[i]), float(per_edit[i]),
                                          float((pred == labels[first[i]]).float().mean()), bool(finite[i]))
                done |= stop
                if bool(done.all()):
                    return out  # type: ignore[return-value]
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                finished = done.nonzero().flatten().tolist()
                if finished:  # a finished edit keeps its delta (Adam's momentum would move it on)
                    with torch.no_grad():
                        for i in finished:
                            slot.delta[i] = out[i].delta
                steps[~done] += 1

    # --- fast: cached head, tail through the upper layers only -----------------------------------------
    def _frames_cache(self, frames: list[list[int]]):
        """The whole model's KV cache of the rows' frames, each row's frame left-padded to the longest: the
        distinct frames are run once and kept across edits (by their token ids, FRAME_CACHES sets of them),
        and a fork of them is indexed out to the rows. None where the cache can't be indexed by rows."""
        distinct = list(dict.fromkeys(map(tuple, frames)))
        key = tuple(distinct)
        cache = self._frames.pop(key, None)
        if cache is None:
            P = max(map(len, distinct))
            ids = torch.full((len(distinct), P), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(distinct), P, dtype=torch.long)
            for u, f in enumerate(distinct):
                ids[u, P - len(f):], mask[u, P - len(f):] = torch.tensor(f, dtype=torch.long), 1
            pos = (mask.cumsum(1) - 1).clamp_min(0)
            with torch.no_grad(), self.memory.disabled():
                cache = _returned_cache(self.base(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                                  position_ids=pos.to(self.device), use_cache=True))
            if cache is None:
                return None
        self._frames[key] = cache  # the most recent last
        while len(self._frames) > self.FRAME_CACHES:
            self._frames.pop(next(iter(self._frames)))
        fork = _fork_cache(cache)
        rows = [distinct.index(tuple(f)) for f in frames]
        if rows != list(range(len(distinct))):
            try:
                fork.batch_select_indices(torch.tensor(rows, device=self.device))
            except (AttributeError, NotImplementedError, RuntimeError, ValueError):
                return None
        return fork

    def _train_fast(self, rows: list[list[Encoded]], lr, max_steps, stop_loss) -> list[TrainOutcome]:
        device, pad = self.device, self.tokenizer.pad_token_id
        flat = [e for edit in rows for e in edit]
        edit_of_row = torch.tensor([i for i, edit in enumerate(rows) for _ in edit])
        # each row's frame: its tokens before the question (system prompt, earlier turns), the same in every edit
        framed = [e.key.index(True) for e in flat]
        frames = (self._frames_cache([e.ids[:f] for e, f in zip(flat, framed)])
                  if self.reuse_frames and min(framed) > 0 else None)
        if frames is None:  # a row without a frame, or a cache that can't be indexed: the whole prompt is the head
            framed = [0] * len(flat)
        heads = [e.ids[f: e.n_prompt - 1] for e, f in zip(flat, framed)]
        tails = [e.ids[e.n_prompt - 1: -1] for e in flat]
        answers = [e.ids[e.n_prompt:] for e in flat]
        B, P, H, L = len(flat), max(framed), max(len(h) for h in heads), max(len(t) for t in tails)
        graphed = self.graph_steps and len(rows) == 1  # one graph serves every edit of the same padded shape
        if graphed:
            H, L = bucketed(H), bucketed(L)
        head_ids = torch.full((B, H), pad, dtype=torch.long)
        tail_ids = torch.full((B, L), pad, dtype=torch.long)
        mask = torch.zeros(B, P + H + L, dtype=torch.long)  # columns: frame (cached) | head | tail
        for b, (f, h, t) in enumerate(zip(framed, heads, tails)):  # frames and heads left-padded, tails at P + H
            head_ids[b, H - len(h):] = torch.tensor(h, dtype=torch.long)
            tail_ids[b, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[b, P - f: P] = 1
            mask[b, P + H - len(h): P + H + len(t)] = 1
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        # the answer tokens: row, tail position, label, and the weight that makes each edit's loss its own mean
        rr = torch.cat([torch.full((len(a),), b) for b, a in enumerate(answers)])
        tt = torch.cat([torch.arange(len(a)) for a in answers])
        labels = torch.cat([torch.tensor(a) for a in answers])
        edit_of = edit_of_row[rr]
        n_positions = torch.zeros(len(rows)).index_add_(0, edit_of, torch.ones(len(edit_of)))
        weights = 1.0 / n_positions[edit_of]
        starts = torch.cumsum(torch.tensor([0] + [len(a) for a in answers]), 0)
        first_row = [sum(len(edit) for edit in rows[:i]) for i in range(len(rows))]
        first = [torch.arange(starts[b], starts[b] + flat[b].n_target) for b in first_row]
        head_ids, tail_ids, mask, pos, rr, tt, labels, edit_of, weights = (
            t.to(device) for t in (head_ids, tail_ids, mask, pos, rr, tt, labels, edit_of, weights))

        # every layer's products reordered, in low precision only (fp32 copies of the whole model: +420 MB for ~7%)
        every = self.layers if self.packed not in (None, torch.float32) else []

        def first_pass(s: dict[str, torch.Tensor]):  # one pass: the head's KV, the stream at L, the memory's input
            past = {self.cache_kw: _fork_cache(frames)} if frames is not None else {}
            with self.memory.disabled(), self.memory.capture() as seen, \
                    packed_linears(every, self._packs, self.packed), \
                    (self._edited.capture_attention() if self._edited else nullcontext({})) as attn, \
                    capture_layer_input(self.layers, self.layer) as cap:
                out = self.base(input_ids=torch.cat([s["head_ids"], s["tail_ids"]], dim=1), attention_mask=s["mask"],
                                position_ids=s["pos"][:, P:], use_cache=True, **past)
            x = seen[0]  # (B, H + L, d_ff)
            # the edited layer's attention output and the memory's input over the tail, replayed in the steps
            replayed = ((attn["attn"][0][:, H:].contiguous(), attn["attn"][1]), x[:, H:].contiguous()) \
                if self.replay_edited and "attn" in attn else None
            return _head_cache(_returned_cache(out), L, P + H), x, cap["hidden"][:, H:], replayed  # hidden (B, L, d)

        pass_inputs = {"head_ids": head_ids, "tail_ids": tail_ids, "mask": mask, "pos": pos}
        graph = self.graphs.first_pass((tuple(tuple(e.ids[:f]) for e, f in zip(flat, framed)), self.layer,
                                        self.replay_edited), first_pass, pass_inputs) if graphed else None
        with torch.no_grad():
            cache, x, hidden, replayed = graph(pass_inputs) if graph is not None else first_pass(pass_inputs)

        if cache is None:  # a cache that cannot drop the tail: run the head on its own
            past = {self.cache_kw: self._frames_cache([e.ids[:f] for e, f in zip(flat, framed)])} if P else {}
            with torch.no_grad(), self.memory.disabled():
                cache = _returned_cache(self.base(input_ids=head_ids, attention_mask=mask[:, :P + H],
                                                  position_ids=pos[:, P: P + H], use_cache=True, **past))
        pooled = []
        for b in first_row:  # the key: the first prompt's question tokens
            e = flat[b]
            idx = torch.tensor([i for i, k in enumerate(e.key) if k], device=device) + H - (e.n_prompt - 1)
            pooled.append(x[b, idx].mean(dim=0))
        cols = self.columns(torch.stack(pooled))  # (N, k)

        # what each step reads: the tail, the stream entering layer L, the answer positions (and the edited layer's
        # replayed parts: its attention output and the memory's input, sam/core/layer_cache.py)
        step_inputs = {"tail_ids": tail_ids, "mask": mask, "pos": pos[:, P + H:], "hidden": hidden, "rr": rr, "tt": tt,
                       "labels": labels, "weights": weights}
        if replayed:
            step_inputs["attn"], step_inputs["x"] = replayed[0][0], replayed[1]
        n_rest = replayed[0][1] if replayed else None
        upper = self.layers[self.layer:] if self.packed is not None else []  # the steps' skinny products
        if graphed and hasattr(cache, "layers") and all(hasattr(c, "keys") for c in cache.layers):
            M, pad = len(labels), B * L - len(labels)  # the answer positions padded to rows x tail, weight 0
            padded = {**step_inputs, "cols": cols, "row_edit": edit_of_row.to(device),
                      "rr": torch.cat([rr, rr[:1].expand(pad)]), "tt": torch.cat([tt, tt[:1].expand(pad)]),
                      "labels": torch.cat([labels, labels[:1].expand(pad)]),
                      "weights": torch.cat([weights, weights.new_zeros(pad)])}
            for i in range(self.layer, len(cache.layers)):  # the head's keys and values where the steps read them
                padded[f"k{i}"], padded[f"v{i}"] = cache.layers[i].keys, cache.layers[i].values
            with packed_linears(upper, self._packs, self.packed):
                done = self._optimise_graphed(padded, cache, n_rest, first[0], M, lr, max_steps, stop_loss)
            if done is not None:
                return [done]
        slot = TrainSlot(cols, torch.nn.Parameter(torch.zeros(len(rows), self.memory.out_features, cols.shape[1],
                                                              device=device)), edit_of_row.to(device))
        with packed_linears(upper, self._packs, self.packed):
            return self._optimise(lambda: self._step_loss(step_inputs, cache, n_rest), slot, edit_of, first, labels,
                                  len(rows), lr, max_steps, stop_loss)

    def _step_loss(self, s: dict[str, torch.Tensor], cache, n_rest: int | None):
        """One step's loss: the tail through the layers from the edited one up, after the head's KV cache (a fork
        of it: the step's own keys and values are appended to the fork), and lm_head -> (summed loss, (M, V)
        logits, (M,) weighted NLL)."""
        fork = _fork_cache(cache)
        replay = self._edited.replay((s["attn"], n_rest), s["x"]) if "attn" in s else nullcontext()
        with start_at_layer(self.layers, self.layer, s["hidden"]), replay:
            h = self.base(input_ids=s["tail_ids"], attention_mask=s["mask"], position_ids=s["pos"], use_cache=True,
                          **{self.cache_kw: fork}).last_hidden_state  # (B, L, d)
        total, logits, nll = self.nll(h[s["rr"], s["tt"]], s["labels"], s["weights"], packed=self.packed is not None)
        return total, logits, nll * s["weights"]

    def _optimise_graphed(self, inputs: dict[str, torch.Tensor], cache, n_rest: int | None, first: torch.Tensor,
                          M: int, lr: float, max_steps: int, stop_loss: float) -> TrainOutcome | None:
        """One edit's optimisation through its bucket's graphed step (sam/core/edit_graphs.py): the loop of
        `_optimise` for one edit, on its inputs padded to the bucket's shapes (M real answer positions). None where
        the step could not be captured (graphs.error says why)."""

        def step(s: dict[str, torch.Tensor], delta: torch.nn.Parameter):
            static = _fork_cache(cache)  # the layers from the edited one up read the static keys and values
            for i in range(self.layer, len(static.layers)):
                static.layers[i].keys, static.layers[i].values = s[f"k{i}"], s[f"v{i}"]
            with self.memory.trainable(TrainSlot(s["cols"], delta, s["row_edit"])):
                return self._step_loss(s, static, n_rest)

        g = self.graphs.step((self.layer, n_rest), step, inputs, (1, self.memory.out_features, inputs["cols"].shape[1]),
                             lr)
        if g is None:
            return None
        labels = inputs["labels"][:M]
        for steps in range(max_steps + 1):
            r = g.step()
            if r.loss < stop_loss or steps >= max_steps or not r.finite:
                accuracy = float((r.logits[first].argmax(-1) == labels[first]).float().mean())
                return TrainOutcome(inputs["cols"][0].detach().clone(), r.prev[0].clone(), steps, r.loss, accuracy,
                                    r.finite)
        raise AssertionError("unreachable")

    # --- naive: the whole model, every step ---------------------------------------------------------------
    def _train_naive(self, request: EditRequest, lr, max_steps, stop_loss) -> TrainOutcome:
        device = self.device
        batch = encode_pairs(self.tokenizer, self.fmt, [(p, request.target) for p in request.prompts],
                             self.tokenizer.pad_token_id).to(device)
        with torch.no_grad(), self.memory.disabled(), self.memory.capture() as seen:
            self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        cols = self.columns(TopHashFingerprinter.pool(seen[0][:1], batch.key_mask[:1]))  # (1, k)
        n = len(batch.train_labels)
        weights = torch.full((n,), 1.0 / n, device=device)
        first = (batch.rows == 0).nonzero().flatten()
        # `first` indexes the target positions; the train positions list them first per row, so map them
        train_first = torch.nonzero((batch.train_rows == 0)).flatten()[: len(first)]

        def loss_fn():
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                use_cache=False).logits[batch.train_rows, batch.train_positions]
            nll = torch.nn.functional.cross_entropy(logits.float(), batch.train_labels, reduction="none")
            return (weights * nll).sum(), logits.detach(), (weights * nll).detach()

        slot = TrainSlot(cols, torch.nn.Parameter(torch.zeros(1, self.memory.out_features, cols.shape[1],
                                                              device=device)),
                         torch.zeros(len(request.prompts), dtype=torch.long, device=device), batch.answer_mask)
        edit_of = torch.zeros(n, dtype=torch.long, device=device)
        return self._optimise(loss_fn, slot, edit_of, [train_first], batch.train_labels, 1, lr, max_steps,
                              stop_loss)[0]
