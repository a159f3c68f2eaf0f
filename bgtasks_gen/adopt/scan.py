"""Find a project's `add_task` calls on FastAPI's BackgroundTasks and what each one runs.

The project is read as text and parsed with libcst, never imported, and nothing is
written. A call counts when its receiver is a function parameter annotated
`BackgroundTasks` (fastapi's or starlette's, under any local name, bare or inside
`Annotated[...]`): FastAPI hands the same object to a route and to its dependencies, so
a helper that receives it as an annotated parameter is scanned too. A BackgroundTasks the
code creates itself is reported as well, as not the route's. Any other `.add_task` (on a
queue or scheduler class of the project's own) is not BackgroundTasks and is left out.

Every name is resolved through the module's imports (absolute, aliased, relative, or a
definition in the same module) to the file that defines it, following re-exports between
the project's modules; movable.py then decides from these facts alone.

Only files whose text mentions `add_task` or `BackgroundTasks` are scanned for calls;
other modules are parsed when a call's target or an annotation leads into them.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import libcst as cst
from libcst.helpers import get_full_name_for_node
from libcst.metadata import (
    Assignment,
    CodeRange,
    FunctionScope,
    GlobalScope,
    ImportAssignment,
    MetadataWrapper,
    PositionProvider,
    Scope,
    ScopeProvider,
)

from bgtasks_gen.adopt.movable import (
    ANNOTATED,
    LITERAL,
    REQUEST_CLASSES,
    Problem,
    framework_class,
    judge,
)
from bgtasks_gen.errors import BadInput
from bgtasks_gen.modules import ModuleIndex, read_source

BACKGROUND_TASKS = frozenset({"BackgroundTasks"})  # fastapi's, starlette's: see framework_class
# `@router.<verb>(...)`: the decorators that make a function a route
ROUTE_DECORATORS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "trace", "api_route", "websocket"}
)
PYDANTIC_BASES = frozenset(
    {
        "pydantic.BaseModel",
        "pydantic.main.BaseModel",
        "pydantic.RootModel",
        "pydantic.root_model.RootModel",
    }
)
SQLMODEL_BASE = "sqlmodel.SQLModel"  # a pydantic model, unless the class is a table
BUILTIN_NAMES = frozenset(dir(builtins))
# the literal values `Literal[...]` may hold
LITERAL_NODES = (cst.SimpleString, cst.ConcatenatedString, cst.Integer, cst.Float)


@dataclass(frozen=True)
class TypeRef:
    """An annotation as a tree of names resolved through the module's imports.

    `name` is the head's qualified name ("builtins.int", "typing.Optional",
    "app.models.User"), "|" for `X | Y`, "None", "<value>" for a literal value (inside
    `Literal[...]`, or `Annotated[...]`'s metadata), "..." for an ellipsis, and "" for
    anything else. Aliases from typing_extensions are read as typing's."""

    text: str  # as written
    name: str
    args: tuple[TypeRef, ...] = ()
    project: str = ""  # "model": a pydantic model of the project; "class": another project class


@dataclass(frozen=True)
class TargetParam:
    name: str
    annotation: str | None  # source text, None when unannotated
    # "positional-only", "positional", "var-positional", "keyword-only" or "var-keyword"
    kind: str
    has_default: bool
    type: TypeRef | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Target:
    """The module-level function a call runs, found in the project's own files."""

    module: str  # dotted
    name: str
    file: str  # relative posix path
    line: int  # of the `def`
    is_async: bool
    params: tuple[TargetParam, ...]

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class AddTaskCall:
    """One `<tasks>.add_task(func, *args, **kwargs)` call and whether it can move.

    Positions are libcst's: lines 1-based, columns 0-based, the whole call from its
    receiver to the closing parenthesis."""

    file: str  # relative posix path
    line: int
    column: int
    end_line: int
    end_column: int
    route: str  # the function whose body holds the call ("" at module level)
    route_is_async: bool
    route_decorator: str  # e.g. "router.post"; "" when the function is not decorated as a route
    param_name: str  # the BackgroundTasks as named at the call
    on_route_param: bool  # a parameter (True) or an object the code created (False)
    callable_source: str
    # "function" (resolved: see target), "lambda", "nested-function",
    # "attribute-of-object" or "unresolved" (see unresolved)
    callable_kind: str
    target: Target | None
    unresolved: str  # why there is no target, for "unresolved"; "" otherwise
    nested_in: str  # the function defining a "nested-function"; "" otherwise
    args: tuple[str, ...]  # positional arguments after the callable, as written
    kwargs: tuple[tuple[str, str], ...]  # (keyword, source) in call order
    starred: tuple[str, ...]  # `*xs` / `**kw` arguments, as written
    request_names: tuple[str, ...]  # the enclosing functions' Request/WebSocket parameters
    movable: bool = True
    reason_code: str = ""  # movable.REASON_CODES; "" when movable
    reason: str = ""
    fix: str = ""
    problems: tuple[Problem, ...] = ()  # every problem; the first gives reason and fix

    @property
    def target_module(self) -> str | None:
        return self.target.module if self.target else None

    @property
    def target_name(self) -> str | None:
        return self.target.name if self.target else None

    @property
    def target_is_async(self) -> bool | None:
        return self.target.is_async if self.target else None

    @property
    def target_params(self) -> tuple[TargetParam, ...]:
        return self.target.params if self.target else ()

    def to_dict(self) -> dict[str, object]:
        """The call as JSON-ready data (the annotation trees left out)."""
        target: dict[str, object] | None = None
        if self.target is not None:
            target = {
                "module": self.target.module,
                "name": self.target.name,
                "file": self.target.file,
                "line": self.target.line,
                "is_async": self.target.is_async,
                "params": [
                    {
                        "name": p.name,
                        "annotation": p.annotation,
                        "kind": p.kind,
                        "has_default": p.has_default,
                    }
                    for p in self.target.params
                ],
            }
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
            "route": self.route,
            "route_is_async": self.route_is_async,
            "route_decorator": self.route_decorator,
            "param_name": self.param_name,
            "on_route_param": self.on_route_param,
            "callable": self.callable_source,
            "callable_kind": self.callable_kind,
            "target": target,
            "unresolved": self.unresolved,
            "nested_in": self.nested_in,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "starred": list(self.starred),
            "movable": self.movable,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "fix": self.fix,
            "problems": [
                {"code": p.code, "reason": p.reason, "fix": p.fix, "parameter": p.parameter}
                for p in self.problems
            ],
        }


