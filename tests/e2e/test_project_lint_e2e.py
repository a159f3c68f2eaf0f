"""The generated code under the project's own lint and type settings, not ours.

Each runner is scaffolded (with one added task) into a copy of the `layered` example
whose pyproject.toml configures ruff strictly (a wide rule set, its own line length and
quote style) and mypy in strict mode. Then, in the runner's own environment, the
project's tools run exactly as its CI would: `ruff check`, `ruff format --check` and
`mypy` with no command-line options at all, so everything comes from the project's
configuration (including the override bgtasks adds for packages that ship no types).
A second project without any configuration is checked with ruff's defaults.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import add_task, runner_python

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# "arq>taskiq": scaffolded for arq, then moved with `bgtasks migrate --to taskiq`
# ("builtin>arq" likewise: its edited plain body runs in a thread on arq)
RUNNERS = ["celery", "arq", "builtin", "taskiq", "arq>taskiq", "builtin>arq"]
# rule families a careful project selects; TRY003 (messages written at the raise) is left
# out: FastAPI's own HTTPException(detail=...) idiom is exactly that
STRICT_CONFIG = """
[tool.ruff]
line-length = 99

[tool.ruff.format]
quote-style = "single"

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP", "RET", "RUF", "PYI", "BLE", "TRY", "SIM", "C4",
          "PIE", "ASYNC", "PERF"]
ignore = ["TRY003"]

[tool.mypy]
strict = true
"""


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    return output


def _python(runner: str) -> Path:
    """builtin needs nothing beyond FastAPI: bgtasks' own environment has what it runs."""
    final = runner.rpartition(">")[2]
    return Path(sys.executable) if final == "builtin" else runner_python(final)


def _project(tmp_path: Path, runner: str, config: str) -> Path:
    """The example with `config` added, its own code already in that style (as the code
    of a project that runs these tools in CI is), then scaffolded."""
    first, _, moved_to = runner.partition(">")
    project = tmp_path / f"{first}-project"
    shutil.copytree(EXAMPLES / "layered", project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + config)
    ruff = str(_python(runner).parent / "ruff")
    _run([ruff, "check", "--no-cache", "--fix-only", "--quiet", "."], project)
    _run([ruff, "format", "--no-cache", "--quiet", "."], project)
    bgtasks = [sys.executable, "-m", "bgtasks_gen"]
    _run([*bgtasks, "init", str(project), "--runner", first], project)
    add_task(project, "resize_image", "--arg", "image_id:int", "--arg", "scale:float")
    if first == "builtin" and moved_to:
        # an edited plain body: on arq, a private function the task awaits in a thread
        tasks = project / "app/tasks/notifications.py"
        marker = "ran with %d argument(s)"
        text = tasks.read_text()
        assert marker in text, text
        tasks.write_text(text.replace(marker, "edited: %d argument(s)", 1))
        _run([*bgtasks, "migrate", str(project), "--to", moved_to], project)
    elif moved_to:
        # an edited body, with arq's job context in it, carried over as it is
        tasks = project / "app/tasks/arq_tasks.py"
        text = tasks.read_text()
        marker = "    return {\n        'image_id': image_id,"
        assert marker in text or marker.replace("'", '"') in text, text
        quote = "'" if marker in text else '"'
        line = f"    logger.info({quote}job %s{quote}, ctx[{quote}job_id{quote}])\n"
        tasks.write_text(
            text.replace(marker.replace("'", quote), line + marker.replace("'", quote))
        )
        _run([*bgtasks, "migrate", str(project), "--to", moved_to], project)
    return project


@pytest.mark.parametrize("runner", RUNNERS)
def test_generated_code_passes_the_projects_strict_ruff_and_mypy(
    runner: str, tmp_path: Path
) -> None:
    python = _python(runner)
    bin_dir = python.parent
    project = _project(tmp_path, runner, STRICT_CONFIG)
    pyproject = (project / "pyproject.toml").read_text()
    if runner == "celery":
        assert "[[tool.mypy.overrides]]" in pyproject and '"celery.*"' in pyproject
    _run([str(bin_dir / "ruff"), "check", "--no-cache", "."], project)
    _run([str(bin_dir / "ruff"), "format", "--check", "--no-cache", "."], project)
    # no flags: strictness and the celery override come from pyproject.toml
    _run(
        [str(python), "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), "app", "tests"], project
    )


@pytest.mark.parametrize("runner", RUNNERS)
def test_without_configuration_the_code_passes_ruffs_defaults(runner: str, tmp_path: Path) -> None:
    bin_dir = _python(runner).parent
    project = _project(tmp_path, runner, "")
    _run([str(bin_dir / "ruff"), "check", "--no-cache", "."], project)
    _run([str(bin_dir / "ruff"), "format", "--check", "--no-cache", "."], project)
