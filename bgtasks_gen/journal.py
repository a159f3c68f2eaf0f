"""The write-ahead journal: a write that a SIGKILL or a power cut stops half way is finished
or undone by the next bgtasks command, never left half done.

apply.py records its intent in .bgtasks/journal.json before it touches any file: every
target, whether it existed, the hash of its content before and after, and the temporary
files beside it that hold the new content ("staged") and a copy of the old one ("backup").
The journal goes through three phases:

- "staging": written before the first temporary file. Nothing is replaced in this phase,
  so recovering it only removes the temporary files it names.
- "replacing": rewritten atomically once every temporary file and folder is on disk
  (fsynced); only then are targets replaced. Recovery finishes the write (rolls forward)
  when each target holds its new content, or its old content with the new one staged and
  verified by hash; otherwise it undoes the write. Forward is preferred: the journal
  proves the whole change was planned, checked and on disk before the first file moved,
  so finishing gives exactly the tree the command was about to report, whereas undoing
  would silently drop a command the user asked for.
- "undoing": set before an undo starts, so an undo that is itself interrupted is resumed
  as an undo (a failed write the user was told about is never finished later).

Removing the journal is the commit point. A target that holds neither its old nor its new
content was changed by someone else after the crash: it is left exactly as it is and the
rest of the write is undone, so nobody's edit is lost. Every step checks hashes before it
acts, which makes recovery safe to interrupt and run again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

from bgtasks_gen.errors import ApplyError, BadInput, ConflictError
from bgtasks_gen.state import DIGEST, project_path_problem

TEMP_PREFIX = ".bgtasks-tmp-"
JOURNAL_DIR = ".bgtasks"
JOURNAL = f"{JOURNAL_DIR}/journal.json"
JOURNAL_TEMP = f"{JOURNAL_DIR}/{TEMP_PREFIX}journal.json"
FORMAT = 1
PHASES = ("staging", "replacing", "undoing")
MAX_JOURNAL_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 10_000
RECOVERED = "recovered an interrupted bgtasks run"


@dataclass(frozen=True)
class Entry:
    """One target of a write; paths relative to the project root."""

    path: str
    existed: bool
    mode: int  # permission bits the new file gets (the old file's, or 0o644)
    old: str | None  # digest of the content before; None when the file did not exist
    new: str | None  # digest of the content after; None when the write removes the file
    staged: str  # temporary file holding the new content (none is written for a removal)
    backup: str | None  # temporary file holding the old content; None when it did not exist


@dataclass(frozen=True)
class Journal:
    id: str
    phase: str
    entries: tuple[Entry, ...]
    created_dirs: tuple[str, ...] = ()  # folders the write creates, parents first
    created_journal_dir: bool = False  # .bgtasks itself did not exist before

    def temp_files(self) -> list[str]:
        return [e.staged for e in self.entries] + [e.backup for e in self.entries if e.backup]


@dataclass
class Outcome:
    """What an undo did: files put back, and files left alone because someone else
    changed them."""

    restored: int = 0
    kept: list[str] = field(default_factory=list)


def temp_name(path: str, journal_id: str, index: int, kind: str) -> str:
    """The temporary file beside `path` for entry `index`: beside it, so a rename moves it
    into place atomically (same folder, same filesystem)."""
    return (PurePosixPath(path).parent / f"{TEMP_PREFIX}{journal_id}-{index}.{kind}").as_posix()


def content_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str | None:
    """Digest of a file's bytes; None when there is no file; a value no digest equals
    when something other than a file is there."""
    try:
        return content_digest(path.read_bytes())
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError):
        return "not a file"


def fsync_dir(folder: Path) -> None:
    """Make the entries of `folder` (created, renamed, removed files) durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # a filesystem that cannot sync folders
            raise
    finally:
        os.close(descriptor)


