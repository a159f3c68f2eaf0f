"""Resolve the project's dependencies after the planned edit, before anything is written.

The requirement set is what the project's install commands read once the edit is made
(its runtime dependency lists, the runner's packages among them), with the versions its
lock pins held fixed. pip's own resolver answers, run by bgtasks' interpreter as
`pip install --dry-run --report` for the project's Python (`--python-version`, which pip
accepts only with `--only-binary=:all:`): nothing is installed and no project code runs.

Outcomes: the set resolves (a note with the package count and the time), it cannot
resolve (the two requirements that collide, and the ways out), or the answer is not
known (index unreachable, pip missing or failing, out of time: a note, and init goes on).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from bgtasks_gen.dependency_truth import (
    lowest_allowed,
    poetry_specifier,
    pyproject_requirements,
    read_dependency_truth,
    requirement_lines,
)
from bgtasks_gen.plan import Plan

TIMEOUT_VARIABLE = "BGTASKS_RESOLVE_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
# the whole-set resolution gets this share of the time; when pip is still backtracking
# then, the rest goes to resolving the runner's packages beside the project's
# constraints on the same packages, which finds a collision in seconds
FIRST_SHARE = 0.6
PIP_SOCKET_TIMEOUT = "15"

RESOLVED, CONFLICT, UNVERIFIED, SKIPPED = "resolved", "conflict", "unverified", "skipped"


# -- plain data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    """One requirement handed to pip, and where it comes from."""

    text: str  # as pip is given it
    origin: str  # "added by bgtasks", "declared in pyproject.toml", "... pinned by uv.lock"
    added: bool = False  # the planned edit adds it

    @property
    def name(self) -> str:
        return _canonical_name(self.text)


@dataclass(frozen=True)
class ResolveRequest:
    requirements: tuple[Wanted, ...]
    python: str  # "3.11"
    python_from: str  # why that version: "requires-python >=3.11", "Dockerfile FROM ..."
    timeout: float
    interpreter: str = sys.executable


@dataclass(frozen=True)
class Verdict:
    outcome: str  # resolved | conflict | unverified | skipped
    message: str  # the note, or the refusal
    hint: str = ""  # the ways out, for a conflict
    packages: int = 0
    seconds: float = 0.0
    collision: tuple[str, ...] = ()  # the requirement texts that collide

    @property
    def refuses(self) -> bool:
        return self.outcome == CONFLICT


# -- the request, read from a plan -------------------------------------------------------------


def resolve_timeout(environ: Mapping[str, str] | None = None) -> float:
    """BGTASKS_RESOLVE_TIMEOUT in seconds (0 turns resolution off); 60 by default."""
    environ = os.environ if environ is None else environ
    raw = environ.get(TIMEOUT_VARIABLE, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT
    return max(value, 0.0)


def project_python(root: Path, running: tuple[int, int] | None = None) -> tuple[str, str]:
    """(X.Y, why) of the Python the project runs on: the lowest its requires-python (or
    poetry's `python`) allows, else its Dockerfile's `FROM python:X.Y`, else this one."""
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            data = {}
        project = data.get("project")
        declared = project.get("requires-python") if isinstance(project, dict) else None
        tool = data.get("tool")
        poetry = tool.get("poetry") if isinstance(tool, dict) else None
        poetry_deps = poetry.get("dependencies") if isinstance(poetry, dict) else None
        poetry_python = poetry_deps.get("python") if isinstance(poetry_deps, dict) else None
        for written, spec_of, label in (
            (declared, _pep440, "requires-python"),
            (poetry_python, poetry_specifier, "poetry's python"),
        ):
            if isinstance(written, str):
                lowest = lowest_allowed(spec_of(written))
                if lowest is not None:
                    major, minor = (*lowest.release, 0)[:2]
                    return f"{major}.{minor}", f"the lowest {label} {written.strip()} allows"
    from bgtasks_gen.runfiles import dockerfile

    found = dockerfile(root)
    if found is not None:
        try:
            text = (root / found).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        images = re.findall(r"(?im)^\s*FROM\s+(?:--\S+\s+)*(?:\S+/)?python:(\d+)\.(\d+)", text)
        if images:
            major, minor = images[-1]
            return f"{major}.{minor}", f"{found}: FROM python:{major}.{minor}"
    major, minor = running or sys.version_info[:2]
    return f"{major}.{minor}", "the Python running bgtasks (the project names none)"


def _pep440(text: str) -> SpecifierSet:
    try:
        return SpecifierSet(text)
    except ValueError:
        return SpecifierSet()


def planned_requirements(plan: Plan) -> list[Wanted]:
    """The runtime requirements the project's install commands read once the plan is
    written, each declared package its lock pins held at the locked version."""
    from bgtasks_gen.deps import edit_targets

    root = plan.root.resolve()
    source = _source_root(plan)
    planned = {c.path: c.new for c in plan.changes if c.writes and not c.removes}
    truth = read_dependency_truth(root, source)
    wanted: dict[str, Wanted] = {}
    for target in edit_targets(root, source):
        rel = target.path.relative_to(root).as_posix()
        before = _requirements_of(target.path.name, target.text)
        after = _requirements_of(target.path.name, planned.get(rel, target.text))
        old_names = {_canonical_name(r) for r in before}
        for text in after:
            name = _canonical_name(text)
            if not name or name in wanted:
                continue
            added = name not in old_names
            origin = "added by bgtasks" if added else f"declared in {rel}"
            package = truth.get(name)
            if not added and package is not None and package.locked is not None:
                pinned = _pinned(text, str(package.locked))
                if pinned is not None:
                    text = pinned
                    origin = f"{origin}, {package.locked_from} pins {package.locked}"
            wanted[name] = Wanted(text, origin, added)
    return list(wanted.values())


def _source_root(plan: Plan) -> Path:
    """The app's source folder, as the planned state file records it."""
    from bgtasks_gen.state import STATE_FILE

    for change in plan.changes:
        if change.path == STATE_FILE:
            try:
                layout = tomllib.loads(change.new).get("layout", {})
            except tomllib.TOMLDecodeError:
                break
            folder = layout.get("source_root") if isinstance(layout, dict) else None
            if isinstance(folder, str):
                return (plan.root / folder).resolve()
    return plan.root.resolve()


def _requirements_of(filename: str, text: str) -> list[str]:
    """Named requirements pip can be given (URLs, paths and options left out)."""
    if filename == "pyproject.toml":
        found = pyproject_requirements(text)
        lines = found[1] if found else []
    else:
        lines = requirement_lines(text)
    usable = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.url is None and canonicalize_name(requirement.name) != "python":
            usable.append(line.strip())  # as the project writes it
    return usable


def _pinned(text: str, version: str) -> str | None:
    """`text` held at `version`; None when the declared range rules it out (a stale lock:
    the re-lock moves it, so the declared range is what counts)."""
    requirement = Requirement(text)
    if not requirement.specifier.contains(version, prereleases=True):
        return None
    requirement.specifier = SpecifierSet(f"=={version}")
    return str(requirement)


def _canonical_name(text: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    return str(canonicalize_name(match.group(1))) if match else ""


# -- pip -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipRun:
    returncode: int | None  # None: killed at the deadline
    output: str  # stdout and stderr together
    report: Mapping[str, object] | None
    seconds: float


def pip_command(
    interpreter: str, python: str, requirements: Sequence[str], report: Path
) -> list[str]:
    return [
        interpreter,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--report",
        str(report),
        "--python-version",
        python,
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--timeout",
        PIP_SOCKET_TIMEOUT,
        *requirements,
    ]


def run_pip(interpreter: str, python: str, requirements: Sequence[str], timeout: float) -> PipRun:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bgtasks-resolve-") as folder:
        report = Path(folder) / "report.json"
        command = pip_command(interpreter, python, requirements, report)
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=max(timeout, 1.0),
                stdin=subprocess.DEVNULL,
                cwd=folder,
            )
        except subprocess.TimeoutExpired as expired:
            partial = _text(expired.stdout) + _text(expired.stderr)
            return PipRun(None, partial, None, time.monotonic() - started)
        except OSError as error:
            return PipRun(127, str(error), None, time.monotonic() - started)
        parsed: Mapping[str, object] | None = None
        if result.returncode == 0 and report.is_file():
            try:
                parsed = json.loads(report.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                parsed = None
    output = result.stdout + "\n" + result.stderr
    return PipRun(result.returncode, output, parsed, time.monotonic() - started)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def report_packages(report: Mapping[str, object]) -> list[tuple[str, str]]:
    """(name, version) of every distribution a `pip install --report` would install."""
    install = report.get("install")
    found = []
    for item in install if isinstance(install, list) else []:
        metadata = item.get("metadata") if isinstance(item, dict) else None
        if isinstance(metadata, dict) and "name" in metadata:
            found.append((str(metadata["name"]), str(metadata.get("version", ""))))
    return found


# -- pip's ResolutionImpossible output --------------------------------------------------------


@dataclass(frozen=True)
class Collision:
    """What pip says caused a ResolutionImpossible."""

    requested: tuple[str, ...]  # "The user requested X" lines: top-level requirements
    causes: tuple[tuple[str, str], ...]  # (package, "kombu[redis] 5.7.0 depends on ...")
    roots: Mapping[str, str]  # canonical package name -> the top-level requirement it came from


CAUSED_BY = "The conflict is caused by:"
DEPENDS = re.compile(r"^(\S+?)(?:\[[^\]]*\])?\s+(\S+)\s+depends on\s+(.+)$")
COLLECTING = re.compile(
    r"^(?:Collecting|Requirement already satisfied:)\s+(\S+).*\(from (.+)\)\s*$"
)


def parse_conflict(output: str) -> Collision | None:
    """The causes of a ResolutionImpossible in pip's output; None for any other failure."""
    if "ResolutionImpossible" not in output:
        return None
    lines = output.splitlines()
    requested: list[str] = []
    causes: list[tuple[str, str]] = []
    if CAUSED_BY in output:
        start = next(i for i, line in enumerate(lines) if line.strip() == CAUSED_BY)
        for line in lines[start + 1 :]:
            text = line.strip()
            if not text:
                break
            if text.startswith("The user requested "):
                requested.append(text.removeprefix("The user requested ").strip())
                continue
            match = DEPENDS.match(text)
            if match:
                causes.append((str(canonicalize_name(match.group(1))), text))
    roots: dict[str, str] = {}
    for line in lines:
        match = COLLECTING.match(line.strip())
        if match:
            chain = [part.strip() for part in match.group(2).split("->")]
            roots.setdefault(_canonical_name(match.group(1)), chain[-1])
    return Collision(tuple(requested), tuple(causes), roots)


def colliding(collision: Collision, wanted: Sequence[Wanted]) -> list[Wanted]:
    """The requirements of ours that collide: those the user-requested lines name, and
    the top-level requirement each conflicting dependency came from."""
    by_name = {w.name: w for w in wanted}
    found: list[Wanted] = []

    def take(requirement_text: str) -> None:
        item = by_name.get(_canonical_name(requirement_text))
        if item is not None and item not in found:
            found.append(item)

    for package, _ in collision.causes:
        if package in by_name:
            take(package)
        elif package in collision.roots:
            take(collision.roots[package])
    for text in collision.requested:
        take(text)
    # one bgtasks adds and one the project has, when both sides are there
    added = [w for w in found if w.added]
    kept = [w for w in found if not w.added]
    if added and kept:
        return [added[0], kept[0]]
    return found[:2]


# -- the stage -------------------------------------------------------------------------------


def resolve(request: ResolveRequest) -> Verdict:
    """pip's verdict on the request, within its time; never raises for pip's failures."""
    if request.timeout <= 0:
        return Verdict(SKIPPED, "")  # turned off: BGTASKS_RESOLVE_TIMEOUT=0
    if not request.requirements:
        return Verdict(SKIPPED, "resolution not verified: the project declares no dependencies")
    deadline = time.monotonic() + request.timeout
    texts = [w.text for w in request.requirements]
    first = run_pip(request.interpreter, request.python, texts, request.timeout * FIRST_SHARE)
    if first.returncode == 0 and first.report is not None:
        count = len(report_packages(first.report))
        return Verdict(
            RESOLVED,
            f"dependencies resolve with pip for Python {request.python} ({count} packages, "
            f"{first.seconds:.1f} s); Python {request.python}: {request.python_from}",
            packages=count,
            seconds=first.seconds,
        )
    collision = parse_conflict(first.output)
    if collision is not None:
        return _conflict(request, collision, first.seconds)
    if first.returncode is not None:
        return Verdict(UNVERIFIED, f"resolution not verified: {_pip_reason(first)}")
    # still backtracking: the runner's packages beside the project's constraints on the
    # packages they bring finds a collision quickly
    focused = _focused(request, deadline)
    spent = request.timeout
    if focused is not None:
        return _conflict(request, focused, spent)
    return Verdict(
        UNVERIFIED,
        f"resolution not verified: pip did not finish within {request.timeout:.0f} s "
        f"(raise {TIMEOUT_VARIABLE})",
    )


def _focused(request: ResolveRequest, deadline: float) -> Collision | None:
    added = [w.text for w in request.requirements if w.added]
    if not added or deadline - time.monotonic() < 1:
        return None
    alone = run_pip(request.interpreter, request.python, added, deadline - time.monotonic())
    if alone.returncode != 0 or alone.report is None:
        return parse_conflict(alone.output)
    brought = {str(canonicalize_name(name)) for name, _ in report_packages(alone.report)}
    beside = [w.text for w in request.requirements if not w.added and w.name in brought]
    if not beside or deadline - time.monotonic() < 1:
        return None
    together = run_pip(
        request.interpreter, request.python, [*added, *beside], deadline - time.monotonic()
    )
    return parse_conflict(together.output)


def _conflict(request: ResolveRequest, collision: Collision, seconds: float) -> Verdict:
    pair = colliding(collision, request.requirements)
    named = " and ".join(f"{w.text} ({w.origin})" for w in pair) or "the requirements"
    because = "; ".join(text for _, text in collision.causes[:2])
    message = (
        f"the dependencies do not resolve for Python {request.python}: {named} cannot be "
        "installed together"
    ) + (f" ({because})" if because else "")
    runner_side = next((w for w in pair if w.added), None)
    hint = (
        "nothing was written; choose another runner (bgtasks runners compares them), or "
        "run the worker in an environment of its own: re-run with --no-deps and install "
        f"{runner_side.text if runner_side else 'the runner' + chr(39) + 's packages'} "
        "there"
    )
    return Verdict(CONFLICT, message, hint, seconds=seconds, collision=tuple(w.text for w in pair))


def _pip_reason(run: PipRun) -> str:
    output = run.output
    if "No module named pip" in output:
        return f"pip is not installed beside bgtasks ({sys.executable})"
    errors = [
        line.removeprefix("ERROR:").strip()
        for line in output.splitlines()
        if line.startswith("ERROR:")
    ]
    if errors:
        return f"pip failed: {errors[-1]}"[:300]
    last = [line for line in output.splitlines() if line.strip()]
    return f"pip exited {run.returncode}: {last[-1].strip() if last else 'no output'}"[:300]


def resolution_request(plan: Plan, environ: Mapping[str, str] | None = None) -> ResolveRequest:
    """What to ask pip about a planned init."""
    python, why = project_python(plan.root)
    return ResolveRequest(tuple(planned_requirements(plan)), python, why, resolve_timeout(environ))
