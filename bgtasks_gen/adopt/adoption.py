"""`bgtasks adopt`: plan the move of a project's BackgroundTasks jobs onto its queue.

The scan (scan.py, movable.py) says which add_task calls can move. For each one this
plans, in memory and all at once (a Plan: written all or nothing, or shown with
--dry-run):
- a task of the runner that runs the call's function, in the adopted module
  (adopted_module.py), one per function however many routes call it;
- the call replaced by the enqueue of that task (rewrite.py);
- the worker's hook, so the worker imports the adopted module;
- the task recorded in .bgtasks.toml, under [adopted.<task>], with what `remove-task`
  needs to undo it (undo.py): each call as it was, its enqueue's digest, the import
  of its function that went, and the digest of the task's code.

A call the scan refused, or one this cannot rewrite (its value is used, its arguments
do not fit the function, an annotation cannot be written back), is left byte for byte
as it was and reported with the reason and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from bgtasks_gen.addtask import Project, load_project, restart_hint
from bgtasks_gen.adopt.adopted_module import (
    ASYNC_ENQUEUE,
    BLOCKING_ENQUEUE,
    MODULE_FILE,
    MODULE_NAME,
    WIRINGS,
    Wiring,
    existing_task,
    refuse_foreign,
    render_header,
    render_task,
    with_tasks,
)
from bgtasks_gen.adopt.imports import (
    add_import,
    free_local_name,
    import_binding,
    imported_as,
    prune_imports,
)
from bgtasks_gen.adopt.rewrite import EXPRESSION, Position, QueuedCall, locate_calls, rewrite_calls
from bgtasks_gen.adopt.scan import AddTaskCall, Target, scan_project
from bgtasks_gen.adopt.style import AdoptStyle
from bgtasks_gen.adopt.task_code import NotWritable, queue_name, task_code, task_name
from bgtasks_gen.adopt.undo import (
    DIGEST_KEY,
    CallUndo,
    add_call_record,
    call_digest,
    task_digest,
)
from bgtasks_gen.adopt.worker_hook import HOOK_COMMENT, include_module, spread_functions
from bgtasks_gen.discovery.layout import first_party_names
from bgtasks_gen.errors import BadInput, ConflictError
from bgtasks_gen.modules import SKIPPED_DIRS
from bgtasks_gen.patch.definitions import bound_names
from bgtasks_gen.plan import FileChange, Plan, check_python, generated, patched, read_existing
from bgtasks_gen.state import STATE_FILE, render_state

# reasons of this module's own, beside movable.REASON_CODES
ARGUMENTS = "arguments"
NOT_A_STATEMENT = "not-a-statement"
ANNOTATION = "annotation"
RECORD_KIND = "adopted"


@dataclass(frozen=True)
class Moved:
    call: AddTaskCall
    task: str  # the task's function in the adopted module
    queue_name: str
    enqueue: str  # how the route queues it now, e.g. "await adopted.enqueue"
    new_task: bool  # False: a task an earlier adopt (or another call) wrote
    undo: CallUndo | None = None  # how to put the call back (set once it is rewritten)

    def to_dict(self) -> dict[str, object]:
        target = self.call.target
        return {
            "file": self.call.file,
            "line": self.call.line,
            "route": self.call.route,
            "function": target.qualified if target else "",
            "task": self.task,
            "queue_name": self.queue_name,
            "enqueue": self.enqueue,
            "new_task": self.new_task,
        }


@dataclass(frozen=True)
class Left:
    call: AddTaskCall
    code: str
    reason: str
    fix: str

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.call.file,
            "line": self.call.line,
            "route": self.call.route,
            "callable": self.call.callable_source,
            "reason_code": self.code,
            "reason": self.reason,
            "fix": self.fix,
        }


@dataclass
class Adoption:
    plan: Plan
    runner: str
    moved: list[Moved] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # new task -> its code's digest

    def to_dict(self) -> dict[str, object]:
        return {
            "runner": self.runner,
            "moved": [m.to_dict() for m in self.moved],
            "left": [entry.to_dict() for entry in self.left],
        }


def wiring_for(project: Project) -> Wiring:
    """The runner's wiring; refused for a runner without a queue worker to move to."""
    name = project.spec.name
    if name in WIRINGS:
        return WIRINGS[name]
    if name == "builtin":
        hint = (
            "set up a queue runner first, e.g. `bgtasks init --runner celery` (or arq, "
            "taskiq), then run `bgtasks adopt` again"
        )
    else:
        hint = "adopt moves calls to celery, arq or taskiq only"
    raise BadInput(
        f"this project's runner is {name}: `bgtasks adopt` moves BackgroundTasks jobs onto "
        "a celery, arq or taskiq worker; nothing was written",
        hint,
    )


