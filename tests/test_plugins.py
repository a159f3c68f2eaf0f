"""Runner plugins: a distribution registering a RunnerSpec under `bgtasks.runners` is a
runner like the built-in ones.

The plugins here are written into a temporary folder (a package and a `.dist-info` with
its entry points) that the real `bgtasks` command finds on PYTHONPATH, in a subprocess.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from bgtasks_gen.runners import BUILTIN, GROUP
from tests.conftest import EXAMPLES, invoke, tree_hashes

SPEC_MODULE = """
from pathlib import Path

from bgtasks_gen.runners.base import RunnerSpec, RunnerSteps, SettingsField

HERE = Path(__file__).parent


def _next_steps(ctx):
    return RunnerSteps(
        processes=(f"uvicorn {ctx['app_target']} --reload",),
        tests=(f"pytest {ctx['tests_dir']}/test_bgtasks_demo.py",),
    )


SPEC = RunnerSpec(
    name="demo",
    summary="demo: tasks run in the web process, for the plugin guide",
    use_when="Trying out a runner plugin",
    caveats=("not durable: the {demo_queue} setting names nothing real",),
    settings_fields=(
        SettingsField("demo_queue", "str", '"memory://"', ("DEMO_QUEUE_URL",), "Demo queue"),
    ),
    router_file="demo_tasks",
    dependencies=("fastapi>=0.110",),
    next_steps=_next_steps,
    templates=str(HERE / "templates"),
    snippets=str(HERE / "snippets"),
    tasks_file="demo_jobs.py",
    scaffold_tasks=("ping",),
    test_file="test_bgtasks_demo.py",
    schedule_kind="decorator",
)
"""

TEMPLATES = {
    "tasks/__init__.py.jinja": '{% include "_partials/tasks_init.py.jinja" %}',
    "tasks/demo_jobs.py.jinja": '''"""Demo jobs: run in the web process."""

import logging
from collections.abc import Callable
from typing import TypeVar

{{ settings_import }}

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., None])
EVERY: dict[str, int] = {}


def every(seconds: int) -> Callable[[F], F]:
    def mark(function: F) -> F:
        EVERY[function.__name__] = seconds
        return function

    return mark


def ping() -> None:
    logger.info("ping on %s", {{ settings_expr }}.{{ field_names.demo_queue }})
''',
    "routes/demo_tasks.py.jinja": '''"""Routes queueing the demo jobs."""

from fastapi import APIRouter, BackgroundTasks

from {{ tasks_module }} import demo_jobs as jobs

router = APIRouter(prefix="/demo", tags=["demo"])


@router.post("/ping", status_code=202)
def queue_ping(background: BackgroundTasks) -> dict[str, str]:
    background.add_task(jobs.ping)
    return {"detail": "queued"}
''',
    "tests/test_bgtasks_demo.py.jinja": """from fastapi.testclient import TestClient

{{ app_import }}
from {{ tasks_module }} import demo_jobs as jobs


def test_ping_is_queued() -> None:
    client = TestClient({{ app_expr }})
    assert client.post("/demo/ping").status_code == 202
""",
}

SNIPPETS = {
    "task.py.jinja": """{% if every %}@every({{ every }})
{% endif %}def {{ name }}() -> None:
    logger.info("{{ name }} ran")
""",
    "route.py.jinja": """@router.post("/{{ path }}", status_code=202)
def queue_{{ name }}(background: BackgroundTasks) -> dict[str, str]:
    background.add_task(jobs.{{ name }})
    return {"detail": "queued"}
""",
    "test.py.jinja": """def test_{{ name }}_runs() -> None:
    jobs.{{ name }}()
""",
}


def _distribution(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{entry_points}\n")


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


# the same runner with its schedules kept by a scheduler process: add-task's schedule part
# is definitions in the worker module
EXTERNAL = {
    'schedule_kind="decorator",': 'schedule_kind="external",\n    worker_file="demo_schedule.py",',
}
EXTERNAL_TEMPLATES = {
    "tasks/demo_schedule.py.jinja": '''"""What the demo scheduler process runs, and how often."""

from {{ tasks_module }} import demo_jobs as jobs
from {{ tasks_module }}.demo_jobs import every


@every(3600)
def scheduled_ping() -> None:
    jobs.ping()
''',
}
EXTERNAL_SNIPPETS = {
    "task.py.jinja": """def {{ name }}() -> None:
    logger.info("{{ name }} ran")
""",
    "schedule.py.jinja": """@every({{ every }})
def scheduled_{{ name }}() -> None:
    jobs.{{ name }}()
