"""Turn a question into the model prompt, and ask the (memory-aware) model."""

from __future__ import annotations

from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF

MAX_NEW_TOKENS = 32


class PromptFormatSkill(BaseSkill):
    name = "format_prompt"
    description = "Render the user's question in the session's prompt format (the string generate and edit share)."
    required_inputs = ("input_query",)
    output_keys = ("model_prompt",)

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        uif.put(self.name, model_prompt=self.context.prompt_format.render(uif.input_query))
        return uif


class AnswerSkill(BaseSkill):
    name = "answer"
    description = "Greedy answer from the edited model; reports which edit, if any, fired."
    required_inputs = ("model_prompt",)
    optional_inputs = ("max_new_tokens",)
    output_keys = ("answer", "routed_edit")

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        ed = self.context.editor
        prompt = uif.get("model_prompt")
        raw = ed.generate(prompt, max_new_tokens=int(uif.get("max_new_tokens") or MAX_NEW_TOKENS))
        answer = self.context.prompt_format.clean(raw)
        edit_id, overlap = ed.route(prompt)
        uif.put(self.name, answer=answer, raw_continuation=raw, routed_edit=edit_id, route_overlap=round(overlap, 3))
        uif.final_response = answer
        if not answer:
            uif.warn("the model gave an empty answer", self.name)
        return uif
