"""The `sam` CLI without loading a model: help, doctor, settings, bad input as one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sam.cli import app

runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, list(args), **kw)


def assert_one_line_error(result, fragment):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error:"), err
    assert fragment in err, err


def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("chat", "ask", "correct", "feedback", "edits", "verify", "bench", "demo", "doctor", "fix-facts"):
        assert cmd in result.output
    for sub in ("list", "show", "revert", "export", "import"):
        assert sub in run("edits", "--help").output


def test_doctor_reports_model_store_and_skills(tmp_path):
    result = run("--store", str(tmp_path / "data"), "--json", "doctor")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["store"]["path"] == str(tmp_path / "data") and report["store"]["exists"] is False
    assert report["model"]["available"] is True and report["model"]["name"] == "default"
    assert "memoir_edit" in report["skills"] and report["packages"]["torch"] != "not installed"


def test_doctor_fails_for_a_missing_model_path(tmp_path):
    result = run("--store", str(tmp_path), "--model", str(tmp_path / "nope"), "doctor")
    assert result.exit_code == 1 and "no config.json there" in result.output


def test_store_comes_from_sam_home(tmp_path):
    result = run("--json", "doctor", env={"SAM_HOME": str(tmp_path / "home")})
    assert json.loads(result.stdout)["store"]["path"] == str(tmp_path / "home")


@pytest.mark.parametrize("args,fragment", [
    (["ask", ""], "the question is empty"),
    (["ask", "   "], "the question is empty"),
    (["correct", "What is 2+2?", " "], "the answer is empty"),
    (["feedback", "Q?", "", "No, it's X"], "the response is empty"),
    (["--format", "bogus", "ask", "hi"], "unknown prompt format 'bogus'"),
    (["edits", "list", "--status", "weird"], "unknown status 'weird'"),
    (["verify", "--phase", "z"], "unknown phase 'z'"),
    (["bench", "edit", "--sizes", "1,x"], "--sizes wants comma-separated integers"),
])
def test_bad_input_is_one_line(tmp_path, args, fragment):
    assert_one_line_error(run("--store", str(tmp_path), *args), fragment)


def test_bad_setting_from_the_environment_is_one_line(tmp_path):
    result = run("--store", str(tmp_path), "doctor", env={"MEMOIR_MIN_EDIT_CONFIDENCE": "7"})
    assert_one_line_error(result, "invalid setting min_edit_confidence")


def test_import_rejects_missing_and_foreign_files(tmp_path):
    assert_one_line_error(run("--store", str(tmp_path), "edits", "import", str(tmp_path / "none.json")), "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"edits": []}))
    assert_one_line_error(run("--store", str(tmp_path), "edits", "import", str(bad)), "not a sam edits export")
    bad.write_text("{oops")
    assert_one_line_error(run("--store", str(tmp_path), "edits", "import", str(bad)), "is not JSON")
    bad.write_text(json.dumps({"format": "sam-edits", "edits": [{"prompt": "q", "target": " "}]}))
    assert_one_line_error(run("--store", str(tmp_path), "edits", "import", str(bad)), "lacks a prompt or a target")


def test_fix_facts_rejects_a_bad_source_before_loading_a_model(tmp_path):
    src = tmp_path / "facts.txt"
    src.write_text("x")
    assert_one_line_error(run("--store", str(tmp_path), "fix-facts", str(src)), "use .jsonl, .csv or .sqlite")
    src = tmp_path / "facts.jsonl"
    src.write_text('{"prompt": "Q?"}\n')
    assert_one_line_error(run("--store", str(tmp_path), "fix-facts", str(src)), "needs one of the columns answer, target")


def test_feedback_that_is_not_a_correction_touches_nothing(tmp_path):
    store = tmp_path / "store"
    result = run("--store", str(store), "feedback", "What is 2+2?", "4", "thanks!")
    assert result.exit_code == 0, result.output
    assert "no edit" in result.output and "confirmation" in result.output
    assert not store.exists()  # the editor was never opened, so the store was never created
    result = run("--store", str(store), "--json", "feedback", "What is 2+2?", "4", "no idea")
    data = json.loads(result.stdout)
    assert data["edited"] is False and data["feedback_kind"] == "uncertain"
