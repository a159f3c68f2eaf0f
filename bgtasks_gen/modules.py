"""A static index of the user's Python modules: read, never imported.

Each module is parsed at most once, lazily, and summarised into the few facts discovery
needs: imports, classes (bases, annotated fields, settings config), calls whose result is
bound or returned, what each top-level function returns, `include_router` and `mount`
calls. The standard library's `ast` does the parsing (ten times faster than libcst);
a module whose syntax is newer than the running interpreter is first lowered by libcst
into an equivalent the interpreter reads (see `_lower_syntax`).

Which modules get parsed is discovery's choice: `ModuleIndex.scan_imports` reads a
file's imports with a regular expression, so following an app's import closure through
thousands of files costs a file read each, not a parse.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
import unicodedata
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bgtasks_gen.errors import BadInput
from bgtasks_gen.patch.outline import dotted_name, parse_ast

if TYPE_CHECKING:
    import libcst as cst

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

# settings config keys whose literal values matter for environment variable names
CONFIG_KEYS = ("env_prefix", "case_sensitive", "env_nested_delimiter")


@dataclass
class ClassInfo:
    name: str
    bases: list[str]  # dotted names as written ("BaseSettings", "base.AppSettings")
    fields: list[str]  # annotated names in the class body, in order
    line: int
    # field -> (annotation source, default source or None when the field is required)
    field_types: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)  # CONFIG_KEYS found literally


@dataclass
class CallSite:
    """`target = callee(...)`, or `return callee(...)` (target None), in a module or function."""

    target: str | None
    callee: str  # dotted name as written
    keywords: tuple[str, ...]
    function: str | None  # enclosing top-level function, None at module level
    line: int
    first_arg: str | None = None  # the first positional argument: a dotted name or a string


@dataclass
class FunctionInfo:
    name: str
    line: int
    required_params: int  # parameters without a default
    returned_names: set[str] = field(default_factory=set)  # `return x`
    returns_other_call: bool = False  # `return something()` with a callee no name resolves
    referenced: set[str] = field(default_factory=set)  # every Name loaded in the body
    return_annotation: str | None = None


@dataclass(frozen=True)
class Include:
    """`receiver.include_router(first, **keywords)` in a module or function."""

    function: str | None
    receiver: str
    first: str  # the router as written
    keywords: tuple[tuple[str, str], ...]  # (name, source) of each keyword argument
    line: int


@dataclass(eq=False)  # one object per file: compared and hashed by identity
class ModuleInfo:
    name: str  # dotted
    path: Path
    source: str
    imports: dict[str, str] = field(default_factory=dict)  # local name -> dotted target
    classes: dict[str, ClassInfo] = field(default_factory=dict)  # the last definition wins
    calls: list[CallSite] = field(default_factory=list)
    functions: dict[str, FunctionInfo] = field(default_factory=dict)
    includes: list[Include] = field(default_factory=list)
    # (scope function or None, receiver, mounted object as written)
    mounts: list[tuple[str | None, str, str]] = field(default_factory=list)
    uses_on_event: bool = False
    relative_imports: bool = False  # the module imports its own package relatively

    @property
    def router_includes(self) -> list[tuple[str | None, str, str]]:
        return [(i.function, i.receiver, i.first) for i in self.includes]

    @property
    def package(self) -> str:
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]

    def resolve(self, dotted: str) -> str:
        """Turn a name as written in this module into a fully qualified dotted name."""
        head, _, rest = dotted.partition(".")
        if head in self.imports:
            target = self.imports[head]
            return f"{target}.{rest}" if rest else target
        if head in self.classes or head in self.functions:
            return f"{self.name}.{dotted}"
        if any(c.target == head and c.function is None for c in self.calls):
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


def read_project_file(root: Path, rel: str) -> str | None:
    """A file of the project as text, newlines kept exactly; None when there is no file.
    Refused (BadInput) when the path leads out of the project through a link, so a
    --dry-run never shows, and a write never plans from, a file that is not the
    project's; and when the file is not UTF-8."""
    from bgtasks_gen.state import refuse_link_outside

    path = root / rel
    refuse_link_outside(root, path)
    if not path.is_file():
        return None
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read {rel}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{rel} is not UTF-8 (byte {exc.start} cannot be decoded)",
            "bgtasks only edits UTF-8 files; convert the file and run again",
        ) from exc


