"""A static index of the user's Python modules, read with libcst and never imported.

Each module is parsed at most once, lazily, and summarised into the few facts discovery
needs: imports, classes (bases and annotated fields), module-level calls, functions that
build or return objects, and `include_router` calls.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst
from libcst.helpers import get_full_name_for_node
from libcst.metadata import MetadataWrapper, PositionProvider

from bgtasks_gen.errors import BadInput
from bgtasks_gen.patch.outline import dotted_name, parse_ast

# folders that never hold the project's own application code
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".venv",
        ".venvs",
        "venv",
        "env",
        "node_modules",
        "__pycache__",
        "build",
        "dist",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "site-packages",
        ".bgtasks",
        "tests",
        "test",
        "docs",
        "migrations",
        "alembic",
    }
)


@dataclass
class ClassInfo:
    name: str
    bases: list[str]  # resolved dotted names ("pydantic_settings.BaseSettings", "pkg.mod.Cls")
    fields: list[str]  # annotated names in the class body, in order
    line: int


@dataclass
class CallSite:
    """`target = callee(...)`, or `return callee(...)` (target None), in a module or function."""

    target: str | None
    callee: str  # resolved dotted name
    keywords: tuple[str, ...]
    function: str | None  # enclosing top-level function, None at module level
    line: int


@dataclass
class ModuleInfo:
    name: str  # dotted
    path: Path
    source: str
    imports: dict[str, str] = field(default_factory=dict)  # local name -> dotted target
    classes: dict[str, ClassInfo] = field(default_factory=dict)
    calls: list[CallSite] = field(default_factory=list)
    functions: set[str] = field(default_factory=set)
    # (scope function or None, receiver name, first argument as written)
    router_includes: list[tuple[str | None, str, str]] = field(default_factory=list)
    uses_on_event: bool = False

    def resolve(self, dotted: str) -> str:
        """Turn a name as written in this module into a fully qualified dotted name."""
        head, _, rest = dotted.partition(".")
        if head in self.imports:
            target = self.imports[head]
            return f"{target}.{rest}" if rest else target
        if head in self.classes or head in self.functions:
            return f"{self.name}.{dotted}"
        return dotted


def read_source(path: Path) -> str:
    """Read a user's file as text, keeping its newlines exactly (CRLF stays CRLF)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{path} is not UTF-8 (byte {exc.start} cannot be decoded)",
            "bgtasks only edits UTF-8 source files; convert the file and run again",
        ) from exc
    return text


def parse_source(source: str, path: Path) -> cst.Module:
    """Parse with libcst: it accepts syntax newer than the running interpreter's."""
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise BadInput(
            f"{path}:{exc.raw_line}:{exc.raw_column}: syntax error, cannot be parsed",
            "fix the syntax error first; bgtasks writes nothing while a file it reads is broken",
        ) from exc


