"""`bgtasks adopt` on an arq project: the fixture project (tests/fixtures/adopt_project)
scaffolded with arq and adopted through the command itself.

What must hold: each movable call queues an `async def <task>(ctx, arguments)` of the
adopted module (awaiting an async function, a plain one in a thread), registered with
the worker through `*adopted.FUNCTIONS` in WorkerSettings.functions, which arq's own
func() accepts when the worker module is imported; the code passes ruff; the tasks are
recorded and listed; the worker edit has an exact inverse; a worker without its
functions list is refused with nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bgtasks_gen.adopt.worker_hook import spread_functions, unspread_functions
from tests.e2e.harness import runner_python
from tests.test_adopt_rewrite import FIXTURE, STUBS, adopt, init, tree

RUFF = [sys.executable, "-m", "ruff"]
BGTASKS = [sys.executable, "-m", "bgtasks_gen"]
WORKER = "app/tasks/arq_worker.py"
MODULE = "app/tasks/adopted.py"


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("adopt_arq") / "arq"
    shutil.copytree(FIXTURE, project)
    init(project, "arq")
    return project


@pytest.fixture
def project(scaffolded: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "arq"
    shutil.copytree(scaffolded, copy)
    return copy


def test_the_tasks_are_async_and_registered_with_the_worker(project: Path) -> None:
    before = tree(project)
    code, output = adopt(project, "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["runner"] == "arq" and len(report["moved"]) == 7
    module = (project / MODULE).read_text(encoding="utf-8")
    assert module.count("@job(") == 6
    assert '@job("adopted.app.jobs.send_welcome")' in module
    assert "async def adopted_app_jobs_send_welcome(\n    ctx: dict[str, Any]" in module
    # an async function awaited, a plain one in a thread: never on the worker's loop
    assert "await refresh_cache(**arguments)" in module
    assert "await asyncio.to_thread(send_welcome, **arguments)" in module
    assert "from app.tasks.pool import QueueClient, create_queue, queue_errors_as_503" in module
    worker = (project / WORKER).read_text(encoding="utf-8")
    assert "        *adopted.FUNCTIONS,\n    ]\n    # 03:00 UTC" in worker
    assert "from app.tasks import adopted, arq_inbox, arq_tasks\n" in worker
    users = (project / "app/routes/users.py").read_text(encoding="utf-8")
    assert "await adopted.enqueue(\n        adopted.adopted_app_jobs_refresh_cache" in users
    assert "adopted.enqueue_blocking(" in users
    # the helper that is no route: its blocking call needs FastAPI's threadpool
    assert any("`queue_welcome` is not a route" in note for note in report["notes"])

    after = tree(project)
    changed = {rel for rel in after if before.get(rel) != after[rel]}
    assert changed == {
        MODULE,
        WORKER,
        "app/routes/orders.py",
        "app/routes/users.py",
        "app/services.py",
        ".bgtasks.toml",
    }
    python = sorted(rel for rel in changed if rel.endswith(".py"))
    check = subprocess.run(
        [*RUFF, "check", "--isolated", "--no-cache", *python],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout
    formatted = [rel for rel in python if rel != "app/routes/orders.py"]
    fmt = subprocess.run(
        [*RUFF, "format", "--check", "--isolated", "--no-cache", *formatted],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


WORKER_FUNCTIONS = """
import json
from app.tasks.arq_worker import WorkerSettings
print(json.dumps({f.name: f.max_tries for f in WorkerSettings.functions}))
"""


def test_arq_takes_the_tasks_under_their_queue_names(project: Path) -> None:
    """The worker module, imported by arq's own environment: func() refuses anything
    but a coroutine function, and record_failures wraps every registered one."""
    assert adopt(project)[0] == 0
    python = runner_python("arq")
    env = {**os.environ, "PYTHONPATH": f"{project / STUBS}{os.pathsep}{project}"}
    done = subprocess.run(
        [str(python), "-c", WORKER_FUNCTIONS],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    functions = json.loads(done.stdout)
    adopted = {name: tries for name, tries in functions.items() if name.startswith("adopted.")}
    assert set(adopted) == {
        "adopted.app.jobs.audit_order",
        "adopted.app.jobs.send_welcome",
        "adopted.app.jobs.record_signup",
        "adopted.app.routes.users.log_signup",
        "adopted.app.jobs.refresh_cache",
        "adopted.app.jobs.send_receipt",
    }
    assert set(adopted.values()) == {3}  # MAX_TRIES: re-runs after a worker stopped only
    assert "send_email" in functions  # the scaffold's own stay


def test_a_second_run_has_nothing_to_adopt_and_the_tasks_are_listed(project: Path) -> None:
    assert adopt(project)[0] == 0
    before = tree(project)
    code, output = adopt(project)
    assert code == 0 and "nothing to adopt" in output, output
    assert tree(project) == before
    state = tomllib.loads((project / ".bgtasks.toml").read_text(encoding="utf-8"))
    record = state["adopted"]["adopted_app_jobs_refresh_cache"]
    assert record["runner"] == "arq"
    assert record["queue_name"] == "adopted.app.jobs.refresh_cache"
    done = subprocess.run(
        [*BGTASKS, "list", str(project), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["adopted_app_jobs_refresh_cache"]["added_by"] == "adopt (app.jobs.refresh_cache)"
    assert rows["send_email"]["added_by"] == "init"


def test_a_worker_without_its_functions_list_is_refused(project: Path) -> None:
    worker = project / WORKER
    text = worker.read_text(encoding="utf-8")
    worker.write_text(text.replace("functions: ClassVar", "jobs: ClassVar"), encoding="utf-8")
    before = tree(project)
    code, output = adopt(project)
    assert code == 2, output
    assert "no `functions = [...]` list" in output
    assert tree(project) == before


@pytest.mark.parametrize(
    "listed",
    [
        "    functions = [\n        func(a),\n        func(b),\n    ]\n",
        "    functions = [func(a), func(b)]\n",
        "    functions = []\n",
    ],
)
def test_the_worker_edit_has_an_exact_inverse(listed: str) -> None:
    text = f"class WorkerSettings:\n{listed}"
    spread, state = spread_functions(text, "adopted")
    assert state == "added" and "*adopted.FUNCTIONS" in spread
    assert spread_functions(spread, "adopted") == (spread, "present")
    assert unspread_functions(spread, "adopted") == (text, True)
    assert unspread_functions(text, "adopted") == (text, False)


def test_a_list_outside_a_class_is_not_the_workers() -> None:
    text = "functions = [func(a)]\n"
    assert spread_functions(text, "adopted") == (text, "missing")
