"""The `sam` CLI without loading a model: help, doctor, settings, bad input as one-line errors, and the
store-only commands (list, export, upgrade) on a store written by hand.

Every command here that could load a model gets `--model <missing folder>`: a regression that loads
the model before refusing fails with "no model at" instead of quietly taking a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from sam.cli import app
from sam.core.store import Store

runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, list(args), **kw)


def assert_one_line_error(result, fragment, code=1):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error:"), err
    assert fragment in err, err


def sam_process(*args, env=None, timeout=120):
    """The console script's path (`sam.cli:main`): usage errors become one line and exit 2 there only."""
    return subprocess.run([sys.executable, "-m", "sam.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def hand_store(root, edits=(("What is the capital of Mongolia?", "Ulaanbaatar"), ("Who wrote Hamlet?", "Shakespeare"))):
    """A schema-2 store written through the Store API with a made-up identity (no model): what the
    commands that need no model (list, export, upgrade, doctor) read."""
    from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation

    fp = TopHashFingerprinter(generate_permutation(64, 0), 8)
    with Store(root) as st:
        st.claim({"model": "hand:0", "layer": 1, "d_ff": 64, "d_model": 16, "top_k": 8,
                  "fingerprinter": fp.digest(), "prompt_format": "chat"})
        st.save_fingerprinter(fp)
        for i, (q, a) in enumerate(edits):
            st.add_edit(prompt=q, question=q, target=a, cols=torch.arange(8) + 8 * i, delta=torch.randn(16, 8),
                        source="user", importance=1.0, steps=3, loss=0.01)
    return root


def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("chat", "ask", "correct", "feedback", "edits", "verify", "bench", "demo", "doctor", "fix-facts",
                "repair", "upgrade"):
        assert cmd in result.output
    for sub in ("list", "show", "revert", "export", "import"):
        assert sub in run("edits", "--help").output
    for sub in ("edit", "chat", "ask", "moe", "memnet", "cmrn"):
        assert sub in run("bench", "--help").output
    for option in ("--keep-failed", "--paraphrase"):
        assert option in run("correct", "--help").output
    assert "--format" in result.output and "auto" in result.output  # the chat template by default


def test_doctor_reports_model_store_and_skills(tmp_path):
    result = run("--store", str(tmp_path / "data"), "--json", "doctor")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["store"]["path"] == str(tmp_path / "data") and report["store"]["exists"] is False
    assert report["model"]["available"] is True and report["model"]["name"] == "default"
    assert report["system"]["prompt format"] == "auto"
    assert "memoir_edit" in report["skills"] and report["packages"]["torch"] != "not installed"
    assert not (tmp_path / "data").exists()  # doctor reads, never creates


def test_doctor_fails_for_a_missing_model_path(tmp_path):
    result = run("--store", str(tmp_path), "--model", str(tmp_path / "nope"), "doctor")
    assert result.exit_code == 1 and "no config.json there" in result.output


def test_store_comes_from_sam_home(tmp_path):
    result = run("--json", "doctor", env={"SAM_HOME": str(tmp_path / "home")})
    assert json.loads(result.stdout)["store"]["path"] == str(tmp_path / "home")


@pytest.mark.parametrize("args,fragment", [
    (["ask", ""], "the question is empty"),
    (["ask", "   "], "the question is empty"),
    (["ask", "a\x00b"], "the question contains a NUL character"),
    (["ask", "x" * 100_001], "the question is 100,001 characters long; the limit is 100,000"),
    (["correct", "What is 2+2?", " "], "the answer is empty"),
    (["correct", "", "4"], "the question is empty"),
    (["correct", "What is 2+2?", "4", "-p", " "], "a paraphrase is empty"),
    (["feedback", "Q?", "", "No, it's X"], "the response is empty"),
    (["feedback", "Q?", "A", "\t"], "the feedback is empty"),
    (["--format", "bogus", "ask", "hi"], "invalid setting MEMOIR_PROMPT_FORMAT='bogus'"),
    (["--top-k", "0", "ask", "hi"], "invalid setting MEMOIR_TOP_K (--top-k)=0"),
    (["--similarity-threshold", "1.5", "ask", "hi"], "MEMOIR_SIMILARITY_THRESHOLD (--similarity-threshold)=1.5"),
    (["--learning-rate", "nan", "ask", "hi"], "MEMOIR_LEARNING_RATE (--learning-rate)"),
    (["--max-steps", "0", "ask", "hi"], "MEMOIR_MAX_STEPS (--max-steps)=0"),
    (["edits", "list", "--status", "weird"], "unknown status 'weird'"),
    (["edits", "show", "abc"], "no edit with id 'abc'"),
    (["edits", "show", "0"], "no edit with id '0'"),
    (["edits", "show", "99999999999999999999"], "no edit with id '99999999999999999999'"),
    (["edits", "show", "7"], "no edit with id '7' (the store is empty)"),
    (["edits", "revert", "1.5"], "no edit with id '1.5'"),
    (["edits", "revert", "99999999999999999999"], "no edit with id '99999999999999999999'"),
    (["verify", "--phase", "z"], "unknown phase 'z'"),
    (["upgrade"], "no sam store at"),
    (["repair"], "no sam store at"),
    (["edits", "export", "out.json"], "no sam store at"),
])
def test_bad_input_is_one_line(tmp_path, args, fragment):
    store = tmp_path / "store"
    assert_one_line_error(run("--store", str(store), "--model", str(tmp_path / "no-model"), *args), fragment)
    assert not store.exists()  # nothing was created


def test_bad_settings_from_the_environment_are_one_line(tmp_path):
    result = run("--store", str(tmp_path), "doctor", env={"MEMOIR_MIN_EDIT_CONFIDENCE": "7"})
    assert_one_line_error(result, "invalid setting MEMOIR_MIN_EDIT_CONFIDENCE='7'")
    result = run("--store", str(tmp_path), "doctor", env={"MEMOIR_TOP_K": "abc"})
    assert_one_line_error(result, "invalid setting MEMOIR_TOP_K (--top-k)='abc'")
    result = run("--store", str(tmp_path), "doctor", env={"MEMOIR_LR": "5"})  # a misspelt name is not ignored
    assert_one_line_error(result, "unknown setting MEMOIR_LR")


def test_import_rejects_missing_and_foreign_files(tmp_path):
    store = tmp_path / "store"

    def imp(path):
        return run("--store", str(store), "--model", str(tmp_path / "no-model"), "edits", "import", str(path))

    assert_one_line_error(imp(tmp_path / "none.json"), "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"edits": []}))
    assert_one_line_error(imp(bad), "not a sam edits export")
    bad.write_text("{oops")
    assert_one_line_error(imp(bad), "is not JSON")
    bad.write_text(json.dumps({"format": "sam-edits", "version": 2, "edits": [{"question": "q", "target": " "}]}))
    assert_one_line_error(imp(bad), "question and target must not be blank")
    bad.write_text(json.dumps({"format": "sam-edits", "edits": []}))
    assert_one_line_error(imp(bad), "version: Field required")
    assert not store.exists()


def test_fix_facts_rejects_a_bad_source_before_loading_a_model(tmp_path):
    store = tmp_path / "store"

    def fix(path):
        return run("--store", str(store), "--model", str(tmp_path / "no-model"), "fix-facts", str(path))

    src = tmp_path / "facts.txt"
    src.write_text("x")
    assert_one_line_error(fix(src), "use .jsonl, .csv or .sqlite")
    src = tmp_path / "facts.jsonl"
    src.write_text('{"prompt": "Q?"}\n')
    assert_one_line_error(fix(src), "needs one of the text columns answer, target")
    assert_one_line_error(fix(tmp_path / "missing.csv"), "does not exist")
    assert not store.exists()


def test_feedback_that_is_not_a_correction_touches_nothing(tmp_path):
    store = tmp_path / "store"
    result = run("--store", str(store), "feedback", "What is 2+2?", "4", "thanks!")
    assert result.exit_code == 0, result.output
    assert "no edit" in result.output and "confirmation" in result.output
    assert not store.exists()  # the editor was never opened, so the store was never created
    result = run("--store", str(store), "--json", "feedback", "What is 2+2?", "4", "no idea")
    data = json.loads(result.stdout)
    assert data["edited"] is False and data["feedback_kind"] == "uncertain"
    assert not store.exists()


def test_list_and_export_need_no_model(tmp_path):
    """`edits list` and `edits export` read the store alone; on a missing store list is empty and creates nothing."""
    nomodel = ["--model", str(tmp_path / "no-model")]
    result = run("--store", str(tmp_path / "none"), *nomodel, "--json", "edits", "list")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert not (tmp_path / "none").exists()

    store = hand_store(tmp_path / "store")
    result = run("--store", str(store), *nomodel, "--json", "edits", "list")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["id"], r["status"], r["target"]) for r in rows] == [(1, "active", "Ulaanbaatar"),
                                                                   (2, "active", "Shakespeare")]
    result = run("--store", str(store), *nomodel, "edits", "list", "--status", "all")
    assert result.exit_code == 0 and "Ulaanbaatar" in result.stdout and "2 all edit(s)" in result.stdout

    out = tmp_path / "export.json"
    result = run("--store", str(store), *nomodel, "--json", "edits", "export", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"file": str(out), "edits": 2}
    doc = json.loads(out.read_text())
    assert doc["format"] == "sam-edits" and doc["version"] == 2 and doc["prompt_format"] == "chat"
    assert [e["question"] for e in doc["edits"]] == ["What is the capital of Mongolia?", "Who wrote Hamlet?"]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind

    from sam.core.exchange import read_export

    assert [e.target for e in read_export(out)] == ["Ulaanbaatar", "Shakespeare"]  # it reads back, checksum ok
    doc["edits"][0]["target"] = "Tokyo"
    out.write_text(json.dumps(doc))
    result = run("--store", str(store), *nomodel, "edits", "import", str(out))
    assert_one_line_error(result, "checksum mismatch")


def test_upgrade_and_doctor_check_on_a_current_store(tmp_path):
    store = hand_store(tmp_path / "store")
    result = run("--store", str(store), "--json", "upgrade")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["schema"] == 2
    result = run("--store", str(store), "--json", "doctor", "--check")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)["store"]
    assert info["check"] == "ok" and info["edits"] == "2 active" and info["deltas checked"] == "2 (0 bad)"


