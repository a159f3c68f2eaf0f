"""Generated Python in the project's own ruff style.

The templates are written to ruff's defaults (line length 88, double quotes, isort
order, py311 syntax), so a project without a ruff configuration gets code that passes
`ruff check` and `ruff format --check` as it is. A project that configures ruff
(`ruff.toml`, `.ruff.toml`, or `[tool.ruff]` in pyproject.toml) gets every generated
module passed through ruff with its configuration before anything is written: its safe fixes
(`ruff check --fix-only`: import order with its first-party settings, its target
version's syntax, ...) and then its formatter (line length, quote style). It all happens
in memory, through ruff's stdin; nothing is written until the plan is applied.

The ruff that runs is bgtasks' own (a dependency of bgtasks), or the one the user names
in $BGTASKS_RUFF; never one the project ships (its .venv or venv, or a PATH entry that may
be its activated venv): opening a cloned repository, even with a read-only command, must
not run its code. Only the project's configuration is used, and ruff reads it as data.
Without a ruff the files stay in ruff's default style and a note says so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bgtasks_gen.errors import BadInput

TIMEOUT_SECONDS = 20
RUFF_VARIABLE = "BGTASKS_RUFF"
OWN = "bgtasks' own"
_EXE = "ruff.exe" if os.name == "nt" else "ruff"


def ruff_config(root: Path) -> Path | None:
    """The project's ruff configuration file, as ruff itself would pick it in `root`."""
    for name in (".ruff.toml", "ruff.toml"):
        if (root / name).is_file():
            return root / name
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            return None
        tool = data.get("tool")
        if isinstance(tool, dict) and isinstance(tool.get("ruff"), dict):
            return pyproject
    return None


@dataclass(frozen=True)
class Ruff:
    path: str
    origin: str  # OWN, or the variable that named it


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _own_ruff() -> str | None:
    """The binary of the ruff package bgtasks depends on, where that package installed it;
    else the one beside bgtasks' interpreter (an environment without the package's module)."""
    try:
        from ruff import find_ruff_bin  # type: ignore[import-untyped]

        found: Path | None = Path(str(find_ruff_bin()))
    except (ImportError, FileNotFoundError):
        found = None
    if found is not None and _executable(found):
        return str(found)
    # not resolved: a venv's python is a link to the base interpreter, elsewhere
    beside = Path(sys.executable).parent / _EXE
    return str(beside) if _executable(beside) else None


def find_ruff(environ: Mapping[str, str] | None = None) -> Ruff | None:
    """The ruff named by $BGTASKS_RUFF, else bgtasks' own; None without either.

    Never looked up in the project or on PATH: both can hold the project's own binaries.
    """
    environ = os.environ if environ is None else environ
    named = environ.get(RUFF_VARIABLE, "")
    if named:
        path = Path(named).expanduser()
        if not _executable(path):
            raise BadInput(
                f"{RUFF_VARIABLE}={named}: no executable ruff there",
                f"set {RUFF_VARIABLE} to the full path of a ruff executable, or unset it to "
                "use bgtasks' own ruff",
            )
        return Ruff(str(path.absolute()), f"${RUFF_VARIABLE}")
    own = _own_ruff()
    return Ruff(own, OWN) if own is not None else None


@functools.cache
def ruff_version(path: str) -> str:
    """`ruff --version` of the binary at `path`, e.g. "ruff 0.6.9"; "ruff" if it will not say."""
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "ruff"
    words = done.stdout.split()
    return " ".join(words[:2]) if done.returncode == 0 and len(words) >= 2 else "ruff"


def _known_first_party(config: Path) -> list[str]:
    """The project's own `known-first-party` list (isort settings), or []."""
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        return []
    if config.name == "pyproject.toml":
        tool = data.get("tool", {})
        data = tool.get("ruff", {}) if isinstance(tool, dict) else {}
    lint = data.get("lint", {}) if isinstance(data, dict) else {}
    for table in (lint.get("isort") if isinstance(lint, dict) else None, data.get("isort")):
        names = table.get("known-first-party") if isinstance(table, dict) else None
        if isinstance(names, list):
            return [name for name in names if isinstance(name, str)]
    return []


