"""Fault injection (issue 11): crashes, damaged files, bad settings and bad input, through real `sam` processes.

Every case runs the real command line (`python -m sam.cli`, one torch thread) on a real store folder
copied for it, and checks what a user would see and what is left on disk:

  kill     `sam correct / edits revert / edits export / upgrade / repair` killed with SIGKILL at a write
           step (sam/core/failpoints.py, SAM_FAILPOINT=<name>); then the store opens (reader and
           writer), passes its check, holds every earlier edit byte for byte, holds the new change
           either wholly or not at all (before COMMIT: not at all; after: wholly), and the next writer
           open removes the temp files the kill left. A `sam correct` re-run after a kill just after
           COMMIT adds no second edit.
  corrupt  a damaged store (database deleted / emptied / garbled header / garbled page, a delta that
           fails its checksum, the fingerprinter deleted or garbled, a lock left over or held, a
           tampered export file): readers and writers refuse with one line or work, the damaged file
           is never replaced or emptied, `sam doctor --check` reports, `sam repair` fixes what it can.
  setting  each bad MEMOIR_* value (or an unknown name): one line, exit 1, before any model loads,
           nothing written.
  input    bad input through every command (empty, NUL, invalid UTF-8, too long, bad ids, bad import
           and fact files, unknown commands and options, other scripts and control characters):
           refused with one line (exit 1, or 2 for usage errors) in well under REFUSAL_S seconds, or
           done correctly; a refused edit writes nothing.

A case "refuses cleanly" when its process exits with the expected code, prints exactly one line on
stderr (starting "error:") and no traceback. "Data lost" counts cases where an edit that existed
before the fault is gone, changed, or unreadable afterwards; it must be 0.

Cases marked `slow` load the real model (tens of seconds each on 2 CPU cores); the others need no
model and run in CI's default suite (tests/test_faults.py). scripts/fault_injection.py runs the whole
table and writes results/faults/faults.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sam.constants import DB_FILE, FINGERPRINTER_FILE, LOCK_FILE
from sam.memory.edit_mask_db import SCHEMA_V1

PRE_MODEL_S = 15.0  # a refusal before any model loads (the subprocess imports torch at most)
REFUSAL_S = float(os.environ.get("SAM_FAULTS_REFUSAL_S", "20"))  # one that loads the model first
COMMAND_S = 900  # any single sam process

# The base store (real model): four good edits, the third superseded by the fourth.
BASE_EDITS = [("What is the capital of Mongolia?", "Ulaanbaatar"),
              ("Which element has atomic number 26?", "Iron"),
              ("What is the largest planet in the solar system?", "Saturn"),
              ("What is the largest planet in the solar system?", "Jupiter")]
UNRELATED = "What is the capital of France?"
NEW_Q, NEW_A = "What is the capital of Kazakhstan?", "Astana"  # not in the base store
HAND_EDITS = [("What is the capital of Mongolia?", "Ulaanbaatar"), ("Who wrote Hamlet?", "Shakespeare"),
              ("What is the largest planet?", "Saturn"), ("What is the largest planet?", "Jupiter"),
              ("What colour is the sky?", "Blue")]  # 3 superseded by 4; 5 reverted

# Reports which heavy modules the process imported (a refusal "before any model loads" imports none of
# transformers' model code); SIGKILL skips it, as it skips everything.
_WRAPPER = r"""
import atexit, json, os, sys
def _report():
    path = os.environ.get("SAM_FAULTS_REPORT")
    if path:
        mods = list(sys.modules)
        with open(path, "w") as f:
            json.dump({"torch": "torch" in sys.modules,
                       "model": any(m.startswith("transformers.models.") and ".modeling_" in m for m in mods)}, f)
atexit.register(_report)
sys.argv[0] = "sam"
from sam.cli import main
main()
"""


# --- processes -------------------------------------------------------------------------------------------
@dataclass
class Proc:
    args: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    torch: bool | None = None  # imported torch (None: unknown, e.g. killed)
    model: bool | None = None  # built a model

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL

    def refused(self, code: int = 1) -> bool:
        """Exit `code`, exactly one line on stderr starting with "error:", no traceback anywhere."""
        err = self.err.strip()
        return (self.rc == code and err.startswith("error:") and "\n" not in err
                and "Traceback" not in self.out + self.err)

    @property
    def clean(self) -> bool:
        return "Traceback" not in self.out + self.err

    def brief(self) -> str:
        err = " ".join(self.err.strip().split())[:300]
        return f"exit {self.rc} in {self.seconds:.1f}s" + (f": {err}" if err else "")


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEMOIR_") and k not in ("SAM_FAILPOINT", "SAM_HOME", "SAM_FAULTS_REPORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.update(extra or {})
    return env


def sam(store: Path | None, *args, env: dict | None = None, stdin: str | bytes | None = None,
        timeout: float = COMMAND_S, cwd: Path | None = None) -> Proc:
    """One `sam` process (the console script's main) with `--store store` and args (str or bytes)."""
    argv = (["--store", str(store)] if store is not None else []) + list(args)
    with tempfile.NamedTemporaryFile(prefix="sam-faults-", suffix=".json", delete=False) as f:
        report = f.name
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], input=stdin, capture_output=True,
                              timeout=timeout, env=_env({**(env or {}), "SAM_FAULTS_REPORT": report}), cwd=cwd)
        seconds = time.perf_counter() - t0
        mods = json.loads(Path(report).read_text() or "{}") if Path(report).stat().st_size else {}
    finally:
        Path(report).unlink(missing_ok=True)
    shown = [a.decode("utf-8", "backslashreplace") if isinstance(a, bytes) else a for a in argv]
    return Proc(shown, proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"),
                seconds, mods.get("torch"), mods.get("model"))


# --- outcomes --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    group: str
    case: str
    expect: str  # refuse | usage | work | work_or_refuse | recover
    ok: bool = False
    refused_cleanly: bool | None = None  # for cases expected to refuse
    data_lost: bool = False
    seconds: float = 0.0
    detail: str = ""
    problems: list[str] = field(default_factory=list)
    id: str = ""  # group/name of the case (stable; tests are parametrised on it)


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    run: Callable[["Env", Path], Outcome]
    slow: bool = False

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


class Env:
    """Shared inputs for the cases: the prepared stores (built once, copied per case) and a work folder."""

    def __init__(self, work: Path, model: str = "default"):
        self.work, self.model = Path(work), model
        self._lock = threading.Lock()
        self._hand: Path | None = None
        self._v1: Path | None = None
        self._base: dict | None = None

    def case_dir(self, case: Case) -> Path:
        d = self.work / "cases" / case.id.replace("/", "__").replace(" ", "_")
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def hand(self) -> Path:
        with self._lock:
            if self._hand is None:
                self._hand = build_hand_store(self.work / "prepared" / "hand")
            return self._hand

    def v1(self) -> Path:
        with self._lock:
            if self._v1 is None:
                self._v1 = build_v1_store(self.work / "prepared" / "v1")
            return self._v1

    def base(self) -> dict:
        """{"store": the real base store, "answers": {question: (answer, routed edit)}, ...} (real model)."""
        with self._lock:
            if self._base is None:
                self._base = build_base_store(self.work / "prepared" / "base", self.model)
            return self._base


def copy_store(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(LOCK_FILE))
    return dest


# --- prepared stores --------------------------------------------------------------------------------------
def _hand_fingerprinter(d_ff: int = 1536, k: int = 128):
    from sam.core.fingerprinter import TopHashFingerprinter, generate_permutation

    return TopHashFingerprinter(generate_permutation(d_ff, 0), k)


def build_hand_store(root: Path) -> Path:
    """A schema-2 store written through the Store API with the default model's shapes and a made-up
    identity (no model): five edits, 3 superseded by 4, 5 reverted. Commands that read the store alone,
    and every refusal that comes before a model loads, run on it."""
    import torch

    from sam.core.store import Store

    shutil.rmtree(root, ignore_errors=True)
    fp = _hand_fingerprinter()
    gen = torch.Generator().manual_seed(0)
    with Store(root) as st:
        st.claim({"model": "hand:0", "layer": 25, "d_ff": 1536, "d_model": 576, "top_k": 128,
                  "fingerprinter": fp.digest(), "prompt_format": "chat"})
        st.save_fingerprinter(fp)
        for i, (q, a) in enumerate(HAND_EDITS):
            cols = torch.randperm(1536, generator=gen)[:128].sort().values
            old = st.db.find(q)
            with st.transaction():
                if old:
                    st.set_status(old[-1].id, "superseded")
                st.add_edit(prompt=q, question=q, target=a, cols=cols, delta=torch.randn(576, 128, generator=gen),
                            source="user", importance=1.0, steps=5, loss=0.01, supersedes=old[-1].id if old else None)
        st.set_status(5, "reverted")
    return root


