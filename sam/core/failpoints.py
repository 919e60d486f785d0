"""Failpoints: named places in the write paths where a test can kill the process (kill -9).

    failpoint("db.commit.before")   # does nothing unless SAM_FAILPOINT=db.commit.before

With SAM_FAILPOINT set to a failpoint's name, the process sends itself SIGKILL the first time it
reaches that point: no exception, no `finally`, no atexit, exactly what a power cut or an OOM kill
leaves. tests/test_faults.py and scripts/fault_injection.py run real `sam` commands with it and
check that the store still opens, passes its checks and holds every earlier edit intact.

The names (grep `failpoint(` for the places):
    db.insert.before  db.insert.after  db.commit.before  db.commit.after
    db.status.before  db.status.after  db.meta.before
    editor.commit.before  editor.commit.supersede  editor.commit.after
    editor.revert.before  editor.revert.mid  editor.revert.after
    store.upgrade.backup  store.upgrade.mid  store.upgrade.after
    atomic.before_rename  export.partial  bench.chunk.after
"""

from __future__ import annotations

import os
import signal

ENV = "SAM_FAILPOINT"


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL when SAM_FAILPOINT names this point; otherwise nothing."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
