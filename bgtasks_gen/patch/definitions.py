"""Add and remove top-level definitions (functions, classes) in a module, by lines.

`add_definitions` and `remove_definitions` are exact inverses: a definition is inserted
with two blank lines before it (as ruff format spaces top-level definitions) and removed
with them, so add-then-remove gives back the same bytes. The statements are located with
outline.py; the snippet inserted is checked to be Python first.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

from bgtasks_gen.patch.outline import (
    Statement,
    blocks,
    check_syntax,
    lines_of,
    newline_of,
    parse_ast,
    statements,
    top_level_names,
)


def definition_names(source: str) -> list[str]:
    return top_level_names(source)


class _ModuleBindings(ast.NodeVisitor):
    """Every name a module binds in its own namespace, with the line that binds it first:
    imports in any form, assignment targets (for, with, except, walrus and match
    included), defs, classes, type aliases, and `global` names assigned in functions."""

    def __init__(self, source: str) -> None:
        self.names: dict[str, int] = {}
        # what runs at module level in a def or class (decorators, defaults, bases) can
        # bind only with a walrus, and a function binds a module name only by `global`:
        # walking them is most of the cost on a large module, so only when the source
        # has the token
        self.has_walrus = ":=" in source
        self.has_global = re.search(r"\bglobal\b", source) is not None

    def _bind(self, name: str, line: int) -> None:
        self.names.setdefault(name, line)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            # `import a.b` binds `a`
            self._bind(alias.asname or alias.name.partition(".")[0], node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self._bind(alias.asname or alias.name, node.lineno)

    def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self._bind(node.name, node.lineno)
        if self.has_walrus:
            outside: list[ast.AST] = [*node.decorator_list]
            if isinstance(node, ast.ClassDef):
                outside += [*node.bases, *node.keywords]
            else:
                outside += [d for d in (*node.args.defaults, *node.args.kw_defaults) if d]
            for child in outside:
                self.visit(child)
        if self.has_global:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Global):
                    for name in inner.names:
                        self._bind(name, inner.lineno)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for default in (*node.args.defaults, *node.args.kw_defaults):
            if default is not None:
                self.visit(default)

    def _comprehension(
        self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp
    ) -> None:
        # its loop variables are its own; a walrus inside binds in the module
        for inner in ast.walk(node):
            if isinstance(inner, ast.NamedExpr) and isinstance(inner.target, ast.Name):
                self._bind(inner.target.id, inner.lineno)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store | ast.Del):
            self._bind(node.id, node.lineno)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self._bind(node.name, node.lineno)
        self.generic_visit(node)

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self._bind(node.name, node.lineno)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self._bind(node.name, node.lineno)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self._bind(node.rest, node.lineno)
        self.generic_visit(node)


def bound_names(source: str) -> dict[str, int]:
    """{name: first line binding it} for every name bound at the module's top level."""
    tree = parse_ast(source)
    if tree is None:
        return _bound_names_libcst(source)
    visitor = _ModuleBindings(source)
    visitor.visit(tree)
    return visitor.names


def _bound_names_libcst(source: str) -> dict[str, int]:
    """The same from libcst's scope analysis, for syntax newer than this interpreter;
    what that analysis leaves out (match captures, a walrus in a comprehension) is
    collected by a visitor of the module-level code."""
    import libcst as cst
    from libcst.metadata import GlobalScope, MetadataWrapper, PositionProvider, ScopeProvider

    from bgtasks_gen.patch import _cst_fallback

    wrapper = MetadataWrapper(_cst_fallback.parse(source), unsafe_skip_copy=True)
    scopes = wrapper.resolve(ScopeProvider)
    positions = wrapper.resolve(PositionProvider)
    found: dict[str, int] = {}

    def bind(name: str, node: cst.CSTNode | None) -> None:
        line = positions[node].start.line if node is not None and node in positions else 0
        name = name.partition(".")[0]  # `import a.b` binds `a`
        found[name] = min(found.get(name, line), line)

    for scope in set(scopes.values()):
        if isinstance(scope, GlobalScope):
            for assignment in scope.assignments:
                bind(assignment.name, getattr(assignment, "node", None))

    class ModuleLevel(cst.CSTVisitor):
        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            return False

        def visit_ClassDef(self, node: cst.ClassDef) -> bool:
            return False

        def visit_Lambda(self, node: cst.Lambda) -> bool:
            return False

        def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
            if isinstance(node.target, cst.Name):
                bind(node.target.value, node)

        def visit_MatchAs(self, node: cst.MatchAs) -> None:
            if node.name is not None:
                bind(node.name.value, node)

        def visit_MatchStar(self, node: cst.MatchStar) -> None:
            if node.name is not None:
                bind(node.name.value, node)

        def visit_MatchMapping(self, node: cst.MatchMapping) -> None:
            if node.rest is not None:
                bind(node.rest.value, node)

    wrapper.module.visit(ModuleLevel())
    return found


def definition_code(source: str, names: list[str]) -> str | None:
    """The code of the named definitions as they stand, or None if one is missing."""
    found = {s.name: s for s in statements(source) if s.name is not None}
    if not all(name in found for name in names):
        return None
    lines = lines_of(source)
    return "".join("".join(lines[found[n].start - 1 : found[n].end]) for n in names)


def is_function(statement: Statement) -> bool:
    return statement.kind == "def"


def add_definitions(
    source: str, snippet: str, after: Callable[[Statement], bool] | None = None
) -> str:
    """Insert the snippet's top-level statements after the last statement for which
    `after` is true (default: the last function), two blank lines before each."""
    check_syntax(snippet)
    test = after or is_function
    outline = statements(source)
    anchors = [s.end for s in outline if test(s)]
    anchor = anchors[-1] if anchors else (outline[-1].end if outline else 0)
    newline = newline_of(source)
    lines = lines_of(source)
    if anchor and not lines[anchor - 1].endswith(("\n", "\r")):
        lines[anchor - 1] += newline  # a file without a final newline
    new: list[str] = []
    for block in blocks(snippet):
        body = block.replace("\r\n", "\n").rstrip("\n").split("\n")
        new += [newline, newline] + [line + newline for line in body]
    if anchor == 0:
        new = new[2:]  # an empty module: no blank lines before the first definition
    lines[anchor:anchor] = new
    return "".join(lines)


def remove_definitions(source: str, names: set[str]) -> str:
    """Remove the named top-level definitions with the (up to two) blank lines above."""
    lines = lines_of(source)
    for statement in sorted(statements(source), key=lambda s: s.start, reverse=True):
        if statement.name not in names:
            continue
        first = statement.start - 1
        for _ in range(2):
            if first > 0 and not lines[first - 1].strip():
                first -= 1
        del lines[first : statement.end]
    return "".join(lines)
