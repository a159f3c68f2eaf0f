"""Small helpers shared by the patch modules."""

from __future__ import annotations

import sys

import libcst as cst
from libcst.helpers import get_full_name_for_node

from bgtasks_gen.errors import PatchError
from bgtasks_gen.template_filters import is_identifier


def _import_sort_key(name: str) -> tuple[int, str]:
    """isort/ruff "order by type": CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name.lower()


def _from_module(statement: cst.BaseStatement) -> tuple[cst.ImportFrom | None, str | None]:
    """The module a one-import line imports from, relative ones with their dots."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.ImportFrom) and (small.relative or small.module is not None):
            dots = "." * len(small.relative)
            name = get_full_name_for_node(small.module) if small.module is not None else ""
            return small, f"{dots}{name}"
        if isinstance(small, cst.Import):
            return None, get_full_name_for_node(small.names[0].name)
    return None, None


def _alias_of(alias: cst.ImportAlias) -> tuple[str, str | None]:
    name = get_full_name_for_node(alias.name) or ""
    asname = None
    if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
        asname = alias.asname.name.value
    return name, asname


def add_import(
    module: cst.Module,
    from_module: str,
    name: str,
    alias: str | None = None,
    first_party: frozenset[str] = frozenset(),
) -> cst.Module:
    """Add `from from_module import name [as alias]` unless present, where isort would put it.

    Merges into an existing `from from_module import ...`; otherwise the new line goes
    into its isort section (standard library, third party, `first_party`), sorted.
    """
    body = list(module.body)
    imports: list[tuple[int, cst.ImportFrom | None, str]] = []
    for position, statement in enumerate(body):
        node, dotted = _from_module(statement)
        if dotted is not None:
            imports.append((position, node, dotted))
    for position, node, dotted in imports:
        if node is None or dotted != from_module or isinstance(node.names, cst.ImportStar):
            continue
        present = [_alias_of(a) for a in node.names]
        if (name, alias) in present:
            return module
        if alias is None:
            line = body[position]
            assert isinstance(line, cst.SimpleStatementLine)
            merged = node.with_changes(names=_insert_name(node, name, present))
            body[position] = line.with_changes(body=[merged])
            return module.with_changes(body=body)

    statement = cst.SimpleStatementLine(body=[_import_from(from_module, name, alias)])
    group = import_group(from_module, first_party)
    same = [(p, d) for p, _, d in imports if import_group(d, first_party) == group]
    lower = [p for p, _, d in imports if import_group(d, first_party) < group]
    higher = [p for p, _, d in imports if import_group(d, first_party) > group]
    blank = [cst.EmptyLine(indent=False)]
    if same:
        # isort: by module; for one module, `from m import a, b` before `... as alias`
        before = [
            p
            for p, d in same
            if d.lower() < from_module.lower()
            or (d.lower() == from_module.lower() and alias is not None)
        ]
        if before:
            body.insert(before[-1] + 1, statement)
        else:
            _insert_before(body, same[0][0], statement, [])
    elif lower:
        body.insert(lower[-1] + 1, statement.with_changes(leading_lines=blank))
    elif higher:
        _insert_before(body, higher[0], statement, blank)
    else:
        # no imports at all: after a module docstring, else at the very top
        has_docstring = module.get_docstring() is not None
        body.insert(
            1 if has_docstring else 0,
            statement.with_changes(leading_lines=blank if has_docstring else []),
        )
    return module.with_changes(body=body)


def name_node(name: str) -> cst.Name:
    """A name of generated code, refused unless it reads back as itself (not NFKC-folded,
    not a keyword): nothing but a checked name is written as code."""
    if not is_identifier(name):
        raise PatchError(
            f"{name!r} is not a plain Python name",
            "rename it to ASCII letters, digits and underscores (not a keyword)",
        )
    return cst.Name(name)


def dotted_node(dotted: str) -> cst.Name | cst.Attribute:
    """`a.b.c` as libcst nodes, each part checked by name_node."""
    first, *rest = dotted.split(".")
    node: cst.Name | cst.Attribute = name_node(first)
    for part in rest:
        node = cst.Attribute(value=node, attr=name_node(part))
    return node


def _import_from(from_module: str, name: str, alias: str | None) -> cst.ImportFrom:
    """`from from_module import name [as alias]`, built from checked names."""
    bare = from_module.lstrip(".")
    return cst.ImportFrom(
        module=dotted_node(bare) if bare else None,
        relative=[cst.Dot() for _ in range(len(from_module) - len(bare))],
        names=[
            cst.ImportAlias(
                name=name_node(name),
                asname=cst.AsName(name=name_node(alias)) if alias else None,
            )
        ],
    )


def _insert_name(
    node: cst.ImportFrom, name: str, present: list[tuple[str, str | None]]
) -> list[cst.ImportAlias]:
    """The import's names with `name` in sorted place, in the statement's own layout:
    `a, b` on one line, or one name a line inside parentheses (trailing comma kept)."""
    assert not isinstance(node.names, cst.ImportStar)
    names = list(node.names)
    index = sum(_import_sort_key(n) < _import_sort_key(name) for n, _ in present)
    inner: cst.Comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    if node.lpar is not None and len(names) > 1 and isinstance(names[0].comma, cst.Comma):
        inner = names[0].comma
    elif node.lpar is not None:
        inner = cst.Comma(whitespace_after=node.lpar.whitespace_after)
    new = cst.ImportAlias(name=name_node(name))
    if index == len(names):
        # the new last name takes over the old last one's ending (trailing comma or none)
        new = new.with_changes(comma=names[-1].comma)
        names[-1] = names[-1].with_changes(comma=inner)
    else:
        new = new.with_changes(comma=inner)
    names.insert(index, new)
    return names


def _insert_before(
    body: list[cst.SimpleStatementLine | cst.BaseCompoundStatement],
    position: int,
    statement: cst.SimpleStatementLine,
    displaced_leading: list[cst.EmptyLine],
) -> None:
    """Put `statement` where `position` is; it takes over that line's leading blank lines."""
    displaced = body[position]
    assert isinstance(displaced, cst.SimpleStatementLine)
    body[position] = displaced.with_changes(leading_lines=displaced_leading)
    body.insert(position, statement.with_changes(leading_lines=displaced.leading_lines))


def import_group(dotted: str, first_party: frozenset[str]) -> int:
    """isort's sections: 0 future and standard library, 1 third party, 2 first party,
    3 local folder (relative imports)."""
    if dotted.startswith("."):
        return 3
    top = dotted.split(".")[0]
    if top == "__future__" or top in sys.stdlib_module_names:
        return 0
    return 2 if top in first_party else 1


def top_level_function(module: cst.Module, name: str) -> cst.FunctionDef | None:
    for statement in module.body:
        if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
            return statement
    return None
