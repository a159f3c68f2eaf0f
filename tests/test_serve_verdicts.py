"""Every verdict of the serve proof (verify.py) but "404 proven" and "does not import"
(tests/e2e/test_init_proves_e2e.py): the outcome, the cause the message names and the
fix it gives.

Tiny fixture apps are written to tmp_path and served the way init serves a project: in a
subprocess of an interpreter (this one, which has FastAPI), with their lifespans. Only the
answers no subprocess gives on demand (fastapi.testclient missing) are judged directly.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bgtasks_gen.verify import (
    FAILED,
    NOT_PROVEN,
    PROVEN,
    TIMEOUT_VARIABLE,
    Served,
    ServeRequest,
    _judge,
    serve,
)

TOKEN_ENV = "SHOP_BGTASKS_API_TOKEN"

# the generated router's shape: a lifespan that opens the runner's pool on app.state, a
# status route that answers 404 for an unknown id, and 503 (with the generated log line)
# when the pool is missing
ROUTES = """
import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, HTTPException, Request

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app):
    app.state.queue = {}
    yield
    del app.state.queue


router = APIRouter(prefix="/tasks", lifespan=lifespan)


@router.get("/status/{task_id}")
async def task_status(task_id: str, request: Request):
    queue = getattr(request.app.state, "queue", None)
    if queue is None:
        logger.error("no arq pool on app.state: %s.lifespan is not running", __name__)
        raise HTTPException(status_code=503, detail="task queue unavailable")
    if task_id not in queue:
        raise HTTPException(status_code=404, detail="Unknown task id")
    return queue[task_id]
"""

MAIN = """
from fastapi import FastAPI

from shop.routes import router

