"""SAM_UIF: the unified interchange format one request carries through every skill.

A single pydantic model, so that what a skill may read and write is typed and validated on
every assignment, and so that a whole request (plan, trace, timings, errors) can be written to
JSON and read back exactly, e.g. to replay or inspect a failed turn.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["pending", "running", "completed", "failed"]


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"<{type(value).__name__}{tuple(shape) if shape is not None else ''}>"


def _new_task_id() -> str:
    return uuid.uuid4().hex[:12]


class TraceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t: float = Field(default_factory=time.time, description="Unix time of the event.")
    skill: str | None = None
    event: str
    detail: str = ""


class SAM_UIF(BaseModel):  # noqa: N801 - the name of the design notes
    """One request: its input, the shared workspace the skills fill, and what happened."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task_id: str = Field(default_factory=_new_task_id)
    status: Status = "pending"
    goal: str | None = None
    input_query: str = ""
    session_id: str | None = None
    user_id: str | None = None

    # The shared workspace: skills read their inputs from here and write their outputs here.
    intermediate_data: dict[str, Any] = Field(default_factory=dict)
    skill_outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)

    final_response: str | None = None
    confidence_score: float = Field(1.0, ge=0.0, le=1.0)
    warnings: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    # The traceback of a skill that raised something other than a SamError (a bug, not a user error).
    tracebacks: list[str] = Field(default_factory=list)

    execution_plan: list[str] = Field(default_factory=list)
    # Goals a skill asks to run after the current plan (e.g. feedback -> "correct").
    pending_goals: list[str] = Field(default_factory=list)
    executed_skills: list[str] = Field(default_factory=list)
    skill_timings: dict[str, float] = Field(default_factory=dict)
    log_trace: list[TraceEntry] = Field(default_factory=list)

    # --- small helpers the skills and the orchestrator share -------------------------------
    def available_keys(self) -> set[str]:
        """Keys a skill may depend on: the workspace plus a non-empty input_query."""
        keys = {k for k, v in self.intermediate_data.items() if v is not None}
        if self.input_query.strip():
            keys.add("input_query")
        return keys

    def get(self, key: str, default: Any = None) -> Any:
        if key == "input_query":
            return self.input_query or default
        return self.intermediate_data.get(key, default)

    def put(self, skill: str, **values: Any) -> None:
        """Write outputs to the workspace and remember which skill produced them."""
        # Reassign (not mutate) so validate_assignment sees the change.
        self.intermediate_data = {**self.intermediate_data, **values}
        merged = {**self.skill_outputs.get(skill, {}), **values}
        self.skill_outputs = {**self.skill_outputs, skill: merged}

    def log(self, event: str, detail: str = "", skill: str | None = None) -> None:
        self.log_trace = [*self.log_trace, TraceEntry(skill=skill, event=event, detail=detail)]

    def fail(self, message: str, skill: str | None = None) -> None:
        self.errors = [*self.errors, f"{skill}: {message}" if skill else message]
        self.status = "failed"
        self.log("error", message, skill)

    def warn(self, message: str, skill: str | None = None) -> None:
        self.warnings = [*self.warnings, f"{skill}: {message}" if skill else message]
        self.log("warning", message, skill)

    @property
    def ok(self) -> bool:
        return self.status != "failed" and not self.errors

    def to_json(self, **kwargs: Any) -> str:
        """The request as JSON. Workspace values that are not data (a trained edit's tensors) are written
        as a short description, so a correction's UIF can still be saved and inspected."""
        return self.model_dump_json(fallback=_describe, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "SAM_UIF":
        return cls.model_validate_json(text)
