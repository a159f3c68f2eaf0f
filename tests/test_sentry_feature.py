"""`--with sentry`: the error-reporting module, its calls, its settings field and its
package come with the feature; the module and its calls go with it; a project without
it has no trace of it (the snapshots hold the rest, tests/e2e/test_sentry_e2e.py the
behaviour)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "layered"
# where each runner sets up reporting: the web process, and the worker
SET_UP = {
    "celery": ['error_reporting.set_up("web")', "@signals.worker_init.connect"],
    "arq": ['error_reporting.set_up("web")', "on_startup = start_worker"],
    "taskiq": ['error_reporting.set_up("web")', "error_reporting.ErrorReportingMiddleware("],
    "builtin": ['error_reporting.set_up("web")', "error_reporting.task_scope("],
}


def _bgtasks(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "BGTASKS_RESOLVE_TIMEOUT": "0", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", *args], capture_output=True, text=True, env=env
    )


def _python_text(project: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(project.rglob("*.py")))


@pytest.mark.parametrize("runner", ["celery", "arq", "taskiq", "builtin"])
def test_sentry_is_added_and_taken_out(runner: str, tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    module = project / "app" / "tasks" / "error_reporting.py"
    config = project / "app" / "core" / "config.py"
    assert _bgtasks("init", str(project), "--runner", runner).returncode == 0
    assert not module.exists()
    assert "sentry_sdk" not in _python_text(project)
    assert "error_reporting" not in _python_text(project)
    assert "sentry" not in (project / "pyproject.toml").read_text()
    assert "SENTRY" not in (project / ".env.example").read_text()

    added = _bgtasks("update", str(project), "--with", "sentry")
    assert added.returncode == 0, added.stdout + added.stderr
    assert module.is_file()
    assert "sentry_dsn setting" in added.stdout  # the note says how to turn it on
    assert '"sentry-sdk>=2,<3"' in (project / "pyproject.toml").read_text()
    # the one settings field, spelled as the class spells its fields, default off
    assert 'SENTRY_DSN: str = ""' in config.read_text()
    code = _python_text(project)
    for call in SET_UP[runner]:
        assert call in code, call
    text = module.read_text()
    assert "send_default_pii=False" in text
    assert "include_local_variables=False" in text
    assert 'max_request_body_size="never"' in text
    assert "before_send=scrubbed" in text
    assert _bgtasks("check", str(project)).returncode == 0

    taken = _bgtasks("update", str(project), "--without", "sentry")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert not module.exists()
    assert "error_reporting" not in _python_text(project)
    assert "sentry_sdk" not in _python_text(project)
    assert _bgtasks("check", str(project)).returncode == 0


def test_init_with_sentry_and_otel_keeps_both(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    done = _bgtasks("init", str(project), "--runner", "celery", "--with", "sentry,otel")
    assert done.returncode == 0, done.stdout + done.stderr
    routes = (project / "app" / "api" / "v1" / "routes" / "tasks.py").read_text()
    assert 'tracing.set_up("web")' in routes and 'error_reporting.set_up("web")' in routes
    compile(routes, "tasks.py", "exec")


def test_an_existing_optional_dsn_field_is_reused(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    config = project / "app" / "core" / "config.py"
    text = config.read_text()
    marker = "    DEBUG: bool = False\n"
    assert marker in text
    config.write_text(text.replace(marker, marker + "    SENTRY_DSN: str | None = None\n"))
    done = _bgtasks("init", str(project), "--runner", "arq", "--with", "sentry")
    assert done.returncode == 0, done.stdout + done.stderr
    patched = config.read_text()
    assert patched.count("SENTRY_DSN") == 1, patched
    assert "ARQ_SENTRY_DSN" not in patched


def test_builtin_may_report_errors() -> None:
    from bgtasks_gen.features import WORKER_FEATURES, choose_features, feature_fields

    assert "sentry" not in WORKER_FEATURES
    assert choose_features([], ["sentry"], [], runner="builtin") == ("sentry",)
    assert [f.key for f in feature_fields(["sentry"])] == ["sentry_dsn"]
    assert feature_fields(["otel"]) == ()
