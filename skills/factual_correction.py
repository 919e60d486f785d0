"""FactualCorrectionSkill: check the model against a trusted fact source; list what it gets wrong.

Sources: JSONL (one {"prompt"|"question": ..., "answer"|"target": ...} per line), CSV with the same
headers, or a SQLite file (`table` with prompt/question and answer/target columns). Each wrong fact
is then corrected through the same "correct" path as `sam correct` (confidence floor,
verification, rollback): ChatSession.fix_facts drives it.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sam.core.prompts import contains_answer
from sam.errors import InvalidInputError
from sam.orchestration.skill import BaseSkill
from sam.orchestration.uif import SAM_UIF
from sam_skills.answer import MAX_NEW_TOKENS

PROMPT_KEYS, ANSWER_KEYS = ("prompt", "question"), ("answer", "target")
BATCH = 8


@dataclass(frozen=True)
class Fact:
    question: str
    answer: str


def _pick(row: dict, keys: tuple[str, ...], where: str) -> str:
    for k in keys:
        value = row.get(k)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    raise InvalidInputError(f"{where}: needs one of the text columns {', '.join(keys)}")


def load_facts(source: Path | str, table: str = "facts") -> list[Fact]:
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"fact source {path} does not exist")
    suffix = path.suffix.lower()
    rows: list = []
    try:
        if suffix in (".jsonl", ".ndjson"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise InvalidInputError(f"{path}:{n}: not JSON ({exc})") from None
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
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
        raise InvalidInputError(f"{path} is not UTF-8 text: {exc}") from None
    facts = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise InvalidInputError(f"{path} row {i}: want an object with question and answer")
        facts.append(Fact(_pick(r, PROMPT_KEYS, f"{path} row {i}"), _pick(r, ANSWER_KEYS, f"{path} row {i}")))
    if not facts:
        raise InvalidInputError(f"fact source {path} holds no facts")
    return facts


class FactualCorrectionSkill(BaseSkill):
    name = "factual_correction"
    description = "Ask the model every fact of a trusted source; report which answers are wrong."
    required_inputs = ("fact_source",)
    optional_inputs = ("fact_table", "fact_limit")
    output_keys = ("corrections_report",)

    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        facts = load_facts(uif.get("fact_source"), uif.get("fact_table") or "facts")
        if uif.get("fact_limit"):
            facts = facts[: int(uif.get("fact_limit"))]
        ed = self.context.editor
        prompts = [ed.render(f.question) for f in facts]
        before = []
        for i in range(0, len(prompts), BATCH):
            before += ed.generate_batch(prompts[i: i + BATCH], max_new_tokens=MAX_NEW_TOKENS)
        items = []
        for fact, answer in zip(facts, before):
            answer = ed.prompts.clean(answer)
            ok = contains_answer(answer, fact.answer)
            items.append({"question": fact.question, "expected": fact.answer, "before": answer,
                          "status": "correct" if ok else "wrong"})
        wrong = sum(it["status"] == "wrong" for it in items)
        uif.put(self.name, corrections_report={"checked": len(items), "wrong": wrong, "items": items})
        uif.final_response = f"checked {len(items)} facts, {wrong} wrong"
        return uif
