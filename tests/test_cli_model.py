"""The CLI on the real default model: one store for the module (copied from a fitted template).

Read-only and chat commands run by default; the ones that edit the model take minutes on 2
CPU cores and are marked slow.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from sam.cli import app
from sam.orchestration.prompting import contains_answer
from sam.orchestration.testing import fresh_store

runner = CliRunner()
QUESTION = "What is the largest planet in the solar system?"  # the default model says "Pluto"
UNRELATED = "What is the capital of France?"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fresh_store(tmp_path_factory.mktemp("cli") / "store")


def sam(store, *args, **kw):
    return runner.invoke(app, ["--store", str(store), *args], **kw)


def sam_process(store, *args, stdin=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "sam.cli", "--store", str(store), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_ask_answers_read_only(store):
    result = sam(store, "--json", "ask", QUESTION)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"] and data["routed_edit"] is None
    assert data["prompt"] == QUESTION + "\n"  # the default "line" format
    assert not (store / ".lock").exists() or not _locked(store)  # released


def test_edits_list_on_an_empty_store(store):
    result = sam(store, "--json", "edits", "list")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    result = sam(store, "edits", "show", "99")
    assert result.exit_code == 1 and "Traceback" not in result.output and "99" in result.stderr


def test_chat_with_piped_stdin(store):
    script = f"{QUESTION}\nthanks!\n/bogus\n/correct\n/help\n/edits\n/quit\nnever read\n"
    result = sam(store, "chat", input=script)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("you>") == 7 and "never read" not in out  # /quit stops reading
    assert "sam>" in out and "a confirmation: nothing to edit" in out
    assert "unknown command /bogus" in out and "usage: /correct ANSWER" in out
    assert "/undo" in out and "0 active edit(s)" in out


def test_chat_json_lines_in_a_real_process(store):
    proc = sam_process(store, "--json", "chat", stdin=f"{UNRELATED}\nI prefer shorter answers\n")
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["kind"] for r in replies] == ["answer", "feedback"]
    assert contains_answer(replies[0]["text"], "Paris") and replies[0]["plan"] == ["format_prompt", "answer"]
    assert replies[1]["feedback_kind"] == "preference"


def _locked(store) -> bool:
    fd = os.open(store / ".lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def test_a_second_writer_is_refused_while_readers_work(store):
    chat = subprocess.Popen([sys.executable, "-m", "sam.cli", "--store", str(store), "chat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "sam chat" in chat.stdout.readline()  # printed once the editor (and its lock) is open
        assert _locked(store)
        result = sam(store, "correct", QUESTION, "Jupiter")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "in use by another sam process" in result.stderr
        assert sam(store, "ask", UNRELATED).exit_code == 0  # read-only commands still work
        assert sam(store, "edits", "list").exit_code == 0
    finally:
        chat.communicate("/quit\n", timeout=120)
    assert chat.returncode == 0
    assert not _locked(store)


def test_a_store_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["--store", str(blocker / "store"), "correct", "Q?", "A"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not writable" in result.stderr


@pytest.mark.slow
def test_correct_export_revert_import_round_trip(store, tmp_path):
    before = json.loads(sam(store, "--json", "ask", QUESTION).stdout)["answer"]
    unrelated = json.loads(sam(store, "--json", "ask", UNRELATED).stdout)["answer"]
    result = sam(store, "--json", "correct", QUESTION, "Jupiter")
    assert result.exit_code == 0, result.output
    edit = json.loads(result.stdout)
    assert edit["verification"]["recalled"] and edit["verification"]["answer_before"] == before
    edit_id = edit["edit_id"]

    now = json.loads(sam(store, "--json", "ask", QUESTION).stdout)
    assert contains_answer(now["answer"], "Jupiter") and now["routed_edit"] == edit_id
    assert json.loads(sam(store, "--json", "ask", UNRELATED).stdout)["answer"] == unrelated

    export = tmp_path / "edits.json"
    assert sam(store, "edits", "export", str(export)).exit_code == 0
    doc = json.loads(export.read_text())
    assert doc["format"] == "sam-edits" and [e["target"] for e in doc["edits"]] == ["Jupiter"]

    result = sam(store, "--json", "edits", "revert", str(edit_id))
    assert result.exit_code == 0 and json.loads(result.stdout)["answer_now"] == before
    assert sam(store, "edits", "revert", str(edit_id)).exit_code == 1  # already reverted: one line
    assert json.loads(sam(store, "--json", "edits", "list", "--status", "reverted").stdout)[0]["id"] == edit_id

    # Replay on "another machine": a fresh store.
    other = fresh_store(tmp_path / "other")
    result = sam(other, "--json", "edits", "import", str(export))
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["status"].startswith("imported")
    assert json.loads(sam(other, "--json", "edits", "import", str(export)).stdout)[0]["status"] == "already present"
    assert contains_answer(json.loads(sam(other, "--json", "ask", QUESTION).stdout)["answer"], "Jupiter")
