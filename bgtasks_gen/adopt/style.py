"""The adopted code in the project's style: its ruff configuration when it has one
(ruff_style.ProjectStyle), ruff's defaults otherwise.

ProjectStyle leaves a project without a ruff configuration alone, because the templates
are written in ruff's default style. The adopted code is not: its imports and lines
depend on the project (a long model name, a deep module), so it is put in that style by
bgtasks' own ruff, in memory (`--isolated`: no configuration file is read, not even one
of a folder above the project). A module of the project that adopt edits is formatted
only when it was in that style already, so that only adopt's lines change in it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

from bgtasks_gen.ruff_style import TIMEOUT_SECONDS, ProjectStyle, find_ruff


class AdoptStyle:
    def __init__(self, root: Path, first_party: Iterable[str]) -> None:
        self.root = root
        self.first_party = sorted(set(first_party))
        self.project = ProjectStyle(root, self.first_party)
        found = find_ruff() if self.project.config is None else None
        self._ruff = found.path if found is not None else None

    @property
    def notes(self) -> list[str]:
        return self.project.notes

    def generated(self, rel: str, text: str) -> str:
        """Code adopt writes: imports sorted and formatted, in the project's style."""
        if self.project.config is not None:
            return self.project.apply(rel, text)
        isort = ["check", "--fix-only", "--quiet", "--select", "I"]
        isort += ["--config", f"lint.isort.known-first-party = {json.dumps(self.first_party)}"]
        sorted_text = self._default(isort, rel, text)
        return self._default(["format"], rel, sorted_text)

    def edited(self, rel: str, old: str, new: str) -> str:
        """A module of the project adopt edits: formatted only when it already was."""
        if self.project.config is not None:
            return self.project.apply_to_edit(rel, old, new)
        if self._default(["format"], rel, old) != old:
            return new
        return self._default(["format"], rel, new)

    def _default(self, args: list[str], rel: str, text: str) -> str:
        """`text` through ruff with its defaults; unchanged when ruff cannot run."""
        if self._ruff is None:
            return text
        command = [self._ruff, *args, "--isolated", "--no-cache"]
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
        except (OSError, subprocess.TimeoutExpired):
            return text
        if done.returncode not in (0, 1) or (text.strip() and not done.stdout.strip()):
            return text
        return done.stdout
