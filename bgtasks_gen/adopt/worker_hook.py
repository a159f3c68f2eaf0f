"""The worker's hook, so that the worker imports the adopted module: the module added to
the Celery app's `include=[...]` (celery imports those at worker start), or imported by
the tasks module the taskiq worker command names (imports.add_import, with HOOK_COMMENT).
"""

from __future__ import annotations

import libcst as cst

from bgtasks_gen.adopt.imports import dotted_name

# the import is for its side effect: the worker registers the tasks the module defines
HOOK_COMMENT = "# noqa: F401 - registers the adopted tasks"


class _Include(cst.CSTTransformer):
    """Adds a module to the `include=[...]` list of a `Celery(...)` call."""

    def __init__(self, dotted: str) -> None:
        super().__init__()
        self.dotted = dotted
        self.state = "missing"  # "added", "present", or "missing" (no such list)

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if dotted_name(original_node.func).split(".")[-1] != "Celery":
            return updated_node
        args = list(updated_node.args)
        for index, arg in enumerate(args):
            if arg.keyword is None or arg.keyword.value != "include":
                continue
            if not isinstance(arg.value, cst.List):
                return updated_node
            listed = arg.value
            strings = [e.value for e in listed.elements if isinstance(e.value, cst.SimpleString)]
            if any(s.evaluated_value == self.dotted for s in strings):
                self.state = "present"
                return updated_node
            args[index] = arg.with_changes(value=_appended(listed, self.dotted, strings))
            self.state = "added"
            return updated_node.with_changes(args=args)
        return updated_node


def _appended(listed: cst.List, dotted: str, strings: list[cst.SimpleString]) -> cst.List:
    quote = strings[-1].quote if strings else '"'
    new = cst.Element(value=cst.SimpleString(f"{quote}{dotted}{quote}"))
    elements = list(listed.elements)
    if not elements:
        return listed.with_changes(elements=[new])
    last = elements[-1]
    if isinstance(last.comma, cst.Comma):  # a trailing comma: one element per line
        elements[-1] = last.with_changes(
            comma=cst.Comma(whitespace_after=listed.lbracket.whitespace_after)
        )
        new = new.with_changes(comma=last.comma)
    else:
        elements[-1] = last.with_changes(
            comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        )
    return listed.with_changes(elements=[*elements, new])


def include_module(text: str, dotted: str) -> tuple[str, str]:
    """`text` with `dotted` in its Celery app's `include=[...]`, and what happened:
    "added", "present", or "missing" (no Celery(...) call with a literal include list)."""
    include = _Include(dotted)
    module = cst.parse_module(text).visit(include)
    return module.code, include.state
