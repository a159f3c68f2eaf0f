"""`add-task` and `remove-task`: grow or shrink a scaffolded project one task at a time.

Snippets are rendered with plain jinja2 (never copier: this is the command users run
most, so it stays light). Where each part goes is found structurally (patch/outline.py:
the standard library's `ast`, or libcst for syntax newer than the interpreter), never by
appending to the end of a file; every part is a top-level definition or one entry of a
schedule/registration literal, inserted as whole lines, so removing it is the exact
inverse of adding it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bgtasks_gen.cron_check import both_day_fields_note, refuse_never_firing
from bgtasks_gen.discovery.layout import first_party_names
from bgtasks_gen.errors import BadInput, ConflictError
from bgtasks_gen.part_edits import (
    as_written,
    body_hash,
    edited_body,
    edited_definitions,
    edited_entry,
)
from bgtasks_gen.patch import schedule
from bgtasks_gen.patch.definitions import (
    add_definitions,
    bound_names,
    definition_code,
    definition_names,
    remove_definitions,
)
from bgtasks_gen.patch.outline import SourceSyntaxError, Statement, check_syntax
from bgtasks_gen.plan import Plan, check_python, patched, read_existing
from bgtasks_gen.render import snippets_dir
from bgtasks_gen.reserved_args import PROBE, reserved_argument_names
from bgtasks_gen.ruff_style import ProjectStyle
from bgtasks_gen.runners import available_runners, get_runner, runner_names
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.schedules import arq_cron_kwargs, celery_schedule
from bgtasks_gen.state import STATE_FILE, read_state, render_state, scaffolded_spec
from bgtasks_gen.task_request import (
    TaskArg,
    TaskRequest,
    build_request,
    parse_arg,
    parse_cron,
)


@dataclass(frozen=True)
class Project:
    """A scaffolded project as its state file describes it."""

    root: Path
    state: Mapping[str, object]
    spec: RunnerSpec
    layout: Mapping[str, object]

    def package_file(self, dotted: str, name: str) -> str:
        source = str(self.layout.get("source_root", "."))
        folder = Path(source, *dotted.split("."))
        return (folder / name).as_posix()

    @property
    def tasks_file(self) -> str:
        return self.package_file(str(self.layout["tasks_module"]), self.spec.tasks_file)

    @property
    def router_file(self) -> str:
        return self.package_file(str(self.layout["routes_module"]), f"{self.spec.router_file}.py")

    @property
    def test_file(self) -> str:
        return f"{self.layout.get('tests_dir', 'tests')}/{self.spec.test_file}"

    def routes_prefix(self, router_source: str) -> str:
        """The path the router's routes are served under: the include's prefix (recorded
        by init), then the router's own `prefix="..."` read from its source."""
        own = re.search(r'prefix="([^"]*)"', router_source)
        return str(self.layout.get("api_prefix") or "") + (own.group(1) if own else "")

    @property
    def worker_file(self) -> str | None:
        if self.spec.worker_file is None:
            return None
        return self.package_file(str(self.layout["tasks_module"]), self.spec.worker_file)

    @property
    def tasks(self) -> dict[str, dict[str, object]]:
        tasks = self.state.get("tasks", {})
        return {k: dict(v) for k, v in tasks.items()} if isinstance(tasks, dict) else {}


def load_project(root: Path) -> Project:
    if not root.is_dir():
        raise BadInput(f"{root} is not a project folder", "pass the folder of your project")
    state = read_state(root)
    if not state:
        raise BadInput(
            f"{root} has no {STATE_FILE}: no task runner was set up here by bgtasks",
            f"run `bgtasks init {root} --runner RUNNER` first "
            f"(RUNNER: {', '.join(runner_names())})",
        )
    layout = state.get("layout", {})
    if not isinstance(layout, dict) or "tasks_module" not in layout:
        raise BadInput(
            f"{root / STATE_FILE} has no [layout] table with tasks_module",
            f"restore it from version control, or run `bgtasks init {root}` again",
        )
    spec = scaffolded_spec(get_runner(str(state["runner"])), layout)
    return Project(root.resolve(), state, spec, layout)


