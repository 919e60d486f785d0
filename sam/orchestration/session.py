"""ChatSession: one conversation over the skills — what `sam chat`, `sam correct` and phase C drive.

A line is a slash command, a reply to the last answer (a correction, a preference, thanks ...)
or a new question. Questions are asked with the conversation so far (earlier turns and the system
prompt, within the model's context). Replies go through the feedback goal first; only when the
FeedbackHandler reads a factual correction (or "remember: X is Y") does the orchestrator chain on
to the "correct" goal, which trains, verifies and then writes the edit (or rolls it back).
Anything else leaves the model untouched. `fix_facts` and `import_edits` send every fact through
the same "correct" goal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sam.constants import PLANS_FILE
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
  /system TEXT      set the system prompt of this conversation (/system alone: the model's default)
  /new              start a new conversation (forget the earlier turns)
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
    answer: str


class ChatSession:
    def __init__(self, context: SkillContext, registry: SkillRegistry | None = None,
                 orchestrator: Orchestrator | None = None, session_id: str | None = None) -> None:
        self.context = context
        self.registry = registry or SkillRegistry.default(context)
        memory = PlanMemory(context.store_dir / PLANS_FILE) if context.store_dir else PlanMemory()
        self.orchestrator = orchestrator or Orchestrator(self.registry, memory=memory)
        self.session_id = session_id or uuid.uuid4().hex[:8]
        self.history: list[Turn] = []
        self.session_edits: list[int] = []

    @property
    def last(self) -> Turn | None:
        return self.history[-1] if self.history else None

    def _uif(self, query: str = "", **data: Any) -> SAM_UIF:
        return SAM_UIF(input_query=query, session_id=self.session_id, intermediate_data=data)

    def _earlier(self) -> list[list[str]]:
        return [[t.question, t.answer] for t in self.history]

    # --- what a user can do ---------------------------------------------------------------------
    def ask(self, question: str) -> Reply:
        if not question.strip():
            return Reply("error", "empty question: type something to ask")
        uif = self.orchestrator.run(self._uif(question, history=self._earlier()), "answer")
        if not uif.ok:
            return Reply("error", uif.errors[0], uif)
        answer = uif.get("answer")
        self.history.append(Turn(question, answer))
        return Reply("answer", answer, uif, {"routed_edit": uif.get("routed_edit")})

    def correct(self, answer: str, question: str | None = None, paraphrases: list[str] | None = None,
                source: str = "user", importance: float = 1.0) -> Reply:
        """Edit the model so `question` (default: the last one asked) is answered with `answer`."""
        history: list[list[str]] = []
        if question is None:
            if self.last is None:
                return Reply("error", "nothing to correct yet: ask a question first")
            question, history = self.last.question, self._earlier()[:-1]
        if not answer.strip():
            return Reply("error", "usage: /correct ANSWER")
        same = self._already_present(question, answer)
        if same is not None:
            return same
        uif = self._uif(question, question=question, edit_question=question, correct_answer=answer.strip(),
                        edit_source=source, importance=importance, confidence_score=1.0, edit_history=history or None,
                        paraphrase_questions=list(paraphrases) if paraphrases else None)
        return self._edited(self.orchestrator.run(uif, "correct"))

    def _already_present(self, question: str, answer: str) -> Reply | None:
        """The same correction again (a retry after a crash, a repeated command): the active edit of the
        question already teaches this answer, so nothing is trained or written (`MemoirEditor.edit` does
        the same). A different answer supersedes it."""
        from sam.core.prompts import normalize
        from sam.errors import SamError

        try:
            ed = self.context.editor
            old = ed.existing(ed.render(question))
        except SamError as exc:  # as the "correct" goal would report it
            return Reply("error", str(exc))
        if old is None or normalize(old.target) != normalize(answer):
            return None
        return Reply("edit", f"edit #{old.id} already answers '{old.target}': nothing to do (revert it to "
                     f"train it again)", data={"edit_id": old.id, "already_present": True,
                                              "verification": {"verdict": "already present"}})

    def feedback(self, text: str) -> Reply:
        last = self.last
        data: dict[str, Any] = {"feedback": text}
        if last is not None:
            data.update(previous_answer=last.answer, question=last.question, history=self._earlier()[:-1] or None)
        uif = self.orchestrator.run(self._uif(last.question if last else "", **data), "feedback")
        if "pending_edit" in uif.intermediate_data:
            return self._edited(uif)
        if not uif.ok:
            return Reply("error", uif.errors[0], uif)
        return Reply("feedback", uif.get("feedback_summary"), uif, {"feedback_kind": uif.get("feedback_kind")})

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
        return self.revert(edit_id, note)

    def revert(self, edit_id: int, note: str = "") -> Reply:
        uif = self.orchestrator.run(self._uif(revert_id=edit_id), "undo")
        if not uif.ok:
            return Reply("error", uif.errors[0], uif)
        if edit_id in self.session_edits:
            self.session_edits.remove(edit_id)
        info = uif.get("reverted")
        back = f"; edit #{info['restored']} is back" if info.get("restored") else ""
        return Reply("undo", f"reverted edit #{edit_id}{note}{back}: '{info['question']}' now answers "
                     f"'{info['answer_now']}'", uif, info)

    def fix_facts(self, source: Path | str, dry_run: bool = False, table: str = "facts", limit: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
        """Ask every fact; correct each wrong one through the "correct" goal. Returns the report."""
        uif = self.orchestrator.run(self._uif(fact_source=str(source), fact_table=table, fact_limit=limit),
                                    "self_correct")
        if not uif.ok:
            raise_error(uif)
        report = uif.get("corrections_report")
        wrong = [it for it in report["items"] if it["status"] == "wrong"]
        for n, it in enumerate(wrong, 1):
            if dry_run:
                it["status"] = "would edit"
                continue
            reply = self.correct(it["expected"], question=it["question"], source="fact_source")
            it["status"] = ("fixed" if reply.data.get("verification", {}).get("recalled") else "edited, still wrong") \
                if reply.ok and not reply.data.get("already_present") else f"not edited: {reply.text}"
            it["after"] = reply.data.get("verification", {}).get("answer_after", "")
            if reply.ok and not reply.data.get("already_present"):
                it["edit_id"] = reply.data["edit_id"]
            if progress:
                progress(n, len(wrong))
        report.update(dry_run=dry_run, edited=sum("edit_id" in it for it in report["items"]),
                      fixed=sum(it["status"] == "fixed" for it in report["items"]))
        return report

    def import_edits(self, edits: list, dry_run: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """Replay exported edits (active ones) through the "correct" goal; ones already present are skipped."""
        have = {(r.question, r.target) for r in self.context.editor.edits("active")}
        todo = [e for e in edits if e.status == "active"]
        results = []
        for n, e in enumerate(todo, 1):
            row = {"from_id": e.id, "question": e.question, "target": e.target}
            if (e.question, e.target) in have:
                row["status"] = "already present"
            elif dry_run:
                row["status"] = "would import"
            else:
                reply = self.correct(e.target, question=e.question, source=e.source, importance=e.importance)
                if reply.ok:
                    have.add((e.question, e.target))
                    row.update(status="imported", edit_id=reply.data["edit_id"],
                               verdict=reply.data["verification"]["verdict"])
                else:
                    row["status"] = f"not imported: {reply.text}"
            results.append(row)
            if progress:
                progress(n, len(todo))
        return results

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
        if cmd == "/system":
            self.context.system_prompt = arg.strip() or None
            return Reply("help", f"system prompt: {self.context.system_prompt or '(the model default)'}")
        if cmd == "/new":
            self.history = []
            return Reply("help", "new conversation")
        if cmd == "/edits":
            edits = self.context.editor.edits("active")
            return Reply("edits", f"{len(edits)} active edit(s)", data={"edits": [e.to_dict() for e in edits]})
        return Reply("error", f"unknown command {cmd}: try /help")

    def _edited(self, uif: SAM_UIF) -> Reply:
        if not uif.ok:
            return Reply("error", uif.errors[0], uif, {"verification": uif.get("verification") or {}})
        edit_id = uif.get("edit_id")
        self.session_edits.append(edit_id)
        v = uif.get("verification") or {}
        if self.last is not None and uif.get("edit_question") == self.last.question:
            self.history[-1] = Turn(self.last.question, v.get("answer_after", ""))
        return Reply("edit", f"edit #{edit_id}: {v.get('verdict', '?')} (confidence {uif.confidence_score:.2f})",
                     uif, {"edit_id": edit_id, "verification": v, "metrics": uif.get("edit_metrics")})


def raise_error(uif: SAM_UIF) -> None:
    from sam.errors import SamError

    raise SamError(uif.errors[0] if uif.errors else "the request failed")