@dataclass(frozen=True)
class UnusedParam:
    """A BackgroundTasks parameter with no add_task call on it."""

    file: str
    line: int
    column: int
    route: str
    param_name: str
    referenced: bool  # the function uses it otherwise (hands it to a helper, say)


@dataclass(frozen=True)
class SkippedFile:
    file: str
    reason: str


@dataclass(frozen=True)
class AdoptionScan:
    root: Path
    calls: tuple[AddTaskCall, ...]  # by file, then position
    unused: tuple[UnusedParam, ...]
    skipped: tuple[SkippedFile, ...]  # files that could not be read or parsed

    @property
    def movable(self) -> tuple[AddTaskCall, ...]:
        return tuple(call for call in self.calls if call.movable)

    @property
    def refused(self) -> tuple[AddTaskCall, ...]:
        return tuple(call for call in self.calls if not call.movable)

    def to_dict(self) -> dict[str, object]:
        return {
            "calls": [call.to_dict() for call in self.calls],
            "unused": [vars(param) for param in self.unused],
            "skipped": [vars(skipped) for skipped in self.skipped],
        }


def scan_project(root: Path) -> AdoptionScan:
    """Every add_task call on a BackgroundTasks in the project's own code, judged."""
    project = _Project(root)
    calls: list[AddTaskCall] = []
    unused: list[UnusedParam] = []
    for path in project.index.python_files():
        text = project.text(path)
        if text is None or ("add_task" not in text and "BackgroundTasks" not in text):
            continue
        module = project.module_at(path)
        if module is None:
            continue
        finder = _CallFinder(project, module)
        module.tree.visit(finder)
        calls.extend(finder.calls)
        unused.extend(finder.unused())
    judged = [_judged(call) for call in calls]
    judged.sort(key=lambda call: (call.file, call.line, call.column))
    skipped = [SkippedFile(file, reason) for file, reason in sorted(project.skipped.items())]
    return AdoptionScan(project.root, tuple(judged), tuple(unused), tuple(skipped))


