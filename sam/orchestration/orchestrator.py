"""Orchestrator: plan a goal, run the plan over a UIF, hold every skill to its declarations.

Nothing a skill does can take the process down: an exception becomes a failed UIF naming the
skill, and the remaining steps are skipped (a half-applied plan is reported, never hidden). An
exception that is not one of sam's own errors is a bug: its traceback is kept on the UIF and
logged (`sam --debug` prints it).
A skill may queue follow-up goals on `uif.pending_goals` (feedback -> "correct"); they are
planned against the workspace as it is then, which is what makes the planning dynamic.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import traceback

from sam.errors import SamError
from sam.orchestration.errors import PlanningError, UnknownSkillError
from sam.orchestration.plan_memory import PlanMemory
from sam.orchestration.planner import DynamicPlanner
from sam.orchestration.registry import SkillRegistry
from sam.orchestration.uif import SAM_UIF

log = logging.getLogger("sam.orchestration")
MAX_GOALS_PER_REQUEST = 4  # follow-up goals are few; a longer chain is a loop


class Orchestrator:
    def __init__(self, registry: SkillRegistry, planner: DynamicPlanner | None = None,
                 memory: PlanMemory | None = None) -> None:
        self.registry = registry
        self.memory = memory if memory is not None else (planner.memory if planner else None)
        self.planner = planner or DynamicPlanner(registry, memory=self.memory)

    def run(self, uif: SAM_UIF, goal: str) -> SAM_UIF:
        uif.goal = goal
        uif.status = "running"
        goals = [goal]
        done = 0
        while goals:
            if done >= MAX_GOALS_PER_REQUEST:
                uif.fail(f"more than {MAX_GOALS_PER_REQUEST} goals chained in one request: {goals}")
                break
            current = goals.pop(0)
            done += 1
            if not self._run_goal(uif, current):
                break
            goals.extend(uif.pending_goals)
            uif.pending_goals = []
        if uif.status != "failed":
            uif.status = "completed"
        return uif

    def run_steps(self, uif: SAM_UIF, steps: list[str], goal: str = "custom") -> SAM_UIF:
        """Run an explicit list of skill names (checked like a plan) instead of planning."""
        uif.goal = goal
        uif.status = "running"
        for name in steps:
            if name not in self.registry:
                uif.fail(str(UnknownSkillError(f"unknown skill '{name}' (registered: {', '.join(self.registry.names())})")))
                return uif
        uif.execution_plan = [*uif.execution_plan, *steps]
        if self._execute(uif, list(steps)) and uif.status != "failed":
            uif.status = "completed"
        return uif

    # ---------------------------------------------------------------------------------------
    def _run_goal(self, uif: SAM_UIF, goal: str) -> bool:
        try:
            plan = self.planner.plan(goal, uif.available_keys())
        except PlanningError as exc:
            uif.fail(f"cannot plan '{goal}': {exc}")
            return False
        uif.execution_plan = [*uif.execution_plan, *plan.steps]
        uif.log("plan", f"{goal}: {' -> '.join(plan.steps)} ({plan.source})")
        ok = self._execute(uif, list(plan.steps))
        if ok and self.memory is not None:
            self.memory.record(goal, list(plan.steps))
        return ok

    def _execute(self, uif: SAM_UIF, steps: list[str]) -> bool:
        for name in steps:
            skill = self.registry.get(name)
            missing = skill.missing_inputs(uif)
            if missing:
                uif.fail(f"missing required input{'s' if len(missing) > 1 else ''}: {', '.join(missing)}", name)
                return False
            uif.log("start", skill=name)
            t0 = time.perf_counter()
            try:
                result = skill.execute(uif)
            except Exception as exc:  # noqa: BLE001 - any skill failure becomes a failed UIF
                self._time(uif, name, t0)
                # sam's own errors are written for users; anything else is a bug: name its type, keep the traceback.
                if isinstance(exc, SamError):
                    uif.fail(str(exc), name)
                elif isinstance(exc, sqlite3.DatabaseError):  # a damaged store, not a bug of the skill
                    uif.fail(f"the store's database is damaged ({exc}): `sam doctor --check` reports; restore "
                             f"edits.sqlite from a backup", name)
                else:
                    tb = traceback.format_exc()
                    log.error("skill %s raised %s", name, type(exc).__name__, exc_info=exc)
                    uif.tracebacks = [*uif.tracebacks, tb]
                    uif.fail(f"{type(exc).__name__}: {exc} (a bug in skill '{name}'; --debug shows the traceback)", name)
                return False
            if isinstance(result, SAM_UIF) and result is not uif:
                # A skill may return a new UIF; carry on with it, keeping the trace in one place.
                uif.__dict__.update(result.__dict__)
            self._time(uif, name, t0)
            if uif.status == "failed":
                return False
            missing_out = skill.missing_outputs(uif)
            if missing_out:
                uif.fail(f"did not produce declared output{'s' if len(missing_out) > 1 else ''}: "
                         f"{', '.join(missing_out)}", name)
                return False
            uif.log("done", f"{uif.skill_timings[name]:.3f}s", name)
        return True

    @staticmethod
    def _time(uif: SAM_UIF, name: str, t0: float) -> None:
        elapsed = time.perf_counter() - t0
        uif.skill_timings = {**uif.skill_timings, name: uif.skill_timings.get(name, 0.0) + elapsed}
        uif.executed_skills = [*uif.executed_skills, name]
