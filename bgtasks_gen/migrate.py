"""`bgtasks migrate --to taskiq`: move a project scaffolded for arq onto taskiq.

The move is one plan, written all or nothing like every other command:
- the taskiq scaffold is planned as `init --runner taskiq` would plan it, with its router
  answering the routes arq's did: the common surface for a project scaffolded with it
  (`api_shape = "common"`), else arq's own (paths, field names: `api_shape = "arq"`), so
  clients do not notice;
- every task `add-task` added is carried over with its options (arguments, schedule,
  retries, timeout); a body the user edited is kept line for line, only the signature
  around it changes, and arq's `ctx["job_id"]`/`ctx["job_try"]` become the taskiq task's
  `control.task_id`/`control.tries`;
- arq's generated modules, its router include, its settings field, its run-file processes
  and its requirements (arq and the redis<6 pin it forced) go away.

What cannot be carried safely is refused before anything is planned, each with where it
is: other uses of arq's `ctx` or its `Retry`, arq files edited outside the added tasks'
bodies, code of the project's own importing the modules that go away.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
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
from bgtasks_gen.deps import _declared, canonical, requirement_name
from bgtasks_gen.discovery import Overrides
from bgtasks_gen.errors import BadInput, ConflictError
from bgtasks_gen.part_edits import edited_body
from bgtasks_gen.patch.definitions import definition_code
from bgtasks_gen.plan import Action, FileChange, Plan, check_python, deleted, patched, read_existing
from bgtasks_gen.runfiles import COMPOSE_NAMES, without_processes, without_services
from bgtasks_gen.runners import get_runner
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.scaffold import FIELDS_HEADER, _fields_under_header, plan_init
from bgtasks_gen.state import BASE_DIR, COMMON_API_SHAPE, STATE_FILE, render_state

# (from, to): the moves bgtasks knows how to make
MOVES = {("arq", "taskiq")}

# arq's job context, as the taskiq task's `control` parameter says it
CTX_KEYS = {"job_id": "control.task_id", "job_try": "control.tries"}

# the processes arq's run files start: `arq <tasks module>.arq_worker.WorkerSettings`
ARQ_WORKER = re.compile(r"\barq\s+\S*WorkerSettings\b")
TASKIQ_WORKER = re.compile(r"\btaskiq\s+worker\b")
# the note merge_compose leaves when the project's app service is reused as it is
SAME_ENVIRONMENT_NOTE = "give it the same environment as the added services"


@dataclass(frozen=True)
class Carried:
    """An added task on its way over: its state options, and its body when edited."""

    name: str
    options: Mapping[str, object]
    body: list[str] | None  # the user's body lines, translated; None: not edited
    # the body still opens with arq's generated docstring: taskiq's takes its place
    generated_docstring: bool = False


def plan_migrate(root: Path, to: str, *, force: bool = False) -> Plan:
    project = load_project(root)
    source = project.spec
    if source.name == to:
        # a second run after a move (or one a crash stopped and recovery finished) is a
        # run with nothing left to do, like every other command's
        plan = Plan(project.root)
        plan.notes.append(f"this project already runs {to} ({STATE_FILE}): nothing to move")
        return plan
    if (source.name, to) not in MOVES:
        moves = ", ".join(f"{a} -> {b}" for a, b in sorted(MOVES))
        raise BadInput(
            f"bgtasks cannot move a {source.name} project to {to!r}",
            f"the moves it knows: {moves}",
        )
    runners = project.state.get("runners", [source.name])
    if isinstance(runners, list) and len(runners) > 1:
        raise BadInput(
            f"this project has several runners set up by bgtasks ({', '.join(map(str, runners))})",
            "migrate moves a project with a single runner",
        )
    target = get_runner(to)
    added = {
        name: options
        for name, options in project.tasks.items()
        if options.get("runner", source.name) == source.name
    }
    problems: list[str] = []
    edits = _Edits(project)  # read once; a syntax error is one message, not a traceback
    tasks_text = edits.get(project.tasks_file) if added else ""
    tasks_tree = ast.parse(tasks_text)
    snippets = {
        name: render_snippets(project, request_from_state(name, options))
        for name, options in added.items()
    }
    carried = [
        _carry(project, tasks_text, tasks_tree, name, options, snippets[name]["task"], problems)
        for name, options in added.items()
    ]
    _refuse_arq_edits(project, edits, snippets, problems, force)
    _refuse_imports_of(project, problems)
    if problems:
        raise ConflictError(
            f"{len(problems)} thing(s) cannot be carried over to {to} safely:\n  - "
            + "\n  - ".join(problems),
            "nothing was written; change them as said (or pass --force where it says so), "
            "then run again",
        )

    layout = project.layout
    plan = plan_init(
        project.root,
        to,
        broker=str(layout.get("broker") or "redis"),
        overrides=Overrides(
            settings_module=str(layout.get("settings") or "") or None,
            app_module=str(layout.get("app") or "") or None,
        ),
        api_shape=_kept_shape(project),
        own_run_file=_without_arq_processes,
        replaces=project.spec.name,
    )
    taskiq_project = _moved_project(project, target, carried)
    taskiq_tasks = {
        task.name: render_snippets(taskiq_project, request_from_state(task.name, task.options))[
            "task"
        ]
        for task in carried
    }
    _carry_into_files(plan, taskiq_project, carried, taskiq_tasks)
    gone = _removals(project, plan)
    _take_out_arq_edits(plan, project, source, target)
    plan.changes.extend(change for change in gone if change is not None)
    _rewrite_state(plan, taskiq_project, taskiq_tasks, {c.path for c in gone if c is not None})
    check_python(plan.changes)
    plan.notes.append(
        f"routes keep {_shape_phrase(_kept_shape(project))} "
        f'(`api_shape = "{_kept_shape(project)}"` in {STATE_FILE}); '
        f"{len(carried)} added task(s) carried over"
    )
    plan.notes.append(
        "jobs still queued in arq's Redis are not moved: stop queueing and let the arq "
        "worker finish them before the taskiq worker replaces it"
    )
    return plan


# -- what can be carried


def _carry(
    project: Project,
    text: str,
    tree: ast.Module,
    name: str,
    options: Mapping[str, object],
    snippet: str,
    problems: list[str],
) -> Carried:
    """Task `name` of the arq tasks module (`text`, parsed as `tree`) on its way over;
    `snippet`: its function as add-task wrote it."""
    rel = project.tasks_file
    recorded = options.get("hash")
    function = _function(tree, name)
    if function is None:
        problems.append(f"task {name!r}: its function is gone from {rel}")
        return Carried(name, options, None)
    if not edited_body(text, name, str(recorded) if recorded else None, snippet):
        return Carried(name, options, None)
    generated = _function(ast.parse(snippet), name)
    assert generated is not None
    body = _translated_body(text, rel, function, generated, problems)
    if body is None:
        return Carried(name, options, None)
    docstring = ast.get_docstring(function, clean=False)
    if docstring is not None and docstring == ast.get_docstring(generated, clean=False):
        first = _header_end(function)
        end = function.body[0].end_lineno or first
        return Carried(name, options, body[end - first :], generated_docstring=True)
    return Carried(name, options, body)


def _function(tree: ast.Module, name: str) -> ast.AsyncFunctionDef | ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name == name:
            return node
    return None


def _header_end(function: ast.AsyncFunctionDef | ast.FunctionDef) -> int:
    """The last line of the `def ...:` header (1-based)."""
    ends = [function.lineno]
    arguments = function.args
    for node in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
        ends.append(node.end_lineno or node.lineno)
    if function.returns is not None:
        ends.append(function.returns.end_lineno or function.returns.lineno)
    return max(ends)


def _translated_body(
    text: str,
    rel: str,
    function: ast.AsyncFunctionDef | ast.FunctionDef,
    written: ast.AsyncFunctionDef | ast.FunctionDef,
    problems: list[str],
) -> list[str] | None:
    """The edited body's lines (`function`, of `text`) with arq's job context spelled the
    taskiq way; a problem per line that uses arq in a way taskiq has no equivalent for.
    `written`: the function as add-task wrote it."""
    name = function.name
    if ast.dump(function.args) != ast.dump(written.args):
        problems.append(
            f"task {name!r} ({rel}:{function.lineno}): its arguments changed since add-task "
            "wrote them; the route and the state file still say the old ones (restore them, "
            "or `add-task --force` it with the new ones first)"
        )
        return None
    lines = text.splitlines(keepends=True)
    first = _header_end(function)
    if function.body[0].lineno <= first:
        problems.append(f"task {name!r} ({rel}:{function.lineno}): its body is on the def line")
        return None
    context = function.args.args[0].arg if function.args.args else "ctx"
    replacements: list[tuple[int, int, int, str]] = []  # line, start, end (bytes), text
    seen: set[int] = set()
    parents = {
        id(child): node for node in ast.walk(function) for child in ast.iter_child_nodes(node)
    }
    for node in ast.walk(function):
        if not isinstance(node, ast.Name) or node.lineno <= first:
            continue
        where = f"{rel}:{node.lineno}: `{lines[node.lineno - 1].strip()}`"
        if node.id == context:
            parent = parents.get(id(node))
            key = _ctx_key(parent, node)
            if key is None:
                if node.lineno not in seen:
                    problems.append(
                        f"task {name!r}, {where}: uses arq's `{context}` beyond "
                        f"{', '.join(repr(k) for k in CTX_KEYS)}; taskiq has no job context "
                        "(use the project's own clients, or the `control` parameter)"
                    )
                    seen.add(node.lineno)
                continue
            assert isinstance(parent, ast.Subscript)
            if parent.end_lineno != parent.lineno or parent.end_col_offset is None:
                problems.append(f"task {name!r}, {where}: `{context}[...]` spans lines")
                continue
            replacements.append(
                (parent.lineno, parent.col_offset, parent.end_col_offset, CTX_KEYS[key])
            )
        elif node.id == "Retry":
            problems.append(
                f"task {name!r}, {where}: raises arq's Retry; raise TransientError instead "
                "(taskiq retries it with backoff)"
            )
    body = lines[first : function.end_lineno]
    for line, start, end, new in sorted(replacements, reverse=True):
        raw = body[line - first - 1].encode("utf-8")
        body[line - first - 1] = (raw[:start] + new.encode() + raw[end:]).decode("utf-8")
    return body


def _ctx_key(parent: ast.AST | None, node: ast.Name) -> str | None:
    """'job_id' for `ctx["job_id"]` (read, not written), None for any other use."""
    if not (isinstance(parent, ast.Subscript) and parent.value is node):
        return None
    if not isinstance(parent.ctx, ast.Load):
        return None
    key = parent.slice
    if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value in CTX_KEYS:
        return key.value
    return None


def _refuse_arq_edits(
    project: Project,
    edits: _Edits,
    snippets: Mapping[str, Mapping[str, str]],
    problems: list[str],
    force: bool,
) -> None:
    """Take the added tasks (`snippets`: each one's parts) out of the arq files as they
    are (`edits`); each generated file that then differs from its pristine copy is a
    problem (unless --force): those edits would be lost with the file."""
    for name, parts in snippets.items():
        if not force:
            edited = [p for p in _edited_parts(project, edits, name, parts) if "body" not in p]
            problems.extend(
                f"task {name!r}: {part} was edited; migrate writes taskiq's instead "
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
                f"{rel}: {_changed_lines(base, now)} changed since bgtasks generated it, and "
                "the file goes away in the move (carry the change over by hand afterwards, "
                "then pass --force)"
            )


def _changed_lines(old: str, new: str) -> str:
    import difflib

    spans = []
    matcher = difflib.SequenceMatcher(a=old.splitlines(), b=new.splitlines(), autojunk=False)
    for tag, _, _, first, last in matcher.get_opcodes():
        if tag != "equal":
            spans.append(f"{first + 1}" if last <= first + 1 else f"{first + 1}-{last}")
    shown = ", ".join(spans[:4]) + (", ..." if len(spans) > 4 else "")
    return f"line(s) {shown}" if spans else "its line endings"


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


def _refuse_imports_of(project: Project, problems: list[str]) -> None:
    """Code of the project's own that imports a module going away would break."""
    owned = _owned(project)
    leaving = {m for rel in owned if (m := _module_name(project, rel))}
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
                        "goes away with arq (move that code onto the taskiq modules first)"
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


def _kept_shape(project: Project) -> str:
    """The HTTP surface the moved router answers with: the one the source project's
    router answers with (the common one, or else the source runner's own)."""
    return str(project.layout.get("api_shape") or "") or project.spec.name


def _shape_phrase(shape: str) -> str:
    if shape == COMMON_API_SHAPE:
        return "the paths and fields every queue runner shares"
    return f"{shape}'s paths and fields"


def _without_arq_processes(path: str, text: str) -> str:
    if PurePosixPath(path).name == "Procfile":
        return without_processes(text, ARQ_WORKER)
    # the heading comment of a compose file arq's init wrote names its worker
    text = text.replace("and an arq worker (generated", "and taskiq's processes (generated", 1)
    return without_services(text, ARQ_WORKER)


def _moved_project(project: Project, target: RunnerSpec, carried: list[Carried]) -> Project:
    """The project as taskiq's: the same layout, routes in arq's shape, the tasks carried."""
    tasks = {c.name: {**c.options, "runner": target.name} for c in carried}
    layout = {**project.layout, "api_shape": _kept_shape(project)}
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
    return Project(project.root, state, target, layout)


def _carry_into_files(
    plan: Plan, project: Project, carried: list[Carried], written_tasks: Mapping[str, str]
) -> None:
    """Put the carried tasks into the freshly planned taskiq files, as `init` run again
    replays added tasks, then the edited bodies in place of the generated ones
    (`written_tasks`: each task's taskiq function as add-task writes it)."""
    if not carried:
        return
    created = {c.path: c for c in plan.changes if c.action is Action.CREATE}
    files = {rel: change.new for rel, change in created.items()}
    grown = _project_style(project).apply_all(replay_tasks(project, files))
    rel = project.tasks_file
    for task in carried:
        if task.body is None:
            continue
        snippet = written_tasks[task.name]
        written = _function(ast.parse(snippet), task.name)
        assert written is not None
        lines = snippet.splitlines(keepends=True)
        header = lines[: _header_end(written)]
        if task.generated_docstring and ast.get_docstring(written) is not None:
            header += lines[_header_end(written) : written.body[0].end_lineno]
        current = definition_code(grown[rel], [task.name])
        assert current is not None
        new = "".join(header + task.body)
        grown[rel] = grown[rel].replace(current, new if new.endswith("\n") else new + "\n", 1)
    for index, change in enumerate(plan.changes):
        if change.path in grown and change.path in created and grown[change.path] != change.new:
            plan.changes[index] = FileChange(change.path, Action.CREATE, None, grown[change.path])


def _removals(project: Project, plan: Plan) -> list[FileChange | None]:
    """arq's generated files and their pristine copies, unless taskiq writes them too."""
    kept = {c.path for c in plan.changes}
    # a package arq's init created stays one while taskiq's modules live in it
    folders = {str(PurePosixPath(rel).parent) for rel in kept}
    gone = []
    for rel in sorted(_owned(project) - kept):
        if PurePosixPath(rel).name == "__init__.py" and str(PurePosixPath(rel).parent) in folders:
            continue
        gone.append(deleted(project.root, rel, "arq's, replaced by taskiq's"))
        gone.append(deleted(project.root, f"{BASE_DIR}/{rel}.base"))
    return gone


def _take_out_arq_edits(
    plan: Plan, project: Project, source: RunnerSpec, target: RunnerSpec
) -> None:
    """Out of the planned app, settings, requirements and .env.example: what arq's init
    put there that taskiq does not use."""
    alias = f"{source.router_file}_router"
    fields = {f.key for f in source.settings_fields} - {f.key for f in target.settings_fields}
    broker = str(project.layout.get("broker") or "redis")
    wanted = {canonical(requirement_name(r)) for r in target.dependencies_for(broker)}
    # arq, and the redis<6 pin it forced (taskiq-redis brings the redis it needs)
    dropped = [r for r in source.dependencies if canonical(requirement_name(r)) not in wanted]
    app_rel = _app_file(project)
    settings = str(project.layout.get("settings", "")).partition(":")
    source_root = project.root / str(project.layout.get("source_root", "."))
    deps_path = _declared(project.root, source_root)[0]
    deps_rel = deps_path.relative_to(project.root).as_posix() if deps_path else None
    if deps_rel and not any(c.path == deps_rel for c in plan.changes):
        text = read_existing(project.root, deps_rel) or ""
        plan.changes.append(patched(project.root, deps_rel, text, text))
    for index, change in enumerate(plan.changes):
        if change.action not in (Action.PATCH, Action.IDENTICAL):
            continue
        new = change.new
        if change.path == app_rel:
            new = _without_include(new, alias, change.path)
        if change.path.endswith(".py") and f"# {FIELDS_HEADER}" in new:
            new = _without_fields(new, settings[2], fields)
        if change.path == deps_rel:
            new = _without_requirements(new, dropped)
        if PurePosixPath(change.path).name in COMPOSE_NAMES:
            new, done = _web_environment_for_taskiq(new)
            if done:
                plan.notes[:] = [n for n in plan.notes if SAME_ENVIRONMENT_NOTE not in n]
        if PurePosixPath(change.path).name == ".env.example":
            names = {f.upper() for f in fields}
            new = "".join(
                line
                for line in new.splitlines(keepends=True)
                if not any(line.split("=")[0].strip().upper().endswith(n) for n in names)
            )
            # the group heading arq's fields had: the variables under it are taskiq's now
            named = {f.comment for f in source.settings_fields if source.name in f.comment}
            for group in named:
                new = new.replace(f"# {group}\n", "# Background tasks\n")
        if new != change.new:
            plan.changes[index] = patched(plan.root, change.path, change.old or "", new)


def _web_environment_for_taskiq(text: str) -> tuple[str, bool]:
    """The compose file with arq's generated web service given what the added taskiq
    worker's environment has and its own lacks (taskiq's broker URL: the app queues
    there now). Only in the block arq's template writes (`environment: &environment`,
    a `NAME: value` a line), and only if the file then reads as meant; otherwise the
    text as it is and the note merge_compose left. Returns (text, whether changed)."""
    import yaml

    services = (yaml.safe_load(text) or {}).get("services") or {}
    web = services.get("web")
    worker = next(
        (
            service
            for service in services.values()
            if isinstance(service, dict) and TASKIQ_WORKER.search(str(service.get("command")))
        ),
        None,
    )
    if not isinstance(web, dict) or not isinstance(worker, dict):
        return text, False
    have, want = web.get("environment"), worker.get("environment")
    if not isinstance(have, dict) or not isinstance(want, dict):
        return text, False
    missing = {name: value for name, value in want.items() if name not in have}
    block = re.search(r"(?m)^ +environment: &environment\r?\n(?P<inner> +)\S", text)
    if not missing or block is None:
        return text, False
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = "".join(f"{block['inner']}{name}: {value}{newline}" for name, value in missing.items())
    new = text[: block.start("inner")] + lines + text[block.start("inner") :]
    after = (yaml.safe_load(new) or {}).get("services", {}).get("web", {}).get("environment")
    if not isinstance(after, dict) or any(after.get(k) != v for k, v in missing.items()):
        return text, False
    return new, True


def _without_include(text: str, alias: str, rel: str) -> str:
    """The app module without the import of arq's router and its include_router call."""
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
            f"{rel} uses arq's router ({alias}) beyond the import and include bgtasks wrote",
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
    """The state file as taskiq's alone: its files, its tasks (`project.tasks`) with the
    hashes of their functions as add-task writes them (`written_tasks`)."""
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
