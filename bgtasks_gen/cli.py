"""The `bgtasks` command. Thin: parse options, call the engine, report, exit.

Heavy modules (libcst, jinja2, copier) are imported inside the commands that need them,
so `bgtasks --help` stays fast.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from bgtasks_gen import __version__
from bgtasks_gen.cli_project import ProjectArgument, ProjectOption, resolve_project
from bgtasks_gen.errors import BgtasksError, ExitCode

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from bgtasks_gen.plan import Plan

EXIT_CODES = (
    "Exit codes: 0 done or nothing to do; 1 a conflict stopped the run (a file changed "
    "since bgtasks read it, too), --check found changes, or `check` found a problem; "
    "2 bad input (no project, not a bgtasks project, layout not found, invalid option or "
    ".bgtasks.toml); 3 writing failed or was interrupted, and every file was restored."
)

app = typer.Typer(
    name="bgtasks",
    help=(
        "Scaffold production-grade background tasks (Celery, ARQ, taskiq or FastAPI's own "
        "BackgroundTasks) into an existing FastAPI project. Your settings class and app "
        "are edited in place, never overwritten; --dry-run shows the diff first."
    ),
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bgtasks {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """bgtasks: background tasks for FastAPI projects."""


DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Show what would change (status per file and unified diffs); write nothing.",
    ),
]
Check = Annotated[
    bool,
    typer.Option(
        "--check", help="Write nothing; exit 1 if anything would change, 0 if up to date (for CI)."
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Replace files that exist with other content (reported as 'overwrite')."
    ),
]
Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Print a machine-readable summary on stdout instead of the rich report."
    ),
]

# kept literal (not read from features.py) so printing help imports nothing more
WithFeatures = Annotated[
    list[str] | None,
    typer.Option(
        "--with",
        metavar="FEATURE[,FEATURE]",
        help="Optional parts to add (repeatable or comma-separated), kept by later runs: "
        "k8s = Kubernetes manifests under deploy/k8s/ with KEDA autoscaling on the queue; "
        "dashboard = the task dashboard page (on by default at init for a queue runner); "
        "metrics = a Prometheus route for the tasks and a Grafana dashboard; "
        "otel = OpenTelemetry traces from the request through the queue to the task; "
        "sentry = errors to Sentry from the web process and the workers (sentry_dsn setting).",
    ),
]
WithoutFeatures = Annotated[
    list[str] | None,
    typer.Option(
        "--without",
        metavar="FEATURE[,FEATURE]",
        help="Optional parts to leave out or take out (their generated files are removed), "
        "e.g. --without dashboard.",
    ),
]


if TYPE_CHECKING:

    class RunnerName(StrEnum): ...

else:
    from bgtasks_gen.runners import runner_names

    # every runner of the `bgtasks.runners` entry points, plugins too: the installed
    # metadata names them, no spec is imported
    RunnerName = StrEnum("RunnerName", {name: name for name in runner_names()})
DEFAULT_RUNNER = RunnerName("celery")


class ApiShape(StrEnum):
    common = "common"


def _complete_brokers(incomplete: str) -> list[str]:
    from bgtasks_gen.runners import available_runners

    found = dict.fromkeys(b for spec in available_runners() for b in spec.brokers)
    return [name for name in found if name.startswith(incomplete)]


class ConflictMode(StrEnum):
    refuse = "refuse"
    markers = "markers"


def _complete_task_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Names of the tasks add-task recorded in the project's .bgtasks.toml."""
    import tomllib

    folder = ctx.params.get("project_option") or ctx.params.get("project") or Path(".")
    try:
        data = tomllib.loads((Path(folder) / ".bgtasks.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    tasks = data.get("tasks")
    names = sorted(tasks) if isinstance(tasks, dict) else []
    return [name for name in names if name.startswith(incomplete)]


def _fail(error: BgtasksError, as_json: bool) -> NoReturn:
    from bgtasks_gen.report import show_error

    show_error(error, as_json=as_json)
    raise typer.Exit(int(error.exit_code))


REPLACE_HINT = (
    "nothing was written; look at them with --dry-run, then move them aside or "
    "re-run with --force to replace them"
)
UP_TO_DATE = "the project is not up to date"


def _finish(
    plan: Plan,
    *,
    dry_run: bool,
    check: bool,
    as_json: bool,
    conflict_hint: str = REPLACE_HINT,
    check_failed: str = UP_TO_DATE,
) -> NoReturn:
    """Report a plan, write it unless told not to, and exit with the documented code."""
    from bgtasks_gen.apply import apply
    from bgtasks_gen.errors import ConflictError
    from bgtasks_gen.plan import USER_FILE_HINT, USER_FILE_NOTE
    from bgtasks_gen.report import out, plan_json, show_plan

    mode = "check" if check else "dry-run" if dry_run else "apply"
    written = False
    if plan.conflicts and not (dry_run or check):
        paths = ", ".join(c.path for c in plan.conflicts)
        if as_json:
            plan_json(plan, mode=mode, written=False)
        else:
            show_plan(plan, dry_run=False, diff=False, written=False)
        if any(c.note == USER_FILE_NOTE for c in plan.conflicts):
            conflict_hint = USER_FILE_HINT  # never --force over the project's own code
        error = ConflictError(f"{len(plan.conflicts)} conflict(s): {paths}", conflict_hint)
        _fail(error, as_json)
    if not (dry_run or check) and plan.writes:
        try:
            apply(plan)
        except BgtasksError as error:
            _fail(error, as_json)
        written = True
    if as_json:
        plan_json(plan, mode=mode, written=written)
    else:
        show_plan(plan, dry_run=dry_run or check, diff=dry_run, written=written)
    if check and not plan.nothing_to_do:
        if not as_json:
            out.print(f"[yellow]check failed[/yellow]: {check_failed}")
        raise typer.Exit(int(ExitCode.CHANGES))
    raise typer.Exit(int(ExitCode.OK))


def _locked(
    project: Path,
    build: Callable[[], Plan],
    *,
    dry_run: bool,
    check: bool,
    as_json: bool,
    conflict_hint: str = REPLACE_HINT,
    check_failed: str = UP_TO_DATE,
) -> NoReturn:
    """Plan and apply under the project lock; any user-facing error exits through _fail."""
    from bgtasks_gen.apply import project_lock

    try:
        with project_lock(project):
            _recover(project, read_only=dry_run or check)
            plan = build()
            _finish(
                plan,
                dry_run=dry_run,
                check=check,
                as_json=as_json,
                conflict_hint=conflict_hint,
                check_failed=check_failed,
            )
    except BgtasksError as error:
        _fail(error, as_json)


def _recover(project: Path, *, read_only: bool = False) -> None:
    """Before anything reads the project: finish or undo a write that a killed bgtasks
    left half done, and say so on stderr (stdout may be --json). The caller holds the
    project lock. --dry-run and --check promise to write nothing, so they refuse instead
    (exit 1), as `check` reports it (check.py): planning on half-written files would lie."""
    from bgtasks_gen.journal import recover, refuse_unfinished

    if read_only:
        refuse_unfinished(project)
        return
    summary = recover(project)
    if summary:
        from rich.markup import escape

        from bgtasks_gen.report import err

        err.print(escape(summary))


@app.command(epilog=EXIT_CODES)
def init(
    project: ProjectArgument = None,
    runner: Annotated[
        RunnerName,
        typer.Option("--runner", "-r", help="builtin is FastAPI's own BackgroundTasks."),
    ] = DEFAULT_RUNNER,
    broker: Annotated[
        str,
        typer.Option(
            help="The broker: redis (every queue runner) or rabbitmq (celery, taskiq); a "
            "runner plugin may take others. Checked against the runner chosen.",
            autocompletion=_complete_brokers,
        ),
    ] = "redis",
    settings_module: Annotated[
        str | None,
        typer.Option(
            help="Where the Settings class is, as MODULE[:CLASS] (default: found automatically)."
        ),
    ] = None,
    app_module: Annotated[
        str | None,
        typer.Option(
            help="Where the FastAPI app is, as MODULE[:APP] "
            "(default: [tool.fastapi] entrypoint, or found automatically)."
        ),
    ] = None,
    no_deps: Annotated[
        bool,
        typer.Option(
            "--no-deps", help="Leave the project's dependency list (pyproject/requirements) alone."
        ),
    ] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Skip the proofs: resolving the dependencies with pip before writing, and "
            "serving the app once in the project's environment after.",
        ),
    ] = False,
    python: Annotated[
        Path | None,
        typer.Option(
            "--python",
            help="The project environment's interpreter, to serve the app in after writing "
            "(default: the project's .venv or venv).",
        ),
    ] = None,
    with_features: WithFeatures = None,
    without_features: WithoutFeatures = None,
    dry_run: DryRun = False,
    check: Check = False,
    force: Force = False,
    as_json: Json = False,
    project_option: ProjectOption = None,
) -> None:
    """Add a task runner to the project: tasks, a router to queue them, settings fields.

    Generated files go into a tasks package beside your app and a router beside your
    existing routers; your Settings class gets the fields the code reads (existing
    fields are reused, never duplicated) and your app includes the router. The same
    keys as --settings-module/--app-module can be set under [tool.bgtasks] in
    pyproject.toml (settings-module, app-module, tasks-module).

    Example: bgtasks init . --runner celery --dry-run
    """
    from bgtasks_gen.discovery import Overrides
    from bgtasks_gen.init_pipeline import InitRequest, Prepared, prepare
    from bgtasks_gen.state import STATE_FILE
    from bgtasks_gen.verify import FAILED, PROVEN, Served, prove_written

    root = resolve_project(project, project_option)
    scaffolded = (root / STATE_FILE).is_file()
    request = InitRequest(
        root,
        runner.value,
        broker=broker,
        overrides=Overrides(settings_module=settings_module, app_module=app_module),
        force=force,
        with_deps=not no_deps,
        with_features=with_features or (),
        without_features=without_features or (),
        prove=not (no_verify or check),
        writes=not dry_run,
        python=python,
    )
    prepared: list[Prepared] = []

    def build() -> Plan:
        # discover -> plan -> resolve here; write in _finish; verify below
        prepared.append(prepare(request))
        return prepared[0].plan

    try:
        _locked(
            root,
            build,
            dry_run=dry_run,
            check=check,
            as_json=as_json,
            check_failed=UP_TO_DATE if scaffolded else "the project is not scaffolded yet",
        )
    except typer.Exit as done:
        if done.exit_code != 0 or not prepared or not prepared[0].interpreter:
            raise
        from rich.markup import escape

        from bgtasks_gen.report import err, out

        served = prove_written(prepared[0].plan.root, prepared[0].interpreter)
        console = err if as_json else out  # stdout holds the JSON document
        broken = [feature for feature in served.features if feature.outcome != PROVEN]
        if not served.failed and not broken:
            console.print(f"  [dim]note:[/dim] {escape(served.message)}")
            for feature in served.features:
                console.print(f"  [dim]note:[/dim] {feature.feature}: {escape(feature.message)}")
            if served.fix:
                console.print(f"    [dim]next:[/dim] {escape(served.fix)}")
            raise
        if not served.failed:  # the task routes work; a feature's route does not
            served = Served(FAILED, f"{broken[0].feature}: {broken[0].message}", broken[0].fix)
        console.print(f"[bold red]not served[/bold red]: {escape(served.message)}")
        console.print(f"[dim]fix:[/dim] {escape(served.fix)}")
        console.print("[dim]the files stay written; `bgtasks doctor` checks again once fixed[/dim]")
        raise typer.Exit(int(ExitCode.CHANGES)) from None


