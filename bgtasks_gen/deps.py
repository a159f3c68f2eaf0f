"""Add the runner's packages to the project's dependency list, keeping its formatting.

Three places are understood: PEP 621 `[project] dependencies` (uv, hatch, pdm, setuptools),
poetry's `[tool.poetry.dependencies]` table, and `requirements.txt`. The edit is textual
and minimal (new lines inserted where the list ends), so comments and order survive.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bgtasks_gen.errors import BadInput

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
LOCK_COMMANDS = {"uv.lock": "uv lock", "poetry.lock": "poetry lock", "pdm.lock": "pdm lock"}

# celery 5.7 (kombu 5.7's [redis] extra) needs redis-py >= 6.4; arq 0.28 needs redis-py < 6.
# One release back they meet: celery 5.6.3 / kombu 5.6.2 accept redis 5.x.
CELERY_BESIDE_ARQ = "celery[redis]>=5.6,<5.7"
WHY_CELERY_56 = (
    "celery 5.7 needs redis-py >= 6.4 and arq needs redis-py < 6, so beside arq "
    f"bgtasks adds {CELERY_BESIDE_ARQ} (celery 5.6.3 and kombu 5.6.2 accept redis-py 5)"
)


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


def _declared(root: Path) -> tuple[str | None, str, list[str]]:
    """(file, text, requirement strings) of the first dependency list found."""
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        text = pyproject.read_text(encoding="utf-8")
        data = tomllib.loads(text)
        project = data.get("project", {})
        if isinstance(project, dict) and isinstance(project.get("dependencies"), list):
            return "pyproject.toml", text, [str(d) for d in project["dependencies"]]
        poetry = data.get("tool", {}).get("poetry", {}).get("dependencies")
        if isinstance(poetry, dict):
            return "pyproject.toml:poetry", text, [str(k) for k in poetry if k != "python"]
    for name in ("requirements.in", "requirements.txt"):
        path = root / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            lines = [line.split("#")[0].strip() for line in text.splitlines()]
            return name, text, [line for line in lines if line and not line.startswith("-")]
    return None, "", []


def choose_requirements(wanted: list[str], existing: list[str]) -> tuple[list[str], list[str]]:
    """The requirements to add given what the project has, and notes explaining choices.

    Raises BadInput when the runner cannot be installed beside what is there.
    """
    names = {requirement_name(r): r for r in existing}
    notes: list[str] = []
    chosen = []
    for requirement in wanted:
        name = requirement_name(requirement)
        if name == "celery" and "arq" in names:
            requirement = CELERY_BESIDE_ARQ
            notes.append(WHY_CELERY_56)
        if name == "arq" and "celery" in names and not _pins_celery_56(names["celery"]):
            raise BadInput(
                "arq cannot be installed beside celery 5.7 in one environment: celery 5.7 "
                "needs redis-py >= 6.4 and arq needs redis-py < 6",
                f"pin {CELERY_BESIDE_ARQ} in your dependencies first (celery 5.6 accepts "
                "redis-py 5), or run the arq worker from its own environment and pass --no-deps",
            )
        if name in names:
            continue  # already declared: left as the project has it
        chosen.append(requirement)
    return chosen, notes


def _pins_celery_56(requirement: str) -> bool:
    return bool(re.search(r"<\s*5\.7|==\s*5\.[0-6]|~=\s*5\.6", requirement))


def _pep621(text: str, additions: list[str]) -> str:
    """Insert requirement strings at the end of `[project] dependencies = [...]`."""
    section = re.search(r"(?m)^\[project\]\s*$", text)
    if section is None:
        raise BadInput("pyproject.toml has no [project] table to add dependencies to")
    match = re.compile(r"(?m)^dependencies\s*=\s*\[").search(text, section.end())
    if match is None:
        raise BadInput("cannot find `dependencies = [` under [project] in pyproject.toml")
    close = _closing_bracket(text, match.end())
    body = text[match.end() : close]
    quote = "'" if body.strip().startswith("'") else '"'
    items = [f"{quote}{r}{quote}" for r in additions]
    if "\n" not in body:  # an inline list: dependencies = ["a", "b"]
        existing = body.strip().rstrip(",").strip()
        return (
            text[: match.end()]
            + ", ".join([existing, *items] if existing else items)
            + text[close:]
        )
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
    lines[position:position] = [f"{indent}{item}," for item in items]
    return text[: match.end()] + "\n".join(lines) + text[close:]


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


def _poetry(text: str, additions: list[str]) -> str:
    header = re.search(r"(?m)^\[tool\.poetry\.dependencies\]\s*$", text)
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


def plan_dependencies(root: Path, wanted: list[str]) -> DependencyEdit:
    where, text, existing = _declared(root)
    additions, notes = choose_requirements(wanted, existing)
    if where is None:
        return DependencyEdit(
            None, "", "", [], notes + [f"no dependency list found: install {' '.join(additions)}"]
        )
    if not additions:
        path = where.partition(":")[0]
        return DependencyEdit(path, text, text, [], notes)
    if where == "pyproject.toml":
        new = _pep621(text, additions)
    elif where == "pyproject.toml:poetry":
        new = _poetry(text, additions)
    else:
        new = _requirements_txt(text, additions)
    edit = DependencyEdit(where.partition(":")[0], text, new, additions, notes)
    for lock, command in LOCK_COMMANDS.items():
        if (root / lock).is_file():
            edit.next_steps.append(f"{command}  # {lock} is stale after the dependency edit")
    return edit
