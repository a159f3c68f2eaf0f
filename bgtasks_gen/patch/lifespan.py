"""Make a lifespan (the arq runner's Redis pool) run in the user's FastAPI app.

`add_lifespan` edits the `FastAPI(...)` call so that everything that runs at startup
today still runs, plus the new lifespan:

(a) no `lifespan=`, no event handlers: add `lifespan=bgtasks_lifespan`.
(b) `lifespan=existing`: wrap it, never replace it:
    `lifespan=combine_lifespans(existing, bgtasks_lifespan)`.
(c) no `lifespan=`, but `@app.on_event(...)`, `add_event_handler(...)` or
    `FastAPI(on_startup=...)` handlers: FastAPI (0.165, Starlette 1.10) silently stops
    running those once `lifespan=` is set, so the handlers are run by the generated
    `on_event_handlers` lifespan, first:
    `lifespan=combine_lifespans(on_event_handlers, bgtasks_lifespan)`.
    (Chosen over adding more on_event handlers: on_event is deprecated, and this keeps
    one place that says what runs at startup. Handlers registered in other modules are
    covered at run time: the pool's lifespan logs a warning counting them.)
(d) the app built inside a factory (`def create_app(): application = FastAPI(...)`):
    the same edits, on the call inside the function.

`combine_lifespans` and `on_event_handlers` live next to `lifespan` in `import_module`.
Pure: source in, source out, parsed with libcst only; everything but the call and
the new imports stays byte for byte. A second run returns the source unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
from libcst.helpers import get_full_name_for_node

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch._common import add_import

ALIAS = "bgtasks_lifespan"
COMBINE = "combine_lifespans"
EVENT_HANDLERS = "on_event_handlers"
LINE_LENGTH = 88  # ruff's and black's default: the edited call must still fit
EVENT_METHODS = ("on_event", "add_event_handler")
EVENT_KEYWORDS = ("on_startup", "on_shutdown")


class LifespanPatchError(PatchError, ValueError):
    """Raised when the module has no FastAPI(...) call to patch, or no single one."""


@dataclass(frozen=True)
class _Candidate:
    call: cst.Call
    statement: cst.BaseSmallStatement | None  # the statement holding the call
    target: str | None  # the name it is assigned to, if any
    function: str | None  # the enclosing function, None at module level
    indent: str  # the indentation of the statement's line


class _Finder(cst.CSTVisitor):
    """Every FastAPI(...) call, and whether the module registers event handlers."""

    def __init__(self, default_indent: str) -> None:
        self.default_indent = default_indent
        self.fastapi_names = {"FastAPI"}
        self.module_names: set[str] = set()
        self.candidates: list[_Candidate] = []
        self.uses_event_handlers = False
        self._functions: list[str] = []
        self._indents: list[str] = []
        self._statements: list[cst.BaseSmallStatement] = []

    # imports: `from fastapi import FastAPI as F`, `import fastapi as fa`
    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        module = get_full_name_for_node(node.module) if node.module else None
        if module is None or not module.startswith("fastapi") or node.relative:
            return
        if isinstance(node.names, cst.ImportStar):
            return
        for alias in node.names:
            if get_full_name_for_node(alias.name) == "FastAPI":
                asname = alias.asname.name if alias.asname else None
                if isinstance(asname, cst.Name):
                    self.fastapi_names.add(asname.value)

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            if get_full_name_for_node(alias.name) == "fastapi":
                asname = alias.asname.name if alias.asname else None
                name = asname.value if isinstance(asname, cst.Name) else "fastapi"
                self.module_names.add(name)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._functions.append(node.name.value)

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self._functions.pop()

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        self._indents.append(node.indent if node.indent is not None else self.default_indent)

    def leave_IndentedBlock(self, original_node: cst.IndentedBlock) -> None:
        self._indents.pop()

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
        # one line may hold several statements; remember them to find the call's own
        self._statements = list(node.body)

    def _is_fastapi(self, func: cst.BaseExpression) -> bool:
        if isinstance(func, cst.Name):
            return func.value in self.fastapi_names
        if isinstance(func, cst.Attribute) and func.attr.value == "FastAPI":
            return get_full_name_for_node(func.value) in self.module_names
        return False

    def visit_Call(self, node: cst.Call) -> None:
        if isinstance(node.func, cst.Attribute) and node.func.attr.value in EVENT_METHODS:
            self.uses_event_handlers = True
        if not self._is_fastapi(node.func):
            return
        statement = next((s for s in self._statements if _contains(s, node)), None)
        target = None
        if isinstance(statement, cst.Assign) and statement.value is node:
            names = [t.target for t in statement.targets if isinstance(t.target, cst.Name)]
            target = names[0].value if names else None
        elif isinstance(statement, cst.AnnAssign) and statement.value is node:
            if isinstance(statement.target, cst.Name):
                target = statement.target.value
        self.candidates.append(
            _Candidate(
                call=node,
                statement=statement,
                target=target,
                function=self._functions[-1] if self._functions else None,
                indent="".join(self._indents),
            )
        )


def _contains(tree: cst.CSTNode, node: cst.CSTNode) -> bool:
    if tree is node:
        return True
    return any(_contains(child, node) for child in tree.children)


def _choose(candidates: list[_Candidate], hint: str | None) -> _Candidate:
    if not candidates:
        raise LifespanPatchError(
            "no FastAPI(...) call in the app module",
            "pass --app-module MODULE:APP naming the module that creates the app",
        )
    if len(candidates) == 1:
        return candidates[0]
    matching = [c for c in candidates if hint is not None and hint in (c.target, c.function)]
    if len(matching) == 1:
        return matching[0]
    where = ", ".join(c.target or c.function or "?" for c in candidates)
    raise LifespanPatchError(
        f"{len(candidates)} FastAPI(...) calls in the app module ({where}); "
        f"cannot tell which one is {hint or 'the app'}",
        "pass --app-module MODULE:APP naming the app",
    )


def _keyword(call: cst.Call, name: str) -> cst.Arg | None:
    return next((a for a in call.args if a.keyword is not None and a.keyword.value == name), None)


def _has_newline(node: cst.BaseParenthesizableWhitespace | cst.MaybeSentinel) -> bool:
    return isinstance(node, cst.ParenthesizedWhitespace)


def _exploded(call: cst.Call) -> bool:
    """True when the call already has one argument per line and a trailing comma."""
    args = call.args
    return (
        bool(args)
        and _has_newline(call.whitespace_before_args)
        and all(
            isinstance(a.comma, cst.Comma) and _has_newline(a.comma.whitespace_after) for a in args
        )
    )


def _explode(call: cst.Call, indent_unit: str) -> cst.Call:
    """One argument per line with a magic trailing comma: ruff format keeps it so."""
    inner = cst.ParenthesizedWhitespace(
        first_line=cst.TrailingWhitespace(),
        indent=True,
        last_line=cst.SimpleWhitespace(indent_unit),
    )
    closing = cst.ParenthesizedWhitespace(
        first_line=cst.TrailingWhitespace(), indent=True, last_line=cst.SimpleWhitespace("")
    )
    args = [
        arg.with_changes(
            comma=cst.Comma(whitespace_after=inner if i < len(call.args) - 1 else closing)
        )
        for i, arg in enumerate(call.args)
    ]
    return call.with_changes(whitespace_before_args=inner, args=args)


def _with_lifespan(call: cst.Call, value: cst.BaseExpression) -> cst.Call:
    """`call` with `lifespan=value`: the existing keyword's value replaced, or appended."""
    existing = _keyword(call, "lifespan")
    if existing is not None:
        args = [a.with_changes(value=value) if a is existing else a for a in call.args]
        return call.with_changes(args=args)
    new_arg = cst.Arg(
        keyword=cst.Name("lifespan"),
        value=value,
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""),
            whitespace_after=cst.SimpleWhitespace(""),
        ),
    )
    args = list(call.args)
    if not args:
        return call.with_changes(args=[new_arg])
    last = args[-1]
    if _exploded(call):
        # keep the layout: the old last argument keeps its comment and gets the inner
        # indentation; the new one gets the closing line (and any comment lines there)
        assert isinstance(last.comma, cst.Comma)
        closing = last.comma.whitespace_after
        inner = call.whitespace_before_args
        assert isinstance(closing, cst.ParenthesizedWhitespace)
        assert isinstance(inner, cst.ParenthesizedWhitespace)
        args[-1] = last.with_changes(
            comma=last.comma.with_changes(
                whitespace_after=closing.with_changes(empty_lines=[], last_line=inner.last_line)
            )
        )
        new_comma = cst.Comma(
            whitespace_after=closing.with_changes(first_line=cst.TrailingWhitespace())
        )
        args.append(new_arg.with_changes(comma=new_comma))
        return call.with_changes(args=args)
    trailing = isinstance(last.comma, cst.Comma)
    args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    if trailing:
        new_arg = new_arg.with_changes(comma=cst.Comma())
    args.append(new_arg)
    return call.with_changes(args=args)