@app.command("add-task", epilog=EXIT_CODES)
def add_task(
    name: Annotated[str, typer.Argument(help="The task's name: a lower_case identifier.")],
    project: ProjectArgument = None,
    arg: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            help="NAME:TYPE, repeatable; TYPE is int, float, str, bool, list[T] or "
            "dict[str, T]. Becomes the task's signature and the route's body model.",
        ),
    ] = None,
    cron: Annotated[
        str | None,
        typer.Option(help='Run on a schedule, "MIN HOUR DOM MON DOW" in UTC, e.g. "0 9 * * 1-5".'),
    ] = None,
    every: Annotated[int | None, typer.Option(help="Run every N seconds.")] = None,
    retries: Annotated[
        int | None, typer.Option(help="Retries on transient errors (default 3).")
    ] = None,
    timeout: Annotated[
        int | None, typer.Option(help="Time limit in seconds (default 300).")
    ] = None,
    no_route: Annotated[
        bool, typer.Option("--no-route", help="Do not add a route that queues the task.")
    ] = False,
    dry_run: DryRun = False,
    check: Check = False,
    force: Force = False,
    as_json: Json = False,
    project_option: ProjectOption = None,
) -> None:
    """Add one task to a scaffolded project: the function, a route that queues it, an
    optional schedule and a test, each inserted beside its siblings (never appended as
    text). The same command again is a no-op; other options are a conflict (--force).

    Example: bgtasks add-task resize_image --arg image_id:int --arg width:int
    """
    from bgtasks_gen.addtask import plan_add_task

    root = resolve_project(project, project_option)
    _locked(
        root,
        lambda: plan_add_task(
            root,
            name,
            args=arg or [],
            cron=cron,
            every=every,
            retries=retries,
            timeout=timeout,
            route=not no_route,
            force=force,
        ),
        dry_run=dry_run,
        check=check,
        as_json=as_json,
    )