def check_module_path(target: str, where: str) -> str:
    """Refuse a MODULE[:NAME] that Python would import as another name. Python reads
    identifiers in NFKC form, so `app.main` spelled in fullwidth letters imports
    `app.main`, while bgtasks would read (or create) a file of the fullwidth name and
    report a scaffold that cannot import; uvicorn's lookup of NAME does not normalise at
    all. ASCII names are the ones every tool agrees on."""
    normal = unicodedata.normalize("NFKC", target)
    if normal != target or not target.isascii():
        shown = f", which Python reads as {normal!r}" if normal != target else ""
        raise BadInput(
            f"{where} {target!r} is not an ASCII module path{shown}",
            "name modules and their attributes in ASCII letters, digits and underscores, "
            "e.g. app.main:app",
        )
    return target


def parse_source(source: str, path: Path) -> cst.Module:
    """Parse with libcst: it accepts syntax newer than the running interpreter's."""
    import libcst as cst

    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise BadInput(
            f"{path}:{exc.raw_line}:{exc.raw_column}: syntax error, cannot be parsed",
            "fix the syntax error first; bgtasks writes nothing while a file it reads is broken",
        ) from exc


def _lower_syntax(source: str, path: Path) -> ast.Module:
    """An `ast` of a module written in syntax newer than this interpreter.

    The few constructs the running `ast` may not know are rewritten into older
    equivalents that keep every line where it was (`except A, B:` gains parentheses,
    PEP 695 type parameters are blanked out, `type X = Y` becomes an assignment). The
    token stream does this in a millisecond (`_lower_tokens`); libcst, which parses every
    Python version but costs a tenth of a second to import and tens of milliseconds per
    module, only takes what the tokens cannot settle (`_lower_with_libcst`).
    """
    lowered = _lower_tokens(source)
    tree = parse_ast(lowered) if lowered is not None else None
    return tree if tree is not None else _lower_with_libcst(source, path)


# tokens after which a new statement starts
_STATEMENT_BOUNDARY = frozenset({tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT})


def _lower_tokens(source: str) -> str | None:
    """The source with PEP 695 type parameters, `type` aliases and PEP 758 `except A, B:`
    rewritten for an older parser, read from the token stream (which this interpreter's
    tokenizer reads for those constructs); None when the tokens cannot be read."""
    lines = io.StringIO(source).readlines()
    try:
        tokens = [
            token
            for token in tokenize.generate_tokens(iter(lines).__next__)
            if token.type not in (tokenize.COMMENT, tokenize.NL)
        ]
    except (tokenize.TokenError, SyntaxError, StopIteration):
        return None
    # (start, end, replacement): blanks keep columns; an insertion shifts its line only
    edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []

    def closing(opening: int) -> int | None:
        """The index of the bracket closing tokens[opening], on the same line."""
        depth = 0
        for index in range(opening, len(tokens)):
            if tokens[index].string in "([{" and tokens[index].type == tokenize.OP:
                depth += 1
            elif tokens[index].string in ")]}" and tokens[index].type == tokenize.OP:
                depth -= 1
                if depth == 0:
                    return index if tokens[index].end[0] == tokens[opening].start[0] else None
        return None

    def blank(first: int, last: int) -> None:
        start, end = tokens[first].start, tokens[last].end
        edits.append((start, end, " " * (end[1] - start[1])))

    for index, token in enumerate(tokens[:-2]):
        after, then = tokens[index + 1], tokens[index + 2]
        at_start = index == 0 or tokens[index - 1].type in _STATEMENT_BOUNDARY
        if token.string in ("def", "class") and after.type == tokenize.NAME:
            if then.string == "[":
                last = closing(index + 2)
                if last is None:
                    return None
                blank(index + 2, last)
        elif token.string == "type" and at_start and after.type == tokenize.NAME:
            equals = index + 2
            if then.string == "[":
                last = closing(index + 2)
                if last is None:
                    return None
                blank(index + 2, last)
                equals = last + 1
            if tokens[equals].string == "=" and token.end[0] == after.start[0]:
                edits.append((token.start, after.start, ""))
        elif token.string == "except" and at_start:
            _parenthesise_handler(tokens, index, edits)
    for start, end, replacement in sorted(edits, reverse=True):
        line = lines[start[0] - 1]
        lines[start[0] - 1] = line[: start[1]] + replacement + line[end[1] :]
    return "".join(lines)