def _judged(call: AddTaskCall) -> AddTaskCall:
    problems = judge(call)
    if not problems:
        return call
    first = problems[0]
    return replace(
        call,
        movable=False,
        reason_code=first.code,
        reason=first.reason,
        fix=first.fix,
        problems=problems,
    )


def _absolute(module: str, level: int, package: str) -> str:
    """The dotted name a `from <dots><module> import` refers to; "" beyond the top."""
    if not level:
        return module
    parts = package.split(".") if package else []
    up = level - 1  # `.` is the package itself, each further dot its parent
    if up >= len(parts):
        return ""
    base = parts[: len(parts) - up]
    return ".".join([*base, module] if module else base)


def import_bindings(statement: cst.Import | cst.ImportFrom, package: str) -> dict[str, str]:
    """{local name: dotted target} for the names one import statement binds."""
    found: dict[str, str] = {}
    if isinstance(statement, cst.Import):
        for alias in statement.names:
            dotted = get_full_name_for_node(alias.name) or ""
            if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                found[alias.asname.name.value] = dotted
            else:
                head = dotted.partition(".")[0]  # `import a.b` binds `a`
                found[head] = head
        return found
    if isinstance(statement.names, cst.ImportStar):
        return found
    written = get_full_name_for_node(statement.module) if statement.module else ""
    base = _absolute(written or "", len(statement.relative), package)
    if not base:
        return found
    for alias in statement.names:
        name = get_full_name_for_node(alias.name) or ""
        local = name
        if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
            local = alias.asname.name.value
        found[local] = f"{base}.{name}"
    return found


def _canonical(qualified: str) -> str:
    if qualified.startswith("typing_extensions."):
        return "typing." + qualified.removeprefix("typing_extensions.")
    return qualified


class _Module:
    """One parsed file: its tree, positions, scopes and module-level bindings."""

    def __init__(self, name: str, file: str, tree: cst.Module, is_package: bool) -> None:
        self.name = name
        self.file = file
        self.tree = tree
        self.package = name if is_package else name.rpartition(".")[0]
        self.wrapper = MetadataWrapper(tree, unsafe_skip_copy=True)
        self.imports: dict[str, str] = {}
        self.functions: dict[str, cst.FunctionDef] = {}
        self.classes: dict[str, cst.ClassDef] = {}
        self.values: set[str] = set()  # other module-level names
        for statement in tree.body:
            self._bind(statement)

    @cached_property
    def positions(self) -> Mapping[cst.CSTNode, CodeRange]:
        return self.wrapper.resolve(PositionProvider)

    @cached_property
    def scopes(self) -> Mapping[cst.CSTNode, Scope | None]:
        return self.wrapper.resolve(ScopeProvider)

    def code(self, node: cst.CSTNode) -> str:
        return self.tree.code_for_node(node)

    def _bind(self, statement: cst.CSTNode) -> None:
        """Record what a module-level statement binds, looking into if/try/with blocks
        (`if TYPE_CHECKING:` imports, `try: import x` fallbacks), never into defs."""
        if isinstance(statement, cst.FunctionDef):
            self.functions[statement.name.value] = statement
        elif isinstance(statement, cst.ClassDef):
            self.classes[statement.name.value] = statement
        elif isinstance(statement, cst.SimpleStatementLine | cst.SimpleStatementSuite):
            for small in statement.body:
                self._bind_small(small)
        elif isinstance(statement, cst.IndentedBlock):
            for inner in statement.body:
                self._bind(inner)
        elif isinstance(
            statement,
            cst.BaseCompoundStatement
            | cst.Else
            | cst.ExceptHandler
            | cst.ExceptStarHandler
            | cst.Finally,
        ):
            for child in statement.children:
                self._bind(child)

    def _bind_small(self, small: cst.BaseSmallStatement) -> None:
        if isinstance(small, cst.Import | cst.ImportFrom):
            self.imports.update(import_bindings(small, self.package))
        elif isinstance(small, cst.Assign):
            for target in small.targets:
                self.values.update(_target_names(target.target))
        elif isinstance(small, cst.AnnAssign | cst.AugAssign):
            self.values.update(_target_names(small.target))

    def qualify(self, dotted: str) -> str:
        """A name as written here, as a qualified name (unchanged when nothing binds it)."""
        head, _, rest = dotted.partition(".")
        if head in self.functions or head in self.classes or head in self.values:
            base = f"{self.name}.{head}"
        elif head in self.imports:
            base = self.imports[head]
        elif head in BUILTIN_NAMES:
            base = f"builtins.{head}"
        else:
            base = head
        return _canonical(f"{base}.{rest}" if rest else base)

    def annotation_head(self, node: cst.BaseExpression) -> str:
        """The qualified name an annotation stands for, seen through `Annotated[X, ...]`
        and a string forward reference; "" when it is not a name."""
        if isinstance(node, cst.SimpleString | cst.ConcatenatedString):
            inner = _forward_reference(node)
            return self.annotation_head(inner) if inner is not None else ""
        if isinstance(node, cst.Subscript):
            head = self.annotation_head(node.value)
            first = node.slice[0].slice if node.slice else None
            if head == ANNOTATED and isinstance(first, cst.Index):
                return self.annotation_head(first.value)
            return head
        if not isinstance(node, cst.Name | cst.Attribute):
            return ""
        dotted = get_full_name_for_node(node)
        return self.qualify(dotted) if dotted else ""


