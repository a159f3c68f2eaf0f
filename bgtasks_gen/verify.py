"""Serve the scaffolded app once, in the project's own interpreter, and ask it a question.

In a subprocess of that interpreter (bgtasks never imports the project's code), with a
timeout: import the served app, start it with its lifespans (`TestClient(app)` as a
context manager, so the runner's connections open as they would under uvicorn), and GET
the generated status route for an id nobody issued, with a bearer token the settings
class reads from the environment. The generated handler answers 404 with its own body:
that proves the router is included, the token reaches the auth hook, the lifespans ran
and the broker answered. A 404 from the route table, a 503, a 500, an import error or a
lifespan that fails (at startup or at shutdown) is a failure, with its cause and the fix;
the app's own route answering in its place (one of the same name) proves nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgtasks_gen.project_env import Interpreter, StackProject

TIMEOUT_VARIABLE = "BGTASKS_VERIFY_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
MARKER = "BGTASKS-SERVE:"
ROUTE_TABLE_404 = "Not Found"  # Starlette's body for a path no route matches

PROVEN, FAILED, NOT_PROVEN = "proven", "failed", "not proven"


@dataclass(frozen=True)
class ServeRequest:
    python: str
    cwd: str  # the project root (pydantic-settings reads .env from there)
    source_root: str  # first on PYTHONPATH: the working tree is what runs
    module: str
    attribute: str
    factory: bool
    router_module: str  # the generated router's module: its routes are looked for
    token_env: str | None  # the environment variable the API token is read from
    project_auth: str  # the app's own auth on the include ("" when none)
    timeout: float
    # the features whose GET routes are asked too ("metrics", "dashboard")
    features: tuple[str, ...] = ()


# a feature's route, as the served app is asked for it: path suffix, and what its body
# holds when it works (the metrics text names its first family; the page data lists queues)
FEATURE_ROUTES = {
    "metrics": ("/metrics", "bgtasks_tasks_total"),
    "dashboard": ("/dashboard/data", '"queues"'),
}


# a 401/403 although the token is set: the hook reads another variable
TOKEN_FIX = (
    "check that the settings field behind the access hook reads the variable the token is "
    "set in (env_prefix, alias, case_sensitive)"
)
# what a feature route's failing answer asks of the user
FEATURE_FIXES = {
    503: "Redis does not answer (`bgtasks doctor` checks the broker)",
    401: TOKEN_FIX,
    403: TOKEN_FIX,
}


@dataclass(frozen=True)
class FeatureAnswer:
    """One feature route asked of the served app: PROVEN or FAILED, with the fix."""

    feature: str
    outcome: str
    message: str
    fix: str = ""


@dataclass(frozen=True)
class Served:
    outcome: str  # proven | failed | not proven
    message: str
    fix: str = ""
    features: tuple[FeatureAnswer, ...] = ()

    @property
    def failed(self) -> bool:
        return self.outcome == FAILED


def verify_timeout() -> float:
    raw = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


def serve_request(project: StackProject, interpreter: Interpreter) -> ServeRequest:
    """What to serve for a scaffolded project, read as `doctor` and `dev` read it."""
    module, attribute, factory = project.served_app
    routes_module = str(project.state_layout.get("routes_module") or "")
    token_env = (
        project.env_name("bgtasks_api_token") if "bgtasks_api_token" in project.fields else None
    )
    project_auth = ""
    if project.layout is not None:
        project_auth = dict(project.layout.app.include_keywords).get("dependencies", "")
    recorded = project.state_layout.get("features", [])
    features = tuple(
        name for name in (recorded if isinstance(recorded, list) else []) if name in FEATURE_ROUTES
    )
    return ServeRequest(
        python=str(interpreter.path),
        cwd=str(project.root),
        source_root=str(project.source_root),
        module=module,
        attribute=attribute,
        factory=factory,
        router_module=f"{routes_module}.{project.spec.router_file}",
        token_env=token_env,
        project_auth=project_auth,
        timeout=verify_timeout(),
        features=features,
    )


# -- run in the project's interpreter ---------------------------------------------------------


def _serve_main(raw_request: str) -> None:
    """Serve the app once and answer as JSON on stdout. Runs in the project's interpreter:
    the standard library and the project's own packages only."""
    import contextlib
    import importlib
    import inspect
    import json
    import logging
    import logging.handlers
    import sys
    import traceback
    import uuid

    request = json.loads(raw_request)
    app: Any = None
    router: Any = None

    def describe(error: BaseException) -> str:
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
        text = traceback.format_exception_only(type(error), error)[-1].strip()
        return (where + text.splitlines()[0])[:500]

    def missing(error: BaseException) -> str | None:
        return getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None

    def failure(stage: str, error: BaseException) -> dict[str, Any]:
        return {"stage": stage, "error": describe(error), "missing": missing(error)}

    def ask_feature(client: Any, suffix: str, headers: dict[str, str]) -> dict[str, Any]:
        """GET the router's route ending in `suffix` where the app serves it."""
        for route in getattr(router, "routes", []):
            route_path = getattr(route, "path", "")
            if route_path.endswith(suffix) and "GET" in (getattr(route, "methods", None) or ()):
                try:
                    path = app.url_path_for(route.name)
                except Exception:  # noqa: BLE001 - not included where the app serves
                    return {"path": ""}
                try:
                    response = client.get(path, headers=headers)
                except BaseException as error:  # noqa: BLE001 - its verdict, not the status route's
                    return {"path": path, "error": describe(error)}
                return {"path": path, "status": response.status_code, "text": response.text[:4000]}
        return {"path": ""}

    answered: list[Any] = []

    async def noting(scope: Any, receive: Any, send: Any) -> None:
        """The app, noting the endpoint that answered each request (routers write it into
        the scope): url_path_for finds routes by name, and the app's own route of the
        status route's name would take the path it gives."""
        await app(scope, receive, send)
        if scope["type"] == "http":
            answered.append(scope.get("endpoint"))

    def run() -> dict[str, Any]:
        nonlocal app, router
        try:
            app = getattr(importlib.import_module(request["module"]), request["attribute"])
            if request["factory"]:
                app = app()
            router = importlib.import_module(request["router_module"]).router
        except BaseException as error:  # noqa: BLE001 - the project's code may raise anything
            return failure("import", error)
        try:
            from fastapi.testclient import TestClient
        except BaseException as error:  # noqa: BLE001
            return failure("client", error)
        ours = list(getattr(router, "routes", []))
        status = [
            route
            for route in ours
            if "/status/{" in getattr(route, "path", "")
            and "GET" in (getattr(route, "methods", None) or ())
        ]
        path = ""
        included = 0
        for route in status[:1] or ours[:1]:
            params = {name: uuid.uuid4().hex for name in route.param_convertors}
            try:
                path = app.url_path_for(route.name, **params)
                included = len(ours)
            except Exception:  # noqa: BLE001 - Starlette's NoMatchFound: not included
                path = ""
        answer: dict[str, Any] = {
            "stage": "lifespan",
            "routes": included,
            "path": path if status else "",
        }
        headers = {"Authorization": f"Bearer {request['token']}"} if request["token"] else {}
        # what the app logs while it serves: the generated code names a 503's cause there
        # (the broker does not answer, or its lifespan is not running)
        logs = logging.handlers.BufferingHandler(10_000)
        logs.setLevel(logging.WARNING)
        logging.getLogger().addHandler(logs)
        try:
            with TestClient(noting) as client:
                answer["stage"] = "request"
                if answer["path"]:
                    response = client.get(answer["path"], headers=headers)
                    try:
                        body = response.json()
                    except ValueError:
                        body = response.text[:300]
                    answer.update(status=response.status_code, body=body)
                    # a route's endpoint is its function; a mount's is its app (that
                    # answered only when no route of it matched: the route table's 404)
                    endpoint = answered[-1] if answered else None
                    if inspect.isroutine(endpoint) and endpoint is not status[0].endpoint:
                        qualname = getattr(endpoint, "__qualname__", repr(endpoint))
                        module = getattr(endpoint, "__module__", "")
                        answer["answered_by"] = f"{module}.{qualname}"
                answer["features"] = {
                    name: ask_feature(client, suffix, headers)
                    for name, suffix in request["features"].items()
                }
                answer["stage"] = "shutdown"
            answer["stage"] = "served"
        except BaseException as error:  # noqa: BLE001
            answer["error"] = describe(error)
        finally:
            logging.getLogger().removeHandler(logs)
        logged = []
        for record in logs.buffer[-3:]:
            with contextlib.suppress(Exception):  # a record whose arguments do not format
                logged.append(record.getMessage()[:300])
        if logged:
            answer["logged"] = logged
        return answer

    with contextlib.redirect_stdout(sys.stderr):
        answer = run()
    sys.stdout.write("BGTASKS-SERVE:" + json.dumps(answer) + "\n")