""",
}


def make_site(root: Path, *, external: bool = False) -> Path:
    """A folder holding the demo plugin, installed the way pip lays a wheel out."""
    site = root / "site"
    package = site / "bgtasks_demo_runner"
    spec = SPEC_MODULE
    if external:
        for old, new in EXTERNAL.items():
            spec = spec.replace(old, new)
    _write(package, {"__init__.py": spec})
    _write(package / "templates", {**TEMPLATES, **(EXTERNAL_TEMPLATES if external else {})})
    _write(package / "snippets", {**SNIPPETS, **(EXTERNAL_SNIPPETS if external else {})})
    _distribution(site, "bgtasks-demo-runner", "demo = bgtasks_demo_runner:SPEC")
    return site


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


def bgtasks(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command with the plugin folder on PYTHONPATH, run outside any project
    (`runners` would otherwise read this repository's own layout)."""
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=site,
        timeout=120,
    )


def test_the_builtin_runners_are_entry_points_of_this_distribution() -> None:
    found = {e.name: e.value for e in metadata.entry_points(group=GROUP) if e.dist is not None}
    assert {name: found.get(name) for name in BUILTIN} == BUILTIN


def test_init_add_task_and_remove_task_with_a_plugin(site: Path, tmp_path: Path) -> None:
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    before = tree_hashes(project)

    result = bgtasks(site, "init", str(project), "--runner", "demo")
    assert result.returncode == 0, result.stdout + result.stderr

    jobs = (project / "app/tasks/demo_jobs.py").read_text()
    assert "settings.DEMO_QUEUE" in jobs  # spelled in the project's upper-case style
    assert (project / "app/tasks/__init__.py").read_text().startswith('"""Background tasks')
    assert (project / "app/api/v1/routes/demo_tasks.py").is_file()
    config = (project / "app/core/config.py").read_text()
    assert 'DEMO_QUEUE: str = "memory://"' in config
    main = ast.parse((project / "app/main.py").read_text())
    included = [
        ast.unparse(node)
        for node in ast.walk(main)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("include_router")
    ]
    assert any("demo_tasks_router" in call for call in included), included
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    assert state["runner"] == "demo"
    assert "DEMO_QUEUE=memory://" in (project / ".env.example").read_text()

    # the generated test runs against the project's app, the router included
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr

    # a "decorator" schedule: the task snippet carries it, nothing goes into a worker file
    scaffolded = tree_hashes(project)
    added = bgtasks(site, "add-task", "beat", "--every", "30", "-p", str(project))
    assert added.returncode == 0, added.stdout + added.stderr
    jobs = (project / "app/tasks/demo_jobs.py").read_text()
    assert "@every(30)\ndef beat() -> None:" in jobs
    assert "def queue_beat(" in (project / "app/api/v1/routes/demo_tasks.py").read_text()
    assert "def test_beat_runs()" in (project / "tests/test_bgtasks_demo.py").read_text()

    removed = bgtasks(site, "remove-task", "beat", "-p", str(project))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    after = tree_hashes(project)
    assert {k: v for k, v in after.items() if k != ".bgtasks.toml"} == {
        k: v for k, v in scaffolded.items() if k != ".bgtasks.toml"
    }
    assert set(before) <= set(after)

    # check and update read the plugin's spec and templates like a built-in runner's
    checked = bgtasks(site, "check", "-p", str(project))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    updated = bgtasks(site, "update", "-p", str(project))
    assert updated.returncode == 0 and "nothing to do" in updated.stdout, updated.stdout


def test_runners_lists_a_plugin(site: Path) -> None:
    result = bgtasks(site, "runners", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["runner"]: row for row in json.loads(result.stdout)}
    assert {"celery", "arq", "builtin", "demo"} <= set(rows)
    assert rows["demo"]["caveats"] == ["not durable: the DEMO_QUEUE setting names nothing real"]
    helped = bgtasks(site, "init", "--help")
    assert "demo" in helped.stdout


