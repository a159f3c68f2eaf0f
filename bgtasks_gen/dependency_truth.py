"""What the project really runs: its constraints as written, and the versions its lock pins.

Feature choices (router lifespans, which taskiq-fastapi to add) must hold for the version
the project installs. That is the locked one when a lock exists (`uv.lock`, `poetry.lock`,
`pdm.lock`, then `name==X.Y.Z` lines of a requirements or constraints file), else the
oldest its constraints allow: `fastapi>=0.112.1` may well resolve to 0.112.1. Poetry's
caret and tilde constraints are turned into PEP 440 specifier sets once, here, so every
later version question is asked of `packaging`, never of the text.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

TOML_LOCKS = ("uv.lock", "poetry.lock", "pdm.lock")
PINNED_FILE_PATTERNS = ("requirements*.txt", "constraints*.txt", "requirements/*.txt")
# poetry's own operators; a bare version means exactly that version
POETRY_PART = re.compile(r"^(\^|~(?!=)|~=|>=|<=|==|!=|>|<|=)?\s*(.+)$")
RELEASE = re.compile(r"^(\d+(?:\.\d+)*)")


def poetry_specifier(constraint: str) -> SpecifierSet:
    """A poetry version constraint as a PEP 440 specifier set: `^0.103.2` is
    `>=0.103.2,<0.104`, `~1.2` is `>=1.2,<1.3`, `*` allows anything. An unreadable
    constraint allows anything too (it cannot be reasoned about)."""
    text = constraint.strip()
    if "||" in text:
        # a specifier set cannot say "or": decisions must hold for the alternative
        # that allows the oldest release
        alternatives = [poetry_specifier(part) for part in text.split("||")]
        return min(alternatives, key=lambda spec: lowest_allowed(spec) or Version("0"))
    specifiers: list[str] = []
    for part in re.split(r"\s*,\s*|\s+(?=[<>=!~^])", text):
        part = part.strip()
        if part in ("", "*"):
            continue
        match = POETRY_PART.match(part)
        if match is None:
            return SpecifierSet()
        operator, version = match.group(1) or "", match.group(2).strip()
        if operator == "^":
            specifiers += [f">={version}", f"<{_caret_ceiling(version)}"]
        elif operator == "~":
            specifiers += [f">={version}", f"<{_tilde_ceiling(version)}"]
        elif operator in ("", "="):
            specifiers.append(f"=={version}")
        else:
            specifiers.append(f"{operator}{version}")
    try:
        return SpecifierSet(",".join(specifiers))
    except InvalidSpecifier:
        return SpecifierSet()


def _release(version: str) -> list[int]:
    match = RELEASE.match(version)
    return [int(part) for part in match.group(1).split(".")] if match else [0]


def _caret_ceiling(version: str) -> str:
    """Below the next release of the first non-zero part (of the last part given when
    all are zero): ^1.2.3 -> 2, ^0.103.2 -> 0.104, ^0.0.3 -> 0.0.4, ^0 -> 1."""
    parts = _release(version)[:3]
    index = next((i for i, part in enumerate(parts) if part), len(parts) - 1)
    return ".".join(str(p) for p in [*parts[:index], parts[index] + 1])


def _tilde_ceiling(version: str) -> str:
    """~1 -> 2; ~1.2 and ~1.2.3 -> 1.3."""
    parts = _release(version)
    if len(parts) == 1:
        return str(parts[0] + 1)
    return f"{parts[0]}.{parts[1] + 1}"


def poetry_requirement(name: str, value: object) -> str:
    """A `[tool.poetry.dependencies]` entry as a PEP 508 requirement string: `fastapi =
    {version = "^0.110", extras = ["standard"]}` -> `fastapi[standard]<0.111,>=0.110`."""
    if isinstance(value, list):  # per-marker alternatives: the first speaks for them
        value = value[0] if value else "*"
    extras: list[str] = []
    constraint = "*"
    if isinstance(value, str):
        constraint = value
    elif isinstance(value, dict):
        constraint = str(value.get("version", "*"))
        found = value.get("extras", [])
        extras = [str(extra) for extra in found] if isinstance(found, list) else []
    extras_text = f"[{','.join(extras)}]" if extras else ""
    return f"{name}{extras_text}{poetry_specifier(constraint)}"


def requirement_specifier(requirement: str) -> SpecifierSet:
    """The specifier set of a requirement string; poetry's `^`/`~` are understood too
    (`fastapi^0.110`), anything unreadable allows every version."""
    try:
        return Requirement(requirement).specifier
    except InvalidRequirement:
        pass
    match = re.match(r"^\s*[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$", requirement)
    return poetry_specifier(match.group(2)) if match else SpecifierSet()


def lowest_allowed(spec: SpecifierSet) -> Version | None:
    """The oldest release `spec` allows, None when it sets no lower bound."""
    bounds: list[Version] = []
    for specifier in spec:
        text = specifier.version.removesuffix(".*")
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if specifier.operator in (">=", "~=", "==", "==="):
            bounds.append(version)
        elif specifier.operator == ">":
            major, minor, micro = (*version.release, 0, 0)[:3]
            bounds.append(Version(f"{major}.{minor}.{micro + 1}"))
    return max(bounds) if bounds else None


def caps_below(spec: SpecifierSet, version: str) -> bool:
    """True when `spec` rules out `version` and everything after it (an upper bound or a
    pin below it): `<0.110`, `==0.109.2`, `~=0.100.0`, `==0.100.*` below 0.112."""
    target = Version(version)
    for specifier in spec:
        operator, text = specifier.operator, specifier.version
        try:
            bound = Version(text.removesuffix(".*"))
        except InvalidVersion:
            continue
        if operator == "<" and bound <= target:
            return True
        if operator == "<=" and bound < target:
            return True
        if operator in ("==", "===") and not text.endswith(".*") and bound < target:
            return True
        prefix: tuple[int, ...] = ()
        if operator == "==" and text.endswith(".*"):
            prefix = bound.release
        elif operator == "~=":
            prefix = bound.release[:-1]
        if prefix and prefix < target.release[: len(prefix)]:
            return True
    return False


@dataclass(frozen=True)
class PackageTruth:
    """One package: its constraint as the project writes it, and the version locked."""

    name: str  # canonical
    constraint: SpecifierSet
    constraint_from: tuple[str, ...] = ()  # files declaring it, relative to the root
    locked: Version | None = None
    locked_from: str = ""  # the lock or pinned file, relative to the root

    @property
    def deciding(self) -> Version | None:
        """The version feature choices assume: the locked one, else the oldest allowed."""
        return self.locked if self.locked is not None else lowest_allowed(self.constraint)

    def runs_at_least(self, minimum: str) -> bool:
        deciding = self.deciding
        if deciding is not None:
            return deciding >= Version(minimum)
        # no lower bound and no lock: a fresh install takes the newest release allowed
        return not caps_below(self.constraint, minimum)

    @property
    def evidence(self) -> str:
        if self.locked is not None:
            return f"{self.locked_from} pins {self.name} {self.locked}"
        where = ", ".join(self.constraint_from) or "the project"
        written = f"{self.name}{self.constraint}" if str(self.constraint) else self.name
        lowest = lowest_allowed(self.constraint)
        if lowest is None:
            return f"{where} declares {written}"
        return f"{where} declares {written}, which allows {lowest} at the oldest"


@dataclass(frozen=True)
class DependencyTruth:
    """Every package the project declares or locks, by canonical name."""

    packages: Mapping[str, PackageTruth]

    def get(self, name: str) -> PackageTruth | None:
        return self.packages.get(str(canonicalize_name(name)))

    def runs_at_least(self, name: str, minimum: str) -> bool:
        """Whether the project runs `name` >= `minimum` (True when it says nothing of it:
        a fresh install takes the newest)."""
        package = self.get(name)
        return package is None or package.runs_at_least(minimum)

    def older_than(self, name: str, version: str) -> bool:
        """Whether the project runs, or may run, a `name` release older than `version`;
        False when it neither declares nor locks `name`."""
        package = self.get(name)
        return package is not None and not package.runs_at_least(version)

    def evidence(self, name: str) -> str:
        package = self.get(name)
        return package.evidence if package is not None else f"the project does not declare {name}"


def read_dependency_truth(root: Path, start: Path | None = None) -> DependencyTruth:
    """The project's dependency truth, from the files its install commands use (else
    the dependency list found from `start`, the app's source folder, up to `root`) and
    the nearest lock."""
    from bgtasks_gen.deps import dependency_list  # deps builds on this module's parsing
    from bgtasks_gen.install_files import install_files

    root = root.resolve()
    used = [root / use.path for use in install_files(root)]
    declared = dependency_list(root, start)
    files = [*used, *([declared] if declared is not None and declared not in used else [])]
    constraints: dict[str, SpecifierSet] = {}
    sources: dict[str, tuple[str, ...]] = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        for requirement in file_requirements(path):
            name = _name(requirement)
            if name:
                constraints[name] = constraints.get(name, SpecifierSet()) & requirement_specifier(
                    requirement
                )
                sources[name] = (*sources.get(name, ()), rel)
    locked = _locked_versions(root, _folders(root, start), used)
    packages = {
        name: PackageTruth(
            name,
            constraints.get(name, SpecifierSet()),
            sources.get(name, ()),
            *locked.get(name, (None, "")),
        )
        for name in sorted({*constraints, *locked})
    }
    return DependencyTruth(MappingProxyType(packages))


def _name(requirement: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return str(canonicalize_name(match.group(1))) if match else ""


def file_requirements(path: Path) -> list[str]:
    """The requirement strings a pyproject.toml ([project] or poetry) or requirements
    file declares, poetry's entries as PEP 508 strings."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    if path.name != "pyproject.toml":
        return requirement_lines(text)
    found = pyproject_requirements(text)
    return found[1] if found else []