def _bind(call: AddTaskCall, target: Target) -> tuple[tuple[str, ...], str]:
    """The parameter each positional argument goes to, and "" when the call fits the
    function's signature; else () and why not."""
    params = {p.name: p for p in target.params}
    positional = [p for p in target.params if p.kind in ("positional-only", "positional")]
    if len(call.args) > len(positional):
        return (), (
            f"the call passes {len(call.args)} positional argument(s) and `{target.name}` "
            f"takes {len(positional)}"
        )
    names = tuple(p.name for p in positional[: len(call.args)])
    given = set(names)
    for key, _ in call.kwargs:
        param = params.get(key)
        if param is None or param.kind == "positional-only":
            return (), f"`{target.name}` has no parameter `{key}` to pass by name"
        if key in given:
            return (), f"the call passes `{key}` twice"
        given.add(key)
    missing = [p.name for p in target.params if not p.has_default and p.name not in given]
    if missing:
        shown = ", ".join(f"`{name}`" for name in missing)
        return (), f"the call does not pass {shown}, which `{target.name}` requires"
    return names, ""


def _left_from_scan(call: AddTaskCall) -> Left:
    return Left(call, call.reason_code, call.reason, call.fix)


@dataclass
class _Tasks:
    """The adopted module's tasks: those it has, those this run adds."""

    project: Project
    wiring: Wiring
    old: str | None  # the module as it is, None when there is none yet
    taken: set[str]  # names bound in the module or chosen in this run
    header: set[str]  # names the module's top binds
    by_source: dict[str, tuple[str, bool]] = field(default_factory=dict)  # -> (name, new)
    snippets: list[str] = field(default_factory=list)

    def task_for(self, target: Target) -> tuple[str, bool]:
        """The task running `target`: one the module has, or one added now (True).
        Raises NotWritable when its body cannot be written."""
        if target.qualified in self.by_source:
            return self.by_source[target.qualified]
        number = 1
        while True:
            name = task_name(target, number)
            existing = existing_task(self.old, name, queue_name(target))
            if existing:
                found = (name, False)
                break
            if existing is None and name not in self.taken:
                code = task_code(
                    target,
                    name,
                    self.wiring.call,
                    header_names=self.header,
                    pydantic_v1=bool(self.project.layout.get("pydantic_v1", False)),
                )
                self.snippets.append(render_task(self.project.spec, code))
                found = (name, True)
                break
            number += 1
        self.taken.add(found[0])
        self.by_source[target.qualified] = found
        return found


def plan_adopt(root: Path) -> Adoption:
    project = load_project(root)
    wiring = wiring_for(project)
    spec, layout = project.spec, project.layout
    tasks_module = str(layout["tasks_module"])
    for needed in wiring.needs:
        rel = project.package_file(tasks_module, needed)
        if read_existing(project.root, rel) is None:
            raise BadInput(
                f"{rel} is missing: the adopted tasks are queued through it",
                f"bring it back with `bgtasks update --restore {rel}`; nothing was written",
            )
    module_rel = project.package_file(tasks_module, MODULE_FILE)
    old_module = read_existing(project.root, module_rel)
    refuse_foreign(module_rel, old_module)
    header = render_header(spec, tasks_module)
    tasks = _Tasks(
        project,
        wiring,
        old_module,
        set(bound_names(old_module if old_module is not None else header)),
        set(bound_names(header)),  # a task's body never shadows one of these
    )
    scan = scan_project(project.root)
    adoption = Adoption(Plan(project.root), spec.name)
    adoption.left += [_left_from_scan(call) for call in scan.refused]

    by_file: dict[str, list[AddTaskCall]] = {}
    for call in scan.movable:
        by_file.setdefault(call.file, []).append(call)
    edits: dict[str, tuple[str, list[QueuedCall]]] = {}  # file -> (text, its calls)
    for rel, calls in by_file.items():
        text = read_existing(project.root, rel)
        if text is None:
            raise ConflictError(f"{rel} went away while adopt read the project", "run it again")
        located = locate_calls(text, [_position(call) for call in calls])
        for call in calls:
            queued = _queued(call, located.get(_position(call)), tasks, adoption, rel)
            if queued is not None:
                edits.setdefault(rel, (text, []))[1].append(queued)

    first_party = first_party_names(tasks_module, str(layout["routes_module"]))
    targets = {m.call.target.module for m in adoption.moved if m.call.target is not None}
    style = AdoptStyle(project.root, first_party | first_party_names(*targets))
    adoption.left.sort(key=lambda entry: (entry.call.file, entry.call.line, entry.call.column))
    if not adoption.moved:
        return adoption

    changes: list[FileChange] = []
    if tasks.snippets:
        snippets = [style.generated(module_rel, snippet) for snippet in tasks.snippets]
        base = old_module if old_module is not None else style.generated(module_rel, header)
        new_module = with_tasks(base, snippets)
        adoption.digests = {
            moved.task: task_digest(new_module, moved.task)
            for moved in adoption.moved
            if moved.new_task
        }
        changes.append(
            generated(project.root, module_rel, new_module, force=False)
            if old_module is None
            else patched(project.root, module_rel, old_module, new_module)
        )
    module_dotted = f"{tasks_module}.{MODULE_NAME}"
    for rel, (text, rewrites) in sorted(edits.items()):
        local = imported_as(text, tasks_module, MODULE_NAME) or free_local_name(text, MODULE_NAME)
        written: dict[Position, tuple[str, str]] = {}
        new = rewrite_calls(text, rewrites, local, rel, written)
        # a function imported only for the calls that moved: its import would be unused,
        # unless another module imports it from this one
        named = {r.callable_source.split(".")[0] for r in rewrites}
        kept = _imported_from(project.root, rel, named)
        new = prune_imports(new, named - kept)
        _note_undo(adoption, rel, text, new, written)
        adoption.plan.notes += [
            f"{rel}: `{name}` stays imported (another module reads it from there), though "
            "the module does not use it any more"
            for name in sorted(kept)
        ]
        if imported_as(text, tasks_module, MODULE_NAME) is None:
            new = add_import(new, tasks_module, MODULE_NAME, local)
        changes.append(patched(project.root, rel, text, style.edited(rel, text, new)))
    hook = _hook(project, wiring, module_dotted, style)
    if hook is not None:
        changes.append(hook)
    changes.append(_state_change(project, adoption))
    adoption.plan.changes = changes
    check_python(changes)
    adoption.plan.notes += style.notes
    adoption.plan.notes.append(restart_hint(spec, scheduled=False))
    adoption.plan.notes += _helper_notes(adoption, spec.name)
    return adoption


