"""FeedbackHandler: which replies become an edit, and what answer is extracted (no model)."""

from __future__ import annotations

import pytest

from sam.orchestration import SAM_UIF, Orchestrator, SkillContext, SkillRegistry
from sam_skills.feedback_handler import classify_feedback, fact_question

QUESTION = "What is the capital of Australia?"
PREVIOUS = "The capital of Australia is Sydney."

CORRECTIONS = [
    ("No, it's Canberra", "Canberra"),
    ("no it is canberra.", "canberra"),
    ("Nope, Canberra.", "Canberra"),
    ("No. Canberra", "Canberra"),
    ("No — Canberra", "Canberra"),
    ("Nah, it's Canberra", "Canberra"),
    ("No! It's \"Canberra\"", "Canberra"),
    ("No, I think it's Canberra", "Canberra"),
    ("No, the capital of Australia is Canberra", "Canberra"),
    ("No, Canberra is the capital", "Canberra"),
    ("Actually the answer is Canberra", "Canberra"),
    ("Actually, it's Canberra", "Canberra"),
    ("Actually it's Canberra, silly", "Canberra"),
    ("That's wrong — Canberra", "Canberra"),
    ("That's incorrect, the answer is Canberra", "Canberra"),
    ("That is not right: Canberra", "Canberra"),
    ("Wrong, it's Canberra", "Canberra"),
    ("Wrong answer: Canberra", "Canberra"),
    ("Incorrect. It is Canberra.", "Canberra"),
    ("False, it's Canberra", "Canberra"),
    ("You're wrong, it's Canberra", "Canberra"),
    ("It should be Canberra", "Canberra"),
    ("It should have been Canberra.", "Canberra"),
    ("You should have said Canberra", "Canberra"),
    ("The correct answer is Canberra", "Canberra"),
    ("The right answer is Canberra!", "Canberra"),
    ("The answer is Canberra", "Canberra"),
    ("Correction: Canberra", "Canberra"),
    ("It's actually Canberra", "Canberra"),
    ("It's Canberra, not Sydney", "Canberra"),
    ("Canberra, not Sydney", "Canberra"),
    ("not Sydney, Canberra", "Canberra"),
    ("It's Canberra actually", "Canberra"),
    ("No, it's New York City", "New York City"),
    ("The correct answer is 42", "42"),
]

NOT_EDITS = [
    ("What is the capital of France?", "question"),
    ("Who wrote Hamlet?", "question"),
    ("Tell me about Canberra", "question"),
    ("Why?", "question"),
    ("Are you sure?", "question"),
    ("Isn't it Canberra?", "question"),
    ("Thanks!", "confirmation"),
    ("thank you", "confirmation"),
    ("Great, thanks", "confirmation"),
    ("ok", "confirmation"),
    ("No, thanks", "confirmation"),
    ("No problem", "confirmation"),
    ("Yes, that's right", "confirmation"),
    ("Correct!", "confirmation"),
    ("Exactly", "confirmation"),
    ("Hmm", "confirmation"),
    ("lol", "confirmation"),
    ("no idea", "uncertain"),
    ("I don't know", "uncertain"),
    ("No idea, sorry", "uncertain"),
    ("Not sure", "uncertain"),
    ("Please answer in French", "preference"),
    ("I prefer shorter answers", "preference"),
    ("Can you be more concise?", "preference"),
    ("It should be shorter", "preference"),
    ("It should be more detailed", "preference"),
    ("From now on answer in one word", "preference"),
    ("I meant the capital of Austria", "clarification"),
    ("no", "rejection"),
    ("wrong", "rejection"),
    ("That's wrong", "rejection"),
    ("Actually, never mind", "other"),
    ("Actually, I have another question", "other"),
    ("It's fine", "other"),
    ("", "other"),
    ("   ", "other"),
]


