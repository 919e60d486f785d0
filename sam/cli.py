"""The `sam` command line: chat with a local LM, correct it, and keep the corrections.

Thin commands over the library (sam.core) and the skills (sam.orchestration). Every expected
failure (bad input or setting, a locked, read-only or damaged store, a missing model) is one line
on stderr and exit 1; a usage error (unknown option, missing argument) is one line and exit 2.
Heavy imports (torch, the editor, benchmarks) happen inside the commands so `sam --help` is fast.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sam.errors import InvalidInputError, SamError

_OWNS_PROCESS = False  # set by main(): the process ends with the command (not a test's CliRunner)

app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
                  help="[bold]sam[/bold]: an assistant that learns from your corrections, for life.")
edits_app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True,
                        help="List, show, revert, export and import edits.")
bench_app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True,
                        help="Benchmarks: editing, chat, startup, and the research architectures.")
demo_app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True, help="Demonstrations.")
app.add_typer(edits_app, name="edits")
app.add_typer(bench_app, name="bench")
app.add_typer(demo_app, name="demo")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line, never wrapped

# Unrelated questions re-asked after every edit: an edit must leave their answers alone.
CONTROL_QUESTIONS = ["What is the capital of France?", "How many days are there in a week?"]
MAX_CHARS = 100_000  # longer text cannot fit any model here; refused before anything loads


@dataclass
class State:
    settings: Any  # sam.config.Settings
    json: bool
    verbose: bool
    debug: bool

    @property
    def store(self) -> Path:
        return self.settings.storage_dir.expanduser()


# --- shared plumbing -----------------------------------------------------------------------------
def _one_line(message: str) -> str:
    return " ".join(str(message).splitlines())


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {escape(_one_line(message))}")
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Expected failures -> one line and exit 1."""
    import sqlite3

    from pydantic import ValidationError

    from sam.config import setting_error

    try:
        yield
    except (typer.Exit, typer.Abort, click.exceptions.Exit):
        raise
    except SamError as exc:
        _fail(str(exc))
    except sqlite3.DatabaseError as exc:  # damage the store layer did not name (a bad page under a query)
        _fail(f"the store's database is damaged ({exc}): `sam doctor --check` reports; restore edits.sqlite from "
              f"a backup")
    except ValidationError as exc:
        _fail(setting_error(exc))
    except PermissionError as exc:
        _fail(f"permission denied: {exc.filename or exc}")
    except OSError as exc:  # a rename names its target (filename2), not the temp file it came from
        where = exc.filename2 or exc.filename
        _fail(f"{exc.strerror or exc}{': ' + str(where) if where else ''}")
    except KeyboardInterrupt:
        _fail("interrupted")


