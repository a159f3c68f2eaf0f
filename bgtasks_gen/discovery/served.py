"""What serves the app: the commands a project runs it with, read from its own files.

Dockerfile `CMD`/`ENTRYPOINT`, compose `command:`, Procfile, Makefile, justfile and shell
scripts name the app as `uvicorn pkg.main:app`, `gunicorn ... pkg.main:create_app()`,
`fastapi run pkg/main.py`; Python code may call `uvicorn.run("pkg.main:app")`. Each is
evidence for one app, the strongest a project gives short of saying it in configuration.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bgtasks_gen.modules import SKIPPED_DIRS, ModuleIndex, ModuleInfo

SERVERS = re.compile(r"\b(uvicorn|gunicorn|hypercorn|granian|daphne)\b([^\n]*)")
FASTAPI_CLI = re.compile(r"\bfastapi\s+(?:run|dev)\b([^\n]*)")
TOKEN = re.compile(r"[^\s\"',\[\]]+")
TARGET = re.compile(r"^([A-Za-z_][\w.]*):([A-Za-z_]\w*)(\(\))?$")
MAX_DEPTH = 3  # run files live near the top of a repository


@dataclass(frozen=True)
class ServedTarget:
    module: str  # dotted
    attr: str | None  # None: the server picks the app itself (`fastapi run path`)
    factory: bool
    source: str  # "Dockerfile CMD", "Procfile", "uvicorn.run in pkg/cli.py" ...


def _run_files(root: Path) -> list[tuple[Path, str]]:
    """(path, kind) of every file that may hold a command serving the app."""
    found = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = (
            []
            if depth >= MAX_DEPTH
            else [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(".")]
        )
        for name in files:
            lower = name.lower()
            kind = None
            if lower.startswith(("dockerfile", "containerfile")) or lower.endswith(".dockerfile"):
                kind = "Dockerfile"
            elif re.match(r"^(docker-)?compose.*\.ya?ml$", lower):
                kind = "compose"
            elif lower.startswith("procfile"):
                kind = "Procfile"
            elif lower in ("makefile", "justfile") or lower.endswith(".mk"):
                kind = "Makefile" if lower != "justfile" else "justfile"
            elif lower.endswith(".sh"):
                kind = "script"
            if kind:
                found.append((Path(folder) / name, kind))
    return found


def _targets_in_command(text: str) -> list[tuple[str, str | None, bool, bool]]:
    """(module or path, attr, factory, is_path) of every app a command line names."""
    found: list[tuple[str, str | None, bool, bool]] = []
    for match in SERVERS.finditer(text):
        tokens = TOKEN.findall(match.group(2))
        factory = "--factory" in tokens
        for token in tokens:
            named = TARGET.match(token)
            if named:
                found.append(
                    (named.group(1), named.group(2), factory or bool(named.group(3)), False)
                )
                break
    for match in FASTAPI_CLI.finditer(text):
        tokens = [t for t in TOKEN.findall(match.group(1)) if not t.startswith("-")]
        if tokens:
            found.append((tokens[0], None, False, True))
    return found


def _module_for_path(index: ModuleIndex, root: Path, given: str) -> str | None:
    """`fastapi run app/main.py` (or `app`): the module that path is, if it is the project's."""
    candidate = given.removeprefix("./").rstrip("/")
    for path in index.python_files():
        rel = path.relative_to(root).as_posix()
        if rel == candidate or rel == f"{candidate}/__init__.py" or rel.endswith(f"/{candidate}"):
            return index.module_name(path)
    return None


def served_targets(root: Path, index: ModuleIndex) -> list[ServedTarget]:
    targets: list[ServedTarget] = []
    for path, kind in _run_files(root):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        rel = path.relative_to(root).as_posix()
        for line in _command_lines(text, kind):
            for module, attr, factory, is_path in _targets_in_command(line):
                if is_path:
                    found = _module_for_path(index, root, module)
                    if found is None:
                        continue
                    module = found
                where = f"{kind} {_instruction(line, kind)}".strip()
                targets.append(ServedTarget(module, attr, factory, f"served by {where} ({rel})"))
    for path in index.grep(re.compile(r"\buvicorn\b"), "uvicorn"):
        info = index.load(path)
        for call in info.calls:
            if info.resolve(call.callee) != "uvicorn.run" or call.first_arg is None:
                continue
            rel = path.relative_to(root).as_posix()
            how = f"served by uvicorn.run in {rel}"
            named = TARGET.match(call.first_arg)
            defaults = (
                _parameter_defaults(index, info, call.function)
                if call.function and not named
                else {}
            )
            if not named and call.first_arg in defaults:
                # a console script: `def serve(target: str = typer.Option("pkg.app:app"))`
                named = TARGET.match(defaults[call.first_arg])
                how += f" (the default of {call.function}'s {call.first_arg})"
                if not named:
                    continue
            if named:
                factory = "factory" in call.keywords
                targets.append(ServedTarget(named.group(1), named.group(2), factory, how))
            elif call.first_arg.isidentifier():
                # uvicorn.run(app): the object this module has under that name
                target = info.resolve(call.first_arg)
                module, _, attr = target.rpartition(".")
                if module:
                    targets.append(ServedTarget(module, attr, False, how))
    return targets


def _command_lines(text: str, kind: str) -> list[str]:
    """The lines that run something; shell-style continuations joined."""
    joined = re.sub(r"\\\r?\n", " ", text)
    lines = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if kind == "Dockerfile" and not re.match(r"(?i)^(CMD|ENTRYPOINT|RUN)\b", stripped):
            continue
        lines.append(stripped)
    return lines


def _instruction(line: str, kind: str) -> str:
    if kind == "Dockerfile":
        return line.split()[0].upper()
    if kind == "compose":
        return "command"
    return ""


def _string(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _parameter_defaults(index: ModuleIndex, info: ModuleInfo, function: str) -> dict[str, str]:
    """A top-level function's parameters whose default is a string: given plainly
    (`target="pkg.app:app"`), through typer (`typer.Option("pkg.app:app")`) or a click
    decorator (`@click.option("--target", default="pkg.app:app")`)."""
    tree = index.tree(info)
    node = next(
        (
            n
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function
        ),
        None,
    )
    if node is None:
        return {}
    found: dict[str, str] = {}
    arguments = node.args
    positional = arguments.posonlyargs + arguments.args
    pairs = list(
        zip(
            positional[len(positional) - len(arguments.defaults) :], arguments.defaults, strict=True
        )
    )
    pairs += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True) if d]
    for argument, default in pairs:
        value = _string(default)
        if value is None and isinstance(default, ast.Call):
            keyword = next((k.value for k in default.keywords if k.arg == "default"), None)
            value = _string(default.args[0] if default.args else keyword)
        if value is not None:
            found[argument.arg] = value
    for decorator in node.decorator_list:
        if not isinstance(decorator, ast.Call):
            continue
        given = next((_string(k.value) for k in decorator.keywords if k.arg == "default"), None)
        flags = [_string(a) for a in decorator.args]
        names = [f.lstrip("-").replace("-", "_") for f in flags if f]
        if given is not None and names:
            # click names the parameter after its last flag written without dashes, or the
            # longest one
            plain = [f for f in flags if f and not f.startswith("-")]
            name = plain[-1] if plain else max(names, key=len)
            found.setdefault(name, given)
    return found