def write_durably(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (it must not exist) holding `data`, flushed to disk."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """A Ctrl-C or SIGTERM waits until the block ends: an undo or a recovery runs to its
    end rather than stopping half way (a SIGKILL cannot be blocked: it is what the
    hash checks are for)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def pending(root: Path) -> bool:
    """Does the project carry a journal a killed bgtasks left behind (or one a running
    bgtasks is using right now)? BadInput when what is there is not a journal bgtasks
    wrote (not a regular file, or content bgtasks never writes): every command, `check`
    and --dry-run too, says so rather than reporting a run to finish."""
    try:
        read(root)
    except FileNotFoundError:  # none, or a running bgtasks committed it just now
        return False
    except NotADirectoryError:  # .bgtasks is a file: it cannot hold a journal
        return False
    return True


UNFINISHED = "an interrupted bgtasks run left changes half written"
FINISH_IT = (
    "run `bgtasks list` (or any other command without --dry-run/--check) to finish or undo it"
)


def refuse_unfinished(root: Path) -> None:
    """For commands that promise to write nothing: they cannot recover, so they stop."""
    if pending(root):
        raise ConflictError(f"{UNFINISHED} ({root / JOURNAL})", f"{FINISH_IT}, then run again")


def _encode(journal: Journal) -> bytes:
    payload = {"format": FORMAT, **asdict(journal)}
    return (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode("utf-8")


def begin(root: Path, journal: Journal) -> None:
    """Record the intent (phase "staging") before anything else is written. Written in
    place, not renamed: a torn first journal can only mean that nothing was staged yet."""
    folder = root / JOURNAL_DIR
    if journal.created_journal_dir:
        folder.mkdir()
        fsync_dir(root)
    written = False
    try:
        write_durably(root / JOURNAL, _encode(journal), 0o644)
        written = True
        fsync_dir(folder)
    except BaseException:
        if written:  # ours (created exclusively): nothing was staged yet
            (root / JOURNAL).unlink(missing_ok=True)
        if journal.created_journal_dir:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def set_phase(root: Path, journal: Journal, phase: str) -> Journal:
    """Rewrite the journal atomically in its new phase: a new file, synced, then renamed
    over the old one, so a crash leaves either the old phase or the new one."""
    updated = replace(journal, phase=phase)
    temp = root / JOURNAL_TEMP
    temp.unlink(missing_ok=True)
    write_durably(temp, _encode(updated), 0o644)
    os.replace(temp, root / JOURNAL)
    fsync_dir(root / JOURNAL_DIR)
    return updated


def finish(root: Path, journal: Journal) -> None:
    """Roll forward: move every staged file whose target does not hold its new content
    yet into place, then commit."""
    for entry in journal.entries:
        target = root / entry.path
        if file_digest(target) != entry.new:
            if entry.new is None:
                target.unlink()
            else:
                os.replace(root / entry.staged, target)
            fsync_dir(target.parent)
    commit(root, journal)


def commit(root: Path, journal: Journal) -> None:
    """Every target holds its new content: remove the temporary files, then the journal
    (the commit point)."""
    _remove_temp_files(root, journal)
    _remove_journal(root, journal)


def can_finish(root: Path, journal: Journal) -> bool:
    """Is every new content in place or staged, verified by its hash, over a target that
    nobody else changed?"""
    for entry in journal.entries:
        current = file_digest(root / entry.path)
        if current == entry.new:
            continue
        if current != entry.old:
            return False
        if entry.new is not None and file_digest(root / entry.staged) != entry.new:
            return False
    return True


def undo(root: Path, journal: Journal) -> Outcome:
    """Roll back: put every target bgtasks replaced back as it was, leave alone any
    target someone else changed since, remove the temporary files, the folders the write
    created and the journal."""
    if journal.phase == "replacing":
        with contextlib.suppress(OSError):  # full disk: the undo below still runs
            journal = set_phase(root, journal, "undoing")
    outcome = Outcome()
    for entry in reversed(journal.entries):
        target = root / entry.path
        current = file_digest(target)
        if current == entry.old:
            continue
        if current != entry.new:
            outcome.kept.append(entry.path)
            continue
        if entry.backup is None:
            target.unlink()
        else:
            backup = root / entry.backup
            if file_digest(backup) != entry.old:
                raise ApplyError(
                    f"{entry.path} cannot be put back: its saved copy {entry.backup} is "
                    "missing or damaged",
                    f"restore {entry.path} from version control, then delete {JOURNAL}",
                )
            os.replace(backup, target)
        fsync_dir(target.parent)
        outcome.restored += 1
    _remove_temp_files(root, journal)
    for rel in reversed(journal.created_dirs):
        with contextlib.suppress(OSError):  # not empty: someone else put a file there
            (root / rel).rmdir()
            fsync_dir((root / rel).parent)
    _remove_journal(root, journal)
    return outcome


def _remove_temp_files(root: Path, journal: Journal) -> None:
    folders = set()
    for rel in journal.temp_files():
        path = root / rel
        if os.path.lexists(path):
            path.unlink()
            folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)


def _remove_journal(root: Path, journal: Journal) -> None:
    folder = root / JOURNAL_DIR
    (root / JOURNAL_TEMP).unlink(missing_ok=True)
    (root / JOURNAL).unlink(missing_ok=True)
    fsync_dir(folder)
    if journal.created_journal_dir:
        with contextlib.suppress(OSError):  # not empty: it holds the pristine copies
            folder.rmdir()
            fsync_dir(root)


def recover(root: Path) -> str | None:
    """Finish or undo the write a killed bgtasks left in `root`; one line saying what was
    done, or None when there was nothing to recover. The caller holds the project lock."""
    if not root.is_dir():
        return None
    try:
        # read before signals are blocked: a Ctrl-C can still stop a slow read
        journal = read(root)
    except (FileNotFoundError, NotADirectoryError):
        return None  # no journal (.bgtasks may even be a file)
    with signals_blocked():
        if journal is None:
            # only the first, in-place write of a journal can be torn, and nothing is
            # staged before it is complete: there is nothing to undo but the journal
            _remove_journal(root, Journal("", "staging", ()))
            return f"{RECOVERED}: it had not written any file yet"
        if journal.phase == "replacing" and can_finish(root, journal):
            finish(root, journal)
            return f"{RECOVERED}: finished writing {len(journal.entries)} file(s)"
        was_staging = journal.phase == "staging"
        outcome = undo(root, journal)
    if was_staging:
        return f"{RECOVERED}: it had not replaced any file yet; its temporary files are gone"
    summary = f"{RECOVERED}: undid it, {outcome.restored} file(s) put back as they were"
    if outcome.kept:
        summary += f"; {', '.join(outcome.kept)} changed since and kept as is"
    return summary


def read(root: Path) -> Journal | None:
    """The journal in `root`, checked; None when it is torn (not complete JSON).
    FileNotFoundError when there is none."""
    resolved = root.resolve()
    path = root / JOURNAL
    if not path.resolve().is_relative_to(resolved):
        raise BadInput(
            f"{path} leads outside the project through a link",
            f"remove the link {root / JOURNAL_DIR} or {path}",
        )
    raw = _read_regular_file(path, MAX_JOURNAL_BYTES + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    except RecursionError:
        # nested deeper than the parser goes: bgtasks writes three levels
        raise BadInput(
            f"{path} is not a journal bgtasks wrote: it nests too deeply to read",
            f"if no bgtasks command was interrupted here, delete {path}",
        ) from None
    journal = _parse(data)
    if journal is None or _path_problems(resolved, journal):
        raise BadInput(
            f"{path} is not a journal bgtasks wrote",
            f"if no bgtasks command was interrupted here, delete {path}",
        )
    return journal


def _read_regular_file(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of `path`, which must be a regular file. Its type is checked
    before it is opened: opening a FIFO waits for a writer that never comes (and a
    recovery runs with Ctrl-C blocked), opening a device may act on it. The open itself
    neither blocks nor follows a link, in case the path is swapped in between."""
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(
            f"{path} is {_file_kind(info.st_mode)}, not a journal bgtasks wrote",
            f"if no bgtasks command was interrupted here, remove {path}",
        )
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        raise BadInput(
            f"cannot read {path}: {exc.strerror}",
            f"if no bgtasks command was interrupted here, remove {path}",
        ) from exc
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BadInput(f"{path} changed into something other than a file while read")
        return handle.read(limit)


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def _parse(data: object) -> Journal | None:
    """The journal a JSON value describes, or None when it is not one bgtasks writes."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    journal_id, phase = data.get("id"), data.get("phase")
    entries, dirs = data.get("entries"), data.get("created_dirs")
    if not (isinstance(journal_id, str) and re.fullmatch(r"[0-9a-f]{8,32}", journal_id)):
        return None
    if phase not in PHASES or not isinstance(data.get("created_journal_dir"), bool):
        return None
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        return None
    if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
        return None
    parsed = []
    for index, item in enumerate(entries):
        entry = _parse_entry(item, journal_id, index)
        if entry is None:
            return None
        parsed.append(entry)
    return Journal(journal_id, phase, tuple(parsed), tuple(dirs), data["created_journal_dir"])


def _parse_entry(item: object, journal_id: str, index: int) -> Entry | None:
    if not isinstance(item, dict):
        return None
    path, existed, mode = item.get("path"), item.get("existed"), item.get("mode")
    old, new = item.get("old"), item.get("new")
    if not isinstance(path, str) or not isinstance(existed, bool):
        return None
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        return None
    if new is None and not existed:
        return None  # only a file that was there can be removed
    if new is not None and not (isinstance(new, str) and DIGEST.fullmatch(new)):
        return None
    if existed != (isinstance(old, str) and DIGEST.fullmatch(old) is not None):
        return None
    if not existed and old is not None:
        return None
    staged = temp_name(path, journal_id, index, "new")
    backup = temp_name(path, journal_id, index, "old") if existed else None
    # the temporary files are named from the entry, so a tampered journal cannot make
    # recovery move or delete any other file
    if item.get("staged") != staged or item.get("backup") != backup:
        return None
    old_digest = old if isinstance(old, str) else None
    new_digest = new if isinstance(new, str) else None
    return Entry(path, existed, mode, old_digest, new_digest, staged, backup)


def _path_problems(root: Path, journal: Journal) -> list[str]:
    targets = {entry.path for entry in journal.entries}
    problems = [p for p in (project_path_problem(root, rel) for rel in targets) if p]
    for rel in journal.created_dirs:
        # only folders that hold one of the targets, so an undo removes nothing else
        if not any(PurePosixPath(rel) in PurePosixPath(t).parents for t in targets):
            problems.append(f"{rel} holds no target")
        problem = project_path_problem(root, rel)
        if problem:
            problems.append(problem)
    return problems
