"""Pure data: what a command would do to each file. Computing it writes nothing."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bgtasks_gen.errors import BgtasksError
from bgtasks_gen.modules import read_project_file
from bgtasks_gen.patch.outline import SourceSyntaxError, check_syntax

MARKERS_NOTE = "conflict markers"


class Action(StrEnum):
    CREATE = "create"
    PATCH = "patch"  # an existing file edited in place (the user's settings, app, ...)
    IDENTICAL = "identical"  # already as bgtasks would write it
    CONFLICT = "conflict"  # exists with other content; replaced only with --force
    OVERWRITE = "overwrite"  # a conflict the user allowed with --force
    KEPT = "kept"  # a file the user owns (Procfile, compose.yaml) exists: never replaced
    DELETE = "delete"  # a generated file that goes away (`migrate` off a runner)


@dataclass(frozen=True)
class FileChange:
    path: str  # relative to the project root, POSIX separators
    action: Action
    old: str | None  # None when the file does not exist yet
    new: str
    note: str = ""

    @property
    def writes(self) -> bool:
        return self.action in (Action.CREATE, Action.PATCH, Action.OVERWRITE, Action.DELETE)

    @property
    def removes(self) -> bool:
        return self.action is Action.DELETE

    def diff(self) -> str:
        old = (self.old or "").splitlines(keepends=True)
        new = self.new.splitlines(keepends=True)
        before = f"a/{self.path}" if self.old is not None else "/dev/null"
        after = "/dev/null" if self.removes else f"b/{self.path}"
        return "".join(difflib.unified_diff(old, new, before, after))


@dataclass
class Plan:
    root: Path
    changes: list[FileChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things the user should know
    next_steps: list[str] = field(default_factory=list)

    @property
    def conflicts(self) -> list[FileChange]:
        return [c for c in self.changes if c.action is Action.CONFLICT]

    @property
    def writes(self) -> list[FileChange]:
        return [c for c in self.changes if c.writes]

    @property
    def nothing_to_do(self) -> bool:
        return not self.writes and not self.conflicts


def read_existing(root: Path, rel: str) -> str | None:
    # CRLF kept as it is, so an unchanged file compares equal; a link out of the project
    # or a file that is not UTF-8 is refused while planning (BadInput)
    return read_project_file(root, rel)


USER_FILE_NOTE = (
    "yours, not written by bgtasks: rename it, or choose another folder for the "
    "generated routes with [tool.bgtasks] routes-module in pyproject.toml"
)
USER_FILE_HINT = (
    "nothing was written; these files are the project's own, not bgtasks': rename them, "
    "or set [tool.bgtasks] routes-module (or tasks-module) in pyproject.toml to a "
    "folder where the generated names are free"
)


def generated(root: Path, rel: str, new: str, *, force: bool, note: str = "") -> FileChange:
    """A file bgtasks owns: created, identical, or a conflict with what is on disk."""
    old = read_existing(root, rel)
    if old is None:
        return FileChange(rel, Action.CREATE, None, new, note)
    if old == new:
        return FileChange(rel, Action.IDENTICAL, old, new, note)
    action = Action.OVERWRITE if force else Action.CONFLICT
    if not _bgtasks_wrote(root, rel):
        # the project's own module under the generated file's name (its `tasks.py` routes):
        # replacing it would delete the user's code, so that is never the advice
        return FileChange(rel, action, old, new, USER_FILE_NOTE)
    return FileChange(rel, action, old, new, note or "exists with other content")


def _bgtasks_wrote(root: Path, rel: str) -> bool:
    """Whether the state records `rel` as a file bgtasks generated (its own state file and
    base copies are always its own)."""
    from bgtasks_gen.state import BASE_DIR, STATE_FILE, read_state

    if rel == STATE_FILE or rel.startswith(f"{BASE_DIR}/"):
        return True
    files = read_state(root).get("files", {})
    return isinstance(files, dict) and rel in files


def user_owned(root: Path, rel: str, new: str) -> FileChange:
    """A run file bgtasks writes once; afterwards it is the user's, even with --force."""
    old = read_existing(root, rel)
    if old is None:
        return FileChange(rel, Action.CREATE, None, new)
    if old == new:
        return FileChange(rel, Action.IDENTICAL, old, new)
    return FileChange(
        rel, Action.KEPT, old, new, "yours: see --dry-run for what bgtasks would write"
    )


def deleted(root: Path, rel: str, note: str = "") -> FileChange | None:
    """A file bgtasks generated that the command removes; None when it is gone already."""
    old = read_existing(root, rel)
    return None if old is None else FileChange(rel, Action.DELETE, old, "", note)


def patched(root: Path, rel: str, old: str, new: str, note: str = "") -> FileChange:
    """A file of the user's that bgtasks edits in place."""
    action = Action.IDENTICAL if old == new else Action.PATCH
    return FileChange(rel, action, old, new, note)


def check_python(changes: list[FileChange]) -> None:
    """Every .py file bgtasks would write must parse; a failure here is a bgtasks bug."""
    for change in changes:
        # conflict markers, asked for with `update --conflicts markers`, never parse
        if (
            change.writes
            and not change.removes
            and change.path.endswith(".py")
            and MARKERS_NOTE not in change.note
        ):
            try:
                check_syntax(change.new)
            except SourceSyntaxError as exc:
                raise BgtasksError(
                    f"bgtasks produced code that does not parse in {change.path}: {exc.message}",
                    "nothing was written; please report this as a bug",
                ) from exc
