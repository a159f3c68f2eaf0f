"""Run files beside the project's own: its Dockerfile, compose file and Procfile.

A project that already has a compose file must not get a second one (Compose prefers
`compose.yaml`, so a plain `docker compose up` would then run bgtasks' stack instead of
the project's): the runner's services are added to the project's file instead, as text
inserted at the end of its `services:` block, so every comment and line it had stays.
A project's own Procfile gains the missing processes the same way. `build:` names the
project's Dockerfile wherever it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from bgtasks_gen.errors import BadInput

COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
DOCKERFILES = ("Dockerfile", "docker/Dockerfile", "Dockerfile.prod", "deploy/Dockerfile")
TOP_LEVEL_KEY = re.compile(r"^[A-Za-z_][\w-]*\s*:")
# the comment above the services merge_compose adds (without_services takes it out too)
ADDED_SERVICES = "# added by bgtasks ({runner})"


@dataclass
class Merged:
    text: str
    added: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def dockerfile(root: Path) -> str | None:
    """The project's Dockerfile, relative to the root, or None."""
    for name in DOCKERFILES:
        if (root / name).is_file():
            return name
    found = sorted(p for p in root.glob("Dockerfile*") if p.is_file())
    return found[0].name if found else None


def build_value(root: Path) -> str:
    """What `build:` says in a generated compose file: the project's Dockerfile."""
    found = dockerfile(root)
    if found in (None, "Dockerfile"):
        return "."
    return f"{{context: ., dockerfile: {found}}}"


def project_compose(root: Path) -> str | None:
    for name in COMPOSE_NAMES:
        if (root / name).is_file():
            return name
    return None


def _dump(data: dict[str, Any], indent: int) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

        def represent_none(self, data: None) -> yaml.ScalarNode:
            # `KEY:`, as compose files write a variable passed through from the shell or .env
            return self.represent_scalar("tag:yaml.org,2002:null", "")

    Dumper.add_representer(type(None), Dumper.represent_none)

    text: str = yaml.dump(data, Dumper=Dumper, indent=indent, sort_keys=False, width=200)
    return text