def _parenthesise_handler(
    tokens: list[tokenize.TokenInfo],
    index: int,
    edits: list[tuple[tuple[int, int], tuple[int, int], str]],
) -> None:
    """`except A, B:` (or `except* A, B:`) becomes `except (A, B):`."""
    first = index + 1
    if first < len(tokens) and tokens[first].string == "*":
        first += 1
    depth, comma = 0, False
    for position in range(first, len(tokens)):
        token = tokens[position]
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
        elif depth == 0 and token.string == ",":
            comma = True
        elif depth == 0 and token.string in (":", "as") or token.type == tokenize.NEWLINE:
            if comma and token.string == ":":
                edits.append((token.start, token.start, ")"))
                edits.append((tokens[first].start, tokens[first].start, "("))
            return


def _lower_with_libcst(source: str, path: Path) -> ast.Module:
    """libcst's lowering: a top-level statement that still does not parse is blanked
    out, lines kept, so the rest of the module is still read."""
    import libcst as cst

    module = parse_source(source, path)

    class Lower(cst.CSTTransformer):
        def leave_ExceptHandler(
            self, original_node: cst.ExceptHandler, updated_node: cst.ExceptHandler
        ) -> cst.ExceptHandler:
            kind = updated_node.type
            if isinstance(kind, cst.Tuple) and not kind.lpar:
                return updated_node.with_changes(
                    type=kind.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
                )
            return updated_node

        def leave_FunctionDef(
            self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
        ) -> cst.FunctionDef:
            return updated_node.with_changes(type_parameters=None)

        def leave_ClassDef(
            self, original_node: cst.ClassDef, updated_node: cst.ClassDef
        ) -> cst.ClassDef:
            return updated_node.with_changes(type_parameters=None)

        def leave_TypeAlias(
            self, original_node: cst.TypeAlias, updated_node: cst.TypeAlias
        ) -> cst.Assign:
            return cst.Assign(
                targets=[cst.AssignTarget(target=updated_node.name)], value=updated_node.value
            )

    lowered = module.visit(Lower())
    tree = parse_ast(lowered.code)
    if tree is not None:
        return tree
    parts = [lowered.code_for_node(statement) for statement in lowered.body]
    kept = [part if parse_ast(part) is not None else "\n" * part.count("\n") for part in parts]
    header = lowered.code[: len(lowered.code) - len("".join(parts)) - len(lowered.footer)]
    return parse_ast(header + "".join(kept)) or ast.Module(body=[], type_ignores=[])


def _literal(node: ast.expr | None) -> object:
    try:
        return ast.literal_eval(node) if node is not None else None
    except ValueError:
        return None


def _class_config(statement: ast.ClassDef) -> dict[str, object]:
    """env_prefix & co. from `model_config = SettingsConfigDict(...)`/`{...}` or `class Config`."""
    found: dict[str, object] = {}
    for item in statement.body:
        value: ast.expr | None = None
        if isinstance(item, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "model_config" for t in item.targets
        ):
            value = item.value
        elif (
            isinstance(item, ast.AnnAssign)
            and isinstance(item.target, ast.Name)
            and item.target.id == "model_config"
        ):
            value = item.value
        if isinstance(value, ast.Call):
            for keyword in value.keywords:
                if keyword.arg in CONFIG_KEYS:
                    found[keyword.arg] = _literal(keyword.value)
        elif isinstance(value, ast.Dict):
            for key, entry in zip(value.keys, value.values, strict=True):
                name = _literal(key)
                if isinstance(name, str) and name in CONFIG_KEYS:
                    found[name] = _literal(entry)
        if isinstance(item, ast.ClassDef) and item.name == "Config":  # pydantic 1
            for inner in item.body:
                if isinstance(inner, ast.Assign):
                    for target in inner.targets:
                        if isinstance(target, ast.Name) and target.id in CONFIG_KEYS:
                            found[target.id] = _literal(inner.value)
    return found


