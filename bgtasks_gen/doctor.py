"""`bgtasks doctor`: live checks that the scaffolded stack can run here, now.

Each check asks the real thing: the project's interpreter (in a subprocess, bounded)
for its packages and whether the worker and the app import, the broker and the result
backend for an answer, the SMTP host for a TCP connection, the process table for a
celery beat already running. Every check is one line with its fix.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bgtasks_gen.errors import BgtasksError
from bgtasks_gen.project_env import (
    MASK,
    Interpreter,
    StackProject,
    find_interpreter,
    load_stack_project,
    marked_answer,
    mask_credentials,
    mask_url,
    process_environment,
    read_dotenv,
    run_probe,
    run_script,
    setting_sources,
)

PACKAGES_TIMEOUT = 20.0
IMPORT_TIMEOUT = 60.0
NETWORK_TIMEOUT = 3.0
# Distributions asked about beside the runner's own requirements: what those pull in
# and what the generated code imports through them.
RELATED_DISTRIBUTIONS = ("kombu", "redis")
LABELS = {"redis": "redis-py"}
NOT_INSTALLED = "not installed in"
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss", "unix")
# RabbitMQ 4.3 refuses transient non-exclusive queues, which celery's control and event
# queues are unless declared exclusive (celery 5.7's default; a setting in 5.6).
RABBITMQ_EXCLUSIVE_SINCE = (4, 3)
EXCLUSIVE_SETTINGS = ("control_queue_exclusive", "event_queue_exclusive")

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass | fail | skip
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Diagnosis:
    project: StackProject
    interpreter: Interpreter | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(check.failed for check in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "project": str(self.project.root),
            "runner": self.project.spec.name,
            "python": str(self.interpreter.path) if self.interpreter else None,
            "checks": [check.as_dict() for check in self.checks],
        }


# -- services, asked over the network -------------------------------------------------------


class ServiceDown(Exception):
    """A service did not answer as it should; the message says how."""


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise ServiceDown(f"unknown host {host}") from None
    except ConnectionRefusedError:
        raise ServiceDown("nothing listens there") from None
    except TimeoutError:
        raise ServiceDown(f"no answer within {timeout:.0f} s") from None
    except OSError as error:
        raise ServiceDown(str(error.strerror or error)) from None


def tcp_reachable(host: str, port: int, timeout: float = NETWORK_TIMEOUT) -> None:
    """ServiceDown unless something accepts a TCP connection on host:port."""
    _connect(host, port, timeout).close()


def _resp(*words: str) -> bytes:
    encoded = [word.encode() for word in words]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)


@contextlib.contextmanager
def _redis_socket(url: str, timeout: float) -> Iterator[socket.socket]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(parts.path)
        except OSError as error:
            sock.close()
            raise ServiceDown(f"{parts.path}: {error.strerror or error}") from None
    else:
        try:
            port = parts.port or 6379
        except ValueError:
            raise ServiceDown("the URL's port is not a number") from None
        host = parts.hostname or "localhost"
        sock = _connect(host, port, timeout)
        if parts.scheme == "rediss":
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, OSError) as error:
                sock.close()
                raise ServiceDown(f"TLS with {host}:{port} failed: {error}") from None
    try:
        yield sock
    finally:
        sock.close()


def _reply_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\r\n") and len(data) < 4096:
        chunk = sock.recv(1)
        if not chunk:
            raise ServiceDown("the server closed the connection")
        data += chunk
    return data.decode(errors="replace").strip()


def redis_ping(url: str, timeout: float = NETWORK_TIMEOUT) -> None:
    """ServiceDown unless the Redis server at `url` answers PING (after AUTH, when the
    URL has a password)."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ServiceDown(f"{parts.scheme or 'no'} scheme: not a Redis URL")
    with _redis_socket(url, timeout) as sock:
        try:
            if parts.password is not None:
                user = unquote(parts.username or "")
                words = [user] if user and user != "default" else []
                sock.sendall(_resp("AUTH", *words, unquote(parts.password)))
                reply = _reply_line(sock)
                if not reply.startswith("+"):
                    raise ServiceDown(f"refused the password ({reply[:80]})")
            sock.sendall(_resp("PING"))
            reply = _reply_line(sock)
        except TimeoutError:
            raise ServiceDown(f"connected, but no answer within {timeout:.0f} s") from None
        except OSError as error:
            raise ServiceDown(f"connection lost: {error}") from None
    if reply.startswith("-NOAUTH"):
        raise ServiceDown("answers, but wants a password: put it in the URL")
    if reply != "+PONG":
        raise ServiceDown(f"answered {reply[:80]!r} instead of PONG")


@dataclass(frozen=True)
class AmqpServer:
    product: str
    version: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return _numbers(self.version)


