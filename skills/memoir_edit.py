"""MEMOIR_EditSkill: write a correction into the model as a persistent, reversible edit."""

from __future__ import annotations

from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF
from skills.answer import MAX_NEW_TOKENS


class MEMOIR_EditSkill(BaseSkill):  # noqa: N801 - the name of the design notes
    name = "memoir_edit"
    description = "Edit the model so that edit_prompt is answered with correct_answer (MEMOIR residual memory)."
    required_inputs = ("edit_prompt", "correct_answer")
    optional_inputs = ("edit_context", "confidence_score", "edit_source", "importance", "control_prompts")
    output_keys = ("edit_id", "edit_success", "edit_metrics", "answers_before")

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        confidence = float(uif.get("confidence_score", 1.0))
        floor = self.context.min_edit_confidence
        if confidence < floor:
            # An edit is permanent until reverted: a guess must not become the model's belief.
            uif.fail(f"confidence {confidence:.2f} is below the edit floor {floor:.2f}: not editing", self.name)
            return uif
        ed = self.context.editor
        prompt, target = uif.get("edit_prompt"), str(uif.get("correct_answer")).strip()
        controls = self._control_prompts(uif)
        # Answers before the edit, so the verifier can tell what the edit changed.
        before = ed.generate_batch([prompt, *controls], max_new_tokens=MAX_NEW_TOKENS)
        pf = self.context.prompt_format
        answers_before = {p: pf.clean(a) for p, a in zip([prompt, *controls], before)}
        result = ed.edit(prompt, target, source=str(uif.get("edit_source") or "user"),
                         importance=float(uif.get("importance") or 1.0))
        metrics = {"steps": result.steps, "loss": round(result.loss, 4), "seconds": round(result.seconds, 2),
                   "target_accuracy": result.target_accuracy, "expert": result.expert}
        uif.put(self.name, edit_id=result.edit_id, edit_success=result.success, edit_metrics=metrics,
                answers_before=answers_before, control_prompts=controls)
        context = f" from '{uif.get('edit_context')}'" if uif.get("edit_context") else ""
        uif.log("edit", f"#{result.edit_id} '{target}'{context} in {result.steps} steps, loss {result.loss:.3f}", self.name)
        if not result.success:
            uif.warn(f"training stopped at token accuracy {result.target_accuracy:.2f}", self.name)
        return uif

    def _control_prompts(self, uif: SAM_UIF) -> list[str]:
        given = uif.get("control_prompts")
        if given is not None:
            return list(given)
        pf = self.context.prompt_format
        return [pf.render(q) for q in self.context.control_prompts]
