"""Tasks, memory read-outs and the benchmark's smoke configuration (what CI runs)."""

import json

import numpy as np
import pytest
import torch

from sam.research.memnet import analysis
from sam.research.memnet.bench import main, verdict
from sam.research.memnet.experiments import distance_bins, gem_metrics
from sam.research.memnet.tasks import ContinualTask, RecallTask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recall_task_targets_point_back_to_their_pairs():
    t = RecallTask(n_filler=8, n_keys=16, n_values=16, window=8, n_chunks=4, n_pairs=4)
    idx, tg, dist, kind = t.batch(64, torch.Generator().manual_seed(0))
    assert idx.shape == (64, 32) and int(idx.max()) < t.vocab_size
    b, p = torch.nonzero(tg >= 0, as_tuple=True)
    assert len(b) == 64 * 4  # every pair is queried once
    v = p - dist[b, p]
    assert torch.all(idx[b, v] == tg[b, p])  # `dist` tokens back sits the value ...
    assert torch.all(idx[b, v - 1] == idx[b, p])  # ... right after the queried key
    assert torch.all(idx[b, p - 1] == t.query_token) and torch.all(kind[b, p] == 4)
    assert torch.all(v % 2 == 1)  # pairs never straddle a chunk boundary (window is even)
    with pytest.raises(Exception):
        RecallTask(window=7)


