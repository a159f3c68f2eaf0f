"""Run files (Procfile, compose.yaml): written once, then the user's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bgtasks_gen.cli import app
from bgtasks_gen.runfiles import merge_compose
from bgtasks_gen.runners import available_runners
from tests.conftest import is_subsequence

cli = CliRunner()


QUEUE_RUNNERS = [
    spec.name for spec in available_runners() if spec.name in ("celery", "arq", "taskiq")
]


@pytest.mark.parametrize("runner", QUEUE_RUNNERS)
def test_run_files_are_valid_and_never_overwritten(runner: str, example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("factory")
    result = cli.invoke(app, ["init", str(project), "--runner", runner])
    assert result.exit_code == 0, result.output
    procfile = (project / "Procfile").read_text()
    # the module-level `app = create_app()` is what is served, not a second app from --factory
    assert (
        '\nweb: ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec uvicorn acme.server:app --app-dir src '
        in procfile
    )
    assert "\nworker: " in procfile
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert {"web", "worker"} <= set(compose["services"])
    assert any(
        s.get("image", "").startswith(("redis", "rabbitmq")) for s in compose["services"].values()
    )

    (project / "Procfile").write_text("web: my own command\n")
    result = cli.invoke(app, ["init", str(project), "--runner", runner, "--force"])
    assert result.exit_code == 0, result.output
    assert "kept" in result.output
    assert (project / "Procfile").read_text() == "web: my own command\n"


OWN_COMPOSE = """# the shop's own stack: keep these comments
services:
    api:
        build:
            context: .
            dockerfile: docker/Dockerfile
        command: uvicorn app.main:app --host 0.0.0.0  # the web app
        ports: ["8000:8000"]
    cache:
        image: redis:7.2-alpine

volumes:
    pgdata: {}
"""


def test_a_projects_own_compose_file_gains_the_services_instead_of_a_second_file(
    example,  # type: ignore[no-untyped-def]
) -> None:
    project: Path = example("layered")
    (project / "docker").mkdir()
    (project / "docker/Dockerfile").write_text("FROM python:3.12\n")
    (project / "docker-compose.yml").write_text(OWN_COMPOSE)
    (project / "Procfile").write_text("web: gunicorn app.main:app\nrelease: alembic upgrade head\n")
    result = cli.invoke(app, ["init", str(project), "--runner", "celery"])
    assert result.exit_code == 0, result.output
    assert not (project / "compose.yaml").exists()  # Compose would prefer it over theirs
    text = (project / "docker-compose.yml").read_text()
    assert is_subsequence(OWN_COMPOSE.splitlines(), text.splitlines())
    compose = yaml.safe_load(text)
    original = yaml.safe_load(OWN_COMPOSE)["services"]
    assert all(compose["services"][name] == original[name] for name in original)
    added = set(compose["services"]) - set(original)
    assert {"worker", "beat", "flower"} <= added and "redis" not in added and "web" not in added
    worker = compose["services"]["worker"]
    assert worker["build"] == original["api"]["build"]  # the image the project builds
    assert worker["environment"]["CELERY_BROKER_URL"] == "redis://cache:6379/0"
    assert set(worker["depends_on"]) == {"cache"}
    procfile = (project / "Procfile").read_text()
    assert procfile.startswith("web: gunicorn app.main:app\nrelease: alembic upgrade head\n")
    assert "\nworker: REMAP_SIGTERM=SIGQUIT celery -A app.tasks.celery_app worker" in procfile
    assert procfile.count("web:") == 1
    assert "docker-compose.yml: added worker, beat, flower" in result.output
    # again: nothing to do, and theirs is theirs from now on
    again = cli.invoke(app, ["init", str(project), "--runner", "celery", "--check"])
    assert again.exit_code == 0, again.output


def test_the_dockerfile_is_found_where_it_is_or_its_absence_said(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    (project / "docker").mkdir()
    (project / "docker/Dockerfile").write_text("FROM python:3.12\n")
    assert cli.invoke(app, ["init", str(project), "--runner", "arq"]).exit_code == 0
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert compose["services"]["worker"]["build"] == {
        "context": ".",
        "dockerfile": "docker/Dockerfile",
    }
    bare: Path = example("factory")
    result = cli.invoke(app, ["init", str(bare), "--runner", "arq"])
    assert result.exit_code == 0 and "no Dockerfile in the project" in result.output


def test_a_second_runner_gets_its_own_process_names(example) -> None:  # type: ignore[no-untyped-def]
    """celery beside arq: arq's `worker:` is taken, celery's worker is added as
    `celery-worker:` (a process name that was skipped before), beat as it is."""
    project: Path = example("layered")
    assert cli.invoke(app, ["init", str(project), "--runner", "arq"]).exit_code == 0
    arq_procfile = (project / "Procfile").read_text()
    result = cli.invoke(app, ["init", str(project), "--runner", "celery"])
    assert result.exit_code == 0, result.output
    procfile = (project / "Procfile").read_text()
    assert procfile.startswith(arq_procfile)
    processes = dict(
        line.split(":", 1) for line in procfile.splitlines() if line and not line.startswith("#")
    )
    assert "arq " in processes["worker"]
    assert "celery -A app.tasks.celery_app worker" in processes["celery-worker"]
    assert "celery -A app.tasks.celery_app beat" in processes["beat"]
    assert list(processes).count("web") == 1
    again = cli.invoke(app, ["init", str(project), "--runner", "celery", "--check"])
    assert again.exit_code == 0, again.output


NETWORKED_COMPOSE = """services:
  api:
    build: .
    command: uvicorn app.main:app --host 0.0.0.0
    env_file: [.env]
    networks:
      backend:
        ipv4_address: 172.28.0.10
      public: {}
