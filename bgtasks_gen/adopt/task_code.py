"""The code of one adopted task: the worker-side body that rebuilds the arguments a route
passed and calls the project's function with them.

A task receives its arguments as JSON, by name. Most annotations movable.py accepts read
back from JSON unchanged (str, int, list[...], Literal[...], ...); a pydantic model
arrives as its JSON form and a tuple as a list, so a parameter whose annotation holds
either is rebuilt before the call: `Model.model_validate(...)` for a model, pydantic's
TypeAdapter for any other shape (`tuple[int, str]`, `list[Model] | None`). The
annotation is written again from the names the scan resolved (TypeRef), never copied
as text: the text names things as the function's own module imports them.

Nothing here is runner-specific but `RunnerCall`: how the wrapper runs the function.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bgtasks_gen.adopt.movable import (
    ANNOTATED,
    DICTS,
    LISTS,
    LITERAL,
    OPTIONAL,
    TUPLES,
    UNIONS,
)
from bgtasks_gen.adopt.scan import Target, TargetParam, TypeRef

# import sections, in isort's order
STDLIB, THIRD_PARTY, FIRST_PARTY = 0, 1, 2
# the wrapper's own local names: a project name imported under one of them is aliased
BODY_NAMES = frozenset(
    {"arguments", "positional", "key", "ctx", "asyncio", "Literal", "TypeAdapter"}
)
TASK_PREFIX = "adopted_"
QUEUE_PREFIX = "adopted."  # the task's name on the queue: "adopted.<module>.<function>"


class NotWritable(ValueError):
    """An annotation this module cannot write back as code (the scan accepted it, so
    this is a mismatch between the two modules, reported as a call left in place)."""


@dataclass(frozen=True)
class Import:
    """One imported name, and the isort section it goes in."""

    section: int
    module: str
    name: str = ""  # "" for `import module`
    alias: str = ""


def import_lines(imports: Iterable[Import]) -> list[str]:
    """The import block: one line per module (names combined, aliased ones apart, as
    ruff's isort writes them), a blank line between sections."""
    lines: list[str] = []
    section = -1
    plain = sorted(set(imports), key=lambda i: (i.section, bool(i.name), i.module))
    by_module: dict[tuple[int, str], list[Import]] = {}
    for item in plain:
        by_module.setdefault((item.section, item.module), []).append(item)
    for (where, module), items in by_module.items():
        if where != section and lines:
            lines.append("")
        section = where
        straight = [i for i in items if not i.name]
        names = sorted((i for i in items if i.name and not i.alias), key=_member_order)
        aliased = sorted((i for i in items if i.alias), key=_member_order)
        lines += [f"import {module}" for _ in straight[:1]]
        if names:
            lines.append(f"from {module} import {', '.join(i.name for i in names)}")
        lines += [f"from {module} import {i.name} as {i.alias}" for i in aliased]
    return lines


def _member_order(item: Import) -> tuple[int, str]:
    """ruff's order-by-type: CONSTANTS, then Classes, then the rest."""
    name = item.name
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name


@dataclass
class _Names:
    """The names a task body binds, each project object under one of its own."""

    taken: set[str]
    header: frozenset[str] = frozenset()  # the module's own imports, used as they are
    imports: list[Import] = field(default_factory=list)
    bound: dict[tuple[str, str], str] = field(default_factory=dict)  # (module, name) -> local

    def project(self, module: str, name: str) -> str:
        """The local name of `module.name`, imported from the project's own code."""
        key = (module, name)
        if key not in self.bound:
            local, counter = name, 1
            while local in self.taken:
                counter += 1
                local = f"{name}_{counter}"
            alias = local if local != name else ""
            self.imports.append(Import(FIRST_PARTY, module, name, alias))
            self.bound[key] = local
            self.taken.add(local)
        return self.bound[key]

    def library(self, section: int, module: str, name: str = "") -> str:
        """A name of the standard library or a package (`name` "": `import module`)."""
        if (name or module) in self.header:
            return name or module
        item = Import(section, module, name)
        if item not in self.imports:
            self.imports.append(item)
        return name


def needs_rebuild(ref: TypeRef) -> bool:
    """Whether JSON alone does not give the value back: a model or a tuple inside."""
    if ref.project == "model" or ref.name in TUPLES:
        return True
    if ref.name == ANNOTATED:
        return bool(ref.args) and needs_rebuild(ref.args[0])
    if ref.name == LITERAL:
        return False
    return any(needs_rebuild(arg) for arg in ref.args)


def _annotation(ref: TypeRef, names: _Names) -> str:
    """`ref` as code the task body evaluates, with the imports it needs."""
    name, args = ref.name, ref.args
    if ref.project == "model":
        module, _, cls = name.rpartition(".")
        return names.project(module, cls)
    if name == "None":
        return "None"
    if name == ANNOTATED:  # the metadata only constrains; the type is what rebuilds
        return _annotation(args[0], names)
    if name == OPTIONAL and len(args) == 1:
        return f"{_annotation(args[0], names)} | None"
    if name in UNIONS:
        return " | ".join(_annotation(arg, names) for arg in args)
    if name == LITERAL:
        literal = names.library(STDLIB, "typing", "Literal")
        return f"{literal}[{', '.join(_literal_value(arg) for arg in args)}]"
    containers = {**dict.fromkeys(LISTS, "list"), **dict.fromkeys(DICTS, "dict")}
    containers |= dict.fromkeys(TUPLES, "tuple")
    if name in containers:
        inner = ", ".join("..." if a.name == "..." else _annotation(a, names) for a in args)
        return f"{containers[name]}[{inner}]" if args else containers[name]
    if name.startswith("builtins.") and not args:
        return name.removeprefix("builtins.")
    raise NotWritable(ref.text)


def _literal_value(ref: TypeRef) -> str:
    if ref.name == "None":
        return "None"
    if ref.name != "<value>":
        raise NotWritable(ref.text)
    return ref.text


def _bare_model(ref: TypeRef) -> TypeRef | None:
    """The model an annotation is, when it is exactly one (Annotated around it too)."""
    if ref.project == "model":
        return ref
    if ref.name == ANNOTATED and ref.args:
        return _bare_model(ref.args[0])
    return None


def _rebuilt(ref: TypeRef, value: str, names: _Names, pydantic_v1: bool) -> str:
    model = _bare_model(ref)
    if model is not None:
        module, _, cls = model.name.rpartition(".")
        local = names.project(module, cls)
        return f"{local}.{'parse_obj' if pydantic_v1 else 'model_validate'}({value})"
    annotation = _annotation(ref, names)
    if pydantic_v1:
        parse = names.library(THIRD_PARTY, "pydantic", "parse_obj_as")
        return f"{parse}({annotation}, {value})"
    adapter = names.library(THIRD_PARTY, "pydantic", "TypeAdapter")
    return f"{adapter}({annotation}).validate_python({value})"


@dataclass(frozen=True)
class RunnerCall:
    """How a runner's task runs the project's function.

    `async_wrapper`: every task is an `async def` (taskiq, and arq, whose worker refuses
    anything but a coroutine function): it awaits an async function and runs a plain
    one in a thread (asyncio.to_thread), so the worker's event loop, its other jobs
    and the task's time limit go on meanwhile. Otherwise every task is a plain def
    (celery, whose worker has no event loop) that runs an async function with
    asyncio.run."""

    async_wrapper: bool


def awaited_in_thread(function: str, *passed: str) -> str:
    """An async task's call of a plain function: in a thread, off the worker's event loop
    (`asyncio` imported by the module). `migrate` onto arq says it the same way."""
    return f"await asyncio.to_thread({', '.join([function, *passed])})"


@dataclass(frozen=True)
class TaskCode:
    """What the task snippet renders: its names and its body."""

    name: str  # the wrapper function in the adopted module
    queue_name: str  # the task's name on the queue, stable across renames of the module
    source: str  # the project's function, dotted
    is_async: bool  # the wrapper is an `async def`
    body: tuple[str, ...]  # lines, indented relative to the body ("" = a blank line)


def task_name(target: Target, number: int = 1) -> str:
    """`adopted_<module>_<function>`; a number after it from the second candidate on."""
    base = TASK_PREFIX + re.sub(r"\W", "_", f"{target.module}_{target.name}")
    return base if number == 1 else f"{base}_{number}"


def queue_name(target: Target) -> str:
    return QUEUE_PREFIX + target.qualified


def task_code(
    target: Target,
    name: str,
    runner: RunnerCall,
    *,
    header_names: Iterable[str] = (),
    pydantic_v1: bool = False,
) -> TaskCode:
    """The task that runs `target` with the arguments a route sent, rebuilt.

    `header_names`: names the adopted module binds at its top level; the body's imports
    never shadow them. Raises NotWritable for an annotation it cannot write."""
    names = _Names(set(header_names) | BODY_NAMES, frozenset(header_names))
    function = names.project(target.module, target.name)
    rebuild: list[str] = []
    for param in target.params:
        if param.type is None or not needs_rebuild(param.type):
            continue
        value = f'arguments["{param.name}"]'
        line = f"{value} = {_rebuilt(param.type, value, names, pydantic_v1)}"
        if param.has_default:
            rebuild += [f'if "{param.name}" in arguments:', f"    {line}"]
        else:
            rebuild.append(line)
    passed = _passed(target.params)
    call = f"{function}({passed})"
    if runner.async_wrapper and target.is_async:
        call = f"await {call}"
    elif runner.async_wrapper:
        names.library(STDLIB, "asyncio")
        call = awaited_in_thread(function, passed)
    elif target.is_async:
        names.library(STDLIB, "asyncio")
        call = f"asyncio.run({call})"
    positional = [p.name for p in target.params if p.kind == "positional-only"]
    body = import_lines(names.imports)
    body.append("")
    body += rebuild
    if positional:  # passed by position, as the function takes them
        listed = ", ".join(f'"{p}"' for p in positional) + ("," if len(positional) == 1 else "")
        body.append(f"positional = [arguments.pop(key) for key in ({listed}) if key in arguments]")
    body.append(call)
    return TaskCode(name, queue_name(target), target.qualified, runner.async_wrapper, tuple(body))


def _passed(params: tuple[TargetParam, ...]) -> str:
    """The arguments of the call: all by name, positional-only ones popped before."""
    if any(p.kind == "positional-only" for p in params):
        return "*positional, **arguments"
    return "**arguments"