def test_continual_task_facts_are_fixed_per_task_and_bindings_are_per_episode():
    c = ContinualTask(n_tasks=3, keys_per_task=6, n_values=8, window=8, n_chunks=3, n_pairs=4, n_queries=4)
    facts = c.mapping(0)
    g = torch.Generator().manual_seed(0)
    lookup = {}
    for task in range(3):
        for mode in ("facts", "retention", "bind"):
            idx, tg, studied = c.batch(torch.full((32,), task), facts, g, mode)
            b, p = torch.nonzero(tg >= 0, as_tuple=True)
            keys = idx[b, p]
            assert torch.all((keys - c.n_filler) // 6 == task)  # the task's own keys
            if mode == "bind":  # the answer is the value the key was bound to earlier in the same episode
                for bb, pp in zip(b.tolist(), p.tolist()):
                    at = (idx[bb, : pp - 1] == idx[bb, pp]).nonzero().flatten()
                    assert len(at) == 1 and idx[bb, at[0] + 1] == tg[bb, pp]
                assert bool(studied[b, p].all())
                continue
            for k, v in zip(keys.tolist(), tg[b, p].tolist()):
                assert lookup.setdefault(k, v) == v  # a key always has the same fact
            assert int(studied.sum()) == (32 * 2 if mode == "facts" else 0)  # half the fact queries were studied
    assert torch.equal(c.mapping(0), facts) and not torch.equal(c.mapping(1), facts)
    idx, tg, studied = c.batch(torch.zeros(8, dtype=torch.long), facts, g, "train")
    assert studied[:4].sum() == 8 and studied[4:].sum() == 16  # 4 rows x 2, 4 rows x 4  # half facts episodes, half bind episodes
    with pytest.raises(Exception):
        c.batch(torch.zeros(2, dtype=torch.long), facts, g, "nope")


def test_lifetimes_and_survival_on_a_hand_made_trace():
    wm = np.zeros((1, 6, 2))
    wm[0, 0, 0] = wm[0, 3, 0] = 1.0  # slot 0 written at chunks 0 and 3: first content lives 3 chunks
    wm[0, 1, 1] = 1.0  # slot 1 written once at chunk 1, never overwritten
    decay = np.ones((1, 6, 2))
    dur, obs = analysis.lifetimes(wm, decay)
    assert sorted(zip(dur.tolist(), obs.tolist())) == [(3.0, False), (3.0, True), (5.0, False)]
    decay[0, 2:, 1] = 0.6  # slot 1 fades: 0.6 * 0.6 < 0.5 after two steps
    dur, obs = analysis.lifetimes(wm, decay)
    assert (2.0, True) in list(zip(dur.tolist(), obs.tolist()))
    S = analysis.kaplan_meier(np.array([1.0, 2.0, 2.0, 4.0]), np.array([True, True, False, True]), 4)
    assert S[0] == 1.0 and S[1] == pytest.approx(0.75) and S[2] == pytest.approx(0.5) and S[4] == pytest.approx(0.0)
    assert analysis.rmst(S) == pytest.approx(1 + 0.75 + 0.5 + 0.5)
    reuse = analysis.slot_reuse(wm)
    assert reuse == dict(writes_per_used_slot=1.5, slots_used=1.0)


def test_read_hits_and_gates_by_kind():
    write_slot = np.array([[5, 3, 7, 1]])
    dist = np.array([[-1, -1, -1, 2]])  # query at 3 points back to position 1, which wrote slot 3
    assert analysis.read_hits(np.array([[[0, 0]] * 3 + [[3, 6]]]), write_slot, dist).tolist() == [True]
    assert analysis.read_hits(np.array([[[0, 0]] * 3 + [[5, 6]]]), write_slot, dist).tolist() == [False]
    g = analysis.gate_by_kind(np.array([[[0.2], [0.4], [1.0]]]), np.array([[0, 0, 2]]), 4)
    assert g[0] == pytest.approx(0.3) and g[2] == 1.0 and np.isnan(g[1])


def test_metrics_helpers():
    R = np.array([[0.9, 0.1], [0.5, 0.8]])
    assert gem_metrics(R) == dict(acc=pytest.approx(0.65), bwt=pytest.approx(-0.4))
    assert distance_bins(16, 128) == [(0, 16), (16, 32), (32, 64), (64, 128)]
    assert verdict(dict(mean=0.9, std=0.01), dict(mean=0.5, std=0.01)) == "better"
    assert verdict(dict(mean=0.5, std=0.1), dict(mean=0.55, std=0.1)) == "no clear difference"


def test_smoke_benchmark_writes_json_tables_and_plots(tmp_path, capsys):
    assert main(["--smoke", "--seeds", "1", "--out", str(tmp_path), "--device", "cpu"]) == 0
    data = json.loads((tmp_path / "memnet_bench.json").read_text())
    for f in data["plots"]:
        assert (tmp_path / f).stat().st_size > 1000
    assert len(data["plots"]) == 5
    s = data["summary"]
    rec = s["recall"]["models"]
    assert set(rec) == {"memnet", "transformer", "lstm", "memnet_wiped"}
    n = rec["memnet"]["params"]
    assert abs(rec["transformer"]["params"] - n) / n < 0.05 and abs(rec["lstm"]["params"] - n) / n < 0.05
    assert all(0.0 <= a <= 1.0 for a in rec["memnet"]["eval"]["acc_mean"])
    cl = s["continual"]["models"]
    R = cl["memnet"]["sequential"]["retention"]["R_mean"]
    assert len(R) == 2 and len(R[0]) == 2
    assert "retention_reset" in cl["memnet"]["sequential"] and "retention_reset" not in cl["transformer"]["sequential"]
    assert len(s["forgetting"]["steps"]) >= 2 and len(s["forgetting"]["survival_by_probe"][0]["mean"]) == 3
    lines = (tmp_path / "memnet_jobs.jsonl").read_text().splitlines()
    assert len(lines) == 9  # 3 models x (recall + continual sequential + continual joint)
    out = capsys.readouterr().out
    assert "Experiment 1" in out and "Experiment 2" in out and "Experiment 3" in out


def test_merge_jobs_aggregates_separate_runs_and_refuses_mismatched_ones(tmp_path, capsys):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert main(["--smoke", "--seeds", "1", "--models", "memnet", "--out", str(a), "--device", "cpu"]) == 0
    assert main(["--smoke", "--seeds", "1", "--models", "transformer,lstm", "--out", str(b), "--device", "cpu"]) == 0
    capsys.readouterr()
    ja, jb = str(a / "memnet_jobs.jsonl"), str(b / "memnet_jobs.jsonl")
    assert main(["--merge-jobs", ja, jb, "--out", str(merged)]) == 0
    data = json.loads((merged / "memnet_bench.json").read_text())
    assert [m["path"] for m in data["merged_from"]] == [ja, jb] and [m["jobs"] for m in data["merged_from"]] == [3, 6]
    assert data["preset"] == "smoke" and data["seeds"] == 1 and len(data["plots"]) == 5
    s = data["summary"]
    assert set(s["recall"]["models"]) == {"memnet", "transformer", "lstm", "memnet_wiped"}
    assert {m for m, v in s["continual"]["models"].items() if v} == {"memnet", "transformer", "lstm"}
    assert set(s["continual"]["verdicts"]) == {"transformer", "lstm"} and "forgetting" in s
    assert not (merged / "memnet_jobs.jsonl").exists()  # nothing was trained
    assert "Experiment 2" in capsys.readouterr().out

    def refused(args, fragment):
        assert main(["--merge-jobs", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error:") and fragment in err, err

    refused([ja, ja, "--out", str(merged)], "given twice")
    refused([ja, "--out", str(a)], "would overwrite")
    c = tmp_path / "c"  # b's run as if trained longer
    c.mkdir()
    meta = json.loads((b / "memnet_bench.json").read_text())
    meta["settings"]["recall"]["steps"] = 4
    (c / "memnet_bench.json").write_text(json.dumps(meta))
    rows = [json.loads(x) for x in (b / "memnet_jobs.jsonl").read_text().splitlines()]
    for r in rows:
        r["steps"] = 4 if r["experiment"] == "recall" else r["steps"]
    (c / "memnet_jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    refused([ja, str(c / "memnet_jobs.jsonl"), "--out", str(merged)], "different settings (recall.steps 3 vs 4)")
    (c / "memnet_bench.json").unlink()  # without its settings, the lines are checked against the preset's
    refused([str(c / "memnet_jobs.jsonl"), "--smoke", "--out", str(merged)], "trained 4 steps, the settings say 3")
    refused([jb, ja, jb.replace("b/", "b/../b/"), "--out", str(merged)], "given twice")
    refused([str(tmp_path / "nope.jsonl"), "--out", str(merged)], "does not exist")


def test_bench_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--smoke", "--experiments", "nope"])
    with pytest.raises(SystemExit):
        main(["--smoke", "--seeds", "0"])
