"""`bgtasks remove-task NAME` for a task `bgtasks adopt` wrote: the fixture project
(tests/fixtures/adopt_project) scaffolded with each queue runner, adopted, then undone
through the real command.

What must hold: every call that queued the task is the add_task call it was, byte for
byte, with the import adopt dropped; the task leaves the adopted module, and with the
last one the module and the worker's hook go (the project is then exactly as before
adopt, whatever the order); the record leaves the state. A task or a call edited since
is a conflict and nothing is written, unless --force; a reformatted call is no edit; a
record without what undoing needs is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.test_adopt_rewrite import FIXTURE, adopt, init, tree

BGTASKS = [sys.executable, "-m", "bgtasks_gen"]
RUNNERS = ("celery", "taskiq", "arq")
MODULE = "app/tasks/adopted.py"
TASKS = [
    "adopted_app_jobs_audit_order",
    "adopted_app_jobs_send_welcome",
    "adopted_app_jobs_record_signup",
    "adopted_app_routes_users_log_signup",
    "adopted_app_jobs_refresh_cache",
    "adopted_app_jobs_send_receipt",
]
REFRESH = "adopted_app_jobs_refresh_cache"
REFRESH_CALL = 'background_tasks.add_task(refresh, f"user:{user_id}", ttl=60)  # case: async'


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adopt_remove")
    found = {}
    for runner in RUNNERS:
        project = root / runner
        shutil.copytree(FIXTURE, project)
        init(project, runner)
        found[runner] = project
    return found


@pytest.fixture(params=RUNNERS)
def runner(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pristine(scaffolded: dict[str, Path], runner: str, tmp_path: Path) -> Path:
    """A scaffolded copy, before adopt."""
    copy = tmp_path / runner
    shutil.copytree(scaffolded[runner], copy)
    return copy


@pytest.fixture
def adopted(scaffolded: dict[str, Path], tmp_path: Path) -> Path:
    """An arq copy, adopted (the undo is the same code for every runner but the hook)."""
    copy = tmp_path / "adopted"
    shutil.copytree(scaffolded["arq"], copy)
    code, output = adopt(copy)
    assert code == 0, output
    return copy


def remove(project: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BGTASKS, "remove-task", name, *args, "-p", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def state(project: Path) -> dict[str, object]:
    return tomllib.loads((project / ".bgtasks.toml").read_text(encoding="utf-8"))


def test_removing_every_task_gives_the_project_back_byte_for_byte(pristine: Path) -> None:
    before = tree(pristine)
    code, output = adopt(pristine)
    assert code == 0, output
    assert tree(pristine) != before
    # an order that is not adopt's: the shared import lines come back one at a time
    for name in reversed(TASKS):
        done = remove(pristine, name)
        assert done.returncode == 0, done.stdout + done.stderr
    assert tree(pristine) == before


def test_removing_one_task_puts_its_calls_back(adopted: Path) -> None:
    done = remove(adopted, "adopted_app_jobs_send_welcome")
    assert done.returncode == 0, done.stdout + done.stderr
    users = (adopted / "app/routes/users.py").read_text(encoding="utf-8")
    assert "    background_tasks.add_task(send_welcome, payload.email, payload.name)" in users
    assert "from app.jobs import send_welcome\n" in users  # the import adopt dropped
    services = (adopted / "app/services.py").read_text(encoding="utf-8")
    assert "tasks.add_task(send_welcome, email, name)" in services
    module = (adopted / MODULE).read_text(encoding="utf-8")
    assert "adopted_app_jobs_send_welcome" not in module
    assert "def adopted_app_jobs_audit_order(" in module  # the others stay
    assert "adopted.enqueue_blocking(" in users  # the other calls of users.py too
    records = state(adopted)["adopted"]
    assert isinstance(records, dict)
    assert "adopted_app_jobs_send_welcome" not in records and len(records) == 5
    assert "*adopted.FUNCTIONS" in (adopted / "app/tasks/arq_worker.py").read_text("utf-8")
    listed = subprocess.run(
        [*BGTASKS, "list", str(adopted), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = {row["name"] for row in json.loads(listed.stdout)}
    assert "adopted_app_jobs_send_welcome" not in names and "adopted_app_jobs_audit_order" in names


def test_an_edited_call_is_a_conflict_unless_forced(adopted: Path) -> None:
    users = adopted / "app/routes/users.py"
    text = users.read_text(encoding="utf-8")
    edited = text.replace('key=f"user:{user_id}", ttl=60', 'key=f"user:{user_id}", ttl=90')
    assert edited != text
    users.write_text(edited, encoding="utf-8")
    before = tree(adopted)
    done = remove(adopted, REFRESH)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the call queueing it in app/routes/users.py" in done.stdout + done.stderr
    assert tree(adopted) == before
    done = remove(adopted, REFRESH, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert REFRESH_CALL in users.read_text(encoding="utf-8")


def test_a_reformatted_call_is_no_edit(adopted: Path) -> None:
    users = adopted / "app/routes/users.py"
    text = users.read_text(encoding="utf-8")
    queued = 'adopted.adopted_app_jobs_refresh_cache, key=f"user:{user_id}", ttl=60\n'
    assert queued in text
    spread = 'adopted.adopted_app_jobs_refresh_cache,\n        key=f"user:{user_id}",\n'
    users.write_text(text.replace(queued, spread + "        ttl=60,\n"), encoding="utf-8")
    done = remove(adopted, REFRESH)
    assert done.returncode == 0, done.stdout + done.stderr
    assert REFRESH_CALL in users.read_text(encoding="utf-8")


def test_an_edited_task_is_a_conflict_unless_forced(adopted: Path) -> None:
    module = adopted / MODULE
    text = module.read_text(encoding="utf-8")
    module.write_text(
        text.replace(
            "    await refresh_cache(**arguments)", "    await refresh_cache(**arguments)  # ok"
        ),
        encoding="utf-8",
    )
    before = tree(adopted)
    done = remove(adopted, REFRESH)
    assert done.returncode == 1
    assert f"the task ({MODULE})" in done.stdout + done.stderr
    assert tree(adopted) == before
    assert remove(adopted, REFRESH, "--force").returncode == 0
    assert "refresh_cache" not in (adopted / MODULE).read_text(encoding="utf-8")


def test_a_call_gone_is_named_when_forced(adopted: Path) -> None:
    users = adopted / "app/routes/users.py"
    text = users.read_text(encoding="utf-8")
    start = text.index("    await adopted.enqueue(\n        adopted.adopted_app_jobs_refresh_cache")
    end = text.index("# case: async\n", start) + len("# case: async\n")
    users.write_text(text[:start] + "    pass\n" + text[end:], encoding="utf-8")
    done = remove(adopted, REFRESH)
    assert done.returncode == 1 and "is gone" in done.stdout + done.stderr
    done = remove(adopted, REFRESH, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "was not put back" in done.stdout + done.stderr
    assert REFRESH not in state(adopted)["adopted"]  # type: ignore[operator]


def test_a_record_without_what_undoing_needs_is_refused(adopted: Path) -> None:
    path = adopted / ".bgtasks.toml"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = lines.index(f"[adopted.{REFRESH}]\n")
    # as an earlier adopt recorded it: source, runner and queue name only
    kept = [
        line
        for index, line in enumerate(lines)
        if index <= start
        or not line.startswith(("call_", "code_digest"))
        or any(lines[i].startswith("[") for i in range(start + 1, index))
    ]
    path.write_text("".join(kept), encoding="utf-8")
    before = tree(adopted)
    done = remove(adopted, REFRESH)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "without what remove-task needs to undo it" in done.stdout + done.stderr
    assert tree(adopted) == before


def test_add_task_tasks_are_removed_as_before(adopted: Path) -> None:
    done = remove(adopted, "no_such_task")
    assert done.returncode == 2
    assert "was not added by `bgtasks add-task`" in done.stdout + done.stderr
