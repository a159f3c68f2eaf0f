"""The change watcher behind `bgtasks dev`'s worker reload: a poll of the `*.py` files
under a few folders, by their stat, with no dependency and no thread of its own.

One save touches one file, but `bgtasks add-task` writes several files at once and an
editor may write a file twice: a change is reported once, after the tree has been quiet
for `quiet` seconds, so one burst of writes is one restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# what tells two versions of a file apart without reading it
Signature = tuple[int, int, int]  # (mtime in ns, size, inode)
POLL_INTERVAL = 1.0
QUIET_PERIOD = 0.5


def python_files(folders: Iterable[Path]) -> dict[Path, Signature]:
    """Each `*.py` file under `folders` with its signature; a file that vanishes while
    it is listed is left out (it changed, and the next listing says so)."""
    found: dict[Path, Signature] = {}
    for folder in folders:
        paths = [folder] if folder.suffix == ".py" else sorted(folder.rglob("*.py"))
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            found[path] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return found


class ChangeWatcher:
    """Call `poll()` regularly; it returns the files changed (created, edited, removed)
    in the last burst once the burst is over, else an empty list."""

    def __init__(
        self,
        folders: Sequence[Path],
        *,
        interval: float = POLL_INTERVAL,
        quiet: float = QUIET_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folders = list(folders)
        self.interval = interval
        self.quiet = quiet
        self.clock = clock
        self.known = python_files(self.folders)
        self.changed: set[Path] = set()
        self.last_change = 0.0
        self.next_poll = clock() + interval

    def poll(self) -> list[Path]:
        now = self.clock()
        if now < self.next_poll:
            return []
        self.next_poll = now + self.interval
        current = python_files(self.folders)
        differ = {
            path
            for path in current.keys() | self.known.keys()
            if current.get(path) != self.known.get(path)
        }
        self.known = current
        if differ:
            self.changed |= differ
            self.last_change = now
            return []
        if self.changed and now - self.last_change >= self.quiet:
            burst, self.changed = sorted(self.changed), set()
            return burst
        return []
