"""Add the runner's packages to the project's dependency list, keeping its formatting.

Understood: PEP 621 `[project] dependencies` (uv, hatch, pdm, setuptools), poetry's
`[tool.poetry.dependencies]` table, `requirements.in`/`requirements.txt`, and a
`requirements/` folder (base.txt first). The first found, walking from the app's source
folder up to the project root, is the one edited. The edit is textual and minimal (new
lines inserted where the list ends, in the file's own newline style), so comments and
order survive.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bgtasks_gen.errors import BadInput
from bgtasks_gen.runners.base import PinRule

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
LOCK_COMMANDS = {"uv.lock": "uv lock", "poetry.lock": "poetry lock", "pdm.lock": "pdm lock"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = NAME.match(requirement)
    return canonical(match.group(1)) if match else ""


@dataclass
class DependencyEdit:
    path: str | None  # relative path of the file edited, None when there is none
    old: str
    new: str
    added: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


REQUIREMENTS_FOLDER_FILES = ("base.txt", "common.txt", "main.txt", "prod.txt", "production.txt")


def _read(path: Path) -> str:
    # newline="" keeps CRLF as it is, so the edit can write it back the same way
    with path.open(encoding="utf-8", newline="") as handle:
        return handle.read()


def _requirements_lines(text: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def _declared_in(folder: Path) -> tuple[Path | None, str, str, list[str]]:
    """(file, kind, text, requirement strings) of the dependency list in one folder."""
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        text = _read(pyproject)
        data = tomllib.loads(text)
        project = data.get("project", {})
        if isinstance(project, dict) and isinstance(project.get("dependencies"), list):
            return pyproject, "pep621", text, [str(d) for d in project["dependencies"]]
        poetry = data.get("tool", {}).get("poetry", {}).get("dependencies")
        if isinstance(poetry, dict):
            return pyproject, "poetry", text, [str(k) for k in poetry if k != "python"]
    candidates = [folder / "requirements.in", folder / "requirements.txt"]
    candidates += [folder / "requirements" / name for name in REQUIREMENTS_FOLDER_FILES]
    for path in candidates:
        if path.is_file():
            text = _read(path)
            return path, "requirements", text, _requirements_lines(text)
    return None, "", "", []


def _declared(root: Path, start: Path | None = None) -> tuple[Path | None, str, str, list[str]]:
    """The first dependency list from `start` (the app's source folder) up to `root`."""
    folder = (start or root).resolve()
    root = root.resolve()
    while True:
        found = _declared_in(folder)
        if found[0] is not None or folder == root or root not in folder.parents:
            return found
        folder = folder.parent


def declared_requirements(root: Path, start: Path | None = None) -> list[str]:
    """The requirement strings of the project's dependency list ([] when it has none)."""
    return _declared(root, start)[3]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def caps_below(requirement: str, version: str) -> bool:
    """True when `requirement` rules out `version` and everything after it (an upper
    bound or pin below it): `fastapi<0.110`, `fastapi==0.109.2`, `fastapi~=0.100.0`."""
    wanted = _version(version)
    for operator, bound in re.findall(r"(==|<=|<|~=|\^)\s*([\d.]+)", requirement):
        limit = _version(bound)
        if operator == "<" and limit <= wanted:
            return True
        if operator in ("<=", "==") and limit < wanted:
            return True
        if operator in ("~=", "^"):
            # ~=0.100.0 allows 0.100.*, ^0.100 allows 0.100.*: below 0.112 both
            head = limit[:-1] if operator == "~=" and len(limit) > 1 else limit[:2]
            if head < wanted[: len(head)]:
                return True
    return False


def pin_rules() -> tuple[PinRule, ...]:
    """Every runner's pin-conflict rules: a conflict is between packages, whichever
    runner brings them (a plugin that wraps celery meets arq the same way)."""
    from bgtasks_gen.runners import available_runners

    return tuple(rule for spec in available_runners() for rule in spec.pin_rules)


def choose_requirements(
    wanted: list[str], existing: list[str], rules: Sequence[PinRule] | None = None
) -> tuple[list[str], list[str]]:
    """The requirements to add given what the project has, and notes explaining choices
    (`rules`: the pin-conflict rules to apply, by default every runner's).

    Raises BadInput when the runner cannot be installed beside what is there.
    """
    rules = pin_rules() if rules is None else rules
    names = {requirement_name(r): r for r in existing}
    notes: list[str] = []
    chosen = []
    for requirement in wanted:
        name = requirement_name(requirement)
        applying = [rule for rule in rules if rule.applies(name, names)]
        replacing = next((rule for rule in applying if rule.replace_with), None)
        if replacing is not None and replacing.replace_with is not None:
            requirement = replacing.replace_with
            if replacing.note:
                notes.append(replacing.note.format(declared=names[replacing.declared]))
        if name == "pydantic-settings" and _pins_pydantic_1(names.get("pydantic", "")):
            notes.append(
                f"the project pins {names['pydantic']}: pydantic-settings 2 needs pydantic 2, "
                "so it is not added (pydantic 1 has BaseSettings built in)"
            )
            continue
        refusing = next((rule for rule in applying if rule.refuse), None)
        if refusing is not None and refusing.refuse is not None:
            declared = names[refusing.declared]
            message, hint = refusing.refuse
            raise BadInput(message.format(declared=declared), hint.format(declared=declared))
        if name in names:
            continue  # already declared: left as the project has it
        chosen.append(requirement)
    return chosen, notes


def _pins_pydantic_1(requirement: str) -> bool:
    return bool(re.search(r"<\s*2(\.0)*\b|==\s*1\.|~=\s*1\.|\^\s*1\.", requirement))


def _pep621(text: str, additions: list[str]) -> str:
    """Insert requirement strings at the end of `[project] dependencies = [...]`."""
    section = re.search(r"(?m)^\[project\]\s*$", text)
    if section is None:
        raise BadInput("pyproject.toml has no [project] table to add dependencies to")
    match = re.compile(r"(?m)^dependencies\s*=\s*\[").search(text, section.end())
    if match is None:
        raise BadInput("cannot find `dependencies = [` under [project] in pyproject.toml")
    return _insert_into_array(text, match.end(), additions)


def _insert_into_array(text: str, start: int, additions: list[str]) -> str:
    """Add quoted items at the end of the TOML array whose `[` ends at `start`."""
    close = _closing_bracket(text, start)
    body = text[start:close]
    quote = "'" if body.strip().startswith("'") else '"'
    items = [f"{quote}{r}{quote}" for r in additions]
    if "\n" not in body:  # an inline list: dependencies = ["a", "b"]
        existing = body.strip().rstrip(",").strip()
        return text[:start] + ", ".join([existing, *items] if existing else items) + text[close:]
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = body.split("\n")
    indents = [ln[: len(ln) - len(ln.lstrip())] for ln in lines if ln.strip()]
    indent = indents[0] if indents else "    "
    entries = [i for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith("#")]
    last = entries[-1] if entries else None
    if last is not None and not lines[last].split("#")[0].rstrip().endswith(","):
        code, hash_, comment = lines[last].partition("#")
        kept = code.rstrip()
        lines[last] = kept + "," + code[len(kept) :] + hash_ + comment
    position = (last + 1) if last is not None else 1
    ending = "\r" if newline == "\r\n" else ""
    lines[position:position] = [f"{indent}{item},{ending}" for item in items]
    return text[:start] + "\n".join(lines) + text[close:]


def _closing_bracket(text: str, start: int) -> int:
    depth, quote = 1, ""
    position = start
    while position < len(text):
        char = text[position]
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#":
            position = text.find("\n", position)
            if position < 0:
                break
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return position
        position += 1
    raise BadInput("pyproject.toml: the dependencies list is not closed")


def _poetry_entry(requirement: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$", requirement)
    assert match is not None
    name, extras, version = match.group(1), match.group(2), match.group(3).strip() or "*"
    if extras:
        names = ", ".join(f'"{e.strip()}"' for e in extras[1:-1].split(","))
        return f'{name} = {{extras = [{names}], version = "{version}"}}'
    return f'{name} = "{version}"'


def _poetry(text: str, additions: list[str], table: str = "tool.poetry.dependencies") -> str:
    header = re.search(rf"(?m)^\[{re.escape(table)}\]\s*$", text)
    assert header is not None
    following = re.compile(r"(?m)^\[").search(text, header.end())
    end = following.start() if following else len(text)
    block = text[header.end() : end].rstrip("\n")
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = newline.join(_poetry_entry(r) for r in additions)
    tail = text[header.end() + len(block) :]
    return text[: header.end()] + block + newline + lines + tail


def _requirements_txt(text: str, additions: list[str]) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    if text and not text.endswith(("\n", "\r\n")):
        text += newline
    return text + newline.join(additions) + newline


def plan_dependencies(
    root: Path, wanted: list[str], start: Path | None = None, *, uses_uvicorn: bool = False
) -> DependencyEdit:
    where, kind, text, existing = _declared(root, start)
    if uses_uvicorn and not _declares_uvicorn(existing):
        wanted = [*wanted, "uvicorn>=0.30"]
    additions, notes = choose_requirements(wanted, existing)
    if where is None:
        return DependencyEdit(
            None, "", "", [], notes + [f"no dependency list found: install {' '.join(additions)}"]
        )
    rel = where.relative_to(root.resolve()).as_posix()
    if not additions:
        return DependencyEdit(rel, text, text, [], notes)
    if kind == "pep621":
        new = _pep621(text, additions)
    elif kind == "poetry":
        new = _poetry(text, additions)
    else:
        new = _requirements_txt(text, additions)
    edit = DependencyEdit(rel, text, new, additions, notes)
    for lock, command in LOCK_COMMANDS.items():
        if (where.parent / lock).is_file():
            edit.next_steps.append(f"{command}  # {lock} is stale after the dependency edit")
    return edit


def _declares_uvicorn(existing: list[str]) -> bool:
    """uvicorn itself, or fastapi[standard], which brings it."""
    for requirement in existing:
        name = requirement_name(requirement)
        if name == "uvicorn" or (name == "fastapi" and "standard" in requirement):
            return True
    return False


# what the scaffold's own tests import beyond the runner's packages (TestClient needs httpx)
TEST_REQUIREMENTS = ("pytest>=8", "httpx>=0.27")
TEST_GROUP_NAMES = ("dev", "test", "tests")
TEST_REQUIREMENTS_FILES = ("requirements-dev.txt", "requirements-test.txt", "requirements/dev.txt")


@dataclass
class TestDependencyEdit:
    """Where the scaffold's test dependencies go: `group` is "group:NAME" (PEP 735),
    "poetry:NAME", "extra:NAME" ([project.optional-dependencies]) or "file:PATH", None when
    the project has no test/dev group (then they are printed, not added)."""

    path: str | None
    old: str
    new: str
    group: str | None
    added: list[str] = field(default_factory=list)


def _table_span(text: str, header: str) -> tuple[int, int] | None:
    """(start, end) of the body of the TOML table `[header]`, None without it."""
    found = re.search(rf"(?m)^\[{re.escape(header)}\][ \t]*(#.*)?\r?$", text)
    if found is None:
        return None
    following = re.compile(r"(?m)^\[").search(text, found.end())
    return found.end(), following.start() if following else len(text)


def _array_key(text: str, span: tuple[int, int], key: str) -> int | None:
    """The offset just past `key = [` inside a table body, None when the key is not there."""
    pattern = re.compile(rf"(?m)^[ \t]*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=\s*\[")
    found = pattern.search(text, span[0], span[1])
    return found.end() if found else None


def _test_group(data: dict[str, object]) -> tuple[str, list[str]] | None:
    """(where, the requirement names it declares) of the project's test/dev group."""

    def names(value: object) -> list[str]:
        if isinstance(value, list):
            return [requirement_name(v) for v in value if isinstance(v, str)]
        if isinstance(value, dict):
            return [canonical(k) for k in value]
        return []

    groups = data.get("dependency-groups")
    if isinstance(groups, dict):
        for name in TEST_GROUP_NAMES:
            if name in groups:
                return f"group:{name}", names(groups[name])
    tool = data.get("tool")
    poetry = tool.get("poetry", {}) if isinstance(tool, dict) else {}
    poetry_groups = poetry.get("group", {}) if isinstance(poetry, dict) else {}
    if isinstance(poetry_groups, dict):
        for name in TEST_GROUP_NAMES:
            group = poetry_groups.get(name)
            if isinstance(group, dict) and isinstance(group.get("dependencies"), dict):
                return f"poetry:{name}", names(group["dependencies"])
    project = data.get("project")
    extras = project.get("optional-dependencies", {}) if isinstance(project, dict) else {}
    if isinstance(extras, dict):
        for name in TEST_GROUP_NAMES:
            if name in extras:
                return f"extra:{name}", names(extras[name])
    return None


def plan_test_dependencies(
    root: Path, pending: dict[str, str], wanted: tuple[str, ...] = TEST_REQUIREMENTS
) -> TestDependencyEdit:
    """Add the scaffold's test dependencies to the project's test/dev group, in the same
    textual way as the runtime ones. `pending` holds texts already edited in this plan
    (pyproject.toml after the runtime dependencies went in), keyed by relative path."""
    root = root.resolve()
    rel = "pyproject.toml"
    text = pending.get(rel)
    if text is None and (root / rel).is_file():
        text = _read(root / rel)
    if text is not None:
        found = _test_group(tomllib.loads(text))
        if found is not None:
            group, have = found
            additions = [r for r in wanted if requirement_name(r) not in have]
            new = _add_to_group(text, group, additions) if additions else text
            return TestDependencyEdit(rel, text, new, group, additions)
    for name in TEST_REQUIREMENTS_FILES:
        path = root / name
        if path.is_file():
            old = pending.get(name, _read(path))
            have = [requirement_name(r) for r in _requirements_lines(old)]
            additions = [r for r in wanted if requirement_name(r) not in have]
            new = _requirements_txt(old, additions) if additions else old
            return TestDependencyEdit(name, old, new, f"file:{name}", additions)
    return TestDependencyEdit(None, "", "", None, list(wanted))


def _add_to_group(text: str, group: str, additions: list[str]) -> str:
    kind, _, name = group.partition(":")
    if kind == "poetry":
        header = f"tool.poetry.group.{name}.dependencies"
        found = re.search(rf"(?m)^\[{re.escape(header)}\][ \t]*\r?$", text)
        if found is None:
            raise BadInput(f"pyproject.toml: cannot find the [{header}] table to add to")
        return _poetry(text, additions, header)
    table = "dependency-groups" if kind == "group" else "project.optional-dependencies"
    span = _table_span(text, table)
    start = _array_key(text, span, name) if span else None
    if start is None:
        raise BadInput(f"pyproject.toml: cannot find `{name} = [` under [{table}] to add to")
    return _insert_into_array(text, start, additions)
