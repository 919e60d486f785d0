"""Reasoning hooks: check a trained edit before it is written, and undo one on request.

Verification applies the trained edit without writing it (`editor.trial`) and asks: does the
question now give the answer (recall), do paraphrases give it (when the caller supplies some),
and are unrelated questions answered exactly as before. An edit that is not recalled is rolled
back: nothing is written, and the failure says why, unless the user asked to keep failed edits.
"""

from __future__ import annotations

from sam.core.prompts import contains_answer
from sam.errors import EditFailedError
from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF
from sam_skills.answer import MAX_NEW_TOKENS

WEIGHTS = {"recall": 0.6, "paraphrase": 0.2, "locality": 0.2}


class EditVerifierSkill(BaseSkill):
    name = "verify_edit"
    description = ("Apply the trained edit without writing it, re-ask its question, paraphrases and unrelated "
                   "questions; write the edit when it is recalled, else roll it back.")
    required_inputs = ("pending_edit", "edit_prompt", "correct_answer")
    optional_inputs = ("answers_before", "control_answers_before", "paraphrase_questions", "keep_failed")
    output_keys = ("edit_id", "verification", "verified", "edit_metrics")

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        ed = self.context.editor
        pending, prompt, target = uif.get("pending_edit"), uif.get("edit_prompt"), str(uif.get("correct_answer"))
        controls_before = dict(uif.get("control_answers_before") or {})
        paraphrases = [ed.render(q) for q in (uif.get("paraphrase_questions") or [])]
        controls = [ed.render(q) for q in controls_before]
        with ed.trial(pending):
            gens = ed.answer([prompt, *paraphrases, *controls], max_new_tokens=MAX_NEW_TOKENS)
        outs = [ed.prompts.clean(g.text) for g in gens]
        answer, para_out = outs[0], outs[1:1 + len(paraphrases)]
        ctrl_out = outs[1 + len(paraphrases):]
        recall = contains_answer(answer, target)
        para_hits = [contains_answer(a, target) for a in para_out]
        unchanged = [a == controls_before[c.question] for c, a in zip(controls, ctrl_out)]

        parts = {"recall": 1.0 if recall else pending.outcome.accuracy * 0.5}
        if paraphrases:
            parts["paraphrase"] = sum(para_hits) / len(para_hits)
        if controls:
            parts["locality"] = sum(unchanged) / len(unchanged)
        confidence = sum(WEIGHTS[k] * v for k, v in parts.items()) / sum(WEIGHTS[k] for k in parts)
        verdict = "failed" if not recall else ("verified" if all(para_hits) and all(unchanged) else "partial")
        o = pending.outcome
        verification = {
            "verdict": verdict, "confidence": round(confidence, 3), "answer_before": uif.get("answers_before"),
            "answer_after": answer, "recalled": recall, "memory_fired": gens[0].edit_id is not None,
            "paraphrases": [{"question": p.question, "answer": a, "ok": ok}
                            for p, a, ok in zip(paraphrases, para_out, para_hits)],
            "controls": [{"question": c.question, "before": controls_before[c.question], "after": a, "unchanged": ok}
                         for c, a, ok in zip(controls, ctrl_out, unchanged)],
        }
        metrics = {"steps": o.steps, "loss": round(o.loss, 4), "seconds": round(pending.seconds, 2),
                   "target_accuracy": o.accuracy}
        if verdict == "failed" and not uif.get("keep_failed", self.context.keep_failed):
            uif.put(self.name, verification=verification, verified=False, edit_metrics=metrics)
            uif.fail(f"the edit did not take (answer now '{answer}'): rolled back, nothing was written; "
                     f"--keep-failed keeps such an edit", self.name)
            return uif
        try:
            result = ed.commit(pending)
        except EditFailedError as exc:
            uif.put(self.name, verification=verification, verified=False, edit_metrics=metrics)
            uif.fail(str(exc), self.name)
            return uif
        if result.supersedes is not None:
            verification["replaces"] = {"id": result.supersedes, "target": ed.get_edit(result.supersedes).target}
        uif.put(self.name, edit_id=result.edit_id, verification=verification, verified=verdict == "verified",
                edit_metrics=metrics)
        uif.confidence_score = round(confidence, 3)
        uif.final_response = answer
        if verdict != "verified":
            uif.warn(f"edit #{result.edit_id} is {verdict}: answer now '{answer}'", self.name)
        return uif


class RevertEditSkill(BaseSkill):
    name = "revert_edit"
    description = "Revert one edit (it stops firing; an edit it superseded comes back)."
    required_inputs = ("revert_id",)
    output_keys = ("reverted",)

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        ed = self.context.editor
        rec = ed.revert(uif.get("revert_id"))
        info = {"id": rec.id, "question": rec.question, "target": rec.target, "status": rec.status,
                "restored": rec.supersedes if rec.supersedes is not None
                and ed.get_edit(rec.supersedes).status == "active" else None}
        info["answer_now"] = ed.prompts.clean(ed.generate(ed.render(rec.question), max_new_tokens=MAX_NEW_TOKENS))
        uif.put(self.name, reverted=info)
        uif.final_response = info["answer_now"]
        return uif