def _state(ctx: typer.Context) -> State:
    return ctx.find_root().obj


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _text(value: str, what: str) -> str:
    """A command-line text: non-empty, valid UTF-8, no NUL, not absurdly long (checked before any load)."""
    if not value or not value.strip():
        _fail(f"{what} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(f"{what} is not valid UTF-8")
    if "\x00" in value:
        _fail(f"{what} contains a NUL character")
    if len(value) > MAX_CHARS:
        _fail(f"{what} is {len(value):,} characters long; the limit is {MAX_CHARS:,}")
    return value


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Importing torch and transformers and building the model make millions of objects that live until exit and
    almost no garbage: the cyclic collector would only walk them again and again (0.9 s of a `sam ask`). It is
    paused meanwhile; when main() owns the process they are then frozen (never walked again), else the
    collector is left as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _OWNS_PROCESS:
            gc.freeze()
        if enabled:
            gc.enable()


def _wait_passively() -> None:
    """For a command that only answers: OpenMP's idle worker threads then sleep instead of spinning. An answer
    is a few hundred small products in a row; on 2 cores shared with another busy process the spinning thread
    and the working one took turns, and one greedy answer took 5.5 s instead of 0.7 s, while on an idle machine
    passive waiting costs nothing measurable (training, whose larger products it slows by about 10%, keeps
    the default). libgomp reads the variable once, when torch loads; a value the user set wins."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _open_editor(state: State, read_only: bool):
    with _collector_paused():
        from sam.core.editor import MemoirEditor

        s = state.settings
        return MemoirEditor.open(state.store, model=s.model, device=s.device, config=s.editor, read_only=read_only,
                                 model_cache=s.model_cache, permutation_file=s.permutation_file,
                                 prompt_format=s.prompt_format, verbose=state.verbose)


def _session(state: State, read_only: bool, system: str | None = None, keep_failed: bool = False):
    from sam.orchestration.session import ChatSession
    from sam.orchestration.skill import SkillContext

    context = SkillContext(editor_factory=lambda: _open_editor(state, read_only), store_dir=state.store,
                           min_edit_confidence=state.settings.min_edit_confidence,
                           control_questions=list(CONTROL_QUESTIONS), system_prompt=system, keep_failed=keep_failed)
    return ChatSession(context)


@contextmanager
def _chat_session(state: State, read_only: bool, **kwargs) -> Iterator[Any]:
    session = _session(state, read_only, **kwargs)
    try:
        yield session
    finally:
        session.context.close()


def _fail_reply(reply, state: State) -> None:
    """A failed request: its message, and with --debug the traceback of a skill that crashed."""
    if state.debug and reply.uif is not None:
        for tb in reply.uif.tracebacks:
            err_console.print(tb, markup=False)
    _fail(reply.text)


def _render_verification(reply) -> None:
    v, m = reply.data.get("verification", {}), reply.data.get("metrics") or {}
    table = Table(title=f"edit #{reply.data.get('edit_id')} — {v.get('verdict', '?')}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    if v.get("replaces"):
        table.add_row("replaces", f"edit #{v['replaces']['id']}: '{escape(v['replaces']['target'])}' (/undo brings it back)")
    table.add_row("answer before", escape(str(v.get("answer_before"))))
    table.add_row("answer after", escape(str(v.get("answer_after"))))
    table.add_row("memory fires", "yes" if v.get("memory_fired") else "no")
    for p in v.get("paraphrases", []):
        table.add_row("paraphrase", f"{'ok' if p['ok'] else 'MISS'}: {escape(p['answer'])}")
    controls = v.get("controls", [])
    if controls:
        table.add_row("unrelated questions", f"{sum(c['unchanged'] for c in controls)}/{len(controls)} unchanged")
    table.add_row("training", f"{m.get('steps')} steps, loss {m.get('loss')}, {m.get('seconds')} s")
    table.add_row("confidence", f"{v.get('confidence', 0):.2f}")
    console.print(table)


def _reply_json(reply) -> dict:
    out = {"kind": reply.kind, "text": reply.text, **dict(reply.data.items())}
    if reply.uif is not None:
        out.update(task_id=reply.uif.task_id, plan=reply.uif.execution_plan, confidence=reply.uif.confidence_score,
                   warnings=reply.uif.warnings)
    return out


def _render_reply(reply, state: State) -> None:
    if state.json:
        print(json.dumps(_reply_json(reply), default=str, ensure_ascii=False), flush=True)
        return
    if reply.kind == "answer":
        routed = reply.data.get("routed_edit")
        note = f" [dim](memory: edit #{routed})[/dim]" if routed is not None else ""
        console.print(f"[bold cyan]sam>[/bold cyan] {escape(reply.text)}{note}")
    elif reply.kind == "edit" and reply.data.get("already_present"):
        console.print(f"[bold cyan]sam>[/bold cyan] {escape(reply.text)}")
    elif reply.kind == "edit":
        console.print(f"[bold cyan]sam>[/bold cyan] {escape(reply.data['verification'].get('answer_after', ''))}")
        _render_verification(reply)
    elif reply.kind == "edits":
        _edits_table(reply.data["edits"], title=reply.text)
    elif reply.kind == "error":
        console.print(f"[red]![/red] {escape(reply.text)}")
        if state.debug and reply.uif is not None:
            for tb in reply.uif.tracebacks:
                err_console.print(tb, markup=False)
    elif reply.text:
        console.print(f"[dim]{escape(reply.text)}[/dim]" if reply.kind == "feedback" else escape(reply.text))


def _edits_table(rows: list[dict], title: str = "edits") -> None:
    table = Table(title=title)
    for col in ("id", "status", "question", "answer", "source", "created"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["status"], escape(r["question"]), escape(r["target"]), r["source"],
                      str(r["created"])[:19])
    console.print(table)


@contextmanager
def _progress(state: State, description: str):
    """A rich progress bar on stderr (none with --json); yields update(done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if state.json:
        yield lambda done, total: None
        return
    with Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# --- global options ------------------------------------------------------------------------------
@app.callback()
def main_options(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m', a local .gguf file or a HF model folder "
                        "[env MEMOIR_MODEL].")] = None,
    store: Annotated[Optional[Path], typer.Option(
        "--store", help="The store folder: edits and their memory [env SAM_HOME; default ~/.sam].")] = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", help="torch device: cpu, cuda, cuda:0 ... [env MEMOIR_DEVICE].")] = None,
    prompt_format: Annotated[Optional[str], typer.Option(
        "--format", help="How a question is framed: auto (the model's chat template when it has one, else line), "
                         "chat, line, qa or raw [env MEMOIR_PROMPT_FORMAT].")] = None,
    layer: Annotated[Optional[int], typer.Option(
        "--layer", help="Decoder layer that gets the memory [env MEMOIR_LAYER; default 85% of the depth].")] = None,
    top_k: Annotated[Optional[int], typer.Option(
        "--top-k", help="Memory columns per edit [env MEMOIR_TOP_K; default 128].")] = None,
    key: Annotated[Optional[str], typer.Option(
        "--key", help="How a question finds its edit: sentence (MiniLM cosine of the questions, with a name "
                      "check) or tophash (MEMOIR's mask overlap) [env MEMOIR_KEY; default sentence].")] = None,
    similarity_threshold: Annotated[Optional[float], typer.Option(
        "--similarity-threshold", help="Key cosine at which an edit fires, in (0, 1] "
                                       "[env MEMOIR_SIMILARITY_THRESHOLD; default 0.8].")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(
        "--learning-rate", help="Adam learning rate of an edit [env MEMOIR_LEARNING_RATE; default 0.1].")] = None,
    max_steps: Annotated[Optional[int], typer.Option(
        "--max-steps", help="Most optimisation steps per edit [env MEMOIR_MAX_STEPS; default 30].")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON) where it applies.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show library logs and progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of an internal error.")] = False,
) -> None:
    with _errors():
        from sam.config import load_settings

        overrides: dict[str, Any] = {k: v for k, v in {
            "model": model, "storage_dir": store, "device": device, "prompt_format": prompt_format}.items()
            if v is not None}
        editor = {k: v for k, v in {"layer": layer, "top_k": top_k, "key": key,
                                    "similarity_threshold": similarity_threshold,
                                    "learning_rate": learning_rate, "max_steps": max_steps}.items() if v is not None}
        if editor:
            overrides["editor"] = editor
        settings = load_settings(**overrides)
    if verbose or debug:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(name)s: %(message)s")
    elif not logging.getLogger("sam").handlers:  # errors reach the user as one line; with no handler at all,
        logging.getLogger("sam").addHandler(logging.NullHandler())  # logging's last resort printed tracebacks
    ctx.obj = State(settings=settings, json=json_out, verbose=verbose, debug=debug)


