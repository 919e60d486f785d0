"""The sequential-editing benchmark end to end on a tiny model (seconds): checkpoints, skips, JSON."""

from __future__ import annotations

import json

from sam.bench.editing import run
from sam.core.editor import EditorConfig


def test_benchmark_checkpoints_skips_and_clips(tmp_path, tiny_llama_dir, zsre):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(zsre[50:58]))  # 8 records, one (index 54) with an empty alt
    cfg = EditorConfig(layer=1, top_k=16, max_steps=3, lr=500.0)
    partial = tmp_path / "partial.json"
    result = run([1, 3, 100], data, str(tiny_llama_dir), config=cfg, compare_naive=1, partial=partial,
                 n_neighbours=2, generation_max=1)
    assert result["sizes"] == [1, 3, 7]  # T=100 asked, 7 usable records: the last checkpoint is all of them
    t1, t3, t7 = result["checkpoints"]
    assert [cp["T"] for cp in (t1, t3, t7)] == [1, 3, 7]
    assert "rel_em" in t1 and "rel_em" not in t3  # exact match only up to generation_max
    assert t1["n_neighbours"] == 2 and t3["n_neighbours"] == 2  # the next, not yet edited, records
    assert "loc_neighbour_tf" not in t7  # nothing is left unedited at the end
    for cp in (t1, t3, t7):
        assert 0.0 <= cp["rel_tf"] <= 1.0 and 0.0 <= cp["loc_tf"] <= 1.0 and cp["median_edit_seconds"] > 0
    assert json.loads(partial.read_text())["checkpoints"][-1]["T"] == 7  # rewritten after every checkpoint
    assert result["naive_vs_fast"]["edits"] == 1
