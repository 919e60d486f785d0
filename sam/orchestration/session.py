"""ChatSession: one conversation over the skills — what `sam chat` and phase C drive.

A line is a slash command, a reply to the last answer (a correction, a preference, thanks ...)
or a new question. Replies go through the feedback goal first; only when the FeedbackHandler
reads a factual correction (or "remember: X is Y") does the orchestrator chain on to the
"correct" goal, which edits and verifies. Anything else leaves the model untouched.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sam.orchestration.orchestrator import Orchestrator
from sam.orchestration.plan_memory import PlanMemory
from sam.orchestration.registry import SkillRegistry
from sam.orchestration.skill import SkillContext
from sam.orchestration.uif import SAM_UIF

HELP = """\
Ask a question; reply to an answer to correct it ("No, it's Canberra", "It should be X").
  /correct ANSWER   edit the model so the last question gets ANSWER
  /undo             revert the last edit of this session (else the newest edit in the store)
  /edits            list the active edits
  /help             this help
  /quit             leave (Ctrl-D works too)"""

ASK_KINDS = ("question", "other")  # replies that are really a new question


@dataclass
class Reply:
    kind: str  # answer | edit | undo | feedback | edits | help | error | quit
    text: str = ""
    uif: SAM_UIF | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind != "error"


@dataclass
class Turn:
    question: str
    prompt: str
    answer: str


class ChatSession:
    def __init__(self, context: SkillContext, registry: SkillRegistry | None = None,
                 orchestrator: Orchestrator | None = None, session_id: str | None = None) -> None:
        self.context = context
        self.registry = registry or SkillRegistry.default(context)
        memory = PlanMemory(context.store_dir / "plans.json") if context.store_dir else PlanMemory()
        self.orchestrator = orchestrator or Orchestrator(self.registry, memory=memory)
        self.session_id = session_id or uuid.uuid4().hex[:8]
        self.history: list[Turn] = []
        self.session_edits: list[int] = []
        self.preferences: list[str] = []

    @property
    def last(self) -> Turn | None:
        return self.history[-1] if self.history else None

    def _uif(self, query: str = "", **data: Any) -> SAM_UIF:
        return SAM_UIF(input_query=query, session_id=self.session_id, intermediate_data=data)

    # --- the four things a user can do ------------------------------------------------------
    def ask(self, question: str) -> Reply:
        if not question.strip():
            return Reply("error", "empty question: type something to ask")
        uif = self.orchestrator.run(self._uif(question), "answer")
        if not uif.ok:
            return Reply("error", uif.errors[0], uif)
        answer = uif.get("answer")
        self.history.append(Turn(question, uif.get("model_prompt"), answer))
        return Reply("answer", answer, uif, {"routed_edit": uif.get("routed_edit")})

    def correct(self, answer: str, question: str | None = None, paraphrases: list[str] | None = None) -> Reply:
        if question is None:
            if self.last is None:
                return Reply("error", "nothing to correct yet: ask a question first")
            question, prompt = self.last.question, self.last.prompt
        else:
            prompt = self.context.prompt_format.render(question)
        if not answer.strip():
            return Reply("error", "usage: /correct ANSWER")
        uif = self._uif(question, question=question, edit_prompt=prompt, correct_answer=answer.strip(),
                        edit_source="user", confidence_score=1.0)
        if paraphrases:
            uif.intermediate_data = {**uif.intermediate_data, "paraphrase_prompts": list(paraphrases)}
        return self._edited(self.orchestrator.run(uif, "correct"))

    def feedback(self, text: str) -> Reply:
        last = self.last
        data: dict[str, Any] = {"feedback": text}
        if last is not None:
            data.update(previous_prompt=last.prompt, previous_answer=last.answer, question=last.question)
        uif = self.orchestrator.run(self._uif(last.question if last else "", **data), "feedback")
        if "edit_id" in uif.intermediate_data:
            return self._edited(uif)
        if not uif.ok:
            return Reply("error", uif.errors[0], uif)
        kind = uif.get("feedback_kind")
        if kind == "preference":
            self.preferences.append(text)
        return Reply("feedback", uif.get("feedback_summary"), uif, {"feedback_kind": kind})

    def undo(self) -> Reply:
        note = ""
        if self.session_edits:
            edit_id = self.session_edits[-1]
        else:
            active = self.context.editor.edits("active")
            if not active:
                return Reply("error", "nothing to undo: the store has no active edits")
            edit_id = max(active, key=lambda r: r.id).id
            note = " (newest edit in the store; none was made in this session)"
        uif = self.orchestrator.run(self._uif(revert_id=edit_id), "undo")
        if not uif.ok:
            return Reply("error", uif.errors[0], uif)
        if self.session_edits and self.session_edits[-1] == edit_id:
            self.session_edits.pop()
        info = uif.get("reverted")
        return Reply("undo", f"reverted edit #{edit_id}{note}: '{info['prompt'].strip()}' now answers "
                     f"'{info['answer_now']}'", uif, info)

    # --- one line of input ---------------------------------------------------------------------
    def handle(self, line: str) -> Reply:
        line = line.strip()
        if not line:
            return Reply("help", "")
        if line.startswith("/"):
            return self._command(line)
        if self.last is None and not line.lower().startswith(("remember", "please remember", "note ")):
            return self.ask(line)
        reply = self.feedback(line)
        kind = reply.data.get("feedback_kind")
        if reply.kind == "feedback" and kind in ASK_KINDS:
            return self.ask(line)
        if reply.kind == "feedback" and kind == "clarification":
            return self.ask(reply.uif.get("clarified_question") or line)
        return reply

    def _command(self, line: str) -> Reply:
        cmd, _, arg = line.partition(" ")
        cmd = cmd.lower()
        if cmd in ("/quit", "/exit", "/q"):
            return Reply("quit")
        if cmd in ("/help", "/?"):
            return Reply("help", HELP)
        if cmd == "/correct":
            return self.correct(arg)
        if cmd == "/undo":
            return self.undo()
        if cmd == "/edits":
            edits = self.context.editor.edits("active")
            return Reply("edits", f"{len(edits)} active edit(s)", data={"edits": [e.to_dict() for e in edits]})
        return Reply("error", f"unknown command {cmd}: try /help")

    def _edited(self, uif: SAM_UIF) -> Reply:
        if not uif.ok:
            return Reply("error", uif.errors[0], uif)
        edit_id = uif.get("edit_id")
        self.session_edits.append(edit_id)
        v = uif.get("verification") or {}
        if self.last is not None and uif.get("edit_prompt") == self.last.prompt:
            self.history.append(Turn(self.last.question, self.last.prompt, v.get("answer_after", "")))
        return Reply("edit", f"edit #{edit_id}: {v.get('verdict', '?')} (confidence {uif.confidence_score:.2f})",
                     uif, {"edit_id": edit_id, "verification": v, "metrics": uif.get("edit_metrics")})
