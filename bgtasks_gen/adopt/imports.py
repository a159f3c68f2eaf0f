"""Import edits of `bgtasks adopt`, with libcst: the import of the adopted module, placed
as isort would place it, and the imports that only the moved calls used, dropped (they
would be unused: ruff's F401).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import libcst as cst

Statement = cst.SimpleStatementLine | cst.BaseCompoundStatement


class _Referenced(cst.CSTVisitor):
    """Every name the module reads (attribute names, keywords and imports left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def visit_Import(self, node: cst.Import) -> bool:
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)
        return False

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)

    def visit_SimpleString(self, node: cst.SimpleString) -> None:
        # `__all__ = ["name"]` exports it: kept as used
        value = node.evaluated_value
        if isinstance(value, str) and value.isidentifier():
            self.names.add(value)


def _local(alias: cst.ImportAlias) -> str:
    if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
        return alias.asname.name.value
    return dotted_name(alias.name).split(".")[0]  # `import a.b` binds `a`


class _Pruner(cst.CSTTransformer):
    """Drops the imports of `names` that nothing reads any more; a line left empty goes,
    and the blank lines or comments above it stay, with the next statement."""

    def __init__(self, names: set[str], referenced: set[str]) -> None:
        super().__init__()
        self.unused = names - referenced

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        return updated_node.with_changes(body=self._pruned(updated_node.body))

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        body = [s for s in updated_node.body if isinstance(s, Statement)]
        if len(body) != len(updated_node.body):
            return updated_node
        return updated_node.with_changes(body=self._pruned(body))

    def _pruned(self, body: Sequence[Statement]) -> list[Statement]:
        kept: list[Statement] = []
        carried: Sequence[cst.EmptyLine] = ()
        for statement in body:
            line = self._line(statement)
            if line is None:
                carried = carried or statement.leading_lines
                continue
            if carried and not line.leading_lines:
                line = line.with_changes(leading_lines=carried)
            carried = ()
            kept.append(line)
        return kept

    def _line(self, statement: Statement) -> Statement | None:
        """The statement without the unused imports; None when nothing is left of it."""
        if not isinstance(statement, cst.SimpleStatementLine):
            return statement
        small: list[cst.BaseSmallStatement] = []
        for part in statement.body:
            if isinstance(part, cst.Import | cst.ImportFrom):
                pruned = self._import(part)
                if pruned is None:
                    continue
                part = pruned
            small.append(part)
        if not small:
            return None
        if len(small) != len(statement.body):
            small[-1] = small[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
        return statement.with_changes(body=small)

    def _import(self, node: cst.Import | cst.ImportFrom) -> cst.Import | cst.ImportFrom | None:
        if isinstance(node.names, cst.ImportStar):
            return node
        kept = [alias for alias in node.names if _local(alias) not in self.unused]
        if len(kept) == len(node.names):
            return node
        if not kept:
            return None
        if isinstance(node, cst.Import) or node.lpar is None:  # `import a,` does not parse
            kept[-1] = kept[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return node.with_changes(names=kept)


def prune_imports(text: str, names: set[str]) -> str:
    """`text` without the imports binding `names` that the module no longer reads
    (the functions a moved call named, imported for it alone)."""
    module = cst.parse_module(text)
    referenced = _Referenced()
    module.visit(referenced)
    if not names - referenced.names:
        return text
    return module.visit(_Pruner(names, referenced.names)).code


def dotted_name(node: cst.BaseExpression | None) -> str:
    if node is None:
        return ""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        head = dotted_name(node.value)
        return f"{head}.{node.attr.value}" if head else ""
    return ""


def _import_of(statement: cst.BaseStatement) -> cst.Import | cst.ImportFrom | None:
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        small = statement.body[0]
        if isinstance(small, cst.Import | cst.ImportFrom):
            return small
    return None


def imported_as(text: str, package: str, name: str) -> str | None:
    """The local name a top-level `from package import name [as local]` binds, if any."""
    for statement in cst.parse_module(text).body:
        found = _import_of(statement)
        if isinstance(found, cst.ImportFrom) and not found.relative:
            if dotted_name(found.module) != package or isinstance(found.names, cst.ImportStar):
                continue
            for alias in found.names:
                if dotted_name(alias.name) == name:
                    asname = alias.asname
                    if asname is not None and isinstance(asname.name, cst.Name):
                        return asname.name.value
                    return name
    return None


def free_local_name(text: str, name: str) -> str:
    """`name` when the module never uses the word, else a variant it does not use: the
    name is referenced inside routes, where a local of that name would hide it."""
    candidate, counter = name, 1
    while re.search(rf"\b{re.escape(candidate)}\b", text):
        counter += 1
        candidate = f"{name}_tasks" if counter == 2 else f"{name}_tasks_{counter}"
    return candidate


SortKey = tuple[int, str, tuple[int, str]]


def _sort_key(found: cst.Import | cst.ImportFrom) -> SortKey:
    """isort's order inside a section: `import x` lines first, then `from x import`, by
    module, then (lines of one module apart: aliased ones) by their first name."""
    if isinstance(found, cst.Import):
        return 0, dotted_name(found.names[0].name).lower(), (0, "")
    first = "" if isinstance(found.names, cst.ImportStar) else dotted_name(found.names[0].name)
    return 1, dotted_name(found.module).lower(), _member_key(first)


def _member_key(name: str) -> tuple[int, str]:
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name


def add_import(text: str, package: str, name: str, local: str, comment: str = "") -> str:
    """`text` importing `from package import name [as local]`, placed as isort would:
    into the module's own `from package import ...` when there is one (unless aliased
    or commented), else among the imports of the same top-level package, else before
    the relative imports, else after the last import at the top."""
    module = cst.parse_module(text)
    body: list[cst.SimpleStatementLine | cst.BaseCompoundStatement] = list(module.body)
    start = 1 if body and _is_docstring(body[0]) else 0
    block: list[int] = []
    for index in range(start, len(body)):
        if _import_of(body[index]) is None:
            break
        block.append(index)
    alias = cst.ImportAlias(
        name=cst.Name(name),
        asname=cst.AsName(name=cst.Name(local)) if local != name else None,
    )
    if local == name and not comment:
        for index in block:
            found = _import_of(body[index])
            if (
                isinstance(found, cst.ImportFrom)
                and not found.relative
                and dotted_name(found.module) == package
                and not isinstance(found.names, cst.ImportStar)
                and all(a.asname is None for a in found.names)
            ):
                body[index] = _with_member(body[index], found, name)
                return module.with_changes(body=body).code
    trailing = (
        cst.TrailingWhitespace(whitespace=cst.SimpleWhitespace("  "), comment=cst.Comment(comment))
        if comment
        else cst.TrailingWhitespace()
    )
    line = cst.SimpleStatementLine(
        body=[cst.ImportFrom(module=_dotted_node(package), names=[alias])],
        trailing_whitespace=trailing,
    )
    return _placed(module, line, (1, package.lower(), _member_key(name)), package)


def _placed(module: cst.Module, line: cst.SimpleStatementLine, ours: SortKey, package: str) -> str:
    """The module with the import `line` (sort key `ours`, of `package`) placed as isort
    would: among the imports of the same top-level package, else before the relative
    imports, else after the last import at the top."""
    body: list[cst.SimpleStatementLine | cst.BaseCompoundStatement] = list(module.body)
    start = 1 if body and _is_docstring(body[0]) else 0
    block: list[int] = []
    for index in range(start, len(body)):
        if _import_of(body[index]) is None:
            break
        block.append(index)
    top = package.split(".")[0]
    same_package: list[tuple[int, SortKey]] = []  # (index, its sort key)
    relative = []
    for index in block:
        found = _import_of(body[index])
        assert found is not None
        if isinstance(found, cst.ImportFrom) and found.relative:
            relative.append(index)
        elif _top(found) == top:
            same_package.append((index, _sort_key(found)))
    if same_package:
        later = [index for index, key in same_package if key > ours]
        if later:
            at = later[0]
            first = body[at]
            assert isinstance(first, cst.SimpleStatementLine)
            body[at] = first.with_changes(leading_lines=[])
            body.insert(at, line.with_changes(leading_lines=first.leading_lines))
        else:
            body.insert(same_package[-1][0] + 1, line)
    elif relative:
        at = relative[0]
        first = body[at]
        assert isinstance(first, cst.SimpleStatementLine)
        body[at] = first.with_changes(leading_lines=[cst.EmptyLine()])
        body.insert(at, line.with_changes(leading_lines=first.leading_lines))
    elif block:
        body.insert(block[-1] + 1, line.with_changes(leading_lines=[cst.EmptyLine()]))
    else:
        blank = [cst.EmptyLine()] if start else []
        body.insert(start, line.with_changes(leading_lines=blank))
        after = body[start + 1] if start + 1 < len(body) else None
        if after is not None and not after.leading_lines:
            body[start + 1] = after.with_changes(leading_lines=[cst.EmptyLine()])
    return module.with_changes(body=body).code


def _dotted_node(dotted: str) -> cst.Attribute | cst.Name:
    head, _, last = dotted.rpartition(".")
    return cst.Attribute(value=_dotted_node(head), attr=cst.Name(last)) if head else cst.Name(last)


def _top(found: cst.Import | cst.ImportFrom) -> str:
    if isinstance(found, cst.Import):
        return dotted_name(found.names[0].name).split(".")[0]
    return dotted_name(found.module).split(".")[0]


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    )


def _with_member(
    statement: cst.BaseStatement, found: cst.ImportFrom, name: str
) -> cst.SimpleStatementLine:
    """The statement importing one more name, the names in ruff's order."""
    assert isinstance(statement, cst.SimpleStatementLine)
    assert not isinstance(found.names, cst.ImportStar)
    names = sorted({dotted_name(a.name) for a in found.names} | {name}, key=_member_key)
    multiline = found.lpar is not None and "\n" in cst.Module(body=[]).code_for_node(found)
    separator: cst.Comma
    if multiline:
        indent = cst.ParenthesizedWhitespace(
            first_line=cst.TrailingWhitespace(),
            empty_lines=[],
            indent=True,
            last_line=cst.SimpleWhitespace("    "),
        )
        separator = cst.Comma(whitespace_after=indent)
    else:
        separator = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    aliases = [
        cst.ImportAlias(
            name=cst.Name(n), comma=separator if i < len(names) - 1 else cst.MaybeSentinel.DEFAULT
        )
        for i, n in enumerate(names)
    ]
    if multiline:
        closing = cst.Comma(
            whitespace_after=cst.ParenthesizedWhitespace(
                first_line=cst.TrailingWhitespace(), empty_lines=[], indent=True
            )
        )
        aliases[-1] = aliases[-1].with_changes(comma=closing)
    return statement.with_changes(body=[found.with_changes(names=aliases)])


def import_binding(text: str, local: str) -> str | None:
    """The top-level import that binds `local`, as one statement of its own
    (`from app.jobs import send_welcome`, `import app.jobs`), or None when no import
    does: what `remove-task` adds back when it puts a call to that name back."""
    for statement in cst.parse_module(text).body:
        found = _import_of(statement)
        if found is None or isinstance(found.names, cst.ImportStar):
            continue
        for alias in found.names:
            if _local(alias) != local:
                continue
            name = dotted_name(alias.name)
            asname = alias.asname
            suffix = (
                f" as {asname.name.value}"
                if asname is not None and isinstance(asname.name, cst.Name)
                else ""
            )
            if isinstance(found, cst.Import):
                return f"import {name}{suffix}"
            dots = "." * len(found.relative)
            return f"from {dots}{dotted_name(found.module)} import {name}{suffix}"
    return None


def add_statement(text: str, statement: str) -> str:
    """`text` with an import statement import_binding gave, placed as isort would: a
    relative one last, after a blank line when the imports above are not relative."""
    parsed = cst.parse_statement(statement + "\n")
    assert isinstance(parsed, cst.SimpleStatementLine)
    found = _import_of(parsed)
    assert found is not None and not isinstance(found.names, cst.ImportStar)
    module = cst.parse_module(text)
    if isinstance(found, cst.Import):
        package = dotted_name(found.names[0].name)
        return _placed(module, parsed, _sort_key(found), package)
    if not found.relative:
        alias = found.names[0]
        name = dotted_name(alias.name)
        return add_import(text, dotted_name(found.module), name, _local(alias))
    body = list(module.body)
    at = 1 if body and _is_docstring(body[0]) else 0
    while at < len(body) and _import_of(body[at]) is not None:
        at += 1
    above = _import_of(body[at - 1]) if at else None
    if not (isinstance(above, cst.ImportFrom) and above.relative):
        parsed = parsed.with_changes(leading_lines=[cst.EmptyLine()])
    body.insert(at, parsed)
    return module.with_changes(body=body).code
