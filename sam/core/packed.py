"""Frozen linear maps on the CPU through oneDNN, with their weights reordered once.

A training step of an edit runs a dozen positions (3 rows x the answer's tokens) through the layers
from the edited one up and through lm_head, forwards and backwards, so every product is skinny:

    y = x W^T + b     (M, d_in) x (d_in, d_out),  M ~ 12
    dL/dx = dL/dy W   (M, d_out) x (d_out, d_in)  (W is frozen: no weight gradient)

torch's default CPU GEMM repacks W at every call, which at M ~ 12 costs about as much as the
product. oneDNN's `_linear_pointwise` on a W reordered once (`_reorder_linear_weight`) computes the
same products in the same precision; only the order of the sums differs (max relative difference
~1e-6 in fp32). On the 2-core benchmark CPU (AVX512-BF16), weights out of cache, median ms
(`python scripts/bench_packed.py`, results/edit/packed_products_cpu.json):

    (12, 1536) x (1536, 576) fp32, the edited layer's down-projection    0.35 -> 0.31
    lm_head's bf16 copy, (12, 576) x (576, 49152)                        6.1 -> 3.0
    its backward, (12, 49152) x (49152, 576)                             6.5 -> 2.6

A copy may be made in bf16 from an fp32 weight (`dtype`): the product then runs on the CPU's bf16 dot
products and its result comes back in fp32 (what that gains for a whole edit: scripts/bench_edit_paths.py).

The reordered copies cost memory (one per weight, and one of W^T once a backward needs it): the trainer
makes fp32 ones only for the few layers a training step runs, and bf16 ones for every layer.
Where oneDNN is missing, the device is not the CPU or the dtype is not fp32/bf16, nothing is packed
and torch's own product runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=1)
def _ops():
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return mkldnn._reorder_linear_weight, mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def packable(weight: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """True where `weight` can be reordered for oneDNN in `dtype` (its own by default): a frozen 2-D CPU
    tensor in fp32, or bf16 on a CPU with bf16 dot products."""
    if weight.device.type != "cpu" or weight.dim() != 2 or weight.requires_grad or _ops() is None:
        return False
    if not torch.backends.mkldnn.is_available() or weight.dtype not in (torch.float32, torch.bfloat16):
        return False
    if (dtype or weight.dtype) == torch.bfloat16:
        return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return (dtype or weight.dtype) == torch.float32


class PackedWeight:
    """A frozen (d_out, d_in) weight reordered for oneDNN: `forward(x)` = x W^T (+ b), `input_grad(g)` = g W.
    With `dtype` (bf16 for an fp32 weight) the products run on a copy in that precision and their results
    come back in the input's dtype."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype | None = None):
        self.dtype = dtype or weight.dtype
        self.weight = weight.detach()  # the model's own: a copy in `dtype` would cost the reorder's memory again
        self._forward = _ops()[0](self.weight.to(self.dtype))
        self._backward = None  # W^T's reorder, made at the first backward

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        bias = bias.to(self.dtype) if bias is not None else None
        return _ops()[1](x.to(self.dtype), self._forward, bias, "none", [], "").to(x.dtype)

    def input_grad(self, grad_y: torch.Tensor) -> torch.Tensor:
        if self._backward is None:
            self._backward = _ops()[0](self.weight.T.to(self.dtype).contiguous())
        return _ops()[1](grad_y.to(self.dtype).contiguous(), self._backward, None, "none", [], "").to(grad_y.dtype)


class _PackedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, packed: PackedWeight):
        ctx.packed = packed
        return packed.forward(x, bias)

    @staticmethod
    def backward(ctx, grad_y):
        return ctx.packed.input_grad(grad_y), None, None


def _usable(m: nn.Module, dtype: torch.dtype | None) -> bool:
    return isinstance(m, nn.Linear) and packable(m.weight, dtype) and (m.bias is None or not m.bias.requires_grad)


@contextmanager
def packed_linears(layers, packs: dict[tuple[nn.Linear, torch.dtype], PackedWeight], dtype: torch.dtype | None = None):
    """Inside the block the frozen nn.Linear modules of `layers` run through their packed weights (made
    once in `dtype`, their own by default, and kept in `packs` by module and dtype); each module's own forward
    comes back after it."""
    linears = [m for layer in layers for m in layer.modules() if _usable(m, dtype)]
    saved = []
    for m in linears:
        key = (m, dtype or m.weight.dtype)
        if key not in packs:
            packs[key] = PackedWeight(m.weight, dtype)
        saved.append(m.__dict__.get("forward"))
        m.forward = (lambda x, m=m, p=packs[key]: _PackedLinear.apply(x, m.bias, p))
    try:
        yield
    finally:
        for m, before in zip(linears, saved):
            if before is None:
                del m.forward
            else:
                m.forward = before
