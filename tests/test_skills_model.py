"""The skills on the real editor (one store per module) and the fact-source loaders."""

from __future__ import annotations

import json
import sqlite3

import pytest

from sam.errors import InvalidInputError
from sam.orchestration import SAM_UIF, PromptFormat, SkillContext
from sam.orchestration.prompting import contains_answer
from sam.orchestration.session import ChatSession
from sam.orchestration.testing import fresh_store
from sam_skills.factual_correction import Fact, load_facts

QUESTION = "What is the largest planet in the solar system?"
CONTROLS = ["What is the capital of France?", "How many days are there in a week?"]


# --- fact sources (no model) -------------------------------------------------------------------
def test_facts_load_from_jsonl_csv_and_sqlite(tmp_path):
    jl = tmp_path / "f.jsonl"
    jl.write_text('{"prompt": "A?", "answer": "a"}\n\n{"question": "B?", "target": "b"}\n')
    csvf = tmp_path / "f.csv"
    csvf.write_text("prompt,answer\nA?,a\nB?,b\n")
    db = tmp_path / "f.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE trivia (question TEXT, answer TEXT)")
    con.executemany("INSERT INTO trivia VALUES (?, ?)", [("A?", "a"), ("B?", "b")])
    con.commit()
    con.close()
    want = [Fact("A?", "a"), Fact("B?", "b")]
    assert load_facts(jl) == want and load_facts(csvf) == want and load_facts(db, table="trivia") == want


@pytest.mark.parametrize("name,content,fragment", [
    ("f.jsonl", "{bad\n", "not JSON"),
    ("f.jsonl", "", "holds no facts"),
    ("f.csv", "q,a\nx,y\n", "needs one of the columns prompt, question"),
    ("f.yaml", "x", "use .jsonl"),
])
def test_bad_fact_sources_are_reported(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=fragment):
        load_facts(path)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_facts(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidInputError, match="cannot read table"):
        sqlite3.connect(tmp_path / "e.db").close()
        load_facts(tmp_path / "e.db")


# --- the real editor -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from sam.core.editor import MemoirEditor

    store = fresh_store(tmp_path_factory.mktemp("skills") / "store")
    ctx = SkillContext(editor_factory=lambda: MemoirEditor.open(store), prompt_format=PromptFormat("line"),
                       store_dir=store, control_prompts=CONTROLS)
    s = ChatSession(ctx)
    yield s
    ctx.close()


def test_answer_plan_and_uif_round_trip(session):
    reply = session.ask(QUESTION)
    assert reply.kind == "answer" and reply.text
    uif = reply.uif
    assert uif.execution_plan == ["format_prompt", "answer"] and set(uif.skill_timings) == {"format_prompt", "answer"}
    assert SAM_UIF.from_json(uif.to_json()) == uif
    assert session.ask("  ").kind == "error"


def test_fact_check_dry_run_lists_without_editing(session, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in [
        {"prompt": QUESTION, "answer": "Jupiter"}, {"prompt": "What is the capital of France?", "answer": "Paris"}]))
    uif = session.orchestrator.run(SAM_UIF(intermediate_data={"fact_source": str(facts), "dry_run": True}),
                                   "self_correct")
    assert uif.ok, uif.errors
    report = uif.get("corrections_report")
    assert report["checked"] == 2 and report["edited"] == 0
    assert [i["status"] for i in report["items"]] == ["wrong", "correct"]  # the model says Pluto, and Paris
    assert session.context.editor.edits() == []


@pytest.mark.slow
def test_correction_verifies_and_undo_restores(session):
    original = session.ask(QUESTION).text
    reply = session.handle("No, it's Jupiter")
    assert reply.kind == "edit", reply.text
    v = reply.data["verification"]
    assert v["recalled"] and v["memory_fired"] and v["answer_before"] == original
    assert [c["unchanged"] for c in v["controls"]] == [True, True]
    assert v["verdict"] == "verified" and reply.uif.confidence_score > 0.9
    assert contains_answer(session.ask(QUESTION).text, "Jupiter")
    assert session.handle("thanks!").kind == "feedback"  # no second edit
    assert len(session.context.editor.edits()) == 1
    undo = session.handle("/undo")
    assert undo.kind == "undo" and undo.data["answer_now"] == original
    assert session.ask(QUESTION).text == original
    assert session.handle("/undo").kind == "error"  # nothing left


@pytest.mark.slow
def test_fact_check_edits_wrong_answers(session, tmp_path):
    facts = tmp_path / "facts.csv"
    facts.write_text(f"prompt,answer\n{QUESTION},Jupiter\nWhat is the capital of France?,Paris\n")
    uif = session.orchestrator.run(SAM_UIF(intermediate_data={"fact_source": str(facts)}), "self_correct")
    report = uif.get("corrections_report")
    assert report["edited"] == 1 and report["items"][0]["status"] == "fixed"
    assert report["items"][1]["status"] == "correct" and "edit_id" not in report["items"][1]
