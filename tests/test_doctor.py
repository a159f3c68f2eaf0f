"""`bgtasks doctor`: every check seen passing and failing against the real thing.

The projects are freshly scaffolded examples; the interpreters are the runner
environments (.venvs/celery, .venvs/arq); the services are a private redis-server, the
machine's RabbitMQ, a real SMTP sink, a closed port for "down". One exception: the
machine's RabbitMQ is older than 4.3, so the rule for 4.3 is checked against a socket
that speaks the real AMQP 0-9-1 greeting of a 4.3 server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    Proc,
    SmtpSink,
    free_port,
    missing,
    port_open,
    redis_server,
    runner_python,
    running,
    scaffold,
    smtp_sink,
    start_process,
    wait_until,
)

CELERY_APP = "app.tasks.celery_app"
SETTINGS_PREFIXES = (
    *("CELERY_", "REDIS_", "SMTP_", "EMAIL_", "SECRET_KEY", "VIRTUAL_ENV", "BGTASKS_"),
)
# the token the task routes accept: an empty one refuses every request (test_doctor_gaps.py)
API_TOKEN = {"BGTASKS_API_TOKEN": "doctor-test-token"}


# -- running doctor ---------------------------------------------------------------------


def clean_environment(**values: str) -> dict[str, str]:
    """This process's environment without any setting the projects read, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(SETTINGS_PREFIXES)}
    return {**env, **values}