def _fits(module: cst.Module, candidate: _Candidate, call: cst.Call) -> bool:
    if candidate.statement is None:
        return True
    statement = candidate.statement.deep_replace(candidate.call, call)
    assert isinstance(statement, cst.CSTNode)
    code = module.code_for_node(statement)
    return "\n" not in code.strip() and len(candidate.indent) + len(code.rstrip()) <= LINE_LENGTH


def _already_patched(call: cst.Call) -> bool:
    arg = _keyword(call, "lifespan")
    return arg is not None and _mentions(arg.value, ALIAS)


class _NameFinder(cst.CSTVisitor):
    def __init__(self, name: str) -> None:
        self.name, self.found = name, False

    def visit_Name(self, node: cst.Name) -> None:
        self.found = self.found or node.value == self.name


def _mentions(node: cst.CSTNode, name: str) -> bool:
    """Does `name` appear anywhere in `node`? (libcst.matchers would say it in one line,
    but importing it costs about 0.2 s of every `init`.)"""
    finder = _NameFinder(name)
    node.visit(finder)
    return finder.found


class _Replace(cst.CSTTransformer):
    def __init__(self, old: cst.Call, new: cst.Call) -> None:
        self.old = old
        self.new = new

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        return self.new if original_node is self.old else updated_node


