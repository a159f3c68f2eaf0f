"""Add or remove one entry of a schedule or registration literal, by whole lines.

- "beat": an entry of Celery's `beat_schedule` dict, keyed by the task name;
- "cron": a `cron(...)` element of arq's `cron_jobs` list;
- "register": a `func(...)` element of arq's `functions` list.

The literal and its entries are found with `ast` (fast), or with libcst when the module
uses syntax newer than the running interpreter (see outline.py); the edit inserts or
deletes whole lines before the literal's closing bracket, so adding then removing an
entry gives back the same bytes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch.outline import dotted_name, lines_of, parse_ast

CONTAINERS = {"beat": "beat_schedule", "cron": "cron_jobs", "register": "functions"}


@dataclass(frozen=True)
class Entry:
    names: frozenset[str]  # the task names this entry stands for
    start: int  # 1-based lines
    end: int


@dataclass(frozen=True)
class Literal:
    start: int  # line of the opening bracket
    end: int  # line of the closing bracket
    entries: tuple[Entry, ...]
    last_end: tuple[int, int] | None  # (line, column) just after the last entry
    last_has_comma: bool


def _missing(kind: str) -> PatchError:
    return PatchError(
        f"cannot find `{CONTAINERS[kind]}` in the worker module",
        "add-task edits the schedule bgtasks generated; restore it or run init again",
    )


# -- fast path: ast ---------------------------------------------------------------------


def _ast_names(key: ast.expr | None, value: ast.expr) -> frozenset[str]:
    if key is not None:
        return (
            frozenset({key.value})
            if isinstance(key, ast.Constant) and isinstance(key.value, str)
            else frozenset()
        )
    if not isinstance(value, ast.Call):
        return frozenset()
    names = set()
    for keyword in value.keywords:
        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
            label = str(keyword.value.value)
            names.add(label.removeprefix("cron:"))
    if value.args:
        names.add(dotted_name(value.args[0]).rpartition(".")[2])
    return frozenset(names)


def _ast_literal(source: str, tree: ast.Module, kind: str) -> Literal:
    attribute = CONTAINERS[kind]
    container: ast.Dict | ast.List | None = None
    for node in ast.walk(tree):
        value: ast.expr | None = None
        if isinstance(node, ast.keyword) and node.arg == attribute:
            value = node.value
        elif isinstance(node, ast.Assign) and any(
            dotted_name(t).rpartition(".")[2] == attribute for t in node.targets
        ):
            value = node.value
        elif (
            isinstance(node, ast.AnnAssign)
            and dotted_name(node.target).rpartition(".")[2] == attribute
        ):
            value = node.value
        if isinstance(value, ast.Dict | ast.List):
            container = value
            break
    if container is None:
        raise _missing(kind)
    pairs: list[tuple[ast.expr | None, ast.expr]]
    if isinstance(container, ast.Dict):
        pairs = list(zip(container.keys, container.values, strict=True))
    else:
        pairs = [(None, element) for element in container.elts]
    entries = tuple(
        Entry(_ast_names(key, value), (key or value).lineno, value.end_lineno or value.lineno)
        for key, value in pairs
    )
    lines = lines_of(source)
    last_end = None
    has_comma = False
    if pairs:
        last = pairs[-1][1]
        line = last.end_lineno or last.lineno
        # ast columns count UTF-8 bytes
        column = len(lines[line - 1].encode()[: last.end_col_offset or 0].decode())
        last_end = (line, column)
        has_comma = lines[line - 1][column:].lstrip().startswith(",")
    return Literal(
        container.lineno, container.end_lineno or container.lineno, entries, last_end, has_comma
    )


def _literal(source: str, kind: str) -> Literal:
    tree = parse_ast(source)
    if tree is not None:
        return _ast_literal(source, tree, kind)
    # syntax newer than this interpreter: libcst finds it
    from bgtasks_gen.patch import _cst_fallback

    found: Literal | None = _cst_fallback.literal(source, CONTAINERS[kind])
    if found is None:
        raise _missing(kind)
    return found


# -- edits ------------------------------------------------------------------------------
def add_entries(source: str, kind: str, new: list[tuple[str, str]]) -> str:
    """Insert each (name, snippet) not there yet as the literal's last entries, in order."""
    literal = _literal(source, kind)
    present = set().union(*(entry.names for entry in literal.entries))
    snippets = [snippet for name, snippet in new if name not in present]
    if not snippets:
        return source
    if literal.start == literal.end:
        raise PatchError(
            f"`{CONTAINERS[kind]}` is written on one line",
            "split it one entry per line (as ruff format does) and run again",
        )
    lines = lines_of(source)
    closing = lines[literal.end - 1]
    indent = " " * (len(closing) - len(closing.lstrip()) + 4)
    newline = "\r\n" if closing.endswith("\r\n") else "\n"
    added = [
        (indent + line if line.strip() else "") + newline
        for snippet in snippets
        for line in snippet.rstrip("\n").split("\n")
    ]
    if literal.last_end is not None and not literal.last_has_comma:
        line, column = literal.last_end
        row = lines[line - 1]
        lines[line - 1] = row[:column] + "," + row[column:]
    lines[literal.end - 1 : literal.end - 1] = added
    return "".join(lines)


def entry_lines(source: str, kind: str, name: str) -> str | None:
    """The lines of the entry naming `name` (what remove_entry deletes), or None."""
    for entry in _literal(source, kind).entries:
        if name in entry.names:
            return "".join(lines_of(source)[entry.start - 1 : entry.end])
    return None


def remove_entry(source: str, kind: str, name: str) -> str:
    """Delete the lines of the entry naming `name`; unchanged if there is none."""
    lines = lines_of(source)
    for entry in _literal(source, kind).entries:
        if name in entry.names:
            del lines[entry.start - 1 : entry.end]
            return "".join(lines)
    return source
