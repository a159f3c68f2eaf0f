"""Add the runner's packages to the project's dependency list, keeping its formatting.

Understood: PEP 621 `[project] dependencies` (uv, hatch, pdm, setuptools), poetry's
`[tool.poetry.dependencies]` table, `requirements.in`/`requirements.txt`, and a
`requirements/` folder (base.txt first). The files edited are those the project's own
install commands use (install_files.py: a Dockerfile's `pip install -r`, `uv sync`...);
without any, the first list found walking from the app's source folder up to the project
root. A compiled requirements lock gets the packages in its `.in` source. The edit is
textual and minimal (new lines inserted where the list ends, in the file's own newline
style), so comments and order survive. Pin choices read the project's dependency truth
(dependency_truth.py): its constraints and the versions its lock pins.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bgtasks_gen.dependency_truth import (
    DependencyTruth,
    is_locked_requirements,
    pyproject_requirements,
    read_dependency_truth,
    requirement_specifier,
)
from bgtasks_gen.dependency_truth import caps_below as specifier_caps_below
from bgtasks_gen.errors import BadInput
from bgtasks_gen.install_files import InstallUse, install_files
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
    # further files the packages went into (several install commands): path -> (old, new)
    more: dict[str, tuple[str, str]] = field(default_factory=dict)


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
        found = pyproject_requirements(text)  # poetry's entries as PEP 508 strings
        if found is not None:
            return pyproject, found[0], text, found[1]
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
    """The requirement strings of the project's dependency lists: those its install
    commands use, else the one found from `start` up ([] when it has none)."""
    return [r for target in edit_targets(root, start) for r in target.existing]


def dependency_list(root: Path, start: Path | None = None) -> Path | None:
    """The dependency list found from `start` up to `root`, None when there is none."""
    return _declared(root, start)[0]


def caps_below(requirement: str, version: str) -> bool:
    """True when `requirement` rules out `version` and everything after it (an upper
    bound or pin below it): `fastapi<0.110`, `fastapi==0.109.2`, `fastapi~=0.100.0`,
    poetry's `fastapi^0.100`."""
    return specifier_caps_below(requirement_specifier(requirement), version)


def pin_rules() -> tuple[PinRule, ...]:
    """Every runner's pin-conflict rules: a conflict is between packages, whichever
    runner brings them (a plugin that wraps celery meets arq the same way)."""
    from bgtasks_gen.runners import available_runners

    return tuple(rule for spec in available_runners() for rule in spec.pin_rules)


def choose_requirements(
    wanted: list[str],
    existing: list[str],
    rules: Sequence[PinRule] | None = None,
    truth: DependencyTruth | None = None,
) -> tuple[list[str], list[str]]:
    """The requirements to add given what the project has, and notes explaining choices
    (`rules`: the pin-conflict rules to apply, by default every runner's; `truth`: the
    project's constraints and locked versions, which version-bound rules read).

    Raises BadInput when the runner cannot be installed beside what is there.
    """
    rules = pin_rules() if rules is None else rules
    names = {requirement_name(r): r for r in existing}
    older_than = truth.older_than if truth is not None else None
    notes: list[str] = []
    chosen = []
    for requirement in wanted:
        name = requirement_name(requirement)
        applying = [rule for rule in rules if rule.applies(name, names, older_than)]
        replacing = next((rule for rule in applying if rule.replace_with), None)
        if replacing is not None and replacing.replace_with is not None:
            requirement = replacing.replace_with
            if replacing.note:
                notes.append(_rule_text(replacing.note, replacing, names, truth))
        if name == "pydantic-settings" and _pins_pydantic_1(names.get("pydantic", "")):
            notes.append(
                f"the project pins {names['pydantic']}: pydantic-settings 2 needs pydantic 2, "
                "so it is not added (pydantic 1 has BaseSettings built in)"
            )
            continue
        refusing = next((rule for rule in applying if rule.refuse), None)
        if refusing is not None and refusing.refuse is not None:
            message, hint = refusing.refuse
            raise BadInput(
                _rule_text(message, refusing, names, truth),
                _rule_text(hint, refusing, names, truth),
            )
        if name in names:
            continue  # already declared: left as the project has it
        chosen.append(requirement)
    return chosen, notes


def _rule_text(
    text: str, rule: PinRule, names: dict[str, str], truth: DependencyTruth | None
) -> str:
    declared = names.get(rule.declared, rule.declared)
    evidence = truth.evidence(rule.declared) if truth is not None else declared
    return text.format(declared=declared, evidence=evidence)


def _pins_pydantic_1(requirement: str) -> bool:
    return bool(requirement) and caps_below(requirement, "2")


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


@dataclass(frozen=True)
class EditTarget:
    """One dependency file the runner's packages go into, and why that one."""

    path: Path
    kind: str  # "pep621", "poetry" or "requirements"
    text: str
    existing: list[str]  # its requirement strings
    why: str = ""  # the install command that uses it ("" when found by walking up)
    relock: str = ""  # a next step that re-compiles the lock made from this file
    unpinned_lock: bool = False  # a lock with no source: the packages go in unpinned


def edit_targets(root: Path, start: Path | None = None) -> list[EditTarget]:
    """The files the project's install commands use (the runtime ones: a dev/test file
    only when nothing else is installed), else the first list found from `start` up."""
    root = root.resolve()
    targets: list[EditTarget] = []
    for use in install_files(root):
        target = _target_for(root, use)
        if target is not None and all(t.path != target.path for t in targets):
            targets.append(target)
    runtime = [t for t in targets if not DEV_FILE.search(t.path.relative_to(root).as_posix())]
    targets = runtime or targets
    if not targets:
        where, kind, text, existing = _declared(root, start)
        targets = [EditTarget(where, kind, text, existing)] if where is not None else []
    # the root pyproject.toml first: the test group edit builds on it
    return sorted(targets, key=lambda t: t.path != root / "pyproject.toml")