def _summarise_ast(info: ModuleInfo, tree: ast.Module) -> None:
    """What _Summariser finds, from the standard library's ast: ten times faster than a
    libcst parse with positions, which matters for 5,000-line settings modules."""
    is_init = info.path.name == "__init__.py"
    package = info.name if is_init else info.name.rpartition(".")[0]
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    info.imports[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    info.imports.setdefault(head, head)
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                parent = package
                for _ in range(statement.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            for alias in statement.names:
                if alias.name != "*":
                    local = alias.asname or alias.name
                    info.imports[local] = f"{base}.{alias.name}" if base else alias.name

    def calls_in(body: list[ast.stmt], function: str | None) -> None:
        for statement in body:
            value: ast.expr | None = None
            target: str | None = None
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                if isinstance(statement.targets[0], ast.Name):
                    target, value = statement.targets[0].id, statement.value
            elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                target, value = statement.target.id, statement.value
            elif isinstance(statement, ast.Return):
                value = statement.value
            if isinstance(value, ast.Call) and dotted_name(value.func):
                keywords = tuple(k.arg for k in value.keywords if k.arg)
                info.calls.append(
                    CallSite(target, dotted_name(value.func), keywords, function, statement.lineno)
                )

    def includes_in(node: ast.AST, function: str | None) -> None:
        for call in ast.walk(node):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            receiver = call.func.value
            if call.func.attr == "include_router" and call.args and isinstance(receiver, ast.Name):
                info.router_includes.append((function, receiver.id, dotted_name(call.args[0])))
            elif call.func.attr == "on_event":
                info.uses_on_event = True

    for statement in tree.body:
        if isinstance(statement, ast.ClassDef):
            fields = [
                s.target.id
                for s in statement.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            ]
            bases = [dotted_name(b) for b in statement.bases]
            info.classes[statement.name] = ClassInfo(
                statement.name, bases, fields, statement.lineno
            )
            includes_in(statement, None)
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            info.functions.add(statement.name)
            # assignments and returns anywhere in the function, as the libcst summariser
            nested = [n for n in ast.walk(statement) if isinstance(n, ast.stmt)]
            calls_in(nested[1:], statement.name)
            includes_in(statement, statement.name)
        else:
            calls_in([n for n in ast.walk(statement) if isinstance(n, ast.stmt)], None)
            includes_in(statement, None)


class _Summariser(cst.CSTVisitor):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, info: ModuleInfo) -> None:
        self.info = info
        self.function_depth = 0
        self.current_function: str | None = None
        self.class_depth = 0

    # imports ---------------------------------------------------------------------------
    def _package(self) -> str:
        is_init = self.info.path.name == "__init__.py"
        return self.info.name if is_init else self.info.name.rpartition(".")[0]

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            dotted = get_full_name_for_node(alias.name) or ""
            if alias.asname is not None:
                local = get_full_name_for_node(alias.asname.name) or dotted
                self.info.imports[local] = dotted
            else:
                head = dotted.split(".")[0]
                self.info.imports.setdefault(head, head)

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        base = get_full_name_for_node(node.module) if node.module else ""
        if node.relative:
            package = self._package()
            for _ in range(len(node.relative) - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        if isinstance(node.names, cst.ImportStar):
            return
        for alias in node.names:
            name = get_full_name_for_node(alias.name) or ""
            local = name
            if alias.asname is not None:
                local = get_full_name_for_node(alias.asname.name) or name
            self.info.imports[local] = f"{base}.{name}" if base else name

    # classes -----------------------------------------------------------------------------
    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_depth += 1
        if self.class_depth > 1 or self.function_depth:
            return
        bases = [get_full_name_for_node(arg.value) or "" for arg in node.bases]
        fields: list[str] = []
        body = node.body.body if isinstance(node.body, cst.IndentedBlock) else ()
        for statement in body:
            if isinstance(statement, cst.SimpleStatementLine):
                for small in statement.body:
                    if isinstance(small, cst.AnnAssign) and isinstance(small.target, cst.Name):
                        fields.append(small.target.value)
        line = self.get_metadata(PositionProvider, node).start.line
        self.info.classes[node.name.value] = ClassInfo(node.name.value, bases, fields, line)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.class_depth -= 1

    # functions ---------------------------------------------------------------------------
    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if self.function_depth == 0 and self.class_depth == 0:
            self.info.functions.add(node.name.value)
            self.current_function = node.name.value
        self.function_depth += 1

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.function_depth -= 1
        if self.function_depth == 0:
            self.current_function = None

    # calls -------------------------------------------------------------------------------
    def _record_call(
        self, target: str | None, value: cst.BaseExpression, node: cst.CSTNode
    ) -> None:
        if not isinstance(value, cst.Call) or self.class_depth:
            return
        callee = get_full_name_for_node(value.func)
        if not callee:
            return
        keywords = tuple(arg.keyword.value for arg in value.args if arg.keyword is not None)
        line = self.get_metadata(PositionProvider, node).start.line
        self.info.calls.append(CallSite(target, callee, keywords, self.current_function, line))

    def visit_Assign(self, node: cst.Assign) -> None:
        if len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name):
            self._record_call(node.targets[0].target.value, node.value, node)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if isinstance(node.target, cst.Name) and node.value is not None:
            self._record_call(node.target.value, node.value, node)

    def visit_Return(self, node: cst.Return) -> None:
        if node.value is not None:
            self._record_call(None, node.value, node)

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name):
            if func.attr.value == "include_router" and node.args:
                first = get_full_name_for_node(node.args[0].value) or ""
                self.info.router_includes.append((self.current_function, func.value.value, first))
            elif func.attr.value == "on_event":
                self.info.uses_on_event = True


