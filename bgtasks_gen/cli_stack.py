"""`bgtasks dev` and `bgtasks doctor`: from a scaffold to a running stack.

Only typer at module level: the commands import their engines (discovery, honcho,
aiosmtpd, packaging) when they run, so `bgtasks --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from bgtasks_gen.cli_project import ProjectArgument, ProjectOption, resolve_project
from bgtasks_gen.errors import BgtasksError, ExitCode

Python = Annotated[
    Path | None,
    typer.Option(
        "--python",
        help="The project's interpreter (default: PROJECT/.venv, $VIRTUAL_ENV, "
        "uv's or poetry's environment).",
    ),
]

DEV_EPILOG = (
    "Exit codes: 0 stopped on request (Ctrl-C, SIGTERM) with every process gone; 1 a "
    "process crashed (the others were stopped); 2 something is missing (one line each, "
    "with its fix; nothing was started) or PROJECT is not a bgtasks project."
)
DOCTOR_EPILOG = (
    "Exit codes: 0 every check passed; 1 a check failed; 2 PROJECT is not a bgtasks project."
)


def _fail(error: BgtasksError, as_json: bool = False) -> NoReturn:
    from bgtasks_gen.report import show_error

    show_error(error, as_json=as_json)
    raise typer.Exit(int(error.exit_code))


def dev(
    project: ProjectArgument = None,
    project_option: ProjectOption = None,
    python: Python = None,
    port: Annotated[
        int, typer.Option(help="The API's port (0: any free one).", min=0, max=65535)
    ] = 8000,
    host: Annotated[str, typer.Option(help="The address the API listens on.")] = "127.0.0.1",
    no_smtp: Annotated[
        bool,
        typer.Option(
            "--no-smtp", help="Send email through the configured SMTP server, not the local sink."
        ),
    ] = False,
    no_reload: Annotated[
        bool,
        typer.Option(
            "--no-reload",
            help="Keep the worker and beat/scheduler running when the task code changes.",
        ),
    ] = False,
) -> None:
    """Run the scaffolded stack locally: the API (uvicorn --reload), the runner's worker
    and scheduler (celery beat, taskiq's scheduler), Redis and a local SMTP sink, in one
    terminal.

    Redis is the configured one when it answers, else a private redis-server on a free
    port (from PATH, or the one bundled with `pip install 'bgtasks[dev]'`). Every email
    the tasks send lands in the sink, which prints it. The settings they need (Redis
    URLs, SMTP host and port) are handed to every process through the environment, under
    the names your settings class reads. The project's source folder goes first on
    PYTHONPATH, so the working tree runs even when the project is not pip-installed.
    When a .py file of the tasks or routes package changes (`bgtasks add-task`, a save),
    the worker and beat/scheduler are restarted, as uvicorn --reload restarts the API;
    Redis and the sink keep running. Ctrl-C stops everything (SIGTERM, then SIGKILL
    after 10 s).

    Example: bgtasks dev . --python .venv/bin/python --port 8001
    """
    from bgtasks_gen.devstack import MissingPieces, plan_stack, run_stack

    try:
        plan = plan_stack(
            resolve_project(project, project_option),
            python=python,
            host=host,
            port=port,
            smtp=not no_smtp,
            reload=not no_reload,
        )
    except MissingPieces as missing:
        from rich.markup import escape

        from bgtasks_gen.report import err

        for piece in missing.pieces:
            err.print(f"[red]✗[/red] {escape(piece)}")
        _fail(missing)
    except BgtasksError as error:
        _fail(error)
    raise typer.Exit(run_stack(plan))


def doctor(
    project: ProjectArgument = None,
    project_option: ProjectOption = None,
    python: Python = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the checks as JSON on stdout.")
    ] = False,
) -> None:
    """Check, live, that the scaffolded stack can run here: the runner's packages in the
    project's environment at versions that work together (celery/kombu/redis-py, arq's
    redis-py < 6), the broker and the result backend answer, the worker and the app
    import, schedules name registered tasks, required settings resolve (which are set,
    which are defaults), the SMTP host is reachable, RabbitMQ's version suits celery's
    queues, no @app.on_event handler is skipped by a lifespan, one celery beat at most.

    Each check is one line, ✓ or ✗, with the fix. URLs are shown with passwords masked.

    Example: bgtasks doctor . --python .venv/bin/python
    """
    import json

    from bgtasks_gen.doctor import FAIL, PASS, diagnose

    try:
        diagnosis = diagnose(resolve_project(project, project_option), python)
    except BgtasksError as error:
        _fail(error, as_json)
    if as_json:
        typer.echo(json.dumps(diagnosis.as_dict(), indent=2))
    else:
        from rich.markup import escape

        from bgtasks_gen.report import out

        marks = {PASS: "[green]✓[/green]", FAIL: "[red]✗[/red]"}
        for check in diagnosis.checks:
            mark = marks.get(check.status, "[dim]-[/dim]")
            out.print(f"{mark} {escape(check.name)}: {escape(check.detail)}")
            if check.fix:
                out.print(f"    [dim]fix:[/dim] {escape(check.fix)}")
    raise typer.Exit(int(ExitCode.OK if diagnosis.ok else ExitCode.CHANGES))


def register(app: typer.Typer) -> None:
    """Add `dev` and `doctor` to the main `bgtasks` command."""
    app.command(epilog=DEV_EPILOG)(dev)
    app.command(epilog=DOCTOR_EPILOG)(doctor)
