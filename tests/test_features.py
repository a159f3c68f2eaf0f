"""--with / --without: which optional parts a run writes, and how they are kept."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bgtasks_gen.errors import BadInput
from bgtasks_gen.features import FEATURES, choose_features, split_names

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "layered"


def test_names_split_on_commas_and_repeats_once() -> None:
    assert split_names(["k8s, K8S", "", " k8s"]) == ["k8s"]


def test_recorded_features_are_kept_and_can_be_taken_out() -> None:
    assert choose_features(["k8s"], [], [], runner="celery") == ("k8s",)
    assert choose_features(["k8s"], [], ["k8s"], runner="celery") == ()
    assert choose_features([], ["k8s"], [], runner="arq") == ("k8s",)


@pytest.mark.parametrize(
    ("add", "remove", "runner", "says"),
    [
        (["dashbord"], [], "celery", "unknown feature 'dashbord'"),
        (["k8s"], ["k8s"], "celery", "both --with and --without"),
        (["k8s"], [], "builtin", "needs a worker process"),
    ],
)
def test_bad_choices_are_refused(add: list[str], remove: list[str], runner: str, says: str) -> None:
    with pytest.raises(BadInput, match=says):
        choose_features([], add, remove, runner=runner)


def test_a_builtin_project_drops_worker_features_it_inherited() -> None:
    assert choose_features(["k8s"], [], [], runner="builtin") == ()


def test_help_names_every_feature() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    for name in FEATURES:
        assert f"{name} =" in shown


def test_an_unknown_feature_touches_no_file(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    done = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--with", "dashbord"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "unknown feature 'dashbord'" in done.stderr
    assert "k8s" in done.stderr  # the hint names what there is
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


def _bgtasks(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "BGTASKS_RESOLVE_TIMEOUT": "0", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", *args], capture_output=True, text=True, env=env
    )


def test_k8s_is_written_kept_checked_and_taken_out(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    done = _bgtasks("init", str(project), "--runner", "celery", "--with", "k8s", "--no-verify")
    assert done.returncode == 0, done.stderr
    manifests = project / "deploy" / "k8s"
    assert (manifests / "worker-scaledobject.yaml").is_file()
    assert 'features = ["dashboard", "k8s"]' in (project / ".bgtasks.toml").read_text()
    # a later run without the option keeps the feature, and changes nothing
    again = _bgtasks("init", str(project), "--runner", "celery", "--no-verify")
    assert "nothing to do" in again.stdout + again.stderr
    assert _bgtasks("check", str(project)).returncode == 0

    # the queue renamed in the generated config: check names the manifest, update mends it
    celery_app = project / "app" / "tasks" / "celery_app.py"
    text = celery_app.read_text()
    celery_app.write_text(
        text.replace(
            "celery_app.conf.update(\n",
            'celery_app.conf.update(\n    task_default_queue="emails",\n',
            1,
        )
    )
    checked = _bgtasks("check", str(project))
    assert checked.returncode == 1
    assert "deploy/k8s/worker-scaledobject.yaml" in checked.stdout + checked.stderr
    assert _bgtasks("update", str(project)).returncode == 0
    assert "'emails'" not in _bgtasks("check", str(project)).stdout
    assert "emails" in (manifests / "worker-scaledobject.yaml").read_text()
    assert _bgtasks("check", str(project)).returncode == 0

    taken = _bgtasks("update", str(project), "--without", "k8s")
    assert taken.returncode == 0, taken.stderr
    assert not list(manifests.glob("*.yaml"))
    assert 'features = ["dashboard"]' in (project / ".bgtasks.toml").read_text()
    assert _bgtasks("check", str(project)).returncode == 0


def test_the_dashboard_is_on_by_default_and_can_be_left_out_or_taken_out(
    tmp_path: Path,
) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    dashboard = project / "app" / "tasks" / "arq_dashboard.py"
    routes = project / "app" / "api" / "v1" / "routes" / "arq_tasks.py"
    done = _bgtasks("init", str(project), "--runner", "arq", "--without", "dashboard")
    assert done.returncode == 0, done.stderr
    assert not dashboard.exists()
    assert "dashboard" not in routes.read_text()
    assert "features" not in (project / ".bgtasks.toml").read_text()
    # a re-run keeps it out: the default is the first init's, not every run's
    again = _bgtasks("init", str(project), "--runner", "arq", "--no-verify")
    assert "nothing to do" in again.stdout + again.stderr
    assert not dashboard.exists()

    added = _bgtasks("update", str(project), "--with", "dashboard")
    assert added.returncode == 0, added.stdout + added.stderr
    assert dashboard.is_file() and "dashboard.dashboard_routes(" in routes.read_text()
    assert 'features = ["dashboard"]' in (project / ".bgtasks.toml").read_text()
    assert _bgtasks("check", str(project)).returncode == 0

    taken = _bgtasks("update", str(project), "--without", "dashboard")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert not dashboard.exists()
    assert "dashboard" not in routes.read_text()
    assert _bgtasks("check", str(project)).returncode == 0


def test_metrics_are_added_and_taken_out_with_their_dashboard_json(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLE, project)
    tasks = project / "app" / "tasks"
    grafana = project / "deploy" / "grafana" / "bgtasks-tasks.json"
    routes = project / "app" / "api" / "v1" / "routes" / "taskiq_tasks.py"
    assert _bgtasks("init", str(project), "--runner", "taskiq").returncode == 0
    assert not (tasks / "taskiq_metrics.py").exists() and not grafana.exists()

    added = _bgtasks("update", str(project), "--with", "metrics")
    assert added.returncode == 0, added.stdout + added.stderr
    assert (tasks / "taskiq_metrics.py").is_file() and grafana.is_file()
    assert "metrics.metrics_routes(" in routes.read_text()
    assert "bgtasks_tasks_total" in grafana.read_text()
    assert _bgtasks("check", str(project)).returncode == 0

    taken = _bgtasks("update", str(project), "--without", "metrics")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert not (tasks / "taskiq_metrics.py").exists() and not grafana.exists()
    assert "metrics" not in routes.read_text()
    # the dashboard still reads the queues
    assert (tasks / "taskiq_queues.py").is_file()
    assert _bgtasks("check", str(project)).returncode == 0

    gone = _bgtasks("update", str(project), "--without", "dashboard")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not (tasks / "taskiq_queues.py").exists()
    assert _bgtasks("check", str(project)).returncode == 0