@app.command("remove-task", epilog=EXIT_CODES)
def remove_task(
    name: Annotated[
        str,
        typer.Argument(
            help="A task added by `bgtasks add-task` or `bgtasks adopt`.",
            autocompletion=_complete_task_names,
        ),
    ],
    project: ProjectArgument = None,
    dry_run: DryRun = False,
    check: Check = False,
    force: Annotated[
        bool, typer.Option("--force", help="Remove it even if its body was edited since.")
    ] = False,
    as_json: Json = False,
    project_option: ProjectOption = None,
) -> None:
    """Remove exactly what add-task added for NAME: function, route, schedule entry,
    registration and test. Refused if the task's body was edited since (unless --force)."""
    from bgtasks_gen.addtask import plan_remove_task

    root = resolve_project(project, project_option)
    _locked(
        root,
        lambda: plan_remove_task(root, name, force=force),
        dry_run=dry_run,
        check=check,
        as_json=as_json,
    )


@app.command(epilog=EXIT_CODES)
def update(
    project: ProjectArgument = None,
    conflicts: Annotated[
        ConflictMode,
        typer.Option(
            help="What to do where your edits and the new templates overlap: refuse "
            "(write nothing, list them) or markers (write git-style conflict markers).",
        ),
    ] = ConflictMode.refuse,
    restore: Annotated[
        list[str] | None,
        typer.Option(
            "--restore",
            metavar="PATH",
            help="Bring back a generated file you deleted, as the installed templates "
            "render it now (repeatable). Only those files are written.",
        ),
    ] = None,
    api_shape: Annotated[
        ApiShape | None,
        typer.Option(
            "--api-shape",
            help="Move the task router onto another HTTP surface: common = the same paths, "
            "verbs, bodies and fields for celery, arq and taskiq (what new scaffolds get). "
            "Clients of the old routes must move too.",
        ),
    ] = None,
    with_features: WithFeatures = None,
    without_features: WithoutFeatures = None,
    dry_run: DryRun = False,
    check: Check = False,
    as_json: Json = False,
    project_option: ProjectOption = None,
) -> None:
    """Take template improvements without losing your edits: each generated file is
    merged three ways (what bgtasks generated last time, your file, the new render);
    the settings fields and the router include are re-applied if they went missing.
    Generated files you deleted stay deleted, unless named with --restore."""
    from bgtasks_gen.scaffold import plan_restore, plan_update

    root = resolve_project(project, project_option)
    markers = conflicts is ConflictMode.markers
    _locked(
        root,
        (lambda: plan_restore(root, restore))
        if restore
        else lambda: plan_update(
            root,
            markers=markers,
            api_shape=api_shape.value if api_shape else None,
            with_features=with_features or (),
            without_features=without_features or (),
        ),
        dry_run=dry_run,
        check=check,
        as_json=as_json,
        conflict_hint="nothing was written; see them with --dry-run, then resolve the overlap "
        "by hand or re-run with --conflicts markers to write git-style markers there",
    )


