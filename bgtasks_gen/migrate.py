"""`bgtasks migrate --to RUNNER`: move a project onto another runner, in one plan.

The moves it knows: arq -> taskiq, builtin -> arq, builtin -> celery, builtin -> taskiq,
celery -> taskiq.
What differs per runner moved off lives in bgtasks_gen/migrate_from/ (arq.py, builtin.py,
celery.py); this module is what every move shares, written all or nothing like every
other command:
- the target's scaffold is planned as `init --runner TARGET` would plan it (`replaces=`
  the old runner), its router answering what the old one answered unless `--api-shape
  new` (the source decides how: arq's router shape, or builtin's routes kept as a module);
- every task `add-task` added is carried over with its options (arguments, schedule,
  retries, timeout); a body the user edited is kept line for line, only the signature
  around it changes (the source translates what the target says otherwise; a plain
  body onto arq goes into a private function the task awaits in a thread);
- the old runner's generated modules, its router include, its settings fields, its
  run-file processes and its requirements go, each only as bgtasks wrote it;
- the state file lists the target's files and tasks alone.

What cannot be carried safely is refused before anything is written, each problem with
where it is: source-specific uses in edited bodies, old-runner files edited outside the
added tasks' bodies (unless --force), code of the project's own importing the modules
that go away.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath

from bgtasks_gen.addtask import (
    Project,
    _edited_parts,
    _Edits,
    _project_style,
    _remove_parts,
    _snippet_hash,
    load_project,
    render_snippets,
    replay_tasks,
    request_from_state,
)
from bgtasks_gen.adopt.task_code import awaited_in_thread
from bgtasks_gen.deps import _declared
from bgtasks_gen.discovery import Overrides
from bgtasks_gen.errors import BadInput, ConflictError
from bgtasks_gen.migrate_from import (
    API_SHAPES,
    COROUTINES_ONLY,
    KEPT_SHAPE,
    BodyContext,
    Carried,
    Source,
    changed_lines,
    function_named,
    header_end,
    known_moves,
    source_for,
)
from bgtasks_gen.part_edits import edited_body
from bgtasks_gen.patch.definitions import definition_code
from bgtasks_gen.patch.lifespan import LINE_LENGTH
from bgtasks_gen.plan import Action, FileChange, Plan, check_python, deleted, patched, read_existing
from bgtasks_gen.runners import get_runner
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.scaffold import FIELDS_HEADER, _fields_under_header, plan_init
from bgtasks_gen.state import (
    BASE_DIR,
    COMMON_API_SHAPE,
    ROUTER_FILE,
    STATE_FILE,
    render_state,
    scaffolded_spec,
)

# (from, to): the moves bgtasks knows how to make
MOVES = set(known_moves())
# the header every generated task function of the queue runners ends with
GENERATED_RETURNS = "-> dict[str, Any]:"


def plan_migrate(root: Path, to: str, *, force: bool = False, api_shape: str = KEPT_SHAPE) -> Plan:
    project = load_project(root)
    if project.spec.name == to:
        # a second run after a move (or one a crash stopped and recovery finished) is a
        # run with nothing left to do, like every other command's
        plan = Plan(project.root)
        plan.notes.append(f"this project already runs {to} ({STATE_FILE}): nothing to move")
        return plan
    source = source_for(project.spec.name)
    if source is None or to not in source.targets:
        moves = ", ".join(f"{a} -> {b}" for a, b in sorted(MOVES))
        raise BadInput(
            f"bgtasks cannot move a {project.spec.name} project to {to!r}",
            f"the moves it knows: {moves}",
        )
    if api_shape not in API_SHAPES:
        raise BadInput(f"--api-shape {api_shape!r}", f"choose {' or '.join(API_SHAPES)}")
    runners = project.state.get("runners", [project.spec.name])
    if isinstance(runners, list) and len(runners) > 1:
        raise BadInput(
            f"this project has several runners set up by bgtasks ({', '.join(map(str, runners))})",
            "migrate moves a project with a single runner",
        )
    target = get_runner(to)
    added = {
        name: options
        for name, options in project.tasks.items()
        if options.get("runner", project.spec.name) == project.spec.name
    }
    problems: list[str] = []
    edits = _Edits(project)  # read once; a syntax error is one message, not a traceback
    tasks_text = edits.get(project.tasks_file) if added else ""
    snippets = {
        name: render_snippets(project, request_from_state(name, options))
        for name, options in added.items()
    }
    carried = [
        _carry(source, project, target, tasks_text, name, options, snippets[name]["task"], problems)
        for name, options in added.items()
    ]
    if project.tasks_file in _owned(project):
        for scaffold_task, generated in source.scaffold_tasks(project, edits, target, problems):
            text = edits.old.get(project.tasks_file) or edits.get(project.tasks_file)
            carried.insert(
                0,
                _carry(
                    source,
                    project,
                    target,
                    text,
                    scaffold_task.name,
                    scaffold_task.options,
                    generated,
                    problems,
                    recorded=None,
                ),
            )
    _refuse_source_edits(project, edits, snippets, problems, force)

    layout = project.layout
    shape = source.kept_shape(project, api_shape)
    plan = plan_init(
        project.root,
        to,
        broker=str(layout.get("broker") or "redis"),
        overrides=Overrides(
            settings_module=str(layout.get("settings") or "") or None,
            app_module=str(layout.get("app") or "") or None,
        ),
        api_shape=shape,
        own_run_file=source.run_file,
        replaces=project.spec.name,
    )
    moved = _moved_project(project, target, carried, shape, _planned_layout(plan))
    target_tasks = {
        task.name: render_snippets(moved, request_from_state(task.name, task.options))["task"]
        for task in carried
    }
    _carry_into_files(plan, moved, carried, target_tasks)
    _overwrite_source_files(plan, project)
    unowned = source.adjust(plan, project, moved, carried, api_shape, problems)
    gone = _removals(project, plan)
    _refuse_imports_of(project, plan, target, problems)
    if problems:
        raise ConflictError(
            f"{len(problems)} thing(s) cannot be carried over to {to} safely:\n  - "
            + "\n  - ".join(problems),
            "nothing was written; change them as said (or pass --force where it says so), "
            "then run again",
        )
    _take_out_source_edits(plan, project, source, target, api_shape)
    plan.changes.extend(gone)
    removed = {c.path for c in gone} | unowned
    _rewrite_state(plan, moved, target_tasks, removed)
    check_python(plan.changes)
    plan.notes.append(
        f"routes keep {_shape_phrase(project, shape, api_shape)} "
        f'(`api_shape = "{shape}"` in {STATE_FILE}); '
        f"{len(carried)} task(s) carried over"
    )
    plan.notes.extend(source.notes(project, target, api_shape))
    return plan


# -- what can be carried


def _carry(
    source: Source,
    project: Project,
    target: RunnerSpec,
    text: str,
    name: str,
    options: Mapping[str, object],
    snippet: str,
    problems: list[str],
    recorded: object = "state",
) -> Carried:
    """Task `name` of the old tasks module (`text`) on its way over; `snippet`: its
    function as bgtasks wrote it. `recorded`: the hash add-task recorded ("state": read
    it from the options; None: compare with `snippet`)."""
    rel = project.tasks_file
    if recorded == "state":
        recorded = options.get("hash")
    tree = ast.parse(text)
    function = function_named(tree, name)
    if function is None:
        problems.append(f"task {name!r}: its function is gone from {rel}")
        return Carried(name, options, None)
    if not edited_body(text, name, str(recorded) if recorded else None, snippet):
        return Carried(name, options, None)
    generated = function_named(ast.parse(snippet), name)
    assert generated is not None
    if ast.dump(function.args) != ast.dump(generated.args):
        problems.append(
            f"task {name!r} ({rel}:{function.lineno}): its arguments changed since bgtasks "
            "wrote them; the route and the state file still say the old ones (restore them, "
            "or `add-task --force` it with the new ones first)"
        )
        return Carried(name, options, None)
    first = header_end(function)
    if function.body[0].lineno <= first:
        problems.append(f"task {name!r} ({rel}:{function.lineno}): its body is on the def line")
        return Carried(name, options, None)
    lines = text.splitlines(keepends=True)
    context = BodyContext(name, rel, lines, function, first, target)
    body = source.translate_body(context, problems)
    if body is None:
        return Carried(name, options, None)
    returns, plain = source.carried_header(function, text)
    thread_header: tuple[str, ...] = ()
    if plain and target.name in COROUTINES_ONLY:
        thread_header, plain = tuple(lines[function.lineno - 1 : first]), False
    docstring = ast.get_docstring(function, clean=False)
    if docstring is not None and docstring == ast.get_docstring(generated, clean=False):
        end = function.body[0].end_lineno or first
        carried = Carried(name, options, body[end - first :], generated_docstring=True)
    else:
        carried = Carried(name, options, body)
    return replace(carried, returns=returns, plain=plain, thread_header=thread_header)


def _refuse_source_edits(
    project: Project,
    edits: _Edits,
    snippets: Mapping[str, Mapping[str, str]],
    problems: list[str],
    force: bool,
) -> None:
    """Take the added tasks (`snippets`: each one's parts) out of the old runner's files
    as they are (`edits`); each generated file that then differs from its pristine copy
    is a problem (unless --force): those edits would be lost with the file."""
    name_of = project.spec.name
    for name, parts in snippets.items():
        if not force:
            edited = [p for p in _edited_parts(project, edits, name, parts) if "body" not in p]
            problems.extend(
                f"task {name!r}: {part} was edited; migrate writes the new runner's instead "
                "(pass --force to let your edit go)"
                for part in edited
            )
        _remove_parts(project, edits, name, parts)
    if force:
        return
    for rel in sorted(_owned(project)):
        base = read_existing(project.root, f"{BASE_DIR}/{rel}.base")
        now = edits.new.get(rel, read_existing(project.root, rel))
        if now is None:
            continue  # deleted by the user: nothing of theirs to lose
        if base is None:
            problems.append(f"{rel}: no pristine copy in {BASE_DIR} to compare it with (--force)")
        elif now != base:
            problems.append(
                f"{rel}: {changed_lines(base, now)} changed since bgtasks generated it "
                f"for {name_of}, and the file goes or is rewritten in the move (carry the "
                "change over by hand afterwards, then pass --force)"
            )


def _owned(project: Project) -> set[str]:
    files = project.state.get("files", {})
    return set(files) if isinstance(files, dict) else set()


def _module_name(project: Project, rel: str) -> str | None:
    source = PurePosixPath(str(project.layout.get("source_root", ".")))
    path = PurePosixPath(rel)
    if path.suffix != ".py" or not (source == PurePosixPath(".") or source in path.parents):
        return None
    parts = list(path.relative_to(source).with_suffix("").parts)
    if parts[-1] == "__init__":
        return None  # a package stays: taskiq's modules live in it too
    return ".".join(parts)


def _refuse_imports_of(
    project: Project, plan: Plan, target: RunnerSpec, problems: list[str]
) -> None:
    """Code of the project's own that imports a module going away would break."""
    owned = _owned(project)
    staying = {c.path for c in plan.changes if not c.removes}
    leaving = {m for rel in owned - staying if (m := _module_name(project, rel))}
    old, new = project.spec.name, target.name
    app_rel = _app_file(project)
    root = project.root
    skip = {".venv", "venv", ".venvs", ".git", ".bgtasks", "node_modules", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in owned or rel == app_rel or skip & set(PurePosixPath(rel).parts):
            continue
        text = read_existing(root, rel) or ""
        if not any(m.rpartition(".")[2] in text for m in leaving):
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        package = _module_name(project, rel) or ""
        for node in ast.walk(tree):
            for imported in _imported_modules(node, package, path.name == "__init__.py"):
                if imported in leaving:
                    problems.append(
                        f"{rel}:{getattr(node, 'lineno', 0)} imports {imported}, which "
                        f"goes away with {old} (move that code onto {new}'s modules first)"
                    )


def _imported_modules(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = module.split(".") if module else []
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        base = ".".join([*parts, *([node.module] if node.module else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _app_file(project: Project) -> str | None:
    module = str(project.layout.get("app", "")).partition(":")[0]
    if not module:
        return None
    source = str(project.layout.get("source_root", "."))
    for candidate in (f"{module.replace('.', '/')}.py", f"{module.replace('.', '/')}/__init__.py"):
        rel = PurePosixPath(source, candidate).as_posix()
        if (project.root / rel).is_file():
            return rel
    return None


# -- the plan, adjusted


def _shape_phrase(project: Project, shape: str, api_shape: str) -> str:
    if project.spec.name == "builtin":
        if api_shape == KEPT_SHAPE:
            return "builtin's paths and answers, and the ones every queue runner shares"
        return "only the paths and fields every queue runner shares"
    if shape == COMMON_API_SHAPE:
        return "the paths and fields every queue runner shares"
    return f"{shape}'s paths and fields"


def _planned_layout(plan: Plan) -> dict[str, object]:
    """The [layout] of the state file the target's init planned."""
    state = next(c.new for c in plan.changes if c.path == STATE_FILE)
    return dict(tomllib.loads(state).get("layout", {}))


def _moved_project(
    project: Project,
    target: RunnerSpec,
    carried: list[Carried],
    shape: str,
    planned: Mapping[str, object],
) -> Project:
    """The project as the target's: the same layout, routes in `shape`, the router under
    the name the target's init chose (`planned`: its [layout]), the tasks carried."""
    tasks = {c.name: {**c.options, "runner": target.name} for c in carried}
    layout = {k: v for k, v in project.layout.items() if k != ROUTER_FILE}
    layout["api_shape"] = shape
    if ROUTER_FILE in planned:
        layout[ROUTER_FILE] = planned[ROUTER_FILE]
    runners = project.state.get("runners", [project.spec.name])
    runners = [
        target.name if r == project.spec.name else r
        for r in (runners if isinstance(runners, list) else [project.spec.name])
    ]
    state = {
        **project.state,
        "runner": target.name,
        "runners": runners,
        "layout": layout,
        "tasks": tasks,
    }
    return Project(project.root, state, scaffolded_spec(target, layout), layout)


def _carry_into_files(
    plan: Plan, project: Project, carried: list[Carried], written_tasks: Mapping[str, str]
) -> None:
    """Put the carried tasks into the freshly planned files, as `init` run again replays
    added tasks, then the edited bodies in place of the generated ones (`written_tasks`:
    each task's function on the target as add-task writes it)."""
    if not carried:
        return
    created = {c.path: c for c in plan.changes if c.action is Action.CREATE}
    files = {rel: change.new for rel, change in created.items()}
    style = _project_style(project)
    grown = style.apply_all(replay_tasks(project, files))
    rel = project.tasks_file
    for task in carried:
        if task.body is None:
            continue
        snippet = written_tasks[task.name]
        written = function_named(ast.parse(snippet), task.name)
        assert written is not None
        lines = snippet.splitlines(keepends=True)
        header = _header(lines[: header_end(written)], task)
        if task.thread_header:
            new = _in_thread(task, header, lambda text: style.apply(rel, text))
        else:
            if task.generated_docstring and ast.get_docstring(written) is not None:
                header += lines[header_end(written) : written.body[0].end_lineno]
            new = "".join(header + task.body)
        current = definition_code(grown[rel], [task.name])
        assert current is not None
        grown[rel] = grown[rel].replace(current, new if new.endswith("\n") else new + "\n", 1)
    for index, change in enumerate(plan.changes):
        if change.path in grown and change.path in created and grown[change.path] != change.new:
            plan.changes[index] = FileChange(change.path, Action.CREATE, None, grown[change.path])


def _header(lines: list[str], task: Carried) -> list[str]:
    """The target's `def` header for a carried body: a plain def where the body was one,
    with the body's own return annotation where the source says so."""
    lines = list(lines)
    for index, line in enumerate(lines):
        if task.plain and line.lstrip().startswith("async def "):
            lines[index] = line.replace("async def ", "def ", 1)
    if task.returns is not None and lines and f" {GENERATED_RETURNS}" in lines[-1]:
        arrow = f" -> {task.returns}:" if task.returns else ":"
        lines[-1] = lines[-1].replace(f" {GENERATED_RETURNS}", arrow)
    return lines


def _in_thread(task: Carried, header: list[str], styled: Callable[[str], str]) -> str:
    """A plain body on a runner of coroutine functions only: line for line in a private
    function of the user's own header, which the task (`header`, the target's) awaits
    in a thread, so the worker's event loop runs on as Starlette's did. Only bgtasks'
    lines take the project's style (`styled`): the body stays as written."""
    assert task.body is not None
    helper = f"_{task.name}_sync"
    header_text = "".join(task.thread_header)
    own = re.sub(rf"\bdef\s+{task.name}\b", f"def {helper}", header_text, count=1)
    node = function_named(ast.parse(own + "    pass\n"), helper)
    assert node is not None
    arguments = node.args
    passed = [a.arg for a in [*arguments.posonlyargs, *arguments.args]]
    passed += [f"{a.arg}={a.arg}" for a in arguments.kwonlyargs]
    call = awaited_in_thread(helper, *passed)
    statement = call if task.returns == "None" else f"return {call}"
    if len(statement) + 4 > LINE_LENGTH:  # exploded as ruff's default style writes it
        head = statement.partition("(")[0]
        statement = f"{head}(\n" + "".join(f"        {p},\n" for p in [helper, *passed]) + "    )"
    docstring = '"""Runs the function above in a thread, off the worker\'s event loop."""'
    text = styled(f"{own}    pass\n\n\n{''.join(header)}    {docstring}\n    {statement}\n")
    tree, lines = ast.parse(text), text.splitlines(keepends=True)
    own_node, task_node = function_named(tree, helper), function_named(tree, task.name)
    assert own_node is not None and task_node is not None
    body = "".join(task.body)
    return "".join(
        [
            *lines[own_node.lineno - 1 : header_end(own_node)],
            body if body.endswith("\n") else body + "\n",
            "\n\n",
            *lines[task_node.lineno - 1 : task_node.end_lineno],
        ]
    )


def _overwrite_source_files(plan: Plan, project: Project) -> None:
    """A file the old runner's init wrote that the target writes too (taskiq's auth.py
    in builtin's place) is the target's now: its edits were refused (or let go with
    --force) above, so it is replaced, not a conflict."""
    owned = _owned(project)
    for index, change in enumerate(plan.changes):
        path = change.path.removeprefix(f"{BASE_DIR}/").removesuffix(".base")
        if change.action is Action.CONFLICT and path in owned:
            plan.changes[index] = replace(change, action=Action.OVERWRITE, note="")


def _removals(project: Project, plan: Plan) -> list[FileChange]:
    """The old runner's generated files and their pristine copies, unless the target
    writes them too."""
    kept = {c.path for c in plan.changes}
    # a package the old init created stays one while the target's modules live in it
    folders = {str(PurePosixPath(rel).parent) for rel in kept}
    gone = []
    note = f"{project.spec.name}'s, replaced by the new runner's"
    for rel in sorted(_owned(project)):
        if PurePosixPath(rel).name == "__init__.py" and str(PurePosixPath(rel).parent) in folders:
            continue
        if rel not in kept:
            gone.append(deleted(project.root, rel, note))
        base = f"{BASE_DIR}/{rel}.base"
        if base not in kept:
            gone.append(deleted(project.root, base))
    return [change for change in gone if change is not None]


def _take_out_source_edits(
    plan: Plan, project: Project, source: Source, target: RunnerSpec, api_shape: str
) -> None:
    """Out of the planned app, settings, requirements and .env.example: what the old
    runner's init put there that the target does not use."""
    old = project.spec
    alias = f"{old.router_file}_router"
    fields = {f.key for f in old.settings_fields} - {f.key for f in target.settings_fields}
    broker = str(project.layout.get("broker") or "redis")
    dropped = source.dropped_requirements(target, broker)
    app_rel = _app_file(project)
    settings = str(project.layout.get("settings", "")).partition(":")
    source_root = project.root / str(project.layout.get("source_root", "."))
    deps_path = _declared(project.root, source_root)[0]
    deps_rel = deps_path.relative_to(project.root).as_posix() if deps_path else None
    if dropped and deps_rel and not any(c.path == deps_rel for c in plan.changes):
        text = read_existing(project.root, deps_rel) or ""
        plan.changes.append(patched(project.root, deps_rel, text, text))
    keep_include = source.keeps_include(api_shape)
    for index, change in enumerate(plan.changes):
        if change.action not in (Action.PATCH, Action.IDENTICAL):
            continue
        new = change.new
        if change.path == app_rel and not keep_include:
            new = _without_include(new, alias, change.path, old.name)
        if fields and change.path.endswith(".py") and f"# {FIELDS_HEADER}" in new:
            new = _without_fields(new, settings[2], fields)
        if dropped and change.path == deps_rel:
            new = _without_requirements(new, dropped)
        if PurePosixPath(change.path).name == ".env.example" and fields:
            names = {f.upper() for f in fields}
            new = "".join(
                line
                for line in new.splitlines(keepends=True)
                if not any(line.split("=")[0].strip().upper().endswith(n) for n in names)
            )
        if PurePosixPath(change.path).name == ".env.example":
            # the group heading the old runner's fields had: the variables are the target's
            named = {f.comment for f in old.settings_fields if old.name in f.comment}
            for group in named:
                new = new.replace(f"# {group}\n", "# Background tasks\n")
        if new != change.new:
            plan.changes[index] = patched(plan.root, change.path, change.old or "", new)


def _without_include(text: str, alias: str, rel: str, runner: str) -> str:
    """The app module without the import of the old router and its include_router call."""
    tree = ast.parse(text)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and [a.asname for a in node.names] == [alias]:
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "include_router"
            and node.value.args
            and isinstance(node.value.args[0], ast.Name)
            and node.value.args[0].id == alias
        ):
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines = text.splitlines(keepends=True)
    kept = "".join(line for number, line in enumerate(lines, 1) if number not in drop)
    if re.search(rf"\b{re.escape(alias)}\b", kept):
        raise ConflictError(
            f"{rel} uses {runner}'s router ({alias}) beyond the import and include bgtasks wrote",
            "take those uses out by hand, then run again; nothing was written",
        )
    return kept


def _without_fields(text: str, class_name: str, keys: set[str]) -> str:
    """The settings class without the fields bgtasks added for arq alone (below its
    header comment, spelled as the project spells them)."""
    ours = _fields_under_header(text)
    tree = ast.parse(text)
    drop: set[int] = set()
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == class_name):
            continue
        for statement in node.body:
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and statement.target.id in ours
                and statement.target.id.lower() in keys
            ):
                drop.update(range(statement.lineno, (statement.end_lineno or statement.lineno) + 1))
    lines = text.splitlines(keepends=True)
    return "".join(line for number, line in enumerate(lines, 1) if number not in drop)


def _without_requirements(text: str, requirements: list[str]) -> str:
    """The dependency list without the lines that declare exactly these requirements
    (as bgtasks wrote them: a pin of the project's own stays)."""
    spelled = set(requirements)
    kept = []
    for line in text.splitlines(keepends=True):
        value = line.split("#")[0].strip().rstrip(",").strip().strip("\"'")
        if value in spelled:
            continue
        kept.append(line)
    return "".join(kept)


def _rewrite_state(
    plan: Plan, project: Project, written_tasks: Mapping[str, str], removed: set[str]
) -> None:
    """The state file as the target's alone: its files, its tasks (`project.tasks`) with
    the hashes of their functions as add-task writes them (`written_tasks`)."""
    for index, change in enumerate(plan.changes):
        if change.path != STATE_FILE:
            continue
        data = tomllib.loads(change.new)
        files = {k: str(v) for k, v in data.get("files", {}).items() if k not in removed}
        tasks = {
            name: {**options, "hash": _snippet_hash(written_tasks[name], name)}
            for name, options in project.tasks.items()
        }
        text = render_state([project.spec.name], dict(data.get("layout", {})), files, tasks)
        plan.changes[index] = patched(plan.root, STATE_FILE, change.old or "", text)
