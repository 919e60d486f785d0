"""BaseSkill and the context every skill shares.

A skill declares what it reads (`required_inputs`, `optional_inputs`) and what it writes
(`output_keys`); the planner orders skills from those declarations alone, and the orchestrator
holds each skill to them before and after it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from sam.orchestration.uif import SAM_UIF


@dataclass
class SkillContext:
    """Resources the skills of one process share.

    The editor is opened lazily through `editor_factory`, so that a turn which never touches
    the model (feedback that is not a correction, a plan that cannot be built) costs nothing.
    """

    editor_factory: Callable[[], Any] | None = None
    store_dir: Path | None = None
    min_edit_confidence: float = 0.5
    control_questions: list[str] = field(default_factory=list)  # re-asked after each edit: must not change
    system_prompt: str | None = None  # the conversation's system prompt (None: the model's own default)
    keep_failed: bool = False  # write an edit even when verification says it did not take
    extra: dict[str, Any] = field(default_factory=dict)
    _editor: Any = None

    @property
    def editor(self) -> Any:
        if self._editor is None:
            if self.editor_factory is None:
                raise RuntimeError("no editor is configured for this session")
            self._editor = self.editor_factory()
        return self._editor

    @property
    def editor_open(self) -> bool:
        return self._editor is not None

    def close(self) -> None:
        if self._editor is not None:
            self._editor.close()
            self._editor = None


class BaseSkill(ABC):
    """One step of a plan. Subclasses set the class attributes and implement execute()."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    required_inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    output_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, context: SkillContext | None = None) -> None:
        self.context = context or SkillContext()

    def missing_inputs(self, uif: SAM_UIF) -> list[str]:
        have = uif.available_keys()
        return [k for k in self.required_inputs if k not in have]

    def missing_outputs(self, uif: SAM_UIF) -> list[str]:
        # An output may legitimately be None (no edit fired); it must still have been written.
        have = set(uif.intermediate_data) | ({"input_query"} if uif.input_query.strip() else set())
        return [k for k in self.output_keys if k not in have]

    @abstractmethod
    def execute(self, uif: SAM_UIF) -> SAM_UIF:
        """Read inputs from uif.intermediate_data, write outputs with uif.put(self.name, ...)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "required_inputs": list(self.required_inputs),
            "optional_inputs": list(self.optional_inputs),
            "output_keys": list(self.output_keys),
        }

    def __repr__(self) -> str:
        return f"<skill {self.name}>"
