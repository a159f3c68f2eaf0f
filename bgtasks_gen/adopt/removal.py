"""`bgtasks remove-task NAME` for a task `bgtasks adopt` wrote: adopt undone, one task.

From what adopt recorded (undo.py), in one plan:
- each call that queues the task becomes the `add_task(...)` call it was, byte for byte,
  and the import of its function adopt dropped comes back (when nothing binds the name);
- the module's import of the adopted module goes once nothing in it uses it;
- the task leaves the adopted module; with the last one, the module goes, and the
  worker's hook with it (worker_hook.py's inverses);
- its [adopted.<task>] record leaves the state file.

A task or a call edited since adopt wrote it is a conflict (nothing written) unless
--force: then an edited call that still queues the task is replaced all the same, and
a call that is gone is named in a note.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import libcst as cst

from bgtasks_gen.addtask import Project
from bgtasks_gen.adopt.adopted_module import (
    ASYNC_ENQUEUE,
    BLOCKING_ENQUEUE,
    MODULE_FILE,
    MODULE_NAME,
    WIRINGS,
)
from bgtasks_gen.adopt.imports import add_statement, dotted_name, imported_as, prune_imports
from bgtasks_gen.adopt.task_code import TASK_PREFIX
from bgtasks_gen.adopt.undo import DIGEST_KEY, CallUndo, call_digest, recorded_calls, task_digest
from bgtasks_gen.adopt.worker_hook import exclude_module, unspread_functions
from bgtasks_gen.errors import BadInput, ConflictError
from bgtasks_gen.patch.definitions import bound_names, remove_definitions
from bgtasks_gen.plan import FileChange, Plan, check_python, deleted, patched, read_existing
from bgtasks_gen.state import STATE_FILE, render_state

RECORD_KIND = "adopted"


def adopted_records(project: Project) -> dict[str, dict[str, object]]:
    """The state's [adopted.<task>] records."""
    recorded = project.state.get(RECORD_KIND, {})
    if not isinstance(recorded, dict):
        return {}
    return {k: dict(v) for k, v in recorded.items() if isinstance(v, Mapping)}


@dataclass
class _Queued:
    """A statement queueing the task: where it is in its module, and its digest."""

    node: cst.Expr
    digest: str


class _FindQueued(cst.CSTVisitor):
    """Every `[await] <local>.enqueue[_blocking](<local>.<task>, ...)` statement."""

    def __init__(self, local: str, task: str) -> None:
        super().__init__()
        self.methods = {f"{local}.{ASYNC_ENQUEUE}", f"{local}.{BLOCKING_ENQUEUE}"}
        self.task = f"{local}.{task}"
        self.found: list[_Queued] = []

    def visit_Expr(self, node: cst.Expr) -> None:
        value = node.value
        call = value.expression if isinstance(value, cst.Await) else value
        if not isinstance(call, cst.Call) or dotted_name(call.func) not in self.methods:
            return
        if call.args and dotted_name(call.args[0].value) == self.task:
            code = cst.Module(body=[]).code_for_node(value)
            self.found.append(_Queued(node, call_digest(code)))


class _PutBack(cst.CSTTransformer):
    """Replaces each chosen statement's expression with the call it was."""

    def __init__(self, calls: Mapping[cst.Expr, str]) -> None:
        super().__init__()
        self.calls = calls

    def leave_Expr(self, original_node: cst.Expr, updated_node: cst.Expr) -> cst.Expr:
        original = self.calls.get(original_node)
        if original is None:
            return updated_node
        return updated_node.with_changes(value=cst.parse_expression(original))


@dataclass
class _Removal:
    project: Project
    name: str
    edited: list[str] = field(default_factory=list)  # what changed since adopt
    notes: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # rel -> its new text
    olds: dict[str, str] = field(default_factory=dict)

    def text(self, rel: str) -> str:
        if rel not in self.texts:
            found = read_existing(self.project.root, rel)
            if found is None:
                raise BadInput(
                    f"{rel} is missing: it holds a call adopt rewrote",
                    f"bring it back first; nothing was written (`bgtasks remove-task "
                    f"{self.name}` puts the call back there)",
                )
            self.olds[rel] = self.texts[rel] = found
        return self.texts[rel]


