"""The libcst side of outline.py and schedule.py: used only for modules that the running
interpreter's `ast` cannot read (syntax newer than it), so libcst is imported only then."""

from __future__ import annotations

import ast

import libcst as cst
from libcst.helpers import get_full_name_for_node
from libcst.metadata import MetadataWrapper, PositionProvider

from bgtasks_gen.patch.outline import SourceSyntaxError, Statement


def parse(source: str) -> cst.Module:
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise SourceSyntaxError(exc.raw_line, exc.raw_column, exc.message) from exc


def statements(source: str) -> list[Statement]:
    wrapper = MetadataWrapper(parse(source), unsafe_skip_copy=True)
    positions = wrapper.resolve(PositionProvider)
    found = []
    for node in wrapper.module.body:
        span = positions[node]  # starts at the first decorator, leading lines left out
        if isinstance(node, cst.FunctionDef | cst.ClassDef):
            decorators = []
            for decorator in node.decorators:
                target = decorator.decorator
                if isinstance(target, cst.Call):
                    target = target.func
                decorators.append(get_full_name_for_node(target) or "")
            kind = "class" if isinstance(node, cst.ClassDef) else "def"
            found.append(
                Statement(kind, node.name.value, tuple(decorators), span.start.line, span.end.line)
            )
        else:
            found.append(Statement("other", None, (), span.start.line, span.end.line))
    return found


class _Finder(cst.CSTVisitor):
    def __init__(self, attribute: str) -> None:
        self.attribute = attribute
        self.container: cst.Dict | cst.List | None = None

    def _take(self, value: cst.BaseExpression | None) -> None:
        if self.container is None and isinstance(value, cst.Dict | cst.List):
            self.container = value

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None and node.keyword.value == self.attribute:
            self._take(node.value)

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            if (get_full_name_for_node(target.target) or "").rpartition(".")[2] == self.attribute:
                self._take(node.value)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if (get_full_name_for_node(node.target) or "").rpartition(".")[2] == self.attribute:
            self._take(node.value)


def _names(element: cst.BaseElement | cst.BaseDictElement) -> frozenset[str]:
    if isinstance(element, cst.DictElement):
        key = element.key
        if isinstance(key, cst.SimpleString):
            return frozenset({str(ast.literal_eval(key.value))})
        return frozenset()
    if not isinstance(element, cst.Element) or not isinstance(element.value, cst.Call):
        return frozenset()
    call, names = element.value, set()
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == "name":
            if isinstance(arg.value, cst.SimpleString):
                names.add(str(ast.literal_eval(arg.value.value)).removeprefix("cron:"))
    if call.args and call.args[0].keyword is None:
        names.add((get_full_name_for_node(call.args[0].value) or "").rpartition(".")[2])
    return frozenset(names)


def literal(source: str, attribute: str):  # type: ignore[no-untyped-def]
    """The schedule.Literal for `attribute`'s dict or list, or None when there is none."""
    from bgtasks_gen.patch.schedule import Entry, Literal

    wrapper = MetadataWrapper(parse(source), unsafe_skip_copy=True)
    finder = _Finder(attribute)
    wrapper.visit(finder)
    container = finder.container
    if container is None:
        return None
    positions = wrapper.resolve(PositionProvider)
    entries = tuple(
        Entry(_names(e), positions[e].start.line, positions[e].end.line) for e in container.elements
    )
    last_end, has_comma = None, False
    if container.elements:
        last = container.elements[-1]
        end = positions[last.value].end
        last_end = (end.line, end.column)
        has_comma = not isinstance(last.comma, cst.MaybeSentinel)
    span = positions[container]
    return Literal(span.start.line, span.end.line, entries, last_end, has_comma)