def build_v1_store(root: Path) -> Path:
    """A schema-1 store (sam <= 0.1) as it was written: safetensors blobs per edit, experts, memory/."""
    import torch
    from safetensors.torch import save as st_save

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    fp = _hand_fingerprinter()
    fp.save(root / FINGERPRINTER_FILE)
    gen = torch.Generator().manual_seed(1)
    con = sqlite3.connect(root / DB_FILE)
    con.executescript(SCHEMA_V1)
    identity = {"schema": "1", "model": "hand:0", "layer": "25", "d_ff": "1536", "top_k": "128",
                "fingerprinter": fp.digest()}
    con.executemany("INSERT INTO meta VALUES (?, ?)", list(identity.items()))
    for i, (q, a) in enumerate(HAND_EDITS[:3], 1):
        blob = st_save({"cols": torch.randperm(1536, generator=gen)[:128].sort().values.to(torch.int64),
                        "delta": torch.randn(576, 128, generator=gen)})
        con.execute("INSERT INTO edits VALUES (?, ?, ?, 'user', '2025-01-02T03:04:05+00:00', 1.0, 0, 'active', 5, "
                    "0.01, ?)", (i, q + "\n", a, blob))
    con.execute("INSERT INTO experts VALUES (0, 'expert_000.0123abcd.safetensors', 3)")
    con.commit()
    con.close()
    (root / "memory").mkdir()
    (root / "memory" / "expert_000.0123abcd.safetensors").write_bytes(b"\x00" * 4096)
    return root


def build_base_store(root: Path, model: str = "default") -> dict:
    """The real model's store for the kill and damage cases: BASE_EDITS made through the library, and the
    answers `sam ask` gives in it (routed edit included), computed the way AnswerSkill computes them."""
    import torch

    from sam.core.editor import MemoirEditor
    from sam.orchestration.testing import fresh_store
    from sam_skills.answer import MAX_NEW_TOKENS

    saved = root.parent / "base.json"
    if saved.exists() and (root / DB_FILE).exists():  # a kept --work folder: reuse what an earlier run made
        data = json.loads(saved.read_text())
        return {"store": root, **{k: {q: tuple(v) for q, v in data[k].items()} for k in ("answers", "unedited")},
                "saturn": tuple(data["saturn"])}
    shutil.rmtree(root, ignore_errors=True)
    fresh_store(root, model=model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with MemoirEditor.open(root, model=model) as ed:
            def answers(questions, memory=True):
                gens = ed.answer([ed.render(q) for q in questions], max_new_tokens=MAX_NEW_TOKENS, memory=memory)
                return {q: (ed.prompts.clean(g.text), g.edit_id) for q, g in zip(questions, gens)}

            questions = list(dict.fromkeys([q for q, _ in BASE_EDITS] + [UNRELATED, NEW_Q]))
            unedited = answers(questions, memory=False)
            saturn = None
            for q, a in BASE_EDITS:
                ed.edit(ed.render(q), a, keep_failed=False)
                if a == "Saturn":
                    saturn = answers([q])[q]
            edited = {}
            for q in questions:  # one at a time, as `sam ask` asks them
                edited.update(answers([q]))
    finally:
        torch.set_num_threads(threads)
    saved.write_text(json.dumps({"answers": edited, "unedited": unedited, "saturn": saturn}, ensure_ascii=False))
    return {"store": root, "answers": edited, "unedited": unedited, "saturn": saturn}


# --- what is on disk -----------------------------------------------------------------------------------------
def snapshot(store: Path) -> dict:
    """The database's edit rows (text, status, links, sha256 of the delta bytes) and meta, read directly."""
    db = store / DB_FILE
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(edits)")}
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        if "sparse" in cols:  # schema 1
            rows = {i: {"question": p.strip(), "target": t, "status": s, "blob": hashlib.sha256(b).hexdigest()}
                    for i, p, t, s, b in con.execute("SELECT id, prompt, target, status, sparse FROM edits")}
        else:
            rows = {}
            for (i,) in con.execute("SELECT id FROM edits ORDER BY id").fetchall():
                try:  # row by row: a damaged page makes its rows unreadable, not the snapshot
                    q, t, s, sup, c, cb, db_ = con.execute(
                        "SELECT question, target, status, supersedes, checksum, cols, delta FROM edits WHERE id = ?",
                        (i,)).fetchone()
                    rows[i] = {"question": q, "target": t, "status": s, "supersedes": sup, "checksum": c,
                               "blob": hashlib.sha256(cb + db_).hexdigest()}
                except sqlite3.DatabaseError:
                    rows[i] = {"unreadable": True}
    finally:
        con.close()
    return {"schema": int(meta.get("schema", "1")), "meta": meta, "rows": rows}


def file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def orphans(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).glob(".*.tmp"))


def open_and_check(store: Path) -> list[str]:
    """Open the store as a reader (check: integrity, every delta, fingerprinter), then as a writer (which
    removes orphaned temp files), then once more as a reader. Problems as text (none: [])."""
    from sam.core.store import Store
    from sam.errors import SamError

    problems = []
    try:
        with Store(store, read_only=True) as st:
            report = st.check()
            if not report["ok"]:
                problems.append(f"reader check not ok: {report}")
    except (SamError, sqlite3.Error) as exc:
        problems.append(f"reader open failed: {exc}")
    try:
        with Store(store) as st:
            pass
    except (SamError, sqlite3.Error) as exc:
        problems.append(f"writer open failed: {exc}")
    left = orphans(store)
    if left:
        problems.append(f"orphaned temp files left after a writer open: {left}")
    try:
        with Store(store, read_only=True) as st:
            if st.db.integrity() != "ok":
                problems.append("integrity check failed after the writer open")
    except (SamError, sqlite3.Error) as exc:
        problems.append(f"reader open after the writer failed: {exc}")
    return problems


def compare_rows(before: dict, after: dict, statuses: dict[int, str] | None = None,
                 new: list[dict] | None = None) -> tuple[list[str], bool]:
    """(problems, data_lost): every row of `before` is in `after` with the same text and delta bytes; the
    statuses are `statuses` (default: unchanged) and the rows past `before` are exactly `new`
    (dicts of question/target/status[/supersedes])."""
    problems, lost = [], False
    want = {i: r.get("status") for i, r in before["rows"].items()} | (statuses or {})
    for i, r in before["rows"].items():
        if r.get("unreadable"):
            continue  # damaged before: it can only be reported
        got = after["rows"].get(i)
        if got is None:
            problems.append(f"edit {i} is gone")
            lost = True
            continue
        for key in ("question", "target", "blob", "checksum", "supersedes"):
            if key in r and got.get(key) != r[key]:
                problems.append(f"edit {i}: {key} changed")
                lost = True
        if got.get("status") != want[i]:
            problems.append(f"edit {i}: status {got.get('status')}, want {want[i]}")
    extra = [after["rows"][i] for i in sorted(after["rows"]) if i not in before["rows"]]
    expected = new or []
    if len(extra) != len(expected):
        problems.append(f"{len(extra)} new edit row(s), want {len(expected)}: "
                        f"{[(r.get('question'), r.get('target'), r.get('status')) for r in extra]}")
    else:
        for got, exp in zip(extra, expected):
            for key, value in exp.items():
                if got.get(key) != value:
                    problems.append(f"new edit: {key} {got.get(key)!r}, want {value!r}")
    return problems, lost


def one_active_per_question(snap: dict) -> list[str]:
    from sam.core.prompts import normalize

    seen: dict[str, int] = {}
    problems = []
    for i, r in snap["rows"].items():
        if r.get("status") == "active":
            key = normalize(r["question"])
            if key in seen:
                problems.append(f"edits {seen[key]} and {i} are both active for '{r['question']}'")
            seen[key] = i
    return problems


def _finish(out: Outcome, problems: list[str], t0: float, detail: str = "") -> Outcome:
    out.problems = problems
    out.ok = not problems and not out.data_lost
    out.seconds = round(time.perf_counter() - t0, 1)
    out.detail = detail if detail else ("; ".join(problems)[:500] if problems else "ok")
    return out


def _expect(out: Outcome, proc: Proc, expect: str, fragment: str = "", limit: float | None = None) -> list[str]:
    """Problems with one process's result for an expectation: refuse (exit 1), usage (exit 2), work
    (exit 0), work_or_refuse."""
    problems = []
    if expect in ("refuse", "usage"):
        code = 1 if expect == "refuse" else 2
        clean = proc.refused(code)
        out.refused_cleanly = clean if out.refused_cleanly is None else (out.refused_cleanly and clean)
        if not clean:
            problems.append(f"not a clean refusal (exit {code}, one line): {proc.brief()}")
        elif fragment and fragment not in proc.err:
            problems.append(f"refusal does not say '{fragment}': {proc.brief()}")
        if limit is not None and proc.seconds > limit:
            problems.append(f"refusal took {proc.seconds:.1f}s (limit {limit:.0f}s)")
    elif expect == "work":
        if proc.rc != 0 or not proc.clean:
            problems.append(f"failed: {proc.brief()}")
        elif fragment and fragment not in " ".join(proc.out.split()):  # rich wraps long lines (paths) anywhere
            problems.append(f"output lacks '{fragment}': {proc.out[-300:]}")
    elif expect == "report":  # doctor --check: the problem in its report, exit 1
        if proc.rc != 1 or not proc.clean:
            problems.append(f"want a report and exit 1: {proc.brief()}")
        elif fragment and fragment not in proc.out:
            problems.append(f"the report lacks '{fragment}': {' '.join(proc.out.split())[-400:]}")
    elif expect == "work_or_refuse":
        if not (proc.rc == 0 and proc.clean) and not proc.refused(1):
            problems.append(f"neither worked nor refused cleanly: {proc.brief()}")
        if proc.rc != 0:
            out.refused_cleanly = proc.refused(1)
    return problems