def _target_names(node: cst.BaseExpression) -> Iterator[str]:
    if isinstance(node, cst.Name):
        yield node.value
    elif isinstance(node, cst.Tuple | cst.List):
        for element in node.elements:
            yield from _target_names(element.value)


def _forward_reference(
    node: cst.SimpleString | cst.ConcatenatedString,
) -> cst.BaseExpression | None:
    value = node.evaluated_value
    if not isinstance(value, str):
        return None
    try:
        return cst.parse_expression(value.strip())
    except cst.ParserSyntaxError:
        return None


@dataclass(frozen=True)
class _Located:
    """Where a qualified name leads in the project."""

    # "function", "class", "value", "attribute" (something inside a class or object),
    # "module", "missing", "outside" (not the project's), "unparsed"
    kind: str
    qualified: str
    module: _Module | None = None
    names: tuple[str, ...] = ()  # the path inside the module


class _Project:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.index = ModuleIndex(self.root)
        self.skipped: dict[str, str] = {}
        self._texts: dict[Path, str | None] = {}
        self._modules: dict[Path, _Module | None] = {}
        self._models: dict[tuple[str, str], bool] = {}

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def text(self, path: Path) -> str | None:
        if path not in self._texts:
            try:
                self._texts[path] = read_source(path)
            except BadInput as exc:
                self.skipped[self.rel(path)] = exc.message
                self._texts[path] = None
        return self._texts[path]

    def module_at(self, path: Path) -> _Module | None:
        path = path.absolute()
        if path not in self._modules:
            self._modules[path] = None
            text = self.text(path)
            if text is None:
                return None
            try:
                tree = cst.parse_module(text)
            except cst.ParserSyntaxError as exc:
                self.skipped[self.rel(path)] = _syntax_error(text, exc)
                return None
            name = self.index.module_name(path)
            self._modules[path] = _Module(name, self.rel(path), tree, path.name == "__init__.py")
        return self._modules[path]

    def locate(self, qualified: str) -> _Located:
        """Follow a qualified name to its definition, through re-exports."""
        seen: set[str] = set()
        while qualified not in seen:
            seen.add(qualified)
            parts = qualified.split(".")
            path, cut = None, 0
            for cut in range(len(parts), 0, -1):
                path = self.index.find(".".join(parts[:cut]))
                if path is not None:
                    break
            if path is None:
                return _Located("outside", qualified)
            module = self.module_at(path)
            if module is None:
                return _Located("unparsed", qualified, names=(self.rel(path),))
            rest = tuple(parts[cut:])
            if not rest:
                return _Located("module", qualified, module)
            head = rest[0]
            if head in module.functions:
                kind = "function"
            elif head in module.classes:
                kind = "class"
            elif head in module.imports:
                qualified = ".".join((module.imports[head], *rest[1:]))
                continue
            elif head in module.values:
                kind = "value"
            else:
                return _Located("missing", qualified, module, rest)
            kind = kind if len(rest) == 1 else "attribute"
            return _Located(kind, f"{module.name}.{'.'.join(rest)}", module, rest)
        return _Located("missing", qualified)  # imports that go round in a circle

    def is_model(self, module: _Module, class_name: str) -> bool:
        """A pydantic model: BaseModel among its bases, through the project's classes
        (an SQLModel declared `table=True` is a database row, not a model)."""
        key = (module.name, class_name)
        if key in self._models:
            return self._models[key]
        self._models[key] = False  # bases that go round in a circle make no model
        definition = module.classes[class_name]
        found = False
        if not _is_table(definition):
            for base in definition.bases:
                if base.keyword is not None or base.star:
                    continue
                value = base.value.value if isinstance(base.value, cst.Subscript) else base.value
                dotted = get_full_name_for_node(value)
                if dotted is None:
                    continue
                qualified = module.qualify(dotted)
                if qualified in PYDANTIC_BASES or qualified == SQLMODEL_BASE:
                    found = True
                else:
                    located = self.locate(qualified)
                    found = (
                        located.kind == "class"
                        and located.module is not None
                        and self.is_model(located.module, located.names[0])
                    )
                if found:
                    break
        self._models[key] = found
        return found

    def type_ref(self, module: _Module, node: cst.BaseExpression) -> TypeRef:
        """An annotation of `module` as a TypeRef."""
        text = module.code(node)
        if isinstance(node, cst.Name) and node.value in ("None", "True", "False"):
            return TypeRef(text, "None" if node.value == "None" else "<value>")
        if isinstance(node, cst.Name | cst.Attribute):
            dotted = get_full_name_for_node(node)
            return self._named(module, text, dotted) if dotted else TypeRef(text, "")
        if isinstance(node, cst.Subscript):
            head = self.type_ref(module, node.value)
            elements = [
                element.slice.value if isinstance(element.slice, cst.Index) else None
                for element in node.slice
            ]
            args = tuple(self._argument(module, head.name, i, e) for i, e in enumerate(elements))
            return TypeRef(text, head.name, args, head.project)
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.BitOr):
            members: list[TypeRef] = []
            for side in (node.left, node.right):
                ref = self.type_ref(module, side)
                members.extend(ref.args if ref.name == "|" else (ref,))
            return TypeRef(text, "|", tuple(members))
        if isinstance(node, cst.SimpleString | cst.ConcatenatedString):
            inner = _forward_reference(node)
            if inner is None:
                return TypeRef(text, "")
            return replace(self.type_ref(module, inner), text=text)
        if isinstance(node, cst.Ellipsis):
            return TypeRef(text, "...")
        return TypeRef(text, "")

    def _argument(
        self, module: _Module, head: str, index: int, node: cst.BaseExpression | None
    ) -> TypeRef:
        """One element inside `X[...]`: a literal value for Literal (and Annotated's
        metadata), a type otherwise."""
        if node is None:  # a slice, `X[a:b]`
            return TypeRef("", "")
        if head == ANNOTATED and index > 0:
            return TypeRef(module.code(node), "<value>")
        if head == LITERAL:
            if isinstance(node, cst.Name) and node.value == "None":
                return TypeRef("None", "None")
            if _is_literal_value(node):
                return TypeRef(module.code(node), "<value>")
        return self.type_ref(module, node)  # in a Literal, an enum member: judged not JSON

    def _named(self, module: _Module, text: str, dotted: str) -> TypeRef:
        qualified = module.qualify(dotted)
        located = self.locate(qualified)
        if located.kind == "class" and located.module is not None:
            kind = "model" if self.is_model(located.module, located.names[0]) else "class"
            return TypeRef(text, located.qualified, project=kind)
        if located.kind in ("function", "value", "attribute"):
            return TypeRef(text, located.qualified)
        return TypeRef(text, qualified)

    def target(self, module: _Module, definition: cst.FunctionDef) -> Target:
        params = definition.params
        found: list[TargetParam] = []
        groups: Sequence[tuple[str, Sequence[cst.Param]]] = (
            ("positional-only", params.posonly_params),
            ("positional", params.params),
            ("var-positional", [params.star_arg] if isinstance(params.star_arg, cst.Param) else []),
            ("keyword-only", params.kwonly_params),
            ("var-keyword", [params.star_kwarg] if params.star_kwarg is not None else []),
        )
        for kind, group in groups:
            for param in group:
                annotation = param.annotation.annotation if param.annotation else None
                found.append(
                    TargetParam(
                        param.name.value,
                        module.code(annotation) if annotation is not None else None,
                        kind,
                        param.default is not None,
                        self.type_ref(module, annotation) if annotation is not None else None,
                    )
                )
        return Target(
            module.name,
            definition.name.value,
            module.file,
            module.positions[definition.name].start.line,
            definition.asynchronous is not None,
            tuple(found),
        )