app = FastAPI()
app.include_router(router)
"""


def _serve(
    tmp_path: Path,
    *,
    routes: str = ROUTES,
    main: str = MAIN,
    declared: frozenset[str] = frozenset(),
    **fields: Any,
) -> Served:
    """Write the app as shop/main.py beside the router shop/routes.py, then serve it."""
    package = tmp_path / "shop"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "routes.py").write_text(textwrap.dedent(routes))
    (package / "main.py").write_text(textwrap.dedent(main))
    return serve(replace(_request(tmp_path), **fields), declared=declared)


def _request(tmp_path: Path) -> ServeRequest:
    return ServeRequest(
        python=sys.executable,
        cwd=str(tmp_path),
        source_root=str(tmp_path),
        module="shop.main",
        attribute="app",
        factory=False,
        router_module="shop.routes",
        token_env=None,
        project_auth="",
        timeout=60.0,
    )


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_the_routes_own_404_is_the_proof(tmp_path: Path) -> None:
    served = _serve(tmp_path)
    assert served.outcome == PROVEN, served
    assert "GET /tasks/status/" in served.message
    assert "answered 404 with the app's lifespans running" in served.message


# -- 503 -----------------------------------------------------------------------------------


def test_503_from_a_lifespan_that_never_ran_says_so(tmp_path: Path) -> None:
    # included in a mounted sub-app: the route is reachable, but Starlette never runs a
    # mounted app's lifespans, so the pool is missing
    main = """
    from fastapi import FastAPI

    from shop.routes import router

    api = FastAPI()
    api.include_router(router)
    app = FastAPI()
    app.mount("/api", api)
    """
    served = _serve(tmp_path, main=main)
    assert served.outcome == FAILED, served
    message = _flat(served.message)
    assert "GET /api/tasks/status/" in message and "answered 503" in message
    assert "(task queue unavailable)" in message
    assert "lifespan did not run" in message
    assert "shop.routes.lifespan is not running" in message, "what the app logged"
    assert "include the generated router in the app uvicorn serves" in served.fix
    assert "mounted sub-app" in served.fix and "FastAPI(lifespan=...)" in served.fix


def test_503_from_a_broker_that_does_not_answer(tmp_path: Path) -> None:
    routes = """
    import logging
    from contextlib import asynccontextmanager

    from fastapi import APIRouter, HTTPException

    logger = logging.getLogger(__name__)


    @asynccontextmanager
    async def lifespan(app):
        logger.warning("Redis is not reachable; task endpoints answer 503 until it is")
        yield


    router = APIRouter(prefix="/tasks", lifespan=lifespan)


    @router.get("/status/{task_id}")
    async def task_status(task_id: str):
        logger.warning("task queue unavailable: ConnectionError")
        raise HTTPException(status_code=503, detail="task queue unavailable")
    """
    served = _serve(tmp_path, routes=routes)
    assert served.outcome == FAILED, served
    message = _flat(served.message)
    assert "answered 503 (task queue unavailable)" in message
    assert "the task queue is unreachable" in message
    assert "Redis is not reachable" in message, "what the app logged names the cause"
    assert "start the broker the settings name" in served.fix
    assert "`bgtasks doctor`" in served.fix and "`bgtasks dev` starts a local Redis" in served.fix
    # a broker that runs leaves the other cause: the fix says it too
    assert "lifespan did not run" in served.fix


# -- 500 -----------------------------------------------------------------------------------


def test_a_status_route_that_raises_is_a_500_with_its_error(tmp_path: Path) -> None:
    routes = """
    from fastapi import APIRouter

    router = APIRouter(prefix="/tasks")


    @router.get("/status/{task_id}")
    async def task_status(task_id: str):
        raise RuntimeError("result backend misconfigured")
    """
    served = _serve(tmp_path, routes=routes)
    assert served.outcome == FAILED, served
    message = _flat(served.message)
    assert "GET /tasks/status/" in message and "raised (500)" in message
    assert "routes.py" in message, "where it raised"
    assert "RuntimeError: result backend misconfigured" in message
    assert "fix the error above in the generated route" in served.fix


def test_a_status_route_that_answers_500_shows_its_detail(tmp_path: Path) -> None:
    routes = """
    from fastapi import APIRouter, HTTPException

    router = APIRouter(prefix="/tasks")


    @router.get("/status/{task_id}")
    async def task_status(task_id: str):
        raise HTTPException(status_code=500, detail="results are not kept")
    """
    served = _serve(tmp_path, routes=routes)
    assert served.outcome == FAILED, served
    assert "answered 500: results are not kept" in served.message
    assert "an unknown id should answer 404" in served.fix
    assert "status route" in served.fix


# -- 404 from the route table, a router the app does not serve ------------------------------


def test_a_404_from_the_route_table_is_not_the_routes_own(tmp_path: Path) -> None:
    # a sub-app mounted at the router's prefix, before it, takes every path below it: the
    # app lists the status route, but a request never reaches it
    main = """
    from fastapi import FastAPI

    from shop.routes import router

    app = FastAPI()
    app.mount("/tasks", FastAPI())
    app.include_router(router)
    """
    served = _serve(tmp_path, main=main)
    assert served.outcome == FAILED, served
    message = _flat(served.message)
    assert "answered 404 from the route table" in message
    assert "the status route is not reachable" in message
    assert "a mount or middleware in front of the app takes the path" in served.fix


def test_a_router_the_app_does_not_include(tmp_path: Path) -> None:
    main = """
    from fastapi import FastAPI

    import shop.routes  # imported, never included

    app = FastAPI()
    """
    served = _serve(tmp_path, main=main)
    assert served.outcome == FAILED, served
    assert "the app shop.main:app does not include the router of shop.routes" in served.message
    assert "app.include_router" in served.fix and "`bgtasks check`" in served.fix


def test_the_apps_own_route_of_the_same_name_proves_nothing(tmp_path: Path) -> None:
    # url_path_for finds routes by name: the app's own `task_status` (same parameter) is
    # the one it gives, and its 404 said nothing about the generated route (which is not
    # even included here)
    main = """
    from fastapi import FastAPI, HTTPException

    import shop.routes

    app = FastAPI()


    @app.get("/legacy/jobs/{task_id}")
    def task_status(task_id: str):
        raise HTTPException(status_code=404, detail="no such job")
    """
    served = _serve(tmp_path, main=main)
    assert served.outcome == NOT_PROVEN, served
    message = _flat(served.message)
    assert "GET /legacy/jobs/" in message and "reached shop.main.task_status" in message
    assert "not the status route of shop.routes" in message
    assert "a route of the same name" in message
    assert "`bgtasks check`" in served.fix and "another name" in served.fix


def test_no_status_route_proves_the_routes_are_served(tmp_path: Path) -> None:
    routes = """
    from fastapi import APIRouter

    router = APIRouter(prefix="/tasks")


    @router.post("/send-email")
    async def send_email():
        return {}
    """
    served = _serve(tmp_path, routes=routes)
    assert served.outcome == PROVEN, served
    assert "started with its lifespans and serves 1 route(s) of shop.routes" in served.message


# -- lifespans -----------------------------------------------------------------------------


def test_a_lifespan_that_fails_at_startup(tmp_path: Path) -> None:
    routes = ROUTES.replace(
        "    app.state.queue = {}\n",
        '    raise ConnectionRefusedError("redis:6379 refused the connection")\n',
    )
    served = _serve(tmp_path, routes=routes)
    assert served.outcome == FAILED, served
    message = _flat(served.message)
    assert "the app shop.main:app does not start: its lifespans fail" in message
    assert "routes.py" in message, "where it raised"
    assert "ConnectionRefusedError: redis:6379 refused the connection" in message
    assert "fix what the lifespan raised" in served.fix
    assert "a connection error means a service the settings name does not answer" in served.fix


def test_a_lifespan_that_fails_at_shutdown(tmp_path: Path) -> None:
    routes = ROUTES.replace(
        "    del app.state.queue\n", '    raise RuntimeError("the pool was closed twice")\n'
    )
    served = _serve(tmp_path, routes=routes)
    assert served.outcome == FAILED, served
    message = _flat(served.message)
    assert "answered 404 with the app's lifespans running" in message, "it did serve"
    assert "then the app's lifespans fail at shutdown" in message
    assert "RuntimeError: the pool was closed twice" in message
    assert "fix what the lifespan's cleanup raised" in served.fix


def test_a_failure_at_shutdown_does_not_hide_the_routes_verdict(tmp_path: Path) -> None:
    routes = ROUTES.replace(
        "    del app.state.queue\n", "    raise RuntimeError('closing')\n"
    ).replace('status_code=404, detail="Unknown task id"', 'status_code=500, detail="no store"')
    served = _serve(tmp_path, routes=routes)
    assert served.outcome == FAILED, served
    assert "answered 500: no store" in served.message, "the cause comes first"


# -- the wait, the interpreter ----------------------------------------------------------------


def test_an_app_that_does_not_answer_in_time(tmp_path: Path) -> None:
    main = "import time\n\ntime.sleep(60)\n" + MAIN
    served = _serve(tmp_path, main=main, timeout=3.0)
    assert served.outcome == FAILED, served
    assert "the app did not start and answer within 3 s" in served.message
    assert "something blocks at import or in a lifespan" in served.fix
    assert TIMEOUT_VARIABLE in served.fix, "how to allow more time"


def test_an_interpreter_that_exits_before_answering(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\necho 'libpython3.11.so: cannot open shared object' >&2\nexit 127\n"
    )
    python.chmod(0o755)
    served = _serve(tmp_path, python=str(python))
    assert served.outcome == FAILED, served
    assert f"{python} exited 127 before answering" in served.message
    assert "libpython3.11.so: cannot open shared object" in served.message
    assert "--python" in served.fix


def test_an_interpreter_that_cannot_run(tmp_path: Path) -> None:
    python = tmp_path / "no-such-python"
    served = _serve(tmp_path, python=str(python))
    assert served.outcome == FAILED, served
    assert f"{python} cannot run" in served.message
    assert "--python" in served.fix


def test_a_declared_package_not_installed_yet_is_not_a_failure(tmp_path: Path) -> None:
    main = "import bgtasks_not_installed_yet\n" + MAIN
    served = _serve(tmp_path, main=main, declared=frozenset({"bgtasks-not-installed-yet"}))
    assert served.outcome == NOT_PROVEN, served
    assert "bgtasks-not-installed-yet is not installed in" in served.message
    assert "install the project's dependencies" in served.fix and "`bgtasks doctor`" in served.fix
    # undeclared, it is the app's own import error
    served = _serve(tmp_path / "undeclared", main=main)
    assert served.outcome == FAILED and "does not import" in served.message, served


# -- the token -------------------------------------------------------------------------------

GUARDED = """
import os