# --- chatting ------------------------------------------------------------------------------------
@app.command()
def chat(ctx: typer.Context,
         system: Annotated[Optional[str], typer.Option(help="System prompt of the conversation.")] = None) -> None:
    """Interactive session: ask, correct ("No, it's X" or [bold]/correct X[/bold]), [bold]/undo[/bold], [bold]/edits[/bold], [bold]/system[/bold], [bold]/new[/bold], [bold]/quit[/bold].

    Reads stdin line by line when it is not a terminal, so a session can be scripted:
    [dim]printf 'What is the capital of Australia?\\nNo, it is Canberra\\n' | sam chat[/dim]
    """
    state = _state(ctx)
    interactive = sys.stdin.isatty()
    with _errors(), _chat_session(state, read_only=False, system=system) as session:
        session.context.editor  # open now: a locked store is reported before the first question
        if not state.json:
            console.print("[bold]sam chat[/bold] — ask a question, correct an answer, /help for commands.")
        while True:
            try:
                if interactive and not state.json:
                    line = console.input("[bold green]you>[/bold green] ")
                else:
                    line = sys.stdin.readline()
                    if not line:
                        break
                    if not state.json:
                        console.print(f"[bold green]you>[/bold green] {escape(line.strip())}")
            except (EOFError, KeyboardInterrupt):
                break
            if len(line) > MAX_CHARS:
                _render_reply(_error_reply(f"the line is {len(line):,} characters long; the limit is {MAX_CHARS:,}"),
                              state)
                continue
            reply = session.handle(line)
            if reply.kind == "quit":
                break
            _render_reply(reply, state)


