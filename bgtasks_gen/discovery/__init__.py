"""Find, without importing anything, where the user's settings and served app live.

The evidence is read the way a person reading the repository would: what serves the app
(served.py), which FastAPI app that is (apps.py), which settings class its imports reach
(settings.py), what task systems are already there (present.py). evidence.py ranks the
candidates; layout.py holds the frozen result, which says how each thing was found.
"""

from __future__ import annotations

import keyword
import re
import sys
import tomllib
from pathlib import Path

from bgtasks_gen.discovery.apps import AppFinder, not_served_path
from bgtasks_gen.discovery.layout import AppLayout, Overrides, ProjectLayout, SettingsLayout
from bgtasks_gen.discovery.present import existing_runners, other_task_systems
from bgtasks_gen.discovery.served import served_targets
from bgtasks_gen.discovery.settings import SettingsFinder
from bgtasks_gen.errors import BadInput, DiscoveryError
from bgtasks_gen.modules import ModuleIndex, check_module_path
from bgtasks_gen.state import read_state

__all__ = [
    "AppLayout",
    "Overrides",
    "ProjectLayout",
    "SettingsLayout",
    "discover",
    "present_runners",
    "project_index",
]

# top-level names a generated package must never take: the libraries the generated code
# imports (a local `celery/` would hide the real one) and the standard library
RESERVED_TOP_LEVEL = frozenset(
    {
        "celery",
        "kombu",
        "arq",
        "redis",
        "taskiq",
        "fastapi",
        "starlette",
        "pydantic",
        "pydantic_settings",
        "uvicorn",
        "aiosmtplib",
        "email_validator",
        "httpx",
        "pytest",
        "tests",
        "test",
    }
)


def _read_pyproject(root: Path) -> dict[str, object]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} cannot be read as TOML: {exc}", "fix pyproject.toml first") from exc


def _table(data: dict[str, object], *keys: str) -> dict[str, object]:
    for key in keys:
        value = data.get(key)
        if not isinstance(value, dict):
            return {}
        data = value
    return data


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _legacy_typing(pyproject: dict[str, object]) -> bool:
    """True when the project still supports Python below 3.10 (no `X | None` at run time)."""
    spec = _table(pyproject, "project").get("requires-python")
    if not isinstance(spec, str):
        spec = _table(pyproject, "tool", "poetry", "dependencies").get("python")
    if not isinstance(spec, str):
        return False
    match = re.search(r"(>=|\^|~=|~|==)\s*3\.(\d+)", spec)
    return match is not None and int(match.group(2)) < 10


def _check_root(root: Path) -> Path:
    if not root.exists():
        raise BadInput(f"{root} does not exist", "pass the folder of your FastAPI project")
    if not root.is_dir():
        raise BadInput(f"{root} is a file, not a project folder", "pass the folder that holds it")
    return root.resolve()


