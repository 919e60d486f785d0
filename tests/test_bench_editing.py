"""The sequential-editing benchmark end to end on a tiny model (seconds), through its argparse entry
point `sam.bench.editing.main(argv)`: a run that pauses (--max-minutes) and resumes from its store,
checkpoints, clipping to the usable records, and no fact edited twice."""

from __future__ import annotations

import json
import sqlite3

import pytest

from sam.bench.editing import PROGRESS_KEY, main


@pytest.fixture
def bench(tmp_path, tiny_llama_dir, zsre, one_thread):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps(zsre[50:58]))  # 8 records, one (index 54) with an empty alt
    store, out = tmp_path / "store", tmp_path / "out"

    def run(*extra: str) -> dict:
        argv = ["--data", str(data), "--model", str(tiny_llama_dir), "--store", str(store), "--out", str(out),
                "--tag", "tiny", "--layer", "1", "--top-k", "16", "--max-steps", "3", "--learning-rate", "1",
                "--neighbours", "2", "--generation-max", "1", *extra]
        assert main(argv) == 0
        return json.loads((out / "tiny.json").read_text())

    run.store = store
    return run


def _rows(store) -> list[tuple]:
    con = sqlite3.connect(f"file:{store / 'edits.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, question, target, status FROM edits ORDER BY id").fetchall()
        progress = con.execute("SELECT value FROM meta WHERE key = ?", (PROGRESS_KEY,)).fetchone()
    finally:
        con.close()
    return rows, progress[0] if progress else None


def test_benchmark_pauses_resumes_checkpoints_and_clips(bench):
    # --max-minutes stops it cleanly (here before the first edit); the partial result says where
    paused = bench("--sizes", "1,3,100", "--max-minutes", "0.0001")
    assert paused["paused_at"] == 0 and paused["checkpoints"] == [] and paused["edit_seconds"] == []
    assert _rows(bench.store)[0] == []

    # a run to T=3 on the same store and tag, then the full one resumes at fact 3
    part = bench("--sizes", "1,3")
    assert [cp["T"] for cp in part["checkpoints"]] == [1, 3] and "paused_at" not in part
    rows, progress = _rows(bench.store)
    assert progress == "3" and len(part["edit_seconds"]) == 3

    result = bench("--sizes", "1,3,100", "--compare-naive", "1")
    t1, t3, t7 = result["checkpoints"]  # T=100 asked, 7 usable records: the last checkpoint is all of them
    assert [cp["T"] for cp in (t1, t3, t7)] == [1, 3, 7]
    assert "rel_em" in t1 and "rel_em" not in t3  # exact match only up to --generation-max
    assert t1["n_neighbours"] == 2 and t3["n_neighbours"] == 2  # the next, not yet edited, records
    assert "loc_nbr_tf" not in t7  # nothing is left unedited at the end
    for cp in (t1, t3, t7):
        assert 0.0 <= cp["rel_tf"] <= 1.0 and 0.0 <= cp["loc_tf"] <= 1.0 and cp["median_edit_seconds"] >= 0
        assert cp["active_edits"] >= 1 and cp["bytes_per_edit"] > 0
    assert result["naive_vs_fast"]["edits"] == 1

    # every usable fact was edited exactly once across the three runs
    rows, progress = _rows(bench.store)
    assert progress == "7" and len(result["edit_seconds"]) == 7
    pairs = [(q, t) for _, q, t, _ in rows]
    assert len(pairs) == len(set(pairs)) and len(rows) <= 7
    # at most one active edit per question (a question asked in other words may supersede another's too)
    assert 1 <= sum(s == "active" for *_, s in rows) <= len({q for q, _ in pairs})

    # the same command once more has nothing left to do: no edit, no checkpoint twice
    again = bench("--sizes", "1,3,100")
    assert [cp["T"] for cp in again["checkpoints"]] == [1, 3, 7] and len(again["edit_seconds"]) == 7
    assert _rows(bench.store) == (rows, "7")


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--batch", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--batch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--natural", "--synthetic", "5"])
    assert exc.value.code == 2


def test_a_run_killed_between_checkpoints_resumes_with_every_facts_record(bench, tmp_path, tiny_llama_dir):
    """SIGKILL right after the first fact's progress is recorded (no checkpoint written yet, so no result JSON):
    the journal gives the resumed run that fact's timing and edit id, and is gone once the JSON holds them."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    argv = ["--data", str(tmp_path / "zsre.json"), "--model", str(tiny_llama_dir), "--store", str(bench.store),
            "--out", str(out), "--tag", "tiny", "--layer", "1", "--top-k", "16", "--max-steps", "3",
            "--learning-rate", "1", "--neighbours", "2", "--no-generation", "--sizes", "4"]
    env = {**os.environ, "SAM_FAILPOINT": "bench.chunk.after", "SAM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "sam.bench.editing", *argv], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "tiny.json").exists() and (out / "tiny.journal.jsonl").exists()
    assert _rows(bench.store)[1] == "1"

    result = bench("--sizes", "4", "--no-generation")
    assert len(result["edit_seconds"]) == len(result["edit_steps"]) == len(result["train_success"]) == 4
    assert result["edit_seconds"][0] > 0 and result["edit_steps"][0] > 0  # the killed run's own record
    rows, progress = _rows(bench.store)
    assert progress == "4" and len(result["edit_of"]) == 4
    assert set(result["edit_of"].values()) <= {r[0] for r in rows}
    assert result["checkpoints"][0]["T"] == 4 and not (out / "tiny.journal.jsonl").exists()
