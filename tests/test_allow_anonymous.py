"""BGTASKS_ALLOW_ANONYMOUS is exactly true or false.

A generated project whose settings class has an env_prefix (SHOP_) is imported in the
runner's environment with each value: true and false in any case and with spaces around
are read, anything else stops the app at import with an error that names the variable
as the deployment sets it (SHOP_BGTASKS_ALLOW_ANONYMOUS) and the two allowed values.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import EXAMPLES, runner_python

READ = {"true": True, "TRUE": True, " True ": True, "false": False, "FALSE": False, " false": False}
REFUSED = ["1", "0", "yes", "no", "on", "t", "y", "", " ", "2", "null"]
ENV = "SHOP_BGTASKS_ALLOW_ANONYMOUS"

# Imports the app once per value (the settings are read at import) and reports what the
# access module decided, or the error that stopped the import.
_IMPORT_EACH = """
import importlib, json, os, sys
results = {}
for value in json.loads(sys.argv[1]):
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]
    os.environ[sys.argv[2]] = value
    try:
        importlib.import_module("app.main")
    except Exception as exc:
        results[value] = ["error", type(exc).__name__, str(exc)]
        continue
    access = next(
        m for n, m in sys.modules.items()
        if n.startswith("app.") and hasattr(m, "anonymous_access_allowed")
    )
    results[value] = ["ok", access.anonymous_access_allowed()]
print(json.dumps(results))
"""


def _project(tmp_path: Path, runner: str) -> Path:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    config = project / "app" / "core" / "config.py"
    text = config.read_text()
    config.write_text(text.replace('env_file=".env"', 'env_file=".env", env_prefix="SHOP_"'))
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", runner],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.mark.parametrize("runner", ["builtin", "celery"])
def test_only_true_or_false_starts_the_app(tmp_path: Path, runner: str) -> None:
    python = runner_python("celery")  # has fastapi and pydantic-settings as well
    project = _project(tmp_path, runner)
    settings = (project / "app" / "core" / "config.py").read_text()
    assert "SHOP_BGTASKS_ALLOW_ANONYMOUS" not in settings  # the prefix is the class's
    assert 'BGTASKS_ALLOW_ANONYMOUS: str = "false"' in settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    result = subprocess.run(
        [str(python), "-c", _IMPORT_EACH, json.dumps([*READ, *REFUSED]), ENV],
        cwd=project,
        env={**env, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = json.loads(result.stdout)
    for value, allowed in READ.items():
        assert outcomes[value] == ["ok", allowed], value
    for value in REFUSED:
        assert outcomes[value] == [
            "error",
            "RuntimeError",
            f"{ENV} must be true or false, not {value!r}",
        ], value


def test_unset_means_false(tmp_path: Path) -> None:
    python = runner_python("celery")
    project = _project(tmp_path, "builtin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    script = _IMPORT_EACH.replace("os.environ[sys.argv[2]] = value", "")
    result = subprocess.run(
        [str(python), "-c", script, json.dumps(["unset"]), ENV],
        cwd=project,
        env={**env, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"unset": ["ok", False]}