def _source_segments(source: str) -> Callable[[ast.AST], str]:
    """`ast.get_source_segment`, with the lines split once: that function splits the
    whole source on every call, which made a 5,000-field settings class quadratic."""
    lines = [line.encode("utf-8") for line in source.splitlines(keepends=True)]

    def segment(node: ast.AST) -> str:
        start: int | None = getattr(node, "lineno", None)
        end: int | None = getattr(node, "end_lineno", None)
        first: int = getattr(node, "col_offset", 0)
        last: int = getattr(node, "end_col_offset", 0)
        if start is None or end is None or end > len(lines):
            return ""
        if start == end:
            return lines[start - 1][first:last].decode("utf-8")
        parts = [lines[start - 1][first:], *lines[start : end - 1], lines[end - 1][:last]]
        return b"".join(parts).decode("utf-8")

    return segment


def _summarise(info: ModuleInfo, tree: ast.Module) -> None:
    package = info.package
    segment = _source_segments(info.source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    info.imports[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    info.imports.setdefault(head, head)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                info.relative_imports = True
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                if alias.name != "*":
                    local = alias.asname or alias.name
                    info.imports[local] = f"{base}.{alias.name}" if base else alias.name

    def first_arg(call: ast.Call) -> str | None:
        if not call.args:
            return None
        value = call.args[0]
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
        return dotted_name(value) or None

    def calls_in(body: list[ast.stmt], function: FunctionInfo | None) -> None:
        name = function.name if function else None
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
                if function is not None:
                    if isinstance(value, ast.Name):
                        function.returned_names.add(value.id)
                    elif isinstance(value, ast.Call) and not dotted_name(value.func):
                        function.returns_other_call = True
            elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
                value = statement.value  # a bare call: `uvicorn.run("pkg.main:app")`
            if isinstance(value, ast.Await):
                value = value.value
            if isinstance(value, ast.Call) and dotted_name(value.func):
                keywords = tuple(k.arg for k in value.keywords if k.arg)
                info.calls.append(
                    CallSite(
                        target,
                        dotted_name(value.func),
                        keywords,
                        name,
                        statement.lineno,
                        first_arg(value),
                    )
                )

    def includes_in(node: ast.AST, function: str | None) -> None:
        for call in ast.walk(node):
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
                continue
            receiver = call.func.value
            if not isinstance(receiver, ast.Name):
                if call.func.attr == "on_event":
                    info.uses_on_event = True
                continue
            if call.func.attr == "include_router" and call.args:
                keywords = tuple((k.arg, segment(k.value) or "") for k in call.keywords if k.arg)
                info.includes.append(
                    Include(function, receiver.id, dotted_name(call.args[0]), keywords, call.lineno)
                )
            elif call.func.attr == "mount" and len(call.args) >= 2:
                info.mounts.append((function, receiver.id, dotted_name(call.args[1])))
            elif call.func.attr in ("on_event", "add_event_handler"):
                info.uses_on_event = True

    for statement in tree.body:
        if isinstance(statement, ast.ClassDef):
            fields: list[str] = []
            types: dict[str, tuple[str, str | None]] = {}
            for item in statement.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    fields.append(item.target.id)
                    annotation = segment(item.annotation) or ""
                    default = segment(item.value) if item.value else None
                    types[item.target.id] = (annotation, default)
            bases = [dotted_name(b) for b in statement.bases]
            info.classes[statement.name] = ClassInfo(
                statement.name,
                bases,
                fields,
                statement.lineno,
                types,
                _class_config(statement),
            )
            includes_in(statement, None)
        elif isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = statement.args
            positional = arguments.posonlyargs + arguments.args
            required = len(positional) - len(arguments.defaults)
            required += sum(d is None for d in arguments.kw_defaults)
            function = FunctionInfo(
                statement.name,
                statement.lineno,
                required,
                return_annotation=dotted_name(statement.returns) if statement.returns else None,
            )
            nested = [n for n in ast.walk(statement) if isinstance(n, ast.stmt)]
            calls_in(nested[1:], function)
            function.referenced = {n.id for n in ast.walk(statement) if isinstance(n, ast.Name)}
            info.functions[statement.name] = function
            includes_in(statement, statement.name)
        else:
            calls_in([n for n in ast.walk(statement) if isinstance(n, ast.stmt)], None)
            includes_in(statement, None)


# `import a.b`, `import a as b, c`, `from .x import (y, z)`: enough to follow imports
_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]+)"
    r"|import[ \t]+([^\n#;]+))",
    re.MULTILINE,
)


