"""UIF, registry, planner and orchestrator with small in-test skills (no model)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from sam.errors import SamError
from sam.orchestration import (SAM_UIF, BaseSkill, DuplicateSkillError, DynamicPlanner, InvalidSkillError,
                               MissingSkillError, Orchestrator, PlanMemory, PlanningError, SkillRegistry,
                               UnknownSkillError)


def make_skill(name, needs=(), gives=(), optional=(), action=None):
    def execute(self, uif):
        if action:
            action(self, uif)
        else:
            uif.put(self.name, **{k: f"{self.name}:{k}" for k in gives})
        return uif

    return type(f"Skill_{name}", (BaseSkill,), {"name": name, "required_inputs": tuple(needs),
                                                 "output_keys": tuple(gives), "optional_inputs": tuple(optional),
                                                 "execute": execute})


def registry(*classes):
    reg = SkillRegistry()
    for c in classes:
        reg.register(c)
    return reg


# --- UIF ---------------------------------------------------------------------------------------
def test_uif_round_trips_through_json_losslessly():
    uif = SAM_UIF(input_query="q", session_id="s", user_id="u")
    uif.put("a", x=1, nested={"l": [1, 2.5, None, "t"]})
    uif.warn("careful", "a")
    uif.execution_plan = ["a", "b"]
    uif.skill_timings = {"a": 0.25}
    uif.log("plan", "a -> b")
    back = SAM_UIF.from_json(uif.to_json())
    assert back == uif
    assert back.skill_outputs["a"]["nested"] == {"l": [1, 2.5, None, "t"]}
    assert json.loads(uif.to_json())["log_trace"][-1]["detail"] == "a -> b"


def test_uif_forbids_extra_fields_and_validates_assignment():
    with pytest.raises(ValidationError):
        SAM_UIF(unknown_field=1)
    uif = SAM_UIF()
    with pytest.raises(ValidationError):
        uif.confidence_score = 1.5
    with pytest.raises(ValidationError):
        uif.status = "exploded"
    uif.confidence_score = 0.3
    assert uif.confidence_score == 0.3


# --- registry ----------------------------------------------------------------------------------
def test_registry_refuses_duplicates_and_non_skills():
    A = make_skill("a", gives=["x"])
    reg = registry(A)
    with pytest.raises(DuplicateSkillError):
        reg.register(make_skill("a", gives=["y"]))
    with pytest.raises(InvalidSkillError):
        reg.register(object)
    with pytest.raises(InvalidSkillError):
        reg.register(make_skill("loop", needs=["x"], gives=["x"]))
    with pytest.raises(UnknownSkillError, match="registered: a"):
        reg.get("nope")
    assert isinstance(UnknownSkillError("x"), SamError)


def test_registry_accepts_instances_and_discovers_builtin_skills():
    reg = SkillRegistry.default()
    for name in ("memoir_edit", "feedback_handler", "factual_correction", "verify_edit", "answer", "format_prompt"):
        assert name in reg
    inst = make_skill("extra", gives=["z"])()
    reg.register(inst)
    assert reg.get("extra") is inst


def test_registry_loads_entry_point_skills(monkeypatch):
    import sam.orchestration.registry as registry_mod

    Plugin = make_skill("plugin_skill", gives=["p"])

    class EP:
        name, value = "plugin_skill", "pkg:Plugin"

        def load(self):
            return Plugin

    class Broken(EP):
        name, value = "broken", "pkg:missing"

        def load(self):
            raise ImportError("no module named pkg")

    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [EP(), Broken()] if group == "sam.skills" else [])
    reg = SkillRegistry()
    assert reg.discover() == ["plugin_skill"]
    assert "plugin_skill" in reg and "broken" not in reg
    assert "no module named pkg" in reg.load_errors[0]


def test_a_builtin_that_cannot_load_is_an_error_not_a_smaller_registry(monkeypatch):
    import sam.orchestration.registry as registry_mod

    class Broken:
        name, value = "answer", "sam_skills.answer:Gone"

        def load(self):
            raise AttributeError("module 'sam_skills.answer' has no attribute 'Gone'")

    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [Broken()])
    with pytest.raises(MissingSkillError, match="built-in skill 'answer'"):
        SkillRegistry().discover()
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: [])
    with pytest.raises(MissingSkillError, match="not registered"):
        SkillRegistry.default()


def test_builtins_are_found_from_a_folder_holding_a_decoy_skills_package(tmp_path):
    """Started where another `skills` package is importable first, sam still registers every built-in."""
    import subprocess
    import sys

    decoy = tmp_path / "skills"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("DECOY = True\n")
    (decoy / "answer.py").write_text("raise ImportError('the decoy was imported')\n")
    code = ("import skills; assert skills.DECOY; "
            "from sam.orchestration.registry import SkillRegistry, BUILTIN_SKILLS; "
            "r = SkillRegistry.default(); assert all(n in r for n in BUILTIN_SKILLS), r.names(); print(len(r))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 7


# --- planner -----------------------------------------------------------------------------------
def test_planner_orders_skills_topologically_from_declarations():
    reg = registry(make_skill("c", needs=["y"], gives=["z"]), make_skill("a", needs=["q"], gives=["x"]),
                   make_skill("b", needs=["x"], gives=["y"]), make_skill("unused", gives=["w"]))
    plan = DynamicPlanner(reg, goals={"go": ("z",)}).plan("go", {"q"})
    assert plan.steps == ("a", "b", "c")
    assert plan.source == "built"


def test_planner_skips_producers_of_keys_already_available():
    reg = registry(make_skill("a", needs=["q"], gives=["x"]), make_skill("b", needs=["x"], gives=["y"]))
    assert DynamicPlanner(reg, goals={"go": ("y",)}).plan("go", {"x"}).steps == ("b",)


def test_planner_reports_unsatisfiable_inputs_with_the_path():
    reg = registry(make_skill("a", needs=["missing"], gives=["x"]), make_skill("b", needs=["x"], gives=["y"]))
    with pytest.raises(PlanningError, match="no skill produces 'missing'.*needed by"):
        DynamicPlanner(reg, goals={"go": ("y",)}).plan("go", set())


def test_planner_reports_cycles():
    reg = registry(make_skill("a", needs=["y"], gives=["x"]), make_skill("b", needs=["x"], gives=["y"]))
    with pytest.raises(PlanningError, match="cycle"):
        DynamicPlanner(reg, goals={"go": ("x",)}).plan("go", set())


def test_planner_unknown_goal_and_cache():
    reg = registry(make_skill("a", needs=["q"], gives=["x"]))
    planner = DynamicPlanner(reg, goals={"go": ("x",)})
    with pytest.raises(PlanningError, match="unknown goal 'nowhere'"):
        planner.plan("nowhere", set())
    assert planner.plan("go", {"q"}).source == "built"
    assert planner.plan("go", {"q"}).source == "cache"
    reg.register(make_skill("other", gives=["o"]))  # a new skill set is a new cache key
    assert planner.plan("go", {"q"}).source == "built"
    assert planner.plan("x", {"q"}).steps == ("a",)  # any output key is a goal


def test_planner_uses_optional_inputs_for_ordering_only():
    reg = registry(make_skill("late", needs=["q"], gives=["out"], optional=["hint"]),
                   make_skill("hinter", needs=["q"], gives=["hint"]))
    planner = DynamicPlanner(reg, goals={"go": ("out", "hint"), "only": ("out",)})
    assert planner.plan("go", {"q"}).steps == ("hinter", "late")
    assert planner.plan("only", {"q"}).steps == ("late",)


# --- orchestrator ------------------------------------------------------------------------------
def test_orchestrator_runs_a_plan_with_timings_and_trace():
    reg = registry(make_skill("a", needs=["input_query"], gives=["x"]), make_skill("b", needs=["x"], gives=["y"]))
    orch = Orchestrator(reg, DynamicPlanner(reg, goals={"go": ("y",)}))
    uif = orch.run(SAM_UIF(input_query="hello"), "go")
    assert uif.status == "completed" and uif.ok
    assert uif.executed_skills == ["a", "b"] and set(uif.skill_timings) == {"a", "b"}
    assert uif.intermediate_data["y"] == "b:y"
    assert [e.event for e in uif.log_trace] == ["plan", "start", "done", "start", "done"]


def test_orchestrator_turns_a_skill_exception_into_a_failed_uif():
    def boom(self, uif):
        raise RuntimeError("disk on fire")

    reg = registry(make_skill("a", gives=["x"], action=boom), make_skill("b", needs=["x"], gives=["y"]))
    uif = Orchestrator(reg, DynamicPlanner(reg, goals={"go": ("y",)})).run(SAM_UIF(), "go")
    assert uif.status == "failed"
    assert uif.errors[0].startswith("a: RuntimeError: disk on fire")
    assert "b" not in uif.executed_skills
    # a bug keeps its traceback (logged, and on the UIF for --debug); a SamError is a user's error: no traceback
    assert len(uif.tracebacks) == 1 and "disk on fire" in uif.tracebacks[0] and "in boom" in uif.tracebacks[0]


def test_a_sam_error_in_a_skill_is_one_line_without_traceback():
    def refuse(self, uif):
        raise SamError("the store is open read-only")

    reg = registry(make_skill("a", gives=["x"], action=refuse))
    uif = Orchestrator(reg, DynamicPlanner(reg, goals={"go": ("x",)})).run(SAM_UIF(), "go")
    assert uif.errors == ["a: the store is open read-only"] and uif.tracebacks == []


def test_missing_declared_output_is_an_error():
    reg = registry(make_skill("lazy", gives=["x", "y"], action=lambda self, uif: uif.put("lazy", x=1)))
    uif = Orchestrator(reg, DynamicPlanner(reg, goals={"go": ("x",)})).run(SAM_UIF(), "go")
    assert uif.status == "failed" and "did not produce declared output: y" in uif.errors[0]


def test_missing_required_input_stops_an_explicit_plan():
    reg = registry(make_skill("a", needs=["x"], gives=["y"]), make_skill("b", needs=["y"], gives=["z"]))
    orch = Orchestrator(reg)
    uif = orch.run_steps(SAM_UIF(), ["a", "b"])
    assert uif.status == "failed" and uif.errors == ["a: missing required input: x"]
    assert uif.executed_skills == []
    assert "unknown skill 'ghost'" in orch.run_steps(SAM_UIF(), ["ghost"]).errors[0]


def test_unplannable_goal_fails_the_uif_not_the_process():
    reg = registry(make_skill("a", needs=["input_query"], gives=["x"]))
    uif = Orchestrator(reg, DynamicPlanner(reg, goals={"go": ("x",)})).run(SAM_UIF(input_query="  "), "go")
    assert uif.status == "failed" and "cannot plan 'go'" in uif.errors[0]


def test_follow_up_goals_are_planned_on_the_updated_workspace():
    def ask_more(self, uif):
        uif.put(self.name, kind="correction", x="fact")
        uif.pending_goals = ["second"]

    reg = registry(make_skill("first", gives=["kind"], action=ask_more), make_skill("b", needs=["x"], gives=["y"]))
    orch = Orchestrator(reg, DynamicPlanner(reg, goals={"one": ("kind",), "second": ("y",)}))
    uif = orch.run(SAM_UIF(), "one")
    assert uif.ok and uif.execution_plan == ["first", "b"] and uif.intermediate_data["y"] == "b:y"


def test_plan_memory_records_success_and_is_reused(tmp_path):
    path = tmp_path / "plans.json"
    reg = registry(make_skill("a", needs=["q"], gives=["x"]), make_skill("alt", needs=["q"], gives=["x"]))
    orch = Orchestrator(reg, memory=PlanMemory(path))
    orch.planner.goals["go"] = ("x",)
    first = orch.run(SAM_UIF(intermediate_data={"q": 1}), "go")
    assert first.ok
    saved = json.loads(path.read_text())
    assert saved["go"]["steps"] == first.execution_plan and saved["go"]["successes"] == 1
    # Another process: the remembered plan is offered first.
    planner = DynamicPlanner(reg, memory=PlanMemory(path), goals={"go": ("x",)})
    assert planner.plan("go", {"q"}).source == "memory"
    # A remembered plan that no longer fits (skill gone) is not used.
    reg.unregister(first.execution_plan[0])
    planner = DynamicPlanner(reg, memory=PlanMemory(path), goals={"go": ("x",)})
    plan = planner.plan("go", {"q"})
    assert plan.source == "built" and plan.steps != tuple(first.execution_plan)


def test_plan_memory_survives_a_damaged_file(tmp_path):
    path = tmp_path / "plans.json"
    path.write_text("{not json")
    mem = PlanMemory(path)
    assert mem.lookup("answer") is None
    mem.record("answer", ["format_prompt", "answer"])
    assert PlanMemory(path).lookup("answer") == ["format_prompt", "answer"]


def test_builtin_goals_plan_from_declarations():
    planner = DynamicPlanner(SkillRegistry.default())
    assert planner.plan("answer", {"input_query"}).steps == ("format_prompt", "answer")
    assert planner.plan("correct", {"edit_question", "correct_answer"}).steps == ("memoir_edit", "verify_edit")
    assert planner.plan("feedback", {"feedback"}).steps == ("feedback_handler",)
    assert planner.plan("self_correct", {"fact_source"}).steps == ("factual_correction",)
    with pytest.raises(PlanningError):
        planner.plan("correct", {"edit_question"})  # nobody produces correct_answer from nothing