def test_upgrade_converts_a_schema_1_store(tmp_path, build_v1_store):
    rows = [{"prompt": "Who wrote Hamlet?\n", "target": "Shakespeare", "cols": torch.arange(8),
             "delta": torch.ones(16, 8)}]
    store = build_v1_store(tmp_path / "v1", rows, {"model": "hand:0", "layer": 1, "d_ff": 64, "top_k": 8})
    result = run("--store", str(store), "--json", "edits", "list")  # a reader never migrates
    assert_one_line_error(result, "run `sam upgrade` once")
    result = run("--store", str(store), "--json", "upgrade")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["schema"] == 2 and info["upgraded_from"] == "1" and (store / "backup" / info["backup"]).exists()
    rows = json.loads(run("--store", str(store), "--json", "edits", "list").stdout)
    assert [(r["question"], r["target"]) for r in rows] == [("Who wrote Hamlet?", "Shakespeare")]


def test_a_store_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run("--store", str(blocker / "store"), "correct", "Q?", "A")
    assert_one_line_error(result, "not writable")


@pytest.mark.parametrize("args,fragment", [
    (["bogus-command"], "No such command 'bogus-command'"),
    (["ask"], "Missing argument"),
    (["ask", "--bogus", "Q?"], "No such option: --bogus"),
    (["--bogus", "doctor"], "No such option: --bogus"),
    (["edits", "frobnicate"], "No such command 'frobnicate'"),
    (["edits", "revert", "-3"], "No such option: -3"),
    (["--top-k", "abc", "doctor"], "Invalid value for '--top-k'"),
    (["fix-facts", "f.jsonl", "--limit", "0"], "--limit"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, args, fragment):
    proc = sam_process("--store", str(tmp_path / "store"), *args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and fragment in err, err
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "store").exists()


def test_console_script_errors_are_one_line_and_exit_1(tmp_path):
    proc = sam_process("--store", str(tmp_path / "s"), "ask", "  ")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: the question is empty"
    proc = sam_process("--store", str(tmp_path / "s"), "doctor", env={"MEMOIR_TOP_K": "-1"})
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "MEMOIR_TOP_K" in proc.stderr


def test_bench_edit_bad_sizes_is_a_one_line_usage_error(tmp_path):
    proc = sam_process("--store", str(tmp_path / "store"), "bench", "edit", "--sizes", "1,x", "--out", str(tmp_path))
    assert proc.returncode in (1, 2) and "--sizes" in proc.stderr and "internal error" not in proc.stderr
