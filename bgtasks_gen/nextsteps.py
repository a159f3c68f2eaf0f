"""What `init` tells the user to do next, in the one order it works: install, environment,
run, test. The runner specs say which processes run and which test file; this module knows
the project's tooling (pip, uv, poetry) and the order, and writes `.env.example`.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bgtasks_gen.runners.base import RunnerSpec, RunnerSteps, SettingsField

ENV_EXAMPLE = ".env.example"
# a step whose process stays in the foreground: the user opens a terminal for it
UNTIL_CTRL_C = "runs until Ctrl-C"
# values that work on a developer's machine where the field default does not: the SMTP
# fields point at a plain-SMTP sink on port 1025 (`bgtasks dev` starts its own sink and
# points them at it, whatever .env says)
LOCAL_VALUES = {
    "smtp_host": "127.0.0.1",
    "smtp_port": "1025",
    "smtp_starttls": "false",
}
# `pip install --group` (PEP 735) is new in pip 25.1
PIP_GROUPS = "pip>=25.1"
MAKE_TOKEN = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'


@dataclass(frozen=True)
class Step:
    command: str
    why: str
    long_running: bool = False

    def line(self) -> str:
        why = f"{UNTIL_CTRL_C}: {self.why}" if self.long_running else self.why
        return f"{self.command}  # {why}"


def detect_tooling(root: Path) -> str:
    """ "uv", "poetry" or "pip", from the files the project's tooling leaves behind."""
    if (root / "uv.lock").is_file():
        return "uv"
    if (root / "poetry.lock").is_file():
        return "poetry"
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return "pip"
        if isinstance(data.get("tool", {}).get("poetry"), dict):
            return "poetry"
    return "pip"


def _run(tooling: str, command: str) -> str:
    """`command` run in the project's environment: `uv run`/`poetry run` go after any
    leading VAR=value assignments, so they stay environment for the process."""
    if tooling == "pip":
        return command
    words = command.split(" ")
    assignments = 0
    while assignments < len(words) and re.match(r"^[A-Z_][A-Z0-9_]*=", words[assignments]):
        assignments += 1
    runner = "uv run" if tooling == "uv" else "poetry run"
    return " ".join([*words[:assignments], runner, *words[assignments:]])


def _add_packages(tooling: str, packages: Sequence[str], *, dev: bool) -> str:
    quoted = " ".join(f'"{p}"' if re.search(r"[<>=\[]", p) else p for p in packages)
    if tooling == "uv":
        return f"uv add {'--dev ' if dev else ''}{quoted}"
    if tooling == "poetry":
        return f"poetry add {'--group dev ' if dev else ''}{quoted}"
    return f"pip install {quoted}"


def _install(
    root: Path, tooling: str, test_group: str | None, dependency_file: str | None
) -> list[Step]:
    kind, _, group = (test_group or "").partition(":")
    why = "install the project and its new dependencies"
    if tooling == "uv":
        option = {"extra": f" --extra {group}", "group": f" --group {group}"}.get(kind, "")
        # uv syncs the dev group by default
        command = "uv sync" + ("" if group == "dev" and kind == "group" else option)
        return [Step(command, f"{why}, into the project's .venv (uv's own)")]
    if tooling == "poetry":
        return [
            Step("poetry lock", "poetry.lock is stale after the dependency edit"),
            Step("poetry install", f"{why}, into poetry's environment for the project"),
        ]
    why = f"{why}, {_pip_environment(root)}"
    installable = (root / "pyproject.toml").is_file() or (root / "setup.py").is_file()
    if installable:
        command = f'pip install -e ".[{group}]"' if kind == "extra" else "pip install -e ."
    else:
        command = f"pip install -r {dependency_file}" if dependency_file else "pip install"
    if kind == "group":
        command = f'pip install "{PIP_GROUPS}" && {command} --group {group}'
    elif kind == "file":
        command = f"{command} -r {group}"
    if command == "pip install":
        return []
    return [Step(command, why)]


def _pip_environment(root: Path) -> str:
    """Which environment a pip step installs into: the one the app and workers run in."""
    for name in (".venv", "venv"):
        if (root / name / "pyvenv.cfg").is_file():
            return f"into the project's {name} (activate it first: . {name}/bin/activate)"
    return (
        "into the environment the app and its workers run in (none in the project: "
        "python3 -m venv .venv && . .venv/bin/activate first)"
    )