def _error_reply(text: str):
    from sam.orchestration.session import Reply

    return Reply("error", text)


@app.command()
def ask(ctx: typer.Context,
        question: Annotated[str, typer.Argument(help="The question.")],
        system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None) -> None:
    """Answer one question with the edited model (reads the store; creates nothing)."""
    state = _state(ctx)
    _text(question, "the question")
    _wait_passively()
    with _errors(), _chat_session(state, read_only=True, system=system) as session:
        reply = session.ask(question)
        if not reply.ok:
            _fail_reply(reply, state)
        if state.json:
            _emit_json({"question": question, "prompt": reply.uif.get("model_prompt").text, "answer": reply.text,
                        "routed_edit": reply.data.get("routed_edit")})
        else:
            console.print(escape(reply.text))


@app.command()
def correct(ctx: typer.Context,
            question: Annotated[str, typer.Argument(help="The question to correct.")],
            answer: Annotated[str, typer.Argument(help="The answer it should give.")],
            paraphrase: Annotated[Optional[list[str]], typer.Option(
                "--paraphrase", "-p", help="Another wording of the question to check after the edit (repeatable).")] = None,
            keep_failed: Annotated[bool, typer.Option(
                "--keep-failed", help="Write the edit even when verification says it did not take.")] = False,
            ) -> None:
    """Edit the model so QUESTION is answered with ANSWER; verify, then write the edit (or roll it back)."""
    state = _state(ctx)
    _text(question, "the question")
    _text(answer, "the answer")
    for p in paraphrase or []:
        _text(p, "a paraphrase")
    with _errors(), _chat_session(state, read_only=False, keep_failed=keep_failed) as session:
        _finish_edit(session.correct(answer, question=question, paraphrases=paraphrase or []), state)


def _finish_edit(reply, state: State) -> None:
    if not reply.ok:
        _fail_reply(reply, state)
    if state.json:
        _emit_json(_reply_json(reply))
    elif reply.data.get("already_present"):
        console.print(escape(reply.text))
    elif reply.kind == "edit":
        _render_verification(reply)


@app.command()
def feedback(ctx: typer.Context,
             question: Annotated[str, typer.Argument(help="The question that was asked.")],
             response: Annotated[str, typer.Argument(help="The answer the model gave.")],
             feedback_text: Annotated[str, typer.Argument(metavar="FEEDBACK", help="The user's reply to it.")]) -> None:
    """Treat FEEDBACK as the user's reply to RESPONSE: a correction edits the model, anything else changes nothing."""
    from sam.orchestration.session import Turn

    state = _state(ctx)
    for value, what in ((question, "the question"), (response, "the response"), (feedback_text, "the feedback")):
        _text(value, what)
    with _errors(), _chat_session(state, read_only=False) as session:
        session.history.append(Turn(question, response))
        reply = session.feedback(feedback_text)
        if reply.kind == "feedback":
            if state.json:
                _emit_json({**_reply_json(reply), "edited": False})
            else:
                console.print(f"no edit: {escape(reply.text)} [dim]({reply.data.get('feedback_kind')})[/dim]")
            return
        _finish_edit(reply, state)


