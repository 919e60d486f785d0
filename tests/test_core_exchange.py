"""The portable edit set (sam/core/exchange.py): format v2 with sha256, v1 read, every problem one line."""

from __future__ import annotations

import json

import pytest
import torch

from sam.constants import EXPORT_FORMAT, EXPORT_VERSION
from sam.core.exchange import read_export, write_export
from sam.core.store import Store
from sam.errors import InvalidInputError

IDENTITY = {"model": "tiny:abc", "layer": 1, "d_ff": 16, "d_model": 4, "top_k": 2, "fingerprinter": "f00d"}
EDITS = [("What is the capital of Australia?", "Canberra"), ("Who wrote Émile?", "Jean-Jacques Rousseau"),
         ("Quelle heure est-il ?", "midi ☀")]


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    with Store(root) as st:
        st.claim(IDENTITY)
        for n, (q, t) in enumerate(EDITS):
            st.add_edit(prompt=f"<chat>{q}</chat>", question=q, target=t, cols=torch.tensor([n, n + 1]),
                        delta=torch.ones(4, 2), source="user" if n else "zsre", importance=1.0 + n, steps=n, loss=0.1)
        st.set_status(2, "reverted")
    return root


def export(store, path, **kw) -> int:
    with Store(store, read_only=True) as st:
        return st.export(path, model="tiny", prompt_format="chat", **kw)


def test_export_then_import_round_trips_the_records(store, tmp_path):
    path = tmp_path / "out" / "edits.json"
    assert export(store, path) == 2  # the active edits
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert (doc["format"], doc["version"], doc["model"], doc["prompt_format"]) == (EXPORT_FORMAT, EXPORT_VERSION,
                                                                                  "tiny", "chat")
    assert len(doc["sha256"]) == 64 and doc["exported"].endswith("+00:00")
    got = read_export(path)
    with Store(store, read_only=True) as st:
        want = st.edits("active")
    assert [(e.id, e.question, e.target, e.source, e.importance, e.created, e.status) for e in got] == \
        [(r.id, r.question, r.target, r.source, r.importance, r.created, r.status) for r in want]
    assert "midi ☀" in path.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert not list(path.parent.glob(".*.tmp"))
    assert export(store, tmp_path / "all.json", include_reverted=True) == 3
    assert [e.status for e in read_export(tmp_path / "all.json")] == ["active", "reverted", "active"]


def test_an_empty_store_exports_an_empty_set(tmp_path):
    with Store(tmp_path / "s") as st:
        st.claim(IDENTITY)
        assert st.export(tmp_path / "e.json", model="m", prompt_format="line") == 0
    assert read_export(tmp_path / "e.json") == []


def edit_file(path, change) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("change", [
    lambda d: d["edits"][0].update(target="Sydney"),
    lambda d: d["edits"][1].update(question="Who wrote Emile?"),
    lambda d: d["edits"].pop(),
    lambda d: d["edits"].append({"question": "q", "target": "t"}),
    lambda d: d["edits"][0].update(importance=9.0),
    lambda d: d.pop("sha256"),
])
def test_a_tampered_file_fails_its_checksum(store, tmp_path, change):
    path = tmp_path / "edits.json"
    export(store, path)
    edit_file(path, change)
    with pytest.raises(InvalidInputError, match="checksum") as err:
        read_export(path)
    assert "\n" not in str(err.value)


