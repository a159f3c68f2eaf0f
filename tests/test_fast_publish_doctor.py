"""`bgtasks doctor` says whether celery's fast publish path is on, and why not.

A scaffolded celery project is diagnosed in .venvs/celery: with Redis as broker and
result backend the path is on; with an integration wrapping Task.apply_async (what
sentry-sdk's Celery integration does) or a RabbitMQ broker, it is off and doctor shows
the reason the generated module gives. The module's startup warning says the same.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import SmtpSink, redis_server, runner_python, scaffold, smtp_sink
from tests.test_doctor import celery_env, doctor, doctor_json


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SmtpSink]]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url, smtp_sink() as sink:
        yield url, sink


@pytest.fixture(scope="module")
def celery_python() -> Path:
    return runner_python("celery")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaffold("layered", tmp_path_factory.mktemp("fast-publish"), "--runner", "celery")


# what an integration does to Task.apply_async: the same call, through its own function
WRAP_APPLY_ASYNC = """

def _traced(apply_async):  # stands in for an integration's wrapper
    def apply_async_with_trace(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return apply_async(self, *args, **kwargs)

    return apply_async_with_trace


celery.Task.apply_async = _traced(celery.Task.apply_async)  # type: ignore[method-assign]
"""


def test_doctor_reports_the_fast_path_on(
    project: Path, celery_python: Path, services: tuple[str, SmtpSink]
) -> None:
    code, checks = doctor_json(project, celery_python, celery_env(*services))
    assert checks["fast publish"] == {
        "name": "fast publish",
        "status": "pass",
        "detail": "on",
        "fix": "",
    }, checks
    _, output = doctor(project, celery_python, celery_env(*services))
    assert "fast publish: on" in output


def test_doctor_reports_why_the_fast_path_steps_aside(
    project: Path, celery_python: Path, services: tuple[str, SmtpSink], tmp_path: Path
) -> None:
    wrapped = tmp_path / "layered"
    shutil.copytree(project, wrapped)
    worker = wrapped / "app/tasks/celery_app.py"
    worker.write_text("import celery\n" + worker.read_text() + WRAP_APPLY_ASYNC)
    env = celery_env(*services)
    _, checks = doctor_json(wrapped, celery_python, env)
    assert checks["fast publish"]["status"] == "skip", checks
    assert checks["fast publish"]["detail"] == (
        "off — Task.apply_async is wrapped (an integration adds headers to each message)"
    )
    _, output = doctor(wrapped, celery_python, env)
    assert "fast publish: off — Task.apply_async is wrapped" in output

    # a broker the fast path does not write to: the reason found at startup
    rabbitmq = celery_env(*services, CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//")
    _, checks = doctor_json(project, celery_python, rabbitmq)
    assert checks["fast publish"]["detail"] == (
        "off — the broker is not a redis:// or rediss:// URL"
    ), checks


def test_the_module_says_it_once_at_startup(
    project: Path, celery_python: Path, services: tuple[str, SmtpSink]
) -> None:
    script = (
        "import asyncio, logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from fastapi import FastAPI\n"
        "from app.tasks import fast_publish\n"
        "async def main():\n"
        "    async with fast_publish.lifespan(FastAPI()):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print('reason:', fast_publish.fallback_reason())\n"
    )
    env = celery_env(*services, CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:1//")
    env["PYTHONPATH"] = str(project)
    result = subprocess.run(
        [str(celery_python), "-c", script],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "fast_publish is off" in line]
    assert len(warnings) == 1, result.stderr
    assert "the broker is not a redis:// or rediss:// URL" in warnings[0]
    assert "reason: the broker is not a redis:// or rediss:// URL" in result.stdout
