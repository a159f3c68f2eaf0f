"""What the Kubernetes manifests need to know about a scaffolded project.

Everything here is read from the project as it is on disk: the state file (runner,
broker, modules), the settings class (the environment variable each field is read
from, env_prefix included, and the defaults it declares) and the generated modules
(queue names, stream and consumer group, shutdown timeouts). Nothing is imported: the
generated modules are parsed, so reading them never connects to a broker.
"""

from __future__ import annotations

import ast
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bgtasks_gen.addtask import Project
from bgtasks_gen.project_env import StackProject, literal_default, load_stack_project
from bgtasks_gen.runners.base import SettingsField

# kombu's Redis transport: a message of priority p goes to the list
# `<queue><sep><step>` for the largest step <= p, and step 0 to `<queue>` itself
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)
KOMBU_PRIORITY_SEP = "\x06\x16"
CELERY_DEFAULT_QUEUE = "celery"
# arq's own names (arq.constants): the sorted set jobs wait in, and the key a worker
# refreshes every health_check_interval seconds
ARQ_DEFAULT_QUEUE = "arq:queue"
ARQ_HEALTH_CHECK_SUFFIX = ":health-check"
# taskiq's worker waits this long for the broker to shut down (`--shutdown-timeout`)
TASKIQ_BROKER_SHUTDOWN = 5
# What a stopped process gets beyond its own shutdown timeout before the kubelet kills it
SHUTDOWN_MARGIN = 15
WEB_PORT = 8000
# Route paths that conventionally answer a health check, most specific first
HEALTH_PATHS = ("/healthz", "/livez", "/health", "/ping")


@dataclass(frozen=True)
class Setting:
    """One environment variable of the project's settings, and where it belongs."""

    env_name: str
    value: str
    secret: bool


@dataclass(frozen=True)
class QueueFacts:
    """Where the runner's tasks wait, as the generated code names it."""

    broker: str  # "redis" or "rabbitmq"
    queues: tuple[str, ...] = ()  # celery queues, arq's sorted set, taskiq's queue/stream
    redis_lists: tuple[str, ...] = ()  # celery on Redis: every list key, priorities too
    stream: str = ""  # taskiq on Redis
    consumer_group: str = ""
    redis_database: int = 0
    broker_env: str = ""  # the variable holding the broker URL, as the settings read it
    broker_url_default: str = ""


@dataclass(frozen=True)
class K8sFacts:
    name: str  # DNS-1123 label every object name starts with
    runner: str
    web_command: tuple[str, ...]
    web_health_path: str | None  # None: no health route was found (a TCP check instead)
    worker_command: tuple[str, ...]
    worker_env: tuple[tuple[str, str], ...]
    worker_grace_seconds: int
    worker_grace_reason: str
    worker_liveness: tuple[str, ...]
    worker_liveness_reason: str
    scheduler_command: tuple[str, ...] | None
    queue: QueueFacts
    settings: tuple[Setting, ...] = field(default=())


