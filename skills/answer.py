"""Turn a question (in its conversation) into the model prompt, and ask the memory-aware model."""

from __future__ import annotations

from sam.core.prompts import Turn
from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF

MAX_NEW_TOKENS = 48


class PromptFormatSkill(BaseSkill):
    name = "format_prompt"
    description = "Render the user's question with the conversation so far in the model's prompt format."
    required_inputs = ("input_query",)
    optional_inputs = ("history", "system_prompt")
    output_keys = ("model_prompt",)

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        history = [Turn(q, a) for q, a in (uif.get("history") or [])]
        system = uif.get("system_prompt") or self.context.system_prompt
        uif.put(self.name, model_prompt=self.context.editor.render(uif.input_query, history, system))
        return uif


class AnswerSkill(BaseSkill):
    name = "answer"
    description = "Greedy answer from the edited model; reports which edit, if any, fired."
    required_inputs = ("model_prompt",)
    optional_inputs = ("max_new_tokens",)
    output_keys = ("answer", "routed_edit")

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        ed = self.context.editor
        gen = ed.answer([uif.get("model_prompt")], max_new_tokens=int(uif.get("max_new_tokens") or MAX_NEW_TOKENS))[0]
        answer = ed.prompts.clean(gen.text)
        uif.put(self.name, answer=answer, raw_continuation=gen.text, routed_edit=gen.edit_id,
                route_overlap=round(gen.overlap, 3))
        uif.final_response = answer
        if not answer:
            uif.warn("the model gave an empty answer", self.name)
        return uif