def doctor(
    project: Path, python: Path | None, env: dict[str, str], *options: str
) -> tuple[int, str]:
    command = [sys.executable, "-m", "bgtasks_gen", "doctor", str(project), *options]
    if python is not None:
        command += ["--python", str(python)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    return result.returncode, result.stdout + result.stderr


def doctor_json(
    project: Path, python: Path | None, env: dict[str, str]
) -> tuple[int, dict[str, dict[str, str]]]:
    code, output = doctor(project, python, env, "--json")
    report = json.loads(output)
    checks: dict[str, dict[str, str]] = {}
    for check in report["checks"]:
        assert check["name"] not in checks, f"two {check['name']} checks: {output}"
        checks[check["name"]] = check
    assert report["ok"] is (code == 0), output
    return code, checks


def passed(checks: dict[str, dict[str, str]], *names: str) -> None:
    for name in names:
        assert checks[name]["status"] == "pass", (name, checks[name], checks)


def failed(checks: dict[str, dict[str, str]], name: str) -> dict[str, str]:
    check = checks[name]
    assert check["status"] == "fail", (name, check, checks)
    assert check["fix"], f"a failed check says how to fix it: {check}"
    return check


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("doctor")


@pytest.fixture(scope="module")
def redis_url(workdir: Path) -> Iterator[str]:
    with redis_server(workdir) as url:
        yield url


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as server:
        yield server


@pytest.fixture(scope="module")
def celery_python() -> Path:
    return runner_python("celery")


@pytest.fixture(scope="module")
def arq_python() -> Path:
    return runner_python("arq")


@pytest.fixture(scope="module")
def scaffolded(workdir: Path) -> dict[str, Path]:
    """One pristine scaffold per runner (and broker); tests work on copies."""
    return {
        "celery": scaffold("layered", workdir / "celery", "--runner", "celery"),
        "rabbitmq": scaffold(
            "layered", workdir / "rabbitmq", "--runner", "celery", "--broker", "rabbitmq"
        ),
        "arq": scaffold("layered", workdir / "arq", "--runner", "arq"),
    }


def copy_of(scaffolded: dict[str, Path], name: str, dest: Path) -> Path:
    project = dest / name
    shutil.copytree(scaffolded[name], project)
    return project


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def celery_env(redis_url: str, sink: SmtpSink, **values: str) -> dict[str, str]:
    defaults = {
        "CELERY_BROKER_URL": f"{redis_url}/0",
        "CELERY_RESULT_BACKEND": f"{redis_url}/1",
        "SMTP_HOST": sink.host,
        "SMTP_PORT": str(sink.port),
        **API_TOKEN,
    }
    return clean_environment(**{**defaults, **values})


def closed_port_url(db: int, password: str = "") -> str:
    credentials = f":{password}@" if password else ""
    return f"redis://{credentials}127.0.0.1:{free_port()}/{db}"


# -- celery ------------------------------------------------------------------------------


def test_a_healthy_celery_project_passes_every_check(
    scaffolded: dict[str, Path], celery_python: Path, redis_url: str, sink: SmtpSink
) -> None:
    code, checks = doctor_json(scaffolded["celery"], celery_python, celery_env(redis_url, sink))
    assert code == 0, checks
    passed(checks, "environment", "celery", "kombu", "redis-py", "settings", "broker")
    passed(checks, "result backend", "smtp", "worker import", "app import", "schedules")
    passed(checks, "lifespan", "celery beat", "api token")
    assert "kombu 5." in checks["redis-py"]["detail"], "redis-py is checked against kombu"
    assert "SMTP_HOST (environment)" in checks["settings"]["detail"]
    assert "SMTP_TIMEOUT" in checks["settings"]["detail"].split("defaults:")[1]
    assert "2 entries" in checks["schedules"]["detail"]
    assert "rabbitmq" not in checks, "a Redis broker has no RabbitMQ check"

    # the same, for people: one line per check, then the exit code
    code, output = doctor(scaffolded["celery"], celery_python, celery_env(redis_url, sink))
    assert code == 0
    assert f"✓ broker: {redis_url}/0 answers PING" in output
    assert "✗" not in output


def test_services_down_settings_missing_and_a_stale_beat_entry_each_fail(
    scaffolded: dict[str, Path], celery_python: Path, tmp_path: Path
) -> None:
    project = copy_of(scaffolded, "celery", tmp_path)
    edit(
        project / "app/core/config.py",
        '    DATABASE_URL: str = "postgresql://localhost/shop"\n',
        '    DATABASE_URL: str = "postgresql://localhost/shop"\n    SECRET_KEY: str\n',
    )
    edit(
        project / "app/tasks/celery_app.py",
        '"task": "app.tasks.tasks.cleanup_expired_tokens"',
        '"task": "app.tasks.tasks.purge_sessions"',
    )
    env = clean_environment(
        CELERY_BROKER_URL=closed_port_url(0, password="s3cret-pass"),
        CELERY_RESULT_BACKEND=closed_port_url(1),
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(free_port()),
    )
    code, checks = doctor_json(project, celery_python, env)
    assert code == 1
    broker = failed(checks, "broker")
    assert "nothing listens there" in broker["detail"]
    assert "s3cret-pass" not in json.dumps(checks), "passwords never reach the output"
    assert "redis://:****@127.0.0.1:" in broker["detail"]
    failed(checks, "result backend")
    failed(checks, "smtp")
    settings = failed(checks, "settings")
    assert "SECRET_KEY" in settings["detail"] and "not set" in settings["detail"]
    assert settings["fix"].startswith("export SECRET_KEY=")
    # the settings object cannot be built, so nothing that imports it can be either
    assert "SECRET_KEY" in failed(checks, "worker import")["detail"]
    schedules = failed(checks, "schedules")
    assert "'purge_sessions'" in schedules["detail"]

    # set, the missing field resolves: the settings check says where it came from
    code, checks = doctor_json(project, celery_python, {**env, "SECRET_KEY": "x" * 32})
    passed(checks, "worker import", "app import")
    assert "SECRET_KEY (environment)" in checks["settings"]["detail"]
    # beat's own view: the entry names a task the celery app never registered
    detail = failed(checks, "schedules")["detail"]
    assert "celery app has not registered" in detail and "purge_sessions" in detail


def test_a_syntax_error_in_the_worker_module_fails_the_import_check(
    scaffolded: dict[str, Path],
    celery_python: Path,
    redis_url: str,
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    project = copy_of(scaffolded, "celery", tmp_path)
    worker = project / "app/tasks/celery_app.py"
    worker.write_text(worker.read_text() + "\ndef broken(:\n")
    code, checks = doctor_json(project, celery_python, celery_env(redis_url, sink))
    assert code == 1
    check = failed(checks, "worker import")
    assert "SyntaxError" in check["detail"] and f"{worker}:" in check["detail"], check
    assert f"-c 'import {CELERY_APP}'" in check["fix"]
    # discovery cannot read the project either: said once, the other checks still run
    assert f"{worker}:" in failed(checks, "project")["detail"]
    passed(checks, "environment", "celery", "redis-py", "celery beat")


def amqp_connection_start(version: str) -> bytes:
    """The first frame a RabbitMQ `version` sends: Connection.Start, AMQP 0-9-1."""

    def short(text: str) -> bytes:
        return bytes([len(text)]) + text.encode()

    def long(text: str) -> bytes:
        return struct.pack(">I", len(text)) + text.encode()

    capabilities = short("publisher_confirms") + b"t\x01"
    table = short("capabilities") + b"F" + struct.pack(">I", len(capabilities)) + capabilities
    table += short("product") + b"S" + long("RabbitMQ") + short("version") + b"S" + long(version)
    payload = struct.pack(">HHBB", 10, 10, 0, 9) + struct.pack(">I", len(table)) + table
    payload += long("PLAIN AMQPLAIN") + long("en_US")
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"


def amqp_greeter(version: str) -> tuple[int, threading.Event]:
    """A TCP server that greets each AMQP client as RabbitMQ `version` would."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        with server:
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                with client:
                    client.settimeout(5)
                    if client.recv(8) == b"AMQP\x00\x00\x09\x01":
                        client.sendall(amqp_connection_start(version))

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], stop


def test_rabbitmq_version_against_celery_queues(
    scaffolded: dict[str, Path],
    celery_python: Path,
    redis_url: str,
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    if not port_open("127.0.0.1", 5672):
        missing("RabbitMQ is not reachable on 127.0.0.1:5672")
    project = scaffolded["rabbitmq"]
    env = celery_env(redis_url, sink, CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//")
    code, checks = doctor_json(project, celery_python, env)
    assert code == 0, checks
    assert "amqp://guest:****@127.0.0.1:5672//" in checks["broker"]["detail"]
    assert "RabbitMQ 3." in checks["rabbitmq"]["detail"]
    passed(checks, "rabbitmq")

    port, stop = amqp_greeter("4.3.0")
    try:
        env = {**env, "CELERY_BROKER_URL": f"amqp://127.0.0.1:{port}//"}
        # celery 5.7 declares its control and event queues exclusive: 4.3 accepts them
        code, checks = doctor_json(project, celery_python, env)
        passed(checks, "broker", "rabbitmq")
        assert "exclusive" in checks["rabbitmq"]["detail"]
        # turned off (as celery 5.6 has them), 4.3 refuses them
        copy = copy_of(scaffolded, "rabbitmq", tmp_path)
        worker = copy / "app/tasks/celery_app.py"
        worker.write_text(
            worker.read_text() + "\ncelery_app.conf.control_queue_exclusive = False\n"
        )
        code, checks = doctor_json(copy, celery_python, env)
        assert code == 1
        check = failed(checks, "rabbitmq")
        assert "RabbitMQ 4.3.0" in check["detail"]
        assert "control_queue_exclusive=False" in check["detail"]
        assert "celery 5.7" in check["fix"]
    finally:
        stop.set()


def celery_beat(python: Path, project: Path, name: str, logs: Path, redis_url: str) -> Proc:
    command = [str(python), "-m", "celery", "-A", CELERY_APP, "beat", "--loglevel=info"]
    command += ["--schedule", str(logs / f"{name}-schedule")]
    env = {"CELERY_BROKER_URL": f"{redis_url}/0", "CELERY_RESULT_BACKEND": f"{redis_url}/1"}
    return start_process(command, cwd=project, log_path=logs / f"{name}.log", env=env)


def test_a_second_celery_beat_is_found(
    scaffolded: dict[str, Path],
    celery_python: Path,
    redis_url: str,
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    project = copy_of(scaffolded, "celery", tmp_path)
    env = celery_env(redis_url, sink)
    first = celery_beat(celery_python, project, "beat-1", tmp_path, redis_url)
    with running(first):
        wait_until(lambda: "beat: Starting" in first.log(), 30, f"beat 1\n{first.log()}")
        code, checks = doctor_json(project, celery_python, env)
        assert code == 0, checks
        assert str(first.popen.pid) in checks["celery beat"]["detail"]
        second = celery_beat(celery_python, project, "beat-2", tmp_path, redis_url)
        with running(second):
            wait_until(lambda: "beat: Starting" in second.log(), 30, f"beat 2\n{second.log()}")
            code, checks = doctor_json(project, celery_python, env)
            assert code == 1
            check = failed(checks, "celery beat")
            assert "2 celery beat processes" in check["detail"]
            assert {str(first.popen.pid), str(second.popen.pid)} <= set(
                check["detail"].replace(",", " ").replace(")", " ").split()
            )
        # the same module name in another folder is another project's beat
        other = copy_of(scaffolded, "celery", tmp_path / "other")
        code, checks = doctor_json(other, celery_python, env)
        assert checks["celery beat"]["detail"] == "no celery beat running yet"


# -- arq ---------------------------------------------------------------------------------


def arq_env(redis_url: str, sink: SmtpSink) -> dict[str, str]:
    return clean_environment(
        REDIS_URL=f"{redis_url}/0", SMTP_HOST=sink.host, SMTP_PORT=str(sink.port), **API_TOKEN
    )


def test_arq_packages_redis_and_lifespan_pass_in_the_arq_environment(
    scaffolded: dict[str, Path], arq_python: Path, redis_url: str, sink: SmtpSink
) -> None:
    code, checks = doctor_json(scaffolded["arq"], arq_python, arq_env(redis_url, sink))
    assert code == 0, checks
    passed(checks, "arq", "redis-py", "redis", "worker import", "app import", "lifespan")
    assert checks["redis-py"]["detail"].startswith("5."), checks["redis-py"]
    assert "celery beat" not in checks


def test_celery_environment_for_an_arq_project_has_the_wrong_redis_py(
    scaffolded: dict[str, Path], celery_python: Path, redis_url: str, sink: SmtpSink
) -> None:
    code, checks = doctor_json(scaffolded["arq"], celery_python, arq_env(redis_url, sink))
    assert code == 1
    check = failed(checks, "redis-py")
    assert check["detail"].startswith("8.") or check["detail"].startswith("7."), check
    assert "<6" in check["detail"]
    assert check["fix"] == f"{celery_python} -m pip install 'redis[hiredis]<6,>=5.0.1'"
    assert "not installed" in failed(checks, "arq")["detail"]
    passed(checks, "redis")  # the server is fine; the client library is not


OWN_LIFESPAN = """
from contextlib import asynccontextmanager


@asynccontextmanager
async def own_lifespan(app: FastAPI):  # the project's own lifespan
    yield


"""
ON_EVENT = """

@app.on_event("startup")
async def warm_cache() -> None:
    return None
"""


def test_on_event_handlers_next_to_a_lifespan_are_found(
    scaffolded: dict[str, Path],
    arq_python: Path,
    redis_url: str,
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    project = copy_of(scaffolded, "arq", tmp_path)
    main = project / "app/main.py"
    main.write_text(main.read_text() + ON_EVENT)
    if "lifespan=" not in main.read_text():
        # the pool's lifespan is the router's: the app has none, so FastAPI still runs
        # its on_event handlers
        code, checks = doctor_json(project, arq_python, arq_env(redis_url, sink))
        passed(checks, "lifespan")
        assert "1 @app.on_event handler(s) run at startup" in checks["lifespan"]["detail"]
        text = main.read_text().replace("app = FastAPI(", OWN_LIFESPAN + "app = FastAPI(", 1)
        main.write_text(text.replace("FastAPI(title=", "FastAPI(lifespan=own_lifespan, title=", 1))

    # a lifespan on the app: FastAPI skips its on_event handlers, silently
    code, checks = doctor_json(project, arq_python, arq_env(redis_url, sink))
    assert code == 1
    check = failed(checks, "lifespan")
    assert "1 @app.on_event handler(s)" in check["detail"]
    assert "combine_lifespans(on_event_handlers" in check["fix"]

    # composed as the fix says, the handlers run: the check passes
    text = re.sub(
        r"lifespan=(\w+)", r"lifespan=combine_lifespans(on_event_handlers, \1)", main.read_text()
    )
    main.write_text("from app.tasks.pool import combine_lifespans, on_event_handlers\n" + text)
    code, checks = doctor_json(project, arq_python, arq_env(redis_url, sink))
    passed(checks, "lifespan", "app import")
    assert "run at startup" in checks["lifespan"]["detail"]


# -- the environment and the project -----------------------------------------------------


def test_no_environment_is_one_failed_check(scaffolded: dict[str, Path], tmp_path: Path) -> None:
    code, checks = doctor_json(scaffolded["celery"], tmp_path / "nope/python", clean_environment())
    assert code == 1
    check = failed(checks, "environment")
    assert "no executable there" in check["detail"]
    assert "worker import" not in checks, "nothing is asked of an interpreter that is not there"

    code, checks = doctor_json(scaffolded["celery"], None, clean_environment())
    assert "no Python environment found" in failed(checks, "environment")["detail"]


def test_not_a_bgtasks_project_is_exit_2(tmp_path: Path) -> None:
    code, output = doctor(tmp_path, None, clean_environment())
    assert code == 2, output
    assert "no .bgtasks.toml" in output
    assert "Traceback" not in output


def test_the_projects_own_venv_is_found(
    scaffolded: dict[str, Path], arq_python: Path, tmp_path: Path, redis_url: str, sink: SmtpSink
) -> None:
    project = copy_of(scaffolded, "arq", tmp_path)
    # the arq environment, seen as the project's own .venv
    (project / ".venv").symlink_to(arq_python.parent.parent, target_is_directory=True)
    code, checks = doctor_json(project, None, arq_env(redis_url, sink))
    assert code == 0, checks
    detail = checks["environment"]["detail"]
    assert detail.startswith(f"{project / '.venv/bin/python'} (Python 3."), detail
    assert ".venv/ in the project" in detail


def test_each_recorded_feature_route_is_asked_of_the_served_app(
    workdir: Path, celery_python: Path, redis_url: str, sink: SmtpSink, tmp_path: Path
) -> None:
    project = scaffold("layered", tmp_path, "--runner", "celery", "--with", "metrics")
    env = celery_env(redis_url, sink)
    code, checks = doctor_json(project, celery_python, env)
    assert code == 0, checks
    passed(checks, "served", "metrics route", "dashboard route")
    assert checks["metrics route"]["detail"] == "GET /tasks/metrics answered 200"
    assert checks["dashboard route"]["detail"] == "GET /tasks/dashboard/data answered 200"

    # the metrics routes taken out of the router by hand: the task routes still serve
    edit(
        project / "app/api/v1/routes/tasks.py",
        "metrics.metrics_routes(\n",
        "(lambda *args, **kwargs: None)(\n",
    )
    code, checks = doctor_json(project, celery_python, env)
    assert code == 1, checks
    passed(checks, "served", "dashboard route")
    check = failed(checks, "metrics route")
    assert "serves no /metrics route" in check["detail"]
    assert "bgtasks update --with metrics" in check["fix"]
