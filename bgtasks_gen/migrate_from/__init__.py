"""What `bgtasks migrate` does differently per runner a project moves off.

The shared pipeline (bgtasks_gen/migrate.py) loads the project, carries the added tasks,
plans the target's scaffold as `init` would, takes the old runner's files and edits out
and rewrites the state file. A `Source` says what only its runner needs: which moves it
knows, how an edited task body is said on the target, what it leaves behind that the
target does not use, and what its clients keep calling.
"""

from __future__ import annotations

import ast
import builtins
import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from bgtasks_gen.addtask import Project, _Edits
from bgtasks_gen.plan import Plan
from bgtasks_gen.runners.base import RunnerSpec

# what `--api-shape` takes: the routes the old runner answered (clients change nothing),
# or only the target's own
KEPT_SHAPE = "kept"
NEW_SHAPE = "new"
API_SHAPES = (KEPT_SHAPE, NEW_SHAPE)
# runners whose worker runs coroutine functions only: a plain `def` body carried onto one
# runs in a thread (Carried.thread_header)
COROUTINES_ONLY = frozenset({"arq"})


@dataclass(frozen=True)
class Carried:
    """A task on its way over: its state options, and its body when edited."""

    name: str
    options: Mapping[str, object]
    body: list[str] | None  # the user's body lines, translated; None: not edited
    # the body still opens with the generated docstring: the target's takes its place
    generated_docstring: bool = False
    # the return annotation the user's function has, as written, when the target's
    # header must take it ("": none); None keeps the target's
    returns: str | None = None
    # a plain `def` carried onto a runner whose generated task is `async def`
    plain: bool = False
    # a plain `def` onto a runner of COROUTINES_ONLY: the body goes into a module-level
    # function with this header (the user's own `def` lines), awaited in a thread
    thread_header: tuple[str, ...] = ()


@dataclass(frozen=True)
class BodyContext:
    """Where an edited body stands: the task, its module and the lines of its body."""

    name: str
    rel: str  # the module, relative to the project
    lines: list[str]  # every line of the module
    function: ast.AsyncFunctionDef | ast.FunctionDef
    first: int  # the last line of the def header (1-based)
    target: RunnerSpec

    def where(self, line: int) -> str:
        return f"{self.rel}:{line}: `{self.lines[line - 1].strip()}`"


class Source:
    """A runner bgtasks can move a project off; subclasses say what differs."""

    name = ""
    targets: tuple[str, ...] = ()

    def translate_body(self, body: BodyContext, problems: list[str]) -> list[str] | None:
        """The body's lines as the target says them (a problem per line it cannot say);
        None when it cannot be carried at all."""
        raise NotImplementedError

    def carried_header(
        self, function: ast.AsyncFunctionDef | ast.FunctionDef, text: str
    ) -> tuple[str | None, bool]:
        """For an edited body of `function` (in `text`): the return annotation the
        target's header takes (None: its own) and whether it stays a plain def."""
        return None, False

    def scaffold_tasks(
        self, project: Project, edits: _Edits, target: RunnerSpec, problems: list[str]
    ) -> list[tuple[Carried, str]]:
        """Tasks of the old scaffold (not added by add-task) that move as added tasks,
        each with the code of its function as generated; `edits` gets them back as
        generated, so the file check that follows sees only other edits."""
        return []

    def kept_shape(self, project: Project, api_shape: str) -> str:
        """The api_shape the target's router is planned with."""
        raise NotImplementedError

    def run_file(self, path: str, text: str) -> str:
        """The project's Procfile or compose file without the old runner's processes."""
        return text

    def dropped_requirements(self, target: RunnerSpec, broker: str) -> list[str]:
        """The old runner's requirements, as bgtasks wrote them, that go."""
        return []

    def keeps_include(self, api_shape: str) -> bool:
        """Whether the old router's include stays in the app (it serves the kept routes)."""
        return False

    def adjust(
        self,
        plan: Plan,
        project: Project,
        moved: Project,
        carried: list[Carried],
        api_shape: str,
        problems: list[str],
    ) -> set[str]:
        """Source-specific changes to the planned move; the paths written that are not
        bgtasks' to own afterwards (the state file does not list them)."""
        return set()

    def notes(self, project: Project, target: RunnerSpec, api_shape: str) -> list[str]:
        return []


def function_named(tree: ast.Module, name: str) -> ast.AsyncFunctionDef | ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name == name:
            return node
    return None


def header_end(function: ast.AsyncFunctionDef | ast.FunctionDef) -> int:
    """The last line of the `def ...:` header (1-based)."""
    ends = [function.lineno]
    arguments = function.args
    for node in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
        ends.append(node.end_lineno or node.lineno)
    if function.returns is not None:
        ends.append(function.returns.end_lineno or function.returns.lineno)
    return max(ends)


def changed_lines(old: str, new: str) -> str:
    """ "line(s) 3, 7-9" of `new` that differ from `old`."""
    spans = []
    matcher = difflib.SequenceMatcher(a=old.splitlines(), b=new.splitlines(), autojunk=False)
    for tag, _, _, first, last in matcher.get_opcodes():
        if tag != "equal":
            spans.append(f"{first + 1}" if last <= first + 1 else f"{first + 1}-{last}")
    shown = ", ".join(spans[:4]) + (", ..." if len(spans) > 4 else "")
    return f"line(s) {shown}" if spans else "its line endings"


def source_for(runner: str) -> Source | None:
    from bgtasks_gen.migrate_from.arq import ArqSource
    from bgtasks_gen.migrate_from.builtin import BuiltinSource
    from bgtasks_gen.migrate_from.celery import CelerySource

    sources: dict[str, Source] = {s.name: s for s in (ArqSource(), BuiltinSource(), CelerySource())}
    return sources.get(runner)


def known_moves() -> list[tuple[str, str]]:
    moves: list[tuple[str, str]] = []
    for runner in ("arq", "builtin", "celery"):
        source = source_for(runner)
        assert source is not None
        moves.extend((runner, target) for target in source.targets)
    return sorted(moves)


def undefined_names(plan: Plan, moved: Project, bodies: list[BodyContext], fix: str) -> list[str]:
    """A problem for each name an edited body uses that the target's planned tasks module
    does not define (nor the body itself, nor Python's builtins): it would fail with
    NameError on the worker. `fix` says what to do first."""
    module = next((c.new for c in plan.changes if c.path == moved.tasks_file), "")
    defined = _module_names(ast.parse(module)) | set(dir(builtins))
    problems = []
    for body in bodies:
        own = _local_names(body.function)
        seen: set[str] = set()
        for node in ast.walk(body.function):
            if (
                isinstance(node, ast.Name)
                and isinstance(node.ctx, ast.Load)
                and node.lineno > body.first
                and node.id not in own | defined | seen
            ):
                seen.add(node.id)
                problems.append(
                    f"task {body.name!r}, {body.where(node.lineno)}: uses `{node.id}`, "
                    f"which {moved.spec.name}'s tasks module ({moved.tasks_file}) does not "
                    f"define ({fix} first)"
                )
    return problems


def _module_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _local_names(function: ast.AsyncFunctionDef | ast.FunctionDef) -> set[str]:
    """The names the function binds itself: parameters, assignments, imports, loops..."""
    names = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names.update(node.names)
        elif isinstance(node, ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
    return names
