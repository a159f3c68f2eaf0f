"""The fix for "No module named X" in the project's own interpreter: an install command
for the project's tooling, naming the package that provides X.

A package the project declares, or one that its declared packages bring while some of
them are missing too, is missing because the project is not installed in that
environment: the fix is the install step `init` prints (`uv sync`, `poetry install`,
`pip install -e .`). A package it does not declare has to be added.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection
from pathlib import Path

from bgtasks_gen.project_env import Interpreter

MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([^']+)'")
# import names whose distribution is named otherwise (the common ones in FastAPI projects)
DISTRIBUTIONS = {
    "yaml": "PyYAML",
    "jwt": "PyJWT",
    "jose": "python-jose",
    "dotenv": "python-dotenv",
    "multipart": "python-multipart",
    "dateutil": "python-dateutil",
    "PIL": "Pillow",
    "bs4": "beautifulsoup4",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "magic": "python-magic",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "google": "google-api-core",
}


def missing_module(error: str) -> str | None:
    """The top-level module an import error says is missing, None for any other error."""
    match = MISSING_MODULE.search(error)
    return match.group(1).partition(".")[0] if match else None


def distribution_for(module: str) -> str:
    return DISTRIBUTIONS.get(module, module.replace("_", "-"))


def declared_names(root: Path, source_root: Path) -> set[str]:
    """The canonical names the project's dependency lists declare, for this Python (a
    requirement with a marker may not apply: left out)."""
    from bgtasks_gen.deps import declared_requirements, requirement_name

    return {
        requirement_name(r)
        for r in declared_requirements(root, source_root)
        if ";" not in r and requirement_name(r)
    }


def _first_party(source_root: Path, module: str) -> bool:
    return (source_root / module).is_dir() or (source_root / f"{module}.py").is_file()


def install_fix(
    root: Path,
    source_root: Path,
    interpreter: Interpreter,
    error: str,
    uninstalled: Collection[str] = (),
) -> str | None:
    """The command that installs what `error` (a probe's one-line error) says is missing;
    None when it is not a missing package (a module of the project itself, or another
    error). `uninstalled`: the declared packages the interpreter lacks, as far as known."""
    from bgtasks_gen.deps import canonical, dependency_list
    from bgtasks_gen.nextsteps import _add_packages, _install, detect_tooling

    module = missing_module(error)
    if module is None or _first_party(source_root, module):
        return None
    distribution = distribution_for(module)
    tooling = detect_tooling(root)
    python = shlex.quote(str(interpreter.path))
    declared = canonical(distribution) in declared_names(root, source_root)
    if declared or uninstalled:
        listed = dependency_list(root, source_root)
        relative = listed.relative_to(root).as_posix() if listed is not None else None
        steps = _install(root, tooling, None, relative)
        if steps:
            command = steps[-1].command
            if tooling == "pip":  # into the environment that was checked
                command = command.replace("pip install", f"{python} -m pip install", 1)
            names = sorted(uninstalled)
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            why = (
                "is one of its dependencies"
                if declared
                else f"comes with its dependencies, of which {shown} are missing"
            )
            return (
                f"{command} (in {root}): the project is not installed in {interpreter.path}: "
                f"{distribution} {why}"
            )
    if tooling == "pip":
        return (
            f"{python} -m pip install {shlex.quote(distribution)}: the code imports {module}, "
            "which the project does not declare (add it to its dependencies too)"
        )
    return (
        f"{_add_packages(tooling, [distribution], dev=False)} (in {root}): the code imports "
        f"{module}, which the project does not declare"
    )
