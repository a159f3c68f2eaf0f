"""The worker's hook, so that the worker imports the adopted module: the module added to
the Celery app's `include=[...]` (celery imports those at worker start), imported by
the tasks module the taskiq worker command names (imports.add_import, with HOOK_COMMENT),
or, for arq, whose worker runs only the functions its WorkerSettings lists, the adopted
module's FUNCTIONS spread into that list (`*adopted.FUNCTIONS`, the last element).

Each edit has its inverse, for `remove-task` of the last adopted task: adding then
removing gives back the same bytes.
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
        found = _include_list(original_node, updated_node)
        if found is None:
            return updated_node
        index, arg, listed = found
        strings = [e.value for e in listed.elements if isinstance(e.value, cst.SimpleString)]
        if any(s.evaluated_value == self.dotted for s in strings):
            self.state = "present"
            return updated_node
        quote = strings[-1].quote if strings else '"'
        new = cst.Element(value=cst.SimpleString(f"{quote}{self.dotted}{quote}"))
        args = list(updated_node.args)
        args[index] = arg.with_changes(value=_appended(listed, new))
        self.state = "added"
        return updated_node.with_changes(args=args)


def _appended(listed: cst.List, new: cst.BaseElement) -> cst.List:
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


def _without(listed: cst.List, index: int) -> cst.List:
    """The list without its element at `index`: _appended's inverse for the last one
    (the element before takes its comma), a plain deletion for any other."""
    elements = list(listed.elements)
    removed = elements.pop(index)
    if index == len(elements) and elements:
        elements[-1] = elements[-1].with_changes(comma=removed.comma)
    return listed.with_changes(elements=elements)


def _is_string(element: cst.BaseElement, value: str) -> bool:
    return isinstance(element.value, cst.SimpleString) and element.value.evaluated_value == value


class _Exclude(cst.CSTTransformer):
    """Removes a module from the `include=[...]` list of a `Celery(...)` call."""

    def __init__(self, dotted: str) -> None:
        super().__init__()
        self.dotted = dotted
        self.removed = False

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        found = _include_list(original_node, updated_node)
        if found is None:
            return updated_node
        index, arg, listed = found
        for position, element in enumerate(listed.elements):
            if _is_string(element, self.dotted):
                args = list(updated_node.args)
                args[index] = arg.with_changes(value=_without(listed, position))
                self.removed = True
                return updated_node.with_changes(args=args)
        return updated_node


def _include_list(original: cst.Call, updated: cst.Call) -> tuple[int, cst.Arg, cst.List] | None:
    """The `include=[...]` argument of a `Celery(...)` call (its position, the argument,
    its list), None when the call is another's or the first `include` is no list literal."""
    if dotted_name(original.func).split(".")[-1] != "Celery":
        return None
    for index, arg in enumerate(updated.args):
        if arg.keyword is not None and arg.keyword.value == "include":
            return (index, arg, arg.value) if isinstance(arg.value, cst.List) else None
    return None


def exclude_module(text: str, dotted: str) -> tuple[str, bool]:
    """`text` without `dotted` in its Celery app's `include=[...]`; and whether it was there."""
    exclude = _Exclude(dotted)
    module = cst.parse_module(text).visit(exclude)
    return module.code, exclude.removed


# arq: the list of WorkerSettings that names the functions the worker runs, and the
# adopted module's own list spread into it
FUNCTIONS_LIST = "functions"
SPREAD_LIST = "FUNCTIONS"


def _is_spread(element: cst.BaseElement, local: str) -> bool:
    return (
        isinstance(element, cst.StarredElement)
        and dotted_name(element.value) == f"{local}.{SPREAD_LIST}"
    )


class _Spread(cst.CSTTransformer):
    """Adds `*<local>.FUNCTIONS` as the last element of a class's `functions = [...]`
    (arq's WorkerSettings), or removes it."""

    def __init__(self, local: str, *, remove: bool) -> None:
        super().__init__()
        self.local = local
        self.remove = remove
        self.state = "missing"  # "added", "removed", "present", "absent", or "missing"
        self._classes = 0

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self._classes += 1

    def leave_ClassDef(
        self, original_node: cst.ClassDef, updated_node: cst.ClassDef
    ) -> cst.ClassDef:
        self._classes -= 1
        return updated_node

    def leave_AnnAssign(
        self, original_node: cst.AnnAssign, updated_node: cst.AnnAssign
    ) -> cst.AnnAssign:
        if dotted_name(original_node.target) != FUNCTIONS_LIST:
            return updated_node
        value = updated_node.value
        return updated_node.with_changes(value=self._edited(value)) if value else updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        targets = [dotted_name(t.target) for t in original_node.targets]
        if targets != [FUNCTIONS_LIST]:
            return updated_node
        return updated_node.with_changes(value=self._edited(updated_node.value))

    def _edited(self, value: cst.BaseExpression) -> cst.BaseExpression:
        if not self._classes or not isinstance(value, cst.List) or self.state != "missing":
            return value
        found = [i for i, e in enumerate(value.elements) if _is_spread(e, self.local)]
        if self.remove:
            self.state = "removed" if found else "absent"
            return _without(value, found[0]) if found else value
        if found:
            self.state = "present"
            return value
        self.state = "added"
        spread = cst.StarredElement(
            value=cst.Attribute(value=cst.Name(self.local), attr=cst.Name(SPREAD_LIST))
        )
        return _appended(value, spread)


def spread_functions(text: str, local: str) -> tuple[str, str]:
    """`text` with `*<local>.FUNCTIONS` ending its WorkerSettings' `functions` list, and
    what happened: "added", "present", or "missing" (no such list in a class)."""
    spread = _Spread(local, remove=False)
    module = cst.parse_module(text).visit(spread)
    return module.code, spread.state


def unspread_functions(text: str, local: str) -> tuple[str, bool]:
    """spread_functions' inverse; and whether the element was there."""
    spread = _Spread(local, remove=True)
    module = cst.parse_module(text).visit(spread)
    return module.code, spread.state == "removed"


def include_module(text: str, dotted: str) -> tuple[str, str]:
    """`text` with `dotted` in its Celery app's `include=[...]`, and what happened:
    "added", "present", or "missing" (no Celery(...) call with a literal include list)."""
    include = _Include(dotted)
    module = cst.parse_module(text).visit(include)
    return module.code, include.state
