"""A project scaffolded on a runner's own HTTP surface keeps it until asked, is told of
the common one by check and update, and moves with `update --api-shape common`."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from bgtasks_gen.apply import apply
from bgtasks_gen.scaffold import plan_init
from tests.conftest import EXAMPLES, invoke


def _layout(project: Path) -> dict[str, object]:
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    return dict(state["layout"])


@pytest.mark.parametrize(
    ("runner", "router", "old_route"),
    [
        ("arq", "app/api/v1/routes/arq_tasks.py", '"/abort/{job_id}"'),
        ("celery", "app/api/v1/routes/tasks.py", "Cancel is `DELETE /tasks/cancel/{task_id}`"),
    ],
)
def test_an_old_surface_is_kept_then_moved(
    tmp_path: Path, runner: str, router: str, old_route: str
) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    apply(plan_init(project, runner, api_shape=""))  # as scaffolded before "common"
    assert old_route in (project / router).read_text()
    assert "api_shape" not in _layout(project)

    code, out = invoke("check", str(project), "--json")
    assert code == 0, out
    assert "update --api-shape common" in json.loads(out)["api_surface_move"]
    code, out = invoke("update", str(project))  # a plain update keeps the surface
    assert code == 0, out
    assert old_route in (project / router).read_text()

    code, out = invoke("update", str(project), "--api-shape", "common")
    assert code == 0, out
    text = (project / router).read_text()
    assert old_route not in text
    assert '"/cancel/{task_id}"' in text
    assert _layout(project)["api_shape"] == "common"
    code, out = invoke("check", str(project), "--json")
    assert code == 0, out
    assert json.loads(out)["api_surface_move"] is None


def test_a_fresh_scaffold_is_on_the_common_surface(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    apply(plan_init(project, "arq"))
    assert _layout(project)["api_shape"] == "common"
    code, out = invoke("update", str(project), "--api-shape", "common", "--check")
    assert code == 0, out  # already there: nothing to do


def test_a_second_queue_runner_takes_its_own_prefix(tmp_path: Path) -> None:
    """Both routers on the common surface would serve /tasks/...: the one set up second
    answers under /<runner>-tasks, and every command agrees on it."""
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    assert invoke("init", str(project), "--runner", "arq", "--no-deps")[0] == 0
    code, out = invoke("init", str(project), "--runner", "celery", "--no-deps")
    assert code == 0, out
    routes = project / "app/api/v1/routes"
    assert 'prefix="/tasks"' in (routes / "arq_tasks.py").read_text()
    assert 'prefix="/celery-tasks"' in (routes / "tasks.py").read_text()
    assert "http://127.0.0.1:8000/celery-tasks/send-email" in out  # the printed curl
    code, out = invoke("check", str(project))
    assert code == 0, out
    code, out = invoke("add-task", "ping", str(project))  # onto the last runner set up
    assert code == 0, out
    assert "/celery-tasks/ping" in out
    assert invoke("check", str(project))[0] == 0