def plan_remove_adopted(project: Project, name: str, *, force: bool = False) -> Plan:
    """The plan that undoes the adoption of task `name` (see the module's docstring)."""
    records = adopted_records(project)
    record = records[name]
    calls = recorded_calls(record)
    if calls is None:
        raise BadInput(
            f"task {name!r} was adopted without what remove-task needs to undo it (an "
            "earlier bgtasks, or a call too long to record)",
            f"undo it by hand: put its add_task calls back, delete `{name}` from the "
            f"adopted module and [adopted.{name}] from {STATE_FILE}; nothing was written",
        )
    runner = project.spec.name
    if record.get("runner") != runner or runner not in WIRINGS:
        raise BadInput(
            f"task {name!r} was adopted onto {record.get('runner')}, and the project runs "
            f"{runner} now",
            "undo it by hand; nothing was written",
        )
    removal = _Removal(project, name)
    tasks_module = str(project.layout["tasks_module"])
    module_rel = project.package_file(tasks_module, MODULE_FILE)
    module = read_existing(project.root, module_rel)
    if module is None or name not in bound_names(module):
        removal.edited.append(f"the task is not in {module_rel} any more")
    elif task_digest(module, name) != record.get(DIGEST_KEY):
        removal.edited.append(f"the task ({module_rel})")
    chosen = _chosen_calls(removal, calls, tasks_module)
    if removal.edited and not force:
        raise ConflictError(
            f"{_listed(removal.edited)} changed since `bgtasks adopt` wrote "
            f"{'it' if len(removal.edited) == 1 else 'them'}",
            "nothing was written; pass --force to undo it anyway (your edits go too)",
        )
    for rel, (parsed, put_back, bindings) in chosen.items():
        # the statements were found in this very tree: _PutBack knows them by identity
        new = parsed.visit(_PutBack(put_back)).code
        for head, binding in bindings:
            if binding and head not in bound_names(new):
                new = add_statement(new, binding)
        local = imported_as(new, tasks_module, MODULE_NAME)
        removal.texts[rel] = prune_imports(new, {local}) if local else new

    changes: list[FileChange] = []
    others = [other for other in records if other != name]
    if module is not None:
        rest = remove_definitions(module, {name})
        still = [n for n in bound_names(rest) if n.startswith(TASK_PREFIX)]
        if not others and not still:
            gone = deleted(project.root, module_rel)
            changes += [gone] if gone is not None else []
            _unhook(removal, tasks_module)
        else:
            changes.append(patched(project.root, module_rel, module, rest))
    changes += [
        patched(project.root, rel, removal.olds[rel], text)
        for rel, text in sorted(removal.texts.items())
        if text != removal.olds[rel]
    ]
    changes.append(_state_change(project, {k: v for k, v in records.items() if k != name}))
    plan = Plan(project.root)
    plan.changes = changes
    plan.notes += removal.notes
    check_python(changes)
    return plan


_Chosen = tuple[cst.Module, dict[cst.Expr, str], list[tuple[str, str]]]


def _chosen_calls(
    removal: _Removal, calls: list[CallUndo], tasks_module: str
) -> dict[str, _Chosen]:
    """Per file: its parsed module, the statements to put back (-> the call each was),
    and the imports to bring back ((name, statement)). Edited or missing calls go to
    removal.edited."""
    chosen: dict[str, _Chosen] = {}
    by_file: dict[str, list[CallUndo]] = {}
    for call in calls:
        by_file.setdefault(call.file, []).append(call)
    for rel, undos in by_file.items():
        text = removal.text(rel)
        local = imported_as(text, tasks_module, MODULE_NAME)
        found: list[_Queued] = []
        module = cst.parse_module(text)
        if local is not None:
            finder = _FindQueued(local, removal.name)
            module.visit(finder)
            found = finder.found
        put_back: dict[cst.Expr, str] = {}
        # the calls as adopt wrote them first, then (with --force) the edited ones
        unmatched = []
        for undo in undos:
            match = next((q for q in found if q.digest == undo.queued), None)
            if match is None:
                unmatched.append(undo)
                continue
            found.remove(match)
            put_back[match.node] = undo.original
        for undo in unmatched:
            head = undo.original.split("(")[0]
            if found:
                removal.edited.append(f"the call queueing it in {rel} (was `{head}(...)`)")
                put_back[found.pop(0).node] = undo.original
            else:
                removal.edited.append(f"the call queueing it in {rel} is gone")
                removal.notes.append(
                    f"{rel}: no call queues `{removal.name}` any more: "
                    f"`{_shortened(undo.original)}` was not put back"
                )
        put_values = set(put_back.values())
        bindings = [
            (_head(undo.original), undo.binding)
            for undo in undos
            if undo.binding and undo.original in put_values
        ]
        chosen[rel] = (module, put_back, bindings)
    return chosen


def _head(original: str) -> str:
    """The name the call's function is read through: `send_welcome` in
    `background_tasks.add_task(send_welcome, ...)`, `jobs` in `...(jobs.audit, ...)`."""
    try:
        call = cst.parse_expression(original)
    except cst.ParserSyntaxError:
        return ""
    if not isinstance(call, cst.Call) or not call.args:
        return ""
    first = call.args[0]
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == "func":
            first = arg
    return dotted_name(first.value).split(".")[0]


def _shortened(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 80 else flat[:77] + "..."


def _unhook(removal: _Removal, tasks_module: str) -> None:
    """The worker's hook undone, with the adopted module gone."""
    project = removal.project
    hook = WIRINGS[project.spec.name].hook
    dotted = f"{tasks_module}.{MODULE_NAME}"
    worker = project.worker_file
    if hook == "functions" and worker is not None:
        text = removal.text(worker)
        local = imported_as(text, tasks_module, MODULE_NAME)
        if local is not None:
            text, _ = unspread_functions(text, local)
            removal.texts[worker] = prune_imports(text, {local})
        return
    if hook == "include" and worker is not None:
        text, removed = exclude_module(removal.text(worker), dotted)
        if removed:
            removal.texts[worker] = text
            return
    # "import" (taskiq), or a Celery app without a literal include list
    text = removal.text(project.tasks_file)
    local = imported_as(text, tasks_module, MODULE_NAME)
    if local is not None:
        removal.texts[project.tasks_file] = prune_imports(text, {local})


def _state_change(project: Project, records: Mapping[str, Mapping[str, object]]) -> FileChange:
    files = project.state.get("files", {})
    runners = project.state.get("runners", [project.spec.name])
    text = render_state(
        [str(r) for r in runners] if isinstance(runners, list) else [project.spec.name],
        dict(project.layout),
        {k: str(v) for k, v in files.items()} if isinstance(files, dict) else {},
        project.tasks,
        records or None,
    )
    old = read_existing(project.root, STATE_FILE) or ""
    return patched(project.root, STATE_FILE, old, text)


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
