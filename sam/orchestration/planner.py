"""DynamicPlanner: from a goal to an ordered list of skills, using only their declarations.

Backward chaining: the goal names the keys it needs; for each key not yet in the workspace a
skill that outputs it is chosen, and its own required inputs become needs in turn. The chosen
skills are then ordered topologically on "B reads what A writes". A key nobody produces, or a
chain of skills that needs its own output, is reported with the path that led there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from sam.orchestration.errors import PlanningError
from sam.orchestration.plan_memory import PlanMemory
from sam.orchestration.registry import SkillRegistry
from sam.orchestration.skill import BaseSkill

# What each named goal must leave in the workspace. A goal may also be any single output key.
GOALS: dict[str, tuple[str, ...]] = {
    "answer": ("answer",),
    "correct": ("edit_id", "verification"),
    "feedback": ("feedback_kind",),
    "self_correct": ("corrections_report",),
    "undo": ("reverted",),
}


@dataclass(frozen=True)
class Plan:
    goal: str
    steps: tuple[str, ...]
    source: str = "built"  # built | cache | memory
    needs: tuple[str, ...] = field(default=(), compare=False)


class DynamicPlanner:
    def __init__(self, registry: SkillRegistry, memory: PlanMemory | None = None,
                 goals: dict[str, tuple[str, ...]] | None = None) -> None:
        self.registry = registry
        self.memory = memory
        self.goals = dict(GOALS if goals is None else goals)
        self._cache: dict[tuple, Plan] = {}

    def goal_keys(self, goal: str) -> tuple[str, ...]:
        if goal in self.goals:
            return self.goals[goal]
        if any(goal in s.output_keys for s in self.registry.skills()):
            return (goal,)
        raise PlanningError(f"unknown goal '{goal}' (known: {', '.join(sorted(self.goals))}, or any skill output)")

    def plan(self, goal: str, available: Iterable[str] = ()) -> Plan:
        needs = self.goal_keys(goal)
        available = frozenset(available)
        key = (goal, self.registry.signature(), available)
        if key in self._cache:
            cached = self._cache[key]
            return Plan(goal, cached.steps, "cache", needs)
        plan = self._from_memory(goal, needs, available) or Plan(goal, self._build(needs, available), "built", needs)
        self._cache[key] = plan
        return plan

    # --- plan memory ------------------------------------------------------------------------
    def _from_memory(self, goal: str, needs: tuple[str, ...], available: frozenset) -> Plan | None:
        if self.memory is None:
            return None
        steps = self.memory.lookup(goal)
        if steps and self.check(steps, needs, available) is None:
            return Plan(goal, tuple(steps), "memory", needs)
        return None

    def check(self, steps: Iterable[str], needs: Iterable[str], available: Iterable[str]) -> str | None:
        """Why a given step list cannot run from `available` to `needs`, or None when it can."""
        have = set(available)
        for name in steps:
            if name not in self.registry:
                return f"skill '{name}' is not registered"
            skill = self.registry.get(name)
            missing = [k for k in skill.required_inputs if k not in have]
            if missing:
                return f"skill '{name}' would lack {missing}"
            have.update(skill.output_keys)
        missing = [k for k in needs if k not in have]
        return f"the plan does not produce {missing}" if missing else None

    # --- building ---------------------------------------------------------------------------
    def _build(self, needs: tuple[str, ...], available: frozenset) -> tuple[str, ...]:
        producers: dict[str, list[BaseSkill]] = {}
        for skill in self.registry.skills():
            for out in skill.output_keys:
                producers.setdefault(out, []).append(skill)

        chosen: dict[str, BaseSkill] = {}  # insertion order = discovery order, for stable plans

        def resolve(key: str, path: tuple[str, ...]) -> None:
            if key in available:
                return
            if key in path:
                cycle = " -> ".join((*path[path.index(key):], key))
                raise PlanningError(f"dependency cycle: {cycle}")
            if any(key in s.output_keys for s in chosen.values()):
                return
            candidates = producers.get(key, [])
            if not candidates:
                via = f" (needed by {' <- '.join(reversed(path))})" if path else ""
                raise PlanningError(f"no skill produces '{key}'{via}; have: {', '.join(sorted(available)) or 'nothing'}")
            errors = []
            # Prefer the producer whose inputs are closest to what we already have.
            for skill in sorted(candidates, key=lambda s: (len(set(s.required_inputs) - available), s.name)):
                snapshot = dict(chosen)
                try:
                    chosen[skill.name] = skill
                    for need in skill.required_inputs:
                        resolve(need, (*path, key))
                    return
                except PlanningError as exc:
                    chosen.clear()
                    chosen.update(snapshot)
                    errors.append(str(exc))
            raise PlanningError(errors[0] if len(errors) == 1 else "; ".join(errors))

        for need in needs:
            resolve(need, ())
        return self._toposort(list(chosen.values()))

    @staticmethod
    def _toposort(skills: list[BaseSkill]) -> tuple[str, ...]:
        names = [s.name for s in skills]
        writers: dict[str, set[str]] = {}
        for s in skills:
            for out in s.output_keys:
                writers.setdefault(out, set()).add(s.name)
        deps: dict[str, set[str]] = {s.name: set() for s in skills}
        for s in skills:
            # Optional inputs only order skills that are already in the plan; they add none.
            for key in (*s.required_inputs, *s.optional_inputs):
                deps[s.name] |= writers.get(key, set()) - {s.name}
        order: list[str] = []
        ready = [n for n in names if not deps[n]]
        while ready:
            n = ready.pop(0)
            order.append(n)
            for m in names:
                if n in deps[m]:
                    deps[m].discard(n)
                    if not deps[m] and m not in order and m not in ready:
                        ready.append(m)
        if len(order) != len(names):
            stuck = sorted(set(names) - set(order))
            raise PlanningError(f"dependency cycle among skills: {', '.join(stuck)}")
        return tuple(order)