@pytest.mark.parametrize("text,answer", CORRECTIONS)
def test_corrections_are_extracted(text, answer):
    fb = classify_feedback(text, PREVIOUS, QUESTION)
    assert fb.kind == "factual_correction", fb
    assert fb.answer == answer
    assert fb.wants_edit and fb.confidence >= 0.5


@pytest.mark.parametrize("text,kind", NOT_EDITS)
def test_non_corrections_do_not_trigger_an_edit(text, kind):
    fb = classify_feedback(text, PREVIOUS, QUESTION)
    assert fb.kind == kind, fb
    assert not fb.wants_edit


def test_a_reply_that_repeats_the_answer_is_a_confirmation():
    fb = classify_feedback("It's Sydney", PREVIOUS, QUESTION)
    assert fb.kind == "confirmation" and not fb.wants_edit


@pytest.mark.parametrize("text,subject,answer", [
    ("remember: my dog's name is Rex", "my dog's name", "Rex"),
    ("Remember that the office wifi password is tulip42", "the office wifi password", "tulip42"),
    ("please remember, my favourite colour is teal", "my favourite colour", "teal"),
])
def test_remember_becomes_a_fact(text, subject, answer):
    fb = classify_feedback(text)
    assert (fb.kind, fb.subject, fb.answer) == ("remember", subject, answer) and fb.wants_edit


def test_remember_without_a_fact_is_not_an_edit():
    fb = classify_feedback("remember to buy milk")
    assert fb.kind == "remember" and not fb.wants_edit and "remember: <thing> is <value>" in fb.detail


def test_fact_question():
    assert fact_question("my dog's name") == "What is my dog's name?"
    assert fact_question("my favourite books") == "What are my favourite books?"


class _NoEditor:
    opened = 0

    def __call__(self):
        _NoEditor.opened += 1
        raise RuntimeError("the editor must not be opened")


def _orchestrator():
    ctx = SkillContext(editor_factory=_NoEditor())
    return Orchestrator(SkillRegistry.default(ctx))


def test_feedback_skill_leaves_the_model_alone_for_non_corrections():
    _NoEditor.opened = 0
    uif = _orchestrator().run(SAM_UIF(input_query=QUESTION, intermediate_data={
        "feedback": "thanks!", "previous_answer": PREVIOUS}), "feedback")
    assert uif.ok and uif.get("feedback_kind") == "confirmation"
    assert "edit_id" not in uif.intermediate_data and uif.execution_plan == ["feedback_handler"]
    assert _NoEditor.opened == 0


def test_feedback_skill_hands_a_correction_to_the_edit_skill():
    uif = _orchestrator().run(SAM_UIF(input_query=QUESTION, intermediate_data={
        "feedback": "No, it's Canberra", "previous_answer": PREVIOUS}), "feedback")
    # The chain reached memoir_edit (which then could not open the editor in this test).
    assert uif.execution_plan == ["feedback_handler", "memoir_edit", "verify_edit"]
    assert uif.get("edit_question") == QUESTION and uif.get("correct_answer") == "Canberra"
    assert uif.status == "failed" and uif.errors[0].startswith("memoir_edit: RuntimeError")


def test_low_confidence_feedback_is_refused_by_the_edit_skill():
    ctx = SkillContext(editor_factory=_NoEditor(), min_edit_confidence=0.75)
    orch = Orchestrator(SkillRegistry.default(ctx))
    uif = orch.run(SAM_UIF(input_query=QUESTION, intermediate_data={
        "feedback": "It's Canberra actually", "previous_answer": PREVIOUS}), "feedback")  # confidence 0.6
    assert uif.status == "failed" and "below the edit floor 0.75" in uif.errors[0]


def test_clarification_yields_the_clarified_question():
    uif = _orchestrator().run(SAM_UIF(input_query=QUESTION, intermediate_data={
        "feedback": "I meant the capital of Austria", "previous_answer": PREVIOUS}), "feedback")
    assert uif.ok and uif.get("feedback_kind") == "clarification"
    assert uif.get("clarified_question") == "What is the capital of Austria?"
