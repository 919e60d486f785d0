"""TargetNLL against the dense fp32 cross-entropy, on the real default model's answer positions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam.core.batching import encode_pairs
from sam.core.model_loader import load_model
from sam.core.output_loss import TargetNLL
from tests.conftest import default_model_dir


@pytest.fixture(scope="module")
def answer_states(zsre):
    loaded = load_model(str(default_model_dir()))
    model, tok = loaded.model, loaded.tokenizer
    pairs = [(r["src"], r["alt"]) for r in zsre[:8] if r["alt"].strip()]
    batch = encode_pairs(tok, pairs, tok.pad_token_id)
    with torch.no_grad():
        h = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    return model, h[batch.rows, batch.positions], batch.labels  # (N, d), (N,)


def dense(model, h, labels):
    h = h.clone().requires_grad_()
    loss = F.cross_entropy(model.get_output_embeddings()(h).float(), labels)
    loss.backward()
    return loss.detach(), h.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradient_match_the_dense_cross_entropy(answer_states, dtype):
    model, h, labels = answer_states
    ref_loss, ref_grad = dense(model, h, labels)
    hh = h.clone().requires_grad_()
    loss, logits = TargetNLL(model, dtype)(hh, labels)
    loss.backward()
    assert logits.shape == (len(labels), model.config.vocab_size)
    if dtype == torch.float32:  # the same numbers as autograd through lm_head
        assert float(loss) == pytest.approx(float(ref_loss), abs=1e-5)
        assert torch.allclose(hh.grad, ref_grad, rtol=1e-3, atol=1e-6)
    else:  # exact logits on each row's label and likely tokens: the loss is off by the bf16 tail only
        assert abs(float(loss) - float(ref_loss)) < 1e-3
        cos = F.cosine_similarity(hh.grad.flatten(), ref_grad.flatten(), dim=0)
        assert cos > 0.999
    # the label's logit, which the loss and the success check read, is exact either way
    ref_logits = model.get_output_embeddings()(h).float()
    pick = torch.arange(len(labels)), labels
    assert torch.allclose(logits[pick], ref_logits[pick], atol=1e-4)
