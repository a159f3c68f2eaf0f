"""Add and remove top-level definitions (functions, classes) in a module, by lines.

`add_definitions` and `remove_definitions` are exact inverses: a definition is inserted
with two blank lines before it (as ruff format spaces top-level definitions) and removed
with them, so add-then-remove gives back the same bytes. The statements are located with
outline.py; the snippet inserted is checked to be Python first.
"""

from __future__ import annotations

from collections.abc import Callable

from bgtasks_gen.patch.outline import (
    Statement,
    blocks,
    check_syntax,
    lines_of,
    newline_of,
    statements,
    top_level_names,
)


def definition_names(source: str) -> list[str]:
    return top_level_names(source)


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