from fastapi import APIRouter, Depends, HTTPException, Request


def caller(request: Request) -> None:
    expected = os.environ.get("SHOP_API_TOKEN", "")  # not the variable verify sets
    if not expected or request.headers.get("authorization") != f"Bearer {expected}":
        raise HTTPException(status_code=401, detail="Missing or invalid API token")


router = APIRouter(prefix="/tasks", dependencies=[Depends(caller)])


@router.get("/status/{task_id}")
async def task_status(task_id: str):
    raise HTTPException(status_code=404, detail="Unknown task id")
"""


def test_a_401_with_the_token_set_names_the_variable(tmp_path: Path) -> None:
    served = _serve(tmp_path, routes=GUARDED, token_env=TOKEN_ENV)
    assert served.outcome == FAILED, served
    message = _flat(served.message)
    assert f"answered 401 with {TOKEN_ENV} set" in message
    assert f"the auth hook does not read the token from {TOKEN_ENV}" in message
    assert "env_prefix" in served.fix and "alias" in served.fix


def test_a_401_from_the_apps_own_auth_is_proof(tmp_path: Path) -> None:
    served = _serve(tmp_path, routes=GUARDED, token_env=TOKEN_ENV, project_auth="[Depends(sso)]")
    assert served.outcome == PROVEN, served
    assert "answered 401 from the app's own auth ([Depends(sso)])" in served.message


# -- feature routes ----------------------------------------------------------------------------

FEATURES = (
    ROUTES
    + """

