"""Where a module's top-level statements and literals are, by line, found fast.

add-task runs on modules that grow with every task, and a full libcst parse costs about
50 µs a line (a 6,000-line tasks module: 0.3 s, per file, per parse). The standard
library's `ast` does the same job ten times faster, so it answers first; when it cannot
parse a file (syntax newer than the interpreter bgtasks runs on, e.g. Python 3.14's
`except A, B:`), libcst, which knows every Python version, decides: it either parses the
file, and its positions are used, or reports the real syntax error.

Edits built on an outline are line splices: insert whole lines after a statement, or
delete a statement's lines. Everything else in the file keeps its bytes.
"""

from __future__ import annotations

import ast
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Statement:
    """One top-level statement: a def, a class, or anything else."""

    kind: str  # "def" | "class" | "other"
    name: str | None
    decorators: tuple[str, ...]  # dotted names of the decorators' callees
    start: int  # first line, decorators included (1-based)
    end: int  # last line (1-based)


class SourceSyntaxError(Exception):
    """Raised when a module is not Python in any version libcst knows."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.line, self.column, self.message = line, column, message


def check_syntax(source: str) -> None:
    """Raise SourceSyntaxError if `source` is not Python (any version)."""
    if parse_ast(source) is None:
        from bgtasks_gen.patch import _cst_fallback

        _cst_fallback.parse(source)


@functools.lru_cache(maxsize=16)
def parse_ast(source: str) -> ast.Module | None:
    """The module's ast (cached: one command asks about the same text several times;
    callers only read the tree), or None when this interpreter cannot parse it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not our business
        try:
            return ast.parse(source)
        except (SyntaxError, ValueError):
            return None


def dotted_name(node: ast.expr) -> str:
    """`a.b.c` for a Name or an Attribute chain on one; "" for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.insert(0, node.id)
        return ".".join(parts)
    return ""


def _decorator_name(node: ast.expr) -> str:
    return dotted_name(node.func if isinstance(node, ast.Call) else node)


@functools.lru_cache(maxsize=16)
def _statements(source: str) -> tuple[Statement, ...]:
    return tuple(_outline(source))


def statements(source: str) -> list[Statement]:
    return list(_statements(source))


def _outline(source: str) -> list[Statement]:
    tree = parse_ast(source)
    if tree is None:
        return _statements_libcst(source)
    found = []
    for node in tree.body:
        decorators: tuple[str, ...] = ()
        start = node.lineno
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            decorators = tuple(_decorator_name(d) for d in node.decorator_list)
            if node.decorator_list:
                start = min(d.lineno for d in node.decorator_list)
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            found.append(Statement(kind, node.name, decorators, start, node.end_lineno or start))
        else:
            found.append(Statement("other", None, (), start, node.end_lineno or start))
    return found


def _statements_libcst(source: str) -> list[Statement]:
    from bgtasks_gen.patch import _cst_fallback

    return _cst_fallback.statements(source)


def top_level_names(source: str) -> list[str]:
    return [s.name for s in statements(source) if s.name is not None]


def lines_of(source: str) -> list[str]:
    return source.splitlines(keepends=True)


def newline_of(source: str) -> str:
    return "\r\n" if "\r\n" in source else "\n"


def blocks(source: str) -> Iterator[str]:
    """Each top-level statement's own lines (decorators included, blank lines above not)."""
    lines = lines_of(source)
    for statement in statements(source):
        yield "".join(lines[statement.start - 1 : statement.end])
