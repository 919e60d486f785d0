"""The skills on the real editor (one store per module, the chat format) and the fact-source loaders."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from sam.core.prompts import contains_answer
from sam.errors import InvalidInputError
from sam.orchestration import SAM_UIF, SkillContext
from sam.orchestration.session import ChatSession
from sam.orchestration.testing import fresh_store
from sam_skills.factual_correction import Fact, load_facts

QUESTION = "What is the largest planet in the solar system?"  # chat format: "... Neptune ..."
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
    num = tmp_path / "n.jsonl"
    num.write_text('{"question": "How many legs has a spider?", "answer": 8}\n')  # a number is text enough
    assert load_facts(num) == [Fact("How many legs has a spider?", "8")]


@pytest.mark.parametrize("name,content,fragment", [
    ("f.jsonl", "{bad\n", "not JSON"),
    ("f.jsonl", "", "holds no facts"),
    ("f.jsonl", '["A?", "a"]\n', "want an object with question and answer"),
    ("f.jsonl", '{"question": ["A?"], "answer": "a"}\n', "needs one of the text columns prompt, question"),
    ("f.jsonl", '{"question": "A?", "answer": true}\n', "needs one of the text columns answer, target"),
    ("f.csv", "q,a\nx,y\n", "needs one of the text columns prompt, question"),
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
    with pytest.raises(InvalidInputError, match="bad table name"):
        load_facts(tmp_path / "e.db", table="facts; DROP TABLE x")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("prompt,answer\nCaf\xe9?,x\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        load_facts(bad)


# --- the real editor -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from sam.core.editor import MemoirEditor

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    store = fresh_store(tmp_path_factory.mktemp("skills") / "store")
    ctx = SkillContext(editor_factory=lambda: MemoirEditor.open(store), store_dir=store, control_questions=CONTROLS)
    s = ChatSession(ctx)
    yield s
    ctx.close()
    torch.set_num_threads(n)


def test_answer_plan_and_uif_round_trip(session):
    reply = session.ask(QUESTION)
    assert reply.kind == "answer" and reply.text and reply.data["routed_edit"] is None
    uif = reply.uif
    assert uif.execution_plan == ["format_prompt", "answer"] and set(uif.skill_timings) == {"format_prompt", "answer"}
    assert uif.get("model_prompt").question == QUESTION  # the key is the question inside the chat template
    again = SAM_UIF.from_json(uif.to_json())  # the prompt (a dataclass) comes back as its fields
    assert again.to_json() == uif.to_json() and again.get("answer") == uif.get("answer")
    assert again.get("model_prompt")["text"] == uif.get("model_prompt").text
    assert session.ask("  ").kind == "error"
    assert session.history[-1].question == QUESTION  # a failed ask adds no turn


def test_fact_check_dry_run_lists_without_editing(session, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in [
        {"prompt": QUESTION, "answer": "Jupiter"}, {"prompt": "What is the capital of France?", "answer": "Paris"}]))
    uif = session.orchestrator.run(SAM_UIF(intermediate_data={"fact_source": str(facts)}), "self_correct")
    assert uif.ok, uif.errors
    assert uif.execution_plan == ["factual_correction"]  # the goal only checks; the session corrects
    report = session.fix_facts(facts, dry_run=True)
    assert report["checked"] == 2 and report["wrong"] == 1 and report["edited"] == 0 and report["dry_run"]
    assert [i["status"] for i in report["items"]] == ["would edit", "correct"]  # it says Neptune, and Paris
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
    saved = json.loads(reply.uif.to_json())  # a correction's request, tensors and all, can be saved
    assert saved["intermediate_data"]["edit_id"] == reply.data["edit_id"]
    assert contains_answer(session.ask(QUESTION).text, "Jupiter")
    assert session.handle("thanks!").kind == "feedback"  # no second edit
    assert len(session.context.editor.edits()) == 1
    again = session.handle("/correct Jupiter")  # the same correction: nothing trained or written
    assert again.kind == "edit" and again.data["already_present"] and len(session.context.editor.edits(None)) == 1
    undo = session.handle("/undo")
    assert undo.kind == "undo" and undo.data["answer_now"] == original
    session.handle("/new")  # this conversation has said "Jupiter" twice: ask in a fresh one
    after = session.ask(QUESTION)
    assert after.text == original and after.data["routed_edit"] is None
    assert session.handle("/undo").kind == "error"  # nothing left


@pytest.mark.slow
def test_fact_check_edits_wrong_answers(session, tmp_path):
    facts = tmp_path / "facts.csv"
    facts.write_text(f"prompt,answer\n{QUESTION},Jupiter\nWhat is the capital of France?,Paris\n")
    report = session.fix_facts(facts)
    assert report["edited"] == 1 and report["fixed"] == 1 and report["items"][0]["status"] == "fixed"
    assert contains_answer(report["items"][0]["after"], "Jupiter") and "edit_id" in report["items"][0]
    assert report["items"][1]["status"] == "correct" and "edit_id" not in report["items"][1]
    assert contains_answer(session.ask(QUESTION).text, "Jupiter")