def _note_undo(
    adoption: Adoption,
    rel: str,
    old: str,
    new: str,
    written: Mapping[Position, tuple[str, str]],
) -> None:
    """Give each call of `rel` that moved what `remove-task` needs to put it back: the
    call as it was, the enqueue that replaced it, and the import of its function when
    adopt dropped it."""
    for index, moved in enumerate(adoption.moved):
        call = moved.call
        if call.file != rel or _position(call) not in written:
            continue
        original, queued = written[_position(call)]
        head = call.callable_source.split(".")[0]
        gone = import_binding(new, head) is None
        binding = (import_binding(old, head) or "") if gone else ""
        undo = CallUndo(rel, original, call_digest(queued), binding)
        adoption.moved[index] = replace(moved, undo=undo)


def _imported_from(root: Path, rel: str, names: set[str]) -> set[str]:
    """Which of `names` another file of the project (its tests too) imports from the
    module at `rel`, or reads as `<module>.<name>` (`mock.patch("app.routes.x.name")`):
    those stay imported there, even unused."""
    module = PurePosixPath(rel)
    stem = module.parent.name if module.stem == "__init__" else module.stem
    found: set[str] = set()
    skipped = SKIPPED_DIRS - {"tests", "test"}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skipped and not d.startswith(".")]
        for file in files:
            path = Path(folder, file)
            if not file.endswith(".py") or path == root / rel:
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if stem not in text:
                continue
            for name in names - found:
                imported = rf"\b{re.escape(stem)}\s+import\s+\(?[\w\s,]*?\b{re.escape(name)}\b"
                dotted = rf"\b{re.escape(stem)}\.{re.escape(name)}\b"
                if re.search(imported, text) or re.search(dotted, text):
                    found.add(name)
    return found


def _position(call: AddTaskCall) -> Position:
    return (call.line, call.column, call.end_line, call.end_column)


def _queued(
    call: AddTaskCall, where: str | None, tasks: _Tasks, adoption: Adoption, rel: str
) -> QueuedCall | None:
    """The call's rewrite, or None with the reason it stays (added to adoption.left)."""
    target = call.target
    assert target is not None  # a movable call has one
    if where is None:
        raise ConflictError(
            f"{rel}:{call.line}: the add_task call the scan found is not there any more",
            "nothing was written; run `bgtasks adopt` again",
        )
    if where == EXPRESSION:
        adoption.left.append(
            Left(
                call,
                NOT_A_STATEMENT,
                "the call is part of an expression, not a statement of its own",
                "call add_task on a line of its own",
            )
        )
        return None
    positional, problem = _bind(call, target)
    if problem:
        fix = f"pass each parameter of `{target.name}` once, by position or by name"
        adoption.left.append(Left(call, ARGUMENTS, problem, fix))
        return None
    try:
        name, new = tasks.task_for(target)
    except NotWritable as exc:
        adoption.left.append(
            Left(
                call,
                ANNOTATION,
                f"an annotation of `{target.name}` cannot be written back as code ({exc})",
                "annotate it with plain builtins, typing's names or a pydantic model",
            )
        )
        return None
    awaited = call.route_is_async
    method = (
        f"await {MODULE_NAME}.{ASYNC_ENQUEUE}" if awaited else f"{MODULE_NAME}.{BLOCKING_ENQUEUE}"
    )
    adoption.moved.append(Moved(call, name, queue_name(target), method, new))
    return QueuedCall(_position(call), call.callable_source, name, positional, awaited)


