import json

import pytest

from sam.research.moe.bench import FS_VARIANTS, SHOTS, run


pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_benchmark_writes_json_and_plots(tmp_path):
    res = run(seeds=1, out_dir=tmp_path, quick=True)
    data = json.loads((tmp_path / "moe_bench.json").read_text())
    assert (tmp_path / "accuracy_matrix.png").stat().st_size > 1000 and (tmp_path / "few_shot.png").stat().st_size > 1000
    s = data["summary"]
    for k in SHOTS:
        for v in FS_VARIANTS:
            assert 0.0 <= s["few_shot"][str(k)][v]["new"]["mean"] <= 1.0
    for name in ("finetune", "memory"):
        R = s["continual"][name]["R_mean"]
        assert len(R) == 5 and all(len(r) == 5 for r in R)
        assert -1.0 <= s["continual"][name]["bwt"]["mean"] <= 1.0
    assert 0.5 <= s["specialization"]["memory"]["purity"]["mean"] <= 1.0
    assert s["cost"]["forward"]["memory_ms"] > 0 and len(s["cost"]["retrieval"]) == 2
    assert set(data["memory_wins"]) >= {"few_shot_new", "few_shot_all", "forgetting"}
    assert res["settings"]["quick"] is True