def build_steps(
    root: Path,
    spec: RunnerSpec,
    runner_steps: RunnerSteps,
    *,
    test_group: str | None,
    test_packages: Sequence[str],
    dependency_file: str | None,
    env_example: bool,
    other_steps: Sequence[str] = (),
    access: Mapping[str, object] | None = None,
) -> list[str]:
    """Every step, in order, as `command  # why` lines.

    `test_group` says where the scaffold's test dependencies went ("group:dev",
    "extra:dev", "poetry:dev", "file:requirements-dev.txt"), None when they were not
    added anywhere; then `test_packages` are installed by a step of their own.
    `other_steps` are further commands the dependency edit asked for. `access` is the
    template context: how callers get past the generated auth hook.
    """
    tooling = detect_tooling(root)
    steps = _install(root, tooling, test_group, dependency_file)
    steps += [
        Step(line.partition("  #")[0], line.partition("  # ")[2] or "needed after the edit")
        for line in other_steps
        # uv sync relocks and poetry lock is a step of its own already
        if not line.startswith(("uv lock", "poetry lock"))
    ]
    if test_group is None and test_packages:
        steps.append(
            Step(
                _add_packages(tooling, test_packages, dev=True),
                "what the scaffold's own tests need",
            )
        )
    if env_example:
        exists = (root / ".env").exists()
        if not exists:
            steps.append(
                Step(
                    f"cp {ENV_EXAMPLE} .env",
                    "local settings (pydantic-settings reads .env when the settings class "
                    'has env_file=".env"; otherwise export them)',
                )
            )
    token, call = access_steps(spec, access) if access is not None else (None, None)
    if token is not None:
        steps.append(token)
    steps.append(
        Step(
            "bgtasks dev",
            f"the API, {_processes_phrase(spec)}, all in one terminal; or each command below in "
            "a terminal of its own",
            long_running=True,
        )
    )
    for command in runner_steps.processes:
        steps.append(Step(_run(tooling, command), "instead of bgtasks dev", long_running=True))
    if runner_steps.monitoring:
        package, command = runner_steps.monitoring
        steps.append(
            Step(
                f"{_add_packages(tooling, [package], dev=False)} && {_run(tooling, command)}",
                f"optional: {package}, a web monitor of the tasks",
                long_running=True,
            )
        )
    if call is not None:
        steps.append(call)
    steps += [
        Step(_run(tooling, command), runner_steps.tests_why) for command in runner_steps.tests
    ]
    return [step.line() for step in steps]


def served_prefix(
    include_keywords: Sequence[tuple[str, str]],
    field_types: Mapping[str, tuple[str, str | None]] | None = None,
) -> str:
    """The path prefix the router is served under, from its include's `prefix=`: a
    string literal, or a settings field read there (`settings.API_V1_STR`) whose default
    is one; "" when it cannot be known without running the project."""
    source = dict(include_keywords).get("prefix", "")
    if not source:
        return ""
    try:
        expression = ast.parse(source, mode="eval").body
    except SyntaxError:
        return ""
    if isinstance(expression, ast.Attribute) and field_types:
        default = field_types.get(expression.attr, ("", None))[1]
        if default is None:
            return ""
        source = default
    try:
        value = ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return ""
    return value.rstrip("/") if isinstance(value, str) and value.startswith("/") else ""