@app.command(epilog=EXIT_CODES)
def migrate(
    project: ProjectArgument = None,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The runner to move to. The moves: arq -> taskiq, builtin -> arq, "
            "builtin -> celery, builtin -> taskiq, celery -> taskiq.",
        ),
    ] = "taskiq",
    api_shape: Annotated[
        str,
        typer.Option(
            "--api-shape",
            help="kept (default): the routes answer what the old runner's answered, so "
            "clients change nothing; new: only the new runner's common task routes.",
        ),
    ] = "kept",
    dry_run: DryRun = False,
    check: Check = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Move even where the old runner's generated files or an added task's "
            "route/test were edited: those edits go with the files.",
        ),
    ] = False,
    as_json: Json = False,
    project_option: ProjectOption = None,
) -> None:
    """Move a project onto another runner, in one all-or-nothing write: arq -> taskiq,
    celery -> taskiq, builtin -> arq, builtin -> celery, builtin -> taskiq.

    The new runner's scaffold replaces the old one's generated modules; the routes keep
    answering what they answered (arq's paths and fields; builtin's paths and 202 body,
    now with a task_id and status_url), so clients do not notice, unless --api-shape new.
    Every task added with add-task comes along (arguments, schedule, retries, timeout),
    and a body you edited is kept line for line (arq's ctx["job_id"]/ctx["job_try"] and
    Celery's self.request.id/self.request.retries become control.task_id/control.tries;
    builtin's process_notification moves as an added task; a plain-def body onto arq
    runs in a thread). The old runner's settings
    fields, processes and requirements go, as bgtasks wrote them. What cannot be carried
    safely is refused, naming the lines.

    Example: bgtasks migrate . --to celery --dry-run
    """
    from bgtasks_gen.migrate import plan_migrate

    root = resolve_project(project, project_option)
    _locked(
        root,
        lambda: plan_migrate(root, to, force=force, api_shape=api_shape),
        dry_run=dry_run,
        check=check,
        as_json=as_json,
    )


