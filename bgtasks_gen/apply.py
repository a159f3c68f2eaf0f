"""The only module that writes to the user's project: all files or none.

Each new content goes to a temporary file beside its target, is flushed to disk, and only
when every temporary file exists are they moved into place with os.replace (atomic per
file). If a replace fails, the files already replaced are put back as they were.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from bgtasks_gen.errors import ApplyError, BadInput
from bgtasks_gen.plan import Plan

TEMP_PREFIX = ".bgtasks-tmp-"
# test-only: pause after the Nth file is replaced (touching PATH.paused), so a test can
# interrupt a run between two writes
PAUSE_ENV = "BGTASKS_TEST_PAUSE_AFTER"


class Interrupted(BaseException):
    """SIGTERM while writing: unwinds like KeyboardInterrupt so the rollback runs."""


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


def _test_pause(count: int, first_target: Path) -> None:
    wanted = os.environ.get(PAUSE_ENV)
    if wanted and int(wanted) == count:
        marker = first_target.parent / f"{first_target.name}.paused"
        marker.touch()
        try:
            time.sleep(30)
        finally:
            marker.unlink(missing_ok=True)


def _write_temp(target: Path, text: str) -> Path:
    descriptor, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            os.chmod(name, target.stat().st_mode & 0o7777)
        else:
            os.chmod(name, 0o644)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def _refuse_outside(root: Path, target: Path) -> None:
    """Never write through a link that leaves the project."""
    resolved = target.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ApplyError(
            f"{target} resolves to {resolved}, outside the project",
            "bgtasks does not write through links that leave the project; nothing was written",
        )


def apply(plan: Plan) -> list[str]:
    """Write every change of the plan, or none. Returns the paths written."""
    root = plan.root
    changes = plan.writes
    created_dirs: list[Path] = []
    temps: list[tuple[Path, Path, str | None]] = []  # (temp, target, old content)
    replaced: list[tuple[Path, str | None]] = []
    try:
        with _signals_unwind():
            _write_all(root, plan, created_dirs, temps, replaced)
    except BaseException as exc:
        # a second Ctrl-C must not interrupt the restore itself
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            _rollback(temps, replaced, created_dirs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if isinstance(exc, OSError):
            name = getattr(exc, "filename", None) or "a file"
            raise ApplyError(
                f"writing {name} failed: {exc.strerror or exc}",
                "every file was restored as it was; nothing changed",
            ) from exc
        raise
    return [c.path for c in changes]


def _write_all(
    root: Path,
    plan: Plan,
    created_dirs: list[Path],
    temps: list[tuple[Path, Path, str | None]],
    replaced: list[tuple[Path, str | None]],
) -> None:
    """Stage every file as a temporary beside its target, then move them all into place."""
    for change in plan.writes:
        target = root / change.path
        _refuse_outside(root, target)
        for folder in [p for p in reversed(target.parents) if not p.exists()]:
            folder.mkdir()
            created_dirs.append(folder)
        temps.append((_write_temp(target, change.new), target, change.old))
    for temp, target, old in temps:
        os.replace(temp, target)
        replaced.append((target, old))
        _test_pause(len(replaced), temps[0][1])


def _rollback(
    temps: list[tuple[Path, Path, str | None]],
    replaced: list[tuple[Path, str | None]],
    created_dirs: list[Path],
) -> None:
    for target, old in reversed(replaced):
        with contextlib.suppress(OSError):
            if old is None:
                target.unlink()
            else:
                os.replace(_write_temp(target, old), target)
    for temp, _, _ in temps:
        with contextlib.suppress(OSError):
            temp.unlink()
    for folder in reversed(created_dirs):
        with contextlib.suppress(OSError):
            folder.rmdir()
