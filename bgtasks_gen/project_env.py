"""The scaffolded project as its own processes will see it: the interpreter of its
environment, the settings they read and under which environment variable names, and a
probe that asks that interpreter what it has installed and whether the code imports.

bgtasks may run from another environment (pipx, a tool venv) than the project's, so
nothing here imports the project: the probe runs in the project's interpreter, in a
subprocess with a bounded timeout.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bgtasks_gen.errors import BadInput, BgtasksError
from bgtasks_gen.runners.base import RunnerSpec

if TYPE_CHECKING:
    from bgtasks_gen.discovery import ProjectLayout, SettingsLayout

PROBE_MARKER = "BGTASKS-PROBE:"
POETRY_TIMEOUT = 15.0
MASK = "****"


class NoInterpreter(BadInput):
    """Raised when the project's Python environment cannot be found (or --python is wrong)."""


class ProbeFailed(BadInput):
    """Raised when the project's interpreter cannot run the probe within its time."""


# -- the interpreter ---------------------------------------------------------------------


@dataclass(frozen=True)
class Interpreter:
    path: Path
    found_by: str

    def pip_install(self, requirement: str) -> str:
        return f"{shlex.quote(str(self.path))} -m pip install {shlex.quote(requirement)}"


def _venv_python(folder: Path) -> Path | None:
    for candidate in (folder / "bin" / "python", folder / "Scripts" / "python.exe"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _poetry_env(root: Path) -> Path | None:
    """The folder of poetry's environment for the project, when poetry manages it."""
    poetry = shutil.which("poetry")
    pyproject = root / "pyproject.toml"
    uses_poetry = (root / "poetry.lock").is_file() or (
        pyproject.is_file() and "[tool.poetry" in pyproject.read_text(errors="replace")
    )
    if poetry is None or not uses_poetry:
        return None
    try:
        result = subprocess.run(
            [poetry, "env", "info", "--path"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=POETRY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    folder = result.stdout.strip()
    return Path(folder) if result.returncode == 0 and folder else None


def find_interpreter(
    root: Path, explicit: Path | None, environ: Mapping[str, str] | None = None
) -> Interpreter:
    """The project's Python: --python, then PROJECT/.venv (or venv), an activated
    VIRTUAL_ENV, uv's UV_PROJECT_ENVIRONMENT, poetry's environment."""
    environ = os.environ if environ is None else environ
    if explicit is not None:
        path = explicit if explicit.is_absolute() else Path.cwd() / explicit
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise NoInterpreter(
                f"--python {explicit}: no executable there",
                "pass the interpreter of the project's environment, e.g. --python .venv/bin/python",
            )
        return Interpreter(path, "--python")
    for name in (".venv", "venv"):
        found = _venv_python(root / name)
        if found is not None:
            return Interpreter(found, f"{name}/ in the project")
    for variable in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"):
        folder = environ.get(variable)
        if folder:
            found = _venv_python(Path(folder))
            if found is not None:
                return Interpreter(found, f"${variable}")
    poetry_env = _poetry_env(root)
    if poetry_env is not None and (found := _venv_python(poetry_env)) is not None:
        return Interpreter(found, "poetry's environment")
    raise NoInterpreter(
        f"no Python environment found for {root} (no .venv, no $VIRTUAL_ENV, no poetry env)",
        f"create one: python3 -m venv {root}/.venv && {root}/.venv/bin/pip install -e {root} "
        "(or pass --python PATH)",
    )


# -- the project ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StackProject:
    """A scaffolded project with everything dev and doctor read from it.

    `layout` is None when discovery could not read the project (a file that does not
    parse, say): `discovery_error` says why, and what the state file records stands in.
    """

    root: Path
    spec: RunnerSpec
    state_layout: Mapping[str, object]  # .bgtasks.toml's [layout]
    layout: ProjectLayout | None
    fields: Mapping[str, str]  # the runner's field key -> the attribute the class has
    app_target: str  # what uvicorn serves: "app.main:app", "acme.server:create_app --factory"
    discovery_error: BgtasksError | None = None

    @property
    def broker(self) -> str:
        return str(self.state_layout.get("broker") or "redis")

    @property
    def settings(self) -> SettingsLayout:
        assert self.layout is not None, "only asked once discovery succeeded"
        return self.layout.settings

    def env_name(self, key: str) -> str:
        """The environment variable the settings class reads for a runner field."""
        return self.settings.env_name(self.fields[key])

    @property
    def source_root(self) -> Path:
        if self.layout is not None:
            return self.layout.source_root.resolve()
        return (self.root / str(self.state_layout.get("source_root") or ".")).resolve()

    @property
    def tasks_module(self) -> str:
        return str(self.state_layout["tasks_module"])

    @property
    def worker_module(self) -> str | None:
        worker = self.spec.worker_file
        return f"{self.tasks_module}.{worker.removesuffix('.py')}" if worker else None

    @property
    def served_app(self) -> tuple[str, str, bool]:
        """(module, attribute, is a factory) of the served app, read from app_target."""
        words = shlex.split(self.app_target)
        module, _, attribute = words[0].partition(":")
        return module, attribute or "app", "--factory" in words


def load_stack_project(root: Path) -> StackProject:
    """Read the state file and discover the layout, as `bgtasks check` does; BadInput
    when `root` is not a bgtasks project. A discovery that fails is recorded, not
    raised: the checks that do not need it still run."""
    from bgtasks_gen.addtask import load_project
    from bgtasks_gen.discovery import Overrides, discover
    from bgtasks_gen.scaffold import app_target, choose_fields

    project = load_project(root)
    state_app = str(project.layout.get("app") or "")
    overrides = Overrides(
        settings_module=str(project.layout.get("settings") or "") or None,
        app_module=state_app or None,
    )
    try:
        layout = discover(project.root, overrides)
    except BgtasksError as error:
        return StackProject(project.root, project.spec, project.layout, None, {}, state_app, error)
    fields = {choice.key: choice.name for choice in choose_fields(project.spec, layout)}
    return StackProject(
        root=project.root,
        spec=project.spec,
        state_layout=project.layout,
        layout=layout,
        fields=fields,
        app_target=app_target(layout),
    )


def process_environment(
    project: StackProject, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of every process bgtasks starts in the project's interpreter.

    The source folder goes first on PYTHONPATH: the working tree is what runs, installed
    or not (and ahead of a stale non-editable install).
    """
    env = dict(os.environ)
    existing = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project.source_root), existing) if p)
    env["PYTHONUNBUFFERED"] = "1"  # each line reaches the output as it is written
    env.update(overrides or {})
    return env


# -- settings, read without importing the project -------------------------------------------


@dataclass(frozen=True)
class SettingSource:
    attribute: str
    env_name: str
    source: str  # "environment", ".env", "default", "computed default", "missing"
    value: str | None  # None when missing or computed


def read_dotenv(root: Path) -> dict[str, str]:
    """KEY=VALUE lines of the project's .env (pydantic-settings reads it from the cwd)."""
    path = root / ".env"
    if not path.is_file():
        return {}
    values = {}
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #")[0].strip()
        values[key.strip()] = value
    return values


def lookup(name: str, values: Mapping[str, str], case_sensitive: bool) -> str | None:
    """`name` in `values` as pydantic-settings matches it (any case unless case_sensitive)."""
    if name in values:
        return values[name]
    if not case_sensitive:
        lowered = name.lower()
        for key, value in values.items():
            if key.lower() == lowered:
                return value
    return None


def literal_default(source: str | None) -> tuple[str, str | None]:
    """(kind, value) of a field's default as written: ("missing", None) for a required
    field, ("literal", text) for a constant (also inside SecretStr(...) or Field(...)),
    ("computed", None) for anything an import would have to evaluate."""
    if source is None:
        return "missing", None
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        return "computed", None
    if isinstance(node, ast.Call):
        name = ast.unparse(node.func).rpartition(".")[2]
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name == "Field":
            inner = node.args[0] if node.args else keywords.get("default")
            if inner is None:
                return ("computed", None) if "default_factory" in keywords else ("missing", None)
            if isinstance(inner, ast.Constant) and inner.value is Ellipsis:
                return "missing", None
            node = inner
        elif name == "SecretStr" and node.args:
            node = node.args[0]
    if isinstance(node, ast.Constant):
        return "literal", "" if node.value is None else str(node.value)
    return "computed", None


def setting_sources(
    project: StackProject, environ: Mapping[str, str] | None = None
) -> list[SettingSource]:
    """Where each field of the settings class gets its value, without importing it."""
    environ = os.environ if environ is None else environ
    if project.layout is None:
        return []
    settings = project.layout.settings
    dotenv = read_dotenv(project.root)
    sources = []
    for attribute in settings.fields:
        if attribute == "model_config" or attribute not in settings.field_types:
            continue
        env_name = settings.env_name(attribute)
        from_env = lookup(env_name, environ, settings.case_sensitive)
        from_dotenv = lookup(env_name, dotenv, settings.case_sensitive)
        if from_env is not None:
            sources.append(SettingSource(attribute, env_name, "environment", from_env))
        elif from_dotenv is not None:
            sources.append(SettingSource(attribute, env_name, ".env", from_dotenv))
        else:
            kind, value = literal_default(settings.field_types[attribute][1])
            source = {"literal": "default", "computed": "computed default"}.get(kind, kind)
            sources.append(SettingSource(attribute, env_name, source, value))
    return sources


# -- URLs --------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """`url` with its password replaced by ****, for output."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(://[^/@]*?:)[^/@]*@", rf"\1{MASK}@", url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    # redis-py reads a lone "user@" as the password: hide it too
    credentials = f"{user}:{MASK}" if parts.password is not None else MASK
    return parts._replace(netloc=f"{credentials}@{host}").geturl()


CREDENTIALS_IN_URL = re.compile(r"(\w[\w+.-]*://[^/\s:@]*:)[^/\s@]+@")


def mask_credentials(text: str) -> str:
    """Every URL password in a free text (an error message) replaced by ****."""
    return CREDENTIALS_IN_URL.sub(rf"\g<1>{MASK}@", text)


# -- the probe, run in the project's interpreter ---------------------------------------------


def _probe_main(raw_request: str) -> None:
    """Answer one probe request as JSON on stdout. Runs in the project's interpreter, so it
    uses the standard library only and the syntax of every Python the project may use;
    whatever the project's code prints goes to stderr."""
    import contextlib
    import importlib
    import importlib.metadata as metadata
    import json
    import sys
    import traceback

    request = json.loads(raw_request)
    answer: dict[str, Any] = {
        "python": ".".join(str(part) for part in sys.version_info[:3]),
        "executable": sys.executable,
    }

    def describe(error: BaseException) -> str:
        """Where and what, in one line; never the input values (a pydantic error
        quotes every setting it was given, passwords included)."""
        if isinstance(error, SyntaxError):
            where = f"{error.filename}:{error.lineno}: " if error.filename else ""
            return f"{where}SyntaxError: {error.msg}"
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
        errors = getattr(error, "errors", None)
        if callable(errors):
            try:
                items = [
                    ".".join(str(part) for part in item.get("loc", ())) + ": " + item["msg"]
                    for item in errors(include_input=False)
                ]
            except Exception:  # noqa: BLE001 - not pydantic's errors() after all
                items = []
            if items:
                return f"{where}{type(error).__name__}: {'; '.join(items)}"[:500]
        text = traceback.format_exception_only(type(error), error)[-1].strip()
        return (where + text.splitlines()[0])[:500]

    def value_text(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float)):
            return value
        secret = getattr(value, "get_secret_value", None)
        return str(secret() if callable(secret) else value)

    def loaded(dotted: str, attribute: str) -> Any:
        return getattr(importlib.import_module(dotted), attribute)

    def reaches(start: Any, found: Any) -> bool:
        """Whether `found(item)` holds for an item reachable from `start` through
        wrappers and closures: how FastAPI and users compose lifespans."""
        seen: set[int] = set()
        todo = [start]
        while todo and len(seen) < 500:
            item = todo.pop()
            if id(item) in seen:
                continue
            seen.add(id(item))
            if found(item):
                return True
            if isinstance(item, (list, tuple)):
                todo.extend(item)
                continue
            for attribute in ("__wrapped__", "func"):
                inner = getattr(item, attribute, None)
                if inner is not None:
                    todo.append(inner)
            for cell in getattr(item, "__closure__", None) or ():
                with contextlib.suppress(ValueError):
                    todo.append(cell.cell_contents)
        return False

    def runs_handlers_of(router: Any) -> Any:
        # the default lifespan of the app's own router runs its on_event handlers
        # (an included router's runs only that router's); bgtasks' on_event_handlers
        # runs them from a custom lifespan
        def found(item: Any) -> bool:
            default = type(item).__name__ == "_DefaultLifespan"
            if default and getattr(item, "_router", None) is router:
                return True
            return bool(getattr(item, "__name__", None) == "on_event_handlers")

        return found

    with contextlib.redirect_stdout(sys.stderr):
        distributions: dict[str, Any] = {}
        for name in request.get("distributions", []):
            try:
                found = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                distributions[name] = None
            else:
                distributions[name] = {
                    "version": found.version,
                    "requires": list(found.requires or []),
                }
        answer["distributions"] = distributions

        modules: dict[str, Any] = {}
        for dotted in request.get("modules", []):
            try:
                importlib.import_module(dotted)
                modules[dotted] = None
            except BaseException as error:  # noqa: BLE001 - the project's code may raise anything
                modules[dotted] = describe(error)
        answer["modules"] = modules

        settings = request.get("settings")
        if settings:
            try:
                source = loaded(settings["module"], settings["attribute"])
                instance = source() if settings["call"] else source
                answer["settings"] = {
                    "values": {
                        f: value_text(getattr(instance, f, None)) for f in settings["fields"]
                    }
                }
            except BaseException as error:  # noqa: BLE001
                answer["settings"] = {"error": describe(error)}

        celery_module = request.get("celery")
        if celery_module:
            try:
                app = loaded(celery_module, "celery_app")
                app.loader.import_default_modules()
                schedule = app.conf.beat_schedule or {}
                answer["celery"] = {
                    "registered": sorted(str(name) for name in app.tasks.keys()),
                    "beat": {str(k): str(v.get("task", "")) for k, v in schedule.items()},
                    "control_queue_exclusive": app.conf.get("control_queue_exclusive"),
                    "event_queue_exclusive": app.conf.get("event_queue_exclusive"),
                }
            except BaseException as error:  # noqa: BLE001
                answer["celery"] = {"error": describe(error)}

        served = request.get("app")
        if served:
            try:
                app = loaded(served["module"], served["attribute"])
                if served["factory"]:
                    app = app()
                router = getattr(app, "router", None)
                lifespan = getattr(router, "lifespan_context", None)
                answer["app"] = {
                    "on_startup": len(getattr(router, "on_startup", None) or ()),
                    "on_shutdown": len(getattr(router, "on_shutdown", None) or ()),
                    "handlers_run": lifespan is None or reaches(lifespan, runs_handlers_of(router)),
                }
            except BaseException as error:  # noqa: BLE001
                answer["app"] = {"error": describe(error)}

    sys.stdout.write("BGTASKS-PROBE:" + json.dumps(answer) + "\n")


def script_of(main: Callable[[str], None]) -> str:
    """`main` as a script that calls it with its first argument. A probe is written here
    as a function (linted and type-checked with the rest) and sent as source: nothing of
    bgtasks needs to be importable in the project's interpreter."""
    return (
        "from __future__ import annotations\n"
        "from typing import Any\n"
        f"{inspect.getsource(main)}\n"
        "import sys\n"
        f"{main.__name__}(sys.argv[1])\n"
    )


def run_script(
    python: Path,
    main: Callable[[str], None],
    argument: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run `main` (sent by script_of) in the project's interpreter with `argument`; an
    OSError or subprocess.TimeoutExpired is the caller's to say in its own words."""
    return subprocess.run(
        [str(python), "-c", script_of(main), argument],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def marked_answer(stdout: str, marker: str) -> Any:
    """The JSON a script printed after `marker` on its last such line (the project's own
    code may print too), None when it printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(marker):
            return json.loads(line.removeprefix(marker))
    return None


def run_probe(
    interpreter: Interpreter,
    request: Mapping[str, object],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
) -> dict[str, Any]:
    """Ask the project's interpreter; ProbeFailed when it cannot answer in time."""
    try:
        result = run_script(
            interpreter.path, _probe_main, json.dumps(request), cwd=cwd, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise ProbeFailed(
            f"{interpreter.path} did not answer within {timeout:.0f} s",
            "something in the project blocks at import (a connection opened at import time?)",
        ) from None
    except OSError as error:
        raise ProbeFailed(f"{interpreter.path} cannot run: {error}", "check --python") from None
    answer: dict[str, Any] | None = marked_answer(result.stdout, PROBE_MARKER)
    if answer is not None:
        return answer
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise ProbeFailed(
        f"{interpreter.path} could not run bgtasks' probe (exit {result.returncode}): {last}",
        "is it a working Python 3 interpreter? (--python)",
    )