def _ask(request: ServeRequest, token: str) -> dict[str, Any] | Served:
    from bgtasks_gen.project_env import script_of

    payload = {
        "module": request.module,
        "attribute": request.attribute,
        "factory": request.factory,
        "router_module": request.router_module,
        "token": token if request.token_env else "",
        "features": {name: FEATURE_ROUTES[name][0] for name in request.features},
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (request.source_root, env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    if request.token_env:
        env[request.token_env] = token
    command = [request.python, "-c", script_of(_serve_main), json.dumps(payload)]
    try:
        result = subprocess.run(
            command,
            cwd=request.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=request.timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return Served(
            FAILED,
            f"the app did not start and answer within {request.timeout:.0f} s",
            "something blocks at import or in a lifespan (a connection without a timeout?); "
            f"{TIMEOUT_VARIABLE} allows more time",
        )
    except OSError as error:
        return Served(FAILED, f"{request.python} cannot run: {error}", "check --python")
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(MARKER):
            answer: dict[str, Any] = json.loads(line.removeprefix(MARKER))
            return answer
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return Served(
        FAILED,
        f"{request.python} exited {result.returncode} before answering: {last}"[:500],
        "is it a working Python 3 interpreter? (--python)",
    )


def serve(request: ServeRequest, *, declared: frozenset[str] = frozenset()) -> Served:
    """Serve the app once and judge the answer. `declared`: the canonical names of the
    packages the project declares (a missing one means "not installed yet")."""
    token = secrets.token_urlsafe(24)
    answer = _ask(request, token)
    if isinstance(answer, Served):
        return answer
    judged = _judge(request, answer, declared)
    return replace(judged, features=_feature_answers(request, answer))


def _feature_answers(request: ServeRequest, answer: dict[str, Any]) -> tuple[FeatureAnswer, ...]:
    """Each recorded feature's route as the served app answered it (none when the app
    never got as far as serving)."""
    asked = answer.get("features")
    if not isinstance(asked, dict):
        return ()
    found: list[FeatureAnswer] = []
    for name in request.features:
        reply = asked.get(name) or {}
        suffix, sign = FEATURE_ROUTES[name]
        path, status, text = reply.get("path"), reply.get("status"), str(reply.get("text", ""))
        raised = reply.get("error")
        if not path:
            found.append(
                FeatureAnswer(
                    name,
                    FAILED,
                    f"the app serves no {suffix} route of {request.router_module}",
                    f"`bgtasks check` names what is missing; `bgtasks update --with {name}` "
                    "writes it again",
                )
            )
        elif raised:
            found.append(
                FeatureAnswer(
                    name,
                    FAILED,
                    f"GET {path} raised (500): {raised}",
                    "fix the error above in the route or what it calls",
                )
            )
        elif status == 200 and sign in text:
            found.append(FeatureAnswer(name, PROVEN, f"GET {path} answered 200"))
        elif status in (401, 403) and request.project_auth:
            found.append(
                FeatureAnswer(
                    name,
                    PROVEN,
                    f"GET {path} answered {status} from the app's own auth "
                    f"({request.project_auth})",
                )
            )
        else:
            found.append(
                FeatureAnswer(
                    name,
                    FAILED,
                    f"GET {path} answered {status}: {text[:200]}",
                    FEATURE_FIXES.get(int(status or 0), "look at the route and what it calls"),
                )
            )
    return tuple(found)


def _judge(request: ServeRequest, answer: dict[str, Any], declared: frozenset[str]) -> Served:
    """The status route's answer as a verdict on the whole app."""
    from bgtasks_gen.install_hint import distribution_for

    target = f"{request.module}:{request.attribute}"
    stage = answer.get("stage")
    error = str(answer.get("error") or "")
    missing = answer.get("missing")
    if stage in ("import", "client") and missing:
        top = str(missing).partition(".")[0]
        distribution = distribution_for(top)
        local = (Path(request.source_root) / top).exists() or (
            Path(request.source_root) / f"{top}.py"
        ).exists()
        name = distribution.lower().replace("_", "-")
        if not local and (name in declared or stage == "client"):
            return Served(
                NOT_PROVEN,
                f"not served yet: {distribution} is not installed in {request.python}",
                "install the project's dependencies (the next steps), then `bgtasks doctor` "
                "serves the app and proves it",
            )
    if stage == "import":
        return Served(
            FAILED,
            f"the app {target} does not import: {error}",
            f"fix it; the whole traceback: {shlex.quote(request.python)} -c "
            f"'import {request.module}' (from {request.source_root})",
        )
    if stage == "client":
        return Served(FAILED, f"fastapi.testclient does not import: {error}", "install httpx")
    if stage == "lifespan":
        return Served(
            FAILED,
            f"the app {target} does not start: its lifespans fail: {error}",
            "fix what the lifespan raised (where the error says); a connection error means a "
            "service the settings name does not answer (`bgtasks doctor` checks each; "
            "`bgtasks dev` starts a local Redis)",
        )
    if stage == "shutdown":
        # it served, then a lifespan's cleanup raised: uvicorn would log it on every stop
        served = _judge(request, {**answer, "stage": "served"}, declared)
        if served.failed:
            return served
        return Served(
            FAILED,
            f"{served.message.removeprefix('served: ')}; then the app's lifespans fail at "
            f"shutdown: {error}",
            "fix what the lifespan's cleanup raised (where the error says): connections "
            "it leaves open are never closed",
        )
    if stage == "request":
        return Served(
            FAILED,
            f"GET {answer.get('path')} raised (500): {error}",
            "fix the error above in the generated route or what it calls",
        )
    if not answer.get("routes"):
        return Served(
            FAILED,
            f"the app {target} does not include the router of {request.router_module}",
            "include its router in the app (app.include_router), as init does; "
            "`bgtasks check` names what is missing",
        )
    path = str(answer.get("path") or "")
    if not path:
        return Served(
            PROVEN,
            f"served: {target} started with its lifespans and serves "
            f"{answer['routes']} route(s) of {request.router_module}",
        )
    status = answer.get("status")
    body = answer.get("body")
    detail = body.get("detail") if isinstance(body, dict) else body
    call = f"GET {path}"
    if answer.get("answered_by"):
        return Served(
            NOT_PROVEN,
            f"not proven: {call} reached {answer['answered_by']} (it answered {status}), not "
            f"the status route of {request.router_module}: the app has a route of the same "
            "name, and url_path_for gave its path",
            "`bgtasks check` says whether the router is included; give the app's own route "
            "another name (its function name, or name=...) so that `bgtasks doctor` can ask "
            "the generated one",
        )
    if status == 404 and detail != ROUTE_TABLE_404:
        return Served(PROVEN, f"served: {call} answered 404 with the app's lifespans running")
    if status == 404:
        return Served(
            FAILED,
            f"{call} answered 404 from the route table: the status route is not reachable "
            "at the path the app lists",
            "a mount or middleware in front of the app takes the path; serve the router "
            "where the app's own routes are",
        )
    if status in (401, 403) and request.project_auth:
        return Served(
            PROVEN,
            f"served: {target} started with its lifespans; {call} answered {status} from "
            f"the app's own auth ({request.project_auth}), which guards the router",
        )
    if status in (401, 403):
        return Served(
            FAILED,
            f"{call} answered {status} with {request.token_env} set: the auth hook does "
            f"not read the token from {request.token_env}",
            TOKEN_FIX,
        )
    if status == 503:
        logged = " | ".join(str(line) for line in answer.get("logged") or ())
        said = f"; the app logged: {logged[:400]}" if logged else ""
        if "lifespan" in logged:
            # the generated code says so when the pool its lifespan opens is not there
            return Served(
                FAILED,
                f"{call} answered 503 ({detail}): the runner's lifespan did not run in the "
                f"app that serves the route{said}",
                "include the generated router in the app uvicorn serves, not in a mounted "
                "sub-app (Starlette never runs a mounted app's lifespans); a FastAPI that "
                "predates router lifespans needs the generated lifespan in "
                "FastAPI(lifespan=...)",
            )
        return Served(
            FAILED,
            f"{call} answered 503 ({detail}): the task queue is unreachable{said}",
            "start the broker the settings name, or point its URL at one that runs "
            "(`bgtasks doctor` checks it; `bgtasks dev` starts a local Redis); if it runs, "
            "the runner's lifespan did not run: include the router in the app uvicorn serves",
        )
    return Served(
        FAILED,
        f"{call} answered {status}: {str(detail)[:300]}",
        "an unknown id should answer 404: look at the status route and what it calls",
    )


# -- for init ----------------------------------------------------------------------------------


def project_interpreter(root: Path, python: Path | None) -> Interpreter | None:
    """The project's own environment (--python, else its .venv/venv or poetry's), never
    the one bgtasks runs from; None when it has none. A wrong --python is bad input."""
    from bgtasks_gen.project_env import NoInterpreter, find_interpreter

    try:
        return find_interpreter(root, python, environ={})
    except NoInterpreter:
        if python is not None:
            raise
        return None


def prove_written(root: Path, interpreter: Interpreter) -> Served:
    """Serve a project init has just written, in its interpreter."""
    from bgtasks_gen.errors import BgtasksError
    from bgtasks_gen.install_hint import declared_names
    from bgtasks_gen.project_env import load_stack_project

    try:
        project = load_stack_project(root)
    except BgtasksError as error:
        return Served(NOT_PROVEN, f"not served: {error.message}", error.hint)
    declared = frozenset(declared_names(project.root, project.source_root))
    return serve(serve_request(project, interpreter), declared=declared)
