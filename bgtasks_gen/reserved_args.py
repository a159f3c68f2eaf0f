"""Argument names a task cannot take, read from the code add-task is about to insert.

An `--arg` becomes a parameter of the task function, a field of the route's body model,
and, where the route spreads the body (`**payload.model_dump()`), a keyword argument of
the function it is spread into. Its name must therefore not be: a parameter of the task
function (a bound celery task's `self`, arq's `ctx`: "duplicate argument") or a name its
body reads (the `logger` it logs with); a parameter or variable of the route or the test;
an attribute of pydantic's BaseModel (the body model); a named parameter of the function
the body is spread into (arq's `_enqueue(queue, response, function, ...)`: "multiple
values for argument").

The snippets are rendered with a probe argument and parsed here, so a change to a
snippet moves these names with it; only what lives in libraries (pydantic, Starlette)
is a fixed list, and the tests hold those lists against the libraries.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

PROBE = "bgtasks_probe_argument"

# BaseModel's public attributes in pydantic v2 and v1: a field by one of these names
# shadows it (a warning, a mypy error) or is refused (pydantic v2 protects `model_*`)
BASE_MODEL_ATTRIBUTES = frozenset(
    {
        "construct",
        "copy",
        "dict",
        "fields",
        "from_orm",
        "json",
        "parse_file",
        "parse_obj",
        "parse_raw",
        "schema",
        "schema_json",
        "update_forward_refs",
        "validate",
    }
)
PROTECTED_PREFIX = "model_"

# methods of libraries a body can be spread into, by name: their named parameters
# (Starlette's BackgroundTasks.add_task(self, func, *args, **kwargs))
LIBRARY_SPREAD_TARGETS: dict[str, tuple[str, ...]] = {"add_task": ("self", "func")}

PART_LABELS = {"task": "the task function", "route": "the route", "test": "the test"}


@dataclass(frozen=True)
class Spread:
    """A call in a snippet that receives the body model's fields as keyword arguments."""

    callee: str  # "_enqueue" or "background_tasks.add_task"
    parameters: tuple[str, ...] | None  # None: the callee could not be found


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[str]:
    args = function.args
    return [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _stored(function: ast.AST) -> set[str]:
    """Names the function assigns (its variables), its nested functions' included."""
    found: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            found.add(node.id)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            found.add(node.name)
    return found


def _read(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Names the function's body reads (decorators and annotations are evaluated outside
    it, so a parameter cannot shadow them)."""
    return {
        node.id
        for statement in function.body
        for node in ast.walk(statement)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }


def _body_models(tree: ast.AST) -> set[str]:
    """Classes with the probe as a field: the route's body model."""
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.target.id == PROBE
            for s in node.body
        )
    }


def _model_parameters(
    function: ast.FunctionDef | ast.AsyncFunctionDef, models: set[str]
) -> set[str]:
    args = function.args
    return {
        a.arg
        for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)
        if isinstance(a.annotation, ast.Name) and a.annotation.id in models
    }


def _callee_name(node: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.insert(0, node.id)
    return ".".join(parts)


def spreads(
    tree: ast.AST, models: set[str], lookup: Callable[[str], str | None]
) -> Iterator[Spread]:
    """Every call that spreads a body model instance (`f(**payload.model_dump())`), with
    the named parameters of `f`: a function of the snippet or of the module the snippet
    goes into (`lookup(name)` gives its source), else a known library method."""
    defined = {f.name: f for f in _functions(tree)}
    for function in _functions(tree):
        holders = _model_parameters(function, models)
        for node in ast.walk(function):
            if not isinstance(node, ast.Call):
                continue
            spread = [
                k.value
                for k in node.keywords
                if k.arg is None
                and any(isinstance(n, ast.Name) and n.id in holders for n in ast.walk(k.value))
            ]
            if not spread:
                continue
            callee = _callee_name(node.func)
            yield Spread(callee, _callee_parameters(callee, defined, lookup))


def _callee_parameters(
    callee: str,
    defined: Mapping[str, ast.FunctionDef | ast.AsyncFunctionDef],
    lookup: Callable[[str], str | None],
) -> tuple[str, ...] | None:
    if "." not in callee:
        if callee in defined:
            return tuple(_parameters(defined[callee]))
        source = lookup(callee) if callee else None
        if source is not None:
            try:
                tree = ast.parse(source)
            except SyntaxError:
                return None
            for node in tree.body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    return tuple(_parameters(node))
        return None
    return LIBRARY_SPREAD_TARGETS.get(callee.rpartition(".")[2])


@dataclass(frozen=True)
class ReservedNames:
    names: Mapping[str, str]  # name -> why it is taken
    body_model: bool  # the snippets declare a pydantic body model

    def why(self, name: str) -> str | None:
        if name in self.names:
            return self.names[name]
        if self.body_model and name.startswith(PROTECTED_PREFIX):
            return "in pydantic's protected `model_` namespace (the body model)"
        return None

    def from_snippets(self) -> list[str]:
        """The names the snippets themselves take (pydantic's left out), sorted."""
        return sorted(n for n, why in self.names.items() if "BaseModel" not in why)


def reserved_argument_names(
    parts: Mapping[str, str], lookup: Callable[[str], str | None]
) -> ReservedNames:
    """The names taken in snippets rendered with PROBE as their one argument (`parts`:
    part -> code); `lookup(name)` gives the source of a module-level function of the
    routes module, for the calls the body is spread into."""
    reserved: dict[str, str] = {}
    body_model = False

    def take(names: Iterable[str], why: str) -> None:
        for name in names:
            if name != PROBE:
                reserved.setdefault(name, why)

    for part, code in parts.items():
        tree = ast.parse(code)
        label = PART_LABELS.get(part, f"the {part} entry")
        models = _body_models(tree)
        for function in _functions(tree):
            where = f"{label} ({function.name})"
            parameters = _parameters(function)
            take(parameters, f"a parameter of {where}")
            take(_stored(function), f"a variable of {where}")
            if PROBE in parameters:
                take(_read(function), f"a name {where} uses")
            for holder in _model_parameters(function, models):
                take(
                    {
                        n.attr
                        for n in ast.walk(function)
                        if isinstance(n, ast.Attribute)
                        and isinstance(n.value, ast.Name)
                        and n.value.id == holder
                    },
                    f"a method of the body model {where} calls",
                )
        for spread in spreads(tree, models, lookup):
            take(
                spread.parameters or (),
                f"a parameter of {spread.callee}(), which {label} passes the arguments to "
                "as keywords",
            )
        if models:
            body_model = True
            take(BASE_MODEL_ATTRIBUTES, "an attribute of pydantic's BaseModel (the body model)")
    return ReservedNames(reserved, body_model)
