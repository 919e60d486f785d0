"""The CLI on the real default model: one store for the module (copied from a fitted template).

Read-only and chat commands run by default; the ones that edit the model take minutes on 2
CPU cores and are marked slow. Prompts use the model's chat template (`--format auto`); the
default model answers QUESTION wrongly there ("Neptune").
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from sam.cli import app
from sam.core.prompts import contains_answer
from sam.orchestration.testing import fresh_store

runner = CliRunner()
QUESTION = "What is the largest planet in the solar system?"  # chat format: "... is Neptune ..."
UNRELATED = "What is the capital of France?"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: a second intra-op thread only fights the other processes
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fresh_store(tmp_path_factory.mktemp("cli") / "store")


def sam(store, *args, **kw):
    return runner.invoke(app, ["--store", str(store), *args], **kw)


def ask(store, question):
    result = sam(store, "--json", "ask", question)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sam_process(store, *args, stdin=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "sam.cli", "--store", str(store), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=ENV)


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


def test_ask_answers_read_only_in_the_chat_format(store):
    db = (store / "edits.sqlite").read_bytes()
    data = ask(store, QUESTION)
    assert data["answer"] and data["routed_edit"] is None and not contains_answer(data["answer"], "Jupiter")
    assert f"<|im_start|>user\n{QUESTION}<|im_end|>" in data["prompt"]  # the model's chat template
    assert data["prompt"].endswith("<|im_start|>assistant\n")
    assert (store / "edits.sqlite").read_bytes() == db  # a reader writes nothing to the database
    assert not (store / ".lock").exists() or not _locked(store)  # released


def test_edits_list_and_show_on_an_empty_store(store):
    result = sam(store, "--json", "edits", "list")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    result = sam(store, "edits", "show", "99")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == "error: no edit with id '99'"


def test_chat_with_piped_stdin(store):
    script = f"{QUESTION}\nthanks!\n/bogus\n/correct\n/help\n/edits\n/system Be brief.\n/new\n/quit\nnever read\n"
    result = sam(store, "chat", input=script)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("you>") == 9 and "never read" not in out  # /quit stops reading
    assert "sam>" in out and "a confirmation: nothing to edit" in out
    assert "unknown command /bogus" in out and "usage: /correct ANSWER" in out
    assert "/undo" in out and "0 active edit(s)" in out
    assert "system prompt: Be brief." in out and "new conversation" in out


def test_chat_json_lines_in_a_real_process(store):
    proc = sam_process(store, "--json", "chat", stdin=f"{UNRELATED}\nI prefer shorter answers\n")
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["kind"] for r in replies] == ["answer", "feedback"]
    assert contains_answer(replies[0]["text"], "Paris") and replies[0]["plan"] == ["format_prompt", "answer"]
    assert replies[1]["feedback_kind"] == "preference"


def test_a_second_writer_is_refused_while_readers_work(store):
    chat = subprocess.Popen([sys.executable, "-m", "sam.cli", "--store", str(store), "chat"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert "sam chat" in chat.stdout.readline()  # printed once the editor (and its lock) is open
        assert _locked(store)
        result = sam(store, "correct", QUESTION, "Jupiter")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "in use by another sam process" in result.stderr and result.stderr.count("\n") == 1
        proc = sam_process(store, "upgrade")  # a writer through the console script too: one line, exit 1
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "in use by another sam process" in proc.stderr
        proc = sam_process(store, "edits", "revert", "1")  # no such edit: answered from the store, lock or not
        assert proc.returncode == 1 and proc.stderr == "error: no edit with id '1'\n"
        assert sam(store, "--json", "edits", "list").exit_code == 0  # read-only commands still work
        assert ask(store, UNRELATED)["answer"]
    finally:
        chat.communicate("/quit\n", timeout=300)
    assert chat.returncode == 0
    assert not _locked(store)


# --- editing (slow) ------------------------------------------------------------------------------
@pytest.mark.slow
def test_ask_on_a_missing_store_uses_the_base_model_and_creates_nothing(tmp_path):
    missing = tmp_path / "nothing-here"
    data = ask(missing, UNRELATED)
    assert contains_answer(data["answer"], "Paris") and data["routed_edit"] is None
    assert not missing.exists()


@pytest.mark.slow
def test_correct_supersede_undo_export_revert_import(store, tmp_path):
    before = ask(store, QUESTION)["answer"]
    unrelated = ask(store, UNRELATED)["answer"]
    result = sam(store, "--json", "correct", QUESTION, "Jupiter")
    assert result.exit_code == 0, result.output
    edit = json.loads(result.stdout)
    v = edit["verification"]
    assert v["recalled"] and v["memory_fired"] and v["answer_before"] == before and v["verdict"] == "verified"
    assert [c["unchanged"] for c in v["controls"]] == [True, True] and "replaces" not in v
    first = edit["edit_id"]

    now = ask(store, QUESTION)
    assert contains_answer(now["answer"], "Jupiter") and now["routed_edit"] == first
    assert ask(store, UNRELATED)["answer"] == unrelated
    shown = json.loads(sam(store, "--json", "edits", "show", str(first)).stdout)
    assert shown["memory_fires"] and contains_answer(shown["answer_now"], "Jupiter") and shown["status"] == "active"

    # the same correction again: already present, nothing trained or written
    again = sam(store, "--json", "correct", QUESTION, "Jupiter")
    assert again.exit_code == 0 and json.loads(again.stdout)["already_present"] is True
    assert len(json.loads(sam(store, "--json", "edits", "list", "--status", "all").stdout)) == 1

    # a second correction of the same question supersedes the first; /undo brings it back
    result = sam(store, "--json", "correct", QUESTION, "Saturn")
    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout)
    assert second["verification"]["replaces"] == {"id": first, "target": "Jupiter"}
    assert contains_answer(ask(store, QUESTION)["answer"], "Saturn")
    superseded = json.loads(sam(store, "--json", "edits", "list", "--status", "superseded").stdout)
    assert [r["id"] for r in superseded] == [first]
    result = sam(store, "--json", "chat", input="/undo\n/quit\n")
    undo = json.loads(result.stdout.splitlines()[0])
    assert undo["kind"] == "undo" and undo["restored"] == first and contains_answer(undo["answer_now"], "Jupiter")
    now = ask(store, QUESTION)
    assert contains_answer(now["answer"], "Jupiter") and now["routed_edit"] == first

    export = tmp_path / "edits.json"
    assert sam(store, "edits", "export", str(export)).exit_code == 0
    doc = json.loads(export.read_text())
    assert doc["format"] == "sam-edits" and doc["prompt_format"] == "chat"
    assert [e["target"] for e in doc["edits"]] == ["Jupiter"]  # active edits only (--all adds the others)

    result = sam(store, "--json", "edits", "revert", str(first))
    assert result.exit_code == 0 and json.loads(result.stdout)["answer_now"] == before
    result = sam(store, "edits", "revert", str(first))  # already reverted: one line
    err = result.stderr.strip()
    assert result.exit_code == 1 and err.startswith("error:") and err.endswith(f"edit {first} is already reverted")
    reverted = json.loads(sam(store, "--json", "edits", "list", "--status", "reverted").stdout)
    assert {r["id"] for r in reverted} == {first, second["edit_id"]}
    assert ask(store, UNRELATED)["answer"] == unrelated

    # replay on "another machine": a fresh store
    other = fresh_store(tmp_path / "other")
    result = sam(other, "--json", "edits", "import", str(export))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["status"] == "imported"
    assert json.loads(sam(other, "--json", "edits", "import", str(export)).stdout)[0]["status"] == "already present"
    assert contains_answer(ask(other, QUESTION)["answer"], "Jupiter")


@pytest.mark.slow
def test_an_edit_that_does_not_take_is_rolled_back_unless_kept(tmp_path):
    store = fresh_store(tmp_path / "store")
    weak = ["--learning-rate", "0.0001", "--max-steps", "1"]  # a delta too small to change the answer
    db = (store / "edits.sqlite").read_bytes()
    proc = sam_process(store, *weak, "correct", QUESTION, "Jupiter")
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "did not take" in err and "nothing was written" in err, err
    assert json.loads(sam(store, "--json", "edits", "list", "--status", "all").stdout) == []
    assert (store / "edits.sqlite").read_bytes() == db

    result = sam(store, *weak, "--json", "correct", QUESTION, "Jupiter", "--keep-failed")
    assert result.exit_code == 0, result.output
    kept = json.loads(result.stdout)
    assert kept["verification"]["verdict"] == "failed" and kept["warnings"]
    assert [r["id"] for r in json.loads(sam(store, "--json", "edits", "list").stdout)] == [kept["edit_id"]]