class ProjectStyle:
    """Applies the project's ruff configuration to generated modules, through bgtasks' own
    ruff (or $BGTASKS_RUFF); a no-op without a configuration.

    `first_party`: the top-level packages the generated modules live in. ruff tells first-
    from third-party imports by what is on disk, and the generated modules are not yet:
    they are named first-party explicitly, beside the project's own list.
    """

    def __init__(
        self,
        root: Path,
        first_party: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.config = ruff_config(root)
        # looked up even without a configuration: a wrong $BGTASKS_RUFF is said at once
        found = find_ruff(environ)
        self.ruff = found if self.config is not None else None
        # the project's own list and the generated packages, read once for every module
        wanted = set(first_party)
        if self.config is not None and self.ruff is not None and wanted:
            wanted |= set(_known_first_party(self.config))
        self.first_party = sorted(wanted)
        self._problems: list[str] = []
        self._done: dict[tuple[str, str], str] = {}
        self._failed = False
        self._styled_generated = False
        if self.config is not None and self.ruff is None:
            self._problems.append(
                f"{self.config.name} configures ruff, but bgtasks' own ruff is missing from "
                f"its environment (reinstall bgtasks, or set {RUFF_VARIABLE} to a ruff "
                "executable): the generated code is in ruff's default style; run "
                "`ruff check --fix` and `ruff format` on it"
            )

    @property
    def active(self) -> bool:
        return self.ruff is not None and not self._failed

    @property
    def notes(self) -> list[str]:
        """What the user is told: which ruff styled the code, or why none did."""
        if self.active and self._styled_generated:
            assert self.ruff is not None and self.config is not None
            version = ruff_version(self.ruff.path)
            return [
                f"generated code formatted with {version} ({self.ruff.origin}: "
                f"{self.ruff.path}) using the project's {self.config.name}"
            ]
        return list(self._problems)

    def _run(self, args: list[str], rel: str, text: str) -> str | None:
        assert self.ruff is not None and self.config is not None
        command = [self.ruff.path, *args, "--config", str(self.config)]
        if self.first_party and args[0] == "check":
            names = json.dumps(self.first_party)
            command += ["--config", f"lint.isort.known-first-party = {names}"]
        command += ["--stdin-filename", str(self.root / rel), "-"]
        try:
            done = subprocess.run(
                command,
                input=text,
                capture_output=True,
                text=True,
                encoding="utf-8",
                cwd=self.root,
                timeout=TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._give_up(f"{Path(self.ruff.path).name} could not run ({exc})")
            return None
        if done.returncode not in (0, 1):
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            self._give_up(f"ruff refused the project's configuration: {first}")
            return None
        if text.strip() and not done.stdout.strip():
            # ruff echoes what it reads: an empty answer would empty the module
            self._give_up(f"{self.ruff.path} answered nothing for {rel}")
            return None
        return done.stdout

    def _give_up(self, why: str) -> None:
        self._failed = True
        self._problems.append(f"{why}; the generated code is in ruff's default style")

    def _styled(self, rel: str, text: str) -> str:
        if not rel.endswith(".py") or not self.active:
            return text
        key = (rel, hashlib.sha256(text.encode()).hexdigest())
        if key in self._done:
            return self._done[key]
        fixed = self._run(["check", "--fix-only", "--quiet", "--no-cache"], rel, text)
        formatted = None if fixed is None else self._run(["format", "--no-cache"], rel, fixed)
        result = text if formatted is None else formatted
        self._done[key] = result
        return result

    def apply(self, rel: str, text: str) -> str:
        """`text` (the module at `rel`) fixed and formatted in the project's ruff style."""
        result = self._styled(rel, text)
        self._styled_generated = self._styled_generated or (rel.endswith(".py") and self.active)
        return result

    def apply_to_edit(self, rel: str, old: str, new: str) -> str:
        """One of the user's modules that bgtasks edits: styled only when the project's
        style already leaves the original as it is, so only bgtasks' lines can change."""
        if not rel.endswith(".py") or not self.active or self._styled(rel, old) != old:
            return new
        return self.apply(rel, new)

    def apply_all(self, files: dict[str, str]) -> dict[str, str]:
        return {rel: self.apply(rel, text) for rel, text in files.items()}