def _services_block(lines: list[str]) -> tuple[int, int, int, int] | None:
    """(line of `services:`, end of its block, child indent, nested step) or None."""
    start = next((i for i, line in enumerate(lines) if re.match(r"^services\s*:", line)), None)
    if start is None:
        return None
    end = len(lines)
    indent = step = 0
    for i in range(start + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if TOP_LEVEL_KEY.match(lines[i]):  # the next top-level key ends the block
            end = i
            break
        width = len(lines[i]) - len(lines[i].lstrip(" "))
        if not indent:
            indent = width
        elif not step and width > indent:
            step = width - indent
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # keep the blank lines before the next top-level key where they are
    return start, end, indent or 2, step or 2


COMPOSE_HINT = (
    "fix {path} so that `docker compose config` reads it (services: a mapping of service "
    "names to their settings), then run again"
)


def _malformed(path: str, problem: str) -> BadInput:
    return BadInput(f"{path} {problem}", COMPOSE_HINT.format(path=path))


def compose_services(text: str, path: str) -> dict[str, Any]:
    """The `services` mapping of the project's compose file, its shape checked: bgtasks
    reads every service to find the project's broker and app, and inserts beside them."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise _malformed(path, f"is not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise _malformed(path, "is not valid YAML: it nests too deeply to read") from None
    if document is None:
        return {}  # an empty file: the services go into a new block
    if not isinstance(document, dict):
        return _refuse_shape(path, "the file", document, "a mapping (services:, volumes:, ...)")
    services = document.get("services")
    if services is None:
        return {}
    if not isinstance(services, dict):
        return _refuse_shape(path, "`services`", services, "a mapping of service names")
    for name, service in services.items():
        if not isinstance(service, dict):
            what = f"the service {name!r}"
            _refuse_shape(path, what, service, "a mapping of its settings (image:, ...)")
    return services


def _refuse_shape(path: str, what: str, value: object, expected: str) -> NoReturn:
    kinds = {str: "a text", list: "a list", int: "a number", float: "a number", bool: "true/false"}
    found = kinds.get(type(value), type(value).__name__)
    raise _malformed(
        path, f"is not a compose file bgtasks can extend: {what} is {found}, not {expected}"
    )


def merge_compose(theirs: str, ours: str, runner: str, path: str = "compose.yaml") -> Merged:
    """Add the services of `ours` that `theirs` (the project's file `path`) lacks; reuse
    its Redis/RabbitMQ and app. BadInput when `theirs` is not a compose file."""
    import yaml

    services = compose_services(theirs, path)
    wanted = (yaml.safe_load(ours) or {}).get("services") or {}
    merged = Merged(theirs)
    hosts: dict[str, str] = {}
    for kind in ("redis", "rabbitmq"):
        for name, service in services.items():  # the project's own broker, by its image
            if isinstance(service, dict) and str(service.get("image", "")).startswith(kind):
                hosts[kind] = name
                break
    app_service = next(
        (
            name
            for name, service in services.items()
            if isinstance(service, dict)
            and re.search(r"\b(uvicorn|gunicorn|fastapi|hypercorn)\b", str(service.get("command")))
        ),
        next((n for n, s in services.items() if isinstance(s, dict) and "build" in s), None),
    )
    build = services.get(app_service, {}).get("build") if app_service else None
    image = services.get(app_service, {}).get("image") if app_service else None
    # the added services live where the app does: its networks (to reach the project's
    # Redis or RabbitMQ by name) and its env_file (the settings a worker reads too)
    app_settings = services.get(app_service, {}) if app_service else {}
    joined = {key: app_settings[key] for key in ("networks", "env_file") if key in app_settings}
    if isinstance(joined.get("networks"), dict):
        # the names only: the app's own addresses and aliases are not the services' to share
        joined["networks"] = list(joined["networks"])
    app_environment = _environment(app_settings.get("environment"))
    additions: dict[str, Any] = {}
    for name, service in wanted.items():
        if name in ("redis", "rabbitmq") and name in hosts:
            continue  # the project's own broker serves
        if name == "web" and app_service:
            continue  # the project's own app service serves
        new_name = name if name not in services else f"{runner}-{name}"
        runs_the_app = "build" in service  # the project's own code (not flower, a broker)
        service = {key: value for key, value in service.items() if key != "volumes"}
        if "build" in service and (build is not None or image is not None):
            # the image the project already builds for its app, in the same place
            service = {
                ("image" if build is None else key): (
                    (build if build is not None else image) if key == "build" else value
                )
                for key, value in service.items()
            }
        # a broker added beside the app shares its networks; its settings are not for it
        wanted_keys = ("networks",) if name in ("redis", "rabbitmq") else tuple(joined)
        service = {
            **service,
            **{k: joined[k] for k in wanted_keys if k in joined and k not in service},
        }
        service = _rehost(service, hosts, services)
        if runs_the_app and isinstance(service.get("environment"), dict):
            service["environment"] = _app_environment(
                service["environment"], app_environment, env_file="env_file" in joined
            )
        additions[new_name] = service
    if not additions:
        return merged
    lines = theirs.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in theirs else "\n"
    block = _services_block(lines)
    if block is None:
        text = theirs.rstrip("\r\n") + newline + newline + "services:" + newline
        lines = text.splitlines(keepends=True)
        block = (len(lines) - 1, len(lines), 2, 2)
    _, end, indent, step = block
    if end and not lines[end - 1].endswith(("\n", "\r")):
        lines[end - 1] += newline
    dumped = _dump(additions, step)
    header = " " * indent + ADDED_SERVICES.format(runner=runner)
    # set apart from the service above, as compose files (and ours) space them
    apart = [newline] if end and lines[end - 1].strip() else []
    insert = [*apart, header + newline] + [
        (" " * indent + line if line.strip() else line) + newline for line in dumped.splitlines()
    ]
    lines[end:end] = insert
    merged.text = "".join(lines)
    merged.added = list(additions)
    # the text was inserted by lines: prove the project's services read as before and the
    # added ones are there (a flow-style `services: {...}` cannot be extended by lines)
    try:
        after = compose_services(merged.text, path)
    except BadInput:
        after = {}
    if any(after.get(name) != services[name] for name in services) or not all(
        name in after for name in additions
    ):
        raise BadInput(
            f"{path}: bgtasks cannot add its services to the `services:` block as written "
            "(a block written in flow style, {...}, or indented unevenly)",
            f"write the services block of {path} one service per indented line, or add "
            f"these services by hand: {', '.join(additions)}",
        )
    if app_service:
        merged.notes.append(
            f"the project's {app_service} service runs the app: give it the same "
            "environment as the added services"
        )
    return merged


def _environment(value: object) -> dict[str, Any]:
    """A service's `environment:` as a mapping, from either of the forms Compose reads
    (`KEY: value`, or a list of `KEY=value` and bare `KEY`)."""
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    if isinstance(value, list):
        pairs = (str(entry).partition("=") for entry in value)
        return {key: (item if equals else None) for key, equals, item in pairs}
    return {}


def _app_environment(
    ours: dict[str, Any], apps: dict[str, Any], *, env_file: bool
) -> dict[str, Any]:
    """The environment of an added service that runs the project's code (a worker, beat,
    the scheduler): it reads the same settings class as the app service, so it gets the
    app's own `environment:` entries as they are (its database, its SMTP server), and
    where both set a variable the app's value wins: the worker must consume from the
    broker the app publishes to. Ours fills in the rest: the broker's URL, and the
    settings passed through from the shell or the .env Compose reads (`KEY:` with no
    value: unset there, the variable stays unset and the settings class's default holds;
    `${KEY}` would set it empty, which an int or bool field refuses). With an env_file
    those pass-throughs go: the file sets them, and some Compose versions let an unset
    pass-through remove a variable the env_file sets."""
    kept = {key: value for key, value in ours.items() if value is not None or not env_file}
    return {**kept, **apps}


def _rehost(
    service: dict[str, Any], hosts: dict[str, str], theirs: dict[str, Any]
) -> dict[str, Any]:
    """Point URLs and depends_on at the project's own broker services (waiting for them to
    be healthy only where they have a healthcheck: Compose refuses the condition otherwise)."""
    result = dict(service)
    env = result.get("environment")
    if isinstance(env, dict):
        result["environment"] = {
            # a pass-through (no value) stays one; numbers and true/false as written
            key: _replace_host(value, hosts) if isinstance(value, str) else value
            for key, value in env.items()
        }
    depends = result.get("depends_on")
    if isinstance(depends, dict):
        rewritten = {}
        for name, condition in depends.items():
            target = hosts.get(str(name), str(name))
            own = theirs.get(target)
            if isinstance(own, dict) and "healthcheck" not in own:
                condition = {"condition": "service_started"}
            rewritten[target] = condition
        result["depends_on"] = rewritten
    return result


def _replace_host(value: str, hosts: dict[str, str]) -> str:
    for kind, name in hosts.items():
        value = re.sub(rf"(@|//){kind}:", rf"\g<1>{name}:", value)
    return value


def merge_procfile(theirs: str, ours: str, runner: str = "") -> Merged:
    """The project's Procfile with the processes it lacks appended (comments kept). A
    process whose name the project already uses for another command (an arq `worker:`
    when celery's is added) gets the runner's name before it (`celery-worker:`); the
    project's own `web:` serves as it is."""
    existing = {
        m.group(1): m.group(2).strip() for m in re.finditer(r"(?m)^([\w-]+)\s*:(.*)$", theirs)
    }
    newline = "\r\n" if "\r\n" in theirs else "\n"
    merged = Merged(theirs)
    extra = []
    for line in ours.splitlines():
        match = re.match(r"^([\w-]+)\s*:(.*)$", line)
        if not match:
            continue
        name, command = match.group(1), match.group(2).strip()
        if command in existing.values() or (name == "web" and name in existing):
            continue
        if name in existing and runner:
            name = f"{runner}-{name}"
        if name in existing:
            continue
        extra.append(f"{name}:{match.group(2)}")
        existing[name] = command
        merged.added.append(name)
    if extra:
        text = theirs if theirs.endswith(("\n", "\r")) or not theirs else theirs + newline
        merged.text = text + newline.join(extra) + newline
    return merged


def without_processes(procfile: str, command: re.Pattern[str]) -> str:
    """The Procfile without the processes whose command matches `command`."""
    lines = procfile.splitlines(keepends=True)
    kept = [
        line
        for line in lines
        if not ((match := re.match(r"^[\w-]+\s*:(.*)$", line)) and command.search(match[1]))
    ]
    return "".join(kept)


def without_services(compose: str, command: re.Pattern[str]) -> str:
    """The compose file without the services whose `command:` matches `command`, each
    with the `# added by bgtasks (...)` line right above it; every other line stays."""
    lines = compose.splitlines(keepends=True)
    block = _services_block(lines)
    if block is None:
        return compose
    start, end, indent, _ = block
    keys = [
        i
        for i in range(start + 1, end)
        if re.match(rf"^ {{{indent}}}[\w.-]+\s*:", lines[i]) and lines[i][indent] != " "
    ]
    drop: set[int] = set()
    for number, first in enumerate(keys):
        last = keys[number + 1] if number + 1 < len(keys) else end
        body = lines[first:last]
        if not any(re.match(r"^\s+command\s*:", line) and command.search(line) for line in body):
            continue
        while last > first + 1 and (
            not lines[last - 1].strip() or lines[last - 1].lstrip().startswith("#")
        ):
            last -= 1  # the comments and blank lines before the next service are its own
        above = first
        heading = ADDED_SERVICES.partition("{")[0]
        if above > start + 1 and lines[above - 1].strip().startswith(heading):
            above -= 1
        if above > start + 1 and not lines[above - 1].strip():
            above -= 1  # the blank line that set it apart from the service above
        drop.update(range(above, last))
    return "".join(line for i, line in enumerate(lines) if i not in drop)
