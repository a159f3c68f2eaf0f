"""Which dependency files the project's own install commands use.

A project's truth is the file its Dockerfile, CI or Makefile installs from, not the first
list found on disk: a `requirements.txt` that the image installs while `pyproject.toml`
only names the project is where new packages must go. Read statically (nothing is run):
Dockerfiles (also those a compose file builds), Makefiles and GitHub workflow steps,
looking for `pip install -r FILE` (also `uv pip install`, `python -m pip`, `pip-sync`,
`uv pip sync`), `pip install .` and `uv sync` / `poetry install` / `pdm install`
(those install pyproject.toml).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# folders never searched for Dockerfiles: dependencies, caches, test fixtures and examples
# are not what the project itself runs
SKIPPED_FOLDERS = frozenset(
    {"node_modules", "site-packages", "__pycache__", "venv", "env", "tests", "test", "examples"}
)
DOCKERFILE = re.compile(r"^(Dockerfile(\..+)?|.+\.[Dd]ockerfile)$")
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
MAKEFILES = ("Makefile", "makefile", "GNUmakefile")
# commands that install what pyproject.toml declares, wherever they run
PYPROJECT_INSTALLERS = re.compile(r"\b(uv\s+sync|poetry\s+install|pdm\s+(install|sync))\b")
PIP = re.compile(r"\b(?:uv\s+pip|pip3?|python3?(?:\.\d+)?\s+-m\s+pip)\s+(install|sync)\b")


@dataclass(frozen=True)
class InstallUse:
    """One dependency file an install command of the project uses."""

    path: str  # relative to the project root, "requirements.txt" or "pyproject.toml"
    evidence: str  # where the command is, "Dockerfile:7"
    command: str  # the command as written (continuation lines joined)


def install_files(root: Path) -> tuple[InstallUse, ...]:
    """The dependency files the project's install commands use, each once, in the order
    found: Dockerfiles first (what production runs), then Makefiles, then CI."""
    root = root.resolve()
    uses: dict[str, InstallUse] = {}
    for script, context in _scripts(root):
        for line_number, command in _commands(script):
            for rel in _files_used(command, root, context, script):
                evidence = f"{script.relative_to(root).as_posix()}:{line_number}"
                uses.setdefault(rel, InstallUse(rel, evidence, command))
    return tuple(uses.values())


def _scripts(root: Path) -> list[tuple[Path, Path]]:
    """(file holding install commands, the folder its relative paths start from)."""
    # a Dockerfile's paths start from its build context: its own folder unless a
    # compose file that builds it says otherwise
    contexts = {dockerfile: dockerfile.parent for dockerfile in _dockerfiles(root)}
    contexts.update(_compose_builds(root))
    found = list(contexts.items())
    found += [(root / name, root) for name in MAKEFILES if (root / name).is_file()]
    workflows = root / ".github" / "workflows"
    if workflows.is_dir():
        found += [
            (path, root)
            for path in sorted(workflows.iterdir())
            if path.suffix in (".yml", ".yaml") and path.is_file()
        ]
    return found


def _dockerfiles(root: Path, depth: int = 2) -> list[Path]:
    found = []
    for folder, folders, files in os.walk(root):
        here = Path(folder)
        level = len(here.relative_to(root).parts)
        folders[:] = sorted(
            name
            for name in folders
            if level < depth and not name.startswith(".") and name not in SKIPPED_FOLDERS
        )
        found += [here / name for name in sorted(files) if DOCKERFILE.match(name)]
    return found


def _compose_builds(root: Path) -> dict[Path, Path]:
    """Dockerfile -> build context, for every service a compose file builds."""
    import yaml

    builds: dict[Path, Path] = {}
    for name in COMPOSE_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
            continue  # run files refuse it with the reason when they read it
        services = data.get("services") if isinstance(data, dict) else None
        for service in services.values() if isinstance(services, dict) else ():
            build = service.get("build") if isinstance(service, dict) else None
            if isinstance(build, str):
                build = {"context": build}
            if not isinstance(build, dict):
                continue
            context = (root / str(build.get("context", "."))).resolve()
            dockerfile = (context / str(build.get("dockerfile", "Dockerfile"))).resolve()
            if dockerfile.is_file() and root in dockerfile.parents:
                builds[dockerfile] = context
    return builds


def _commands(script: Path) -> list[tuple[int, str]]:
    """(line number, command) per install command, continuation lines joined."""
    try:
        lines = script.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    commands: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if not pending:
            start = number
        stripped = line.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined = (pending + stripped).strip()
        pending = ""
        for part in re.split(r"&&|\|\||;", joined):
            if PIP.search(part) or PYPROJECT_INSTALLERS.search(part):
                commands.append((start, part.strip()))
    return commands


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote: plain words still say enough
        return command.split()


def _files_used(command: str, root: Path, context: Path, script: Path) -> list[str]:
    """The project files `command` installs from, relative to the root."""
    named: list[str] = []
    if PYPROJECT_INSTALLERS.search(command):
        named.append("pyproject.toml")
    pip = PIP.search(command)
    if pip is not None:
        words = _words(command[pip.end() :])
        sync = pip.group(1) == "sync"
        position = 0
        while position < len(words):
            word = words[position]
            value = ""
            if word in ("-r", "--requirement") and position + 1 < len(words):
                value = words[position + 1]
                position += 1
            elif word.startswith("--requirement="):
                value = word.partition("=")[2]
            elif word.startswith("-r") and len(word) > 2 and not word.startswith("--"):
                value = word[2:]
            elif word in ("-e", "--editable") and position + 1 < len(words):
                value = _project_folder(words[position + 1])
                position += 1
            elif not word.startswith("-"):
                # pip-sync / uv pip sync take requirement files; install takes a folder
                value = word if sync else _project_folder(word)
            if value:
                named.append(value)
            position += 1
    found = []
    for name in named:
        rel = _resolve(name, root, context, script)
        if rel is not None:
            found.append(rel)
    return found


def _project_folder(word: str) -> str:
    """`.`, `./backend`, `.[dev]` or an image's `/app` install the pyproject.toml
    there; "" for anything else (a package name, a wheel)."""
    folder = re.sub(r"\[[^\]]*\]$", "", word).rstrip("/") or "/"
    if folder == "." or (folder.startswith(("./", "/")) and "." not in Path(folder).name):
        return f"{folder}/pyproject.toml"
    return ""


def _resolve(name: str, root: Path, context: Path, script: Path) -> str | None:
    """The project file a path in a command means. Inside an image the path is where a
    COPY put it, so a file of the same name in the build context stands for it."""
    if "$" in name or "://" in name:
        return None
    candidates = [context / name.lstrip("/")]
    if DOCKERFILE.match(script.name):
        candidates += [context / Path(name).name, script.parent / Path(name).name]
    for candidate in candidates:
        path = candidate.resolve()
        if path.is_file() and (path == root or root in path.parents):
            return path.relative_to(root).as_posix()
    return None
