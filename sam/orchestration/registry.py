"""SkillRegistry: the skills a process may plan with, by name.

Built-in skills come from the top-level `skills/` package (every BaseSkill subclass defined in
one of its modules); third-party ones from the `sam.skills` entry-point group, so a package can
add a skill by declaring `[project.entry-points."sam.skills"] my_skill = "pkg.mod:MySkill"`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from importlib.metadata import entry_points
from typing import Iterable

from sam.orchestration.errors import DuplicateSkillError, InvalidSkillError, UnknownSkillError
from sam.orchestration.skill import BaseSkill, SkillContext

ENTRY_POINT_GROUP = "sam.skills"


class SkillRegistry:
    def __init__(self, context: SkillContext | None = None) -> None:
        self.context = context or SkillContext()
        self._skills: dict[str, BaseSkill] = {}
        self.load_errors: list[str] = []  # plug-ins that failed to load: reported, not fatal

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
    def discover_builtin(self, package: str = "skills") -> list[str]:
        pkg = importlib.import_module(package)
        added = []
        for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{package}."):
            module = importlib.import_module(info.name)
            for cls in _skill_classes(module):
                added.append(self.register(cls).name)
        return added

    def discover_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        added = []
        for ep in entry_points(group=group):
            try:
                obj = ep.load()
                added.append(self.register(obj).name)
            except DuplicateSkillError:
                raise
            except Exception as exc:  # a broken plug-in must not take the CLI down
                self.load_errors.append(f"entry point '{ep.name}' ({ep.value}): {exc}")
        return added

    @classmethod
    def default(cls, context: SkillContext | None = None) -> "SkillRegistry":
        reg = cls(context)
        reg.discover_builtin()
        reg.discover_entry_points()
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


def _skill_classes(module) -> Iterable[type[BaseSkill]]:
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if (issubclass(obj, BaseSkill) and obj.__module__ == module.__name__
                and not inspect.isabstract(obj) and obj.name):
            yield obj
