"""`bgtasks adopt`: move the project's own BackgroundTasks jobs onto its queue worker.
Only typer at module level (fast `--help`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from bgtasks_gen.cli_project import ProjectArgument, ProjectOption, resolve_project
from bgtasks_gen.errors import BgtasksError, ExitCode

if TYPE_CHECKING:
    from bgtasks_gen.adopt.adoption import Adoption

NOTHING_TO_ADOPT = "nothing to adopt"

DryRun = Annotated[
    bool,
    typer.Option("--dry-run", help="Show the moves and the diff; write nothing."),
]
Check = Annotated[
    bool,
    typer.Option("--check", help="Write nothing; exit 1 if a call would move (for CI)."),
]
Json = Annotated[
    bool,
    typer.Option("--json", help='Print {"moved": [...], "left": [...], ...} on stdout.'),
]


def adopt(
    project: ProjectArgument = None,
    dry_run: DryRun = False,
    check: Check = False,
    as_json: Json = False,
    project_option: ProjectOption = None,
) -> None:
    """Move the project's own `background_tasks.add_task(func, ...)` calls onto the queue
    worker (celery, arq or taskiq): each function becomes a task of the runner in
    <tasks package>/adopted.py, and each call queues it instead (awaited in an async
    route, a bounded blocking call in a plain one; 503 when the broker is down). Calls
    that cannot move are left exactly as they are, each listed with the reason and the
    fix. All files are written or none.

    Example: bgtasks adopt --dry-run
    """
    root = resolve_project(project, project_option)
    run_adopt(root, dry_run=dry_run, check=check, as_json=as_json)


def run_adopt(root: Path, *, dry_run: bool, check: bool, as_json: bool) -> NoReturn:
    """Plan under the project lock, write unless told not to, report, exit."""
    from bgtasks_gen.adopt.adoption import plan_adopt
    from bgtasks_gen.apply import apply, project_lock

    read_only = dry_run or check
    written = False
    try:
        with project_lock(root):
            _recover(root, read_only=read_only)
            adoption = plan_adopt(root)
            # apply() writes every file or none, each checked to hold what was planned
            if not read_only and adoption.plan.writes:
                apply(adoption.plan)
                written = True
    except BgtasksError as error:
        _fail(error, as_json)
    if as_json:
        _print_json(
            adoption, mode="check" if check else "dry-run" if dry_run else "apply", written=written
        )
    else:
        _show(adoption, dry_run=read_only, diff=dry_run, written=written)
    if check and adoption.moved:
        raise typer.Exit(int(ExitCode.CHANGES))
    raise typer.Exit(int(ExitCode.OK))


def _recover(root: Path, *, read_only: bool) -> None:
    """Finish or undo a write a killed bgtasks left half done (never under --dry-run or
    --check, which refuse instead): the same rule as every other command."""
    from bgtasks_gen.journal import recover, refuse_unfinished

    if read_only:
        refuse_unfinished(root)
        return
    summary = recover(root)
    if summary:
        from rich.markup import escape

        from bgtasks_gen.report import err

        err.print(escape(summary))


def _fail(error: BgtasksError, as_json: bool) -> NoReturn:
    from bgtasks_gen.report import show_error

    show_error(error, as_json=as_json)
    raise typer.Exit(int(error.exit_code))


def _print_json(adoption: Adoption, *, mode: str, written: bool) -> None:
    plan = adoption.plan
    payload = {
        **adoption.to_dict(),
        "mode": mode,
        "written": written,
        "nothing_to_adopt": not adoption.moved,
        "files": [{"path": c.path, "action": c.action.value} for c in plan.changes],
        "notes": plan.notes,
    }
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def _show(adoption: Adoption, *, dry_run: bool, diff: bool, written: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from bgtasks_gen.report import out, show_plan

    if adoption.moved:
        table = Table(title=f"Moved to the {adoption.runner} worker", title_justify="left")
        for column in ("where", "function", "task", "now"):
            table.add_column(column)
        for moved in adoption.moved:
            call = moved.call
            table.add_row(
                escape(f"{call.file}:{call.line}"),
                escape(call.target.qualified if call.target else call.callable_source),
                escape(moved.task + ("" if moved.new_task else " (existing)")),
                escape(moved.enqueue),
            )
        out.print(table)
    if adoption.left:
        table = Table(title="Left as they are", title_justify="left")
        for column in ("where", "call", "reason", "fix"):
            table.add_column(column)
        for entry in adoption.left:
            table.add_row(
                escape(f"{entry.call.file}:{entry.call.line}"),
                escape(entry.call.callable_source or "?"),
                escape(f"{entry.reason} [{entry.code}]"),
                escape(entry.fix),
            )
        out.print(table)
    if not adoption.moved:
        out.print(f"[green]{NOTHING_TO_ADOPT}[/green]: no add_task call can move")
        return
    show_plan(adoption.plan, dry_run=dry_run, diff=diff, written=written)


def register(app: typer.Typer) -> None:
    """Add `adopt` to the main `bgtasks` command."""
    from bgtasks_gen.cli import EXIT_CODES

    app.command("adopt", epilog=EXIT_CODES)(adopt)
