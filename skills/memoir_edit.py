"""MEMOIR_EditSkill: train a correction as a sparse edit of the model (written only once verified)."""

from __future__ import annotations

from sam.core.prompts import Turn
from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF
from sam_skills.answer import MAX_NEW_TOKENS


class MEMOIR_EditSkill(BaseSkill):  # noqa: N801 - the name of the design notes
    name = "memoir_edit"
    description = ("Train an edit so that edit_question is answered with correct_answer (MEMOIR residual memory); "
                   "verify_edit then writes it or rolls it back.")
    required_inputs = ("edit_question", "correct_answer")
    optional_inputs = ("edit_history", "edit_context", "confidence_score", "edit_source", "importance",
                       "control_questions")
    output_keys = ("pending_edit", "edit_prompt", "answers_before")

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        confidence = float(uif.get("confidence_score", 1.0))
        floor = self.context.min_edit_confidence
        if confidence < floor:
            # An edit is permanent until reverted: a guess must not become the model's belief.
            uif.fail(f"confidence {confidence:.2f} is below the edit floor {floor:.2f}: not editing", self.name)
            return uif
        ed = self.context.editor
        question, target = uif.get("edit_question"), str(uif.get("correct_answer")).strip()
        prompt = ed.render(question)  # the key: the question in a fresh conversation
        ed.check_target(target)  # an answer too long to teach is refused before anything is generated
        history = [Turn(q, a) for q, a in (uif.get("edit_history") or [])]
        contexts = [ed.render(question, history, self.context.system_prompt)] if history else []
        controls = [ed.render(q) for q in (uif.get("control_questions") or self.context.control_questions)]
        # Answers before the edit, so the verifier can tell what the edit changed.
        before = [ed.prompts.clean(a) for a in ed.generate_batch([prompt, *controls], max_new_tokens=MAX_NEW_TOKENS)]
        pending = ed.train(prompt, target, contexts=contexts, source=str(uif.get("edit_source") or "user"),
                           importance=float(uif.get("importance") or 1.0))
        uif.put(self.name, pending_edit=pending, edit_prompt=prompt, answers_before=before[0],
                control_answers_before=dict(zip([c.question for c in controls], before[1:])))
        context = f" from '{uif.get('edit_context')}'" if uif.get("edit_context") else ""
        o = pending.outcome
        uif.log("train", f"'{target}'{context} in {o.steps} steps, loss {o.loss:.3f}, token accuracy "
                f"{o.accuracy:.2f}", self.name)
        return uif