class ModuleIndex:
    """Maps dotted module names to files under the project and summarises them on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: list[Path] | None = None
        self._cache: dict[Path, ModuleInfo] = {}
        self.source_roots = self._source_roots(root)

    def _source_roots(self, root: Path) -> list[Path]:
        """Folders that packages are imported from: the project root, src/, and the parent
        of every top-level package (a pyproject may sit folders above the code)."""
        roots = [root]
        if (root / "src").is_dir():
            roots.insert(0, root / "src")
        for path in self.python_files():
            folder = path.parent
            if not (folder / "__init__.py").exists():
                continue
            while (folder.parent / "__init__.py").exists() and folder.parent != root:
                folder = folder.parent
            if folder.parent not in roots:
                roots.append(folder.parent)
        return roots

    def python_files(self) -> list[Path]:
        """Every .py file of the project's own code, skipping environments and tests."""
        if self._files is None:
            found: list[Path] = []
            for folder, dirs, files in os.walk(self.root):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
                found.extend(Path(folder) / f for f in sorted(files) if f.endswith(".py"))
            self._files = found
        return self._files

    def module_name(self, path: Path) -> str:
        """The dotted name a file is imported as: walk up while folders are packages."""
        parts = [path.stem] if path.name != "__init__.py" else []
        folder = path.parent
        while (folder / "__init__.py").exists() and folder != self.root:
            parts.insert(0, folder.name)
            folder = folder.parent
        in_package = (path.parent / "__init__.py").exists()
        if not in_package and folder.parent == self.root and folder.name != "src":
            # a namespace package (no __init__.py) directly under the project root
            parts.insert(0, folder.name)
        return ".".join(parts)

    def find(self, dotted: str) -> Path | None:
        """The file for a dotted module name, or None when it is not the project's."""
        rel = Path(*dotted.split("."))
        for source_root in self.source_roots:
            for candidate in (
                source_root / rel.with_suffix(".py"),
                source_root / rel / "__init__.py",
            ):
                if candidate.is_file():
                    return candidate
        return None

    def load(self, path: Path) -> ModuleInfo:
        path = path.resolve()
        if path not in self._cache:
            source = read_source(path)
            info = ModuleInfo(self.module_name(path), path, source)
            tree = parse_ast(source)
            if tree is not None:
                _summarise_ast(info, tree)
            else:  # syntax newer than this interpreter (or an error libcst will report)
                module = parse_source(source, path)
                MetadataWrapper(module, unsafe_skip_copy=True).visit(_Summariser(info))
            self._cache[path] = info
        return self._cache[path]

    def load_module(self, dotted: str) -> ModuleInfo | None:
        path = self.find(dotted)
        return self.load(path) if path else None

    def locate(self, qualified: str) -> tuple[ModuleInfo, str] | None:
        """Find where `pkg.mod.Name` is defined, following re-exports between modules."""
        seen: set[str] = set()
        while qualified not in seen:
            seen.add(qualified)
            module_name, _, name = qualified.rpartition(".")
            info = self.load_module(module_name) if module_name else None
            if info is None:
                return None
            if name in info.classes or name in info.functions:
                return info, name
            if name in info.imports:
                qualified = info.imports[name]
                continue
            if any(call.target == name and call.function is None for call in info.calls):
                return info, name
            return None
        return None