@app.command("check")
def check_command(
    project: ProjectArgument = None, as_json: Json = False, project_option: ProjectOption = None
) -> None:
    """For CI: exit 0 when the scaffold is wired and current, 1 with a report otherwise
    (router not included, settings field missing, schedule naming a missing task,
    generated file missing, scaffold behind the installed templates, a write left half
    done), 2 when the folder is not a bgtasks project. Never writes."""
    import json

    from bgtasks_gen.check import check_project
    from bgtasks_gen.image_updates import older_images

    project = resolve_project(project, project_option)
    try:
        findings = check_project(project)
    except BgtasksError as error:  # not a bgtasks project at all: bad input, not a finding
        _fail(error, as_json)
    # advice, not a finding: the run files are the user's once written, and a router on
    # an older HTTP surface keeps its clients working
    updates = older_images(project)
    surface = _surface_move(project)
    if as_json:
        report = {
            "ok": not findings,
            "findings": [f.as_dict() for f in findings],
            "updates_available": [u.as_dict() for u in updates],
            "api_surface_move": surface,
        }
        typer.echo(json.dumps(report, indent=2))
    else:
        from rich.markup import escape

        from bgtasks_gen.report import out

        for finding in findings:
            out.print(
                f"[red]✗[/red] {escape(finding.problem)}  [dim]({escape(finding.where)})[/dim]"
            )
            out.print(f"    [dim]fix:[/dim] {escape(finding.fix)}")
        if not findings:
            out.print("[green]✓[/green] the scaffold is wired and current")
        for update in updates:
            out.print(
                f"[yellow]update available:[/yellow] {escape(update.image)} -> "
                f"{escape(update.current)}  [dim]({escape(update.where)})[/dim]"
            )
        if surface:
            out.print(f"[yellow]update available:[/yellow] {escape(surface)}")
    raise typer.Exit(int(ExitCode.CHANGES if findings else ExitCode.OK))


def _surface_move(root: Path) -> str | None:
    """The move to the common HTTP surface, as advice; none for a project whose state
    cannot be read (an interrupted first run: the findings already say so)."""
    from bgtasks_gen.addtask import load_project
    from bgtasks_gen.api_surface import move_note

    try:
        return move_note(load_project(root))
    except BgtasksError:
        return None


