"""One HTTP surface for every queue runner: a fresh scaffold of celery, arq and taskiq
answers with the same paths, methods, JSON bodies, answers and field names.

Each app's OpenAPI document is built in its runner's own environment (the app is imported,
nothing connects) and the three are compared. What is allowed to differ is listed here,
each with its reason; anything else that differs fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bgtasks_gen.addtask import load_project
from bgtasks_gen.api_surface import COMMON_PREFIX, move_note, on_old_surface
from bgtasks_gen.apply import apply
from bgtasks_gen.scaffold import plan_init
from tests.conftest import EXAMPLES
from tests.e2e.harness import runner_python

QUEUE_RUNNERS = ("celery", "arq", "taskiq")
# each runner's seed task that summarises data: a task of its own, its inputs in a body
OWN_DATA_ROUTE = {
    "celery": ("/process-order", ["order_id"]),
    "arq": ("/process-data", ["data_id", "values"]),
    "taskiq": ("/process-data", ["data_id", "values"]),
}
# runners whose queue routes take no Idempotency-Key (no header, no 200 "duplicate",
# no 504 "may be queued"): none any more; kept to say where such a runner would go
WITHOUT_IDEMPOTENCY: set[str] = set()
# optional fields a runner adds to the shared status answer (Celery: a running task
# whose worker died)
EXTRA_STATUS_FIELDS = {"celery": {"lost", "redelivery_due_at"}}

OPENAPI = """
import importlib, json, sys
module, _, attr = sys.argv[1].partition(":")
served = getattr(importlib.import_module(module), attr)
app = served if hasattr(served, "openapi") else served()
print(json.dumps(app.openapi()))
"""


def _fresh(tmp_path: Path, runner: str) -> Path:
    project = tmp_path / runner / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    apply(plan_init(project, runner))
    return project


def _openapi(runner: str, project: Path) -> dict[str, Any]:
    layout = tomllib.loads((project / ".bgtasks.toml").read_text())["layout"]
    source = project / layout["source_root"]
    result = subprocess.run(
        [str(runner_python(runner)), "-c", OPENAPI, layout["app"]],
        cwd=source,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return document


def _schema(document: dict[str, Any], ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    if ref is None:
        return ref_or_schema
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def _fields(document: dict[str, Any], content: dict[str, Any] | None) -> list[str]:
    if not content:
        return []
    if "application/json" not in content:  # the dashboard's page: its media type
        return sorted(content)
    schema = _schema(document, content["application/json"]["schema"])
    return sorted(schema.get("properties", {}))


def surface(runner: str, document: dict[str, Any]) -> dict[str, Any]:
    """Per `METHOD path` under the router's prefix: the query and header parameters,
    the request body's fields, and each answer's status code with its body's fields.
    The runner's own data route is left out (checked on its own)."""
    found: dict[str, Any] = {}
    for path, operations in document["paths"].items():
        if not path.startswith(COMMON_PREFIX + "/"):
            continue
        tail = path[len(COMMON_PREFIX) :]
        if tail == OWN_DATA_ROUTE[runner][0]:
            continue
        for method, operation in operations.items():
            parameters = {
                (p["in"], p["name"]) for p in operation.get("parameters", []) if p["in"] != "path"
            }
            answers = {
                code: _fields(document, answer.get("content"))
                for code, answer in operation["responses"].items()
            }
            queues = method == "post" and not tail.startswith(("/cancel/", "/failed/"))
            if runner in WITHOUT_IDEMPOTENCY and queues:
                parameters.add(("header", "Idempotency-Key"))
                answers["200"] = answers["202"]
                answers["504"] = ["detail"]
            status_extra = EXTRA_STATUS_FIELDS.get(runner, set())
            if tail.startswith("/status/"):
                answers["200"] = [f for f in answers["200"] if f not in status_extra]
            body = operation.get("requestBody", {}).get("content")
            found[f"{method.upper()} {tail}"] = {
                "summary": bool(operation.get("summary")),
                "parameters": sorted(parameters),
                "body": _fields(document, body),
                "answers": answers,
            }
    return found


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("common-surface")
    return {runner: _openapi(runner, _fresh(tmp_path, runner)) for runner in QUEUE_RUNNERS}


