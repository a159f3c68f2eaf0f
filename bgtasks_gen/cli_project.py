"""How every command names the project: a positional PROJECT or `-p/--project`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProjectArgument = Annotated[
    Path | None,
    typer.Argument(
        metavar="PROJECT",
        help="The project folder (default: the current folder).",
        show_default=False,
    ),
]
ProjectOption = Annotated[
    Path | None,
    typer.Option("--project", "-p", help="The project folder, as an option: the same as PROJECT."),
]


def resolve_project(positional: Path | None, option: Path | None) -> Path:
    """The one project a command works on, however it was named."""
    if positional is not None and option is not None and positional != option:
        raise typer.BadParameter(
            f"two projects given ({positional} and {option}): name it once, as PROJECT or -p",
            param_hint="PROJECT",
        )
    return positional or option or Path(".")