@app.command("list")
def list_command(
    project: ProjectArgument = None, as_json: Json = False, project_option: ProjectOption = None
) -> None:
    """The project's tasks, read from its code (hand-written ones included): route,
    schedule, retries, time limit, and whether init, add-task or you wrote it."""
    import json

    from bgtasks_gen.addtask import load_project
    from bgtasks_gen.apply import project_lock
    from bgtasks_gen.inventory import TABLE_COLUMNS, list_tasks

    project = resolve_project(project, project_option)
    try:
        with project_lock(project):
            _recover(project)
        tasks = list_tasks(load_project(project))
    except BgtasksError as error:
        _fail(error, as_json)
    if as_json:
        typer.echo(json.dumps([t.as_dict() for t in tasks], indent=2))
        return
    from rich.table import Table

    from bgtasks_gen.report import out

    table = Table(title=f"Tasks in {project}")
    for column in TABLE_COLUMNS:
        table.add_column(column)
    for task in tasks:
        table.add_row(*task.cells())
    out.print(table)


def _field_names(project: Path, runners: list[str]) -> dict[str, dict[str, str]]:
    """runner -> (settings field key -> the attribute name the project at `project` uses
    for it); {} outside a project (then caveats name fields in UPPER case, the default
    style). The project is discovered once for all runners: in a big repository that is
    the slow part of the command."""
    if not ((project / ".bgtasks.toml").is_file() or (project / "pyproject.toml").is_file()):
        return {}
    from bgtasks_gen.discovery import discover
    from bgtasks_gen.runners import get_runner
    from bgtasks_gen.scaffold import choose_fields

    try:
        layout = discover(project)
    except BgtasksError:
        return {}
    return {
        runner: {c.key: c.name for c in choose_fields(get_runner(runner), layout)}
        for runner in runners
    }


@app.command()
def runners(
    project: ProjectArgument = None, as_json: Json = False, project_option: ProjectOption = None
) -> None:
    """Which runner to choose: the task selection guide, with each runner's caveats
    (settings named as PROJECT, by default the current folder, spells them)."""
    import json

    from bgtasks_gen.runners import get_runner, plugin_problems, registry

    root = resolve_project(project, project_option)
    specs = []
    problems = list(plugin_problems())
    for name, found in registry().runners.items():
        try:
            specs.append(get_runner(name))
        except BgtasksError as error:
            if not found.builtin:  # a built-in one not shipped yet is simply not listed
                problems.append(f"{error.message}: {error.hint}")
    if problems:
        from rich.markup import escape

        from bgtasks_gen.report import err

        for problem in problems:
            err.print(f"warning: {escape(problem)}")
    names = _field_names(root, [s.name for s in specs])
    caveats = {s.name: s.caveats_for(names.get(s.name, {})) for s in specs}
    if as_json:
        rows = [
            {
                "runner": s.name,
                "summary": s.summary,
                "use_when": s.use_when,
                "caveats": list(caveats[s.name]),
            }
            for s in specs
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from bgtasks_gen.report import out

    table = Table(title="Task selection guide", show_lines=True)
    table.add_column("Use case")
    table.add_column("Runner", style="bold")
    table.add_column("What it is")
    table.add_column("Caveats")
    for spec in specs:
        table.add_row(
            spec.use_when,
            spec.name,
            spec.summary,
            "\n".join(f"- {c}" for c in caveats[spec.name]),
        )
    out.print(table)


from bgtasks_gen.cli_adopt import register as _register_adopt  # noqa: E402
from bgtasks_gen.cli_failed import register as _register_failed  # noqa: E402
from bgtasks_gen.cli_stack import register as _register_stack  # noqa: E402

_register_stack(app)
_register_failed(app)
_register_adopt(app)


class _ReaderMayLeave(io.RawIOBase):
    """A standard stream's file descriptor whose reader may stop reading early (`| head`).

    The write that finds the reader gone points the descriptor at os.devnull, as Python's
    SIGPIPE recipe does, and counts the bytes as written: the command carries on, finishes
    its work and exits with its own code, instead of ending at that print (typer turns a
    BrokenPipeError into exit 1, whatever the command did).
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return os.write(self._fd, data)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._fd)
            os.close(devnull)
            return memoryview(data).nbytes


def _tolerate_closed_output() -> None:
    """stdout and stderr through _ReaderMayLeave, with their encoding and buffering."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # closed at start, or not a file
            continue
        stream.flush()
        setattr(
            sys,
            name,
            io.TextIOWrapper(
                io.BufferedWriter(_ReaderMayLeave(fd)),
                encoding=stream.encoding,
                errors=stream.errors,
                line_buffering=stream.line_buffering,
            ),
        )


def main() -> None:
    _tolerate_closed_output()
    app()