def _numbers(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


# sizes of the fixed-width AMQP 0-9-1 field values (RabbitMQ's own type letters)
_FIXED_FIELD_SIZES = {"t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "l": 8}
_FIXED_FIELD_SIZES.update({"L": 8, "f": 4, "d": 8, "D": 5, "T": 8, "V": 0})


def _field_table(data: bytes) -> dict[str, str]:
    """The string entries of an AMQP field table (nested values are skipped)."""
    entries: dict[str, str] = {}
    offset = 0
    while offset < len(data):
        name_length = data[offset]
        name = data[offset + 1 : offset + 1 + name_length].decode(errors="replace")
        offset += 1 + name_length
        kind = chr(data[offset])
        offset += 1
        if kind in _FIXED_FIELD_SIZES:
            offset += _FIXED_FIELD_SIZES[kind]
        elif kind in "SxAF":
            (length,) = struct.unpack_from(">I", data, offset)
            if kind == "S":
                entries[name] = data[offset + 4 : offset + 4 + length].decode(errors="replace")
            offset += 4 + length
        else:
            break  # a type this reader does not know: the rest cannot be located
    return entries


def amqp_server(url: str, timeout: float = NETWORK_TIMEOUT) -> AmqpServer:
    """Open an AMQP 0-9-1 connection far enough to read the server's Connection.Start
    (product and version); ServiceDown when nothing AMQP answers."""
    parts = urlsplit(url)
    secure = parts.scheme == "amqps"
    try:
        port = parts.port or (5671 if secure else 5672)
    except ValueError:
        raise ServiceDown("the URL's port is not a number") from None
    host = parts.hostname or "localhost"
    sock = _connect(host, port, timeout)
    try:
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        header = _receive(sock, 7)
        if header.startswith(b"AMQP"):
            raise ServiceDown("the server speaks another AMQP version than 0-9-1")
        kind, _channel, size = struct.unpack(">BHI", header)
        payload = _receive(sock, size + 1)
    except TimeoutError:
        raise ServiceDown(f"connected, but no AMQP greeting within {timeout:.0f} s") from None
    except (OSError, struct.error) as error:
        raise ServiceDown(f"no AMQP greeting: {error}") from None
    finally:
        sock.close()
    class_id, method_id = struct.unpack_from(">HH", payload)
    if kind != 1 or (class_id, method_id) != (10, 10):
        raise ServiceDown("the server's first frame is not an AMQP Connection.Start")
    (table_size,) = struct.unpack_from(">I", payload, 6)
    properties = _field_table(payload[10 : 10 + table_size])
    return AmqpServer(properties.get("product", "?"), properties.get("version", "?"))


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ServiceDown("the server closed the connection")
        data += chunk
    return data


# -- features: where their output goes -------------------------------------------------------


# OTEL_TRACES_EXPORTER names the tracing module (templates/_partials/tracing.py.jinja)
# takes without an extra package; any other must be an installed entry point
BUILT_IN_EXPORTERS = ("otlp", "console", "none")
OTLP_HTTP_DEFAULT = "http://localhost:4318"
OTLP_GRPC_DEFAULT = "http://localhost:4317"
TRACES_PATH = "v1/traces"
# the settings field of `--with sentry`, spelled in the project's case
SENTRY_FIELD = "sentry_dsn"


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """OTEL_TRACES_EXPORTER as the tracing module splits it, `none` dropped."""
    names = environ.get("OTEL_TRACES_EXPORTER", "")
    chosen = [name.strip().lower() for name in names.split(",") if name.strip()]
    return [name for name in chosen if name != "none"]


def otlp_endpoint(environ: Mapping[str, str]) -> tuple[str, str]:
    """(protocol, URL) the OTLP exporter sends spans to, resolved as the installed
    exporter resolves it: the traces endpoint as given, else the base endpoint with
    /v1/traces, else the SDK's default."""
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() == "grpc":
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return "grpc", endpoint or OTLP_GRPC_DEFAULT
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint:
        return "http", endpoint
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or OTLP_HTTP_DEFAULT
    return "http", f"{base.removesuffix('/')}/{TRACES_PATH}"


def _endpoint_address(url: str) -> tuple[str, int]:
    """host and port of an http(s) URL (a gRPC endpoint may omit the scheme);
    ServiceDown when the URL names neither."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServiceDown("not an http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ServiceDown("the URL's port is not a number") from None
    return parts.hostname, port


def otel_exporter_check(
    environ: Mapping[str, str], installed_exporters: Iterable[str] = ()
) -> Check:
    """Where the traces go, read from the OTEL_* variables the processes inherit;
    `installed_exporters` are the exporter entry points of the project's interpreter."""
    name = "otel exporter"
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Check(name, SKIP, "OTEL_SDK_DISABLED=true: no tracing is set up")
    exporters = exporter_names(environ)
    if not exporters:
        return Check(
            name,
            SKIP,
            "nothing is exported: set OTEL_TRACES_EXPORTER=otlp (with "
            "OTEL_EXPORTER_OTLP_ENDPOINT) or console",
        )
    unknown = [
        exporter
        for exporter in exporters
        if exporter not in BUILT_IN_EXPORTERS and exporter not in installed_exporters
    ]
    if unknown:
        accepted = sorted({*BUILT_IN_EXPORTERS, *installed_exporters} - {"otlp_proto_http"})
        return Check(
            name,
            FAIL,
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}, which is not an installed "
            "exporter: its spans are dropped",
            f"set OTEL_TRACES_EXPORTER to one of: {', '.join(accepted)}",
        )
    found = []
    for exporter in exporters:
        if exporter != "otlp":
            found.append(f"{exporter} exporter")
            continue
        protocol, url = otlp_endpoint(environ)
        try:
            tcp_reachable(*_endpoint_address(url))
        except ServiceDown as down:
            return Check(
                name,
                FAIL,
                f"OTLP ({protocol}) endpoint {mask_url(url)}: {down}",
                "start the collector there, or point OTEL_EXPORTER_OTLP_ENDPOINT (or "
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) at one that runs",
            )
        found.append(f"OTLP ({protocol}) to {mask_url(url)}, which accepts connections")
    return Check(name, PASS, "; ".join(found))


