"""The `sam` command line: chat with a local LM, correct it, and keep the corrections.

Every command prints an expected failure (bad input, a locked or read-only store, a missing
model) as one line on stderr and exits 1; heavy imports (torch, the editor, benchmarks) happen
inside the commands so `sam --help` stays fast and one missing piece breaks only its command.
"""

from __future__ import annotations

import inspect
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sam.errors import SamError

app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
                  help="[bold]sam[/bold]: an assistant that learns from your corrections, for life.")
edits_app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True, help="List, show, revert, export and import edits.")
bench_app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True, help="Benchmarks (edit quality, memory MoE).")
demo_app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True, help="Demonstrations.")
app.add_typer(edits_app, name="edits")
app.add_typer(bench_app, name="bench")
app.add_typer(demo_app, name="demo")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line, never wrapped

# Unrelated questions re-asked after every edit: an edit must leave their answers alone.
CONTROL_QUESTIONS = ["What is the capital of France?", "How many days are there in a week?"]


@dataclass
class State:
    model: str
    store: Path
    device: str
    json: bool
    prompt_format: str
    settings: Any


# --- shared plumbing -----------------------------------------------------------------------------
def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


@contextmanager
def _errors() -> Iterator[None]:
    """Expected failures -> one line and exit 1; a traceback is kept for real bugs only."""
    from pydantic import ValidationError

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except SamError as exc:
        _fail(str(exc))
    except PermissionError as exc:
        _fail(f"permission denied: {exc.filename or exc}")
    except OSError as exc:
        _fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
    except ValidationError as exc:
        first = exc.errors()[0]
        _fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}")
    except KeyboardInterrupt:
        _fail("interrupted")


def _state(ctx: typer.Context) -> State:
    return ctx.find_root().obj


def _emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _editor_config(settings):
    from sam.core.editor import EditorConfig

    overrides = {"layer": settings.layer, "top_k": settings.top_k, "threshold": settings.similarity_threshold,
                 "max_steps": settings.max_steps, "lr": settings.learning_rate}
    return EditorConfig(**{k: v for k, v in overrides.items() if v is not None})


def _quiet_libraries() -> None:
    """No progress bars or library warnings between a user's question and the answer."""
    import warnings

    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _open_editor(state: State, read_only: bool):
    _quiet_libraries()
    from sam.core.editor import MemoirEditor

    if read_only and not (state.store / "edits.sqlite").exists():
        read_only = False  # a store that does not exist yet is created on first use
    return MemoirEditor.open(state.store, model=state.model, device=state.device,
                             config=_editor_config(state.settings), read_only=read_only,
                             permutation_file=state.settings.permutation_file)


def _session(state: State, read_only: bool):
    from sam.orchestration.prompting import PromptFormat
    from sam.orchestration.session import ChatSession
    from sam.orchestration.skill import SkillContext

    context = SkillContext(editor_factory=lambda: _open_editor(state, read_only),
                           prompt_format=PromptFormat(state.prompt_format), store_dir=state.store,
                           min_edit_confidence=state.settings.min_edit_confidence,
                           control_prompts=list(CONTROL_QUESTIONS))
    return ChatSession(context)


@contextmanager
def _chat_session(state: State, read_only: bool) -> Iterator[Any]:
    session = _session(state, read_only)
    try:
        yield session
    finally:
        session.context.close()


