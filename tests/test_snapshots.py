"""The whole tree `init` produces, per runner x example, compared file by file.

Regenerate after a deliberate template change with:
    python -m pytest tests/test_snapshots.py --update-snapshots
then review the diff of tests/snapshots/ like any other change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bgtasks_gen.cli import app
from bgtasks_gen.runners import available_runners
from tests.conftest import EXAMPLES

SNAPSHOTS = Path(__file__).parent / "snapshots"


RUNNERS = [spec.name for spec in available_runners()]
CASES = [
    (runner, example)
    for runner in RUNNERS
    for example in sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
]


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _compare(project: Path, snapshot: Path, request: pytest.FixtureRequest, what: str) -> None:
    if request.config.getoption("--update-snapshots"):
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(project, snapshot, ignore=shutil.ignore_patterns("__pycache__"))
        return
    assert snapshot.is_dir(), f"no snapshot for {what}: run with --update-snapshots"
    expected, actual = _files(snapshot), _files(project)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(p for p in set(expected) & set(actual) if expected[p] != actual[p])
    assert (missing, extra, changed) == ([], [], []), (
        f"{what} differs from its snapshot (missing, extra, changed); "
        "if the change is intended, run pytest with --update-snapshots and review the diff"
    )


@pytest.mark.parametrize(("runner", "example"), CASES, ids=[f"{r}-{e}" for r, e in CASES])
def test_snapshot(
    runner: str, example: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project = tmp_path / example
    shutil.copytree(EXAMPLES / example, project)
    result = CliRunner().invoke(app, ["init", str(project), "--runner", runner])
    assert result.exit_code == 0, result.output
    _compare(project, SNAPSHOTS / runner / example, request, f"{runner}/{example}")


# the opt-in features that change the generated code (k8s writes manifests only)
FEATURE_CASES = (
    [(runner, "metrics") for runner in ("celery", "arq", "taskiq")]
    + [(runner, "otel") for runner in ("celery", "arq", "taskiq", "builtin")]
    + [(runner, "sentry") for runner in ("celery", "arq", "taskiq", "builtin")]
)


@pytest.mark.parametrize(
    ("runner", "feature"), FEATURE_CASES, ids=[f"{r}-{f}" for r, f in FEATURE_CASES]
)
def test_feature_snapshot(
    runner: str, feature: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    args = ["init", str(project), "--runner", runner, "--with", feature]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    snapshot = SNAPSHOTS / f"with-{feature}" / runner
    _compare(project, snapshot, request, f"{runner} --with {feature}")


ADD_TASKS = {
    "builtin": [["resize_image", "--arg", "image_id:int", "--arg", "sizes:list[int]"]],
    "queue": [
        ["resize_image", "--arg", "image_id:int", "--arg", "sizes:list[int]"],
        ["nightly_report", "--cron", "0 6 * * 1-5", "--retries", "1", "--timeout", "120"],
        ["heartbeat", "--every", "30", "--no-route"],
    ],
}
ADD_CASES = RUNNERS


@pytest.mark.parametrize("runner", ADD_CASES)
def test_add_task_snapshot_and_remove_restores(
    runner: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    cli = CliRunner()
    assert cli.invoke(app, ["init", str(project), "--runner", runner]).exit_code == 0
    after_init = _files(project)
    tasks = ADD_TASKS["builtin" if runner == "builtin" else "queue"]
    for task in tasks:
        result = cli.invoke(app, ["add-task", *task, "-p", str(project)])
        assert result.exit_code == 0, result.output
    snapshot = SNAPSHOTS / "add-task" / runner
    if request.config.getoption("--update-snapshots"):
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(project, snapshot, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        assert snapshot.is_dir(), f"no snapshot for add-task/{runner}: run --update-snapshots"
        expected, actual = _files(snapshot), _files(project)
        changed = sorted(p for p in set(expected) | set(actual) if expected.get(p) != actual.get(p))
        assert changed == [], f"add-task/{runner} differs from its snapshot: {changed}"
    for task in reversed(tasks):
        result = cli.invoke(app, ["remove-task", task[0], "-p", str(project)])
        assert result.exit_code == 0, result.output
    assert _files(project) == after_init