def _syntax_error(text: str, exc: cst.ParserSyntaxError) -> str:
    """Where the file is broken: Python's own parser places it exactly, libcst's only
    roughly (it may name the statement's start, or the next one)."""
    line, column = exc.editor_line, exc.editor_column
    try:
        ast.parse(text)
    except SyntaxError as python:
        line, column = python.lineno or line, python.offset or column
    except ValueError:  # NUL bytes
        pass
    return f"syntax error at line {line}, column {column}"


def _is_table(definition: cst.ClassDef) -> bool:
    return any(
        arg.keyword is not None
        and arg.keyword.value == "table"
        and isinstance(arg.value, cst.Name)
        and arg.value.value == "True"
        for arg in definition.keywords
    )


def _is_literal_value(node: cst.BaseExpression) -> bool:
    if isinstance(node, LITERAL_NODES):
        return True
    if isinstance(node, cst.Name):
        return node.value in ("True", "False")
    return (
        isinstance(node, cst.UnaryOperation)
        and isinstance(node.operator, cst.Minus)
        and isinstance(node.expression, cst.Integer | cst.Float)
    )


@dataclass(frozen=True)
class _Callable:
    kind: str  # as AddTaskCall.callable_kind
    target: Target | None = None
    unresolved: str = ""
    nested_in: str = ""


