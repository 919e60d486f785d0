"""Phase C end to end (five real `sam` processes on the default model): minutes, so slow."""

import json

import pytest


@pytest.mark.slow
def test_phase_c_passes(capsys):
    from sam.verify.phase_c import main

    assert main(json_out=True) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and {c["check"] for c in report["checks"]} >= {
        "chat turn answers", "feedback turn edits and verifies", "correction survives a restart",
        "unrelated answer unchanged", "/undo restores the original answer"}
