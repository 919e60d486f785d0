"""FactualCorrectionSkill: check the model against a trusted fact source and edit what it gets wrong.

Sources: JSONL (one {"prompt"|"question": ..., "answer"|"target": ...} per line), CSV with the same
headers, or a SQLite file (`table` with prompt/question and answer/target columns). Prompts are
questions: they go through the session's prompt format like a chat turn would, so a fixed fact
also answers in chat.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sam.errors import InvalidInputError
from sam.orchestration.prompting import contains_answer
from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF
from skills.answer import MAX_NEW_TOKENS

PROMPT_KEYS, ANSWER_KEYS = ("prompt", "question"), ("answer", "target")
BATCH = 8


@dataclass(frozen=True)
class Fact:
    prompt: str
    answer: str


def _pick(row: dict, keys: tuple[str, ...], where: str) -> str:
    for k in keys:
        if row.get(k) not in (None, ""):
            return str(row[k]).strip()
    raise InvalidInputError(f"{where}: needs one of the columns {', '.join(keys)}")


def load_facts(source: Path | str, table: str = "facts") -> list[Fact]:
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"fact source {path} does not exist")
    suffix = path.suffix.lower()
    rows: list[dict] = []
    try:
        if suffix in (".jsonl", ".ndjson"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise InvalidInputError(f"{path}:{n}: not JSON ({exc})") from None
        elif suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        elif suffix in (".db", ".sqlite", ".sqlite3"):
            if not table.isidentifier():
                raise InvalidInputError(f"bad table name '{table}'")
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                con.row_factory = sqlite3.Row
                rows = [dict(r) for r in con.execute(f"SELECT * FROM {table}")]  # noqa: S608 - identifier checked
            except sqlite3.Error as exc:
                raise InvalidInputError(f"{path}: cannot read table '{table}' ({exc})") from None
            finally:
                con.close()
        else:
            raise InvalidInputError(f"fact source {path}: use .jsonl, .csv or .sqlite/.db")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path} is not text: {exc}") from None
    facts = [Fact(_pick(r, PROMPT_KEYS, f"{path} row {i}"), _pick(r, ANSWER_KEYS, f"{path} row {i}"))
             for i, r in enumerate(rows, 1) if isinstance(r, dict)]
    if not facts:
        raise InvalidInputError(f"fact source {path} holds no facts")
    return facts


class FactualCorrectionSkill(BaseSkill):
    name = "factual_correction"
    description = "Ask the model every fact of a trusted source, edit the wrong answers, report what changed."
    required_inputs = ("fact_source",)
    optional_inputs = ("dry_run", "fact_table", "fact_limit")
    output_keys = ("corrections_report",)

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        facts = load_facts(uif.get("fact_source"), uif.get("fact_table") or "facts")
        if uif.get("fact_limit"):
            facts = facts[: int(uif.get("fact_limit"))]
        dry_run = bool(uif.get("dry_run"))
        ed, pf = self.context.editor, self.context.prompt_format
        prompts = [pf.render(f.prompt) for f in facts]
        before = self._ask(ed, prompts)
        items = []
        for fact, prompt, answer in zip(facts, prompts, before):
            ok = contains_answer(answer, fact.answer)
            items.append({"prompt": fact.prompt, "expected": fact.answer, "before": answer,
                          "status": "correct" if ok else ("wrong" if dry_run else "pending")})
        wrong = [i for i, it in enumerate(items) if it["status"] != "correct"]
        if not dry_run:
            for i in wrong:
                result = ed.edit(prompts[i], facts[i].answer, source="fact_source")
                items[i]["edit_id"] = result.edit_id
            if wrong:
                after = self._ask(ed, [prompts[i] for i in wrong])
                for i, answer in zip(wrong, after):
                    items[i]["after"] = answer
                    items[i]["status"] = "fixed" if contains_answer(answer, facts[i].answer) else "edited, still wrong"
        report = {"checked": len(items), "wrong": len(wrong), "dry_run": dry_run,
                  "edited": 0 if dry_run else len(wrong),
                  "fixed": sum(it["status"] == "fixed" for it in items), "items": items}
        uif.put(self.name, corrections_report=report)
        verb = "would edit" if dry_run else f"edited {report['edited']}, fixed {report['fixed']}"
        uif.final_response = f"checked {report['checked']} facts, {report['wrong']} wrong; {verb}"
        return uif

    def _ask(self, ed, prompts: list[str]) -> list[str]:
        out = []
        for i in range(0, len(prompts), BATCH):
            out += ed.generate_batch(prompts[i: i + BATCH], max_new_tokens=MAX_NEW_TOKENS)
        return [self.context.prompt_format.clean(o) for o in out]
