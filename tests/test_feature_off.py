"""The observability features cost nothing when off: a default render of every runner is
byte for byte the render with them turned off explicitly, imports none of their packages,
and the app and the task modules, imported in the runner's environment (where those
packages are installed), load none of them beyond what the libraries they use load by
themselves (FastAPI and redis-py import OpenTelemetry when it is installed)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bgtasks_gen.features import FEATURES
from tests.e2e.harness import runner_python

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "layered"
OBSERVABILITY = [name for name in ("otel", "metrics", "sentry") if name in FEATURES]
THEIR_PACKAGES = ("opentelemetry", "sentry_sdk", "prometheus_client")
THEIR_IMPORTS = re.compile(rf"^\s*(?:from|import)\s+(?:{'|'.join(THEIR_PACKAGES)})\b", re.MULTILINE)
RUNNERS = ["celery", "arq", "taskiq", "builtin"]


def _init(tmp_path: Path, name: str, runner: str, *options: str) -> Path:
    project = tmp_path / name / "shop"  # the same folder name: the project is named by it
    shutil.copytree(EXAMPLE, project)
    env = {"PATH": "/usr/bin:/bin", "BGTASKS_RESOLVE_TIMEOUT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", runner, *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return project


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


# imports the served app and every module of the tasks package; prints the modules then
# loaded: of THEIR_PACKAGES, and the others outside the project
LOADED = """
import importlib, json, pkgutil, sys
import app.main, app.tasks
for module in pkgutil.walk_packages(app.tasks.__path__, "app.tasks."):
    importlib.import_module(module.name)
names = sorted(n for n in sys.modules if n.split(".")[0] != "app")
print(json.dumps(names))
"""
# imports the given library modules only; prints the modules then loaded
LIBRARIES = """
import contextlib, importlib, json, sys
for name in json.loads(sys.argv[1]):
    with contextlib.suppress(Exception):
        importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def _run(python: Path, project: Path, script: str, *args: str) -> list[str]:
    result = subprocess.run(
        [str(python), "-c", script, *args],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout.splitlines()[-1])
    return names


def _theirs(names: list[str]) -> set[str]:
    return {name for name in names if name.split(".")[0] in THEIR_PACKAGES}


@pytest.mark.parametrize("runner", RUNNERS)
def test_off_by_default_is_the_same_render_and_imports_nothing(runner: str, tmp_path: Path) -> None:
    default = _tree(_init(tmp_path, "default", runner))
    explicit = _tree(_init(tmp_path, "off", runner, "--without", ",".join(OBSERVABILITY)))
    assert default.keys() == explicit.keys()
    assert [name for name in default if default[name] != explicit[name]] == []

    python_files = [name for name in default if name.endswith(".py")]
    assert any(name.startswith("app/tasks/") for name in python_files)
    for name in python_files:
        found = THEIR_IMPORTS.findall(default[name].decode())
        assert found == [], f"{name} imports {found}"
    assert not any(package in default["pyproject.toml"].decode() for package in THEIR_PACKAGES)
    assert "features = [" not in default[".bgtasks.toml"].decode() or all(
        f'"{name}"' not in default[".bgtasks.toml"].decode() for name in OBSERVABILITY
    )

    if runner == "builtin":
        return  # the same modules; the queue runners' environments hold the packages
    python = runner_python(runner)
    project = tmp_path / "default" / "shop"
    loaded = _run(python, project, LOADED)
    libraries = [name for name in loaded if name not in _theirs(loaded)]
    by_libraries = _theirs(_run(python, project, LIBRARIES, json.dumps(libraries)))
    assert _theirs(loaded) - by_libraries == set()
    # the environment holds the packages: the tracing module, say, would load more
    assert "opentelemetry.sdk.trace" not in _theirs(loaded)
    installed = subprocess.run(
        [str(python), "-c", "import opentelemetry.sdk.trace"], capture_output=True, timeout=60
    )
    assert installed.returncode == 0