def test_every_queue_runner_answers_with_the_same_surface(
    documents: dict[str, dict[str, Any]],
) -> None:
    celery, arq, taskiq = (surface(r, documents[r]) for r in QUEUE_RUNNERS)
    assert celery == taskiq
    assert arq == taskiq
    # what the comparison covers, spelled out on one of them
    assert sorted(taskiq) == [
        "DELETE /dashboard/session",
        "DELETE /failed/{entry_id}",
        "GET /dashboard",
        "GET /dashboard/data",
        "GET /failed",
        "GET /failed/{entry_id}",
        "GET /status/{task_id}",
        "POST /cancel/{task_id}",
        "POST /dashboard/session",
        "POST /failed/{entry_id}/replay",
        "POST /long-running",
        "POST /send-email",
    ]
    # the failed-task inbox: paged, replayed once unless forced
    listing = taskiq["GET /failed"]
    assert listing["parameters"] == [("query", "limit"), ("query", "offset"), ("query", "task")]
    assert listing["answers"]["200"] == ["dropped", "entries", "total"]
    replay = taskiq["POST /failed/{entry_id}/replay"]
    assert replay["parameters"] == [("query", "force")]
    assert replay["answers"]["202"] == ["entry_id", "status_url", "task_id"]
    assert {"404", "409"} <= set(replay["answers"])
    assert taskiq["POST /send-email"]["body"] == ["body", "subject", "to"]
    assert taskiq["POST /long-running"]["body"] == ["steps"]
    accepted = taskiq["POST /long-running"]["answers"]["202"]
    assert accepted == ["duplicate", "status", "status_url", "task_id"]
    assert taskiq["GET /status/{task_id}"]["answers"]["200"] == [
        "error",
        "progress",
        "result",
        "status",
        "success",
        "task_id",
        "tries",
    ]
    cancel = taskiq["POST /cancel/{task_id}"]
    assert cancel["parameters"] == [("query", "wait")]
    for code in ("200", "202", "409"):
        assert cancel["answers"][code] == ["cancelled", "status", "task_id"], code
    assert {"401", "404", "415", "503"} <= set(cancel["answers"])
    assert all(route["summary"] for route in taskiq.values())


@pytest.mark.parametrize("runner", QUEUE_RUNNERS)
def test_the_data_task_takes_its_inputs_in_a_json_body(
    documents: dict[str, dict[str, Any]], runner: str
) -> None:
    document = documents[runner]
    tail, fields = OWN_DATA_ROUTE[runner]
    operation = document["paths"][COMMON_PREFIX + tail]["post"]
    assert "parameters" not in operation or all(
        p["in"] == "header" for p in operation["parameters"]
    )
    assert _fields(document, operation["requestBody"]["content"]) == fields
    assert _fields(document, operation["responses"]["202"]["content"]) == [
        "duplicate",
        "status",
        "status_url",
        "task_id",
    ]


@pytest.mark.parametrize("runner", QUEUE_RUNNERS)
def test_a_fresh_project_is_on_the_common_surface(tmp_path: Path, runner: str) -> None:
    project = load_project(_fresh(tmp_path, runner))
    assert project.layout["api_shape"] == "common"
    assert not on_old_surface(project)
    assert move_note(project) is None


@pytest.mark.parametrize(
    ("runner", "old_prefix"),
    [("celery", "DELETE /tasks/cancel"), ("arq", "/arq-tasks/"), ("taskiq", "/taskiq-tasks/")],
)
def test_a_project_on_its_runners_own_surface_is_offered_the_move(
    tmp_path: Path, runner: str, old_prefix: str
) -> None:
    root = tmp_path / runner
    shutil.copytree(EXAMPLES / "layered", root)
    apply(plan_init(root, runner, api_shape=""))  # as scaffolded before the common surface
    project = load_project(root)
    assert on_old_surface(project)
    note = move_note(project)
    assert note is not None and "\n" not in note
    assert "`bgtasks update --api-shape common`" in note
    assert old_prefix in note


def test_a_router_moved_from_arq_keeps_being_offered_the_move(tmp_path: Path) -> None:
    root = tmp_path / "taskiq"
    shutil.copytree(EXAMPLES / "layered", root)
    apply(plan_init(root, "taskiq", api_shape="arq"))
    note = move_note(load_project(root))
    assert note is not None and "arq's own HTTP surface" in note and "/arq-tasks/" in note


def test_builtin_is_never_offered_the_move(tmp_path: Path) -> None:
    root = tmp_path / "builtin"
    shutil.copytree(EXAMPLES / "layered", root)
    apply(plan_init(root, "builtin"))
    assert move_note(load_project(root)) is None
