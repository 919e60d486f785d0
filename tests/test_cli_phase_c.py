"""Phase C end to end (five real `sam` processes on the default model, chat format): minutes, so slow."""

import json

import pytest


@pytest.mark.slow
def test_phase_c_passes(capsys, monkeypatch):
    from sam.verify.phase_c import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the `sam` processes: one thread each on 2 shared cores
    assert main(json_out=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["phase"] == "c" and report["ok"]
    assert {c["check"] for c in report["checks"]} >= {
        "chat turn answers", "the model starts out wrong", "feedback turn edits and verifies",
        "'thanks!' is not an edit", "correction survives a restart", "unrelated answer unchanged",
        "/undo restores the original answer"}
    assert all(c["ok"] for c in report["checks"])