def pyproject_requirements(text: str) -> tuple[str, list[str]] | None:
    """("pep621" or "poetry", requirement strings) of a pyproject.toml's runtime list."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    project = data.get("project", {})
    if isinstance(project, dict) and isinstance(project.get("dependencies"), list):
        return "pep621", [str(d) for d in project["dependencies"]]
    tool = data.get("tool", {})
    poetry = tool.get("poetry", {}).get("dependencies") if isinstance(tool, dict) else None
    if isinstance(poetry, dict):
        return "poetry", [poetry_requirement(k, v) for k, v in poetry.items() if k != "python"]
    return None


def requirement_lines(text: str) -> list[str]:
    """The requirements of a requirements file: comments, options (`-r`, `-e`) and
    per-line options (`--hash=...`) left out."""
    lines = []
    for line in text.splitlines():
        line = line.split(" #")[0].split("\t#")[0].strip().removesuffix("\\").strip()
        line = line.split(" --")[0].strip()
        if line and not line.startswith(("-", "#")):
            lines.append(line)
    return lines


def pinned_versions(text: str) -> dict[str, Version]:
    """name -> version of every `name==X.Y.Z` line (wildcards are not pins)."""
    pins: dict[str, Version] = {}
    for line in requirement_lines(text):
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        exact = [s for s in requirement.specifier if s.operator in ("==", "===")]
        if exact and not exact[0].version.endswith(".*"):
            try:
                pins[str(canonicalize_name(requirement.name))] = Version(exact[0].version)
            except InvalidVersion:
                continue
    return pins


def is_locked_requirements(text: str) -> bool:
    """A requirements file that is a lock: every requirement pinned with `==`."""
    lines = requirement_lines(text)
    return bool(lines) and len(pinned_versions(text)) == len(lines)


def _folders(root: Path, start: Path | None) -> list[Path]:
    """From `start` up to `root`, nearest first."""
    folder = (start or root).resolve()
    folders = [folder]
    while folder != root and root in folder.parents:
        folder = folder.parent
        folders.append(folder)
    return folders


def _locked_versions(
    root: Path, folders: list[Path], used: Iterable[Path]
) -> dict[str, tuple[Version, str]]:
    """name -> (version, file) from the nearest lock; pinned requirement files (those
    the install commands use first) fill in what no lock names."""
    locked: dict[str, tuple[Version, str]] = {}
    sources: list[Path] = [folder / lock for folder in folders for lock in TOML_LOCKS]
    sources += [path for path in used if path.name != "pyproject.toml"]
    for folder in folders:
        for pattern in PINNED_FILE_PATTERNS:
            sources += sorted(folder.glob(pattern))
    for path in sources:
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        versions = _toml_lock(path) if path.name in TOML_LOCKS else _pinned_file(path)
        for name, version in versions.items():
            locked.setdefault(name, (version, rel))
    return locked


def _toml_lock(path: Path) -> dict[str, Version]:
    """`[[package]] name = ..., version = ...` of uv.lock, poetry.lock and pdm.lock."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return {}
    versions: dict[str, Version] = {}
    packages = data.get("package", [])
    for package in packages if isinstance(packages, list) else []:
        if not isinstance(package, dict) or "name" not in package:
            continue
        try:
            version = Version(str(package.get("version", "")))
        except InvalidVersion:
            continue
        versions.setdefault(str(canonicalize_name(str(package["name"]))), version)
    return versions


def _pinned_file(path: Path) -> dict[str, Version]:
    try:
        return pinned_versions(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}