def read_facts(project: Project) -> K8sFacts:
    stack = load_stack_project(project.root)
    runner = project.spec.name
    tasks_module = str(project.layout["tasks_module"])
    tasks_dir = Path(project.package_file(tasks_module, ""))
    broker = str(project.layout.get("broker") or "redis")
    worker_source = _read(project.root / tasks_dir / (project.spec.worker_file or ""))
    settings = _settings(stack, broker)
    env_of = {key: stack.env_name(key) for key in stack.fields} if stack.layout else {}
    defaults = _defaults(stack)
    web = ("uvicorn", *shlex.split(stack.app_target), "--host", "0.0.0.0")
    web += ("--port", str(WEB_PORT))
    health = find_health_path(project.root, str(project.layout.get("source_root") or "."))
    if runner == "celery":
        app = f"{tasks_module}.celery_app"
        soft = _int_constant(worker_source, "SOFT_SHUTDOWN_TIMEOUT")
        return K8sFacts(
            name=app_name(project.root),
            runner=runner,
            web_command=web,
            web_health_path=health,
            worker_command=("celery", "-A", app, "worker", "--loglevel=info"),
            # SIGTERM starts celery's soft shutdown (running tasks get the timeout, the
            # rest go back to the broker at once) instead of a cold stop
            worker_env=(("REMAP_SIGTERM", "SIGQUIT"),),
            worker_grace_seconds=(soft or 0) + SHUTDOWN_MARGIN,
            worker_grace_reason=f"SOFT_SHUTDOWN_TIMEOUT ({soft} s, {app.replace('.', '/')}.py)",
            # a ping answered by this pod's own worker (node celery@<pod name>), through
            # the broker: a hung consumer or a lost broker connection both fail it
            worker_liveness=(
                "sh",
                "-c",
                f"celery -A {app} inspect ping --destination celery@$HOSTNAME --timeout 20",
            ),
            worker_liveness_reason="celery's own ping, answered by this pod's worker",
            scheduler_command=(
                "celery",
                *("-A", app, "beat", "--loglevel=info"),
                *("--schedule", "/tmp/celerybeat-schedule"),
            ),
            queue=_celery_queues(worker_source, broker, env_of, defaults),
            settings=settings,
        )
    if runner == "arq":
        worker_settings = f"{tasks_module}.arq_worker.WorkerSettings"
        wait = _int_constant(worker_source, "job_completion_wait")
        queue = _str_constant(worker_source, "queue_name") or ARQ_DEFAULT_QUEUE
        url_env = env_of.get("redis_url", "")
        return K8sFacts(
            name=app_name(project.root),
            runner=runner,
            web_command=web,
            web_health_path=health,
            worker_command=("arq", worker_settings),
            worker_env=(),
            worker_grace_seconds=(wait or 0) + SHUTDOWN_MARGIN,
            worker_grace_reason=f"job_completion_wait ({wait} s, arq_worker.py)",
            # arq's own check: the health-check key its workers refresh every
            # health_check_interval (it expires a second after a missed refresh)
            worker_liveness=("arq", "--check", worker_settings),
            worker_liveness_reason=(
                f"arq --check: the {queue}{ARQ_HEALTH_CHECK_SUFFIX} key the workers refresh"
            ),
            scheduler_command=None,
            queue=QueueFacts(
                broker="redis",
                queues=(queue,),
                redis_database=_redis_db(defaults.get(url_env, "")),
                broker_env=url_env,
                broker_url_default=defaults.get(url_env, ""),
            ),
            settings=settings,
        )
    app_module = f"{tasks_module}.taskiq_app"
    timeout_env = env_of.get("taskiq_task_timeout", "")
    task_timeout = _to_int(defaults.get(timeout_env, "")) or 0
    url_env = env_of.get("taskiq_broker_url", "")
    queue_facts = _taskiq_queue(worker_source, broker, url_env, defaults)
    return K8sFacts(
        name=app_name(project.root),
        runner=runner,
        web_command=web,
        web_health_path=health,
        worker_command=("taskiq", "worker", f"{app_module}:broker", f"{tasks_module}.taskiq_tasks"),
        worker_env=(),
        # the worker waits for its running tasks (no --wait-tasks-timeout), each bounded
        # by the task timeout, then gives the broker --shutdown-timeout to close
        worker_grace_seconds=task_timeout + TASKIQ_BROKER_SHUTDOWN + SHUTDOWN_MARGIN,
        worker_grace_reason=(
            f"{timeout_env or 'the task timeout'} ({task_timeout} s, the settings default) "
            f"+ taskiq's --shutdown-timeout ({TASKIQ_BROKER_SHUTDOWN} s)"
        ),
        worker_liveness=("python", "-c", _taskiq_probe(queue_facts)),
        worker_liveness_reason=(
            "a consumer of the task stream's group read within the last minute"
            if queue_facts.broker == "redis"
            else "the task queue has a consumer"
        ),
        scheduler_command=(
            "taskiq",
            "scheduler",
            f"{app_module}:scheduler",
            f"{tasks_module}.taskiq_tasks",
            *("--update-interval", "5"),
        ),
        queue=queue_facts,
        settings=settings,
    )


