"""Run files (Procfile, compose.yaml): written once, then the user's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bgtasks_gen.cli import app
from bgtasks_gen.runners import available_runners

cli = CliRunner()


QUEUE_RUNNERS = [spec.name for spec in available_runners() if spec.name in ("celery", "arq")]


@pytest.mark.parametrize("runner", QUEUE_RUNNERS)
def test_run_files_are_valid_and_never_overwritten(runner: str, example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("factory")
    result = cli.invoke(app, ["init", str(project), "--runner", runner])
    assert result.exit_code == 0, result.output
    procfile = (project / "Procfile").read_text()
    # the module-level `app = create_app()` is what is served, not a second app from --factory
    assert procfile.startswith("web: uvicorn acme.server:app --app-dir src")
    assert "\nworker: " in procfile
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert {"web", "worker"} <= set(compose["services"])
    assert any(
        s.get("image", "").startswith(("redis", "rabbitmq")) for s in compose["services"].values()
    )

    (project / "Procfile").write_text("web: my own command\n")
    result = cli.invoke(app, ["init", str(project), "--runner", runner, "--force"])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output
    assert (project / "Procfile").read_text() == "web: my own command\n"