# an absolute import's first name: `from config import x`, `import config.db`
TOP_LEVEL_IMPORT = re.compile(r"^[ \t]*(?:from|import)[ \t]+([A-Za-z_]\w*)", re.MULTILINE)
# run files whose commands may change into a source folder first
RUN_FILE_NAMES = ("Dockerfile", "Makefile", "Procfile", "justfile")
RUN_FILE_SUFFIXES = (".sh", ".yml", ".yaml", ".dockerfile")
# `cd backend &&`, `--app-dir backend` (not a Dockerfile's WORKDIR: `WORKDIR /app` then
# `COPY . /app` names the project root, not a folder in it)
RUN_FOLDER = re.compile(
    r"(?:\bcd[ \t]+|--app-dir[ \t=]+)(?:\./)?([A-Za-z_]\w*)/?(?=[\s;&\"']|$)", re.MULTILINE
)


def _run_file_folders(root: Path) -> set[str]:
    """The folder names the project's run files change into before running Python."""
    found: set[str] = set()
    try:
        names = os.listdir(root)
    except OSError:
        return found
    for name in names:
        if not (
            name in RUN_FILE_NAMES
            or name.startswith("Dockerfile")
            or name.endswith(RUN_FILE_SUFFIXES)
        ):
            continue
        try:
            text = (root / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found.update(RUN_FOLDER.findall(text))
    return found


class ModuleIndex:
    """Maps dotted module names to files under the project and summarises them on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: list[Path] | None = None
        self._cache: dict[Path, ModuleInfo] = {}
        # keyed by the text itself: a dict hashes it once, and equal texts share a tree
        self._trees: dict[str, ast.Module] = {}
        self.parsed: list[Path] = []  # files parsed, in order (one per distinct text)
        self.lowered: list[Path] = []  # of those, the ones in syntax newer than this Python
        self._texts: dict[Path, str] = {}
        self._names: dict[Path, str] = {}
        self._found: dict[str, Path | None] = {}
        self._walked: set[str] = set()  # folders os.walk listed
        self._file_names: set[str] = set()  # the .py files it listed in them
        self._packages: set[str] = set()  # of those, the ones with an __init__.py
        self._run_from_folders: frozenset[str] | None = None
        self.source_roots = self._source_roots(root)

    def _source_roots(self, root: Path) -> list[Path]:
        """Folders that packages are imported from: the project root, src/, and the parent
        of every top-level package (a pyproject may sit folders above the code)."""
        roots = [root]
        if (root / "src").is_dir():
            roots.insert(0, root / "src")
        seen = {str(r) for r in roots}
        for path in self.python_files():  # plain strings: this runs for every file
            name = self.module_name(path)
            top = os.path.dirname(str(path))
            for _ in range(name.count(".") + (1 if path.name == "__init__.py" else 0)):
                top = os.path.dirname(top)
            if top not in seen:
                seen.add(top)
                roots.append(Path(top))
        return roots

    def _run_from(self) -> frozenset[str]:
        """Plain folders (no __init__.py) directly under the root that are put on sys.path
        by how the project runs, by evidence: a run file says `cd DIR &&` or `--app-dir
        DIR`, or the folder's modules import each other
        by top-level names (`from config import settings` beside config.py, with no
        `config` at the root), which only works with the folder itself on sys.path."""
        if self._run_from_folders is None:
            root = str(self.root)
            try:
                names = os.listdir(root)
            except OSError:
                names = []
            plain = {
                name
                for name in names
                if name.isidentifier()
                and name != "src"
                and name not in SKIPPED_DIRS
                and os.path.isdir(os.path.join(root, name))
                and not self.is_package(os.path.join(root, name))
            }
            said = _run_file_folders(self.root) & plain
            self._run_from_folders = frozenset(
                said | {name for name in plain - said if self._imports_siblings(name)}
            )
        return self._run_from_folders

    def _imports_siblings(self, folder: str) -> bool:
        base = os.path.join(str(self.root), folder)
        for path in self.python_files():
            if os.path.dirname(str(path)) != base:
                continue
            for name in TOP_LEVEL_IMPORT.findall(self.text(path)):
                beside = os.path.join(base, name)
                at_root = os.path.join(str(self.root), name)
                if (os.path.isfile(beside + ".py") or os.path.isdir(beside)) and not (
                    os.path.isfile(at_root + ".py") or os.path.isdir(at_root)
                ):
                    return True
        return False

    def python_files(self) -> list[Path]:
        """Every .py file of the project's own code, skipping environments and tests."""
        if self._files is None:
            found: list[Path] = []
            for folder, dirs, files in os.walk(self.root):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
                self._walked.add(folder)
                if "__init__.py" in files:
                    self._packages.add(folder)
                here = Path(folder)
                names = sorted(f for f in files if f.endswith(".py"))
                found.extend(here / f for f in names)
                self._file_names.update(os.path.join(folder, f) for f in names)
            self._files = found
        return self._files

    def is_package(self, folder: str) -> bool:
        """Whether a folder has an __init__.py: from the walk when it was walked (no stat)."""
        if folder in self._walked:
            return folder in self._packages
        return os.path.exists(os.path.join(folder, "__init__.py"))

    def text(self, path: Path) -> str:
        """A file's text for cheap searches (undecodable bytes replaced); "" if unreadable."""
        if path not in self._texts:
            try:
                self._texts[path] = path.read_bytes().decode("utf-8", "replace")
            except OSError:
                self._texts[path] = ""
        return self._texts[path]

    def grep(
        self, pattern: re.Pattern[str], needle: str = "", any_of: Collection[str] = ()
    ) -> list[Path]:
        """Files whose text matches. `needle`, a substring every match contains, and
        `any_of`, words one of which every match contains, skip the regular expression
        for most files (a substring test is many times cheaper than a search)."""
        words = tuple(any_of)
        found = []
        for path in self.python_files():
            text = self.text(path)
            if needle not in text or (words and not any(word in text for word in words)):
                continue
            if pattern.search(text):
                found.append(path)
        return found

    def importers(self, names: set[str]) -> list[Path]:
        """Files with an import statement that names one of `names` after `import`
        (`from x import name`, a parenthesised list over several lines, `import a.name
        as b`): the only files whose summary can bind them. The text decides, so the
        thousands of modules that merely mention a common word (`app`) are not parsed."""
        words = "|".join(sorted(map(re.escape, names)))
        pattern = re.compile(rf"\bimport\s*(?:\([^)]*?|(?:[^\n;\\]|\\\r?\n)*?)\b(?:{words})\b")
        return self.grep(pattern, "import", names)

    def module_name(self, path: Path) -> str:
        """The dotted name a file is imported as.

        Walk up through packages; a folder without `__init__.py` still belongs to the name
        when a package encloses it (`api/__init__.py` + `api/src/main.py` is
        `api.src.main`: a namespace portion inside a package). Without any package, a
        module in a plain folder directly under the project root is `folder.module`.
        """
        if path in self._names:
            return self._names[path]
        # plain strings: this runs for every file of a large project
        root, parent = str(self.root), os.path.dirname(str(path))
        rel = parent[len(root) + 1 :].split(os.sep) if parent.startswith(root + os.sep) else []
        # innermost first, the project root itself excluded
        folders = [os.path.join(root, *rel[:i]) for i in range(len(rel), 0, -1)]
        # the outermost folder that is a package decides where the dotted name starts
        packages = [i for i, f in enumerate(folders) if self.is_package(f)]
        parts = [path.stem] if path.name != "__init__.py" else []
        if packages:
            parts = [os.path.basename(f) for f in reversed(folders[: packages[-1] + 1])] + parts
        elif (
            len(folders) == 1
            and rel[0] != "src"
            and rel[0].isidentifier()
            and rel[0] not in self._run_from()
        ):
            # a plain folder with a name no import can spell (`my-service/`), or one the
            # project is run from, is put on sys.path itself: its modules are top-level
            parts.insert(0, rel[0])
        name = ".".join(parts)
        self._names[path] = name
        return name

    def find(self, dotted: str) -> Path | None:
        """The file for a dotted module name, or None when it is not the project's."""
        if not dotted:
            return None
        if dotted not in self._found:
            self._found[dotted] = None
            parts = dotted.split(".")
            for source_root in self.source_roots:
                base = os.path.join(str(source_root), *parts)
                for candidate in (base + ".py", os.path.join(base, "__init__.py")):
                    if not self._is_file(candidate):
                        continue
                    path = Path(candidate).absolute()
                    if self.module_name(path) == dotted:
                        self._found[dotted] = path
                        return path
        return self._found[dotted]

    def _is_file(self, name: str) -> bool:
        """Whether a .py file exists: from the walk when its folder was walked (no stat,
        and thousands of names are asked on a large project)."""
        if os.path.dirname(name) in self._walked:
            return name in self._file_names
        return os.path.isfile(name)

    def load(self, path: Path) -> ModuleInfo:
        # absolute, not resolved: a symlinked folder inside the project keeps its name
        path = path.absolute()
        if path not in self._cache:
            source = read_source(path)
            info = ModuleInfo(self.module_name(path), path, source)
            _summarise(info, self.tree(info))
            self._cache[path] = info
        return self._cache[path]

    def tree(self, info: ModuleInfo) -> ast.Module:
        """A module's `ast`, lowered when its syntax is newer than this interpreter's;
        parsed once per content in a run (twin files, `__init__.py` boilerplate, and each
        question asked again of the same module share one tree)."""
        tree = self._trees.get(info.source)
        if tree is None:
            self.parsed.append(info.path)
            tree = parse_ast(info.source)
            if tree is None:  # syntax newer than this interpreter (or a real error)
                self.lowered.append(info.path)
                tree = _lower_syntax(info.source, info.path)
            self._trees[info.source] = tree
        return tree

    @property
    def loaded(self) -> set[Path]:
        """The files summarised so far: what discovery had to read, not only grep."""
        return set(self._cache)

    def load_module(self, dotted: str) -> ModuleInfo | None:
        path = self.find(dotted)
        return self.load(path) if path else None

    def scan_imports(self, path: Path) -> set[str]:
        """Project modules a file imports, read with a regular expression (no parse)."""
        name = self.module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for match in _IMPORT.finditer(self.text(path)):
            source, names, plain = match.groups()
            targets: list[str] = []
            if plain is not None:
                targets = [part.split(" as ")[0].strip() for part in plain.split(",")]
            elif source is not None:
                level = len(source) - len(source.lstrip("."))
                base = source.lstrip(".")
                if level:
                    parent = package
                    for _ in range(level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{base}" if base else parent
                targets = [base]
                listed = names.strip("()").replace("\n", " ")
                for item in listed.split(","):
                    item = item.split(" as ")[0].strip()
                    if item.isidentifier():
                        targets.append(f"{base}.{item}" if base else item)
            for target in targets:
                while target:
                    if self.find(target):
                        found.add(target)
                        break
                    target = target.rpartition(".")[0]
        return found

    def closure(self, start: list[str], limit: int = 5000) -> set[str]:
        """Every project module reachable by imports from the `start` modules."""
        seen: set[str] = set()
        queue = [m for m in start if self.find(m)]
        while queue and len(seen) < limit:
            module = queue.pop()
            if module in seen:
                continue
            seen.add(module)
            path = self.find(module)
            if path is None:
                continue
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parent = module.rpartition(".")[0]
            if parent and parent not in seen and self.find(parent):
                queue.append(parent)
            queue.extend(m for m in self.scan_imports(path) if m not in seen)
        return seen

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
