"""scripts/profile_edit.py's phase clock: it times the calls it wraps, names their phase, and puts every
callable back."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "profile_edit.py"


@pytest.fixture(scope="module")
def profile_edit():
    spec = importlib.util.spec_from_file_location("profile_edit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Work:
    def slow(self, s):
        time.sleep(s)
        return s

    def fast(self):
        return "done"


def test_the_clock_times_each_phase_and_restores_the_callables(profile_edit):
    syncs = []
    clock = profile_edit.PhaseClock(lambda: syncs.append(1))
    work, original = Work(), Work.slow
    names = iter(["first", "second", "second"])
    clock.wrap(work, "slow", lambda: next(names))
    clock.wrap(Work, "fast", "quick")
    assert work.slow(0.05) == 0.05 and work.slow(0.02) == 0.02 and work.slow(0.02) == 0.02
    assert work.fast() == "done"
    assert set(clock.seconds) == {"first", "second", "quick"}
    assert 0.05 <= clock.seconds["first"] < 0.5
    assert 0.04 <= clock.seconds["second"] < 0.5
    assert clock.seconds["quick"] < 0.01
    assert len(syncs) == 8  # before and after each of the four calls
    clock.remove()
    assert "slow" not in work.__dict__ and Work.fast is not None and Work.slow is original
    assert Work().fast() == "done" and set(clock.seconds) == {"first", "second", "quick"}


def test_a_call_that_raises_is_timed_and_raises(profile_edit):
    clock = profile_edit.PhaseClock(lambda: None)
    work = Work()
    clock.wrap(work, "slow", "broken")
    with pytest.raises(TypeError):
        work.slow()  # missing argument
    assert "broken" in clock.seconds
    clock.remove()
