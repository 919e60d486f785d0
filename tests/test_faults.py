"""Fault injection (issue 11) through real `sam` processes on real store folders.

sam/verify/faults.py holds the table and says what each case does and checks: kill -9 at every write
step (failpoints), damaged store files, bad settings, bad input. The default suite runs the cases that
need no model (a representative set, about a minute on 2 cores); `pytest -m slow` runs all the others,
the real model's included (kill -9 during `sam correct` and `sam edits revert`, repair, long and non-Latin
input). `python scripts/fault_injection.py` runs the whole table and prints the summary.

The cases of a test function run once per module, two at a time (each is mostly one-thread
subprocesses), limited to the ones pytest selected; each parametrised test then reports its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sam.core.failpoints import failpoint
from sam.verify import faults

CASES = faults.all_cases()
DEFAULT = [c.id for c in CASES if faults.tier(c) == "default"]
SLOW = [c.id for c in CASES if faults.tier(c) != "default"]
REPO = Path(__file__).resolve().parents[1]


def _run_selected(request, tmp_path_factory, test_name: str) -> dict:
    wanted = {item.callspec.params["case_id"] for item in request.session.items
              if getattr(item, "originalname", None) == test_name and hasattr(item, "callspec")}
    cases = [c for c in CASES if c.id in wanted]
    env = faults.Env(tmp_path_factory.mktemp("faults"))
    return {o.id: o for o in faults.run_cases(cases, env, jobs=2)}


@pytest.fixture(scope="module")
def default_outcomes(request, tmp_path_factory):
    return _run_selected(request, tmp_path_factory, "test_fault")


@pytest.fixture(scope="module")
def slow_outcomes(request, tmp_path_factory):
    return _run_selected(request, tmp_path_factory, "test_fault_slow")


def _check(outcome: faults.Outcome) -> None:
    assert not outcome.data_lost, f"DATA LOST: {outcome.detail}"
    assert outcome.ok, outcome.detail
    if outcome.expect in ("refuse", "usage"):
        assert outcome.refused_cleanly, outcome.detail


@pytest.mark.parametrize("case_id", DEFAULT)
def test_fault(default_outcomes, case_id):
    _check(default_outcomes[case_id])


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SLOW)
def test_fault_slow(slow_outcomes, case_id):
    _check(slow_outcomes[case_id])


# --- the harness itself (no store, no model) ------------------------------------------------------------
def test_a_failpoint_kills_only_when_named(monkeypatch):
    monkeypatch.delenv("SAM_FAILPOINT", raising=False)
    failpoint("db.commit.before")  # not named: nothing happens
    code = ("from sam.core.failpoints import failpoint; failpoint('a'); print('after a', flush=True); "
            "failpoint('b'); print('after b', flush=True)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"SAM_FAILPOINT": "b", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == -9 and proc.stdout == "after a\n"


def test_every_failpoint_is_in_the_kill_table():
    """A failpoint added to the code without a case (or a case naming one that is gone) fails here."""
    in_code = set()
    for path in (REPO / "sam").rglob("*.py"):
        in_code |= set(re.findall(r'failpoint\("([\w.]+)"\)', path.read_text()))
    in_table = {c.id.split("@", 1)[1] for c in CASES if c.group == "kill"}
    assert in_code and in_code == in_table, (sorted(in_code - in_table), sorted(in_table - in_code))
    documented = set(re.findall(r"\b(?:db|editor|store|atomic|export|bench)\.[a-z_]+(?:\.[a-z_]+)?\b",
                                (REPO / "sam" / "core" / "failpoints.py").read_text()))
    assert in_code <= documented, sorted(in_code - documented)


def test_the_table_is_wide_enough():
    groups = {g: [c for c in CASES if c.group == g] for g in ("kill", "corrupt", "setting", "input")}
    assert len(groups["input"]) >= 100 and len(groups["setting"]) >= 30 and len(groups["kill"]) >= 20
    assert len({c.id for c in CASES}) == len(CASES)  # ids are unique (tests are parametrised on them)
    assert set(DEFAULT) <= {c.id for c in CASES} and all(not c.slow for c in CASES if c.id in DEFAULT)


def test_summary_counts():
    out = [faults.Outcome("input", "a", "refuse", ok=True, refused_cleanly=True),
           faults.Outcome("input", "b", "work", ok=False, detail="boom"),
           faults.Outcome("kill", "c", "recover", ok=True, data_lost=True)]
    s = faults.summary(out)
    assert (s["cases"], s["passed"], s["expected_refusals"], s["refused_cleanly"], s["data_lost"]) == (3, 1, 1, 1, 1)
    assert [f["case"] for f in s["failed"]] == ["b", "c"] and s["groups"]["kill"]["data_lost"] == 1