from fastapi.responses import PlainTextResponse


@router.get("/metrics", name="bgtasks_metrics", response_class=PlainTextResponse)
async def metrics():
    return "# TYPE bgtasks_tasks_total counter\\nbgtasks_tasks_total 0\\n"


@router.get("/dashboard/data", name="bgtasks_dashboard_data")
async def dashboard_data():
    {dashboard}
"""
)


def _features(tmp_path: Path, dashboard: str) -> dict[str, tuple[str, str, str]]:
    served = _serve(
        tmp_path,
        routes=FEATURES.replace("{dashboard}", dashboard),
        features=("metrics", "dashboard"),
    )
    assert served.outcome == PROVEN, "a feature route's failure is its own verdict"
    return {f.feature: (f.outcome, _flat(f.message), f.fix) for f in served.features}


def test_feature_routes_that_answer_are_proven(tmp_path: Path) -> None:
    answers = _features(tmp_path, 'return {"queues": []}')
    assert answers["metrics"][:2] == (PROVEN, "GET /tasks/metrics answered 200")
    assert answers["dashboard"][:2] == (PROVEN, "GET /tasks/dashboard/data answered 200")


def test_a_feature_route_that_answers_503_points_at_redis(tmp_path: Path) -> None:
    answers = _features(
        tmp_path,
        'raise HTTPException(status_code=503, detail="The task store is unavailable")',
    )
    outcome, message, fix = answers["dashboard"]
    assert outcome == FAILED
    assert "GET /tasks/dashboard/data answered 503" in message
    assert "The task store is unavailable" in message
    assert "Redis does not answer" in fix and "`bgtasks doctor`" in fix
    assert "token" not in fix, "the fix for this status only"
    assert answers["metrics"][0] == PROVEN


def test_a_feature_route_that_raises_is_its_own_failure(tmp_path: Path) -> None:
    answers = _features(tmp_path, 'raise KeyError("queues")')
    outcome, message, fix = answers["dashboard"]
    assert outcome == FAILED
    assert "GET /tasks/dashboard/data raised (500)" in message
    assert "KeyError: 'queues'" in message
    assert "fix the error above in the route" in fix


def test_a_feature_route_the_app_does_not_serve(tmp_path: Path) -> None:
    served = _serve(tmp_path, features=("metrics",))
    assert served.outcome == PROVEN, served
    (metrics,) = served.features
    assert metrics.outcome == FAILED
    assert "the app serves no /metrics route of shop.routes" in metrics.message
    assert "`bgtasks update --with metrics`" in metrics.fix


def test_a_feature_route_behind_the_apps_own_auth_is_proven(tmp_path: Path) -> None:
    routes = GUARDED + (
        '\n\n@router.get("/metrics", name="bgtasks_metrics")\nasync def metrics():\n'
        '    return "bgtasks_tasks_total 0"\n'
    )
    served = _serve(
        tmp_path,
        routes=routes,
        token_env=TOKEN_ENV,
        project_auth="[Depends(sso)]",
        features=("metrics",),
    )
    (metrics,) = served.features
    assert metrics.outcome == PROVEN, metrics
    assert "answered 401 from the app's own auth ([Depends(sso)])" in metrics.message


def test_a_feature_route_that_refuses_the_token(tmp_path: Path) -> None:
    routes = GUARDED + (
        '\n\n@router.get("/metrics", name="bgtasks_metrics")\nasync def metrics():\n'
        '    return "bgtasks_tasks_total 0"\n'
    )
    served = _serve(tmp_path, routes=routes, token_env=TOKEN_ENV, features=("metrics",))
    (metrics,) = served.features
    assert metrics.outcome == FAILED, metrics
    assert "GET /tasks/metrics answered 401" in metrics.message
    assert "env_prefix" in metrics.fix and "Redis" not in metrics.fix


# -- answers no subprocess gives on demand ----------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "outcome", "said", "fix"),
    [
        (
            {"stage": "client", "missing": "httpx", "error": "No module named 'httpx'"},
            NOT_PROVEN,
            "not served yet: httpx is not installed in",
            "install the project's dependencies",
        ),
        (
            {"stage": "client", "error": "ImportError: cannot import name 'TestClient'"},
            FAILED,
            "fastapi.testclient does not import: ImportError: cannot import name",
            "install httpx",
        ),
    ],
)
def test_a_test_client_that_does_not_import(
    tmp_path: Path, answer: dict[str, object], outcome: str, said: str, fix: str
) -> None:
    served = _judge(_request(tmp_path), answer, frozenset())
    assert served.outcome == outcome, served
    assert said in served.message
    assert fix in served.fix
