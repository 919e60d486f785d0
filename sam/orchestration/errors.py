"""Orchestration errors; all are SamError, so the CLI prints them as one line."""

from sam.errors import SamError


class SkillError(SamError):
    """Base class of the orchestration errors."""


class UnknownSkillError(SkillError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown skill"


class DuplicateSkillError(SkillError):
    """Two skills claim the same name."""


class InvalidSkillError(SkillError):
    """An object registered as a skill that does not satisfy the BaseSkill contract."""


class MissingSkillError(SkillError):
    """A built-in skill could not be found (a broken install, or another `skills` package shadowing it)."""


class PlanningError(SkillError):
    """No plan reaches the goal: unknown goal, unsatisfiable input or a dependency cycle."""
