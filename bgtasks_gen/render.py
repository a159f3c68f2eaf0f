"""Render the shipped copier template for one runner into {output path: text}."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from bgtasks_gen.errors import BgtasksError

ANSWERS_FILE = ".bgtasks-answers.yml"


def templates_dir() -> Path:
    """The template folder: inside the installed wheel, or beside the package in a checkout."""
    shipped = Path(str(resources.files("bgtasks_gen") / "templates"))
    if (shipped / "copier.yml").is_file():
        return shipped
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if (checkout / "copier.yml").is_file():
        return checkout
    raise BgtasksError(
        "the bgtasks templates are missing from this installation",
        "reinstall bgtasks (the wheel ships a templates/ folder inside bgtasks_gen)",
    )


def render_runner(context: Mapping[str, object]) -> dict[str, str]:
    """Run copier on templates/ with every answer given; return the files it produced.

    copier is imported here, not at module level: it costs about a quarter of a second
    and only `init` needs it.
    """
    import copier

    _require_working_directory()
    with tempfile.TemporaryDirectory(prefix="bgtasks-render-") as tmp:
        copier.run_copy(
            str(templates_dir()),
            tmp,
            data=dict(context),
            defaults=True,
            quiet=True,
            overwrite=True,
            unsafe=False,
        )
        out = Path(tmp)
        files = {}
        for path in sorted(out.rglob("*")):
            if path.is_file() and path.name != ANSWERS_FILE:
                files[path.relative_to(out).as_posix()] = path.read_text(encoding="utf-8")
        return files


def _require_working_directory() -> None:
    # copier resolves the current folder; one deleted under the shell would otherwise
    # end in a traceback from deep inside it.
    try:
        os.getcwd()
    except FileNotFoundError:
        raise BgtasksError(
            "the current folder no longer exists",
            "cd into an existing folder (the project, for one) and run the command again",
        ) from None
