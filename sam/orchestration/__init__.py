"""sam.orchestration: the UIF, skills, their registry, the planner and the orchestrator."""

from sam.orchestration.errors import (DuplicateSkillError, InvalidSkillError, MissingSkillError, PlanningError,
                                      SkillError, UnknownSkillError)
from sam.orchestration.orchestrator import Orchestrator
from sam.orchestration.plan_memory import PlanMemory
from sam.orchestration.planner import GOALS, DynamicPlanner, Plan
from sam.orchestration.registry import BUILTIN_SKILLS, ENTRY_POINT_GROUP, SkillRegistry
from sam.orchestration.skill import BaseSkill, SkillContext
from sam.orchestration.uif import SAM_UIF, TraceEntry

__all__ = [
    "SAM_UIF", "TraceEntry", "BaseSkill", "SkillContext", "SkillRegistry", "ENTRY_POINT_GROUP", "BUILTIN_SKILLS",
    "DynamicPlanner", "Plan", "GOALS", "Orchestrator", "PlanMemory", "SkillError", "UnknownSkillError",
    "DuplicateSkillError", "InvalidSkillError", "MissingSkillError", "PlanningError",
]