def _dsn_problem(dsn: str) -> str | None:
    """What keeps `dsn` from being a Sentry DSN (scheme://publickey@host[:port]/project-id),
    said without quoting its key; None when it is one."""
    try:
        parts = urlsplit(dsn)
        _ = parts.port  # ValueError for a port that is not a number
    except ValueError:
        return "its port is not a number"
    if parts.scheme not in ("http", "https"):
        shown = parts.scheme if parts.scheme and "@" not in parts.scheme else "none"
        return f"its scheme is {shown}, not http or https"
    if "@" not in parts.netloc or not parts.username:
        return "it has no public key (scheme://KEY@host/project-id)"
    if not parts.hostname:
        return "it has no host"
    project_id = parts.path.rstrip("/").rpartition("/")[2]
    if not project_id:
        return "it has no project id (the number after the host)"
    if not project_id.isdigit():
        return "its project id (the path's last part) is not a number"
    return None


def sentry_dsn_check(dsn: str | None, env_name: str) -> Check:
    """The DSN's shape, then whether its host accepts a TCP connection; the key is never
    shown."""
    name = "sentry dsn"
    dsn = (dsn or "").strip()
    if not dsn:
        return Check(name, SKIP, f"events are not sent: set {env_name}")
    problem = _dsn_problem(dsn)
    if problem is not None:
        return Check(
            name,
            FAIL,
            f"{env_name} is not a Sentry DSN: {problem}",
            f"copy the DSN from the Sentry project's Client Keys page into {env_name}",
        )
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = parts._replace(netloc=f"{MASK}@{parts.netloc.rpartition('@')[2]}").geturl()
    try:
        tcp_reachable(host, port)
    except ServiceDown as down:
        return Check(
            name,
            FAIL,
            f"{shown}: {down}",
            f"check the host in {env_name}, and that this machine may reach {host}:{port}",
        )
    return Check(name, PASS, f"{shown}: {host}:{port} accepts connections")


EXPORTERS_MARKER = "BGTASKS-EXPORTERS:"


def _exporters_main(_unused: str) -> None:
    """Run in the project's interpreter (sent by script_of): the names of the installed
    OpenTelemetry trace exporters."""
    import json
    import sys
    from importlib.metadata import entry_points

    names = sorted({point.name for point in entry_points(group="opentelemetry_traces_exporter")})
    sys.stdout.write("BGTASKS-EXPORTERS:" + json.dumps(names) + "\n")


