"""What a runner is: a frozen description the engine reads. No I/O here.

A runner, built in or a plugin, is one `RunnerSpec` registered under the `bgtasks.runners`
entry point group (see runners/__init__.py); everything the engine does differently for
one runner is read from its spec.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# where add-task puts a schedule (RunnerSpec.schedule_kind):
# "beat": an entry of `beat_schedule` in worker_file (celery), "cron": a `cron(...)` element
# of `cron_jobs` in worker_file (arq) -- both with a schedule.py.jinja snippet;
# "label" (taskiq's `schedule=[{"cron": ...}]`) and "decorator" (`@worker.cron(...)`): the
# schedule is part of the task snippet itself, which sees `cron`/`every`;
# "external": schedule.py.jinja holds top-level definitions that go into worker_file, the
# module an external scheduler process reads
SCHEDULE_KINDS = ("beat", "cron", "label", "decorator", "external")
# how a runner reads the five cron fields (cron_check.py): celery's crontab() keywords, or
# arq-style cron() fields; both match the day of month and the day of week together
CRON_READERS = ("crontab", "cron")


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
class PinRule:
    """A conflict between one of the runner's requirements and a package the project
    already declares, as data: deps.choose_requirements applies every runner's rules.

    It applies when the runner wants `wanted` (a package name) and the project declares
    `declared`, with a requirement matching the regular expression `when` ("" = any) and
    not matching `unless` ("" = never excepted). With `below`, it applies instead when
    the project runs, or may run, a `declared` release older than that version (the
    locked one, else the oldest its constraints allow), declared or only locked. Then
    `replace_with` is added instead of the runner's requirement, explained by `note`; or,
    with `refuse` (message, hint), the runner cannot be added at all. `{declared}` in the
    texts is the project's requirement, `{evidence}` the file and version that decided.
    """

    wanted: str
    declared: str
    when: str = ""
    unless: str = ""
    replace_with: str | None = None
    note: str = ""
    refuse: tuple[str, str] | None = None
    below: str = ""

    def applies(
        self,
        wanted: str,
        declared: Mapping[str, str],
        older_than: Callable[[str, str], bool] | None = None,
    ) -> bool:
        """`older_than(package, version)`: whether the project runs, or may run, a
        release of `package` older than `version` (needed by `below` rules)."""
        requirement = declared.get(self.declared)
        if wanted != self.wanted:
            return False
        if self.below:
            if older_than is None or not older_than(self.declared, self.below):
                return False
        elif requirement is None:
            return False
        if self.when and not re.search(self.when, requirement or ""):
            return False
        return not (self.unless and re.search(self.unless, requirement or ""))


@dataclass(frozen=True)
class Detection:
    """How a project that already has this runner set up is recognised, without importing
    anything (discovery/present.py): a call of `call` (a dotted name as the module imports
    it, "celery.Celery"), or a class named `class_name` in a module importing `module`."""

    module: str
    call: str = ""
    class_name: str = ""


@dataclass(frozen=True)
class DevProcess:
    """One long-running process `bgtasks dev` starts, run as `python -m ARGV...`.

    `{worker_module}` (the dotted worker_file module) and `{tasks_module}` in the
    arguments are filled in from the project.
    """

    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class TaskShape:
    """How `bgtasks list` recognises a task function in the tasks modules, hand-written
    ones too: a decorator matching one of `decorators` (fnmatch patterns of the dotted
    name, "*.task"), or an async def whose first parameter is `first_param`; with neither
    set, an undecorated function returning None (a BackgroundTasks job)."""

    decorators: tuple[str, ...] = ()
    first_param: str | None = None


@dataclass(frozen=True)
class TemplateInputs:
    """What a spec's `template_context` hook may base extra template answers on."""

    declared: tuple[str, ...]  # the project's declared requirement strings
    broker: str


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
    # the oldest Python the runner's packages install on (taskiq: 3.10); a project whose
    # requires-python still allows an older one is refused
    min_python: tuple[int, int] | None = None
    worker_file: str | None = None
    # broker-specific requirements (celery: "redis" / "rabbitmq"); default: dependencies
    broker_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # imported packages that ship no type information: the project's mypy configuration
    # gets an ignore_missing_imports override for them (mypy_config.py)
    untyped_packages: tuple[str, ...] = ()
    # test files the templates write beside test_file (mypy overrides name them)
    extra_test_files: tuple[str, ...] = ()
    # next steps: the route that queues an email (for the example call), and the module of
    # the tasks package holding the access hook ("" when it is in the router module)
    email_route: str = ""
    access_module: str = ""
    # the --broker values the runner takes (the first is the default)
    brokers: tuple[str, ...] = ("redis",)
    # the copier folder rendered by `init` (tasks/, routes/, tests/, run/) and the
    # add-task snippets folder; None: the bundled templates/<name>/ and
    # templates/_snippets/<name>/. A plugin names folders of its own (absolute paths);
    # its templates may include the bundled "_partials/..."
    templates: str | None = None
    snippets: str | None = None
    # requirement conflicts with what a project already declares (deps.py)
    pin_rules: tuple[PinRule, ...] = ()
    # an existing setup of this runner in a project (refused by init), None: undetectable
    detection: Detection | None = None
    # extra template answers that depend on the project (celery: celery_56)
    template_context: Callable[[TemplateInputs], Mapping[str, object]] | None = None
    cron_reader: str = "cron"  # see CRON_READERS
    # add-task --every: the clock periods (seconds, ascending) an interval must divide
    # evenly, in whole units of the period before it, for a scheduler that matches clock
    # fields (arq: seconds of a minute, minutes of an hour, hours of a day); empty: any
    # whole number of seconds from 1
    every_clock_periods: tuple[int, ...] = ()
    # add-task --retries/--timeout: False for a runner that never retries nor limits time
    retries_and_timeouts: bool = True
    # what must be restarted to load a new task: (unscheduled, scheduled); None: nothing
    restart: tuple[str, str] | None = None
    # `bgtasks dev`: the processes beside the web app (and Redis when it is needed)
    dev_processes: tuple[DevProcess, ...] = ()
    task_shape: TaskShape = field(default_factory=TaskShape)
    # behaviours the engine has for one runner only, named: "celery-inspect" (doctor asks
    # the celery app for its registered tasks, beat entries and RabbitMQ queue flags;
    # checks running beats), "celery-beat" (`bgtasks dev` starts one beat, never two, and
    # Flower when installed)
    capabilities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"runner name {self.name!r} is not an identifier")
        if self.schedule_kind is not None and self.schedule_kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"schedule_kind {self.schedule_kind!r} is not one of {', '.join(SCHEDULE_KINDS)}"
            )
        if self.cron_reader not in CRON_READERS:
            raise ValueError(f"cron_reader {self.cron_reader!r} is not one of {CRON_READERS}")
        if not self.brokers:
            raise ValueError("brokers must name at least one broker")

    def caveats_for(self, names: Mapping[str, str]) -> tuple[str, ...]:
        """The caveats with each `{field_key}` spelled as the project names that settings
        field (`names`: key -> attribute), in UPPER case, the default style, otherwise."""

        def spelled(match: re.Match[str]) -> str:
            return names.get(match.group(1), match.group(1).upper())

        return tuple(re.sub(r"\{(\w+)\}", spelled, caveat) for caveat in self.caveats)

    def dependencies_for(self, broker: str) -> tuple[str, ...]:
        return self.broker_dependencies.get(broker, self.dependencies)