DEV_FILE = re.compile(r"(^|[/_.-])(dev|develop|test|tests|testing|lint|docs)([/_.-]|$)")


def _target_for(root: Path, use: InstallUse) -> EditTarget | None:
    path = root / use.path
    why = f"{use.evidence} installs {use.path} (`{use.command}`)"
    if path.name == "pyproject.toml":
        found = pyproject_requirements(_read(path))
        if found is None:  # a pyproject that builds the package but lists nothing
            return None
        return EditTarget(path, found[0], _read(path), found[1], why)
    path = _included_base(root, path)
    text = _read(path)
    rel = path.relative_to(root).as_posix()
    if path != root / use.path:
        why += f", which includes {rel}"
    if not is_locked_requirements(text):
        return EditTarget(path, "requirements", text, _requirements_lines(text), why)
    source = _lock_source(root, path, text)
    if source is None:
        return EditTarget(
            path, "requirements", text, _requirements_lines(text), why, unpinned_lock=True
        )
    source_text = _read(source)
    source_rel = source.relative_to(root).as_posix()
    found = pyproject_requirements(source_text) if source.name == "pyproject.toml" else None
    kind, existing = found or ("requirements", _requirements_lines(source_text))
    relock = f"{_compile_command(text, source_rel, rel)}  # {rel} is compiled from {source_rel}"
    return EditTarget(
        source, kind, source_text, existing, f"{why}; it is compiled from {source_rel}", relock
    )


INCLUDE = re.compile(r"^\s*(?:-r\s*|--requirement[\s=]+)(\S+)")


def _included_base(root: Path, path: Path, seen: frozenset[Path] = frozenset()) -> Path:
    """The file a requirements file builds on (`-r base.txt`, followed to the end): the
    runtime packages belong there, not in the dev file that includes it."""
    for line in _read(path).splitlines():
        match = INCLUDE.match(line)
        if match is None:
            continue
        included = (path.parent / match.group(1)).resolve()
        if included.is_file() and root in included.parents and included not in seen:
            return _included_base(root, included, seen | {path})
        break
    return path


def _lock_source(root: Path, lock: Path, text: str) -> Path | None:
    """The file a compiled requirements lock is made from: the one its header command
    names (pip-compile, uv pip compile), else `NAME.in` beside it."""
    header = [line for line in text.splitlines()[:20] if line.lstrip().startswith("#")]
    for word in " ".join(header).replace("#", " ").split():
        if word.endswith((".in", "pyproject.toml")):
            for base in (lock.parent, root):
                candidate = (base / word).resolve()
                if candidate.is_file() and root in candidate.parents:
                    return candidate
    sibling = lock.with_suffix(".in")
    return sibling if sibling.is_file() else None


def _compile_command(text: str, source: str, lock: str) -> str:
    """The command the lock's header says made it, else pip-compile's."""
    for line in text.splitlines()[:20]:
        command = line.lstrip("# \t").strip()
        if command.startswith(("pip-compile", "uv pip compile")):
            return command
    return f"pip-compile {source} -o {lock}"


def plan_dependencies(
    root: Path, wanted: list[str], start: Path | None = None, *, uses_uvicorn: bool = False
) -> DependencyEdit:
    """The runtime packages added to each file the project installs from (the first in
    `path`/`old`/`new`, the others in `more`), with notes saying why those files."""
    root = root.resolve()
    truth = read_dependency_truth(root, start)
    targets = edit_targets(root, start)
    if not targets:
        additions, notes = choose_requirements(
            _with_uvicorn(wanted, [], uses_uvicorn), [], truth=truth
        )
        message = f"no dependency list found: install {' '.join(additions)}"
        return DependencyEdit(None, "", "", [], [*notes, message])
    edits = [_edit_one(root, t, wanted, truth, uses_uvicorn=uses_uvicorn) for t in targets]
    first = edits[0]
    for other in edits[1:]:
        if other.new != other.old and other.path is not None:
            first.more[other.path] = (other.old, other.new)
        first.added += [r for r in other.added if r not in first.added]
        first.notes += [n for n in other.notes if n not in first.notes]
        first.next_steps += [s for s in other.next_steps if s not in first.next_steps]
    return first


def _with_uvicorn(wanted: list[str], existing: list[str], uses_uvicorn: bool) -> list[str]:
    if uses_uvicorn and not _declares_uvicorn(existing):
        return [*wanted, "uvicorn>=0.30"]
    return wanted


def _edit_one(
    root: Path, target: EditTarget, wanted: list[str], truth: DependencyTruth, *, uses_uvicorn: bool
) -> DependencyEdit:
    wanted = _with_uvicorn(wanted, target.existing, uses_uvicorn)
    additions, notes = choose_requirements(wanted, target.existing, truth=truth)
    rel = target.path.relative_to(root).as_posix()
    text = target.text
    if target.why:
        notes.append(f"dependencies go into {rel}: {target.why}")
    if not additions:
        return DependencyEdit(rel, text, text, [], notes)
    if target.kind == "pep621":
        new = _pep621(text, additions)
    elif target.kind == "poetry":
        new = _poetry(text, additions)
    else:
        new = _requirements_txt(text, additions)
    edit = DependencyEdit(rel, text, new, additions, notes)
    if target.unpinned_lock:
        edit.notes.append(
            f"{rel} is a lock (every line pinned) with no .in source: the new packages are "
            "added unpinned; re-lock it so they get pins too"
        )
    if target.relock:
        edit.next_steps.append(target.relock)
    for lock, command in LOCK_COMMANDS.items():
        if (target.path.parent / lock).is_file():
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