networks:
  backend: {}
  public: {}
"""


def test_added_services_join_the_apps_networks_and_env_file(example) -> None:  # type: ignore[no-untyped-def]
    project: Path = example("layered")
    (project / "compose.yaml").write_text(NETWORKED_COMPOSE)
    result = cli.invoke(app, ["init", str(project), "--runner", "celery"])
    assert result.exit_code == 0, result.output
    services = yaml.safe_load((project / "compose.yaml").read_text())["services"]
    assert services["api"] == yaml.safe_load(NETWORKED_COMPOSE)["services"]["api"]
    for name in ("worker", "beat"):
        # the network names only: the app's own address is not shared
        assert services[name]["networks"] == ["backend", "public"], services[name]
        assert services[name]["env_file"] == [".env"], services[name]
        # the settings come from the file: nothing passed through that could unset them
        assert None not in services[name]["environment"].values(), services[name]
    # the Redis added beside the app is reachable on its networks; the settings are not its
    assert services["redis"]["networks"] == ["backend", "public"]
    assert "env_file" not in services["redis"]


def _prefixed(project: Path) -> Path:
    """The example with its settings read from SHOP_-prefixed variables."""
    config = project / "app/core/config.py"
    text = config.read_text()
    config.write_text(text.replace('extra="ignore"', 'extra="ignore", env_prefix="SHOP_"'))
    return project


# the app service configures the settings itself (list form), one value from the shell
APP_ENVIRONMENT_COMPOSE = """services:
  api:
    build: .
    command: uvicorn app.main:app --host 0.0.0.0
    environment:
      - SHOP_DATABASE_URL=postgresql://db/shop
      - SHOP_SMTP_HOST=mail.example.com
      - SHOP_SMTP_PASSWORD
  cache:
    image: redis:7
