"""Add fields to the user's Settings class, after its existing fields, in its own style."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import libcst as cst

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch._common import add_import, name_node


@dataclass(frozen=True)
class NewField:
    name: str  # already spelled in the project's style
    annotation: str
    default: str  # Python source


def _field_names(body: Sequence[cst.BaseStatement]) -> list[str]:
    names = []
    for statement in body:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
                    names.append(small.target.value)
    return names


def _is_field(statement: cst.BaseStatement) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and any(
        isinstance(small, cst.AnnAssign) for small in statement.body
    )


def _is_placeholder(statement: cst.BaseStatement) -> bool:
    """`pass` or `...` alone on a line: the body of an otherwise empty class."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    small = statement.body[0]
    return isinstance(small, cst.Pass) or (
        isinstance(small, cst.Expr) and isinstance(small.value, cst.Ellipsis)
    )


def _field_line(field: NewField) -> cst.SimpleStatementLine:
    """`name: annotation = default`: the name a checked node, the annotation and default
    each exactly one expression (the runner's own source text)."""
    return cst.SimpleStatementLine(
        body=[
            cst.AnnAssign(
                target=name_node(field.name),
                annotation=cst.Annotation(_expression(field.annotation, field.name)),
                value=_expression(field.default, field.name),
            )
        ]
    )


def _expression(source: str, field_name: str) -> cst.BaseExpression:
    try:
        return cst.parse_expression(source)
    except cst.ParserSyntaxError:
        raise PatchError(
            f"the settings field {field_name} has {source!r}, which is not one Python expression",
            "fix the runner's SettingsField (annotation and default are Python source)",
        ) from None


def add_settings_fields(
    source: str,
    class_name: str,
    fields: Sequence[NewField],
    header: str,
    first_party: frozenset[str] = frozenset(),
) -> str:
    """Return `source` with each missing field added to `class_name`; unchanged if none is."""
    module = cst.parse_module(source)
    # a name defined twice in one module: the last definition is the one in force
    defined = [s for s in module.body if isinstance(s, cst.ClassDef) and s.name.value == class_name]
    target = defined[-1] if defined else None
    if target is None or not isinstance(target.body, cst.IndentedBlock):
        raise PatchError(
            f"class {class_name} is not defined at the top level of the settings module",
            "pass --settings-module MODULE:CLASS naming the class to extend",
        )
    existing = set(_field_names(target.body.body))
    missing = [f for f in fields if f.name not in existing]
    if not missing:
        return source

    new_lines: list[cst.BaseStatement] = []
    for position, field in enumerate(missing):
        statement = _field_line(field)
        if position == 0:
            statement = statement.with_changes(
                leading_lines=[
                    cst.EmptyLine(indent=False),
                    cst.EmptyLine(comment=cst.Comment(f"# {header}")),
                ]
            )
        new_lines.append(statement)

    body = list(target.body.body)
    if len(body) == 1 and _is_placeholder(body[0]):
        first = new_lines[0]
        assert isinstance(first, cst.SimpleStatementLine)
        new_lines[0] = first.with_changes(
            leading_lines=[cst.EmptyLine(comment=cst.Comment(f"# {header}"))]
        )
        body = []
    field_positions = [i for i, statement in enumerate(body) if _is_field(statement)]
    insert_at = field_positions[-1] + 1 if field_positions else len(body)
    body[insert_at:insert_at] = new_lines

    patched_class = target.with_changes(body=target.body.with_changes(body=body))
    module = module.with_changes(body=[patched_class if s is target else s for s in module.body])
    if any("SecretStr" in f.annotation for f in missing):
        module = add_import(module, "pydantic", "SecretStr", first_party=first_party)
    return module.code