# === (a) kill -9 at each write step ========================================================================
def _killed(proc: Proc, failpoint: str) -> list[str]:
    return [] if proc.killed else [f"the failpoint {failpoint} was not reached: {proc.brief()}"]


def _kill_export(failpoint: str) -> Case:
    def run(env: Env, d: Path) -> Outcome:
        from sam.core.exchange import read_export

        t0, out = time.perf_counter(), Outcome("kill", f"edits export @ {failpoint}", "recover")
        store = copy_store(env.hand(), d / "store")
        target = d / "exports" / "edits.json"
        target.parent.mkdir()
        problems = _expect(out, sam(store, "edits", "export", str(target)), "work")  # a good export is there
        before, before_file = snapshot(store), target.read_bytes()
        proc = sam(store, "edits", "export", "--all", str(target), env={"SAM_FAILPOINT": failpoint})
        problems += _killed(proc, failpoint)
        if target.read_bytes() != before_file:
            problems.append("the earlier export file changed")
            out.data_lost = True
        try:
            read_export(target)
        except Exception as exc:  # noqa: BLE001 - anything here is a finding
            problems.append(f"the earlier export no longer reads: {exc}")
            out.data_lost = True
        left = orphans(target.parent)
        p, lost = compare_rows(before, snapshot(store))
        problems += p + open_and_check(store)
        out.data_lost |= lost
        again = sam(store, "edits", "export", "--all", str(target))
        problems += _expect(out, again, "work")
        if again.rc == 0 and len(read_export(target)) != len(HAND_EDITS):
            problems.append("the re-run export does not hold every edit")
        return _finish(out, problems, t0, None if problems else
                       f"export file intact; {len(left)} temp file left beside it (outside the store: not cleaned)")
    return Case("kill", f"export@{failpoint}", run)


def _v1_expected(store: Path) -> dict[int, str]:
    """sha256 of the cols || delta bytes each schema-1 row becomes (what the upgrade must write)."""
    from safetensors.torch import load as st_load

    from sam.memory.edit_mask_db import pack

    con = sqlite3.connect(f"file:{store / DB_FILE}?mode=ro", uri=True)
    try:
        out = {}
        for i, blob in con.execute("SELECT id, sparse FROM edits"):
            t = st_load(blob)
            c, dd, _ = pack(t["cols"], t["delta"])
            out[i] = hashlib.sha256(c + dd).hexdigest()
        return out
    finally:
        con.close()


def _kill_upgrade(failpoint: str, committed: bool) -> Case:
    def run(env: Env, d: Path) -> Outcome:
        t0, out = time.perf_counter(), Outcome("kill", f"upgrade @ {failpoint}", "recover")
        store = copy_store(env.v1(), d / "store")
        before, want = snapshot(store), _v1_expected(store)
        proc = sam(store, "upgrade", env={"SAM_FAILPOINT": failpoint})
        problems = _killed(proc, failpoint)
        snap = snapshot(store)
        if snap["schema"] != (2 if committed else 1):
            problems.append(f"schema {snap['schema']} after the kill, want {2 if committed else 1}")
        if snap["schema"] == 1:
            p, lost = compare_rows(before, snap)
            problems += p
            out.data_lost |= lost
            reader = sam(store, "edits", "list")  # a reader never migrates: it says what to do
            problems += _expect(out, reader, "refuse", "sam upgrade")
        problems += _expect(out, sam(store, "upgrade"), "work", "in format 2")
        snap = snapshot(store)
        got = {i: r["blob"] for i, r in snap["rows"].items()}
        if got != want:
            problems.append(f"upgraded deltas differ from the schema-1 ones: {sorted(got)} vs {sorted(want)}")
            out.data_lost = True
        if [r["target"] for _, r in sorted(snap["rows"].items())] != [a for _, a in HAND_EDITS[:3]]:
            problems.append("upgraded rows lost their text")
            out.data_lost = True
        if (store / "memory").exists():
            problems.append("memory/ (schema 1) was not moved to backup/ by the upgrade or the next writer open")
        problems += open_and_check(store)
        return _finish(out, problems, t0)
    return Case("kill", f"upgrade@{failpoint}", run)


def _base_rows_after(kind: str) -> tuple[dict[int, str], list[dict]]:
    """(status changes, new rows) a committed `kind` leaves in the base store."""
    return {
        "correct": ({}, [{"question": NEW_Q, "target": NEW_A, "status": "active", "supersedes": None}]),
        "supersede": ({1: "superseded"}, [{"question": BASE_EDITS[0][0], "target": "Ulan Bator", "status": "active",
                                           "supersedes": 1}]),
        "revert": ({2: "reverted"}, []),
        "restore": ({4: "reverted", 3: "active"}, []),
    }[kind]


_KIND_ARGS = {"correct": ["correct", NEW_Q, NEW_A], "supersede": ["correct", BASE_EDITS[0][0], "Ulan Bator"],
              "revert": ["edits", "revert", "2"], "restore": ["edits", "revert", "4"]}


def _ask_all(store: Path, questions: list[str]) -> tuple[dict, Proc]:
    """Each question in a fresh conversation of one `sam --json chat` process (as `sam ask` asks it)."""
    script = "".join(f"{q}\n/new\n" for q in questions) + "/quit\n"
    proc = sam(store, "--json", "chat", stdin=script.encode())
    replies = [json.loads(line) for line in proc.out.splitlines() if line.startswith("{")]
    answers = [r for r in replies if r.get("kind") in ("answer", "error")]
    return {q: (r.get("text"), r.get("routed_edit")) for q, r in zip(questions, answers)}, proc


def _answers_as_expected(env: Env, store: Path, state: str, kind: str) -> list[str]:
    base = env.base()
    want = {q: base["answers"][q] for q, _ in BASE_EDITS}
    if state == "after" and kind == "revert":
        want[BASE_EDITS[1][0]] = (base["unedited"][BASE_EDITS[1][0]][0], None)
    if state == "after" and kind == "restore":
        want[BASE_EDITS[2][0]] = base["saturn"]
    got, proc = _ask_all(store, list(want))
    if proc.rc != 0:
        return [f"asking after the kill failed: {proc.brief()}"]
    return [f"'{q}' answers {got.get(q)!r}, want {w!r}" for q, w in want.items() if got.get(q) != w]


def _kill_base(kind: str, failpoint: str, state: str, ask: bool = False) -> Case:
    def run(env: Env, d: Path) -> Outcome:
        t0 = time.perf_counter()
        out = Outcome("kill", f"{' '.join(_KIND_ARGS[kind][:2])} ({kind}) @ {failpoint}", "recover")
        store = copy_store(env.base()["store"], d / "store")
        before = snapshot(store)
        proc = sam(store, *_KIND_ARGS[kind], env={"SAM_FAILPOINT": failpoint})
        problems = _killed(proc, failpoint)
        statuses, new = _base_rows_after(kind) if state == "after" else ({}, [])
        p, lost = compare_rows(before, snapshot(store), statuses, new)  # what the kill left: all or nothing
        problems += p + open_and_check(store)
        out.data_lost |= lost
        after = snapshot(store)
        problems += one_active_per_question(after)
        if ask:
            problems += _answers_as_expected(env, store, state, kind)
        if kind == "correct" and state == "after":  # the user runs the same command again
            again = sam(store, "--json", *_KIND_ARGS[kind])
            problems += _expect(out, again, "work")
            if again.rc == 0 and not json.loads(again.out).get("already_present"):
                problems.append("re-running the correction after the kill trained and wrote it again")
            if len(snapshot(store)["rows"]) != len(after["rows"]):
                problems.append("re-running the correction added an edit row")
        return _finish(out, problems, t0)
    return Case("kill", f"{kind}@{failpoint}", run, slow=True)


def _kill_repair() -> Case:
    def run(env: Env, d: Path) -> Outcome:
        t0, out = time.perf_counter(), Outcome("kill", "repair (fingerprinter missing) @ atomic.before_rename",
                                               "recover")
        store = copy_store(env.base()["store"], d / "store")
        original = file_digest(store / FINGERPRINTER_FILE)
        (store / FINGERPRINTER_FILE).unlink()
        before = snapshot(store)
        proc = sam(store, "repair", env={"SAM_FAILPOINT": "atomic.before_rename"})
        problems = _killed(proc, "atomic.before_rename")
        left = orphans(store)
        if not left:
            problems.append("no temp file was left (the kill was not mid-write?)")
        p, lost = compare_rows(before, snapshot(store))
        problems += p
        out.data_lost |= lost
        from sam.core.store import Store

        with Store(store):  # the next writer open drops the orphan
            pass
        if orphans(store):
            problems.append(f"orphans left after a writer open: {orphans(store)}")
        problems += _expect(out, sam(store, "repair"), "work", "fingerprinter")
        if file_digest(store / FINGERPRINTER_FILE) != original:
            problems.append("the rebuilt fingerprinter is not the original one")
        problems += open_and_check(store) + _answers_as_expected(env, store, "before", "correct")
        return _finish(out, problems, t0, None if problems else f"orphan {left[0]} removed; fingerprinter rebuilt")
    return Case("kill", "repair@atomic.before_rename", run, slow=True)