"""


def test_the_worker_gets_the_apps_own_environment(example) -> None:  # type: ignore[no-untyped-def]
    project = _prefixed(example("layered"))
    (project / "compose.yaml").write_text(APP_ENVIRONMENT_COMPOSE)
    result = cli.invoke(app, ["init", str(project), "--runner", "celery"])
    assert result.exit_code == 0, result.output
    services = yaml.safe_load((project / "compose.yaml").read_text())["services"]
    for name in ("worker", "beat"):
        environment = services[name]["environment"]
        # the settings the app service sets, as it sets them (SMTP_PASSWORD from the shell)
        assert environment["SHOP_DATABASE_URL"] == "postgresql://db/shop", environment
        assert environment["SHOP_SMTP_HOST"] == "mail.example.com", environment
        assert "SHOP_SMTP_PASSWORD" in environment and environment["SHOP_SMTP_PASSWORD"] is None
        # the broker, named as the settings class reads it, on the project's Redis
        assert environment["SHOP_CELERY_BROKER_URL"] == "redis://cache:6379/0", environment
        assert "CELERY_BROKER_URL" not in environment
        assert "env_file" not in services[name]
    # flower runs its own image, not the project's settings
    assert "SHOP_DATABASE_URL" not in services["flower"]["environment"]


@pytest.mark.parametrize("runner", QUEUE_RUNNERS)
def test_without_an_env_file_the_worker_gets_the_smtp_settings(runner: str, example) -> None:  # type: ignore[no-untyped-def]
    project = _prefixed(example("layered"))
    (project / "compose.yaml").write_text(
        "services:\n  api:\n    build: .\n    command: uvicorn app.main:app\n"
    )
    result = cli.invoke(app, ["init", str(project), "--runner", runner])
    assert result.exit_code == 0, result.output
    text = (project / "compose.yaml").read_text()
    worker = yaml.safe_load(text)["services"]["worker"]
    smtp = ("HOST", "PORT", "USER", "PASSWORD", "STARTTLS")
    for name in [f"SHOP_SMTP_{part}" for part in smtp] + ["SHOP_EMAIL_FROM"]:
        # passed through from the shell or .env: unset there, the settings' default holds
        assert name in worker["environment"] and worker["environment"][name] is None, name
        assert f"\n      {name}:\n" in text, "written as compose files write a pass-through"
    broker = {"celery": "SHOP_CELERY_BROKER_URL", "arq": "SHOP_REDIS_URL"}
    url = worker["environment"][broker.get(runner, "SHOP_TASKIQ_BROKER_URL")]
    assert url.startswith("redis://redis:6379/"), worker
    # the .env.example lists the same names
    example_env = (project / ".env.example").read_text()
    assert "\nSHOP_SMTP_HOST=" in example_env and "\nSHOP_EMAIL_FROM=" in example_env


# what the rendered compose templates give the worker: the broker's URL, and settings passed
# through from the shell or .env (no value)
OURS = """services:
  redis:
    image: redis:8-alpine
  worker:
    build: .
    command: celery -A app.tasks.celery_app worker
    environment:
      SHOP_CELERY_BROKER_URL: redis://redis:6379/0
      SHOP_SMTP_HOST:
      SHOP_SMTP_PORT:
    depends_on:
      redis:
        condition: service_healthy
"""


def test_pass_through_settings_stay_unset_and_the_apps_values_win() -> None:
    theirs = APP_ENVIRONMENT_COMPOSE.replace(
        "      - SHOP_SMTP_PASSWORD\n", "      - SHOP_CELERY_BROKER_URL=redis://cache:6379/5\n"
    )
    merged = merge_compose(theirs, OURS, "celery")
    environment = yaml.safe_load(merged.text)["services"]["worker"]["environment"]
    assert environment == {
        "SHOP_CELERY_BROKER_URL": "redis://cache:6379/5",  # where the app publishes
        "SHOP_SMTP_HOST": "mail.example.com",
        "SHOP_SMTP_PORT": None,
        "SHOP_DATABASE_URL": "postgresql://db/shop",
    }
    assert "\n      SHOP_SMTP_PORT:\n" in merged.text, "a pass-through, not `null`"


def test_with_an_env_file_the_pass_throughs_go() -> None:
    merged = merge_compose(NETWORKED_COMPOSE, OURS, "celery")
    worker = yaml.safe_load(merged.text)["services"]["worker"]
    assert worker["env_file"] == [".env"]
    # the file sets them: an unset pass-through could remove them (some Compose versions)
    assert worker["environment"] == {"SHOP_CELERY_BROKER_URL": "redis://redis:6379/0"}