def _snippet_context(
    project: Project, request: TaskRequest, planned: Mapping[str, str] | None = None
) -> dict[str, object]:
    from bgtasks_gen.template_filters import require_dotted

    words = request.name.split("_")
    scheduled = bool(request.cron or request.every)
    # the snippets write both as code: the state file is text anyone can edit
    state_file = project.root / STATE_FILE
    for key in ("tasks_module", "routes_module"):
        require_dotted(str(project.layout[key]), f"[layout] {key}", state_file)
    return {
        "name": request.name,
        "args": request.args,
        "path": "-".join(words),
        "model": "".join(w.capitalize() for w in words) + "Request",
        "retries": request.retries,
        "timeout": request.timeout,
        "cron": request.cron,
        "every": request.every,
        "route": request.route,
        "tasks_module": project.layout["tasks_module"],
        "routes_module": project.layout["routes_module"],
        "pydantic_v1": bool(project.layout.get("pydantic_v1", False)),
        "legacy_typing": bool(project.layout.get("legacy_typing", False)),
        # the routes of another runner this router answers with (`migrate`), or ""
        "api_shape": str(project.layout.get("api_shape", "")),
        # the common router's own prefix ("tasks", or "<runner>-tasks" beside another)
        "queue_prefix": _queue_prefix(project),
        # the fields of a `cron(...)` element: only a runner whose schedules are those
        "cron_kwargs": arq_cron_kwargs(request)
        if scheduled and project.spec.schedule_kind == "cron"
        else [],
        # a test module that finds the router's served prefix itself (a project
        # scaffolded before it did gets the bare path its tests use)
        # (the planned one when the module is not written yet: `migrate` onto arq)
        "served_paths": "\ndef served(" in _test_module(project, planned),
        "beat_schedule": celery_schedule(request) if scheduled else "",
    }


def _test_module(project: Project, planned: Mapping[str, str] | None) -> str:
    on_disk = read_existing(project.root, project.test_file)
    return on_disk if on_disk is not None else (planned or {}).get(project.test_file, "")