def _render_verification(reply) -> None:
    v, m = reply.data.get("verification", {}), reply.data.get("metrics") or {}
    table = Table(title=f"edit #{reply.data.get('edit_id')} — {v.get('verdict', '?')}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("answer before", escape(str(v.get("answer_before"))))
    table.add_row("answer after", escape(str(v.get("answer_after"))))
    table.add_row("memory fires", "yes" if v.get("memory_fired") else "no")
    for p in v.get("paraphrases", []):
        table.add_row("paraphrase", f"{'ok' if p['ok'] else 'MISS'}: {escape(p['answer'])}")
    controls = v.get("controls", [])
    if controls:
        same = sum(c["unchanged"] for c in controls)
        table.add_row("unrelated prompts", f"{same}/{len(controls)} unchanged")
    table.add_row("training", f"{m.get('steps')} steps, loss {m.get('loss')}, {m.get('seconds')} s")
    table.add_row("confidence", f"{v.get('confidence', 0):.2f}")
    console.print(table)


def _reply_json(reply) -> dict:
    out = {"kind": reply.kind, "text": reply.text, **{k: v for k, v in reply.data.items()}}
    if reply.uif is not None:
        out["task_id"] = reply.uif.task_id
        out["plan"] = reply.uif.execution_plan
        out["confidence"] = reply.uif.confidence_score
        out["warnings"] = reply.uif.warnings
    return out


def _render_reply(reply, state: State) -> None:
    if state.json:
        print(json.dumps(_reply_json(reply), default=str), flush=True)
        return
    if reply.kind == "answer":
        routed = reply.data.get("routed_edit")
        note = f" [dim](memory: edit #{routed})[/dim]" if routed is not None else ""
        console.print(f"[bold cyan]sam>[/bold cyan] {escape(reply.text)}{note}")
    elif reply.kind == "edit":
        console.print(f"[bold cyan]sam>[/bold cyan] {escape(reply.data['verification'].get('answer_after', ''))}")
        _render_verification(reply)
    elif reply.kind == "edits":
        _edits_table(reply.data["edits"], title=reply.text)
    elif reply.kind == "error":
        console.print(f"[red]![/red] {escape(reply.text)}")
    elif reply.kind in ("feedback", "undo", "help"):
        if reply.text:
            console.print(f"[dim]{escape(reply.text)}[/dim]" if reply.kind == "feedback" else escape(reply.text))


def _edits_table(rows: list[dict], title: str = "edits") -> None:
    from sam.orchestration.prompting import unframe

    table = Table(title=title)
    for col in ("id", "status", "question", "answer", "source", "created"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(str(r["id"]), r["status"], escape(unframe(r["prompt"])), escape(r["target"]),
                      r["source"], str(r["created"])[:19])
    console.print(table)


def _nonempty(value: str, what: str) -> str:
    if not value or not value.strip():
        _fail(f"{what} is empty")
    return value


# --- global options ------------------------------------------------------------------------------
@app.callback()
def main(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option(
        "--model", envvar="MEMOIR_MODEL", show_envvar=True,
        help="'default' (SmolLM2-135M-Instruct), another shipped alias, or a local HF model folder.")] = None,
    store: Annotated[Optional[Path], typer.Option(
        "--store", envvar=["SAM_HOME", "MEMOIR_STORAGE_DIR"], show_envvar=True,
        help="Data folder: edits, memories, learned plans. Default ~/.sam.")] = None,
    device: Annotated[Optional[str], typer.Option(
        "--device", envvar="MEMOIR_DEVICE", show_envvar=True, help="torch device: cpu, cuda, cuda:0 ...")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON) where it applies.")] = False,
    prompt_format: Annotated[Optional[str], typer.Option(
        "--format", envvar="MEMOIR_PROMPT_FORMAT", show_envvar=True,
        help="How a question is framed for the model: qa, raw or chat.")] = None,
) -> None:
    with _errors():
        from sam.config import Settings

        settings = Settings()
        fmt = prompt_format or settings.prompt_format
        from sam.orchestration.prompting import PromptFormat

        PromptFormat(fmt)  # reject an unknown format before any model loads
        ctx.obj = State(model=model or settings.model, store=(store or settings.storage_dir).expanduser(),
                        device=device or settings.device, json=json_out, prompt_format=fmt, settings=settings)


# --- chatting ------------------------------------------------------------------------------------
@app.command()
def chat(ctx: typer.Context) -> None:
    """Interactive session: ask, correct ("No, it's X" or [bold]/correct X[/bold]), [bold]/undo[/bold], [bold]/edits[/bold], [bold]/quit[/bold].

    Reads stdin line by line when it is not a terminal, so a session can be scripted:
    [dim]printf 'What is the capital of Australia?\\nNo, it is Canberra\\n' | sam chat[/dim]
    """
    state = _state(ctx)
    interactive = sys.stdin.isatty()
    with _errors(), _chat_session(state, read_only=False) as session:
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
            reply = session.handle(line)
            if reply.kind == "quit":
                break
            _render_reply(reply, state)


@app.command()
def ask(ctx: typer.Context,
        prompt: Annotated[str, typer.Argument(help="The question.")]) -> None:
    """Answer one question with the edited model (opens the store read-only)."""
    state = _state(ctx)
    _nonempty(prompt, "the question")
    with _errors(), _chat_session(state, read_only=True) as session:
        reply = session.ask(prompt)
        if not reply.ok:
            _fail(reply.text)
        if state.json:
            _emit_json({"question": prompt, "prompt": reply.uif.get("model_prompt"), "answer": reply.text,
                        "routed_edit": reply.data.get("routed_edit")})
        else:
            console.print(escape(reply.text), markup=True)


@app.command()
def correct(ctx: typer.Context,
            prompt: Annotated[str, typer.Argument(help="The question to correct.")],
            answer: Annotated[str, typer.Argument(help="The answer it should give.")],
            paraphrase: Annotated[Optional[list[str]], typer.Option(
                "--paraphrase", "-p", help="Another wording of the question to check after the edit (repeatable).")] = None,
            ) -> None:
    """Edit the model so PROMPT is answered with ANSWER, then verify the edit."""
    state = _state(ctx)
    _nonempty(prompt, "the question")
    _nonempty(answer, "the answer")
    with _errors(), _chat_session(state, read_only=False) as session:
        reply = session.correct(answer, question=prompt, paraphrases=paraphrase or [])
        _finish_edit(reply, state)


def _finish_edit(reply, state: State) -> None:
    if not reply.ok:
        _fail(reply.text)
    if state.json:
        _emit_json(_reply_json(reply))
    elif reply.kind == "edit":
        _render_verification(reply)
    if reply.kind == "edit" and reply.data["verification"].get("verdict") == "failed":
        raise typer.Exit(1)


@app.command()
def feedback(ctx: typer.Context,
             prompt: Annotated[str, typer.Argument(help="The question that was asked.")],
             response: Annotated[str, typer.Argument(help="The answer the model gave.")],
             feedback_text: Annotated[str, typer.Argument(metavar="FEEDBACK", help="The user's reply to it.")]) -> None:
    """Treat FEEDBACK as the user's reply to RESPONSE: a correction edits the model, anything else changes nothing."""
    from sam.orchestration.session import Turn

    state = _state(ctx)
    for value, what in ((prompt, "the question"), (response, "the response"), (feedback_text, "the feedback")):
        _nonempty(value, what)
    with _errors(), _chat_session(state, read_only=False) as session:
        session.history.append(Turn(prompt, session.context.prompt_format.render(prompt), response))
        reply = session.feedback(feedback_text)
        if reply.kind == "feedback":
            kind = reply.data.get("feedback_kind")
            if state.json:
                _emit_json({**_reply_json(reply), "edited": False})
            else:
                console.print(f"no edit: {escape(reply.text)} [dim]({kind})[/dim]")
            return
        _finish_edit(reply, state)


@app.command("fix-facts")
def fix_facts(ctx: typer.Context,
              source: Annotated[Path, typer.Argument(help="Trusted facts: .jsonl, .csv (prompt/answer) or .sqlite.")],
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the wrong answers.")] = False,
              table_name: Annotated[str, typer.Option("--table", help="SQLite table holding the facts.")] = "facts",
              limit: Annotated[Optional[int], typer.Option(help="Check at most this many facts.")] = None) -> None:
    """Self-correction: ask every fact of SOURCE, edit the wrong answers, report what changed."""
    from sam.orchestration.uif import SAM_UIF
    from skills.factual_correction import load_facts

    state = _state(ctx)
    with _errors():
        load_facts(source, table_name)  # a bad source fails before the model loads
        with _chat_session(state, read_only=dry_run) as session:
            uif = session.orchestrator.run(SAM_UIF(intermediate_data={
                "fact_source": str(source), "dry_run": dry_run, "fact_table": table_name, "fact_limit": limit}),
                "self_correct")
            if not uif.ok:
                _fail(uif.errors[0])
        report = uif.get("corrections_report")
        if state.json:
            _emit_json(report)
            return
        table = Table(title=uif.final_response)
        for col in ("question", "expected", "before", "after", "status"):
            table.add_column(col, overflow="fold")
        for it in report["items"]:
            table.add_row(escape(it["prompt"]), escape(it["expected"]), escape(it["before"]),
                          escape(it.get("after", "")), it["status"])
        console.print(table)


# --- edits ---------------------------------------------------------------------------------------
@edits_app.command("list")
def edits_list(ctx: typer.Context,
               status: Annotated[str, typer.Option(help="active, reverted or all.")] = "active") -> None:
    """List edits (read-only)."""
    state = _state(ctx)
    if status not in ("active", "reverted", "all"):
        _fail(f"unknown status '{status}' (active, reverted or all)")
    with _errors():
        with _open_editor(state, read_only=True) as ed:
            rows = [r.to_dict() for r in ed.edits(None if status == "all" else status)]
        if state.json:
            _emit_json(rows)
        else:
            _edits_table(rows, title=f"{len(rows)} {status} edit(s) in {state.store}")


@edits_app.command("show")
def edits_show(ctx: typer.Context, edit_id: Annotated[int, typer.Argument(help="Edit id.")]) -> None:
    """Show one edit and what the model answers now (read-only)."""
    from sam.orchestration.prompting import PromptFormat

    state = _state(ctx)
    with _errors():
        with _open_editor(state, read_only=True) as ed:
            rec = ed.get_edit(edit_id).to_dict()
            rec["answer_now"] = PromptFormat(state.prompt_format).clean(ed.generate(rec["prompt"]))
            fired, overlap = ed.route(rec["prompt"])
            rec["memory_fires"], rec["overlap"] = fired == edit_id, round(overlap, 3)
        if state.json:
            _emit_json(rec)
            return
        table = Table(title=f"edit #{edit_id}", show_header=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for k, v in rec.items():
            table.add_row(k, escape(str(v)))
        console.print(table)


@edits_app.command("revert")
def edits_revert(ctx: typer.Context, edit_id: Annotated[int, typer.Argument(help="Edit id.")]) -> None:
    """Revert one edit: its prompt answers as before the edit."""
    state = _state(ctx)
    with _errors(), _chat_session(state, read_only=False) as session:
        from sam.orchestration.uif import SAM_UIF

        uif = session.orchestrator.run(SAM_UIF(intermediate_data={"revert_id": edit_id}), "undo")
        if not uif.ok:
            _fail(uif.errors[0])
        info = uif.get("reverted")
        if state.json:
            _emit_json(info)
        else:
            console.print(f"reverted edit #{edit_id}; it now answers: {escape(info['answer_now'])}")


EXPORT_FORMAT = "sam-edits"


@edits_app.command("export")
def edits_export(ctx: typer.Context,
                 file: Annotated[Path, typer.Argument(help="JSON file to write.")],
                 all_edits: Annotated[bool, typer.Option("--all", help="Include reverted edits (not replayed on import).")] = False) -> None:
    """Write the edits to a portable JSON file (replayable on another machine with `edits import`)."""
    import datetime as dt

    state = _state(ctx)
    with _errors():
        with _open_editor(state, read_only=True) as ed:
            rows = ed.edits(None if all_edits else "active")
            doc = {"format": EXPORT_FORMAT, "version": 1, "model": str(ed.model_name),
                   "prompt_format": state.prompt_format,
                   "exported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "edits": [{k: r.to_dict()[k] for k in ("id", "prompt", "target", "source", "importance",
                                                           "created", "status")} for r in rows]}
        file.write_text(json.dumps(doc, indent=2))
        if state.json:
            _emit_json({"file": str(file), "edits": len(rows)})
        else:
            console.print(f"wrote {len(rows)} edit(s) to {file}")


