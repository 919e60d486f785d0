"""Every `sam ...` command the README and docs/ show exists, with every --option it is shown with.

The command lines are taken from the fenced code blocks of README.md and docs/*.md (python blocks
aside) and from inline code spans that start with `sam `. Each is walked through the real command
tree: a word after a group must be one of its subcommands, and each `--option` must appear in the
`--help` of the command it is given to (a benchmark's argparse help for `sam bench ...`). Alternatives
written `list | show ID | revert ID` (or `chat / ask`) are siblings under the same group. When the docs
and the CLI diverge this fails, listing every line that no longer works.
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sam.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
runner = CliRunner()

_FENCE = re.compile(r"^```(\w*)\s*$")
_START = re.compile(r"(?:(?<=\s)|^)(?:[\w.~-]*/)*sam(?=\s)")  # `sam`, `.venv/bin/sam`; not `sam/cli.py`
_OPTION = re.compile(r"^\[?(--[a-z][a-z0-9-]*)")
_SPAN = re.compile(r"`(sam [^`]+)`")


def doc_commands() -> list[tuple[str, str]]:
    """(where, command line starting after `sam`) for every sam command the docs show."""
    found = []
    for doc in DOCS:
        fence = None
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            where = f"{doc.relative_to(REPO)}:{n}"
            m = _FENCE.match(line.strip())
            if m:
                fence = None if fence is not None else (m.group(1) or "text")
                continue
            if fence is None:
                found += [(where, span[len("sam "):]) for span in _SPAN.findall(line)]
                continue
            if fence == "python":
                continue
            code = re.split(r"\s#", " " + line)[0]  # comments (their examples) aside
            for part in re.split(r"&&|;", code):
                starts = [m.end() for m in _START.finditer(part)]
                ends = [m.start() for m in _START.finditer(part)][1:] + [len(part)]
                found += [(where, part[s:e].strip()) for s, e in zip(starts, ends)]
    return found


def _takes_value(command, option: str) -> bool:
    for param in getattr(command, "params", []):
        if option in getattr(param, "opts", []):
            return not getattr(param, "is_flag", False)
    return False


@lru_cache(maxsize=None)
def help_text(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], terminal_width=400)
    assert result.exit_code == 0, f"`sam {' '.join(path)} --help` exited {result.exit_code}: {result.output[-500:]}"
    return result.output


def check(line: str) -> list[str]:
    """What is wrong with one documented command line (nothing: an empty list)."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    root = typer.main.get_command(app)
    problems: list[str] = []
    path: list[str] = []
    node = root
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("|", "/") and path:  # an alternative: a sibling of the last command
            path, node = path[:-1], root
            for name in path:
                node = node.commands[name]
            i += 1
            continue
        if tok == "..." or tok.startswith("("):  # "and so on", or a remark in parentheses: the rest is prose
            break
        children = getattr(node, "commands", None)
        if children is not None and re.fullmatch(r"[a-z][a-z-]*(\|[a-z][a-z-]*)+", tok):  # edit|chat|ask
            problems += [f"no command `sam {' '.join([*path, name])}` (`sam {' '.join(path)}` has: "
                         f"{', '.join(sorted(children))})" for name in tok.split("|") if name not in children]
            break
        if children is not None and re.fullmatch(r"[a-z][a-z-]*", tok):
            if tok not in children:
                problems.append(f"no command `sam {' '.join([*path, tok])}` (`sam {' '.join(path)}` has: "
                                f"{', '.join(sorted(children))})")
                return problems
            path.append(tok)
            node = children[tok]
        else:
            m = _OPTION.match(tok)
            if m and m.group(1) not in help_text(tuple(path)):
                problems.append(f"`sam {' '.join(path)}` has no option {m.group(1)}")
            if m and _takes_value(node, m.group(1)) and "=" not in tok:
                i += 1  # its value is not a subcommand
        i += 1
    return problems


COMMANDS = doc_commands()


def test_the_docs_show_sam_commands():
    """The parser finds the README's command block (else the check below would pass on nothing)."""
    lines = [line for _, line in COMMANDS]
    assert any(line.startswith("chat") for line in lines) and any(line.startswith("correct") for line in lines)
    assert any(line.startswith("edits ") for line in lines) and any(line.startswith("bench edit") for line in lines)
    assert len(COMMANDS) >= 15


def test_every_documented_command_and_option_exists():
    problems = [f"{where}: `sam {line}`: {p}" for where, line in COMMANDS for p in check(line)]
    assert not problems, "the docs show commands or options the CLI does not have:\n" + "\n".join(problems)


@pytest.mark.parametrize("line,fragment", [
    ("edits frobnicate ID", "no command `sam edits frobnicate`"),
    ("correct Q A --bogus-option", "has no option --bogus-option"),
    ("edits list [--status all] | show ID | rewind ID", "no command `sam edits rewind`"),
    ("bench edit --sizes 1,10 --no-such-flag", "has no option --no-such-flag"),
    ("bench edit|chat|rewind ...   (each takes --help)", "no command `sam bench rewind`"),
])
def test_the_check_catches_divergence(line, fragment):
    assert any(fragment in p for p in check(line)), check(line)


def test_the_check_accepts_the_real_forms():
    for line in ("edits list [--status active|reverted|all] | show ID | revert ID | export FILE [--all] | "
                 "import FILE [--dry-run]", "chat / ask / correct / feedback ...", "verify --phase a|b|c|all",
                 "correct \"Q?\" Jupiter [-p \"Which?\"] --keep-failed",
                 "--store /tmp/s --model default --json ask \"Q?\"", "bench edit|chat|ask ...   (each takes --help)"):
        assert check(line) == [], (line, check(line))


def test_every_documented_setting_name_is_known():
    """A `MEMOIR_*` / `SAM_*` name the docs give is one sam reads (an unknown MEMOIR_* name is refused)."""
    from sam.config import KNOWN_ENV

    known = KNOWN_ENV | {"SAM_HOME", "SAM_MODEL_CACHE", "SAM_THREADS", "SAM_FAILPOINT"}
    problems = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for name in re.findall(r"`((?:MEMOIR|SAM)_[A-Z_]+)(?:=[^`]*)?`", line):
                if name not in known:
                    problems.append(f"{doc.relative_to(REPO)}:{n}: {name}")
    assert not problems, "the docs name settings sam does not read (refused as unknown):\n" + "\n".join(problems)
