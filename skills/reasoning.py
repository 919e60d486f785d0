"""Reasoning hooks: check an edit after it is made, and undo one on request.

Verification asks three things: does the edited prompt now give the answer (re-ask, plus the
teacher-forced score and whether this edit's memory fires), do paraphrases give it (when the
caller supplies some), and are unrelated prompts answered exactly as before the edit.
Plans that succeed are remembered by the orchestrator's PlanMemory and reused per goal.
"""

from __future__ import annotations

from sam.orchestration.prompting import contains_answer
from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF
from skills.answer import MAX_NEW_TOKENS

WEIGHTS = {"recall": 0.6, "paraphrase": 0.2, "locality": 0.2}


class EditVerifierSkill(BaseSkill):
    name = "verify_edit"
    description = "Re-ask the edited prompt, its paraphrases and unrelated prompts; attach a verdict and confidence."
    required_inputs = ("edit_id", "edit_prompt", "correct_answer")
    optional_inputs = ("answers_before", "paraphrase_prompts")
    output_keys = ("verification", "verified")

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        ed, pf = self.context.editor, self.context.prompt_format
        edit_id, prompt, target = uif.get("edit_id"), uif.get("edit_prompt"), str(uif.get("correct_answer"))
        before = dict(uif.get("answers_before") or {})
        paraphrases = [pf.render(q) for q in (uif.get("paraphrase_prompts") or [])]
        controls = [p for p in before if p != prompt]

        outs = ed.generate_batch([prompt, *paraphrases, *controls], max_new_tokens=MAX_NEW_TOKENS)
        outs = [pf.clean(o) for o in outs]
        answer, para_out, ctrl_out = outs[0], outs[1:1 + len(paraphrases)], outs[1 + len(paraphrases):]
        fired, _ = ed.route(prompt)
        recall = contains_answer(answer, target)
        para_hits = [contains_answer(a, target) for a in para_out]
        unchanged = [a == before[p] for p, a in zip(controls, ctrl_out)]

        parts = {"recall": 1.0 if recall else ed.score(prompt, target) * 0.5}
        if paraphrases:
            parts["paraphrase"] = sum(para_hits) / len(para_hits)
        if controls:
            parts["locality"] = sum(unchanged) / len(unchanged)
        confidence = sum(WEIGHTS[k] * v for k, v in parts.items()) / sum(WEIGHTS[k] for k in parts)
        if not recall:
            verdict = "failed"
        elif all(para_hits) and all(unchanged):
            verdict = "verified"
        else:
            verdict = "partial"
        verification = {
            "verdict": verdict, "confidence": round(confidence, 3), "answer_before": before.get(prompt),
            "answer_after": answer, "recalled": recall, "memory_fired": fired == edit_id,
            "paraphrases": [{"prompt": p, "answer": a, "ok": ok} for p, a, ok in zip(paraphrases, para_out, para_hits)],
            "controls": [{"prompt": p, "before": before[p], "after": a, "unchanged": ok}
                         for p, a, ok in zip(controls, ctrl_out, unchanged)],
        }
        uif.put(self.name, verification=verification, verified=verdict == "verified")
        uif.confidence_score = round(confidence, 3)
        uif.final_response = answer
        if verdict != "verified":
            uif.warn(f"edit #{edit_id} is {verdict}: answer now '{answer}'", self.name)
        return uif


class RevertEditSkill(BaseSkill):
    name = "revert_edit"
    description = "Revert one edit (its delta is subtracted; the prompt answers as before)."
    required_inputs = ("revert_id",)
    optional_inputs = ("revert_prompt",)
    output_keys = ("reverted",)

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        ed = self.context.editor
        rec = ed.revert(int(uif.get("revert_id")))
        info = {"id": rec.id, "prompt": rec.prompt, "target": rec.target, "status": rec.status}
        prompt = uif.get("revert_prompt") or rec.prompt
        info["answer_now"] = self.context.prompt_format.clean(ed.generate(prompt, max_new_tokens=MAX_NEW_TOKENS))
        uif.put(self.name, reverted=info)
        uif.final_response = info["answer_now"]
        return uif