def add_lifespan(
    source: str,
    *,
    app_name_hint: str | None,
    import_module: str,
    lifespan_name: str = "lifespan",
) -> str:
    """Make `import_module.lifespan_name` run in the app created in `source`.

    `app_name_hint` names the app: the variable the FastAPI(...) call is assigned to,
    or the factory function it is in; it matters only when there are several calls.
    Raises LifespanPatchError when no (single) FastAPI(...) call can be found.
    """
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise LifespanPatchError(
            f"the app module does not parse: {exc.message} (line {exc.raw_line})"
        ) from exc
    finder = _Finder(module.default_indent)
    module.visit(finder)
    candidate = _choose(finder.candidates, app_name_hint)
    call = candidate.call
    if _already_patched(call):
        return source
    if any(arg.star == "**" for arg in call.args):
        raise LifespanPatchError(
            "the app is created with FastAPI(**...): cannot tell whether it sets lifespan=",
            f"add lifespan=... yourself, using {lifespan_name} from {import_module} "
            f"(and {COMBINE} to keep an existing lifespan)",
        )

    plain: list[str] = []  # names imported as they are, beside `lifespan as ALIAS`
    existing = _keyword(call, "lifespan")
    handlers = finder.uses_event_handlers or any(
        _keyword(call, name) is not None for name in EVENT_KEYWORDS
    )
    value: cst.BaseExpression
    if existing is not None:
        value = _combine(existing.value)
        plain.append(COMBINE)
    elif handlers:
        value = _combine(cst.Name(EVENT_HANDLERS))
        plain += [COMBINE, EVENT_HANDLERS]
    else:
        value = cst.Name(ALIAS)

    new_call = _with_lifespan(call, value)
    if not _exploded(call) and not _fits(module, candidate, new_call):
        new_call = _explode(new_call, module.default_indent)
    module = module.visit(_Replace(call, new_call))
    # import_module is the project's own: first party for isort's sections
    first_party = frozenset({import_module.split(".")[0]})
    for name in sorted(plain):
        module = add_import(module, import_module, name, first_party=first_party)
    return add_import(module, import_module, lifespan_name, ALIAS, first_party).code


def _combine(first: cst.BaseExpression) -> cst.Call:
    comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    return cst.Call(
        func=cst.Name(COMBINE),
        args=[cst.Arg(value=first, comma=comma), cst.Arg(value=cst.Name(ALIAS))],
    )