def test_a_broken_plugin_is_one_clear_message(site: Path, tmp_path: Path) -> None:
    _write(site / "bgtasks_broken_runner", {"__init__.py": "raise RuntimeError('no broker')\n"})
    _distribution(site, "bgtasks-broken", "broken = bgtasks_broken_runner:SPEC")
    _write(site / "bgtasks_not_a_spec", {"__init__.py": "SPEC = 'celery'\n"})
    _distribution(site, "bgtasks-wrong", "wrong = bgtasks_not_a_spec:SPEC")
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    before = tree_hashes(project)

    result = bgtasks(site, "init", str(project), "--runner", "broken")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "the runner plugin 'broken' (from bgtasks-broken) cannot be loaded" in output
    assert "RuntimeError: no broker" in output
    assert "Traceback" not in output
    assert tree_hashes(project) == before

    wrong = bgtasks(site, "init", str(project), "--runner", "wrong")
    assert wrong.returncode == 2
    assert "'wrong' (from bgtasks-wrong)" in wrong.stdout + wrong.stderr
    assert "not a bgtasks RunnerSpec" in wrong.stdout + wrong.stderr

    # the others still work, and `runners` names what it could not load
    listed = bgtasks(site, "runners", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "demo" in {row["runner"] for row in json.loads(listed.stdout)}
    assert "'broken' (from bgtasks-broken) cannot be loaded" in listed.stderr


def test_a_plugin_may_not_take_a_builtin_name(site: Path) -> None:
    _distribution(site, "bgtasks-impostor", "celery = bgtasks_demo_runner:SPEC")
    result = bgtasks(site, "runners", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["runner"]: row for row in json.loads(result.stdout)}
    assert rows["celery"]["summary"].startswith("Celery:")  # still the built-in one
    assert "the runner plugin 'celery' of bgtasks-impostor is ignored" in result.stderr


def test_an_external_schedule_goes_into_the_worker_module(tmp_path: Path) -> None:
    site = make_site(tmp_path, external=True)
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    result = bgtasks(site, "init", str(project), "--runner", "demo", "--no-deps")
    assert result.returncode == 0, result.stdout + result.stderr
    worker = project / "app/tasks/demo_schedule.py"
    scaffolded = worker.read_text()

    added = bgtasks(site, "add-task", "beat", "--every", "30", "-p", str(project))
    assert added.returncode == 0, added.stdout + added.stderr
    grown = worker.read_text()
    assert grown.startswith(scaffolded.rstrip("\n"))
    assert "@every(30)\ndef scheduled_beat() -> None:\n    jobs.beat()\n" in grown
    jobs = (project / "app/tasks/demo_jobs.py").read_text()
    assert "def beat() -> None:" in jobs and "@every(30)" not in jobs
    # init again replays the added task, schedule included: nothing would change
    again = bgtasks(site, "init", str(project), "--runner", "demo", "--no-deps", "--check")
    assert again.returncode == 0, again.stdout + again.stderr

    # an edited schedule is named, and kept, unless forced
    worker.write_text(grown.replace("@every(30)", "@every(31)"))
    refused = bgtasks(site, "remove-task", "beat", "-p", str(project))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the schedule (app/tasks/demo_schedule.py)" in refused.stdout + refused.stderr
    worker.write_text(grown)
    removed = bgtasks(site, "remove-task", "beat", "-p", str(project))
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert worker.read_text() == scaffolded


@pytest.mark.parametrize(
    ("declared", "celery_56"),
    [("arq>=0.28,<0.29", True), ("redis>=5,<6", True), ("httpx>=0.27", False)],
)
def test_the_celery_specs_template_hook_follows_the_pins(
    declared: str, celery_56: bool, tmp_path: Path
) -> None:
    """celery's spec adds the celery_56 answer (RunnerSpec.template_context) from the pins
    its PinRules choose: 5.6 beside arq or a redis-py < 6 pin, else 5.7's config."""
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"uvicorn>=0.30",', f'"{declared}",'))
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 0, output
    config = (project / "app/tasks/celery_app.py").read_text()
    assert ("task_retry_on_worker_lost=True" not in config) is celery_56
    added = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert ("celery[redis]>=5.6,<5.7" in added) is celery_56


def test_a_failing_plugin_hook_is_one_clear_message(tmp_path: Path) -> None:
    """A spec's template_context hook raising: one message naming the runner and hook."""
    site = make_site(tmp_path)
    spec = site / "bgtasks_demo_runner" / "__init__.py"
    spec.write_text(
        spec.read_text()
        .replace(
            "SPEC = RunnerSpec(", "def _context(inputs):\n    return 1 / 0\n\n\nSPEC = RunnerSpec("
        )
        .replace(
            'schedule_kind="decorator",',
            'schedule_kind="decorator",\n    template_context=_context,',
        )
    )
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    before = tree_hashes(project)
    result = bgtasks(site, "init", str(project), "--runner", "demo")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "the demo runner's template_context hook failed: ZeroDivisionError" in output
    assert "Traceback" not in output
    assert tree_hashes(project) == before


def test_a_plugin_takes_a_broker_of_its_own(tmp_path: Path) -> None:
    """--broker is checked against the runners' specs, not a fixed list."""
    site = make_site(tmp_path)
    spec = site / "bgtasks_demo_runner" / "__init__.py"
    spec.write_text(
        spec.read_text().replace(
            'schedule_kind="decorator",', 'schedule_kind="decorator",\n    brokers=("memory",),'
        )
    )
    project = tmp_path / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    result = bgtasks(site, "init", str(project), "--runner", "demo", "--broker", "memory")
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'broker = "memory"' in (project / ".bgtasks.toml").read_text()
    wrong = bgtasks(site, "init", str(project), "--runner", "celery", "--broker", "memory")
    assert wrong.returncode == 2
    assert "--broker memory only applies to the demo runner" in wrong.stdout + wrong.stderr