def test_the_checksum_does_not_depend_on_layout(store, tmp_path):
    path = tmp_path / "edits.json"
    export(store, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["edits"] = [dict(reversed(list(e.items()))) for e in doc["edits"]]  # key order
    doc["comment"] = "re-indented by hand"  # unknown top-level keys are ignored
    path.write_text(json.dumps(doc, indent=7, ensure_ascii=True), encoding="utf-8")
    assert [e.target for e in read_export(path)] == ["Canberra", "midi ☀"]


def write_raw(path, edits, **top) -> None:
    doc = {"format": EXPORT_FORMAT, "version": 1, "edits": edits, **top}
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("edit,where", [
    ({"prompt": ["a", "list"], "target": "x"}, "question"),
    ({"question": ["a", "list"], "target": "x"}, "question"),
    ({"question": "q", "target": "x", "importance": "high"}, "importance"),
    ({"question": "q", "target": "x", "importance": float("nan")}, "importance"),
    ({"question": "q", "target": "x", "importance": -1.0}, "importance"),
    ({"question": "q"}, "target"),
    ({"question": "q", "target": ""}, "target"),
    ({"question": "q", "target": 42}, "target"),
    ({"question": "q", "target": "x" * 4001}, "target"),
    ({"question": "q", "target": "x", "status": "deleted"}, "status"),
    ({"question": "q", "target": "x", "id": "7"}, "id"),
    ({"question": "   ", "target": "x"}, "blank"),
    ("just a string", "edits.0"),
])
def test_schema_errors_are_one_line_invalid_input(tmp_path, edit, where):
    path = tmp_path / "bad.json"
    write_raw(path, [{"question": "fine", "target": "ok"}, edit][1:])
    with pytest.raises(InvalidInputError) as err:
        read_export(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and where in msg, msg


@pytest.mark.parametrize("content,match", [
    (b"{not json", "not JSON"),
    (b"", "not JSON"),
    (b'{"format": "sam-edits", "version": 1, "edits": [{"question": "caf\xe9", "target": "x"}]}', "UTF-8"),
    (b"\xff\xfe\x00\x00", "UTF-8"),
    (json.dumps({"format": "other", "version": 2, "edits": []}).encode(), "not a sam edits export"),
    (json.dumps([{"question": "q", "target": "t"}]).encode(), "not a sam edits export"),
    (json.dumps({"version": 2, "edits": []}).encode(), "not a sam edits export"),
    (json.dumps({"format": "sam-edits", "version": 3, "edits": []}).encode(), "version"),
    (json.dumps({"format": "sam-edits", "version": 2}).encode(), "edits"),
    (json.dumps({"format": "sam-edits", "version": 2, "edits": {"q": "t"}}).encode(), "edits"),
])
def test_unreadable_files_are_one_line_invalid_input(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=match) as err:
        read_export(path)
    assert "\n" not in str(err.value)


def test_a_missing_file_or_a_folder_is_invalid_input(tmp_path):
    for p in (tmp_path / "absent.json", tmp_path):
        with pytest.raises(InvalidInputError, match="no such file"):
            read_export(p)


def test_a_version_1_file_is_read(tmp_path):
    """sam 0.1: `prompt` in the line format ("question\\n"), no question field, no sha256, integer importance."""
    path = tmp_path / "v1.json"
    write_raw(path, [{"id": 3, "prompt": "What is the capital of Australia?\n", "target": "Canberra", "source": "user",
                      "importance": 2, "created": "2025-01-01T00:00:00+00:00", "status": "active", "expert": 0},
                     {"prompt": "Who?\n", "target": "Me", "status": "reverted"}],
              model="default", exported="2025-01-02T00:00:00+00:00")
    got = read_export(path)
    assert [(e.id, e.question, e.target, e.importance, e.status) for e in got] == \
        [(3, "What is the capital of Australia?", "Canberra", 2.0, "active"), (None, "Who?", "Me", 1.0, "reverted")]
    assert got[1].source == "import"


def test_write_export_accepts_records_and_checksums_them(tmp_path):
    class R:  # any object with the record's attributes
        id, question, target, source, importance, created, status = 1, "q?", "a", "user", 1.0, None, "active"

    write_export(tmp_path / "x.json", [R()], model="m", prompt_format="line")
    (e,) = read_export(tmp_path / "x.json")
    assert (e.question, e.target, e.created) == ("q?", "a", None)


def test_export_is_utf8_whatever_the_locale(tmp_path):
    """Under a C locale without UTF-8 coercion Python's default text encoding is ASCII."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom sam.core.exchange import read_export, write_export\n"
            "class R:\n    id, question, target, source, importance, created, status = "
            "1, '\\u00c9mile?', 'midi \\u2600', 'user', 1.0, None, 'active'\n"  # escapes: argv is ASCII here
            "write_export(sys.argv[1], [R()], model='m', prompt_format='line')\n"
            "assert read_export(sys.argv[1])[0].target == 'midi \\u2600'\n")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
           "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.json")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "midi ☀" in (tmp_path / "x.json").read_text(encoding="utf-8")