class _Assigned(cst.CSTVisitor):
    """The value (or annotation) of every plain name assigned in a module."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[cst.Name, cst.BaseExpression] = {}

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            if isinstance(target.target, cst.Name):
                self.values[target.target] = node.value

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if isinstance(node.target, cst.Name):
            self.values[node.target] = node.annotation.annotation


class _CallFinder(cst.CSTVisitor):
    """Collects the module's add_task calls on BackgroundTasks objects."""

    def __init__(self, project: _Project, module: _Module) -> None:
        super().__init__()
        self.project = project
        self.module = module
        self.functions: list[cst.FunctionDef] = []
        self.task_params: dict[cst.Param, cst.FunctionDef] = {}
        self.request_params: dict[cst.FunctionDef, list[str]] = {}
        self.used: set[cst.Param] = set()
        self.calls: list[AddTaskCall] = []
        # read before the calls: a module-level `tasks = BackgroundTasks()` may come last
        assigned = _Assigned()
        module.tree.visit(assigned)
        self.assigned = assigned.values

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.functions.append(node)
        params = node.params
        every = [*params.posonly_params, *params.params, *params.kwonly_params]
        requests = []
        for param in every:
            if param.annotation is None:
                continue
            head = self.module.annotation_head(param.annotation.annotation)
            if framework_class(head, BACKGROUND_TASKS):
                self.task_params[param] = node
            elif framework_class(head, REQUEST_CLASSES):
                requests.append(param.name.value)
        self.request_params[node] = requests

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.functions.pop()

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if not (
            isinstance(func, cst.Attribute)
            and func.attr.value == "add_task"
            and isinstance(func.value, cst.Name)
        ):
            return
        receiver = func.value
        owner: cst.Param | None = None
        created = False
        for assignment in self._assignments(receiver):
            if isinstance(assignment.node, cst.Param) and assignment.node in self.task_params:
                owner = assignment.node
            elif isinstance(assignment.node, cst.Name) and self._makes_tasks(assignment.node):
                created = True
        if owner is None and not created:
            return  # not a BackgroundTasks
        if owner is not None:
            self.used.add(owner)
        self.calls.append(self._call(node, receiver.value, owner is not None))

    def _assignments(self, name: cst.Name) -> list[Assignment]:
        """The bindings of a name where it is used (builtins have none)."""
        scope = self.module.scopes.get(name)
        found = scope[name.value] if scope is not None else set()
        return [assignment for assignment in found if isinstance(assignment, Assignment)]

    def _makes_tasks(self, name: cst.Name) -> bool:
        """`tasks = BackgroundTasks()` or `tasks: BackgroundTasks = ...`."""
        value = self.assigned.get(name)
        if isinstance(value, cst.Call):
            value = value.func
        return value is not None and framework_class(
            self.module.annotation_head(value), BACKGROUND_TASKS
        )

    def _call(self, node: cst.Call, receiver: str, on_param: bool) -> AddTaskCall:
        module = self.module
        position = module.positions[node]
        callable_arg: cst.Arg | None = None
        if node.args and node.args[0].keyword is None and not node.args[0].star:
            callable_arg = node.args[0]
        else:
            callable_arg = next(
                (a for a in node.args if a.keyword is not None and a.keyword.value == "func"),
                None,
            )
        args: list[str] = []
        kwargs: list[tuple[str, str]] = []
        starred: list[str] = []
        for arg in node.args:
            if arg is callable_arg:
                continue
            if arg.star:
                starred.append(f"{arg.star}{module.code(arg.value)}")
            elif arg.keyword is not None:
                kwargs.append((arg.keyword.value, module.code(arg.value)))
            else:
                args.append(module.code(arg.value))
        if callable_arg is None:
            found = _Callable("unresolved", unresolved="the call names no function")
            source = ""
        else:
            found = self._resolve(callable_arg.value)
            source = module.code(callable_arg.value)
        route = self.functions[-1] if self.functions else None
        requests = [name for function in self.functions for name in self.request_params[function]]
        return AddTaskCall(
            file=module.file,
            line=position.start.line,
            column=position.start.column,
            end_line=position.end.line,
            end_column=position.end.column,
            route=route.name.value if route else "",
            route_is_async=route is not None and route.asynchronous is not None,
            route_decorator=self._route_decorator(route) if route else "",
            param_name=receiver,
            on_route_param=on_param,
            callable_source=source,
            callable_kind=found.kind,
            target=found.target,
            unresolved=found.unresolved,
            nested_in=found.nested_in,
            args=tuple(args),
            kwargs=tuple(kwargs),
            starred=tuple(starred),
            request_names=tuple(dict.fromkeys(requests)),
        )

    def _route_decorator(self, function: cst.FunctionDef) -> str:
        for decorator in function.decorators:
            expression = decorator.decorator
            if isinstance(expression, cst.Call):
                expression = expression.func
            if isinstance(expression, cst.Attribute) and expression.attr.value in ROUTE_DECORATORS:
                return self.module.code(expression)
        return ""

    def _resolve(self, node: cst.BaseExpression) -> _Callable:
        """What the callable passed to add_task is."""
        if isinstance(node, cst.Lambda):
            return _Callable("lambda")
        if isinstance(node, cst.Name):
            return self._resolve_name(node, ())
        if isinstance(node, cst.Attribute):
            names: list[str] = []
            head: cst.BaseExpression = node
            while isinstance(head, cst.Attribute):
                names.insert(0, head.attr.value)
                head = head.value
            if isinstance(head, cst.Name):
                return self._resolve_name(head, tuple(names))
            return _Callable("attribute-of-object")
        return _Callable("unresolved", unresolved="it is an expression, not the name of a function")

    def _resolve_name(self, head: cst.Name, attributes: tuple[str, ...]) -> _Callable:
        """`name` or `name.a.b`: through the binding of `name` where it is used."""
        module, name = self.module, head.value
        written = ".".join((name, *attributes))
        assignments = self._assignments(head)
        if not assignments:
            if name in BUILTIN_NAMES:
                if attributes:  # `str.upper`: a method of a builtin class
                    return _Callable("attribute-of-object")
                return _Callable("unresolved", unresolved=f"`{name}` is a Python builtin")
            return _Callable("unresolved", unresolved=f"`{name}` is not defined in {module.file}")
        binding = self._nearest(assignments, head)
        statement = binding.node
        if isinstance(binding, ImportAssignment) and isinstance(
            statement, cst.Import | cst.ImportFrom
        ):
            imported = import_bindings(statement, module.package).get(name)
            if imported is None:
                return _Callable("unresolved", unresolved=f"`{name}` cannot be followed")
            return self._located(".".join((imported, *attributes)), written)
        if attributes:
            return _Callable("attribute-of-object")  # of a local object, a class, `self`
        if isinstance(binding.scope, GlobalScope):  # defined in this very module
            if name in module.functions:
                return _Callable("function", self.project.target(module, module.functions[name]))
            what = "a class" if name in module.classes else "a value, not a def"
            return _Callable("unresolved", unresolved=f"`{module.name}.{name}` is {what}")
        if isinstance(binding.node, cst.FunctionDef):
            outer = binding.scope.node if isinstance(binding.scope, FunctionScope) else None
            outer_name = outer.name.value if isinstance(outer, cst.FunctionDef) else ""
            return _Callable("nested-function", nested_in=outer_name)
        kind = "parameter" if isinstance(binding.node, cst.Param) else "local variable"
        return _Callable(
            "unresolved", unresolved=f"`{name}` is a {kind}, not the name of a function"
        )

    def _nearest(self, assignments: list[Assignment], use: cst.Name) -> Assignment:
        """The binding in effect at `use`: the last one above it, if any is."""

        def line(assignment: Assignment) -> int:
            position = self.module.positions.get(assignment.node)
            return position.start.line if position is not None else 0

        here = self.module.positions[use].start.line
        ordered = sorted(assignments, key=line)
        above = [a for a in ordered if line(a) <= here]
        return above[-1] if above else ordered[0]

    def _located(self, qualified: str, written: str) -> _Callable:
        located = self.project.locate(qualified)
        kind = located.kind
        if kind == "function" and located.module is not None:
            definition = located.module.functions[located.names[0]]
            return _Callable("function", self.project.target(located.module, definition))
        if kind == "attribute":
            return _Callable("attribute-of-object")
        if kind == "outside":
            package = located.qualified.partition(".")[0]
            if package == "builtins":
                why = f"`{written}` is a Python builtin"
            else:
                why = f"it comes from `{package}`, not from the project's own files"
            return _Callable("unresolved", unresolved=why)
        where = located.module.file if located.module else ""
        reasons = {
            "class": f"`{located.qualified}` is a class",
            "value": f"`{located.qualified}` is a value assigned in {where}, not a def",
            "module": f"`{located.qualified}` is a module",
            "missing": f"`{located.qualified}` is not defined in {where or 'the project'}",
            "unparsed": f"{located.names[0] if located.names else where} could not be parsed",
        }
        return _Callable("unresolved", unresolved=reasons[kind])

    def unused(self) -> Iterator[UnusedParam]:
        """The module's BackgroundTasks parameters that no add_task call uses."""
        for param, function in self.task_params.items():
            if param in self.used:
                continue
            position = self.module.positions[param.name]
            references = [
                assignment
                for assignment in self._assignments(param.name)
                if assignment.node is param and assignment.references
            ]
            yield UnusedParam(
                self.module.file,
                position.start.line,
                position.start.column,
                function.name.value,
                param.name.value,
                bool(references),
            )
