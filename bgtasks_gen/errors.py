"""User-facing failures: one message, one hint, one exit code. Caught once, in cli.py."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # done, or nothing to do
    CHANGES = 1  # a conflict stopped the run, or --check found changes
    BAD_INPUT = 2  # no project, layout not found, invalid option


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
    """Raised when a file exists with content bgtasks did not write (and no --force)."""

    exit_code = ExitCode.CHANGES


class ApplyError(BgtasksError):
    """Raised when writing failed; every file already replaced has been restored."""

    exit_code = ExitCode.CHANGES