def access_steps(
    spec: RunnerSpec, context: Mapping[str, object]
) -> tuple[Step | None, Step | None]:
    """The API token to set and a call that uses it; None when the app's own auth
    dependency guards the router (the generated hook then trusts it)."""
    if context.get("project_auth"):
        return None, None
    env_names = context.get("env_names")
    names = env_names if isinstance(env_names, Mapping) else {}
    token_env = str(names.get("bgtasks_api_token", "BGTASKS_API_TOKEN"))
    anonymous_env = str(names.get("bgtasks_allow_anonymous", "BGTASKS_ALLOW_ANONYMOUS"))
    hook_module = (
        f"{context.get('tasks_module')}.{spec.access_module}"
        if spec.access_module
        else f"{context.get('routes_module')}.{spec.router_file}"
    )
    token = Step(
        MAKE_TOKEN,
        f"a token for the task API: put it in .env as {token_env}=<token>; requests "
        "without it are refused (401). To use your current-user dependency instead, edit "
        f"authorize_task_access in {hook_module}; {anonymous_env}=true lets every request "
        "in (local development only)",
    )
    from bgtasks_gen.api_surface import email_route

    shape = str(context.get("api_shape") or "")
    route = email_route(
        spec.email_route,
        "" if shape == spec.name else shape,
        str(context.get("queue_prefix") or ""),
    )
    if not route:
        return token, None
    prefix = str(context.get("api_prefix") or "")
    call = Step(
        f"curl -X POST http://127.0.0.1:8000{prefix}{route} "
        '-H "Authorization: Bearer <token>" -H "Content-Type: application/json" '
        """-d '{"to": "you@example.com", "subject": "Hello", "body": "It works"}'""",
        "queue an email through the API: the token as a bearer token, a JSON body "
        "(a POST of any other type is refused, 415)",
    )
    return token, call


def _processes_phrase(spec: RunnerSpec) -> str:
    parts = [f"the {process.name}" for process in spec.dev_processes]
    if "celery-beat" in spec.capabilities:
        parts.append("beat")
    if spec.dev_processes:  # the queue runners: their broker and results
        parts.append("Redis")
    parts.append("an SMTP sink that prints every email")
    return ", ".join(parts)


def env_value(field: SettingsField, broker: str) -> str:
    """The field's default as an environment value: `"x"` -> x, True -> true."""
    if field.key in LOCAL_VALUES:
        return LOCAL_VALUES[field.key]
    source = field.default_for(broker)
    quoted = re.fullmatch(r'(?:SecretStr\()?"(.*)"\)?', source)
    if quoted:
        return quoted.group(1)
    if source in ("True", "False"):
        return source.lower()
    return source


def render_env_example(
    spec: RunnerSpec, env_names: Mapping[str, str], broker: str, *, header: bool = True
) -> str:
    """One line per setting the generated code reads, named as the project's settings
    class reads it from the environment (its env_prefix and case), grouped as the
    settings fields are."""
    lines = []
    if header:
        lines += [
            "# Local settings for the background tasks. Copy to .env and adjust; never commit",
            "# .env itself. `bgtasks dev` points the SMTP settings at its own sink.",
        ]
    for field in spec.settings_fields:
        name = env_names.get(field.key)
        if name is None:
            continue
        if field.comment:
            lines += ["", f"# {field.comment}"]
        lines.append(f"{name}={env_value(field, broker)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def merge_env_example(existing: str, ours: str) -> tuple[str, list[str]]:
    """The project's own .env.example with the variables it lacks appended, and their names."""
    have = set(re.findall(r"(?m)^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", existing))
    missing = [
        line
        for line in ours.splitlines()
        if "=" in line and not line.startswith("#") and line.partition("=")[0] not in have
    ]
    if not missing:
        return existing, []
    newline = "\r\n" if "\r\n" in existing else "\n"
    text = existing if not existing or existing.endswith(("\n", "\r")) else existing + newline
    block = [f"{newline}# Background tasks (added by bgtasks)", *missing]
    return text + newline.join(block) + newline, [line.partition("=")[0] for line in missing]


DOCTOR_HINT = (
    "then `bgtasks doctor` serves the app once in the project's environment, with its "
    "lifespans, and asks the status route (init found no environment to prove it in)"
)


def with_doctor_step(steps: Sequence[str]) -> list[str]:
    """The steps, the one before the processes start (install and settings are done by
    then) saying that `bgtasks doctor` proves the app serves: init had no environment of
    the project's to serve it in. Only the comment changes: no command is added."""
    lines = list(steps)
    at = next((i for i, line in enumerate(lines) if line.startswith("bgtasks dev ")), len(lines))
    if at == 0:
        return lines
    command, hash_, why = lines[at - 1].partition("  # ")
    lines[at - 1] = f"{command}  # {why}; {DOCTOR_HINT}" if hash_ else f"{command}  # {DOCTOR_HINT}"
    return lines
