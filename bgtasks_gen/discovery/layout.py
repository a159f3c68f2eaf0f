"""What discovery found, frozen: where the settings and the app are, and how each was found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    # field -> (annotation source, default source or None): to judge whether one can be reused
    field_types: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    env_prefix: str = ""
    case_sensitive: bool = False
    # True when the project has no settings class and bgtasks generates one of its own
    generated: bool = False

    @property
    def import_line(self) -> str:
        return f"from {self.access_module} import {self.access_name}"

    @property
    def expression(self) -> str:
        return self.access_name if self.access_kind == "instance" else f"{self.access_name}()"

    def env_name(self, attribute: str) -> str:
        """The environment variable pydantic-settings reads for a field of this class."""
        name = f"{self.env_prefix}{attribute}"
        return name if self.case_sensitive else name.upper()


@dataclass(frozen=True)
class AppLayout:
    module: str  # where the router is included (the app's creation or a module-level binding)
    path: Path
    app_var: str  # the name the app has there
    factory: str | None  # the function the include goes into, None at module level
    uses_on_event: bool
    has_lifespan: bool
    found_by: str
    # what serves the app, for run files: "pkg.main:app" or "pkg.main:create_app --factory"
    served: str = ""
    import_module: str = ""  # `from import_module import import_name` gives the app object
    import_name: str = ""
    import_is_factory: bool = False
    created_module: str = ""  # where FastAPI(...) is called (the lifespan edit goes there)
    created_path: Path | None = None
    created_var: str = ""
    created_factory: str | None = None
    # keyword arguments the project's own includes share (prefix=, dependencies=)
    include_keywords: tuple[tuple[str, str], ...] = ()
    include_note: str = ""
    # the served app, when the router goes on a sub-app it mounts ("" otherwise)
    mounted_in: str = ""

    @property
    def import_line(self) -> str:
        return f"from {self.import_module or self.module} import {self.import_name or self.app_var}"

    @property
    def expression(self) -> str:
        name = self.import_name or self.factory or self.app_var
        return f"{name}()" if self.import_is_factory else name


@dataclass(frozen=True)
class ProjectLayout:
    root: Path
    source_root: Path
    package: str  # the app's top-level package ("" for a single-module app)
    settings: SettingsLayout
    app: AppLayout
    tasks_module: str
    routes_module: str
    tests_dir: str  # relative to root
    legacy_typing: bool
    existing_runners: tuple[tuple[str, str], ...]  # (runner, "path:line") found in the code
    notes: tuple[str, ...] = ()  # what discovery decided and why, for --dry-run and --json
    relative_imports: bool = False  # the app module imports its own package relatively

    @property
    def first_party(self) -> frozenset[str]:
        return first_party_names(self.tasks_module, self.routes_module, self.package)

    def module_path(self, dotted: str) -> Path:
        """Relative path of the package folder for a dotted name under the source root."""
        return (self.source_root / Path(*dotted.split("."))).relative_to(self.root)


def first_party_names(*modules: str | None) -> frozenset[str]:
    """The top-level packages of these dotted module names (None and "" left out)."""
    return frozenset(module.split(".")[0] for module in modules if module)


@dataclass(frozen=True)
class Overrides:
    settings_module: str | None = None
    app_module: str | None = None