def _kill_new_store() -> Case:
    def run(env: Env, d: Path) -> Outcome:
        t0, out = time.perf_counter(), Outcome("kill", "first correct in a new folder @ atomic.before_rename",
                                               "recover")
        store = d / "store"
        proc = sam(store, "correct", NEW_Q, NEW_A, env={"SAM_FAILPOINT": "atomic.before_rename"})
        problems = _killed(proc, "atomic.before_rename")
        if not orphans(store):
            problems.append("no temp file was left")
        listed = sam(store, "--json", "edits", "list")  # a reader: the half-made store holds nothing
        problems += _expect(out, listed, "work")
        if listed.rc == 0 and json.loads(listed.out) != []:
            problems.append(f"edits in a store whose first edit was killed: {listed.out}")
        from sam.core.store import Store

        with Store(store):
            pass
        if orphans(store):
            problems.append(f"orphans left after a writer open: {orphans(store)}")
        asked = sam(store, "--json", "ask", UNRELATED)  # answered by the base model, nothing created
        problems += _expect(out, asked, "work")
        if asked.rc == 0 and json.loads(asked.out)["answer"] != env.base()["unedited"][UNRELATED][0]:
            problems.append("the half-made store changed the base model's answer")
        return _finish(out, problems, t0)
    return Case("kill", "new-store@atomic.before_rename", run, slow=True)


def _kill_bench() -> Case:
    def run(env: Env, d: Path) -> Outcome:
        from sam.bench.facts import ZSRE_SAMPLE

        t0, out = time.perf_counter(), Outcome("kill", "bench edit (between checkpoints) @ bench.chunk.after",
                                               "recover")
        store, results = d / "store", d / "results"
        args = ("bench", "edit", "--data", str(ZSRE_SAMPLE), "--model", env.model,
                "--sizes", "3", "--batch", "1", "--eval-sample", "3", "--neighbours", "2", "--no-generation",
                "--store", str(store), "--out", str(results), "--tag", "killed")
        problems = _killed(sam(None, *args, env={"SAM_FAILPOINT": "bench.chunk.after"}), "bench.chunk.after")
        problems += open_and_check(store)
        problems += _expect(out, sam(None, *args), "work")  # resumes at fact 1
        path = results / "killed.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        if len(result.get("edit_seconds", [])) != 3 or len(result.get("edit_of", {})) != 3:
            problems.append(f"the resumed result records {len(result.get('edit_seconds', []))} facts' timings and "
                            f"{len(result.get('edit_of', {}))} edit ids, want 3 each")
            out.data_lost = True
        elif not result["edit_seconds"][0] > 0:
            problems.append("the killed run's first edit lost its timing")
            out.data_lost = True
        if (results / "killed.journal.jsonl").exists():
            problems.append("the journal is left after the result holds its records")
        return _finish(out, problems, t0)
    return Case("kill", "bench@bench.chunk.after", run, slow=True)


def kill_cases() -> list[Case]:
    cases = [_kill_export("atomic.before_rename"), _kill_export("export.partial")]
    cases += [_kill_upgrade(fp, committed) for fp, committed in (
        ("store.upgrade.backup", False), ("store.upgrade.mid", False), ("db.meta.before", False),
        ("db.commit.before", False), ("db.commit.after", True), ("store.upgrade.after", True))]
    cases += [_kill_base("correct", fp, state, ask) for fp, state, ask in (
        ("db.insert.before", "before", False), ("db.insert.after", "before", False),
        ("db.commit.before", "before", True), ("db.commit.after", "after", True),
        ("editor.commit.before", "before", False), ("editor.commit.after", "after", False))]
    cases += [_kill_base("supersede", fp, "before") for fp in ("editor.commit.supersede", "db.status.after")]
    cases += [_kill_base("revert", fp, state, ask) for fp, state, ask in (
        ("editor.revert.before", "before", False), ("db.status.before", "before", False),
        ("editor.revert.mid", "before", True), ("db.commit.before", "before", False),
        ("db.commit.after", "after", False), ("editor.revert.after", "after", False))]
    cases += [_kill_base("restore", "editor.revert.mid", "before"), _kill_base("restore", "db.commit.after", "after",
                                                                                  True)]
    return cases + [_kill_repair(), _kill_new_store(), _kill_bench()]


# === (b) damaged stores ====================================================================================
def _garble(path: Path, offset: int, length: int, seed: int = 7) -> None:
    import random

    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for i in range(offset, min(offset + length, len(data))):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))


