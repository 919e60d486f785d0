"""TargetNLL against the dense fp32 cross-entropy, on the real default model's answer positions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import default_model_dir
from sam.core.batching import encode_pairs
from sam.core.model_loader import load_model
from sam.core.output_loss import TargetNLL, low_precision_dtype
from sam.core.prompts import PromptFormat


@pytest.fixture(scope="module")
def answer_states(zsre, one_thread):
    loaded = load_model(str(default_model_dir()))
    model, tok = loaded.model, loaded.tokenizer
    fmt = PromptFormat("chat", tok)
    pairs = [(fmt.render(r["src"]), r["alt"]) for r in zsre[:8] if r["alt"].strip()]
    batch = encode_pairs(tok, fmt, pairs, tok.pad_token_id)
    with torch.no_grad():
        h = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return model, h[batch.train_rows, batch.train_positions], batch.train_labels  # (N, d), (N,)


def dense(model, h, labels, weights=None):
    h = h.clone().requires_grad_()
    nll = F.cross_entropy(model.get_output_embeddings()(h).float(), labels, reduction="none")
    loss = nll.mean() if weights is None else (weights * nll).sum()
    loss.backward()
    return loss.detach(), nll.detach(), h.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradient_match_the_dense_cross_entropy(answer_states, dtype):
    model, h, labels = answer_states
    ref_loss, ref_nll, ref_grad = dense(model, h, labels)
    hh = h.clone().requires_grad_()
    loss, logits, nll = TargetNLL(model, dtype)(hh, labels)  # no weights: the mean
    loss.backward()
    assert logits.shape == (len(labels), model.config.vocab_size) and nll.shape == (len(labels),)
    assert not logits.requires_grad and not nll.requires_grad
    if dtype == torch.float32:  # the same numbers as autograd through lm_head
        assert loss.item() == pytest.approx(float(ref_loss), abs=1e-5)
        assert torch.allclose(nll, ref_nll, atol=1e-4)
        assert torch.allclose(hh.grad, ref_grad, rtol=1e-3, atol=1e-6)
    else:  # exact logits on each row's label and likely tokens: the loss is off by the bf16 tail only
        assert abs(loss.item() - float(ref_loss)) < 1e-3
        assert (nll - ref_nll).abs().max() < 1e-2
        cos = F.cosine_similarity(hh.grad.flatten(), ref_grad.flatten(), dim=0)
        assert cos > 0.999
    # the label's logit, which the loss and the success check read, is exact either way
    ref_logits = model.get_output_embeddings()(h).float()
    pick = torch.arange(len(labels)), labels
    assert torch.allclose(logits[pick], ref_logits[pick], atol=1e-4)
    assert torch.equal(logits.argmax(-1), ref_logits.argmax(-1))


def test_per_position_weights(answer_states):
    """The trainer weights each position by 1/(its edit's positions): the loss is sum(w * nll)."""
    model, h, labels = answer_states
    n = len(labels)
    w = torch.zeros(n)
    w[: n // 3] = 1.0 / (n // 3)  # one "edit" of the first third, another of the rest
    w[n // 3:] = 1.0 / (n - n // 3)
    ref_loss, ref_nll, ref_grad = dense(model, h, labels, w)
    hh = h.clone().requires_grad_()
    loss, _, nll = TargetNLL(model, torch.float32)(hh, labels, w)
    loss.backward()
    assert loss.item() == pytest.approx(float(ref_loss), rel=2e-6)
    assert loss.item() == pytest.approx(float((w * nll).sum()), rel=1e-6)
    assert torch.allclose(hh.grad, ref_grad, rtol=1e-3, atol=1e-6)
    zero = torch.zeros(n)
    zero[0] = 1.0  # weight 0 elsewhere: only row 0's gradient is non-zero
    hh = h.clone().requires_grad_()
    TargetNLL(model, torch.float32)(hh, labels, zero)[0].backward()
    assert hh.grad[0].abs().sum() > 0 and not hh.grad[1:].any()


def test_low_precision_is_chosen_by_device():
    assert low_precision_dtype(torch.device("cuda")) == torch.bfloat16
    assert low_precision_dtype(torch.device("cpu")) in (torch.bfloat16, torch.float32)
