"""User-facing failures: one message, one hint, one exit code. Caught once, in cli.py."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done, or nothing to do
    CHANGES = 1  # a conflict stopped the run, --check found changes, or `check` found problems
    BAD_INPUT = 2  # no project, not a bgtasks project, layout not found, invalid option or state
    WRITE_FAILED = 3  # writing failed or was interrupted; every file was restored


class BgtasksError(Exception):
    """Base of every error the user should see as a message rather than a traceback."""

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(BgtasksError):
    """Raised when the project, a file in it, or an option cannot be used as given."""


class DiscoveryError(BadInput):
    """Raised when the Settings class or the app cannot be found, or is ambiguous."""


class PatchError(BadInput):
    """Raised when a user's module does not have the shape a patch needs."""


class ConflictError(BgtasksError):
    """Raised when a file exists with content bgtasks did not write (and no --force), or
    when a file changed on disk between the moment bgtasks read it and the write."""

    exit_code = ExitCode.CHANGES


class ApplyError(BgtasksError):
    """Raised when writing failed or was interrupted; every file already replaced has been
    restored (or, if even that failed, the next bgtasks command restores it)."""

    exit_code = ExitCode.WRITE_FAILED