@app.command("fix-facts")
def fix_facts(ctx: typer.Context,
              source: Annotated[Path, typer.Argument(help="Trusted facts: .jsonl, .csv (question/answer) or .sqlite.")],
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the wrong answers.")] = False,
              table_name: Annotated[str, typer.Option("--table", help="SQLite table holding the facts.")] = "facts",
              limit: Annotated[Optional[int], typer.Option(min=1, help="Check at most this many facts.")] = None) -> None:
    """Self-correction: ask every fact of SOURCE, correct the wrong answers (as `sam correct` does), report."""
    from sam_skills.factual_correction import load_facts

    state = _state(ctx)
    with _errors():
        load_facts(source, table_name)  # a bad source fails before the model loads
        with _chat_session(state, read_only=dry_run) as session, _progress(state, "correcting") as update:
            report = session.fix_facts(source, dry_run=dry_run, table=table_name, limit=limit, progress=update)
    if state.json:
        _emit_json(report)
        return
    verb = "would edit" if dry_run else f"edited {report['edited']}, fixed {report['fixed']}"
    table = Table(title=f"checked {report['checked']} facts, {report['wrong']} wrong; {verb}")
    for col in ("question", "expected", "before", "after", "status"):
        table.add_column(col, overflow="fold")
    for it in report["items"]:
        table.add_row(escape(it["question"]), escape(it["expected"]), escape(it["before"]),
                      escape(it.get("after", "")), escape(it["status"]))
    console.print(table)


# --- edits ---------------------------------------------------------------------------------------
def _read_store(state: State):
    """The store, read-only, without a model (listing and export need none)."""
    from sam.core.store import Store

    return Store(state.store, read_only=True)


@edits_app.command("list")
def edits_list(ctx: typer.Context,
               status: Annotated[str, typer.Option(help="active, reverted, superseded or all.")] = "active") -> None:
    """List edits (read-only; loads no model)."""
    from sam.core.store import Store

    state = _state(ctx)
    if status not in ("active", "reverted", "superseded", "all"):
        _fail(f"unknown status '{status}' (active, reverted, superseded or all)")
    with _errors():
        if Store.exists(state.store):
            with _read_store(state) as st:
                rows = [r.to_dict() for r in st.edits(None if status == "all" else status)]
        else:
            rows = []
    if state.json:
        _emit_json(rows)
    else:
        _edits_table(rows, title=f"{len(rows)} {status} edit(s) in {state.store}")


