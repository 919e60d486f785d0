"""Cross-entropy of target tokens from final hidden states, through a low-precision copy of lm_head.

Each step of an edit runs a few answer positions through the output embedding. On a CPU that
costs reading the (V, d) matrix, twice with autograd (logits, then the gradient W^T (p - y)), and
a bf16 copy halves what is read and runs the matmul on the CPU's bf16 units. So the full-vocabulary
logits and the backward use the bf16 copy, while the logits that decide the loss (each row's label
and its `support` most likely tokens) are recomputed in the model's precision. The loss is then
exact but for the bf16 error on the improbable tail (under 1e-3 on the default model, see
tests/test_core_output_loss.py); the gradient carries bf16 rounding, harmless to the optimiser.
On a CPU with oneDNN both (V, d) products run on the copy reordered once (sam/core/packed.py):
6.1 -> 3.0 ms forward and 6.5 -> 2.6 ms backward for 12 positions of the default model (`python
scripts/bench_packed.py`).
"""

from __future__ import annotations

import torch

from sam.core.packed import PackedWeight, packable


class _LowPrecisionHeadNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, weight_lo, bias, labels, cap, support, w, packed):  # h: (N, d), weight: (V, d), w: (N,)
        with torch.no_grad():
            h_lo = h.to(weight_lo.dtype)
            z = (packed.forward(h_lo) if packed is not None else h_lo @ weight_lo.T).float()  # (N, V), low precision
            idx = torch.cat([labels[:, None], z.topk(support, dim=-1).indices], dim=1)  # (N, s + 1)
            if weight_lo is not weight:  # the logits that decide the loss, in the model's precision
                exact = torch.einsum("nd,nsd->ns", h, weight[idx]).float()  # (N, s + 1)
                z.scatter_(1, idx, exact)  # z is this call's own; a repeated label writes the same value twice
            if bias is not None:
                z = z + bias.float()
            logits = torch.tanh(z / cap) * cap if cap else z
            lse = logits.logsumexp(-1)  # (N,)
            nll = lse - logits.gather(1, labels[:, None]).squeeze(1)  # (N,)
            g = torch.softmax(logits, dim=-1)  # d nll / d logits = p - onehot(label), p = exp(logits - lse)
            g[torch.arange(len(labels), device=labels.device), labels] -= 1.0
            if cap:  # d(cap * tanh(z / cap)) / dz
                g = g * (1 - torch.tanh(z / cap) ** 2)
        ctx.save_for_backward(weight_lo, g.to(weight_lo.dtype), w)
        ctx.mark_non_differentiable(logits, nll)
        ctx.h_dtype, ctx.packed = h.dtype, packed
        return (w * nll).sum(), logits, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_logits, _grad_nll):
        weight_lo, g, w = ctx.saved_tensors
        grad_z = ctx.packed.input_grad(g) if ctx.packed is not None else g @ weight_lo
        grad_h = grad_z.to(ctx.h_dtype) * (grad_loss * w)[:, None].to(ctx.h_dtype)  # (N, d)
        return grad_h, None, None, None, None, None, None, None, None


def low_precision_dtype(device: torch.device) -> torch.dtype:
    """bf16 where its matmul is fast (CUDA, CPUs with AVX512-BF16 or AMX), else fp32 (then exact)."""
    if device.type == "cuda":
        return torch.bfloat16
    fast = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return torch.bfloat16 if fast else torch.float32


class TargetNLL:
    """Mean NLL of target tokens from final hidden states, for one model (keeps the lm_head copy)."""

    def __init__(self, model, dtype: torch.dtype | None = None, support: int = 64):
        head = model.get_output_embeddings()
        self.weight, self.bias = head.weight, getattr(head, "bias", None)
        dtype = dtype or low_precision_dtype(self.weight.device)
        self.weight_lo = self.weight if dtype == self.weight.dtype else self.weight.detach().to(dtype)
        cfg = getattr(model.config, "text_config", None) or model.config
        self.cap = getattr(cfg, "final_logit_softcapping", None)
        self.support = min(support, self.weight.shape[0])
        self._packed: PackedWeight | None | bool = False  # False: not made yet

    @property
    def packed(self) -> PackedWeight | None:
        """The copy reordered for oneDNN's products (sam/core/packed.py), made once; None: torch's."""
        if self._packed is False:
            self._packed = PackedWeight(self.weight_lo) if packable(self.weight_lo.detach()) else None
        return self._packed

    def __call__(self, h: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                 packed: bool = True):
        """h (N, d), labels (N,), weights (N,) -> sum(weights * NLL) (differentiable in h; the mean NLL when
        weights is None), the (N, V) logits and the per-position NLL (N,) (neither differentiable)."""
        if weights is None:
            weights = torch.full((h.shape[0],), 1.0 / h.shape[0], device=h.device)
        return _LowPrecisionHeadNLL.apply(h, self.weight, self.weight_lo, self.bias, labels, self.cap, self.support,
                                          weights.float(), self.packed if packed else None)
