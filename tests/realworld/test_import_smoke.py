"""The edit is proven by importing it: each real-world shape, scaffolded, is imported in the
runner's own environment (.venvs/celery, .venvs/arq), the generated worker module too, and
the app's OpenAPI schema, fetched over its real URL, lists the new routes under the
project's prefix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import invoke, write_tree
from tests.e2e.harness import runner_python
from tests.realworld.shapes import SHAPES, Shape

pytestmark = pytest.mark.e2e

# builtin needs only fastapi and pydantic-settings: the celery environment has both
ENVIRONMENT = {"celery": "celery", "arq": "arq", "builtin": "celery"}
WORKER = {"celery": "celery_app", "arq": "arq_worker", "builtin": "notifications"}
ROUTE = {
    "celery": "/tasks/process-order",
    "arq": "/tasks/process-data",
    "builtin": "/notifications/send-email",
}

SMOKE = """
import importlib, json, sys
from fastapi.testclient import TestClient

served, worker, openapi_at = sys.argv[1:4]
module, _, attr = served.partition(":")
app = getattr(importlib.import_module(module), attr)
importlib.import_module(worker)
client = TestClient(app)  # no `with`: the lifespan (and its Redis pool) is not needed here
response = client.get(openapi_at)
print(json.dumps({"status": response.status_code, "paths": sorted(response.json()["paths"])}))
"""

CASES = [(shape, runner) for shape in SHAPES for runner in shape.runners]


@pytest.mark.parametrize(("shape", "runner"), CASES, ids=[f"{s.name}-{r}" for s, r in CASES])
def test_the_patched_app_imports_and_serves_the_new_routes(
    shape: Shape, runner: str, tmp_path: Path
) -> None:
    python = runner_python(ENVIRONMENT[runner])
    project = write_tree(tmp_path / "project", shape.files)
    code, output = invoke("init", str(project), "--runner", runner, "--no-deps")
    assert code == 0, output
    source = project / shape.source_root if shape.source_root else project
    result = subprocess.run(
        [
            str(python),
            "-c",
            SMOKE,
            shape.served,
            f"{shape.tasks_module}.{WORKER[runner]}",
            shape.openapi_at,
        ],
        cwd=source,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["status"] == 200
    expected = f"{shape.prefix if shape.openapi_at == '/openapi.json' else ''}{ROUTE[runner]}"
    assert expected in found["paths"], found["paths"]