def app_name(root: Path) -> str:
    """The project's name as a DNS-1123 label: pyproject's [project] or poetry name,
    else the folder's."""
    name = root.name
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            data = {}
        poetry = data.get("tool", {}).get("poetry", {})
        declared = data.get("project", {}).get("name") or poetry.get("name")
        if isinstance(declared, str) and declared:
            name = declared
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    # room for the longest suffix (-autoscaler-auth) within 63 characters
    return (label or "app")[:40].rstrip("-") or "app"


def find_health_path(root: Path, source_root: str) -> str | None:
    """The served path of a GET route named like a health check, when the router that
    holds it is included without a prefix only an import would tell."""
    source = root / source_root
    found: list[tuple[int, str]] = []
    for path in sorted(source.rglob("*.py")):
        if any(part in {".venv", "venv", "tests", "node_modules"} for part in path.parts):
            continue
        text = _read(path)
        if "health" not in text and "ping" not in text:
            continue
        for route in re.findall(r'@\w+\.get\(\s*"(/[\w/-]*)"', text):
            if route in HEALTH_PATHS and _served_as_is(source, path, text):
                own = re.search(r'APIRouter\([^)]*prefix="([^"]*)"', text)
                found.append((HEALTH_PATHS.index(route), (own.group(1) if own else "") + route))
    return min(found)[1] if found else None


def _served_as_is(source: Path, module_path: Path, text: str) -> bool:
    """True when the module defines the app itself, or every include of its router in
    the project passes no prefix (one only importing the settings would resolve)."""
    if re.search(r"=\s*FastAPI\(", text):
        return True
    module = module_path.stem
    for other in source.rglob("*.py"):
        other_text = _read(other)
        for call in re.findall(rf"include_router\(\s*{module}\.router([^)]*)\)", other_text):
            if "prefix" in call:
                return False
            return True
    return False


def _settings(stack: StackProject, broker: str) -> tuple[Setting, ...]:
    """Every runner field as the project's settings class reads it, with the value a
    cluster starts from: the field's default (broker URLs pointed at an in-cluster
    `redis`/`rabbitmq` Service); credentials and URLs go to the Secret."""
    if stack.layout is None:
        return ()
    settings = []
    for spec_field in stack.spec.settings_fields:
        if spec_field.key not in stack.fields:
            continue
        env_name = stack.env_name(spec_field.key)
        value = _cluster_value(spec_field, broker)
        secret = spec_field.secret or spec_field.key.endswith(("_url", "_backend"))
        settings.append(Setting(env_name, value, secret))
    return tuple(settings)


def _cluster_value(spec_field: SettingsField, broker: str) -> str:
    source = spec_field.default_for(broker)
    quoted = re.fullmatch(r'(?:SecretStr\()?"(.*)"\)?', source)
    value = quoted.group(1) if quoted else source
    if value in ("True", "False"):
        return value.lower()
    for local, service in (("localhost", "redis"), ("127.0.0.1", "redis")):
        if value.startswith(("redis://", "rediss://")):
            value = value.replace(f"@{local}:", f"@{service}:").replace(
                f"//{local}:", f"//{service}:"
            )
    if value.startswith(("amqp://", "amqps://")):
        value = value.replace("@localhost:", "@rabbitmq:").replace("//localhost:", "//rabbitmq:")
    return value


def _defaults(stack: StackProject) -> dict[str, str]:
    """env name -> the default the project's settings class declares (literal only)."""
    if stack.layout is None:
        return {}
    settings = stack.layout.settings
    values = {}
    for attribute, (_, default) in settings.field_types.items():
        kind, value = literal_default(default)
        if kind == "literal" and value is not None:
            values[settings.env_name(attribute)] = value
    return values


