"""The only module that writes to the user's project: all files or none, even across a
crash.

A write runs under the project lock and a write-ahead journal (journal.py):
1. every target must still hold what the plan read (someone may have saved it since):
   otherwise nothing at all is written;
2. the journal records the intent, then each new content (and a copy of each old one)
   goes to a temporary file beside its target, flushed to disk with its folder;
3. the journal moves to its "replacing" phase and the targets are moved into place with
   os.replace (atomic per file), each checked again right before;
4. the temporary files and the journal are removed: the commit point.
A failure or a Ctrl-C/SIGTERM in steps 2-3 undoes what was done; a SIGKILL or a power cut
leaves the journal, and the next bgtasks command finishes or undoes the write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import FrameType

from bgtasks_gen import journal
from bgtasks_gen.errors import ApplyError, BadInput, BgtasksError, ConflictError
from bgtasks_gen.journal import JOURNAL, JOURNAL_DIR, TEMP_PREFIX, Entry, Journal
from bgtasks_gen.plan import FileChange, Plan
from bgtasks_gen.state import outside_through_link

__all__ = ["TEMP_PREFIX", "apply", "project_lock"]

NEW_FILE_MODE = 0o644


class Interrupted(BaseException):
    """SIGTERM while writing: unwinds like KeyboardInterrupt so the undo runs."""


@contextlib.contextmanager
def project_lock(root: Path) -> Iterator[None]:
    """One bgtasks at a time per project: an exclusive flock on the project folder itself
    (nothing is left behind, and the kernel releases it if the process dies)."""
    if not root.is_dir():
        yield
        return
    descriptor = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInput(
                f"another bgtasks command is running on {root}",
                "wait for it to finish, then run again",
            ) from None
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """Turn SIGTERM into an exception while files are being replaced."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refuse_outside(root: Path, target: Path) -> None:
    """Never write through a link that leaves the project. Planning refuses such a path
    already (state.refuse_link_outside); this holds for a link made since."""
    resolved = outside_through_link(root, target)
    if resolved is not None:
        raise ApplyError(
            f"{target} resolves to {resolved}, outside the project",
            "bgtasks does not write through links that leave the project; nothing was written",
        )


def _changed_since_read(root: Path, change: FileChange) -> bool:
    """Does the target no longer hold what the plan read from it?"""
    current = journal.file_digest(root / change.path)
    if change.old is None:
        return current is not None
    if current is None:
        # planners record a file they did not find as "" when they patch it anyway
        return change.old != ""
    return current != journal.content_digest(change.old.encode("utf-8"))


def _conflict(path: str, hint: str) -> ConflictError:
    return ConflictError(f"{path} changed since bgtasks read it", hint)


def _refuse_changed(root: Path, changes: list[FileChange]) -> None:
    for change in changes:
        if _changed_since_read(root, change):
            raise _conflict(
                change.path, "nothing was written; run the command again to plan from it as it is"
            )


def _journal_for(root: Path, changes: list[FileChange]) -> Journal:
    """The intent of this write, from the files as they are right now."""
    journal_id = secrets.token_hex(6)
    entries = []
    created: list[str] = []
    for index, change in enumerate(changes):
        target = root / change.path
        existed = target.is_file()
        data = (change.old or "").encode("utf-8")
        entries.append(
            Entry(
                path=change.path,
                existed=existed,
                mode=target.stat().st_mode & 0o7777 if existed else NEW_FILE_MODE,
                old=journal.content_digest(data) if existed else None,
                new=None if change.removes else journal.content_digest(change.new.encode()),
                staged=journal.temp_name(change.path, journal_id, index, "new"),
                backup=journal.temp_name(change.path, journal_id, index, "old")
                if existed
                else None,
            )
        )
        for folder in reversed(PurePosixPath(change.path).parents):
            rel = folder.as_posix()
            # .bgtasks itself is the journal's folder, made before the journal exists
            if rel not in (".", JOURNAL_DIR) and rel not in created and not (root / rel).exists():
                created.append(rel)
    return Journal(
        id=journal_id,
        phase="staging",
        entries=tuple(entries),
        created_dirs=tuple(created),
        created_journal_dir=not (root / JOURNAL_DIR).exists(),
    )


def apply(plan: Plan) -> list[str]:
    """Write every change of the plan, or none. Returns the paths written."""
    root = plan.root
    changes = plan.writes
    if not changes:
        return []
    for change in changes:
        _refuse_outside(root, root / change.path)
    _refuse_outside(root, root / JOURNAL_DIR)
    if journal.pending(root):
        raise BadInput(
            f"an interrupted bgtasks run left {root / JOURNAL}",
            "run the command again: every bgtasks command finishes or undoes it first",
        )
    _refuse_changed(root, changes)
    record = _journal_for(root, changes)
    began = False
    try:
        with _signals_unwind():
            journal.begin(root, record)
            began = True
            _stage(root, record, changes)
            record = journal.set_phase(root, record, "replacing")
            _replace(root, record)
    except BaseException as exc:
        undone = True
        if began:
            with journal.signals_blocked():  # a second Ctrl-C must not stop the undo
                try:
                    journal.undo(root, record)
                except (OSError, BgtasksError):
                    undone = False
        error = _reported(exc, undone)
        if error is exc:
            raise
        raise error from exc
    with journal.signals_blocked(), contextlib.suppress(OSError):
        # every file is in place; if even the cleanup fails, the next command finishes it
        journal.commit(root, record)
    return [c.path for c in changes]


def _stage(root: Path, record: Journal, changes: list[FileChange]) -> None:
    """Every new content, and a copy of every old one, on disk beside its target."""
    for rel in record.created_dirs:
        (root / rel).mkdir()
        journal.fsync_dir((root / rel).parent)
    folders = set()
    for entry, change in zip(record.entries, changes, strict=True):
        with _naming(root / entry.path):
            if entry.backup is not None:
                data = (change.old or "").encode("utf-8")
                journal.write_durably(root / entry.backup, data, entry.mode)
            if not change.removes:
                journal.write_durably(root / entry.staged, change.new.encode(), entry.mode)
        folders.add((root / entry.staged).parent)
    for folder in folders:
        journal.fsync_dir(folder)
    _refuse_changed(root, changes)  # all of them once more, right before the first replace


def _replace(root: Path, record: Journal) -> None:
    for entry in record.entries:
        target = root / entry.path
        if journal.file_digest(target) != entry.old:
            raise _conflict(entry.path, "")
        with _naming(target):
            if entry.new is None:
                target.unlink()
            else:
                os.replace(root / entry.staged, target)
        journal.fsync_dir(target.parent)


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """An OS error names the user's file, not the temporary file beside it."""
    try:
        yield
    except OSError as exc:
        exc.filename = str(target)
        raise


def _reported(exc: BaseException, undone: bool) -> BaseException:
    """The user-facing error for a write that stopped, once it has been undone."""
    restored = (
        "every file was restored as it was; nothing changed"
        if undone
        else f"some files could not be restored yet; the next bgtasks command restores "
        f"them ({JOURNAL})"
    )
    if isinstance(exc, ConflictError):
        retry = "run the command again to plan from it as it is"
        return ConflictError(exc.message, exc.hint or f"{restored}; {retry}")
    if isinstance(exc, BgtasksError):
        return exc
    if isinstance(exc, OSError):
        name = exc.filename or "a file"
        return ApplyError(f"writing {name} failed: {exc.strerror or exc}", restored)
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        return ApplyError("interrupted while writing", restored)
    return exc