def present_runners(
    root: Path, index: ModuleIndex | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(runners bgtasks knows, other task systems) already in the project: asked first,
    so a project with its own Celery app hears that before anything about its settings."""
    index = index or ModuleIndex(_check_root(root))
    runners = existing_runners(index)
    # a system that is also a runner (taskiq) is reported once, as the runner it is; a
    # runner's setup is also a task system already here for any other runner asked for
    known: dict[str, str] = {}
    for name, where in runners:
        known.setdefault(name, where.partition(":")[0])
    others = [other for other in other_task_systems(index) if other[0] not in known]
    return runners, sorted(others + list(known.items()))


def project_index(root: Path) -> ModuleIndex:
    """The index of a project's modules, for one command: pass it to each question asked."""
    return ModuleIndex(_check_root(root))


def discover(
    root: Path, overrides: Overrides | None = None, index: ModuleIndex | None = None
) -> ProjectLayout:
    """Inspect the project at `root` and return where everything is; raise DiscoveryError."""
    root = _check_root(root)
    pyproject = _read_pyproject(root)
    state = read_state(root)
    config = _table(pyproject, "tool", "bgtasks")
    given = overrides or Overrides()
    overrides = Overrides(
        settings_module=given.settings_module or _str(config.get("settings-module")),
        app_module=given.app_module or _str(config.get("app-module")),
    )
    # a name Python would import as another module is refused before any lookup
    for given_value, key in ((given.settings_module, "settings"), (given.app_module, "app")):
        where = f"--{key}-module" if given_value else f"[tool.bgtasks] {key}-module"
        check_module_path(given_value or _str(config.get(f"{key}-module")) or "", where)
    check_module_path(_str(config.get("tasks-module")) or "", "[tool.bgtasks] tasks-module")
    check_module_path(_str(config.get("routes-module")) or "", "[tool.bgtasks] routes-module")
    index = index or ModuleIndex(root)
    notes: list[str] = []

    apps = AppFinder(index)
    entrypoint = _str(_table(pyproject, "tool", "fastapi").get("entrypoint"))
    app = apps.choose(overrides.app_module, entrypoint, served_targets(root, index))
    if app.include_note:
        notes.append(app.include_note)

    app_info = index.load(app.path)
    created = index.load(app.created_path) if app.created_path else app_info
    closure = index.closure([app.module, created.name, app.import_module])
    package = _package(created.name, created.path)
    source_root = _source_root(created.path, created.name)
    saved = _table(state, "layout")

    tasks_module = _str(saved.get("tasks_module"))
    if tasks_module is None:
        configured = _str(config.get("tasks-module"))
        if configured:
            _check_new_module(index, source_root, configured, "[tool.bgtasks] tasks-module")
            tasks_module = configured
        else:
            tasks_module = _free_module(index, source_root, package)
            if not package:
                notes.append(
                    f"the app is the top-level module {created.name}: the tasks go into the "
                    f"new top-level package {tasks_module}"
                )

    settings = SettingsFinder(index).choose(overrides.settings_module, closure, [app_info, created])
    if settings is None:
        settings = _generated_settings(source_root, root, tasks_module)
        notes.append(
            "no pydantic BaseSettings class in the project: bgtasks generates "
            f"{tasks_module}.settings (TaskSettings, read from the same environment variables)"
        )

    routes_module = (
        _str(saved.get("routes_module"))
        or _str(config.get("routes-module"))
        or _routes_module(index, apps, source_root, package, tasks_module, notes)
    )
    return ProjectLayout(
        root=root,
        source_root=source_root,
        package=package,
        settings=settings,
        app=app,
        tasks_module=tasks_module,
        routes_module=routes_module,
        tests_dir="tests",
        legacy_typing=_legacy_typing(pyproject),
        # also what makes discovery read (and report a syntax error in) the runner modules
        existing_runners=tuple(existing_runners(index)),
        notes=tuple(notes),
        relative_imports=app_info.relative_imports,
    )


def _package(module: str, path: Path) -> str:
    """The app's top-level package; "" when the app is a top-level module of its own."""
    if "." in module or path.name == "__init__.py":
        return module.split(".")[0]
    return ""


def _source_root(path: Path, module: str) -> Path:
    depth = module.count(".") + (1 if path.name != "__init__.py" else 2)
    return path.parents[depth - 1]


def _collides(index: ModuleIndex, source_root: Path, dotted: str) -> str | None:
    """Why a new package `dotted` would break an existing import, or None."""
    top = dotted.split(".")[0]
    if top in sys.stdlib_module_names or top in RESERVED_TOP_LEVEL:
        return f"{top} is the name of a library the app imports (or of the standard library)"
    parts = dotted.split(".")
    folder = source_root
    for position, part in enumerate(parts):
        module_file = folder / f"{part}.py"
        if module_file.exists():
            name = ".".join(parts[: position + 1])
            return f"{name} is an existing module ({module_file.relative_to(index.root)})"
        folder = folder / part
    if len(parts) == 1:
        for other in index.source_roots:
            if (other / f"{top}.py").exists():
                return f"{top} is an existing top-level module ({other / f'{top}.py'})"
    return None


def _check_new_module(index: ModuleIndex, source_root: Path, dotted: str, where: str) -> None:
    parts = dotted.split(".")
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        raise BadInput(f"{where} = {dotted!r} is not a dotted module name")
    reason = _collides(index, source_root, dotted)
    if reason is None and (source_root / Path(*parts)).is_dir():
        reason = f"{dotted} is an existing package of the project"
    if reason:
        raise BadInput(
            f"{where} = {dotted!r} cannot hold the generated tasks: {reason}",
            "choose a dotted name that no module of the project or its libraries has, "
            "e.g. <your package>.background_tasks",
        )


def _free_module(index: ModuleIndex, source_root: Path, package: str) -> str:
    """`<package>.tasks` (or a top-level `tasks` for a single-module app), unless taken."""
    names = ("tasks", "background_tasks", "bgtasks_tasks")
    for name in names:
        dotted = f"{package}.{name}" if package else name
        folder = source_root / Path(*dotted.split("."))
        if folder.exists() or _collides(index, source_root, dotted):
            continue
        return dotted
    where = source_root / package if package else source_root
    raise DiscoveryError(
        f"{where} already has modules named {', '.join(names)}",
        "set [tool.bgtasks] tasks-module in pyproject.toml to a free dotted name",
    )


def _routes_module(
    index: ModuleIndex,
    apps: AppFinder,
    source_root: Path,
    package: str,
    tasks_module: str,
    notes: list[str],
) -> str:
    """The package holding most of the routers the project includes; new routers go there."""
    counts: dict[str, int] = {}
    for info, include in apps.includes():
        if not_served_path(index.root, info.path):
            continue  # a mock app's includes say nothing about where routes live
        qualified = info.resolve(include.first)
        module = _assigned_in(index, qualified)
        if module is None:  # a re-export, or a name bound another way: follow it
            located = index.locate(qualified)
            module = located[0].name if located else (qualified if index.find(qualified) else None)
        if module is None or "." not in module:
            continue
        parent = module.rpartition(".")[0]
        if index.find(parent):  # a package (its __init__.py), not a namespace portion
            counts[parent] = counts.get(parent, 0) + 1
    if counts:
        best = max(sorted(counts), key=lambda p: counts[p])
        if counts[best] > 1:
            notes.append(f"routes: beside the {counts[best]} routers in {best}")
        return best
    for candidate in (f"{package}.api" if package else "", f"{tasks_module}.api"):
        if candidate and not _collides(index, source_root, candidate):
            return candidate
    return f"{tasks_module}.api"


def _assigned_in(index: ModuleIndex, qualified: str) -> str | None:
    """The module of `pkg.mod.name` when that module assigns `name` at its top level
    (`router = APIRouter(...)`), seen in its text: the common case needs no parse, and a
    project with hundreds of route modules would otherwise summarise each."""
    module, _, name = qualified.rpartition(".")
    path = index.find(module) if module else None
    if path is None or not name.isidentifier():
        return None
    assigned = re.compile(rf"^{re.escape(name)}[ \t]*(?::[^=\n]+)?=(?!=)", re.MULTILINE)
    return module if assigned.search(index.text(path)) else None


def _generated_settings(source_root: Path, root: Path, tasks_module: str) -> SettingsLayout:
    module = f"{tasks_module}.settings"
    path = source_root / Path(*module.split(".")).with_suffix(".py")
    return SettingsLayout(
        module=module,
        path=path,
        class_name="TaskSettings",
        access_module=module,
        access_name="task_settings",
        access_kind="instance",
        fields=(),
        upper_case=True,
        pydantic_v1=False,
        found_by=f"generated: no BaseSettings class in the project ({path.relative_to(root)})",
        generated=True,
    )
