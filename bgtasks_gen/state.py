"""The state file (.bgtasks.toml) at the project root: what bgtasks generated there.

Later commands (add-task, update, check) read it to know the runner, the layout and the
pristine content hash of every generated file.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path

from bgtasks_gen import __version__
from bgtasks_gen.errors import BadInput

STATE_FILE = ".bgtasks.toml"

HEADER = (
    "# Written by bgtasks: what it generated in this project, so later commands can\n"
    "# build on it. Commit it with your code; edit only if you know why.\n"
)


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_state(
    runners: list[str],
    layout: Mapping[str, object],
    files: Mapping[str, str],
    tasks: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """The state file's text; keys are sorted so the same state gives the same bytes."""
    lines = [HEADER, f"version = {_toml_value(__version__)}"]
    lines.append(f"runner = {_toml_value(runners[-1])}")
    lines.append(f"runners = {_toml_value(runners)}")
    lines += ["", "[layout]"]
    lines += [f"{key} = {_toml_value(layout[key])}" for key in sorted(layout)]
    lines += ["", "[files]"]
    lines += [f"{_toml_value(path)} = {_toml_value(files[path])}" for path in sorted(files)]
    for name in sorted(tasks or {}):
        lines += ["", f"[tasks.{name}]"]
        task = (tasks or {})[name]
        lines += [f"{key} = {_toml_value(task[key])}" for key in sorted(task)]
    return "\n".join(lines) + "\n"


def read_state(root: Path) -> dict[str, object]:
    path = root / STATE_FILE
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(
            f"{path} is not valid TOML: {exc}",
            f"restore it from version control, or delete {STATE_FILE} to start over",
        ) from exc
    if not isinstance(data.get("runner"), str) or not isinstance(data.get("layout", {}), dict):
        raise BadInput(
            f"{path} does not look like a bgtasks state file",
            f"restore it from version control, or delete {STATE_FILE} to start over",
        )
    return data
