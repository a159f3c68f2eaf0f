"""The wheel ships the templates: build it, install it in a fresh virtual environment and
run `bgtasks init` from another working directory (no checkout on the path)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO

pytestmark = pytest.mark.e2e


def run(cmd: list[str], cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_installed_wheel_scaffolds_an_example(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)], tmp_path)
    (wheel,) = dist.glob("bgtasks-*.whl")
    listing = run([sys.executable, "-m", "zipfile", "-l", str(wheel)], tmp_path)
    assert "bgtasks_gen/templates/copier.yml" in listing
    assert "bgtasks_gen/templates/builtin/tasks/email.py.jinja" in listing

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], tmp_path)

    project = tmp_path / "project"
    shutil.copytree(EXAMPLES / "layered", project)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    output = run(
        [str(env_dir / "bin" / "bgtasks"), "init", str(project), "--runner", "builtin"], elsewhere
    )
    assert "done" in output
    assert (project / "app/tasks/email.py").is_file()
    located = run(
        [str(python), "-c", "from bgtasks_gen.render import templates_dir; print(templates_dir())"],
        elsewhere,
    )
    assert str(env_dir) in located  # the templates came from the installed wheel