def _hook(
    project: Project, wiring: Wiring, module_dotted: str, style: AdoptStyle
) -> FileChange | None:
    """The worker's import of the adopted module, None when it is there already."""
    tasks_module = str(project.layout["tasks_module"])
    if wiring.hook == "functions" and project.worker_file is not None:
        rel = project.worker_file
        text = _required(project, rel)
        local = imported_as(text, tasks_module, MODULE_NAME) or MODULE_NAME
        new, state = spread_functions(text, local)
        if state == "missing":
            raise BadInput(
                f"{rel} has no `functions = [...]` list in its WorkerSettings: the adopted "
                "tasks are registered there",
                f"bring it back with `bgtasks update --restore {rel}`; nothing was written",
            )
        if state == "present":
            return None
        if imported_as(new, tasks_module, MODULE_NAME) is None:
            new = add_import(new, tasks_module, MODULE_NAME, local)
        return patched(project.root, rel, text, style.edited(rel, text, new))
    if wiring.hook == "include" and project.worker_file is not None:
        rel = project.worker_file
        text = _required(project, rel)
        new, state = include_module(text, module_dotted)
        if state == "present":
            return None
        if state == "added":
            return patched(project.root, rel, text, style.edited(rel, text, new))
    # "import" (taskiq), or a Celery app without a literal include list
    rel = project.tasks_file
    text = _required(project, rel)
    if imported_as(text, tasks_module, MODULE_NAME) is not None:
        return None
    new = add_import(text, tasks_module, MODULE_NAME, MODULE_NAME, HOOK_COMMENT)
    return patched(project.root, rel, text, style.edited(rel, text, new))


def _required(project: Project, rel: str) -> str:
    text = read_existing(project.root, rel)
    if text is None:
        raise BadInput(
            f"{rel} is missing: the worker imports the adopted tasks through it",
            f"bring it back with `bgtasks update --restore {rel}`; nothing was written",
        )
    return text


def _state_change(project: Project, adoption: Adoption) -> FileChange:
    recorded = project.state.get(RECORD_KIND, {})
    records: dict[str, dict[str, object]] = (
        {k: dict(v) for k, v in recorded.items() if isinstance(v, Mapping)}
        if isinstance(recorded, dict)
        else {}
    )
    started: set[str] = set()  # tasks this run wrote, their record begun
    for moved in adoption.moved:
        target = moved.call.target
        if target is None:
            continue
        fresh = moved.new_task and moved.task not in started
        started.add(moved.task)
        record = {} if fresh else records.get(moved.task, {})
        record |= {
            "source": target.qualified,
            "runner": project.spec.name,
            "queue_name": moved.queue_name,
        }
        if moved.task in adoption.digests:
            record[DIGEST_KEY] = adoption.digests[moved.task]
        if moved.undo is not None:
            add_call_record(record, moved.undo)
        records[moved.task] = record
    files = project.state.get("files", {})
    runners = project.state.get("runners", [project.spec.name])
    text = render_state(
        [str(r) for r in runners] if isinstance(runners, list) else [project.spec.name],
        dict(project.layout),
        {k: str(v) for k, v in files.items()} if isinstance(files, dict) else {},
        project.tasks,
        records,
    )
    old = read_existing(project.root, STATE_FILE) or ""
    return patched(project.root, STATE_FILE, old, text)


def _helper_notes(adoption: Adoption, runner: str) -> list[str]:
    """A plain function that is not a route now queues with a blocking call: on taskiq
    and arq that call must run in FastAPI's threadpool (a def route or dependency
    calling it)."""
    notes = []
    for moved in adoption.moved:
        call = moved.call
        if call.route_decorator or call.route_is_async or runner not in ("taskiq", "arq"):
            continue
        notes.append(
            f"{call.file}:{call.line}: `{call.route}` is not a route; it now queues with "
            f"{BLOCKING_ENQUEUE}, which runs only in FastAPI's threadpool (from a plain def "
            "route or dependency), never from the event loop"
        )
    return notes
