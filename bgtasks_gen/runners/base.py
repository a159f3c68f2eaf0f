"""What a runner is: a frozen description the engine reads. No I/O here."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SettingsField:
    """One field the generated code reads from the user's Settings class.

    `key` is the logical, lower_case name; the field is spelled in the project's style
    (SMTP_HOST or smtp_host). `aliases` are other spellings that mean the same thing: when
    the class already has one, it is reused instead of adding a duplicate.
    """

    key: str
    annotation: str  # "str", "int", "bool", "SecretStr"
    default: str  # Python source of the default value
    aliases: tuple[str, ...] = ()
    comment: str = ""  # a short group header written above the first field of a group
    broker_defaults: Mapping[str, str] = field(default_factory=dict)  # by --broker
    # an existing field that may be None can stand for this one (a missing SMTP user
    # means "no login"); a None broker URL cannot
    optional: bool = False
    # False: never added, only read when the project already has it (fastapi-mail's
    # MAIL_SSL_TLS, USE_CREDENTIALS, VALIDATE_CERTS keep their meaning)
    add: bool = True

    def default_for(self, broker: str) -> str:
        return self.broker_defaults.get(broker, self.default)

    @property
    def secret(self) -> bool:
        return self.annotation == "SecretStr"


@dataclass(frozen=True)
class RunnerSteps:
    """What a runner adds to the steps `init` prints (nextsteps.py puts them in order)."""

    processes: tuple[str, ...]  # one command per long-running process, the web app last
    tests: tuple[str, ...]  # the scaffold's own tests
    tests_why: str = "the scaffold's own tests"
    # (package, command): an optional monitor, installed only when the user wants it
    monitoring: tuple[str, str] | None = None


@dataclass(frozen=True)
class RunnerSpec:
    """Everything `init --runner NAME` needs to know about one runner."""

    name: str
    summary: str  # one line for `bgtasks runners`
    use_when: str  # the seed's task selection guide, as a short phrase
    caveats: tuple[str, ...]  # `{field_key}` names a settings field: see caveats_for
    settings_fields: tuple[SettingsField, ...]
    # the generated router: templates/<runner>/routes/<router_file>.py.jinja, symbol `router`
    router_file: str
    # requirement strings the user's project needs (added by `init`, printed in next steps)
    dependencies: tuple[str, ...]
    # the processes to run and the tests, given the template context
    next_steps: Callable[[Mapping[str, object]], RunnerSteps]
    extra_context: Mapping[str, object] = field(default_factory=dict)
    # dotted module (relative to tasks_module) whose `lifespan` must run in the app
    # (arq: the Redis pool); None when the runner needs no app lifespan
    lifespan_module: str | None = None
    # add-task: the file of the tasks package new task functions go into, and the
    # scaffold's test file; where schedules live ("beat": celery_app.py's beat_schedule,
    # "cron": arq's WorkerSettings.cron_jobs; None: the runner cannot schedule)
    tasks_file: str = ""
    scaffold_tasks: tuple[str, ...] = ()  # the tasks `init` generates (tasks_file and below)
    # other files of the tasks package that hold task functions `init` generates
    other_task_files: tuple[str, ...] = ()
    test_file: str = ""
    schedule_kind: str | None = None
    max_timeout: int | None = None  # the largest --timeout add-task accepts
    worker_file: str | None = None
    # broker-specific requirements (celery: "redis" / "rabbitmq"); default: dependencies
    broker_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def caveats_for(self, names: Mapping[str, str]) -> tuple[str, ...]:
        """The caveats with each `{field_key}` spelled as the project names that settings
        field (`names`: key -> attribute), in UPPER case, the default style, otherwise."""

        def spelled(match: re.Match[str]) -> str:
            return names.get(match.group(1), match.group(1).upper())

        return tuple(re.sub(r"\{(\w+)\}", spelled, caveat) for caveat in self.caveats)

    def dependencies_for(self, broker: str) -> tuple[str, ...]:
        return self.broker_dependencies.get(broker, self.dependencies)