def render_snippets(
    project: Project,
    request: TaskRequest,
    *,
    styled: bool = True,
    planned: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """{part: code} for the parts this task has: task, route, test, schedule.

    `styled`: the definitions in the project's own ruff style (ruff_style.py), as they
    stand in its modules once inserted, so that what add-task records and later compares
    (remove-task, migrate) is what the files hold. A replay restyles whole modules after
    inserting, so it asks for them unstyled (one ruff run per module, not per part).
    `planned`: modules planned but not written yet, read where the disk has none."""
    import jinja2

    from bgtasks_gen.template_filters import add_filters

    folder = snippets_dir(project.spec)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    add_filters(env)
    context = _snippet_context(project, request, planned)
    parts = ["task", "test"] + (["route"] if request.route else [])
    if (request.cron or request.every) and project.spec.schedule_kind in ENTRY_KINDS + (
        "external",
    ):
        parts.append("schedule")  # "label" and "decorator": the task snippet carries it
    if (folder / "register.py.jinja").exists():
        parts.append("register")
    rendered = {part: env.get_template(f"{part}.py.jinja").render(context) for part in parts}
    style = _project_style(project) if styled else None
    if style is not None and style.active:
        for part, (where, _) in _places(project).items():
            rel = where(project)
            if part in rendered and rel is not None:
                rendered[part] = style.apply(rel, rendered[part])
    return rendered


_STYLES: dict[tuple[Path, str, str], ProjectStyle] = {}


def _project_style(project: Project) -> ProjectStyle:
    """The project's ruff style, found once per command (one project per process)."""
    tasks, routes = str(project.layout["tasks_module"]), str(project.layout["routes_module"])
    key = (project.root, tasks, routes)
    if key not in _STYLES:
        _STYLES[key] = ProjectStyle(project.root, first_party_names(tasks, routes))
    return _STYLES[key]


def request_from_state(name: str, options: Mapping[str, object]) -> TaskRequest:
    args = options.get("args", [])
    cron = str(options.get("cron") or "") or None
    every = int(str(options.get("every") or 0)) or None
    return TaskRequest(
        name=name,
        args=tuple(parse_arg(str(a)) for a in args) if isinstance(args, list) else (),
        cron=parse_cron(cron) if cron else None,
        every=every,
        retries=int(str(options.get("retries", 3))),
        timeout=int(str(options.get("timeout", 300))),
        route=bool(options.get("route", True)),
    )


def _is_route(statement: Statement) -> bool:
    return statement.kind == "def" and any(d.startswith("router.") for d in statement.decorators)


def _is_task(statement: Statement) -> bool:
    return statement.kind == "def" and not (statement.name or "_").startswith("_")


# schedule kinds whose schedule part is one entry of a literal in the worker module
# (patch/schedule.py); an "external" one is top-level definitions there instead
ENTRY_KINDS = ("beat", "cron")


def _entry_kind(project: Project) -> str | None:
    kind = project.spec.schedule_kind
    return kind if kind in ENTRY_KINDS else None


def _schedule_definitions(project: Project) -> str | None:
    """The worker module, when the runner's schedule part is definitions going into it."""
    return project.worker_file if project.spec.schedule_kind == "external" else None


# part -> (which file, where to insert)
PartFile = Callable[[Project], str | None]
PLACES: dict[str, tuple[PartFile, Callable[[Statement], bool] | None]] = {
    "task": (lambda p: p.tasks_file, _is_task),
    "route": (lambda p: p.router_file, _is_route),
    "test": (lambda p: p.test_file, None),
}


def _queue_prefix(project: Project) -> str:
    from bgtasks_gen.api_surface import router_prefix

    runners = project.state.get("runners", [project.spec.name])
    return router_prefix(
        project.spec.name,
        str(project.layout.get("api_shape", "")),
        [str(r) for r in runners] if isinstance(runners, list) else [project.spec.name],
    )


def _places(project: Project) -> dict[str, tuple[PartFile, Callable[[Statement], bool] | None]]:
    """PLACES, and the schedule part when it is definitions ("external" schedules)."""
    if _schedule_definitions(project) is None:
        return PLACES
    return {**PLACES, "schedule": (_schedule_definitions, None)}


class _Edits:
    """The files a command edits, read once, changed in memory."""

    def __init__(self, project: Project, files: Mapping[str, str] | None = None) -> None:
        self.project = project
        self.files = files  # in-memory files to edit instead of the disk (init's replay)
        self.old: dict[str, str] = {}
        self.new: dict[str, str] = {}
        self.checked: set[str] = set()  # files changed only by whole-definition splices

    def get(self, rel: str) -> str:
        if rel not in self.new:
            if self.files is not None:
                text = self.files.get(rel)
            else:
                try:
                    text = read_existing(self.project.root, rel)
                except UnicodeDecodeError as exc:
                    raise BadInput(
                        f"{rel} is not UTF-8 (byte {exc.start} cannot be decoded)",
                        "bgtasks only edits UTF-8 source files; convert the file and run again",
                    ) from exc
            if text is None:
                raise BadInput(
                    f"{rel} is missing: add-task edits the files `bgtasks init` generated",
                    f"restore it, or run `bgtasks init --runner {self.project.spec.name}` again",
                )
            try:
                check_syntax(text)
            except SourceSyntaxError as exc:
                raise BadInput(
                    f"{rel}:{exc.line}:{exc.column}: syntax error, cannot be parsed",
                    "fix it first; nothing was written",
                ) from exc
            self.old[rel] = self.new[rel] = text
        return self.new[rel]

    def set(self, rel: str, text: str) -> None:
        self.new[rel] = text
        self.checked.discard(rel)

    def splice(self, rel: str, text: str) -> None:
        """A whole top-level definition (a parsed snippet) went in or out at a statement
        boundary of a module that parsed: the result parses too, so it is not parsed
        again (at 500 tasks a parse of the four grown modules costs about 0.15 s)."""
        known = rel in self.checked or rel not in self.new or self.new[rel] == self.old[rel]
        self.new[rel] = text
        if known:
            self.checked.add(rel)

    def plan(self, state_text: str) -> Plan:
        plan = Plan(self.project.root)
        layout = self.project.layout
        first_party = first_party_names(str(layout["tasks_module"]), str(layout["routes_module"]))
        # the project's own ruff style, for modules that were in it before the edit
        style = ProjectStyle(self.project.root, first_party)
        for rel in sorted(self.new):
            if self.new[rel] != self.old[rel]:
                self.new[rel] = style.apply_to_edit(rel, self.old[rel], self.new[rel])
            plan.changes.append(patched(self.project.root, rel, self.old[rel], self.new[rel]))
        plan.notes.extend(style.notes)
        old_state = read_existing(self.project.root, STATE_FILE) or ""
        plan.changes.append(patched(self.project.root, STATE_FILE, old_state, state_text))
        check_python([c for c in plan.changes if c.path not in self.checked])
        return plan


def _state_text(project: Project, tasks: dict[str, dict[str, object]]) -> str:
    files = project.state.get("files", {})
    runners = project.state.get("runners", [project.spec.name])
    adopted = project.state.get("adopted")  # `bgtasks adopt`'s records stay as they are
    return render_state(
        [str(r) for r in runners] if isinstance(runners, list) else [project.spec.name],
        {k: v for k, v in project.layout.items()},
        {k: str(v) for k, v in files.items()} if isinstance(files, dict) else {},
        tasks,
        adopted if isinstance(adopted, dict) else None,
    )


def _snippet_hash(snippet: str, name: str) -> str:
    """The task function's hash, from the snippet just inserted: add_definitions copies
    its lines verbatim, so there is no need to parse the grown module again."""
    return body_hash(definition_code(snippet, [name]) or "")


def _remove_parts(project: Project, edits: _Edits, name: str, snippets: Mapping[str, str]) -> None:
    for part, (where, _) in _places(project).items():
        if part in snippets:
            rel = where(project)
            assert rel is not None
            names = set(definition_names(snippets[part]))
            edits.splice(rel, remove_definitions(edits.get(rel), names))
    worker = project.worker_file
    kind = _entry_kind(project)
    if worker and ((kind and "schedule" in snippets) or "register" in snippets):
        text = edits.get(worker)
        if kind and "schedule" in snippets:
            text = schedule.remove_entry(text, kind, name)
        if "register" in snippets:
            text = schedule.remove_entry(text, "register", name)
        edits.set(worker, text)


def _add_parts(
    project: Project,
    edits: _Edits,
    name: str,
    snippets: Mapping[str, str],
    entries: list[tuple[str, dict[str, str]]] | None = None,
) -> None:
    """Insert a task's definitions and its worker entries (`entries`: several tasks'
    worker entries at once, in order, for a replay)."""
    for part, (where, after) in _places(project).items():
        if part in snippets:
            rel = where(project)
            assert rel is not None
            edits.splice(rel, add_definitions(edits.get(rel), snippets[part], after))
    worker = project.worker_file
    pending = entries if entries is not None else [(name, dict(snippets))]
    entry_kind = _entry_kind(project)
    if worker and any(("schedule" in s and entry_kind) or "register" in s for _, s in pending):
        text = edits.get(worker)
        for part, kind in (("register", "register"), ("schedule", entry_kind)):
            wanted = [(task, parts[part]) for task, parts in pending if part in parts]
            if wanted and kind:
                text = schedule.add_entries(text, kind, wanted)
        edits.set(worker, text)


def _parts_identical(project: Project, edits: _Edits, snippets: Mapping[str, str]) -> bool:
    for part, (where, _) in _places(project).items():
        if part in snippets:
            rel = where(project)
            assert rel is not None
            names = definition_names(snippets[part])
            if definition_code(edits.get(rel), names) != definition_code(snippets[part], names):
                return False
    return True


def _refuse_for_runner(
    spec: RunnerSpec, request: TaskRequest, retries: int | None, timeout: int | None
) -> None:
    if spec.schedule_kind is None and (request.cron or request.every):
        schedulers = [s.name for s in available_runners() if s.schedule_kind is not None]
        raise BadInput(
            f"the {spec.name} runner cannot schedule tasks: its tasks only run when a "
            "request queues them",
            "drop --cron/--every, or use a queue with a scheduler (--runner "
            f"{' or '.join(schedulers)})",
        )
    if spec.max_timeout is not None and request.timeout > spec.max_timeout:
        raise BadInput(
            f"--timeout {request.timeout} is above the {spec.name} scaffold's limit of "
            f"{spec.max_timeout} s per task",
            "raise TASK_SOFT_TIME_LIMIT and TASK_TIME_LIMIT in celery_app.py first (the "
            "broker's redelivery timeouts are sized from them)",
        )
    if not spec.retries_and_timeouts and (retries is not None or timeout is not None):
        others = [s.name for s in available_runners() if s.retries_and_timeouts]
        raise BadInput(
            f"{spec.name} tasks never retry and have no time limit",
            f"drop --retries/--timeout, or use --runner {' or '.join(others)} for them",
        )


def plan_add_task(
    root: Path,
    name: str,
    *,
    args: list[str],
    cron: str | None = None,
    every: int | None = None,
    retries: int | None = None,
    timeout: int | None = None,
    route: bool = True,
    force: bool = False,
) -> Plan:
    request = build_request(
        name,
        args,
        cron,
        every,
        3 if retries is None else retries,
        300 if timeout is None else timeout,
        route,
    )
    project = load_project(root)
    _refuse_for_runner(project.spec, request, retries, timeout)
    refuse_never_firing(project.spec.name, request)
    edits = _Edits(project)
    _refuse_reserved_args(project, edits, request)
    snippets = render_snippets(project, request)
    tasks = project.tasks
    if name in tasks:
        recorded = {k: v for k, v in tasks[name].items() if k not in ("hash", "runner", "order")}
        if recorded == request.options():
            if _parts_identical(project, edits, snippets):
                return edits.plan(_state_text(project, tasks))
        if not force:
            raise ConflictError(
                f"task {name!r} was already added with other options or has been edited",
                "nothing was written; pass --force to replace it, or remove-task it first",
            )
        old = render_snippets(project, request_from_state(name, tasks[name]))
        _remove_parts(project, edits, name, old)
    _refuse_taken(project, edits, name, snippets)
    _add_parts(project, edits, name, snippets)
    tasks[name] = {
        **request.options(),
        "runner": project.spec.name,
        "order": max((int(str(t.get("order", 0))) for t in tasks.values()), default=0) + 1,
        "hash": _snippet_hash(snippets["task"], name),
    }
    plan = edits.plan(_state_text(project, tasks))
    if route:
        plan.notes.append(f"route: POST {_route_url(project, request)}")
    plan.notes.append(restart_hint(project.spec, scheduled=bool(request.cron or request.every)))
    note = both_day_fields_note(project.spec.name, request)
    if note:
        plan.notes.append(note)
    return plan


def restart_hint(spec: RunnerSpec, *, scheduled: bool) -> str:
    """Which running processes load the new task only when restarted (RunnerSpec.restart),
    which `bgtasks dev` does when the task code changes; the web app reloads by itself
    under `bgtasks dev` and `uvicorn --reload`."""
    web = "the web app reloads by itself under `bgtasks dev` (or `uvicorn --reload`)"
    if spec.restart is None:
        return f"restart: nothing to restart, {web}"
    processes = spec.restart[1] if scheduled else spec.restart[0]
    return (
        f"restart {processes} (under `bgtasks dev` that happens by itself, unless it runs "
        f"with --no-reload); {web}"
    )


def _route_url(project: Project, request: TaskRequest) -> str:
    router = read_existing(project.root, project.router_file) or ""
    return f"{project.routes_prefix(router)}/{'-'.join(request.name.split('_'))}"


def _refuse_taken(project: Project, edits: _Edits, name: str, snippets: Mapping[str, str]) -> None:
    """The task's name, and every name its parts define, must be free in each module a
    part goes into: a task called `time` would replace the tasks module's `import time`
    and break every task that sleeps."""
    for part, (where, _) in PLACES.items():
        if part not in snippets:
            continue
        rel = where(project)
        assert rel is not None
        bound = bound_names(edits.get(rel))
        for taken in [name, *definition_names(snippets[part])]:
            if taken in bound:
                raise BadInput(
                    f"{taken!r} is already defined in {rel} (line {bound[taken]})",
                    "pick another task name: one named so would shadow it there, and "
                    "bgtasks never replaces code it did not add",
                )


def _refuse_reserved_args(project: Project, edits: _Edits, request: TaskRequest) -> None:
    """An argument may not take a name the generated code already uses (see
    reserved_args.py): the snippets are rendered with a probe argument to find them."""
    if not request.args:
        return
    probe = render_snippets(project, replace(request, args=(TaskArg(PROBE, "int"),)), styled=False)
    router = project.router_file

    def routes_function(function: str) -> str | None:
        return definition_code(edits.get(router), [function]) if request.route else None

    reserved = reserved_argument_names(probe, routes_function)
    for arg in request.args:
        why = reserved.why(arg.name)
        if why:
            raise BadInput(
                f"argument name {arg.name!r} is {why}",
                f"rename the argument; names the generated {project.spec.name} code already "
                f"uses: {', '.join(reserved.from_snippets())}, and pydantic's BaseModel "
                "attributes",
            )


def replay_tasks(
    project: Project, files: Mapping[str, str], *, as_on_disk: bool = False
) -> dict[str, str]:
    """The freshly rendered files with every task add-task added put back in, so that
    `init` run again compares like with like (and later, `update` merges like with like).

    `as_on_disk`: each added definition as the project's file holds it (a task body the
    user filled in is theirs, not a difference from the scaffold), where it is there."""
    edits = _Edits(project, files)
    added = [
        (
            name,
            render_snippets(
                project, request_from_state(name, options), styled=False, planned=files
            ),
        )
        for name, options in sorted(project.tasks.items(), key=_added_order)
        if options.get("runner", project.spec.name) == project.spec.name
    ]
    if as_on_disk:
        added = [(name, _parts_on_disk(project, snippets)) for name, snippets in added]
    # one splice per file for all tasks: the same text as adding them one by one
    batched: dict[str, str] = {}
    places = _places(project)
    for _, snippets in added:
        for part, code in snippets.items():
            if part in places:
                batched[part] = batched.get(part, "") + code + "\n\n"
    _add_parts(project, edits, "", batched, entries=added)
    return {**files, **edits.new}


def _parts_on_disk(project: Project, snippets: Mapping[str, str]) -> dict[str, str]:
    parts = dict(snippets)
    for part, (where, _) in _places(project).items():
        rel = where(project)
        if part in parts and rel is not None:
            parts[part] = as_written(read_existing(project.root, rel), parts[part])
    return parts


def _added_order(item: tuple[str, dict[str, object]]) -> int:
    return int(str(item[1].get("order", 0)))


def plan_remove_task(root: Path, name: str, *, force: bool = False) -> Plan:
    project = load_project(root)
    tasks = project.tasks
    if name not in tasks:
        # a task `bgtasks adopt` wrote: its calls go back to add_task (adopt/removal.py)
        from bgtasks_gen.adopt.removal import adopted_records, plan_remove_adopted

        if name in adopted_records(project):
            return plan_remove_adopted(project, name, force=force)
        known = ", ".join(sorted(tasks)) or "none"
        raise BadInput(
            f"task {name!r} was not added by `bgtasks add-task` (added tasks: {known})",
            "remove-task only removes what add-task added; edit your own code by hand",
        )
    request = request_from_state(name, tasks[name])
    edits = _Edits(project)
    snippets = render_snippets(project, request)
    edited = [] if force else _edited_parts(project, edits, name, snippets)
    if edited:
        raise ConflictError(
            f"{_listed(edited)} of task {name!r} changed since add-task wrote "
            f"{'it' if len(edited) == 1 else 'them'}",
            "nothing was written; pass --force to remove it anyway (your edits go too)",
        )
    _remove_parts(project, edits, name, snippets)
    del tasks[name]
    return edits.plan(_state_text(project, tasks))


def _edited_parts(
    project: Project, edits: _Edits, name: str, snippets: Mapping[str, str]
) -> list[str]:
    """A label per part of the task that is not as add-task wrote it (see
    part_edits.py), naming its file: "the body (app/tasks/tasks.py)", "the route (...)"."""
    recorded = project.tasks[name].get("hash")
    edited = []
    if edited_body(
        edits.get(project.tasks_file),
        name,
        str(recorded) if recorded is not None else None,
        snippets["task"],
    ):
        edited.append(f"the body ({project.tasks_file})")
    places = _places(project)
    for part in ("route", "test", "schedule"):
        if part not in places:
            continue
        rel = places[part][0](project)
        if part in snippets and rel and edited_definitions(edits.get(rel), snippets[part]):
            edited.append(f"the {part} ({rel})")
    worker = project.worker_file
    kinds = {"schedule": _entry_kind(project), "register": "register"}
    for part, kind in kinds.items():
        if worker and kind and part in snippets:
            if edited_entry(edits.get(worker), kind, name, snippets[part]):
                literal = schedule.CONTAINERS[kind]
                edited.append(f"its `{literal}` entry ({worker})")
    return edited


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
