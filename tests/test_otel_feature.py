"""`--with otel`: the tracing module, its hooks and its packages come with the feature
and go with it; a project without it has no trace of it (the snapshots hold the rest)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "layered"
OTEL_PACKAGES = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
)


def _bgtasks(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "BGTASKS_RESOLVE_TIMEOUT": "0", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", *args], capture_output=True, text=True, env=env
    )


def _python_text(project: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(project.rglob("*.py")))


@pytest.mark.parametrize("runner", ["celery", "arq", "taskiq", "builtin"])
def test_otel_is_added_and_taken_out(runner: str, tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    tracing = project / "app" / "tasks" / "tracing.py"
    assert _bgtasks("init", str(project), "--runner", runner).returncode == 0
    assert not tracing.exists()
    assert "opentelemetry" not in _python_text(project)
    assert "opentelemetry" not in (project / "pyproject.toml").read_text()

    added = _bgtasks("update", str(project), "--with", "otel")
    assert added.returncode == 0, added.stdout + added.stderr
    assert tracing.is_file()
    assert "OTEL_TRACES_EXPORTER" in added.stdout  # the note says how to turn export on
    dependencies = (project / "pyproject.toml").read_text()
    for package in OTEL_PACKAGES:
        assert f'"{package}>=' in dependencies
    code = _python_text(project)
    assert "import tracing" in code or ", tracing" in code
    assert "tracing.inject_context()" in code or "tracing.carried(" in code
    assert "features = [" in (project / ".bgtasks.toml").read_text()
    assert _bgtasks("check", str(project)).returncode == 0

    taken = _bgtasks("update", str(project), "--without", "otel")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert not tracing.exists()
    assert "tracing" not in _python_text(project)
    assert _bgtasks("check", str(project)).returncode == 0


def test_builtin_may_have_traces() -> None:
    from bgtasks_gen.features import WORKER_FEATURES, choose_features

    assert "otel" not in WORKER_FEATURES
    assert choose_features([], ["otel"], [], runner="builtin") == ("otel",)