@edits_app.command("show")
def edits_show(ctx: typer.Context, edit_id: Annotated[str, typer.Argument(help="Edit id.")]) -> None:
    """Show one edit and what the model answers now (read-only)."""
    from sam.core.store import Store
    from sam.errors import UnknownEditError
    from sam.memory.edit_mask_db import check_edit_id

    state = _state(ctx)
    with _errors():
        check_edit_id(edit_id)
        if not Store.exists(state.store):  # a bad or unknown id is answered before any model loads
            raise UnknownEditError(f"no edit with id {edit_id!r} (the store is empty)")
        with _read_store(state) as st:
            st.get(edit_id)
        with _open_editor(state, read_only=True) as ed:
            rec = ed.get_edit(edit_id).to_dict()
            gen = ed.answer([ed.render(rec["question"])])[0]
            rec.update(answer_now=ed.prompts.clean(gen.text), memory_fires=gen.edit_id == rec["id"],
                       overlap=round(gen.overlap, 3))
    if state.json:
        _emit_json(rec)
        return
    table = Table(title=f"edit #{rec['id']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in rec.items():
        table.add_row(k, escape(str(v)))
    console.print(table)


@edits_app.command("revert")
def edits_revert(ctx: typer.Context, edit_id: Annotated[str, typer.Argument(help="Edit id.")]) -> None:
    """Revert one edit: it stops firing (an edit it replaced comes back)."""
    from sam.core.store import Store
    from sam.errors import CorruptStoreError, UnknownEditError
    from sam.memory.edit_mask_db import check_edit_id

    state = _state(ctx)
    with _errors():
        check_edit_id(edit_id)
        # an unknown or already reverted edit is answered from the store alone: no model, no store created
        if not Store.exists(state.store):
            raise UnknownEditError(f"no edit with id {edit_id!r} (the store is empty)")
        try:
            with _read_store(state) as st:
                rec = st.get(edit_id)
        except CorruptStoreError:
            rec = None  # e.g. a schema-1 store, which the writer below upgrades first
        if rec is not None and rec.status != "active":
            raise InvalidInputError(f"edit {rec.id} is already {rec.status}")
        with _chat_session(state, read_only=False) as session:
            reply = session.revert(int(edit_id))
            if not reply.ok:
                _fail_reply(reply, state)
    if state.json:
        _emit_json(reply.data)
    else:
        console.print(escape(reply.text))


@edits_app.command("export")
def edits_export(ctx: typer.Context,
                 file: Annotated[Path, typer.Argument(help="JSON file to write.")],
                 all_edits: Annotated[bool, typer.Option("--all", help="Include reverted and superseded edits "
                                                                     "(not replayed on import).")] = False) -> None:
    """Write the edits to a portable, checksummed JSON file (replay it with `sam edits import`)."""
    state = _state(ctx)
    with _errors():
        with _read_store(state) as st:
            n = st.export(file, model=state.settings.model, prompt_format=st.meta("prompt_format", "?"),
                          include_reverted=all_edits)
    if state.json:
        _emit_json({"file": str(file), "edits": n})
    else:
        console.print(f"wrote {n} edit(s) to {file}")


@edits_app.command("import")
def edits_import(ctx: typer.Context,
                 file: Annotated[Path, typer.Argument(help="A file written by `sam edits export`.")],
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be replayed.")] = False) -> None:
    """Replay exported edits through the same path as `sam correct` (ones already present are skipped)."""
    from sam.core.exchange import read_export

    state = _state(ctx)
    with _errors():
        edits = read_export(file)  # a bad file fails before the model loads
        with _chat_session(state, read_only=dry_run) as session, _progress(state, "importing") as update:
            results = session.import_edits(edits, dry_run=dry_run, progress=update)
    if state.json:
        _emit_json(results)
        return
    table = Table(title=f"{len(results)} edit(s) from {file}")
    for col in ("from", "new id", "question", "answer", "status"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(str(r["from_id"]), str(r.get("edit_id", "")), escape(r["question"]), escape(r["target"]),
                      escape(r["status"]))
    console.print(table)
    if any(r["status"].startswith("not imported") for r in results):
        raise typer.Exit(1)


# --- store care ----------------------------------------------------------------------------------
@app.command()
def doctor(ctx: typer.Context,
           check: Annotated[bool, typer.Option("--check", help="Verify the store end to end: database "
                                                               "integrity, every delta's checksum, the fingerprinter.")] = False) -> None:
    """What is installed, which model, where the data lives (loads no model)."""
    from sam.orchestration.doctor import diagnose

    state = _state(ctx)
    s = state.settings
    with _errors():
        report = diagnose(s.model, state.store, s.device, s.prompt_format, s.model_cache, check=check)
    if state.json:
        _emit_json(report)
    else:
        for section, rows in report.items():
            table = Table(title=section, show_header=False)
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for k, v in rows.items():
                table.add_row(k, escape(str(v)))
            console.print(table)
    if not report["model"].get("available", False) or (check and report["store"].get("check") != "ok"):
        raise typer.Exit(1)


@app.command()
def repair(ctx: typer.Context) -> None:
    """Rebuild what can be rebuilt: the fingerprinter (from the model, checked against the store's record);
    edits whose stored delta fails its checksum are taken out of use (reverted) and listed."""
    from sam.core.repair import repair_store

    state = _state(ctx)
    s = state.settings
    with _errors():
        report = repair_store(state.store, model=s.model, device=s.device, config=s.editor,
                              model_cache=s.model_cache, verbose=state.verbose)
    if state.json:
        _emit_json(report)
    else:
        for line in report["actions"] or ["nothing to repair"]:
            console.print(escape(line))
    if not report["ok"]:
        raise typer.Exit(1)


@app.command()
def upgrade(ctx: typer.Context) -> None:
    """Upgrade a store made by an earlier sam to the current format, in place (a backup is kept)."""
    from sam.core.store import Store
    from sam.errors import CorruptStoreError

    state = _state(ctx)
    with _errors():
        if not Store.exists(state.store):  # upgrade converts a store; it never creates one
            raise CorruptStoreError(f"no sam store at {state.store}")
        with Store(state.store) as st:
            info = {"store": str(state.store), "schema": st.db.schema, "upgraded_from": st.meta("upgraded_from"),
                    "backup": st.meta("backup")}
    if state.json:
        _emit_json(info)
    else:
        console.print(f"store {state.store} is in format {info['schema']}"
                      + (f" (upgraded from {info['upgraded_from']}; backup in backup/{info['backup']})"
                         if info["upgraded_from"] else ""))


# --- verification, benchmarks, demos -------------------------------------------------------------
@app.command()
def verify(ctx: typer.Context,
           phase: Annotated[str, typer.Option("--phase", help="a, b, c or all.")] = "all") -> None:
    """End-to-end checks on the real model. A: the memory is inert and deterministic before any edit;
    B: one edit takes, persists, stays local, reverts, refuses bad input; C: chat, correction, restart, /undo."""
    import importlib

    state = _state(ctx)
    phases = ["a", "b", "c"] if phase.lower() == "all" else [phase.lower()]
    if any(p not in ("a", "b", "c") for p in phases):
        _fail(f"unknown phase '{phase}' (a, b, c or all)")
    worst = 0
    with _errors():
        for p in phases:
            mod = importlib.import_module(f"sam.verify.phase_{p}")
            rc = mod.main(model=state.settings.model, device=state.settings.device, json_out=state.json)
            worst = max(worst, int(rc or 0))
    if worst:
        raise typer.Exit(worst)


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _bench(module: str, ctx: typer.Context, what: str, extra: list[str]) -> None:
    """Run a benchmark module's argparse main with the rest of the command line."""
    import importlib

    state = _state(ctx)
    argv = list(extra)
    if state.settings.device != "cpu" and "--device" not in argv:
        argv += ["--device", state.settings.device]
    with _errors():
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            _fail(f"{what} needs the research extra ({exc.name} is missing): pip install 'sam[research]'")
        try:
            result = mod.main(argv)
        except SystemExit as exc:  # argparse: --help, or a usage error
            raise typer.Exit(exc.code or 0) from None
    if isinstance(result, int) and result:
        raise typer.Exit(result)


@bench_app.command("edit", context_settings=_PASS_THROUGH)
def bench_edit(ctx: typer.Context) -> None:
    """Sequential editing on zsRE or synthetic facts: Rel/Gen/Loc, s/edit, storage (--help for its options)."""
    _bench("sam.bench.editing", ctx, "the edit benchmark", _with_settings(ctx, ctx.args))


def _with_settings(ctx: typer.Context, argv: list[str]) -> list[str]:
    """Pass the global model and editor settings on to a benchmark that takes them."""
    s = _state(ctx).settings
    out = list(argv)
    if "--model" not in out:
        out += ["--model", s.model]
    for field in ("layer", "top_k", "key", "similarity_threshold", "learning_rate", "max_steps"):
        flag = "--" + field.replace("_", "-")
        value = getattr(s.editor, field)
        if flag not in out and value is not None and field in s.editor.model_fields_set:
            out += [flag, str(value)]
    return out


@bench_app.command("chat", context_settings=_PASS_THROUGH)
def bench_chat(ctx: typer.Context) -> None:
    """Edits made in one conversation, asked in others; natural edit set (--help for its options)."""
    _bench("sam.bench.chat", ctx, "the chat benchmark", _with_settings(ctx, ctx.args))


@bench_app.command("ask", context_settings=_PASS_THROUGH)
def bench_ask(ctx: typer.Context) -> None:
    """Time to a first answer: `sam ask` from a new process to the printed answer."""
    _bench("sam.bench.startup", ctx, "the startup benchmark", ctx.args)


@bench_app.command("moe", context_settings=_PASS_THROUGH)
def bench_moe(ctx: typer.Context) -> None:
    """Memory-enhanced MoE: few-shot, continual learning, specialisation, cost (docs/moe.md)."""
    _bench("sam.research.moe.bench", ctx, "the MoE benchmark", ctx.args)


@bench_app.command("memnet", context_settings=_PASS_THROUGH)
def bench_memnet(ctx: typer.Context) -> None:
    """MemNet, explicit slot memory vs Transformer and LSTM baselines (docs/memnet.md)."""
    _bench("sam.research.memnet.bench", ctx, "the MemNet benchmark", ctx.args)


@bench_app.command("cmrn", context_settings=_PASS_THROUGH)
def bench_cmrn(ctx: typer.Context) -> None:
    """CMRN, composable memory routing network vs a same-size Transformer (docs/cmrn.md)."""
    _bench("sam.research.cmrn.bench", ctx, "the CMRN benchmark", ctx.args)


@demo_app.command("moe")
def demo_moe(ctx: typer.Context) -> None:
    """A short demonstration of the memory-enhanced MoE."""
    state = _state(ctx)
    with _errors():
        try:
            from sam.research.moe.demo import main as demo
        except ImportError as exc:
            _fail(f"the MoE demo needs the research extra ({exc.name} is missing): pip install 'sam[research]'")
        result = demo(device=state.settings.device)
    if state.json:
        _emit_json(result)


def _click_classes(name: str) -> tuple[type, ...]:
    """click's exception class `name`, and typer's vendored copy of it (typer >= 0.16 ships its own click:
    its UsageError is not click's, so catching click's alone let usage errors escape as tracebacks)."""
    found = {getattr(click.exceptions, name)}
    for cls in (typer.BadParameter, typer.Exit, typer.Abort):
        found |= {c for c in cls.__mro__ if c.__name__ == name}
    return tuple(found)


_USAGE_ERRORS, _CLICK_ERRORS = _click_classes("UsageError"), _click_classes("ClickException")
_EXITS, _ABORTS = _click_classes("Exit"), _click_classes("Abort")


def main() -> None:
    """The console script: usage errors are one line and exit 2, like every other error is one line."""
    global _OWNS_PROCESS
    _OWNS_PROCESS = True
    # At exit the interpreter would collect every object torch and transformers made, one by one (1.1 s of a
    # `sam ask` after the answer is printed); frozen, they are left to the operating system.
    atexit.register(gc.freeze)
    try:
        code = app(standalone_mode=False)  # without standalone mode an exit is returned, not raised
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except _USAGE_ERRORS as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
        err_console.print(f"[red]error:[/red] {escape(_one_line(exc.format_message()))}{hint}")
        sys.exit(2)
    except _CLICK_ERRORS as exc:
        err_console.print(f"[red]error:[/red] {escape(_one_line(exc.format_message()))}")
        sys.exit(1)
    except _ABORTS:
        err_console.print("[red]error:[/red] aborted")
        sys.exit(1)
    except UnicodeDecodeError as exc:
        err_console.print(f"[red]error:[/red] input is not valid UTF-8 ({exc.reason})")
        sys.exit(1)
    except Exception as exc:  # a bug, not a user error: one line too, the traceback with --debug
        if "--debug" in sys.argv[1:]:
            raise
        err_console.print(f"[red]error:[/red] internal error: {type(exc).__name__}: {escape(_one_line(exc))} "
                          f"(a bug; --debug shows the traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
