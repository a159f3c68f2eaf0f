"""Find, without importing anything, where the user's Settings class and FastAPI app live.

The result is a frozen ProjectLayout that also says HOW each thing was found, so a
message can explain itself ("found via [tool.fastapi] entrypoint").
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bgtasks_gen.errors import BadInput, DiscoveryError
from bgtasks_gen.modules import CallSite, ModuleIndex, ModuleInfo
from bgtasks_gen.state import read_state

SETTINGS_ROOTS_V2 = frozenset(
    {"pydantic_settings.BaseSettings", "pydantic_settings.main.BaseSettings"}
)
SETTINGS_ROOTS_V1 = frozenset({"pydantic.BaseSettings", "pydantic.env_settings.BaseSettings"})
FASTAPI_CLASSES = frozenset({"fastapi.FastAPI", "fastapi.applications.FastAPI"})


@dataclass(frozen=True)
class SettingsLayout:
    module: str  # where the class to patch is defined
    path: Path
    class_name: str
    access_module: str  # where the object (or its factory) the app uses is defined
    access_name: str  # "settings", "get_settings" or the class itself
    access_kind: str  # "instance" | "factory" | "class"
    fields: tuple[str, ...]  # existing fields, inherited ones included
    upper_case: bool
    pydantic_v1: bool
    found_by: str

    @property
    def import_line(self) -> str:
        return f"from {self.access_module} import {self.access_name}"

    @property
    def expression(self) -> str:
        return self.access_name if self.access_kind == "instance" else f"{self.access_name}()"


@dataclass(frozen=True)
class AppLayout:
    module: str  # where FastAPI(...) is called
    path: Path
    app_var: str  # the name the instance is bound to there
    factory: str | None  # the function building it, None at module level
    uses_on_event: bool
    has_lifespan: bool
    found_by: str

    @property
    def import_line(self) -> str:
        return f"from {self.module} import {self.factory or self.app_var}"

    @property
    def expression(self) -> str:
        return f"{self.factory}()" if self.factory else self.app_var


@dataclass(frozen=True)
class ProjectLayout:
    root: Path
    source_root: Path
    package: str
    settings: SettingsLayout
    app: AppLayout
    tasks_module: str
    routes_module: str
    tests_dir: str  # relative to root
    legacy_typing: bool
    existing_runners: tuple[tuple[str, str], ...]  # (runner, "path:line") found in the code

    def module_path(self, dotted: str) -> Path:
        """Relative path of the package folder for a dotted name under the source root."""
        return (self.source_root / Path(*dotted.split("."))).relative_to(self.root)


@dataclass(frozen=True)
class Overrides:
    settings_module: str | None = None
    app_module: str | None = None


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


def _legacy_typing(pyproject: dict[str, object]) -> bool:
    """True when the project still supports Python below 3.10 (no `X | None` at run time)."""
    spec = _table(pyproject, "project").get("requires-python")
    if not isinstance(spec, str):
        spec = _table(pyproject, "tool", "poetry", "dependencies").get("python")
    if not isinstance(spec, str):
        return False
    match = re.search(r"(>=|\^|~=|~|==)\s*3\.(\d+)", spec)
    return match is not None and int(match.group(2)) < 10


class _Discovery:
    def __init__(self, root: Path, overrides: Overrides, pyproject: dict[str, object]) -> None:
        self.root = root
        self.index = ModuleIndex(root)
        self.overrides = overrides
        self.pyproject = pyproject
        self._settings_memo: dict[str, str | None] = {}
        self._candidates: list[ModuleInfo] | None = None

    def candidates(self) -> list[ModuleInfo]:
        """Modules that could hold settings or the app (cheap text filter, then parse)."""
        if self._candidates is None:
            found = []
            for path in self.index.python_files():
                try:
                    head = path.read_bytes()
                except OSError:
                    continue
                if b"Settings" in head or b"FastAPI" in head or b"Celery" in head or b"arq" in head:
                    found.append(self.index.load(path))
            self._candidates = found
        return self._candidates

    # settings --------------------------------------------------------------------------------
    def settings_root(self, qualified: str, depth: int = 0) -> str | None:
        """The pydantic BaseSettings a class derives from, or None if it is not settings."""
        if qualified in SETTINGS_ROOTS_V1 | SETTINGS_ROOTS_V2:
            return qualified
        if depth > 20:
            return None
        if qualified not in self._settings_memo:
            self._settings_memo[qualified] = None
            located = self.index.locate(qualified)
            if located is not None:
                info, name = located
                cls = info.classes.get(name)
                for base in cls.bases if cls else ():
                    root = self.settings_root(info.resolve(base), depth + 1)
                    if root:
                        self._settings_memo[qualified] = root
                        break
        return self._settings_memo[qualified]

    def all_fields(self, qualified: str, depth: int = 0) -> list[str]:
        located = self.index.locate(qualified)
        if located is None or depth > 20:
            return []
        info, name = located
        cls = info.classes.get(name)
        if cls is None:
            return []
        fields = list(cls.fields)
        for base in cls.bases:
            fields.extend(
                f for f in self.all_fields(info.resolve(base), depth + 1) if f not in fields
            )
        return fields

    def _accessors(self) -> list[tuple[ModuleInfo, CallSite, str]]:
        """Every `x = SomeSettings()` and `return SomeSettings()` in the project."""
        found = []
        for info in self.candidates():
            for call in info.calls:
                qualified = info.resolve(call.callee)
                if self.settings_root(qualified):
                    found.append((info, call, qualified))
        return found

    def find_settings(self, app_module: ModuleInfo | None) -> SettingsLayout:
        wanted = self.overrides.settings_module
        wanted_module, _, wanted_name = (wanted or "").partition(":")
        accessors = []
        for info, call, qualified in self._accessors():
            if call.function is None and call.target is None:
                continue
            kind = "instance" if call.function is None else "factory"
            access_name = call.target if call.function is None else call.function
            if access_name is None:
                continue
            if wanted and wanted_module not in (info.name, qualified.rpartition(".")[0]):
                continue
            if wanted_name and wanted_name not in (access_name, qualified.rpartition(".")[2]):
                continue
            accessors.append((info, kind, access_name, qualified))
        how = "found where the settings object is built"
        if wanted:
            how = f"chosen by the settings module override ({wanted})"
        if not accessors:
            return self._settings_without_accessor(wanted)
        classes = {qualified for *_, qualified in accessors}
        if len(classes) > 1 and app_module is not None:
            # the class to patch is the one the app's settings object is built from
            imported = set(app_module.imports.values())
            used = [a for a in accessors if f"{a[0].name}.{a[2]}" in imported]
            if len({a[3] for a in used}) == 1:
                accessors, how = used, f"the settings object {app_module.name} imports"
        classes = {qualified for *_, qualified in accessors}
        if len(classes) > 1:
            where = ", ".join(
                sorted(f"{q} ({i.path.relative_to(self.root)})" for i, _, _, q in accessors)
            )
            raise DiscoveryError(
                f"more than one Settings class is instantiated: {where}",
                "say which one with --settings-module MODULE[:CLASS] or "
                "[tool.bgtasks] settings-module in pyproject.toml",
            )
        # prefer a module-level instance over a factory when both exist
        accessors.sort(key=lambda a: (a[1] != "instance", a[0].name))
        info, kind, access_name, qualified = accessors[0]
        return self._settings_layout(qualified, info.name, access_name, kind, how)

    def _settings_without_accessor(self, wanted: str | None) -> SettingsLayout:
        wanted_module, _, wanted_name = (wanted or "").partition(":")
        classes = []
        for info in self.candidates():
            if wanted and info.name != wanted_module:
                continue
            for name in info.classes:
                if wanted_name and name != wanted_name:
                    continue
                if self.settings_root(f"{info.name}.{name}"):
                    classes.append(f"{info.name}.{name}")
        # a class that another settings class derives from is a building block, not the leaf
        bases = {
            info.resolve(base)
            for info in self.candidates()
            for cls in info.classes.values()
            for base in cls.bases
        }
        leaves = [c for c in classes if c not in bases]
        looked = "every module of the project (tests and virtual environments excluded)"
        if wanted:
            looked = f"module {wanted_module}"
        if not leaves:
            raise DiscoveryError(
                f"no pydantic BaseSettings subclass found in {looked}",
                "point bgtasks at it with --settings-module MODULE[:CLASS] "
                "(or [tool.bgtasks] settings-module in pyproject.toml)",
            )
        if len(leaves) > 1:
            raise DiscoveryError(
                f"several Settings classes and none is instantiated: {', '.join(sorted(leaves))}",
                "say which one with --settings-module MODULE:CLASS",
            )
        module, _, name = leaves[0].rpartition(".")
        return self._settings_layout(
            leaves[0], module, name, "class", "the only BaseSettings leaf class"
        )

    def _settings_layout(
        self, qualified: str, access_module: str, access_name: str, kind: str, how: str
    ) -> SettingsLayout:
        located = self.index.locate(qualified)
        assert located is not None  # settings_root() already found it
        info, class_name = located
        fields = tuple(self.all_fields(qualified))
        named = [f for f in fields if f != "model_config" and any(c.isalpha() for c in f)]
        upper = sum(f.isupper() for f in named)
        root = self.settings_root(qualified) or ""
        cls = info.classes[class_name]
        return SettingsLayout(
            module=info.name,
            path=info.path,
            class_name=class_name,
            access_module=access_module,
            access_name=access_name,
            access_kind=kind,
            fields=fields,
            upper_case=bool(named) and upper * 2 >= len(named),
            pydantic_v1=root in SETTINGS_ROOTS_V1,
            found_by=f"{how}: class {class_name} at {info.path.relative_to(self.root)}:{cls.line}",
        )

    # app -------------------------------------------------------------------------------------
    def _fastapi_calls(self, only_module: str | None) -> list[tuple[ModuleInfo, CallSite]]:
        found = []
        for info in self.candidates():
            if only_module and info.name != only_module:
                continue
            for call in info.calls:
                if info.resolve(call.callee) in FASTAPI_CLASSES:
                    found.append((info, call))
        return found

    def _entrypoint(self) -> tuple[str, str | None, str] | None:
        if self.overrides.app_module:
            module, _, attr = self.overrides.app_module.partition(":")
            return module, attr or None, f"the app module override ({self.overrides.app_module})"
        entry = _table(self.pyproject, "tool", "fastapi").get("entrypoint")
        if isinstance(entry, str) and entry:
            module, _, attr = entry.partition(":")
            return module, attr or None, f"[tool.fastapi] entrypoint = {entry!r}"
        return None

    def find_app(self) -> tuple[AppLayout, ModuleInfo]:
        entry = self._entrypoint()
        how = "the only FastAPI(...) call in the project"
        calls = self._fastapi_calls(None)
        if entry is not None:
            module, attr, how = entry
            info = self.index.load_module(module)
            if info is None:
                raise DiscoveryError(
                    f"{how} names module {module}, which is not a file under {self.root}",
                    "fix the module path (dotted, as you would import it)",
                )
            calls = self._fastapi_calls(module)
            if not calls and attr:
                # `app = create_app()` where the factory lives elsewhere: follow it
                for call in info.calls:
                    if call.target == attr and call.function is None:
                        located = self.index.locate(info.resolve(call.callee))
                        if located:
                            calls = self._fastapi_calls(located[0].name)
        if not calls:
            looked = f"module {entry[0]}" if entry else "every module of the project"
            raise DiscoveryError(
                f"no FastAPI(...) app found in {looked}",
                "point bgtasks at it with --app-module MODULE[:APP] "
                "(or [tool.fastapi] entrypoint / [tool.bgtasks] app-module in pyproject.toml)",
            )
        if len(calls) > 1:
            preferred = [
                c for c in calls if c[0].name.rpartition(".")[2] in ("main", "server", "app")
            ]
            if len(preferred) == 1:
                calls, how = preferred, f"the FastAPI(...) call in {preferred[0][0].name}"
            else:
                where = ", ".join(f"{i.path.relative_to(self.root)}:{c.line}" for i, c in calls)
                raise DiscoveryError(
                    f"more than one FastAPI(...) app: {where}",
                    "say which one with --app-module MODULE[:APP] or [tool.fastapi] entrypoint",
                )
        info, call = calls[0]
        if call.target is None:
            raise DiscoveryError(
                f"{info.path.relative_to(self.root)}:{call.line}: the app is returned directly "
                "(`return FastAPI(...)`), so there is no name to include a router on",
                "bind it first (`app = FastAPI(...)`, then `return app`) and run again",
            )
        layout = AppLayout(
            module=info.name,
            path=info.path,
            app_var=call.target,
            factory=call.function,
            uses_on_event=info.uses_on_event,
            has_lifespan="lifespan" in call.keywords,
            found_by=f"{how}: {info.path.relative_to(self.root)}:{call.line}",
        )
        return layout, info

    def routes_module(self, app_info: ModuleInfo, app: AppLayout) -> str | None:
        """The package of the first router the app includes: new routers go beside it."""
        for scope, receiver, first in app_info.router_includes:
            if scope != app.factory or receiver != app.app_var or not first:
                continue
            qualified = app_info.resolve(first)
            head = qualified.rpartition(".")[0] if qualified.endswith(".router") else qualified
            located = self.index.locate(qualified) or (
                (self.index.load_module(head), "") if self.index.find(head) else None
            )
            if located and located[0]:
                return located[0].name.rpartition(".")[0] or None
        return None

    def existing_runners(self) -> list[tuple[str, str]]:
        found = []
        for info in self.candidates():
            rel = info.path.relative_to(self.root)
            for call in info.calls:
                if info.resolve(call.callee) == "celery.Celery":
                    found.append(("celery", f"{rel}:{call.line}"))
            for cls in info.classes.values():
                if cls.name == "WorkerSettings" and any(
                    v.startswith("arq") for v in info.imports.values()
                ):
                    found.append(("arq", f"{rel}:{cls.line}"))
        return found


def discover(root: Path, overrides: Overrides | None = None) -> ProjectLayout:
    """Inspect the project at `root` and return where everything is; raise DiscoveryError."""
    if not root.exists():
        raise BadInput(f"{root} does not exist", "pass the folder of your FastAPI project")
    if not root.is_dir():
        raise BadInput(f"{root} is a file, not a project folder", "pass the folder that holds it")
    root = root.resolve()
    pyproject = _read_pyproject(root)
    state = read_state(root)
    config = _table(pyproject, "tool", "bgtasks")
    overrides = overrides or Overrides()
    overrides = Overrides(
        settings_module=overrides.settings_module or _str(config.get("settings-module")),
        app_module=overrides.app_module or _str(config.get("app-module")),
    )
    found = _Discovery(root, overrides, pyproject)
    app, app_info = found.find_app()
    settings = found.find_settings(app_info)
    package = app.module.split(".")[0]
    source_root = _source_root(app.path, app.module)
    saved = _table(state, "layout")
    tasks_module = (
        _str(saved.get("tasks_module"))
        or _str(config.get("tasks-module"))
        or _free_module(source_root, package)
    )
    routes_module = (
        _str(saved.get("routes_module")) or found.routes_module(app_info, app) or f"{package}.api"
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
        existing_runners=tuple(found.existing_runners()),
    )


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _source_root(path: Path, module: str) -> Path:
    depth = module.count(".") + (1 if path.name != "__init__.py" else 2)
    return path.parents[depth - 1]


def _free_module(source_root: Path, package: str) -> str:
    """`<package>.tasks`, unless the project already has something by that name."""
    base = source_root / package
    for name in ("tasks", "background_tasks", "bgtasks"):
        if not (base / f"{name}.py").exists() and not (base / name).exists():
            return f"{package}.{name}"
    raise DiscoveryError(
        f"{base} already has tasks, background_tasks and bgtasks modules",
        "set [tool.bgtasks] tasks-module in pyproject.toml to a free dotted name",
    )
