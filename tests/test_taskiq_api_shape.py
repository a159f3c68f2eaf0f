"""`api_shape = "arq"`: the taskiq scaffold answering with the arq router's HTTP surface.

A project moved from arq (`bgtasks migrate --to taskiq`) keeps its clients: its taskiq
router serves the arq router's prefix, paths, parameters, models and field names. Both
bundled examples, each grown by the same add-task calls, are compared with the arq
scaffold three ways: the generated router modules parsed (no runner packages needed),
the two apps' whole OpenAPI documents built in their runners' own environments, and
the arq-shaped project's own tests run against a real Redis.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bgtasks_gen.apply import apply
from bgtasks_gen.scaffold import plan_init
from tests.conftest import EXAMPLES, invoke
from tests.e2e.harness import redis_server, runner_python

EXAMPLE_NAMES = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
# grown in both projects: a route with a typed body, one without a body, no route
ADDED = [
    ["resize_image", "--arg", "image_id:int", "--arg", "sizes:list[int]"],
    ["ping"],
    ["heartbeat", "--every", "30", "--no-route"],
]
RUFF_RULES = "E,F,W,I,B,UP,ASYNC"

OPENAPI = """
import importlib, json, sys
module, _, attr = sys.argv[1].partition(":")
served = getattr(importlib.import_module(module), attr)
app = served if hasattr(served, "openapi") else served()  # an app factory
print(json.dumps(app.openapi()))
"""


def scaffold(tmp_path: Path, example: str, runner: str, api_shape: str = "") -> Path:
    project = tmp_path / f"{runner}-{api_shape or 'own'}" / example
    shutil.copytree(EXAMPLES / example, project)
    apply(plan_init(project, runner, api_shape=api_shape))
    for task in ADDED:
        code, output = invoke("add-task", *task, "-p", str(project))
        assert code == 0, output
    return project


def layout(project: Path) -> dict[str, Any]:
    state = tomllib.loads((project / ".bgtasks.toml").read_text())
    found: dict[str, Any] = state["layout"]
    return found


def router_source(project: Path, runner: str) -> str:
    found = layout(project)
    folder = project / found["source_root"] / found["routes_module"].replace(".", "/")
    return (folder / f"{runner}_tasks.py").read_text()


def _name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else ""


def surface(source: str) -> dict[str, Any]:
    """What a router module exposes over HTTP, read from its code: its prefix, each
    route's method and path with its function, status code and answer model, and the
    fields of every model."""
    prefix = None
    routes: dict[str, tuple[str, int, str]] = {}
    models: dict[str, list[str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            if _name(node.value.func) == "APIRouter":
                (prefix,) = [
                    ast.literal_eval(k.value) for k in node.value.keywords if k.arg == "prefix"
                ]
        elif isinstance(node, ast.ClassDef) and "BaseModel" in map(_name, node.bases):
            models[node.name] = [
                s.target.id
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            ]
        elif isinstance(node, ast.AsyncFunctionDef):
            for deco in node.decorator_list:
                if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)):
                    continue
                if _name(deco.func.value) != "router":
                    continue
                codes = [ast.literal_eval(k.value) for k in deco.keywords if k.arg == "status_code"]
                answer = ast.unparse(node.returns) if node.returns else ""
                route = f"{deco.func.attr.upper()} {ast.literal_eval(deco.args[0])}"
                routes[route] = (node.name, codes[0] if codes else 200, answer)
    return {"prefix": prefix, "routes": routes, "models": models}


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_the_arq_shaped_router_has_the_arq_routes_and_models(tmp_path: Path, example: str) -> None:
    arq = surface(router_source(scaffold(tmp_path, example, "arq"), "arq"))
    shaped_project = scaffold(tmp_path, example, "taskiq", "arq")
    shaped = surface(router_source(shaped_project, "taskiq"))
    assert layout(shaped_project)["api_shape"] == "arq"
    assert shaped == arq
    # what the comparison covers, spelled out
    assert shaped["prefix"] == "/arq-tasks"
    assert shaped["routes"]["GET /status/{job_id}"] == (
        "get_job_status",
        200,
        "JobStatusResponse",
    )
    assert shaped["routes"]["POST /resize-image"] == ("queue_resize_image", 202, "JobAccepted")
    assert shaped["models"]["AbortResponse"] == ["job_id", "aborted", "status"]


@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_without_a_shape_the_taskiq_routes_stay_taskiq_s(tmp_path: Path, example: str) -> None:
    own = surface(router_source(scaffold(tmp_path, example, "taskiq"), "taskiq"))
    assert own["prefix"] == "/taskiq-tasks"
    assert own["routes"]["GET /status/{task_id}"] == ("get_task_status", 200, "TaskStatus")
    assert own["routes"]["POST /cancel/{task_id}"] == ("cancel_task", 200, "CancelResponse")
    assert own["routes"]["POST /ping"] == ("queue_ping", 202, "TaskAccepted")
    assert own["models"]["TaskAccepted"] == ["task_id", "status", "duplicate"]
    assert own["models"]["CancelResponse"] == ["task_id", "cancelled", "status"]


def test_the_access_hook_reads_the_arq_path_parameter(tmp_path: Path) -> None:
    project = scaffold(tmp_path, "layered", "taskiq", "arq")
    auth = (project / "app" / "tasks" / "auth.py").read_text()
    assert 'request.path_params.get("job_id")' in auth
    assert '"abort"' in auth


def _openapi(python: Path, project: Path) -> dict[str, Any]:
    found = layout(project)
    source = project / found["source_root"]
    result = subprocess.run(
        [str(python), "-c", OPENAPI, found["app"]],
        cwd=source,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return document


def _without_prose(document: dict[str, Any]) -> dict[str, Any]:
    """The document without each operation's summary and docstring: the words differ,
    what a client can send and receive must not."""
    for methods in document["paths"].values():
        for operation in methods.values():
            operation.pop("summary", None)
            operation.pop("description", None)
    return document


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_the_openapi_documents_are_the_same(tmp_path: Path, example: str) -> None:
    arq = _openapi(runner_python("arq"), scaffold(tmp_path, example, "arq"))
    shaped = _openapi(runner_python("taskiq"), scaffold(tmp_path, example, "taskiq", "arq"))
    assert sorted(shaped["paths"]) == sorted(arq["paths"])
    (resize,) = [path for path in shaped["paths"] if path.endswith("/arq-tasks/resize-image")]
    answers = shaped["paths"][resize]["post"]["responses"]
    assert sorted(answers) == ["200", "202", "401", "413", "415", "422", "503"]
    accepted = answers["202"]["content"]["application/json"]["schema"]["$ref"]
    assert accepted.endswith("/JobAccepted")
    assert sorted(shaped["components"]["schemas"]["JobAccepted"]["properties"]) == [
        "duplicate",
        "job_id",
        "status",
    ]
    # methods, parameters (the Idempotency-Key header too), bodies, status codes,
    # schemas and operation ids
    assert _without_prose(shaped) == _without_prose(arq)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("example", EXAMPLE_NAMES)
def test_the_arq_shaped_project_passes_its_tests_ruff_and_mypy(
    tmp_path: Path, example: str
) -> None:
    """Its own tests (the added tasks' too) read job_id, abort and the arq words from the
    real routes, with a real Redis; then the tree is linted like any generated one."""
    python = runner_python("taskiq")
    project = scaffold(tmp_path, example, "taskiq", "arq")
    source = project / layout(project)["source_root"]
    lines = (project / ".env.example").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    with redis_server(tmp_path) as redis_url:
        env = {
            **{k: v.replace("redis://localhost:6379", redis_url) for k, v in settings.items()},
            "PYTHONPATH": str(source),
            "CI": "true",  # no skipping: Redis is there
        }
        out = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project, env)
    assert "passed" in out and "skipped" not in out and "failed" not in out, out
    tests = project / layout(project)["tests_dir"] / "test_bgtasks_taskiq.py"
    assert "test_resize_image_runs_on_the_worker" in tests.read_text()
    ruff = str(python.parent / "ruff")
    _run([ruff, "check", "--no-cache", "--select", RUFF_RULES, "."], project, {})
    _run([ruff, "format", "--check", "--no-cache", "."], project, {})
    mypy = [str(python.parent / "mypy"), "--strict", "--ignore-missing-imports"]
    _run([*mypy, "--cache-dir", str(tmp_path / "mypy-cache"), "."], project, {})