def _celery_queues(
    source: str, broker: str, env_of: dict[str, str], defaults: dict[str, str]
) -> QueueFacts:
    options = _celery_options(source)
    default_queue = options.get("task_default_queue")
    queues = [default_queue if isinstance(default_queue, str) else CELERY_DEFAULT_QUEUE]
    routes = options.get("task_routes")
    if isinstance(routes, dict):
        for route in routes.values():
            if isinstance(route, dict) and isinstance(route.get("queue"), str):
                queues.append(route["queue"])
    queues = list(dict.fromkeys(queues))
    url_env = env_of.get("celery_broker_url", "")
    if broker != "redis":
        return QueueFacts(
            broker=broker,
            queues=tuple(queues),
            broker_env=url_env,
            broker_url_default=defaults.get(url_env, ""),
        )
    transport = options.get("broker_transport_options")
    transport = transport if isinstance(transport, dict) else {}
    steps = transport.get("priority_steps", KOMBU_PRIORITY_STEPS)
    sep = transport.get("sep", KOMBU_PRIORITY_SEP)
    lists = [
        queue if not step else f"{queue}{sep}{step}"
        for queue in queues
        for step in (steps if isinstance(steps, (list, tuple)) else KOMBU_PRIORITY_STEPS)
    ]
    return QueueFacts(
        broker="redis",
        queues=tuple(queues),
        redis_lists=tuple(dict.fromkeys(lists)),
        redis_database=_redis_db(defaults.get(url_env, "")),
        broker_env=url_env,
        broker_url_default=defaults.get(url_env, ""),
    )


def _celery_options(source: str) -> dict[str, object]:
    """The literal values of `<app>.conf.update(...)` keywords and `<app>.conf.x = ...`
    assignments in the Celery module (later ones win, as at run time)."""
    options: dict[str, object] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return options
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and ast.unparse(node.func.value).endswith(".conf")
        ):
            for keyword in node.keywords:
                if keyword.arg:
                    options[keyword.arg] = _literal(keyword.value)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = ast.unparse(node.targets[0])
            if ".conf." in target:
                options[target.rpartition(".")[2]] = _literal(node.value)
    return options


def _taskiq_queue(source: str, broker: str, url_env: str, defaults: dict[str, str]) -> QueueFacts:
    url = defaults.get(url_env, "")
    if broker == "rabbitmq":
        names = re.findall(r'Queue\(\s*name="([^"]+)"', source)
        return QueueFacts(
            broker="rabbitmq",
            queues=tuple(names[:1] or ["taskiq"]),
            broker_env=url_env,
            broker_url_default=url,
        )
    stream = _str_constant(source, "STREAM") or "taskiq"
    group = _str_constant(source, "CONSUMER_GROUP") or "taskiq"
    return QueueFacts(
        broker="redis",
        queues=(stream,),
        stream=stream,
        consumer_group=group,
        redis_database=_redis_db(url),
        broker_env=url_env,
        broker_url_default=url,
    )


def _taskiq_probe(queue: QueueFacts) -> str:
    """A short script a liveness probe runs: taskiq has no health check of its own, so
    it asks the broker whether the task queue is being consumed."""
    if queue.broker == "redis":
        return (
            "import os, sys, redis\n"
            f"r = redis.Redis.from_url(os.environ[{queue.broker_env!r}], socket_timeout=5)\n"
            f"idle = [c['idle'] for c in r.xinfo_consumers({queue.stream!r}, "
            f"{queue.consumer_group!r})]\n"
            "sys.exit(0 if idle and min(idle) < 60000 else 1)\n"
        )
    return (
        "import asyncio, os, sys, aio_pika\n"
        "async def consumers():\n"
        f"    connection = await aio_pika.connect(os.environ[{queue.broker_env!r}], timeout=5)\n"
        "    async with connection:\n"
        "        channel = await connection.channel()\n"
        f"        queue = await channel.declare_queue({queue.queues[0]!r}, passive=True)\n"
        "        return queue.declaration_result.consumer_count\n"
        "sys.exit(0 if asyncio.run(consumers()) > 0 else 1)\n"
    )


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _constant(source: str, name: str) -> object:
    """The literal value last bound to `name` at any level (module or class body)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    value: object = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    value = _literal(node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            if isinstance(node.target, ast.Name) and node.target.id == name:
                value = _literal(node.value)
    return value


def _int_constant(source: str, name: str) -> int | None:
    value = _constant(source, name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_constant(source: str, name: str) -> str | None:
    value = _constant(source, name)
    return value if isinstance(value, str) else None


def _to_int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def _redis_db(url: str) -> int:
    """The database index of a redis:// URL (its path), 0 when it names none."""
    try:
        path = urlsplit(url).path.strip("/")
    except ValueError:
        return 0
    return int(path) if path.isdigit() else 0


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