def _read_export(file: Path) -> list[dict]:
    from sam.errors import InvalidInputError

    try:
        doc = json.loads(file.read_text())
    except ValueError as exc:
        raise InvalidInputError(f"{file} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or not isinstance(doc.get("edits"), list):
        raise InvalidInputError(f"{file} is not a sam edits export (want format '{EXPORT_FORMAT}')")
    for i, e in enumerate(doc["edits"]):
        if not isinstance(e, dict) or not str(e.get("prompt", "")).strip() or not str(e.get("target", "")).strip():
            raise InvalidInputError(f"{file}: edit {i} lacks a prompt or a target")
    return doc["edits"]


@edits_app.command("import")
def edits_import(ctx: typer.Context,
                 file: Annotated[Path, typer.Argument(help="A file written by `sam edits export`.")],
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be replayed.")] = False) -> None:
    """Replay exported edits (re-edit each active one; ones already in the store are skipped)."""
    state = _state(ctx)
    with _errors():
        if not file.is_file():
            _fail(f"no such file: {file}")
        todo = [e for e in _read_export(file) if e.get("status", "active") == "active"]
        results = []
        with _open_editor(state, read_only=dry_run) as ed:
            have = {(r.prompt, r.target) for r in ed.edits("active")}
            for e in todo:
                row = {"prompt": e["prompt"], "target": e["target"], "from_id": e.get("id")}
                if (e["prompt"], e["target"]) in have:
                    row["status"] = "already present"
                elif dry_run:
                    row["status"] = "would import"
                else:
                    r = ed.edit(e["prompt"], e["target"], source=str(e.get("source") or "import"),
                                importance=float(e.get("importance") or 1.0))
                    have.add((e["prompt"], e["target"]))
                    row.update(status="imported" if r.success else "imported (not fully learned)", edit_id=r.edit_id)
                results.append(row)
        if state.json:
            _emit_json(results)
            return
        from sam.orchestration.prompting import unframe

        table = Table(title=f"{len(results)} edit(s) from {file}")
        for col in ("from", "new id", "question", "answer", "status"):
            table.add_column(col, overflow="fold")
        for r in results:
            table.add_row(str(r["from_id"]), str(r.get("edit_id", "")), escape(unframe(r["prompt"])),
                          escape(r["target"]), r["status"])
        console.print(table)


# --- verification, benchmarks, demos -------------------------------------------------------------
def _call(fn, **kwargs):
    """Call fn with the keyword arguments it accepts (the bench entry points differ slightly)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def _import(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _fail(f"{what} is not available ({exc})")


@app.command()
def verify(ctx: typer.Context,
           phase: Annotated[str, typer.Option("--phase", help="a, b, c or all.")] = "all") -> None:
    """Run the end-to-end verification of a phase (A: editing, B: memory MoE, C: chat and skills)."""
    state = _state(ctx)
    phases = ["a", "b", "c"] if phase == "all" else [phase.lower()]
    if any(p not in ("a", "b", "c") for p in phases):
        _fail(f"unknown phase '{phase}' (a, b, c or all)")
    worst = 0
    with _errors():
        for p in phases:
            mod = _import(f"sam.verify.phase_{p}", f"phase {p.upper()} verification")
            rc = _call(mod.main, model=state.model, device=state.device, json_out=state.json)
            worst = max(worst, int(rc or 0))
    if worst:
        raise typer.Exit(worst)


@bench_app.command("edit")
def bench_edit(ctx: typer.Context,
               sizes: Annotated[str, typer.Option(help="Comma-separated numbers of sequential edits.")] = "1,10,100",
               out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/edit"),
               data: Annotated[Optional[Path], typer.Option(help="zsRE-style JSON of edits (default: the shipped sample).")] = None,
               compare_naive: Annotated[int, typer.Option(help="Also time this many edits with the naive loop.")] = 5,
               generation: Annotated[bool, typer.Option(help="Also check generated answers.")] = True,
               generation_max: Annotated[Optional[int], typer.Option(
                   help="Skip generated answers at checkpoints past this many edits.")] = None,
               tag: Annotated[Optional[str], typer.Option(help="Name of the results file.")] = None) -> None:
    """Edit benchmark on the real model: reliability, generalisation, locality, time per edit."""
    state = _state(ctx)
    with _errors():
        if not sizes.strip() or any(not s.strip().isdigit() for s in sizes.split(",")):
            _fail(f"--sizes wants comma-separated integers, got '{sizes}'")
        mod = _import("sam.bench.editing", "the edit benchmark")
        # The benchmark prints its own table (or JSON with --json) and writes <out>/<tag>.json.
        mod.main(sizes=sizes, device=state.device, out=out, model=state.model, data=data,
                 compare_naive=compare_naive, generation=generation, generation_max=generation_max,
                 json_out=state.json, tag=tag)


def _run_printing(fn, state: State, **kwargs) -> None:
    """Run a benchmark that prints its own tables; with --json they go to stderr, the JSON to stdout."""
    import contextlib

    if not state.json:
        fn(**kwargs)
        return
    with contextlib.redirect_stdout(sys.stderr):
        result = fn(**kwargs)
    _emit_json(result)


@bench_app.command("moe")
def bench_moe(ctx: typer.Context,
              seeds: Annotated[int, typer.Option(help="Seeds per experiment.")] = 5,
              out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/moe"),
              quick: Annotated[bool, typer.Option(help="Small settings for a smoke run.")] = False) -> None:
    """Memory-enhanced MoE benchmark (few-shot, continual learning, specialisation, cost)."""
    state = _state(ctx)
    if seeds < 1:
        _fail("--seeds must be at least 1")
    with _errors():
        mod = _import("sam.bench.moe", "the MoE benchmark")
        _run_printing(mod.main, state, seeds=seeds, out_dir=out, quick=quick, device=state.device)


@demo_app.command("moe")
def demo_moe(ctx: typer.Context) -> None:
    """A short demonstration of the memory-enhanced MoE."""
    state = _state(ctx)
    with _errors():
        mod = _import("sam.bench.moe_demo", "the MoE demo")
        _run_printing(mod.main, state, device=state.device)


# --- doctor --------------------------------------------------------------------------------------
@app.command()
def doctor(ctx: typer.Context) -> None:
    """What is installed, which model, where the data lives (loads no model)."""
    from sam.orchestration.doctor import diagnose

    state = _state(ctx)
    with _errors():
        report = diagnose(state.model, state.store, state.device, state.prompt_format)
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
    if not report["model"].get("available", False):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
