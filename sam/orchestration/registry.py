"""SkillRegistry: the skills a process may plan with, by name.

Every skill, the built-in ones included, comes from the `sam.skills` entry-point group: sam's own
pyproject declares its built-ins there (`answer = "sam_skills.answer:AnswerSkill"`, ...), and a
third-party package adds one the same way. Entry points name an installed module, so what is
registered does not depend on the working directory; a built-in that cannot be loaded is an error,
not a silently smaller skill set.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

from sam.orchestration.errors import DuplicateSkillError, InvalidSkillError, MissingSkillError, UnknownSkillError
from sam.orchestration.skill import BaseSkill, SkillContext

ENTRY_POINT_GROUP = "sam.skills"
BUILTIN_SKILLS = ("format_prompt", "answer", "memoir_edit", "verify_edit", "revert_edit", "feedback_handler",
                  "factual_correction")
BUILTIN_MODULE = "sam_skills."


class SkillRegistry:
    def __init__(self, context: SkillContext | None = None) -> None:
        self.context = context or SkillContext()
        self._skills: dict[str, BaseSkill] = {}
        self.load_errors: list[str] = []  # third-party plug-ins that failed to load: reported, not fatal

    # --- registration ----------------------------------------------------------------------
    def register(self, skill: type[BaseSkill] | BaseSkill, *, replace: bool = False) -> BaseSkill:
        """Register a skill class (instantiated with this registry's context) or an instance."""
        if inspect.isclass(skill):
            if not issubclass(skill, BaseSkill) or inspect.isabstract(skill):
                raise InvalidSkillError(f"{skill!r} is not a concrete BaseSkill subclass")
            instance = skill(self.context)
        elif isinstance(skill, BaseSkill):
            instance = skill
        else:
            raise InvalidSkillError(f"{skill!r} is neither a BaseSkill subclass nor an instance")
        name = instance.name
        if not name or not isinstance(name, str):
            raise InvalidSkillError(f"{type(instance).__name__} has no name")
        overlap = set(instance.required_inputs) & set(instance.output_keys)
        if overlap:
            raise InvalidSkillError(f"skill '{name}' both needs and produces {sorted(overlap)}")
        if name in self._skills and not replace:
            raise DuplicateSkillError(f"a skill named '{name}' is already registered "
                                      f"({type(self._skills[name]).__module__})")
        self._skills[name] = instance
        return instance

    def unregister(self, name: str) -> None:
        if name not in self._skills:
            raise UnknownSkillError(f"unknown skill '{name}'")
        del self._skills[name]

    # --- discovery -------------------------------------------------------------------------
    def discover(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register every skill of the entry-point group; a built-in that fails to load raises."""
        added = []
        for ep in entry_points(group=group):
            builtin = ep.value.startswith(BUILTIN_MODULE)
            try:
                added.append(self.register(ep.load()).name)
            except DuplicateSkillError:
                raise
            except Exception as exc:
                if builtin:
                    raise MissingSkillError(f"built-in skill '{ep.name}' ({ep.value}) cannot be loaded: {exc}") from exc
                self.load_errors.append(f"entry point '{ep.name}' ({ep.value}): {exc}")  # a broken plug-in
        return added

    def require_builtins(self) -> None:
        missing = [n for n in BUILTIN_SKILLS if n not in self._skills]
        if missing:
            raise MissingSkillError(f"built-in skill{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                    f"not registered: sam is not installed properly (pip install -e . or setup.sh)")

    @classmethod
    def default(cls, context: SkillContext | None = None) -> "SkillRegistry":
        reg = cls(context)
        reg.discover()
        reg.require_builtins()
        return reg

    # --- lookup ----------------------------------------------------------------------------
    def get(self, name: str) -> BaseSkill:
        try:
            return self._skills[name]
        except KeyError:
            known = ", ".join(sorted(self._skills)) or "none"
            raise UnknownSkillError(f"unknown skill '{name}' (registered: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._skills)

    def skills(self) -> list[BaseSkill]:
        return [self._skills[n] for n in self.names()]

    def signature(self) -> tuple:
        """Identifies the skill set and its declarations: the planner's cache key part."""
        return tuple((s.name, tuple(s.required_inputs), tuple(s.output_keys)) for s in self.skills())

    def __contains__(self, name: object) -> bool:
        return name in self._skills

    def __len__(self) -> int:
        return len(self._skills)
