"""Generated Python in the project's own ruff style.

The templates are written to ruff's defaults (line length 88, double quotes, isort
order, py311 syntax), so a project without a ruff configuration gets code that passes
`ruff check` and `ruff format --check` as it is. A project that configures ruff
(`ruff.toml`, `.ruff.toml`, or `[tool.ruff]` in pyproject.toml) gets every generated
module passed through its own ruff before anything is written: its safe fixes
(`ruff check --fix-only`: import order with its first-party settings, its target
version's syntax, ...) and then its formatter (line length, quote style). It all happens
in memory, through ruff's stdin; nothing is written until the plan is applied.

The ruff used is the project's (its .venv or venv), else the one on PATH, else the one
installed beside bgtasks; without one the files stay in ruff's default style and a note says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

TIMEOUT_SECONDS = 20
_BIN = "Scripts" if os.name == "nt" else "bin"
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


def find_ruff(root: Path) -> str | None:
    """The project's own ruff first; then PATH's; then the one beside bgtasks."""
    for folder in (root / ".venv" / _BIN, root / "venv" / _BIN):
        candidate = folder / _EXE
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("ruff")
    if found is not None:
        return found
    beside = Path(sys.executable).parent / _EXE
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


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
    """Applies the project's ruff to generated modules; a no-op without a configuration.

    `first_party`: the top-level packages the generated modules live in. ruff tells first-
    from third-party imports by what is on disk, and the generated modules are not yet:
    they are named first-party explicitly, beside the project's own list.
    """

    def __init__(self, root: Path, first_party: Iterable[str] = ()) -> None:
        self.root = root
        self.config = ruff_config(root)
        self.ruff = find_ruff(root) if self.config is not None else None
        # the project's own list and the generated packages, read once for every module
        wanted = set(first_party)
        if self.config is not None and self.ruff is not None and wanted:
            wanted |= set(_known_first_party(self.config))
        self.first_party = sorted(wanted)
        self.notes: list[str] = []
        self._done: dict[tuple[str, str], str] = {}
        self._failed = False
        if self.config is not None and self.ruff is None:
            self.notes.append(
                f"{self.config.name} configures ruff, but no ruff was found (project venv or "
                "PATH): the generated code is in ruff's default style; run `ruff check --fix` "
                "and `ruff format` on it"
            )

    @property
    def active(self) -> bool:
        return self.ruff is not None and not self._failed

    def _run(self, args: list[str], rel: str, text: str) -> str | None:
        assert self.ruff is not None and self.config is not None
        command = [self.ruff, *args, "--config", str(self.config)]
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
            self._give_up(f"{Path(self.ruff).name} could not run ({exc})")
            return None
        if done.returncode not in (0, 1):
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            self._give_up(f"ruff refused the project's configuration: {first}")
            return None
        return done.stdout

    def _give_up(self, why: str) -> None:
        self._failed = True
        self.notes.append(f"{why}; the generated code is in ruff's default style")

    def apply(self, rel: str, text: str) -> str:
        """`text` (the module at `rel`) fixed and formatted by the project's ruff."""
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

    def apply_to_edit(self, rel: str, old: str, new: str) -> str:
        """One of the user's modules that bgtasks edits: styled only when the project's
        ruff already leaves the original as it is, so only bgtasks' lines can change."""
        if not rel.endswith(".py") or not self.active or self.apply(rel, old) != old:
            return new
        return self.apply(rel, new)

    def apply_all(self, files: dict[str, str]) -> dict[str, str]:
        return {rel: self.apply(rel, text) for rel, text in files.items()}
