"""An edit's first pass and its training steps replayed as CUDA graphs.

On a GPU an edit is thousands of small kernels: on the H200 the profiler counted 19,874 + 3,707
launches over 5 of the default model's edits, which kept the GPU busy 0.017 s of their 0.145 s median (`python scripts/profile_edit.py
--device cuda --edits 60 --eager`, results/edit/cuda/profile_edit_cuda_eager.json). Both passes are
therefore captured once as graphs and replayed, one launch each:

    first pass:  the head's KV cache, the stream entering layer L, the memory's input, L's attention
    step:        prev <- W;  loss, logits <- step(inputs, W);  W <- Adam(W, d loss / d W)

Shapes must not change between replays, so the trainer pads an edit's head and tail to a multiple of
BUCKET (masked, as the rows' padding always was) and its answer positions to rows x tail (weight 0),
and one graph serves every edit of that bucket: an edit copies its inputs into the bucket's static
tensors (and for a step zeroes W and Adam's state), then replays; a step replays until the loss stops
(the delta it stops at is `prev`, the one that loss was computed from, as in the eager loop). A graph
is made from a function that has run a few times on a side stream first (lazy initialisations;
PyTorch's "whole network capture"); what it returns at capture (tensors in the graph's pool, or
objects holding them) is what every replay refreshes, valid until the next replay of that graph.

On the same H200 (scripts/device/graphs.sh): 0.023 s median per edit, the GPU busy 0.015 s of it (first
pass 0.005 s, 6 steps 0.014 s, the rest 0.004 s; results/edit/cuda/profile_edit_cuda.json); 300 zsRE
edits one at a time 0.137 -> 0.020 s median with the same Rel/Gen/Loc to every printed digit
(edit_cuda_one_at_a_time_{no-,}cuda-graphs.json).

Where capture is impossible (a CPU) the same static tensors are run eagerly: the tests check there
that the padded, static passes give the eager loop's losses and deltas.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

BUCKET = 8  # head and tail lengths are rounded up to a multiple of this: few graphs, little padding
WARMUP = 3  # eager runs on a side stream before a capture (PyTorch's documented recipe uses 3)


def bucketed(n: int, step: int = BUCKET) -> int:
    return -(-n // step) * step


def _capture(fn: Callable[[], Any], before: Callable[[], None] = lambda: None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """fn warmed up on a side stream, then captured: (the graph, what fn returned while captured)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            before()
            fn()
    torch.cuda.current_stream().wait_stream(side)
    before()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _copy_into(static: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, t in inputs.items():
            static[name].copy_(t, non_blocking=True)


class GraphedPass:
    """A function of static tensors without gradients (an edit's first pass), captured on CUDA."""

    def __init__(self, fn: Callable[[dict[str, torch.Tensor]], Any], inputs: dict[str, torch.Tensor]):
        self.static = {name: t.clone() for name, t in inputs.items()}
        self._fn, self.graph, self._out = fn, None, None
        if next(iter(inputs.values())).device.type == "cuda":
            with torch.no_grad():
                self.graph, self._out = _capture(lambda: fn(self.static))

    def __call__(self, inputs: dict[str, torch.Tensor]) -> Any:
        _copy_into(self.static, inputs)
        if self.graph is None:
            with torch.no_grad():
                return self._fn(self.static)
        self.graph.replay()
        return self._out


# the step: (static inputs, the delta) -> (summed loss, (M, V) logits, (M,) weighted NLL)
StepFn = Callable[[dict[str, torch.Tensor], nn.Parameter], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class StepResult:
    loss: float  # the edit's loss at `prev`
    finite: bool  # the loss and `prev` are finite
    logits: torch.Tensor  # (M, V) at `prev` (static: read before the next replay)
    prev: torch.Tensor  # (1, d_model, k) the delta the loss was computed from (static)


class GraphedStep:
    """One edit's training step of one shape bucket: static inputs, the delta, its Adam, the captured step."""

    def __init__(self, step: StepFn, inputs: dict[str, torch.Tensor], delta_shape: tuple[int, ...], lr: float):
        device = next(iter(inputs.values())).device
        capture = device.type == "cuda"
        self.static = {name: t.clone() for name, t in inputs.items()}
        self.delta = nn.Parameter(torch.zeros(delta_shape, device=device))
        self.opt = torch.optim.Adam([self.delta], lr=lr, capturable=capture)
        self.prev = torch.zeros(delta_shape, device=device)
        self._step, self.graph, self._out = step, None, None
        if capture:
            self.graph, self._out = _capture(self._body, lambda: self.opt.zero_grad(set_to_none=True))

    def _body(self):
        self.prev.copy_(self.delta.detach())
        total, logits, weighted = self._step(self.static, self.delta)
        loss = weighted.sum()
        finite = torch.isfinite(loss) & torch.isfinite(self.prev).all()
        total.backward()
        self.opt.step()
        return loss.detach(), finite, logits.detach()

    def load(self, inputs: dict[str, torch.Tensor]) -> None:
        """An edit's inputs into the static tensors, and W and Adam back to zero."""
        _copy_into(self.static, inputs)
        with torch.no_grad():
            self.delta.zero_()
            for state in self.opt.state.get(self.delta, {}).values():
                if torch.is_tensor(state):
                    state.zero_()
        if self.graph is None:
            self.opt.state.clear()  # an eager Adam starts its state (and step count) afresh

    def step(self) -> StepResult:
        if self.graph is not None:
            self.graph.replay()
            loss, finite, logits = self._out
        else:
            self.opt.zero_grad(set_to_none=True)
            loss, finite, logits = self._body()
        return StepResult(float(loss), bool(finite), logits, self.prev)


class EditGraphs:
    """Graphed first passes and steps by shape bucket, made on first use; the least recently used go first."""

    MAX = 16  # of each kind (each graph holds a memory pool: a few MB for the default model)

    def __init__(self):
        self._passes: OrderedDict[tuple, GraphedPass] = OrderedDict()
        self._steps: OrderedDict[tuple, GraphedStep] = OrderedDict()
        self.error: str | None = None  # why a capture failed (that edit and later new buckets then ran eagerly)

    def __len__(self) -> int:
        return len(self._passes) + len(self._steps)

    @property
    def captured(self) -> int:
        """How many of them are CUDA graphs (the rest run their static tensors eagerly)."""
        return sum(g.graph is not None for g in (*self._passes.values(), *self._steps.values()))

    def clear(self) -> None:
        self._passes.clear()
        self._steps.clear()

    @staticmethod
    def _key(key: tuple, inputs: dict[str, torch.Tensor]) -> tuple:
        return key, tuple((n, tuple(t.shape), t.dtype) for n, t in inputs.items())

    def _made(self, table: OrderedDict, key: tuple, make: Callable[[], Any]) -> Any | None:
        g = table.pop(key, None)
        if g is None and self.error is not None:  # a capture failed once: the rest run eagerly, not failing again
            return None
        if g is None:
            while len(table) >= self.MAX:
                table.popitem(last=False)
            try:
                g = make()
            except RuntimeError as e:  # a capture that failed: this edit runs eagerly (and says why)
                self.error = f"{type(e).__name__}: {e}".splitlines()[0]
                return None
        table[key] = g
        return g

    def first_pass(self, key: tuple, fn: Callable[[dict[str, torch.Tensor]], Any],
                   inputs: dict[str, torch.Tensor]) -> GraphedPass | None:
        """The bucket's graphed pass of fn (made from `inputs` when new; call it with them); None where it could
        not be captured."""
        return self._made(self._passes, self._key(key, inputs), lambda: GraphedPass(fn, inputs))

    def step(self, key: tuple, step: StepFn, inputs: dict[str, torch.Tensor], delta_shape: tuple[int, ...],
             lr: float) -> GraphedStep | None:
        """The bucket's step with `inputs` loaded (made from them when new); None where it could not be captured."""
        g = self._made(self._steps, (self._key(key, inputs), tuple(delta_shape), lr),
                       lambda: GraphedStep(step, inputs, delta_shape, lr))
        if g is not None:
            g.load(inputs)
        return g