def _garble_delta(store: Path, edit_id: int = 1) -> None:
    con = sqlite3.connect(store / DB_FILE)
    try:
        (delta,) = con.execute("SELECT delta FROM edits WHERE id = ?", (edit_id,)).fetchone()
        bad = bytearray(delta)
        bad[len(bad) // 2] ^= 0xFF
        con.execute("UPDATE edits SET delta = ? WHERE id = ?", (bytes(bad), edit_id))  # checksum left as it was
        con.commit()
    finally:
        con.close()


def _drop_db(store: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (store / (DB_FILE + suffix)).unlink(missing_ok=True)


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "db-deleted": _drop_db,
    "db-empty": lambda s: (s / DB_FILE).write_bytes(b""),
    "db-header": lambda s: _garble(s / DB_FILE, 0, 100),
    "db-page": lambda s: _garble(s / DB_FILE, ((s / DB_FILE).stat().st_size // 4096 // 2) * 4096, 4096),
    "delta-checksum": _garble_delta,
    "fp-deleted": lambda s: (s / FINGERPRINTER_FILE).unlink(),
    "fp-garbled": lambda s: _garble(s / FINGERPRINTER_FILE, (s / FINGERPRINTER_FILE).stat().st_size - 512, 256),
    "fp-header": lambda s: _garble(s / FINGERPRINTER_FILE, 0, 64),
    "lock-stale": lambda s: (s / LOCK_FILE).write_text("4242 a writer that died\n"),
    "lock-held": lambda s: None,  # a live process holds the lock while the command runs
}
_HEALTHY_DB = ("delta-checksum", "fp-deleted", "fp-garbled", "fp-header", "lock-stale", "lock-held")


class _LockHolder:
    """Another process holding the store's writer lock (as a running `sam chat` would)."""

    def __init__(self, store: Path):
        code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
                "print('locked', flush=True); time.sleep(3600)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(store / LOCK_FILE)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _commands(d: Path) -> dict[str, list[str]]:
    return {"list": ["--json", "edits", "list", "--status", "all"], "export": ["edits", "export", str(d / "out.json")],
            "doctor": ["--json", "doctor", "--check"], "upgrade": ["upgrade"], "repair": ["repair"],
            "correct": ["correct", NEW_Q, NEW_A], "revert": ["edits", "revert", "1"],
            "revert-reverted": ["edits", "revert", "5"],
            "ask": ["--json", "ask", BASE_EDITS[0][0]], "ask-other": ["--json", "ask", BASE_EDITS[1][0]]}


def _corrupt(kind: str, command: str, expect: str, fragment: str = "", base: bool = False,
             then: Callable | None = None) -> Case:
    def run(env: Env, d: Path) -> Outcome:
        t0, out = time.perf_counter(), Outcome("corrupt", f"{kind}: {command}", expect)
        store = copy_store(env.base()["store"] if base else env.hand(), d / "store")
        CORRUPTIONS[kind](store)
        # the damaged row included (sam must keep it as it is); with a bad page, the rows still readable
        before = snapshot(store) if kind in _HEALTHY_DB or kind == "db-page" else None
        digests = {name: file_digest(store / name) for name in (DB_FILE, FINGERPRINTER_FILE)}
        holder = _LockHolder(store) if kind == "lock-held" else None
        try:
            proc = sam(store, *_commands(d)[command])
        finally:
            if holder is not None:
                holder.stop()
        problems = _expect(out, proc, expect, fragment, limit=REFUSAL_S if base else PRE_MODEL_S)
        writes = command in ("repair", "correct") and proc.rc == 0
        for name, digest in digests.items():  # a damaged file is never replaced, emptied or made up
            if not writes and file_digest(store / name) != digest:
                problems.append(f"{name} was {'created' if digest is None else 'changed'} by `{command}`")
                out.data_lost |= digest is not None and name == DB_FILE
        if before is not None:
            statuses = {1: "reverted"} if kind == "delta-checksum" and command == "repair" else {}
            new = [{"question": NEW_Q, "target": NEW_A, "status": "active"}] if command == "correct" and \
                proc.rc == 0 else []
            p, lost = compare_rows(before, snapshot(store), statuses, new)
            problems += p
            out.data_lost |= lost
        if then is not None and not problems:
            problems += then(env, store, out)
        return _finish(out, problems, t0, None if problems else proc.brief())
    return Case("corrupt", f"{kind}:{command}", run, slow=base)


def _then_check_ok(env: Env, store: Path, out: Outcome) -> list[str]:
    return _expect(out, sam(store, "--json", "doctor", "--check"), "work", '"check": "ok"')


def _then_answers(question_index: int, unedited: bool = False) -> Callable:
    def then(env: Env, store: Path, out: Outcome) -> list[str]:
        q = BASE_EDITS[question_index][0]
        proc = sam(store, "--json", "ask", q)
        problems = _expect(out, proc, "work")
        if proc.rc == 0:
            got = json.loads(proc.out)
            want = (env.base()["unedited"][q][0], None) if unedited else env.base()["answers"][q]
            if (got["answer"], got["routed_edit"]) != tuple(want):
                problems.append(f"'{q}' answers {(got['answer'], got['routed_edit'])!r}, want {tuple(want)!r}")
        return problems
    return then


def _then_repair_and_answer(question_index: int = 0, unedited: bool = False) -> Callable:
    def then(env: Env, store: Path, out: Outcome) -> list[str]:
        problems = _expect(out, sam(store, "repair"), "work")
        if file_digest(store / FINGERPRINTER_FILE) != file_digest(env.base()["store"] / FINGERPRINTER_FILE):
            problems.append("the repaired fingerprinter is not the original one")
        return problems + _then_answers(question_index, unedited)(env, store, out)
    return then


def corrupt_cases() -> list[Case]:
    C = _corrupt  # noqa: N806
    return [
        # the database itself: refused with one line, never replaced or emptied
        C("db-deleted", "list", "refuse", "is missing but"), C("db-deleted", "correct", "refuse", "is missing but"),
        C("db-deleted", "doctor", "report", "is missing"),
        C("db-deleted", "export", "refuse", "is missing but"),
        C("db-deleted", "upgrade", "refuse", "is missing but"),
        C("db-deleted", "repair", "refuse", "is missing but"),
        C("db-deleted", "revert", "refuse", "is missing but"),
        C("db-empty", "doctor", "report", "0 bytes"), C("db-empty", "upgrade", "refuse", "0 bytes"),
        C("db-empty", "list", "refuse", "0 bytes"), C("db-empty", "correct", "refuse", "0 bytes"),
        C("db-empty", "repair", "refuse", "0 bytes"),
        C("db-header", "list", "refuse", "cannot read edit database"),
        C("db-header", "repair", "refuse", "cannot read"),
        C("db-header", "doctor", "report", "cannot read"),
        C("db-header", "upgrade", "refuse", "cannot read"),
        C("db-header", "correct", "refuse", "cannot read"),
        C("db-page", "doctor", "report", "unreadable"),
        C("db-page", "list", "work_or_refuse"), C("db-page", "export", "work_or_refuse"),
        C("db-page", "upgrade", "work_or_refuse"), C("db-page", "repair", "refuse", "integrity"),
        # one delta fails its checksum: reported, taken out of use by repair, nothing else touched
        C("delta-checksum", "doctor", "report", "checksum mismatch"),
        C("delta-checksum", "repair", "work", "checksum mismatch: reverted", then=_then_check_ok),
        C("delta-checksum", "list", "work"), C("delta-checksum", "export", "work"),
        C("delta-checksum", "upgrade", "work"),
        # the fingerprinter: readers of the store alone still work; it is never made up or replaced
        C("fp-deleted", "doctor", "report", "missing"), C("fp-garbled", "doctor", "report", "not the fingerprinter"),
        C("fp-header", "doctor", "report", "cannot read fingerprinter"),
        C("fp-deleted", "list", "work"), C("fp-deleted", "upgrade", "work"),
        C("fp-garbled", "list", "work"), C("fp-garbled", "upgrade", "work"),
        C("fp-header", "list", "work"), C("fp-header", "export", "work"),
        # locks: a leftover lock file is harmless; a held one stops writers only
        C("lock-stale", "upgrade", "work"), C("lock-stale", "repair", "work", "nothing to repair"),
        C("lock-stale", "doctor", "work", "free"),
        C("lock-stale", "revert-reverted", "refuse", "already reverted"),
        C("lock-held", "list", "work"), C("lock-held", "upgrade", "refuse", "in use by another sam process"),
        C("lock-held", "correct", "refuse", "in use by another sam process"),
        C("lock-held", "revert", "refuse", "in use by another sam process"),
        C("lock-held", "repair", "refuse", "in use by another sam process"),
        C("lock-held", "doctor", "work", "held by another sam process"),
        C("lock-held", "export", "work"),
        # on the real model's store
        C("delta-checksum", "ask", "refuse", "fails its checksum", base=True,
          then=_then_repair_and_answer(0, unedited=True)),
        C("delta-checksum", "ask-other", "work", base=True),
        C("fp-deleted", "ask", "refuse", "is missing", base=True, then=_then_repair_and_answer(0)),
        C("fp-deleted", "correct", "refuse", "is missing", base=True),
        C("fp-garbled", "ask", "refuse", "not the fingerprinter", base=True, then=_then_repair_and_answer(0)),
        C("fp-garbled", "correct", "refuse", "not the fingerprinter", base=True),
        C("fp-header", "ask", "refuse", "cannot read fingerprinter", base=True),
        C("db-page", "ask", "work_or_refuse", base=True), C("db-page", "correct", "work_or_refuse", base=True),
        C("lock-held", "ask", "work", base=True),
        C("lock-stale", "correct", "work", base=True),
    ] + [_export_file_case("tampered", "checksum mismatch"), _export_file_case("truncated", "is not JSON"),
         _export_file_case("tampered", "checksum mismatch", dry_run=True)]


def _export_file_case(how: str, fragment: str, dry_run: bool = False) -> Case:
    def run(env: Env, d: Path) -> Outcome:
        t0, out = time.perf_counter(), Outcome("corrupt", f"export file {how}: import{' --dry-run' if dry_run else ''}",
                                               "refuse")
        src = copy_store(env.hand(), d / "src")
        f = d / "edits.json"
        problems = _expect(out, sam(src, "edits", "export", str(f)), "work")
        if how == "tampered":
            doc = json.loads(f.read_text())
            doc["edits"][0]["target"] = "Paris"
            f.write_text(json.dumps(doc))
        else:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        target = d / "target"
        proc = sam(target, "edits", "import", *(["--dry-run"] if dry_run else []), str(f))
        problems += _expect(out, proc, "refuse", fragment, limit=PRE_MODEL_S)
        if target.exists():
            problems.append("the import created a store")
        return _finish(out, problems, t0)
    return Case("corrupt", f"export-{how}:import{'-dry-run' if dry_run else ''}", run)


# === (c) bad settings =======================================================================================
BAD_SETTINGS: list[tuple[dict, list[str], str]] = [  # (environment, extra options, what the line names)
    ({"MEMOIR_SIMILARITY_THRESHOLD": "2"}, [], "MEMOIR_SIMILARITY_THRESHOLD"),
    ({"MEMOIR_SIMILARITY_THRESHOLD": "-1"}, [], "MEMOIR_SIMILARITY_THRESHOLD"),
    ({"MEMOIR_SIMILARITY_THRESHOLD": "nan"}, [], "MEMOIR_SIMILARITY_THRESHOLD"),
    ({"MEMOIR_SIMILARITY_THRESHOLD": "0"}, [], "MEMOIR_SIMILARITY_THRESHOLD"),
    ({"MEMOIR_SIMILARITY_THRESHOLD": "abc"}, [], "MEMOIR_SIMILARITY_THRESHOLD"),
    ({"MEMOIR_TOP_K": "0"}, [], "MEMOIR_TOP_K"),
    ({"MEMOIR_TOP_K": "99999"}, [], "top_k 99999 is larger than"),
    ({"MEMOIR_TOP_K": "abc"}, [], "MEMOIR_TOP_K"),
    ({"MEMOIR_TOP_K": "-5"}, [], "MEMOIR_TOP_K"),
    ({"MEMOIR_TOP_K": "1.5"}, [], "MEMOIR_TOP_K"),
    ({"MEMOIR_LEARNING_RATE": "nan"}, [], "MEMOIR_LEARNING_RATE"),
    ({"MEMOIR_LEARNING_RATE": "inf"}, [], "MEMOIR_LEARNING_RATE"),
    ({"MEMOIR_LEARNING_RATE": "-1"}, [], "MEMOIR_LEARNING_RATE"),
    ({"MEMOIR_LEARNING_RATE": "0"}, [], "MEMOIR_LEARNING_RATE"),
    ({"MEMOIR_LEARNING_RATE": "1e9"}, [], "MEMOIR_LEARNING_RATE"),
    ({"MEMOIR_MAX_STEPS": "0"}, [], "MEMOIR_MAX_STEPS"),
    ({"MEMOIR_MAX_STEPS": "-3"}, [], "MEMOIR_MAX_STEPS"),
    ({"MEMOIR_MAX_STEPS": "100000"}, [], "MEMOIR_MAX_STEPS"),
    ({"MEMOIR_LAYER": "99"}, [], "layer 99 is out of range"),
    ({"MEMOIR_LAYER": "-1"}, [], "MEMOIR_LAYER"),
    ({"MEMOIR_LAYER": "x"}, [], "MEMOIR_LAYER"),
    ({"MEMOIR_LR": "5"}, [], "unknown setting MEMOIR_LR"),
    ({"MEMOIR_TOPK": "64"}, [], "unknown setting MEMOIR_TOPK"),
    ({"MEMOIR_PROMPT_FORMAT": "bogus"}, [], "MEMOIR_PROMPT_FORMAT"),
    ({"MEMOIR_MIN_EDIT_CONFIDENCE": "7"}, [], "MEMOIR_MIN_EDIT_CONFIDENCE"),
    ({"MEMOIR_MIN_EDIT_CONFIDENCE": "nan"}, [], "MEMOIR_MIN_EDIT_CONFIDENCE"),
    ({"MEMOIR_HEAD_DTYPE": "int8"}, [], "MEMOIR_HEAD_DTYPE"),
    ({"MEMOIR_MAX_TARGET_TOKENS": "0"}, [], "MEMOIR_MAX_TARGET_TOKENS"),
    ({"MEMOIR_MAX_PROMPT_TOKENS": "4"}, [], "MEMOIR_MAX_PROMPT_TOKENS"),
    ({"MEMOIR_N_PREFIXES": "99"}, [], "MEMOIR_N_PREFIXES"),
    ({"MEMOIR_FAST": "maybe"}, [], "MEMOIR_FAST"),
    ({"MEMOIR_SEED": "-1"}, [], "MEMOIR_SEED"),
    ({"MEMOIR_STOP_LOSS": "0"}, [], "MEMOIR_STOP_LOSS"),
    ({"MEMOIR_MODEL": ""}, [], "MEMOIR_MODEL"),
    ({"MEMOIR_MODEL": "/nonexistent/model"}, [], "no model at"),
    ({"MEMOIR_DEVICE": ""}, [], "MEMOIR_DEVICE"),
    ({}, ["--top-k", "99999"], "top_k 99999 is larger than"),
    ({}, ["--layer", "99"], "layer 99 is out of range"),
    ({}, ["--similarity-threshold", "nan"], "MEMOIR_SIMILARITY_THRESHOLD"),
    ({}, ["--learning-rate", "inf"], "MEMOIR_LEARNING_RATE"),
]


def _setting_case(environ: dict, options: list[str], fragment: str, existing: bool) -> Case:
    name = " ".join([*(f"{k}={v}" for k, v in environ.items()), *options])

    def run(env: Env, d: Path) -> Outcome:
        t0, out = time.perf_counter(), Outcome("setting", name, "refuse")
        problems = []
        stores = [d / "new-store"] + ([copy_store(env.hand(), d / "store")] if existing else [])
        for store in stores:  # a writer: on a new folder it must create nothing, on a store write nothing
            command = ["correct", "What is 2+2?", "4"]
            db = file_digest(store / DB_FILE)
            proc = sam(store, *options, *command, env=environ)
            problems += _expect(out, proc, "refuse", fragment, limit=PRE_MODEL_S)
            if proc.model:
                problems.append(f"`{command[0]}` built the model before refusing")
            if db is None and store.exists():
                problems.append(f"`{command[0]}` created {store}")
            elif db is not None and file_digest(store / DB_FILE) != db:
                problems.append(f"`{command[0]}` wrote to the store")
        return _finish(out, problems, t0)
    return Case("setting", name, run)


def setting_cases() -> list[Case]:
    return [_setting_case(e, o, f, existing=i % 4 == 0) for i, (e, o, f) in enumerate(BAD_SETTINGS)]


# === (d) bad input ==========================================================================================
def _export_doc(edits: list, version=2, checksum: bool = True, **extra) -> dict:
    from sam.core.exchange import _digest

    doc = {"format": "sam-edits", "version": version, "model": "default", "prompt_format": "chat", "edits": edits}
    if checksum:
        doc["sha256"] = _digest(edits)
    return {**doc, **extra}


def _write(name: str, content) -> Callable[[Path], str]:
    """A file argument: `content` (str, bytes, or a JSON-able object) written to <case dir>/name."""
    def make(d: Path) -> str:
        path = d / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(json.dumps(content), encoding="utf-8")
        return str(path)
    return make


def _sqlite_facts(name: str, table: str = "facts", rows=(("A?", "a"),)) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        con = sqlite3.connect(d / name)
        con.execute(f"CREATE TABLE {table} (question TEXT, answer TEXT)")
        con.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
        con.commit()
        con.close()
        return str(d / name)
    return make


def _dir(name: str) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        (d / name).mkdir()
        return str(d / name)
    return make


Q, A = "What is the capital of Mongolia?", "Ulaanbaatar"
_E = {"question": Q, "target": A}
_LONG_WORDS = " ".join(["word"] * 10_000)  # ~10,000 tokens, 50,000 characters
_ANSWER_70 = " ".join(f"w{i}" for i in range(70))  # over the 64-token answer limit


def _inputs() -> list[tuple]:
    """(name, store: none|hand|base, args (items may be callables making a file), expect, fragment, stdin)."""
    too_long = "x" * 100_001
    rows = [
        # ask / correct / feedback: text arguments, checked before anything loads
        ("ask empty", "none", ["ask", ""], "refuse", "the question is empty"),
        ("ask blank", "none", ["ask", "   "], "refuse", "the question is empty"),
        ("ask whitespace", "none", ["ask", "\t\n \u3000"], "refuse", "the question is empty"),
        ("ask invalid UTF-8", "none", ["ask", b"What is \xff\xfe?"], "refuse", "not valid UTF-8"),
        ("ask 100,001 chars", "none", ["ask", too_long], "refuse", "characters long"),
        ("ask 130,000 chars", "none", ["ask", "y" * 130_000], "refuse", "characters long"),
        ("correct empty question", "none", ["correct", "", A], "refuse", "the question is empty"),
        ("correct empty answer", "none", ["correct", Q, ""], "refuse", "the answer is empty"),
        ("correct blank answer", "none", ["correct", Q, " \t "], "refuse", "the answer is empty"),
        ("correct invalid UTF-8 answer", "none", ["correct", Q, b"Ulaan\xc3\x28"], "refuse", "not valid UTF-8"),
        ("correct invalid UTF-8 question", "none", ["correct", b"\xff?", A], "refuse", "not valid UTF-8"),
        ("correct empty paraphrase", "none", ["correct", Q, A, "-p", ""], "refuse", "a paraphrase is empty"),
        ("correct invalid UTF-8 paraphrase", "none", ["correct", Q, A, "-p", b"\xfe"], "refuse", "not valid UTF-8"),
        ("correct 100,001-char answer", "none", ["correct", Q, too_long], "refuse", "characters long"),
        ("correct 100,001-char question", "none", ["correct", too_long, A], "refuse", "characters long"),
        ("feedback empty question", "none", ["feedback", "", "R", "No, it's X"], "refuse", "the question is empty"),
        ("feedback empty response", "none", ["feedback", Q, "", "No, it's X"], "refuse", "the response is empty"),
        ("feedback empty feedback", "none", ["feedback", Q, "R", ""], "refuse", "the feedback is empty"),
        ("feedback invalid UTF-8", "none", ["feedback", Q, "R", b"No, it's \xff"], "refuse", "not valid UTF-8"),
        ("feedback 100,001 chars", "none", ["feedback", Q, "R", too_long], "refuse", "characters long"),
        ("feedback thanks (no edit)", "none", ["feedback", Q, "Ulaanbaatar", "thanks!"], "work", "no edit"),
        ("feedback 'no idea' (no edit)", "none", ["feedback", Q, "Paris", "no idea"], "work", "no edit"),
        ("feedback 80,000-char reply", "none", ["feedback", Q, "Paris", "No, it's " + "x " * 40_000], "work", ""),
        # edit ids
        ("show abc", "none", ["edits", "show", "abc"], "refuse", "no edit with id 'abc'"),
        ("show 0", "none", ["edits", "show", "0"], "refuse", "no edit with id '0'"),
        ("show 1.5", "none", ["edits", "show", "1.5"], "refuse", "no edit with id '1.5'"),
        ("show 1e3", "none", ["edits", "show", "1e3"], "refuse", "no edit with id '1e3'"),
        ("show 0x10", "none", ["edits", "show", "0x10"], "refuse", "no edit with id '0x10'"),
        ("show 10^20", "none", ["edits", "show", "99999999999999999999"], "refuse", "no edit with id"),
        ("show 2^63", "none", ["edits", "show", "9223372036854775808"], "refuse", "no edit with id"),
        ("show 2^63-1 (empty store)", "none", ["edits", "show", "9223372036854775807"], "refuse", "store is empty"),
        ("show ' 7 '", "none", ["edits", "show", " 7 "], "refuse", "no edit with id"),
        ("show Arabic-Indic digit", "none", ["edits", "show", "\u0661"], "refuse", "no edit with id"),
        ("show -1", "none", ["edits", "show", "-1"], "usage", "No such option"),
        ("show (no id)", "none", ["edits", "show"], "usage", "Missing argument"),
        ("show 99 (not in store)", "hand", ["edits", "show", "99"], "refuse", "no edit with id '99'"),
        ("show 10^20 (store)", "hand", ["edits", "show", "99999999999999999999"], "refuse", "no edit with id"),
        ("revert abc", "none", ["edits", "revert", "abc"], "refuse", "no edit with id 'abc'"),
        ("revert 10^20", "none", ["edits", "revert", "99999999999999999999"], "refuse", "no edit with id"),
        ("revert 0", "none", ["edits", "revert", "0"], "refuse", "no edit with id '0'"),
        ("revert 7 (no store)", "none", ["edits", "revert", "7"], "refuse", "store is empty"),
        ("revert 99 (not in store)", "hand", ["edits", "revert", "99"], "refuse", "no edit with id '99'"),
        ("revert reverted", "hand", ["edits", "revert", "5"], "refuse", "edit 5 is already reverted"),
        ("revert superseded", "hand", ["edits", "revert", "3"], "refuse", "edit 3 is already superseded"),
        ("revert -2", "none", ["edits", "revert", "-2"], "usage", "No such option"),
        # list / export
        ("list --status weird", "none", ["edits", "list", "--status", "weird"], "refuse", "unknown status 'weird'"),
        ("list --status ''", "hand", ["edits", "list", "--status", ""], "refuse", "unknown status ''"),
        ("list all", "hand", ["--json", "edits", "list", "--status", "all"], "work", '"id": 5'),
        ("export without a store", "none", ["edits", "export", "out.json"], "refuse", "no sam store at"),
        ("export onto a folder", "hand", ["edits", "export", _dir("folder")], "refuse", "Is a directory"),
        ("export under a file", "hand", ["edits", "export", lambda d: str(Path(_write("f.txt", "x")(d)) / "e.json")],
         "refuse", "f.txt"),
        # import files (validated before any model loads)
        ("import missing file", "none", ["edits", "import", "missing.json"], "refuse", "no such file"),
        ("import a folder", "none", ["edits", "import", _dir("folder.json")], "refuse", "no such file"),
        ("import not JSON", "none", ["edits", "import", _write("e.json", "{oops")], "refuse", "is not JSON"),
        ("import empty file", "none", ["edits", "import", _write("e.json", "")], "refuse", "is not JSON"),
        ("import binary", "none", ["edits", "import", _write("e.json", b"\x89PNG\xff\xfe\x00")], "refuse",
         "not UTF-8"),
        ("import JSON list", "none", ["edits", "import", _write("e.json", [])], "refuse", "not a sam edits export"),
        ("import no format", "none", ["edits", "import", _write("e.json", {"edits": []})], "refuse",
         "not a sam edits export"),
        ("import other format", "none", ["edits", "import", _write("e.json", {"format": "x", "edits": []})],
         "refuse", "not a sam edits export"),
        ("import no version", "none", ["edits", "import", _write("e.json", {"format": "sam-edits", "edits": []})],
         "refuse", "version"),
        ("import version 3", "none", ["edits", "import", _write("e.json", _export_doc([_E], version=3))], "refuse",
         "version"),
        ("import version '2'", "none", ["edits", "import", _write("e.json", _export_doc([_E], version="2"))],
         "refuse", "version"),
        ("import edits not a list", "none", ["edits", "import", _write("e.json", {**_export_doc([]), "edits": {}})],
         "refuse", "edits"),
        ("import edit not an object", "none", ["edits", "import", _write("e.json", _export_doc(["x"]))], "refuse",
         "edits.0"),
        ("import list question", "none", ["edits", "import", _write("e.json", _export_doc([{**_E, "question": [Q]}]))],
         "refuse", "edits.0.question"),
        ("import v1 list prompt", "none", ["edits", "import", _write("e.json", _export_doc(
            [{"prompt": [Q], "target": A}], version=1, checksum=False))], "refuse", "edits.0.question"),
        ("import boolean importance", "none", ["edits", "import", _write("e.json", _export_doc(
            [{"prompt": Q + "\n", "target": A, "importance": True}], version=1, checksum=False))], "refuse",
         "edits.0.importance"),
        ("import string importance", "none",
         ["edits", "import", _write("e.json", _export_doc([{**_E, "importance": "high"}]))], "refuse",
         "edits.0.importance"),
        ("import numeric-string importance", "none",
         ["edits", "import", _write("e.json", _export_doc([{**_E, "importance": "1.0"}]))], "refuse", "importance"),
        ("import negative importance", "none",
         ["edits", "import", _write("e.json", _export_doc([{**_E, "importance": -1}]))], "refuse", "importance"),
        ("import NaN importance", "none",
         ["edits", "import", _write("e.json", json.dumps(_export_doc([{**_E, "importance": float("nan")}])))],
         "refuse", "importance"),
        ("import missing question", "none", ["edits", "import", _write("e.json", _export_doc([{"target": A}]))],
         "refuse", "edits.0.question"),
        ("import missing target", "none", ["edits", "import", _write("e.json", _export_doc([{"question": Q}]))],
         "refuse", "edits.0.target"),
        ("import blank target", "none", ["edits", "import", _write("e.json", _export_doc([{**_E, "target": " "}]))],
         "refuse", "must not be blank"),
        ("import 4,001-char question", "none",
         ["edits", "import", _write("e.json", _export_doc([{**_E, "question": "q" * 4001}]))], "refuse",
         "edits.0.question"),
        ("import unknown status", "none",
         ["edits", "import", _write("e.json", _export_doc([{**_E, "status": "deleted"}]))], "refuse", "status"),
        ("import string id", "none", ["edits", "import", _write("e.json", _export_doc([{**_E, "id": "abc"}]))],
         "refuse", "edits.0.id"),
        ("import wrong checksum", "none",
         ["edits", "import", _write("e.json", {**_export_doc([_E]), "sha256": "0" * 64})], "refuse",
         "checksum mismatch"),
        ("import v2 without checksum", "none",
         ["edits", "import", _write("e.json", _export_doc([_E], checksum=False))], "refuse", "checksum mismatch"),
        ("import nested 100,000 deep", "none", ["edits", "import", _write("e.json", "[" * 100_000 + "]" * 100_000)],
         "refuse", "nested too deeply"),
        ("import trailing garbage", "none",
         ["edits", "import", _write("e.json", json.dumps(_export_doc([_E])) + "}garbage")], "refuse", "is not JSON"),
        ("import --dry-run wrong checksum", "none",
         ["edits", "import", "--dry-run", _write("e.json", {**_export_doc([_E]), "sha256": "1" * 64})], "refuse",
         "checksum mismatch"),
        # fix-facts sources
        ("facts .txt", "none", ["fix-facts", _write("facts.txt", "Q?,A")], "refuse", "use .jsonl, .csv or .sqlite"),
        ("facts missing", "none", ["fix-facts", "nothing.jsonl"], "refuse", "does not exist"),
        ("facts folder", "none", ["fix-facts", _dir("facts.jsonl")], "refuse", "does not exist"),
        ("facts empty jsonl", "none", ["fix-facts", _write("f.jsonl", "\n\n")], "refuse", "holds no facts"),
        ("facts bad JSON line", "none", ["fix-facts", _write("f.jsonl", '{"question": "Q?", "answer": "A"}\n{bad\n')],
         "refuse", "f.jsonl:2: not JSON"),
        ("facts list row", "none", ["fix-facts", _write("f.jsonl", '["Q?", "A"]\n')], "refuse", "want an object"),
        ("facts missing answer", "none", ["fix-facts", _write("f.jsonl", '{"question": "Q?"}\n')], "refuse",
         "needs one of the text columns answer, target"),
        ("facts list answer", "none", ["fix-facts", _write("f.jsonl", '{"question": "Q?", "answer": ["A"]}\n')],
         "refuse", "needs one of the text columns answer, target"),
        ("facts csv wrong headers", "none", ["fix-facts", _write("f.csv", "q,a\nQ?,A\n")], "refuse",
         "needs one of the text columns prompt, question"),
        ("facts csv header only", "none", ["fix-facts", _write("f.csv", "question,answer\n")], "refuse",
         "holds no facts"),
        ("facts latin-1 csv", "none", ["fix-facts", _write("f.csv", "question,answer\nCaf\xe9?,x\n".encode("latin-1"))],
         "refuse", "not UTF-8"),
        ("facts sqlite not a database", "none", ["fix-facts", _write("f.sqlite", "not a database at all")], "refuse",
         "cannot read table"),
        ("facts sqlite no table", "none", ["fix-facts", _sqlite_facts("f.sqlite", table="trivia")], "refuse",
         "cannot read table 'facts'"),
        ("facts bad table name", "none", ["fix-facts", _sqlite_facts("f.sqlite"), "--table", "facts; DROP TABLE facts"],
         "refuse", "bad table name"),
        ("facts --limit 0", "none", ["fix-facts", _write("f.jsonl", '{"question": "Q?", "answer": "A"}\n'), "--limit",
                                     "0"], "usage", "--limit"),
        ("facts --limit abc", "none", ["fix-facts", "f.jsonl", "--limit", "abc"], "usage", "--limit"),
        # unknown commands and options: usage errors, exit 2
        ("unknown command", "none", ["frobnicate"], "usage", "No such command 'frobnicate'"),
        ("unknown edits command", "none", ["edits", "frobnicate"], "usage", "No such command 'frobnicate'"),
        ("unknown global option", "none", ["--frobnicate", "doctor"], "usage", "No such option: --frobnicate"),
        ("unknown command option", "none", ["ask", "--frobnicate", Q], "usage", "No such option: --frobnicate"),
        ("missing answer argument", "none", ["correct", Q], "usage", "Missing argument"),
        ("extra argument", "none", ["ask", Q, "extra"], "usage", "unexpected extra argument"),
        ("option without value", "none", ["doctor", "--top-k"], "usage", "--top-k"),
        ("paraphrase without value", "none", ["correct", Q, A, "-p"], "usage", "-p"),
        ("flag with a value", "none", ["doctor", "--check=yes"], "usage", "--check"),
        ("-h", "none", ["-h"], "usage", "No such option: -h"),
        ("--top-k text", "none", ["--top-k", "many", "doctor"], "usage", "--top-k"),
        ("--json=1", "none", ["--json=1", "doctor"], "usage", "--json"),
    ]
    return [(*r, None) for r in rows]


def _model_inputs() -> list[tuple]:
    """Inputs that get past the command line: the model loads first (slow cases, on the real store)."""
    arabic_q, arabic_a = "ما هي عاصمة منغوليا؟", "أولان باتور"
    cjk_q, cjk_a = "蒙古的首都是哪里？", "乌兰巴托"
    nul_facts = _write("f.jsonl", json.dumps({"question": "What is\x002+2?", "answer": "4"}) + "\n")
    nul_import = _write("e.json", _export_doc([{"question": "What is\x00 the capital?", "target": "X"}]))
    return [
        ("ask 50,000 chars", "base", ["ask", "a" * 50_000], "refuse", "tokens", None),
        ("ask 10,000 tokens", "base", ["ask", _LONG_WORDS], "refuse", "tokens", None),
        ("correct 10,000-token question", "base", ["correct", _LONG_WORDS, A], "refuse", "tokens", None),
        ("correct 10,000-token answer", "base", ["correct", NEW_Q, _LONG_WORDS], "refuse", "tokens long", None),
        ("correct 70-token answer", "base", ["correct", NEW_Q, _ANSWER_70], "refuse", "tokens long", None),
        ("chat 120,001-char line", "base", ["chat"], "work", "characters long", ("z" * 120_001 + "\n").encode()),
        ("chat invalid UTF-8 stdin", "base", ["chat"], "refuse", "not valid UTF-8", b"What is \xff?\n"),
        ("chat NUL in a line", "base", ["chat"], "work", "NUL", b"What is\x00 2+2?\n"),
        ("ask Arabic", "base", ["--json", "ask", "ما هي عاصمة فرنسا؟"], "work", "answer", None),
        ("ask CJK", "base", ["--json", "ask", "法国的首都是哪里？"], "work", "answer", None),
        ("ask emoji", "base", ["--json", "ask", "What is 🍎 in French? 🇫🇷"], "work", "answer", None),
        ("ask control characters", "base", ["--json", "ask", "What is\tthe capital\x1b[31m of France?\x07"],
         "work_or_refuse", "", None),
        ("ask carriage return", "base", ["--json", "ask", "What is the capital\r of France?"], "work_or_refuse", "",
         None),
        ("ask bidi and zero-width", "base", ["--json", "ask", "\u202eWhat\u200b is the capital of France?\u200d"],
         "work_or_refuse", "", None),
        ("correct Arabic", "base", ["--json", "correct", arabic_q, arabic_a], "work_or_refuse", "", None),
        ("correct CJK", "base", ["--json", "correct", cjk_q, cjk_a], "work_or_refuse", "", None),
        ("correct control characters", "base", ["--json", "correct", "What is\tthe capital of Kazakhstan?\x1b",
                                                 "Astana\x07"], "work_or_refuse", "", None),
        ("fix-facts NUL question", "base", ["fix-facts", nul_facts], "refuse", "NUL", None),
        ("import NUL question", "base", ["edits", "import", nul_import], "report", "not imported", None),
    ]


def _input_case(name, store_kind, args, expect, fragment, stdin, slow=False) -> Case:
    def run(env: Env, d: Path) -> Outcome:
        t0, out = time.perf_counter(), Outcome("input", name, expect)
        store = {"none": d / "store", "hand": None, "base": None}[store_kind]
        if store_kind == "hand":
            store = copy_store(env.hand(), d / "store")
        elif store_kind == "base":
            store = copy_store(env.base()["store"], d / "store")
        before = snapshot(store) if store_kind != "none" else None
        argv = [a(d) if callable(a) else a for a in args]
        proc = sam(store, *argv, stdin=stdin, cwd=d)
        limit = REFUSAL_S if store_kind == "base" else PRE_MODEL_S
        problems = _expect(out, proc, expect, fragment, limit=limit)
        if store_kind != "base" and proc.model:
            problems.append("the model was loaded for input refused on the command line")
        if store_kind == "none" and store.exists():
            problems.append("a store was created")
        if before is not None:
            after = snapshot(store)
            edited = proc.rc == 0 and expect in ("work", "work_or_refuse") and "correct" in argv[:2]
            if edited:  # an edit that worked: one new active row holding exactly what was asked
                from sam.core.prompts import normalize

                q, a = argv[-2], argv[-1]
                new = [r for i, r in after["rows"].items() if i not in before["rows"]]
                if len(new) != 1 or normalize(new[0]["question"]) != normalize(q) or \
                        normalize(new[0]["target"]) != normalize(a):
                    problems.append(f"the edit was not stored as asked: {new}")
                after = {**after, "rows": {i: r for i, r in after["rows"].items() if i in before["rows"]}}
            p, lost = compare_rows(before, after)  # nothing else written, nothing lost
            problems += p
            out.data_lost |= lost
        return _finish(out, problems, t0, None if problems else f"{proc.brief()}")
    return Case("input", name, run, slow=slow)


def input_cases() -> list[Case]:
    return [_input_case(*row) for row in _inputs()] + [_input_case(*row, slow=True) for row in _model_inputs()]


# === the table ==============================================================================================
def all_cases() -> list[Case]:
    return kill_cases() + corrupt_cases() + setting_cases() + input_cases()


# The cases CI's default test suite runs (no model, about a minute on 2 cores): one or more of each kind.
# The others run with `pytest -m slow` and in scripts/fault_injection.py.
DEFAULT_SUITE = frozenset({
    "kill/export@atomic.before_rename", "kill/upgrade@store.upgrade.mid", "kill/upgrade@db.commit.after",
    "corrupt/db-deleted:list", "corrupt/db-empty:upgrade", "corrupt/db-header:list", "corrupt/db-page:doctor",
    "corrupt/delta-checksum:repair", "corrupt/fp-garbled:doctor", "corrupt/lock-held:upgrade",
    "corrupt/lock-held:list", "corrupt/export-tampered:import",
    *(f"setting/{name}" for name in (
        "MEMOIR_SIMILARITY_THRESHOLD=2", "MEMOIR_SIMILARITY_THRESHOLD=-1", "MEMOIR_SIMILARITY_THRESHOLD=nan",
        "MEMOIR_TOP_K=0", "MEMOIR_TOP_K=99999", "MEMOIR_TOP_K=abc", "MEMOIR_LEARNING_RATE=nan",
        "MEMOIR_LEARNING_RATE=inf", "MEMOIR_LEARNING_RATE=-1", "MEMOIR_LEARNING_RATE=0", "MEMOIR_MAX_STEPS=0",
        "MEMOIR_LAYER=99", "MEMOIR_LR=5", "MEMOIR_PROMPT_FORMAT=bogus")),
    *(f"input/{name}" for name in (
        "ask empty", "ask whitespace", "ask invalid UTF-8", "ask 130,000 chars", "correct blank answer",
        "correct invalid UTF-8 answer", "correct empty paraphrase", "feedback empty response",
        "feedback 80,000-char reply", "show 10^20", "revert 7 (no store)", "import binary", "import list question",
        "import string importance", "import missing target", "import version 3", "import not JSON",
        "import wrong checksum", "import nested 100,000 deep", "facts .txt", "facts bad JSON line",
        "facts list answer", "facts csv wrong headers", "facts latin-1 csv", "facts sqlite not a database",
        "facts bad table name", "unknown command", "unknown command option", "missing answer argument",
        "extra argument", "show -1", "flag with a value")),
})


def tier(case: Case) -> str:
    """default (CI's default suite), full (no model, slow suite) or model (loads the real model)."""
    return "model" if case.slow else "default" if case.id in DEFAULT_SUITE else "full"


def run_cases(cases: list[Case], env: Env, jobs: int = 2, progress: Callable[[Outcome], None] | None = None
              ) -> list[Outcome]:
    """Run the cases (`jobs` at a time: each is mostly one-thread subprocesses), in table order."""
    def one(case: Case) -> Outcome:
        t0 = time.perf_counter()
        try:
            out = case.run(env, env.case_dir(case))
        except Exception as exc:  # noqa: BLE001 - a harness or sam failure is a failed case, not a crash
            out = Outcome(case.group, case.name, "?", detail=f"the case raised {type(exc).__name__}: {exc}",
                          problems=[repr(exc)], seconds=round(time.perf_counter() - t0, 1))
        out.id = case.id
        if progress:
            progress(out)
        return out

    if any(c.slow for c in cases):
        env.base()  # built once, before the workers need it
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, cases))


def summary(outcomes: list[Outcome]) -> dict:
    groups: dict[str, dict] = {}
    for o in outcomes:
        g = groups.setdefault(o.group, {"cases": 0, "passed": 0, "expected_refusals": 0, "refused_cleanly": 0,
                                        "data_lost": 0})
        g["cases"] += 1
        g["passed"] += o.ok and not o.data_lost
        g["expected_refusals"] += o.expect in ("refuse", "usage")
        g["refused_cleanly"] += bool(o.refused_cleanly) and o.expect in ("refuse", "usage")
        g["data_lost"] += o.data_lost
    total = {k: sum(g[k] for g in groups.values()) for k in ("cases", "passed", "expected_refusals",
                                                                 "refused_cleanly", "data_lost")}
    return {**total, "groups": groups, "failed": [asdict(o) for o in outcomes if not o.ok or o.data_lost],
            "outcomes": [asdict(o) for o in outcomes]}
