"""`bgtasks doctor` on where the recorded features send what they collect: the traces'
exporter (`--with otel`) and the Sentry DSN (`--with sentry`).

Reachable means a real listening socket (a tiny OTLP/HTTP receiver answering 200), and
unreachable a port nothing listens on; the checks open real TCP connections.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bgtasks_gen.doctor import FAIL, PASS, SKIP, Check, otel_exporter_check, sentry_dsn_check
from tests.e2e.harness import SmtpSink, free_port, redis_server, runner_python, scaffold, smtp_sink
from tests.test_doctor import celery_env, doctor_json, edit, passed

KEY = "0123456789abcdef0123456789abcdef"


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[int]:
    """An OTLP/HTTP receiver on a free port: accepts any POST and answers 200."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def listener() -> Iterator[int]:
    """A bare listening TCP socket (accepts connections, says nothing)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


# -- the otel exporter ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "}],
)
def test_no_exporter_is_skipped_with_how_to_export(env: dict[str, str]) -> None:
    check = otel_exporter_check(env)
    assert check.status == SKIP
    assert "nothing is exported: set OTEL_TRACES_EXPORTER=otlp" in check.detail


def test_a_disabled_sdk_is_skipped() -> None:
    check = otel_exporter_check({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"})
    assert check.status == SKIP
    assert "OTEL_SDK_DISABLED" in check.detail


def test_console_passes_without_a_network() -> None:
    check = otel_exporter_check({"OTEL_TRACES_EXPORTER": "console"})
    assert (check.status, check.detail) == (PASS, "console exporter")


def test_otlp_traces_endpoint_that_listens_passes(receiver: int) -> None:
    url = f"http://127.0.0.1:{receiver}/v1/traces"
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url}
    check = otel_exporter_check(env)
    assert check.status == PASS, check
    assert url in check.detail


def test_otlp_base_endpoint_gets_the_traces_path(listener: int) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "console,otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{listener}/",
    }
    check = otel_exporter_check(env)
    assert check.status == PASS, check
    assert f"http://127.0.0.1:{listener}/v1/traces" in check.detail
    assert check.detail.startswith("console exporter; OTLP (http)")


def test_otlp_endpoint_nothing_listens_on_fails_with_the_fix() -> None:
    port = free_port()
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    check = otel_exporter_check(env)
    assert check.status == FAIL
    assert f"http://127.0.0.1:{port}/v1/traces: nothing listens there" in check.detail
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in check.fix


def test_otlp_without_an_endpoint_asks_the_sdk_default() -> None:
    check = otel_exporter_check({"OTEL_TRACES_EXPORTER": "otlp"})
    assert "http://localhost:4318/v1/traces" in check.detail
    assert check.status == PASS if _listens("localhost", 4318) else FAIL


def test_an_unknown_exporter_fails_naming_the_accepted_ones() -> None:
    check = otel_exporter_check({"OTEL_TRACES_EXPORTER": "jaeger"})
    assert check.status == FAIL
    assert "jaeger" in check.detail
    assert check.fix == "set OTEL_TRACES_EXPORTER to one of: console, none, otlp"
    # an exporter the project's interpreter has installed is accepted by its name
    installed = otel_exporter_check({"OTEL_TRACES_EXPORTER": "jaeger"}, ["jaeger", "console"])
    assert (installed.status, installed.detail) == (PASS, "jaeger exporter")


def _listens(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


# -- the sentry dsn ---------------------------------------------------------------------------


def test_an_empty_dsn_is_skipped_naming_the_variable() -> None:
    for empty in (None, "", "  "):
        check = sentry_dsn_check(empty, "APP_SENTRY_DSN")
        assert (check.status, check.detail) == (SKIP, "events are not sent: set APP_SENTRY_DSN")


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        (f"ftp://{KEY}@sentry.example/1", "its scheme is ftp, not http or https"),
        (f"{KEY}", "its scheme is none"),
        ("https://sentry.example/1", "it has no public key"),
        (f"https://{KEY}@sentry.example/", "it has no project id"),
        (f"https://{KEY}@sentry.example/project", "project id (the path's last part) is not"),
        (f"https://{KEY}@sentry.example:port/1", "its port is not a number"),
        (f"https://{KEY}@/1", "it has no host"),
    ],
)
def test_a_malformed_dsn_fails_without_showing_its_key(dsn: str, problem: str) -> None:
    check = sentry_dsn_check(dsn, "SENTRY_DSN")
    assert check.status == FAIL
    assert check.detail.startswith("SENTRY_DSN is not a Sentry DSN: ")
    assert problem in check.detail
    assert KEY not in check.detail + check.fix
    assert "SENTRY_DSN" in check.fix


def test_a_reachable_dsn_passes_masked(listener: int) -> None:
    check = sentry_dsn_check(f"http://{KEY}:old-secret@127.0.0.1:{listener}/sub/42", "SENTRY_DSN")
    assert check.status == PASS, check
    assert check.detail == (
        f"http://****@127.0.0.1:{listener}/sub/42: 127.0.0.1:{listener} accepts connections"
    )


def test_an_unreachable_dsn_fails_masked_with_the_fix() -> None:
    port = free_port()
    check = sentry_dsn_check(f"https://{KEY}@127.0.0.1:{port}/7", "SENTRY_DSN")
    assert check.status == FAIL
    assert check.detail == f"https://****@127.0.0.1:{port}/7: nothing listens there"
    assert f"127.0.0.1:{port}" in check.fix
    assert KEY not in check.detail + check.fix


# -- a whole doctor run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SmtpSink]]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url, smtp_sink() as sink:
        yield url, sink


@pytest.fixture(scope="module")
def otel_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaffold(
        "layered", tmp_path_factory.mktemp("otel"), "--runner", "celery", "--with", "otel"
    )


def test_doctor_checks_the_otel_packages_and_exporter(
    otel_project: Path, services: tuple[str, SmtpSink], receiver: int
) -> None:
    redis_url, sink = services
    python = runner_python("celery")
    endpoint = f"http://127.0.0.1:{receiver}"
    env = celery_env(
        redis_url,
        sink,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
    )
    code, checks = doctor_json(otel_project, python, env)
    assert code == 0, checks
    passed(checks, "otel exporter", "opentelemetry-sdk", "opentelemetry-api")
    passed(checks, "opentelemetry-exporter-otlp-proto-http", "served")
    assert f"{endpoint}/v1/traces" in checks["otel exporter"]["detail"]
    assert "the project needs <2,>=1.30" in checks["opentelemetry-sdk"]["detail"]

    down = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    code, checks = doctor_json(otel_project, python, down)
    assert code == 1
    assert checks["otel exporter"]["status"] == FAIL
    assert "nothing listens there" in checks["otel exporter"]["detail"]

    unset = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    code, checks = doctor_json(otel_project, python, unset)
    assert code == 0, checks
    assert checks["otel exporter"]["status"] == SKIP


def diagnosed(
    project: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Check]:
    """doctor run in this process, with `env` as the whole environment (the processes it
    starts inherit this process's)."""
    from bgtasks_gen.doctor import diagnose

    with monkeypatch.context() as patch:
        for key in [key for key in os.environ if key not in env]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        return {c.name: c for c in diagnose(project, runner_python("celery")).checks}


def test_a_project_without_features_has_no_feature_checks(
    tmp_path: Path, services: tuple[str, SmtpSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = scaffold("layered", tmp_path, "--runner", "celery", "--without", "dashboard")
    redis_url, sink = services
    env = celery_env(redis_url, sink, OTEL_TRACES_EXPORTER="otlp", SENTRY_DSN="x")
    checks = diagnosed(project, env, monkeypatch)
    assert checks["served"].status == PASS, checks
    assert not checks.keys() & {"otel exporter", "sentry dsn", "opentelemetry-sdk"}


def test_doctor_checks_the_sentry_dsn_the_settings_class_reads(
    otel_project: Path,
    services: tuple[str, SmtpSink],
    listener: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A project as `--with sentry` leaves it: the feature in the state file, a
    SENTRY_DSN field in the settings class (spelled in the class's own case)."""
    from bgtasks_gen import features

    if "sentry" not in features.FEATURES:
        monkeypatch.setitem(features.FEATURES, "sentry", "errors sent to Sentry")
    project = tmp_path / "shop"
    shutil.copytree(otel_project, project)
    edit(project / ".bgtasks.toml", '"otel"]', '"otel", "sentry"]')
    edit(
        project / "app/core/config.py",
        "    DEBUG: bool = False\n",
        '    DEBUG: bool = False\n    SENTRY_DSN: str = ""\n',
    )
    redis_url, sink = services

    def sentry(**values: str) -> Check:
        env = celery_env(redis_url, sink, **values)
        return diagnosed(project, env, monkeypatch)["sentry dsn"]

    check = sentry()
    assert (check.status, check.detail) == (SKIP, "events are not sent: set SENTRY_DSN")
    check = sentry(SENTRY_DSN=f"http://{KEY}@127.0.0.1:{listener}/5")
    assert (check.status, check.detail) == (
        PASS,
        f"http://****@127.0.0.1:{listener}/5: 127.0.0.1:{listener} accepts connections",
    )
    # read from .env as the settings class reads it
    (project / ".env").write_text(f"SENTRY_DSN=http://{KEY}@127.0.0.1:{listener}/abc\n")
    check = sentry()
    assert check.status == FAIL
    assert "project id (the path's last part) is not a number" in check.detail
    assert KEY not in check.detail + check.fix
