"""`bgtasks failed list | show ID | replay ID | discard ID`: the failed-task inbox for
operators without an HTTP client. Only typer at module level (fast `--help`)."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import typer

from bgtasks_gen.cli_project import ProjectArgument, ProjectOption, resolve_project
from bgtasks_gen.cli_stack import Python
from bgtasks_gen.errors import BgtasksError, ExitCode

failed_app = typer.Typer(
    name="failed",
    help="The failed-task inbox (celery, arq, taskiq): tasks that failed after their last "
    "retry, messages dropped as poison, tasks lost with their worker. Read from the "
    "project's Redis with the project's own generated code, in the project's interpreter, "
    "with its settings as its processes read them (environment, then .env).",
    no_args_is_help=True,
    epilog="Exit codes: 0 done; 2 not found, refused, or not a project with an inbox.",
)

EntryId = Annotated[str, typer.Argument(help="The entry's id (the failed task's id).")]
Json = Annotated[bool, typer.Option("--json", help="Print the answer as JSON on stdout.")]


def _fail(error: BgtasksError, as_json: bool) -> NoReturn:
    from bgtasks_gen.report import show_error

    show_error(error, as_json=as_json)
    raise typer.Exit(int(error.exit_code))


def _ask(project: Any, project_option: Any, python: Any, as_json: bool, **request: Any) -> Any:
    from bgtasks_gen.inbox import InboxRequest, inbox_error, run_inbox

    try:
        answer = run_inbox(
            resolve_project(project, project_option), InboxRequest(**request), python
        )
    except BgtasksError as error:
        _fail(error, as_json)
    refused = inbox_error(answer, str(request.get("entry_id", "")))
    if refused is not None:
        _fail(refused, as_json)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    return answer


def _when(epoch: object) -> str:
    from datetime import UTC, datetime

    if not isinstance(epoch, int | float):
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@failed_app.command("list")
def list_failed(
    project: ProjectArgument = None,
    project_option: ProjectOption = None,
    python: Python = None,
    task: Annotated[str, typer.Option("--task", help="Only this task's entries.")] = "",
    limit: Annotated[int, typer.Option(min=1, max=100, help="Entries per page.")] = 20,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (newest first).")] = 0,
    as_json: Json = False,
) -> None:
    """Entries newest first: id, task, kind, error, attempts, last failure (the
    arguments of tasks that carry personal data are never shown)."""
    answer = _ask(
        project,
        project_option,
        python,
        as_json,
        action="list",
        task=task,
        limit=limit,
        offset=offset,
    )
    if as_json:
        return
    from rich.markup import escape
    from rich.table import Table

    from bgtasks_gen.report import out

    table = Table("id", "task", "kind", "error", "attempts", "last failed (UTC)", "replayed as")
    for entry in answer["entries"]:
        error = f"{entry.get('error_type')}: {entry.get('error')}"
        table.add_row(
            escape(str(entry.get("id"))),
            escape(str(entry.get("task") or "-")),
            escape(str(entry.get("kind"))),
            escape(error[:80]),
            str(entry.get("attempts")),
            _when(entry.get("last_failed_at")),
            escape(str(entry.get("replayed_as") or "")),
        )
    out.print(table)
    out.print(
        f"{len(answer['entries'])} shown of {answer['total']} kept; "
        f"{answer['dropped']} removed by the limits so far"
    )


@failed_app.command("show")
def show_failed(
    entry_id: EntryId,
    project: ProjectArgument = None,
    project_option: ProjectOption = None,
    python: Python = None,
    as_json: Json = False,
) -> None:
    """One entry in full: arguments (hidden for personal data), error, traceback,
    attempts, first and last failure, the worker that saw it, replay links."""
    answer = _ask(project, project_option, python, as_json, action="show", entry_id=entry_id)
    if as_json:
        return
    from rich.markup import escape

    from bgtasks_gen.report import out

    entry = answer["entry"]
    for key in ("id", "task", "kind", "error_type", "error", "attempts", "worker"):
        out.print(f"[bold]{key}[/bold]: {escape(str(entry.get(key)))}")
    out.print(f"[bold]first failed[/bold]: {_when(entry.get('first_failed_at'))} UTC")
    out.print(f"[bold]last failed[/bold]: {_when(entry.get('last_failed_at'))} UTC")
    out.print(f"[bold]args[/bold]: {escape(json.dumps(entry.get('args')))}")
    out.print(f"[bold]kwargs[/bold]: {escape(json.dumps(entry.get('kwargs')))}")
    for key in ("replay_of", "replayed_as", "raw_size"):
        if entry.get(key):
            out.print(f"[bold]{key}[/bold]: {escape(str(entry[key]))}")
    if entry.get("traceback"):
        out.print("[bold]traceback[/bold]:")
        out.print(escape(str(entry["traceback"])), highlight=False)


@failed_app.command("replay")
def replay_failed(
    entry_id: EntryId,
    project: ProjectArgument = None,
    project_option: ProjectOption = None,
    python: Python = None,
    force: Annotated[
        bool, typer.Option("--force", help="Queue it again although it was replayed before.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Queue the entry's task again with its arguments, under a new id (the entry and
    the new task name each other). Refused for an entry replayed before, unless --force;
    a poison message has no task to run."""
    answer = _ask(
        project, project_option, python, as_json, action="replay", entry_id=entry_id, force=force
    )
    if not as_json:
        from bgtasks_gen.report import out

        out.print(f"[green]✓[/green] {entry_id} queued again as {answer['task_id']}")
    raise typer.Exit(int(ExitCode.OK))


@failed_app.command("discard")
def discard_failed(
    entry_id: EntryId,
    project: ProjectArgument = None,
    project_option: ProjectOption = None,
    python: Python = None,
    as_json: Json = False,
) -> None:
    """Remove an entry from the inbox."""
    _ask(project, project_option, python, as_json, action="discard", entry_id=entry_id)
    if not as_json:
        from bgtasks_gen.report import out

        out.print(f"[green]✓[/green] {entry_id} discarded")


def register(app: typer.Typer) -> None:
    """Add `failed` to the main `bgtasks` command."""
    app.add_typer(failed_app)
