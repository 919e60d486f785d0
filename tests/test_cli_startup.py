"""What `sam ask` does to start fast (README "Time to a first answer"), on the tiny random Llama.

The console script (main) owns its process: the garbage collector is paused while torch, transformers
and the model load, the survivors are frozen, and the collector runs again afterwards; a command that
only answers lets OpenMP's idle threads sleep unless the user chose otherwise. Run through CliRunner
(a test's process, torch already loaded) the command leaves both the collector and the environment
as they were.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from sam.cli import app

QUESTION = "What is the capital of France?"

# The console script's path with a report at exit: atexit runs it after main() returns or exits.
_WRAPPER = r"""
import atexit, gc, json, os, sys
def _report():
    with open(os.environ["SAM_STARTUP_REPORT"], "w") as f:
        json.dump({"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gc_enabled": gc.isenabled(),
                   "frozen": gc.get_freeze_count(), "torch": "torch" in sys.modules}, f)
atexit.register(_report)
sys.argv = ["sam", *sys.argv[1:]]
from sam.cli import main
main()
"""


def console(tmp_path, *args, env=None):
    report = tmp_path / "report.json"
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True, text=True, timeout=300,
                          env={**base, "OMP_NUM_THREADS": "1", "SAM_STARTUP_REPORT": str(report), **(env or {})})
    return proc, json.loads(report.read_text())


def test_the_console_script_answers_with_the_collector_back_on_and_passive_threads(tmp_path, tiny_llama_dir):
    missing = tmp_path / "no-store"
    proc, rep = console(tmp_path, "--model", str(tiny_llama_dir), "--store", str(missing), "--json", "ask", QUESTION)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["routed_edit"] is None and not missing.exists()
    assert rep == {"omp_wait_policy": "PASSIVE", "gc_enabled": True, "frozen": rep["frozen"], "torch": True}
    assert rep["frozen"] > 10_000  # what torch, transformers and the model left behind


def test_a_wait_policy_the_user_set_is_kept(tmp_path):
    proc, rep = console(tmp_path, "--model", str(tmp_path / "no-model"), "ask", QUESTION,
                        env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert proc.returncode == 1 and "no model at" in proc.stderr
    assert rep["omp_wait_policy"] == "ACTIVE" and rep["gc_enabled"]


def test_in_a_test_process_ask_leaves_the_collector_and_the_environment_alone(tmp_path, tiny_llama_dir,
                                                                              monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    frozen = gc.get_freeze_count()
    result = CliRunner().invoke(app, ["--model", str(tiny_llama_dir), "--store", str(tmp_path / "no-store"),
                                      "--json", "ask", QUESTION])
    assert result.exit_code == 0, result.output
    assert gc.isenabled() and gc.get_freeze_count() == frozen
    assert "OMP_WAIT_POLICY" not in os.environ  # torch was loaded already: setting it would change nothing
