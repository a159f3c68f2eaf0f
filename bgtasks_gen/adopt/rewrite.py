"""The call-site edit of `bgtasks adopt`, with libcst, in place.

A route's `<tasks>.add_task(func, *args, **kwargs)` call, found by the scan at an exact
position, becomes a call queueing the adopted task: `await adopted.enqueue(adopted.<task>,
name=value, ...)` in an `async def`, `adopted.enqueue_blocking(...)` in a plain `def`.
Every argument keeps its source text; positional ones are passed by the parameter's name
(a queue message carries keywords). Nothing else of the module changes: its other calls,
its comments, the route's signature (the BackgroundTasks parameter stays, even unused:
FastAPI leaves it out of the OpenAPI document anyway). imports.py adds the import of the
adopted module and drops the ones only the moved calls used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from bgtasks_gen.errors import ConflictError

Position = tuple[int, int, int, int]  # line, column, end line, end column (libcst's)
STATEMENT, EXPRESSION = "statement", "expression"


@dataclass(frozen=True)
class QueuedCall:
    """One add_task call to replace: where, which task, how."""

    position: Position
    callable_source: str  # as the scan read it, to know the call is still the one seen
    task: str  # the task's name in the adopted module
    positional: tuple[str, ...]  # the parameter each positional argument goes to
    awaited: bool  # `await <module>.enqueue(...)`; else `<module>.enqueue_blocking(...)`


def _range_key(found: CodeRange) -> Position:
    return (found.start.line, found.start.column, found.end.line, found.end.column)


def _is_add_task(node: cst.Call) -> bool:
    return isinstance(node.func, cst.Attribute) and node.func.attr.value == "add_task"


class _Finder(cst.CSTVisitor):
    """Which of the wanted positions hold an add_task call, and whether it is a
    statement of its own (`tasks.add_task(...)` on its line) or part of an expression."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, wanted: set[Position]) -> None:
        super().__init__()
        self.wanted = wanted
        self.found: dict[Position, str] = {}
        self._statement_calls: set[cst.Call] = set()

    def visit_Expr(self, node: cst.Expr) -> None:
        if isinstance(node.value, cst.Call):
            self._statement_calls.add(node.value)

    def visit_Call(self, node: cst.Call) -> None:
        key = _range_key(self.get_metadata(PositionProvider, node))
        if key not in self.wanted or not _is_add_task(node):
            return
        self.found[key] = STATEMENT if node in self._statement_calls else EXPRESSION


def locate_calls(text: str, wanted: Sequence[Position]) -> dict[Position, str]:
    """STATEMENT or EXPRESSION for each wanted position holding an add_task call."""
    finder = _Finder(set(wanted))
    MetadataWrapper(cst.parse_module(text), unsafe_skip_copy=True).visit(finder)
    return finder.found


def _callable_index(args: Sequence[cst.Arg]) -> int | None:
    """The argument naming the function: the first positional one, or `func=`."""
    if args and args[0].keyword is None and not args[0].star:
        return 0
    for index, arg in enumerate(args):
        if arg.keyword is not None and arg.keyword.value == "func":
            return index
    return None


class _Replacer(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, calls: Mapping[Position, QueuedCall], module_name: str) -> None:
        super().__init__()
        self.calls = calls
        self.module_name = module_name
        self.replaced: set[Position] = set()
        self.written: dict[Position, tuple[str, str]] = {}  # -> (the call, its enqueue)

    def leave_Expr(self, original_node: cst.Expr, updated_node: cst.Expr) -> cst.Expr:
        value = original_node.value
        if not isinstance(value, cst.Call) or not _is_add_task(value):
            return updated_node
        key = _range_key(self.get_metadata(PositionProvider, value))
        queued = self.calls.get(key)
        if queued is None or not isinstance(updated_node.value, cst.Call):
            return updated_node
        index = _callable_index(value.args)
        written = (
            cst.Module(body=[]).code_for_node(value.args[index].value) if index is not None else ""
        )
        if written != queued.callable_source:
            return updated_node  # not the call the scan saw: reported by rewrite_calls
        self.replaced.add(key)
        new_call = _queued_call(updated_node.value, queued, self.module_name)
        expression: cst.BaseExpression = (
            cst.Await(expression=new_call) if queued.awaited else new_call
        )
        code = cst.Module(body=[]).code_for_node
        self.written[key] = (code(value), code(expression))
        return updated_node.with_changes(value=expression)


def _queued_call(call: cst.Call, queued: QueuedCall, module_name: str) -> cst.Call:
    args = list(call.args)
    index = _callable_index(args)
    assert index is not None  # checked by the caller
    first = args.pop(index).with_changes(
        value=cst.Attribute(value=cst.Name(module_name), attr=cst.Name(queued.task)),
        keyword=None,
        equal=cst.MaybeSentinel.DEFAULT,
    )
    names = iter(queued.positional)
    rest = []
    for arg in args:
        if arg.keyword is None and not arg.star:
            arg = arg.with_changes(
                keyword=cst.Name(next(names)),
                equal=cst.AssignEqual(
                    whitespace_before=cst.SimpleWhitespace(""),
                    whitespace_after=cst.SimpleWhitespace(""),
                ),
            )
        rest.append(arg)
    ordered = [first, *rest]
    if index:  # `func=` came after other arguments: every one but the last needs a comma
        ordered = [
            arg.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            if position < len(ordered) - 1 and isinstance(arg.comma, cst.MaybeSentinel)
            else arg
            for position, arg in enumerate(ordered)
        ]
    method = "enqueue" if queued.awaited else "enqueue_blocking"
    return call.with_changes(
        func=cst.Attribute(value=cst.Name(module_name), attr=cst.Name(method)), args=ordered
    )


def rewrite_calls(
    text: str,
    calls: Sequence[QueuedCall],
    module_name: str,
    rel: str,
    written: dict[Position, tuple[str, str]] | None = None,
) -> str:
    """`text` with each call replaced; a call no longer where the scan found it (the file
    changed in between) is a conflict, and nothing is written. `written`, when given,
    gets each call's source and the source of the enqueue that replaced it (what
    `remove-task` needs to put the call back)."""
    by_position = {call.position: call for call in calls}
    replacer = _Replacer(by_position, module_name)
    module = MetadataWrapper(cst.parse_module(text), unsafe_skip_copy=True).visit(replacer)
    missing = [position for position in by_position if position not in replacer.replaced]
    if missing:
        line = missing[0][0]
        raise ConflictError(
            f"{rel}:{line}: the add_task call found there changed while adopt read the project",
            "nothing was written; run `bgtasks adopt` again",
        )
    if written is not None:
        written.update(replacer.written)
    return module.code