def installed_exporters(python: Path, cwd: Path, env: Mapping[str, str]) -> list[str]:
    """The exporter entry points of the project's interpreter (none when it cannot say)."""
    import subprocess

    try:
        result = run_script(python, _exporters_main, "", cwd=cwd, env=env, timeout=PACKAGES_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return []
    names = marked_answer(result.stdout, EXPORTERS_MARKER)
    return [str(name) for name in names] if names is not None else []


# -- processes ---------------------------------------------------------------------------


def _process_table() -> Iterator[tuple[int, int, list[str], Path | None]]:
    """(pid, parent pid, argv, working directory or None) of every visible process."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            try:
                cwd: Path | None = Path(os.readlink(entry / "cwd"))
            except OSError:
                cwd = None
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")"
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            yield int(entry.name), parent, [a.decode(errors="replace") for a in argv if a], cwd
        return
    import subprocess

    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        listing = subprocess.run(
            ["ps", "-axww", "-o", "pid=,ppid=,command="],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        for line in listing.splitlines():
            pid_text, parent_text, *words = line.split()
            yield int(pid_text), int(parent_text), words, None


def _celery_app_argument(argv: list[str]) -> str:
    for index, word in enumerate(argv):
        if word in ("-A", "--app") and index + 1 < len(argv):
            return argv[index + 1]
        for prefix in ("--app=", "-A"):
            if word.startswith(prefix) and len(word) > len(prefix):
                return word[len(prefix) :].lstrip("=")
    return ""


def celery_beats(project: StackProject) -> list[int]:
    """Pids of the celery beat schedulers (`celery beat`, or a worker with -B) running
    for this project's celery app, in its folder when the system says where."""
    module = project.worker_module or ""
    names = {module, f"{module}:celery_app", f"{module}.celery_app", project.tasks_module}
    found: dict[int, int] = {}
    for pid, parent, argv, cwd in _process_table():
        if pid == os.getpid() or not any(Path(word).name == "celery" for word in argv):
            continue
        beat = "beat" in argv or ("worker" in argv and ("-B" in argv or "--beat" in argv))
        if not beat or _celery_app_argument(argv) not in names:
            continue
        if cwd is not None and cwd.resolve() != project.root:
            continue
        found[pid] = parent
    # a worker's pool processes repeat its command line: count the parent once
    return sorted(pid for pid, parent in found.items() if parent not in found)


# -- packages --------------------------------------------------------------------------------


@dataclass
class _Wanted:
    extras: set[str] = field(default_factory=set)
    # (who asks, specifier, the requirement to install to satisfy it)
    constraints: list[tuple[str, str, str]] = field(default_factory=list)


def _requirement_names(requirements: list[str]) -> dict[str, Any]:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    parsed: dict[str, Any] = {}
    for text in requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        parsed[str(canonicalize_name(requirement.name))] = requirement
    return parsed


def runner_requirements(project: StackProject) -> dict[str, Any]:
    """The runner's requirements, as the project declares them where it does (its own
    pins win: celery 5.6 beside arq), else as bgtasks would add them."""
    from bgtasks_gen.deps import declared_requirements

    wanted = _requirement_names(
        [*project.spec.dependencies_for(project.broker), *feature_requirements(project)]
    )
    declared = _requirement_names(declared_requirements(project.root, project.source_root))
    return {name: declared.get(name, requirement) for name, requirement in wanted.items()}


def recorded_features(project: StackProject) -> list[str]:
    recorded = project.state_layout.get("features", [])
    return [str(name) for name in recorded] if isinstance(recorded, list) else []


def feature_requirements(project: StackProject) -> list[str]:
    """The packages the project's recorded features add (features.FEATURE_PACKAGES)."""
    from bgtasks_gen.features import FEATURE_PACKAGES

    return [
        requirement
        for name in recorded_features(project)
        for requirement in FEATURE_PACKAGES.get(name, ())
    ]


def sentry_field(project: StackProject) -> str | None:
    """The settings class's sentry_dsn attribute, as the project spells it."""
    if project.layout is None:
        return None
    return next(
        (name for name in project.layout.settings.fields if name.lower() == SENTRY_FIELD), None
    )


def distributions_to_probe(project: StackProject) -> list[str]:
    return sorted({*runner_requirements(project), *RELATED_DISTRIBUTIONS})


def package_checks(
    project: StackProject,
    interpreter: Interpreter,
    distributions: Mapping[str, Any],
    python_version: str,
) -> list[Check]:
    """One check per package the runner needs (and each one those pull in): installed,
    at a version that every installed package asking for it accepts."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    installed: dict[str, Any] = {
        str(canonicalize_name(k)): v for k, v in distributions.items() if v is not None
    }
    probed = {str(canonicalize_name(k)) for k in distributions}
    wanted: dict[str, _Wanted] = {}
    for name, requirement in runner_requirements(project).items():
        entry = wanted.setdefault(name, _Wanted())
        entry.extras |= set(requirement.extras)
        entry.constraints.append(("the project", str(requirement.specifier), str(requirement)))
    # follow what the installed packages require, among the probed ones, extras included
    done: set[tuple[str, frozenset[str]]] = set()
    changed = True
    while changed:
        changed = False
        for name in list(wanted):
            key = (name, frozenset(wanted[name].extras))
            if name not in installed or key in done:
                continue
            done.add(key)
            changed = True
            owner = f"{LABELS.get(name, name)} {installed[name]['version']}"
            for text in installed[name]["requires"]:
                try:
                    requirement = Requirement(text)
                except InvalidRequirement:
                    continue
                target = str(canonicalize_name(requirement.name))
                if target not in probed or not _applies(
                    requirement, wanted[name].extras, python_version
                ):
                    continue
                entry = wanted.setdefault(target, _Wanted())
                entry.extras |= set(requirement.extras)
                constraint = (owner, str(requirement.specifier), f"{target}{requirement.specifier}")
                if constraint not in entry.constraints:
                    entry.constraints.append(constraint)
    checks = []
    for name, entry in wanted.items():
        label = LABELS.get(name, name)
        install = next((c[2] for c in entry.constraints if c[0] == "the project"), None)
        install = install or entry.constraints[0][2]
        if name not in installed:
            checks.append(
                Check(
                    label,
                    FAIL,
                    f"{NOT_INSTALLED} {interpreter.path}",
                    interpreter.pip_install(install),
                )
            )
            continue
        version = str(installed[name]["version"])
        broken = []
        for who, specifier, requirement in entry.constraints:
            try:
                accepted = SpecifierSet(specifier).contains(Version(version), prereleases=True)
            except InvalidVersion:
                accepted = True  # a local build: nothing to compare
            if not accepted:
                broken.append((who, specifier, requirement))
        if broken:
            who, specifier, requirement = broken[0]
            asks = "; ".join(f"{w} needs {LABELS.get(name, name)}{s}" for w, s, _ in broken)
            checks.append(
                Check(
                    label,
                    FAIL,
                    f"{version} installed, but {asks}",
                    interpreter.pip_install(requirement),
                )
            )
        else:
            asks = ", ".join(f"{w} needs {s}" for w, s, _ in entry.constraints if s)
            checks.append(Check(label, PASS, version + (f" ({asks})" if asks else "")))
    return checks


def _applies(requirement: Any, extras: set[str], python_version: str) -> bool:
    if requirement.marker is None:
        return True
    environment = {"python_version": ".".join(python_version.split(".")[:2])}
    environment["python_full_version"] = python_version
    return any(
        requirement.marker.evaluate({**environment, "extra": extra}) for extra in (extras | {""})
    )


# -- the diagnosis -----------------------------------------------------------------------


FAST_PUBLISH_MARKER = "BGTASKS-FAST-PUBLISH:"


def _fast_publish_main(module_name: str) -> None:
    """Run in the project's interpreter (sent by script_of): why the generated
    fast_publish module publishes through apply_async, null while its fast path is on."""
    import importlib
    import json
    import logging
    import sys

    logging.disable(logging.CRITICAL)  # the module's own startup warning is not the answer
    answer: dict[str, Any]
    try:
        module = importlib.import_module(module_name)
        reason = getattr(module, "fallback_reason", None)
        if callable(reason):
            answer = {"reason": reason()}
        else:
            answer = {"error": "it has no fallback_reason()", "fix": "run `bgtasks update`"}
    except BaseException as error:  # noqa: BLE001 - the project's code may raise anything
        answer = {"error": f"{type(error).__name__}: {error}", "fix": "see the app import"}
    sys.stdout.write("BGTASKS-FAST-PUBLISH:" + json.dumps(answer) + "\n")


def ask_fast_publish(
    python: Path, module: str, cwd: Path, env: Mapping[str, str]
) -> dict[str, Any]:
    """{"reason": text or None}, or {"error": ..., "fix": ...} when it cannot be asked."""
    import subprocess

    try:
        result = run_script(
            python, _fast_publish_main, module, cwd=cwd, env=env, timeout=IMPORT_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {IMPORT_TIMEOUT:.0f} s", "fix": None}
    except OSError as error:
        return {"error": str(error), "fix": "check --python"}
    answer: dict[str, Any] | None = marked_answer(result.stdout, FAST_PUBLISH_MARKER)
    if answer is not None:
        return answer
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": last, "fix": None}


class _Doctor:
    def __init__(
        self, project: StackProject, python: Path | None, environ: Mapping[str, str]
    ) -> None:
        self.project = project
        self.python = python
        self.environ = environ
        self.checks: list[Check] = []
        self.interpreter: Interpreter | None = None
        self.packages: dict[str, Any] = {}
        self.live: dict[str, Any] = {}
        self.uninstalled: list[str] = []  # declared packages the interpreter lacks

    def add(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    # what the processes will read for a runner field: the live settings object when it
    # loads, else the value the environment, .env or the class default gives it
    def value(self, key: str) -> str | None:
        attribute = self.project.fields.get(key)
        if attribute is None:
            return None
        values = self.live.get("settings", {}).get("values", {})
        if attribute in values:
            value = values[attribute]
            return None if value is None else str(value)
        for source in setting_sources(self.project, self.environ):
            if source.attribute == attribute:
                return source.value
        return None

    def setting(self, attribute: str) -> str | None:
        """A settings attribute outside the runner's fields, read as value() reads one."""
        values = self.live.get("settings", {}).get("values", {})
        if attribute in values:
            value = values[attribute]
            return None if value is None else str(value)
        for source in setting_sources(self.project, self.environ):
            if source.attribute == attribute:
                return source.value
        return None

    def feature_fields(self) -> list[str]:
        field = sentry_field(self.project) if "sentry" in recorded_features(self.project) else None
        return [field] if field else []

    def run(self) -> Diagnosis:
        error = self.project.discovery_error
        if error is not None:
            self.add("project", FAIL, error.message, error.hint)
        self.environment()
        if self.interpreter is not None:
            self.imports()
        self.settings()
        self.api_token()
        self.services()
        self.feature_outputs()
        if self.interpreter is not None:
            self.code_checks()
            self.served()
        if "celery-inspect" in self.project.spec.capabilities:
            self.rabbitmq()
            self.beats()
        if self.interpreter is not None:
            self.fast_publish()
        return Diagnosis(self.project, self.interpreter, self.checks)

    def environment(self) -> None:
        from bgtasks_gen.install_hint import declared_names

        project = self.project
        declared = declared_names(project.root, project.source_root)
        runner_names = distributions_to_probe(project)
        try:
            self.interpreter = find_interpreter(self.project.root, self.python, self.environ)
            env = process_environment(self.project)
            answer = run_probe(
                self.interpreter,
                {"distributions": sorted({*runner_names, *declared})},
                cwd=self.project.root,
                env=env,
                timeout=PACKAGES_TIMEOUT,
            )
        except BgtasksError as error:
            self.interpreter = None
            self.add("environment", FAIL, error.message, error.hint)
            return
        self.packages = answer
        python = str(answer.get("python", "?"))
        self.add(
            "environment",
            PASS,
            f"{self.interpreter.path} (Python {python}, {self.interpreter.found_by})",
        )
        found = answer["distributions"]
        self.uninstalled = sorted(name for name in declared if found.get(name) is None)
        # the runner's packages are checked one by one; the project's own, as a whole
        runner_found = {name: found.get(name) for name in runner_names}
        self.checks.extend(package_checks(self.project, self.interpreter, runner_found, python))

    def imports(self) -> None:
        assert self.interpreter is not None
        project = self.project
        module, attribute, factory = project.served_app
        request: dict[str, object] = {
            "modules": [m for m in (project.worker_module, module) if m],
            "app": {"module": module, "attribute": attribute, "factory": factory},
        }
        if project.layout is not None:
            settings = project.layout.settings
            request["settings"] = {
                "module": settings.access_module,
                "attribute": settings.access_name,
                "call": settings.access_kind != "instance",
                "fields": sorted({*project.fields.values(), *self.feature_fields()}),
            }
        if "celery-inspect" in project.spec.capabilities:
            request["celery"] = project.worker_module
        try:
            self.live = run_probe(
                self.interpreter,
                request,
                cwd=project.root,
                env=process_environment(project),
                timeout=IMPORT_TIMEOUT,
            )
        except BgtasksError as error:
            self.add("imports", FAIL, error.message, error.hint)

    def settings(self) -> None:
        project = self.project
        if project.layout is None:
            return  # the project check said why
        sources = setting_sources(project, self.environ)
        ours = set(project.fields.values())
        missing = [s for s in sources if s.source == "missing"]
        live = self.live.get("settings", {})
        if missing:
            names = ", ".join(s.env_name for s in missing)
            self.add(
                "settings",
                FAIL,
                f"{names}: no default in {project.settings.class_name} and not set",
                f"export {missing[0].env_name}=... (or add it to {project.root / '.env'})",
            )
        elif "error" in live:
            self.add(
                "settings",
                FAIL,
                f"{project.settings.class_name} does not load: "
                + mask_credentials(str(live["error"])),
                self.install_fix(str(live["error"]))
                or "fix the value named above (in the environment or .env)",
            )
        set_here = [
            f"{s.env_name} ({s.source})" for s in sources if s.source in ("environment", ".env")
        ]
        defaults = [s.env_name for s in sources if s.attribute in ours and "default" in s.source]
        if not missing and "error" not in live:
            detail = (
                f"set: {', '.join(set_here) or 'none'}; defaults: {', '.join(defaults) or 'none'}"
            )
            self.add("settings", PASS, detail)

    def install_fix(self, error: str) -> str | None:
        """The install command when `error` is a package missing from the environment."""
        from bgtasks_gen.install_hint import install_fix

        if self.interpreter is None:
            return None
        project = self.project
        return install_fix(
            project.root, project.source_root, self.interpreter, error, self.uninstalled
        )

    def api_token(self) -> None:
        """The generated auth hook refuses every request (401) while the token is empty,
        unless anonymous access is on or the app's own auth guards the router."""
        from bgtasks_gen.nextsteps import MAKE_TOKEN

        project = self.project
        if project.layout is None or "bgtasks_api_token" not in project.fields:
            return
        project_auth = dict(project.layout.app.include_keywords).get("dependencies", "")
        if project_auth:
            self.add(
                "api token",
                PASS,
                f"the router is included with the app's own auth (dependencies={project_auth}), "
                "which the generated hook trusts",
            )
            return
        token_env = project.env_name("bgtasks_api_token")
        if "bgtasks_allow_anonymous" in project.fields:
            raw = self.value("bgtasks_allow_anonymous")
            allowed = "false" if raw is None else raw.strip().lower()
            anonymous_env = project.env_name("bgtasks_allow_anonymous")
            if allowed not in ("true", "false"):
                self.add(
                    "api token",
                    FAIL,
                    f"{anonymous_env} is {raw!r}: the app refuses to start with it",
                    f"set {anonymous_env} to true or false",
                )
                return
            if allowed == "true":
                self.add(
                    "api token",
                    PASS,
                    f"{anonymous_env} is on: the task routes accept requests without a token "
                    "(local development only)",
                )
                return
        if (self.value("bgtasks_api_token") or "").strip():
            self.add("api token", PASS, f"{token_env} is set")
            return
        self.add(
            "api token",
            FAIL,
            f"{token_env} is empty: every request to the task routes is refused (401)",
            f"generate one with {MAKE_TOKEN} and set it as {token_env}=<token> in "
            f"{project.root / '.env'} (or export it); clients send it as "
            "`Authorization: Bearer <token>`",
        )

    def services(self) -> None:
        names = {
            "celery_broker_url": "broker",
            "celery_result_backend": "result backend",
            "redis_url": "redis",
        }
        for key, name in names.items():
            url = self.value(key)
            if key not in self.project.fields:
                continue
            if not url:
                self.add(name, FAIL, "no URL configured", f"set {self.project.env_name(key)}")
                continue
            shown = mask_url(url)
            scheme = urlsplit(url).scheme
            try:
                if scheme in AMQP_SCHEMES:
                    server = amqp_server(url)
                    self.add(name, PASS, f"{shown} answers ({server.product} {server.version})")
                    continue
                redis_ping(url)
            except ServiceDown as down:
                self.add(
                    name,
                    FAIL,
                    f"{shown}: {down}",
                    f"start it, or point {self.project.env_name(key)} at one that runs "
                    "(`bgtasks dev` starts a private Redis for development)",
                )
            else:
                self.add(name, PASS, f"{shown} answers PING")
        host = self.value("smtp_host")
        port_text = self.value("smtp_port") or "0"
        if "smtp_host" not in self.project.fields:
            return
        if not host:
            self.add(
                "smtp", FAIL, "no SMTP host configured", f"set {self.project.env_name('smtp_host')}"
            )
            return
        try:
            port = int(float(port_text))
            tcp_reachable(host, port)
        except ValueError:
            self.add(
                "smtp",
                FAIL,
                f"port {port_text!r} is not a number",
                f"set {self.project.env_name('smtp_port')}",
            )
        except ServiceDown as down:
            self.add(
                "smtp",
                FAIL,
                f"{host}:{port_text}: {down}",
                f"set {self.project.env_name('smtp_host')}/{self.project.env_name('smtp_port')} "
                "to a reachable server (`bgtasks dev` runs a local sink)",
            )
        else:
            self.add("smtp", PASS, f"{host}:{port} accepts connections")

    def feature_outputs(self) -> None:
        """Where each recorded feature sends what it collects: the traces' exporter, the
        errors' Sentry DSN."""
        features = recorded_features(self.project)
        if "otel" in features:
            self.otel_exporter()
        if "sentry" in features:
            field = sentry_field(self.project)
            if field is None:
                self.add(
                    "sentry dsn",
                    FAIL,
                    f"the sentry feature is recorded, and {self.project.settings.class_name} "
                    f"has no {SENTRY_FIELD} field"
                    if self.project.layout is not None
                    else "the settings class could not be read (see project)",
                    "run `bgtasks update` to add it",
                )
            else:
                env_name = self.project.settings.env_name(field)
                self.checks.append(sentry_dsn_check(self.setting(field), env_name))

    def otel_exporter(self) -> None:
        # the tracing module reads os.environ, never .env: the processes bgtasks starts
        # inherit the environment doctor runs in
        environ = self.environ
        plugins: list[str] = []
        if self.interpreter is not None and any(
            name not in BUILT_IN_EXPORTERS for name in exporter_names(environ)
        ):
            plugins = installed_exporters(
                self.interpreter.path, self.project.root, process_environment(self.project)
            )
        check = otel_exporter_check(environ, plugins)
        in_dotenv = "OTEL_TRACES_EXPORTER" in read_dotenv(self.project.root)
        if check.status == SKIP and in_dotenv and "OTEL_TRACES_EXPORTER" not in environ:
            check = Check(
                check.name,
                SKIP,
                check.detail + " (.env sets it, and the OTEL_* variables are read from the "
                "process environment only)",
                "export it, or set it in the environment the processes start with",
            )
        self.checks.append(check)

    def code_checks(self) -> None:
        project = self.project
        modules = self.live.get("modules", {})
        module = project.served_app[0]
        python = self.interpreter.path if self.interpreter else "python"
        for name, dotted in (("worker import", project.worker_module), ("app import", module)):
            if not dotted or dotted not in modules:
                continue
            error = modules[dotted]
            if error is None:
                self.add(name, PASS, f"{dotted} imports")
            else:
                self.add(
                    name,
                    FAIL,
                    f"{dotted}: {mask_credentials(str(error))}",
                    self.install_fix(str(error))
                    or f"fix it; the whole traceback: {python} -c 'import {dotted}'",
                )
        self.schedules()
        self.lifespan()

    def fast_publish(self) -> None:
        """celery's fast publish path: on, or off with the reason the generated module
        gives (asked in the project's interpreter, with the project's settings)."""
        project = self.project
        module = f"{project.tasks_module}.fast_publish"
        source = project.source_root.joinpath(*module.split(".")).with_suffix(".py")
        if self.interpreter is None or not source.is_file():
            return  # another runner, or a project whose module was removed
        answer = ask_fast_publish(
            self.interpreter.path, module, project.root, process_environment(project)
        )
        if "reason" not in answer:
            self.add(
                "fast publish",
                SKIP,
                f"{module} cannot say: {mask_credentials(str(answer.get('error')))}",
                str(answer.get("fix") or ""),
            )
        elif answer["reason"] is None:
            self.add("fast publish", PASS, "on")
        else:
            # correct either way: every publish then costs a hop through the threadpool
            self.add("fast publish", SKIP, f"off — {answer['reason']}")

    def served(self) -> None:
        """The app served once in the project's interpreter, with its lifespans, and the
        generated status route asked for an unknown id (verify.py)."""
        from bgtasks_gen.install_hint import declared_names
        from bgtasks_gen.verify import PROVEN, serve, serve_request

        assert self.interpreter is not None
        project = self.project
        result = serve(
            serve_request(project, self.interpreter),
            declared=frozenset(declared_names(project.root, project.source_root)),
        )
        status = FAIL if result.failed else PASS if result.outcome == PROVEN else SKIP
        self.add("served", status, mask_credentials(result.message), result.fix)
        for feature in result.features:
            self.add(
                f"{feature.feature} route",
                PASS if feature.outcome == PROVEN else FAIL,
                mask_credentials(feature.message),
                feature.fix,
            )

    def schedules(self) -> None:
        """Static (the worker file's entries against the tasks file's definitions, as
        `bgtasks check` reads them) and, for celery, live (the app's own registry)."""
        import libcst as cst

        from bgtasks_gen.addtask import load_project
        from bgtasks_gen.check import scheduled_names
        from bgtasks_gen.patch.definitions import definition_names
        from bgtasks_gen.patch.outline import SourceSyntaxError
        from bgtasks_gen.plan import read_existing

        scaffolded = load_project(self.project.root)
        if scaffolded.worker_file is None:
            return
        problems: list[str] = []
        entries: int | None = None
        try:
            scheduled = scheduled_names(scaffolded)
            text = read_existing(scaffolded.root, scaffolded.tasks_file)
            defined = set(definition_names(text)) if text is not None else set()
        except (cst.ParserSyntaxError, SourceSyntaxError, BgtasksError, SyntaxError):
            pass  # an unparsable file: the import checks name it
        else:
            entries = len(scheduled)
            problems += [
                f"{how} names {name!r}, which {scaffolded.tasks_file} does not define"
                for name, how in scheduled
                if name not in defined
            ]
        worker = self.project.worker_module
        import_error = self.live.get("modules", {}).get(worker) if worker else None
        if import_error is not None:
            # the worker's own schedule is what it builds at import: not read, not counted
            unread = f"not read: {worker} does not import (see worker import)"
            if problems:
                self.add(
                    "schedules",
                    FAIL,
                    "; ".join([*problems, unread]),
                    "define the task again or remove the entry (bgtasks remove-task NAME)",
                )
            else:
                self.add("schedules", SKIP, unread, "fix the worker import first")
            return
        celery = self.live.get("celery")
        if isinstance(celery, dict) and "beat" in celery:
            registered = set(celery["registered"])
            problems += [
                f"beat entry {entry!r} runs {task!r}, which the celery app has not registered"
                for entry, task in celery["beat"].items()
                if task not in registered
            ]
            entries = len(celery["beat"])
        if entries is None:
            return
        if problems:
            self.add(
                "schedules",
                FAIL,
                "; ".join(problems),
                "define the task again or remove the entry (bgtasks remove-task NAME)",
            )
        else:
            self.add("schedules", PASS, f"{entries} entries, each naming a task that exists")

    def lifespan(self) -> None:
        app = self.live.get("app")
        if not isinstance(app, dict) or "error" in app:
            return
        handlers = int(app["on_startup"]) + int(app["on_shutdown"])
        if handlers and not app["handlers_run"]:
            pool = f"{self.project.tasks_module}.{self.project.spec.lifespan_module}"
            self.add(
                "lifespan",
                FAIL,
                f"the app registers {handlers} @app.on_event handler(s), and its lifespan "
                "never runs them (FastAPI skips them once FastAPI(lifespan=...) is set)",
                f"run them from the lifespan: lifespan=combine_lifespans(on_event_handlers, "
                f"...) from {pool}, or move them into the lifespan"
                if self.project.spec.lifespan_module
                else "move them into the lifespan",
            )
        elif handlers:
            self.add("lifespan", PASS, f"{handlers} @app.on_event handler(s) run at startup")
        else:
            self.add("lifespan", PASS, "no @app.on_event handler left out by a lifespan")

    def rabbitmq(self) -> None:
        url = self.value("celery_broker_url") or ""
        if urlsplit(url).scheme not in AMQP_SCHEMES:
            return
        try:
            server = amqp_server(url)
        except ServiceDown:
            return  # reported by the broker check
        version = server.version_tuple
        if server.product != "RabbitMQ" or version < RABBITMQ_EXCLUSIVE_SINCE:
            self.add("rabbitmq", PASS, f"{server.product} {server.version} accepts celery's queues")
            return
        celery = self.live.get("celery", {})
        flags = {name: celery.get(name) for name in EXCLUSIVE_SETTINGS}
        if all(flags.values()):
            self.add(
                "rabbitmq",
                PASS,
                f"RabbitMQ {server.version}; celery declares its control and event queues "
                "exclusive",
            )
            return
        off = ", ".join(f"{name}={flags[name]}" for name in EXCLUSIVE_SETTINGS)
        self.add(
            "rabbitmq",
            FAIL,
            f"RabbitMQ {server.version} refuses transient non-exclusive queues, and celery "
            f"declares its control and event queues so ({off}): workers cannot start",
            "upgrade to celery 5.7 (exclusive by default), or set control_queue_exclusive=True "
            "and event_queue_exclusive=True in the celery config",
        )

    def beats(self) -> None:
        pids = celery_beats(self.project)
        if len(pids) > 1:
            self.add(
                "celery beat",
                FAIL,
                f"{len(pids)} celery beat processes run for this project (pids "
                f"{', '.join(map(str, pids))}): every schedule fires {len(pids)} times",
                f"stop all but one: kill {' '.join(map(str, pids[1:]))}",
            )
        elif pids:
            self.add("celery beat", PASS, f"one celery beat running (pid {pids[0]})")
        else:
            self.add("celery beat", PASS, "no celery beat running yet")


def diagnose(
    root: Path, python: Path | None = None, environ: Mapping[str, str] | None = None
) -> Diagnosis:
    """Run every check that applies to the project's runner; BadInput when `root` is not
    a bgtasks project."""
    project = load_stack_project(root)
    return _Doctor(project, python, os.environ if environ is None else environ).run()
