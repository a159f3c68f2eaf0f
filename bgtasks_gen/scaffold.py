"""Stage 2 of `init` and `update`: the plan, all in memory.

discover (init_discover.py) -> plan (here: plan_init) -> resolve (resolve.py) -> write
(apply.py) -> verify (verify.py); init_pipeline.py runs them in that order. plan_init
reads as its steps: the generated files, the edits of the project's settings and app,
the packages, .env.example, the state file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import libcst as cst

from bgtasks_gen.api_surface import router_prefix
from bgtasks_gen.dependency_truth import DependencyTruth, read_dependency_truth
from bgtasks_gen.deps import (
    TEST_REQUIREMENTS,
    declared_requirements,
    plan_dependencies,
    plan_test_dependencies,
)
from bgtasks_gen.discovery import Overrides, ProjectLayout, SettingsLayout
from bgtasks_gen.errors import BadInput
from bgtasks_gen.feature_files import FOLDERS as FEATURE_FOLDERS
from bgtasks_gen.feature_files import feature_files, owned_feature_files, owned_folder_files
from bgtasks_gen.features import FEATURE_PACKAGES
from bgtasks_gen.init_discover import Discovered, discover_init, listed
from bgtasks_gen.mypy_config import plan_mypy_override
from bgtasks_gen.nextsteps import (
    ENV_EXAMPLE,
    build_steps,
    merge_env_example,
    render_env_example,
    served_prefix,
)
from bgtasks_gen.patch.app_router import include_router
from bgtasks_gen.patch.settings_fields import NewField, add_settings_fields
from bgtasks_gen.plan import (
    MARKERS_NOTE,
    Action,
    FileChange,
    Plan,
    check_python,
    deleted,
    generated,
    patched,
    read_existing,
    user_owned,
)
from bgtasks_gen.render import render_runner
from bgtasks_gen.ruff_style import ProjectStyle
from bgtasks_gen.runfiles import build_value
from bgtasks_gen.runners import call_hook, get_runner, runner_names
from bgtasks_gen.runners.base import RunnerSpec, SettingsField, TemplateInputs
from bgtasks_gen.state import (
    BASE_DIR,
    COMMON_API_SHAPE,
    ROUTER_FILE,
    STATE_FILE,
    digest,
    read_state,
    render_state,
)
from bgtasks_gen.template_filters import require_dotted, require_env_prefix, require_identifier

FIELDS_HEADER = "Background tasks (added by bgtasks)"
BOM = "\ufeff"


@dataclass(frozen=True)
class FieldChoice:
    key: str
    name: str  # attribute name the generated code reads
    added: bool  # False when the class already had it (or an alias of it)
    note: str = ""  # why an existing field of that name was not reused


# annotations an existing field may have for the generated code to read it as the value
SERVING_TYPES = {
    "str": (
        "str",
        "SecretStr",
        "AnyUrl",
        "RedisDsn",
        "AmqpDsn",
        "AnyHttpUrl",
        "HttpUrl",
        "EmailStr",
        "NameEmail",
        "Url",
        "MultiHostUrl",
    ),
    "SecretStr": ("str", "SecretStr"),
    "int": ("int", "PositiveInt", "NonNegativeInt", "conint"),
    "float": ("float", "int", "PositiveFloat", "PositiveInt", "NonNegativeFloat"),
    "bool": ("bool", "StrictBool"),
}


# a field an older scaffold declared with another type, which the generated code still
# reads right (the allow-anonymous switch was a bool before it became a strict "true"/"false")
ALSO_SERVES: dict[str, tuple[str, ...]] = {"bgtasks_allow_anonymous": ("bool",)}


def can_serve(field: SettingsField, existing: tuple[str, str | None] | None) -> str:
    """ "" when an existing field (annotation, default) can stand for `field`; else why not."""
    if existing is None:
        return ""  # declared in a way discovery cannot read (a base outside the project)
    annotation, default = existing
    bare = annotation.replace(" ", "")
    optional = "None" in bare.split("|") or bare.startswith(("Optional[", "typing.Optional["))
    if (optional or default == "None") and not field.optional:
        return f"it is `{annotation}` with default {default}: None is not a usable value"
    types = [t for t in re.split(r"[^\w.]+", bare) if t and t not in ("None", "Optional")]
    accepted = (
        *SERVING_TYPES.get(field.annotation, (field.annotation,)),
        *ALSO_SERVES.get(field.key, ()),
    )
    if not types or not all(t.rpartition(".")[2] in accepted for t in types):
        return f"its type `{annotation}` is not the {field.annotation} the generated code reads"
    return ""


def choose_fields(spec: RunnerSpec, layout: ProjectLayout) -> list[FieldChoice]:
    """Spell each field in the project's style; reuse a field it already has when it can
    serve (type and default), never add one twice."""
    settings = layout.settings
    existing = {name.lower(): name for name in settings.fields}
    choices = []
    for field in spec.settings_fields:
        styled = field.key.upper() if settings.upper_case else field.key
        found = next(
            (existing[c.lower()] for c in (field.key, *field.aliases) if c.lower() in existing),
            None,
        )
        if found is None:
            if field.add:
                choices.append(FieldChoice(field.key, styled, True))
            continue
        why_not = can_serve(field, settings.field_types.get(found))
        if not why_not:
            choices.append(FieldChoice(field.key, found, False))
            continue
        if not field.add:
            continue  # an optional meaning the generated code can do without
        own = field.key if field.key.startswith(f"{spec.name}_") else f"{spec.name}_{field.key}"
        own = own.upper() if settings.upper_case else own
        added_before = _added_beside(field, own, settings)
        if added_before is not None:
            # added by an earlier init beside the unusable field: this runner's (reading
            # it again is the same choice, not a missing field), or another runner's
            # (its value is what the deployment already sets: a migrated project keeps it)
            note = "" if added_before.lower() == own.lower() else f"reused {added_before}"
            choices.append(FieldChoice(field.key, added_before, False, note))
            continue
        choices.append(
            FieldChoice(field.key, own, True, f"{found} not reused ({why_not}): added {own}")
        )
    return choices


def _added_beside(field: SettingsField, own: str, settings: SettingsLayout) -> str | None:
    """The field a runner's init added in place of an existing one it could not reuse
    (`CELERY_SMTP_HOST` beside `SMTP_HOST: str | None`), this runner's first, when it
    can serve; None when there is none."""
    existing = {name.lower(): name for name in settings.fields}
    others = [f"{name}_{field.key}" for name in runner_names() if not own.lower().startswith(name)]
    for candidate in (own, *others):
        found = existing.get(candidate.lower())
        if found is not None and not can_serve(field, settings.field_types.get(found)):
            return found
    return None


def app_target(layout: ProjectLayout) -> str:
    app = layout.app
    target = app.served or (
        f"{app.module}:{app.factory} --factory" if app.factory else f"{app.module}:{app.app_var}"
    )
    if layout.source_root != layout.root:
        target += f" --app-dir {layout.source_root.relative_to(layout.root).as_posix()}"
    return target


def template_context(
    spec: RunnerSpec, layout: ProjectLayout, fields: list[FieldChoice], broker: str
) -> dict[str, object]:
    require_code_names(layout, fields)
    declared = declared_requirements(layout.root, layout.source_root)
    return {
        "runner": spec.name,
        "broker": broker,
        "package": layout.package,
        "tasks_module": layout.tasks_module,
        "routes_module": layout.routes_module,
        # the router's module in routes_module (the generated tests import it)
        "router_module": spec.router_file,
        "settings_import": layout.settings.import_line,
        "settings_expr": layout.settings.expression,
        "app_import": layout.app.import_line,
        "app_expr": layout.app.expression,
        "legacy_typing": layout.legacy_typing,
        "field_names": {choice.key: choice.name for choice in fields},
        "env_names": layout_env_names(layout, fields),
        "app_target": app_target(layout),
        "own_settings": _own_settings(spec, layout, fields, broker),
        "build": build_value(layout.root),
        "router_lifespan": router_lifespans(read_dependency_truth(layout.root, layout.source_root)),
        **runner_context(spec, declared, broker),
        # the project's own auth on its includes, copied onto ours: the hook trusts it
        "project_auth": dict(layout.app.include_keywords).get("dependencies", ""),
        **spec.extra_context,
    }


def require_code_names(layout: ProjectLayout, fields: list[FieldChoice]) -> None:
    """Refuse a project whose names would not read back as themselves in generated code.

    Names (modules, the settings and app objects, settings fields) are written as code,
    so cannot be quoted; the include's keyword values are the project's own expressions,
    copied as they are, so each must stay one expression."""
    settings, app = layout.settings, layout.app
    settings_file = _shown(layout, settings.path)
    app_file = _shown(layout, app.path)
    if layout.package:
        require_dotted(layout.package, "the app's package", app_file)
    for key in ("tasks_module", "routes_module"):
        dotted = getattr(layout, key)
        require_dotted(dotted, f"the {key.replace('_', ' ')}", _layout_source(layout, key))
    require_dotted(settings.access_module, "the settings module", settings_file, relative=True)
    require_identifier(settings.access_name, "the settings object", settings_file)
    require_identifier(settings.class_name, "the settings class", settings_file)
    require_env_prefix(settings.env_prefix, settings_file)
    for choice in fields:
        require_identifier(choice.name, "the settings field", settings_file)
    require_dotted(app.import_module or app.module, "the app module", app_file, relative=True)
    for name in (app.import_name or app.app_var, app.app_var, app.factory):
        if name:
            require_identifier(name, "the app object", app_file)
    served_module, _, served_name = app_target(layout).split()[0].partition(":")
    require_dotted(served_module, "the served app module", app_file)
    require_identifier(served_name.removesuffix("()"), "the served app", app_file)
    for keyword_name, value in app.include_keywords:
        require_identifier(keyword_name, "the include_router keyword", app_file)
        try:
            cst.parse_expression(value)
        except cst.ParserSyntaxError:
            raise BadInput(
                f"the include_router argument {keyword_name}={value!r} in {app_file} is not "
                "one Python expression",
                "report this as a bug, with that include_router(...) call",
            ) from None


def _shown(layout: ProjectLayout, path: Path) -> str:
    """A project file as messages name it: relative to the project when inside it."""
    inside = path.is_relative_to(layout.root)
    return path.relative_to(layout.root).as_posix() if inside else str(path)


def _layout_source(layout: ProjectLayout, key: str) -> str:
    """Where discovery read the tasks or routes module from: the state file, the
    project's [tool.bgtasks] table, or else the app's package."""
    recorded = read_state(layout.root).get("layout")
    if isinstance(recorded, dict) and key in recorded:
        return STATE_FILE
    if key.replace("_", "-") in (read_existing(layout.root, "pyproject.toml") or ""):
        return "pyproject.toml [tool.bgtasks]"
    return _shown(layout, layout.app.path)


def layout_env_names(layout: ProjectLayout, fields: list[FieldChoice]) -> dict[str, str]:
    """field key -> the environment variable the project's settings class reads it from."""
    return {choice.key: layout.settings.env_name(choice.name) for choice in fields}


def _env_example_change(root: Path, text: str, first_time: bool, notes: list[str]) -> FileChange:
    """Created once, then the user's; a project with its own gets the variables it lacks
    appended, on the first init of a runner."""
    old = read_existing(root, ENV_EXAMPLE)
    if old is None or not first_time:
        return user_owned(root, ENV_EXAMPLE, text)
    merged, added = merge_env_example(old, text)
    if added:
        notes.append(f"{ENV_EXAMPLE}: added {', '.join(added)} beside your own")
    return patched(root, ENV_EXAMPLE, old, merged)


def _output_path(layout: ProjectLayout, rendered: str) -> str:
    """Map a rendered path (tasks/..., routes/..., tests/...) into the project."""
    top, _, rest = rendered.partition("/")
    folders = {
        "tasks": layout.module_path(layout.tasks_module),
        "routes": layout.module_path(layout.routes_module),
        "tests": Path(layout.tests_dir),
    }
    if top not in folders or not rest:
        raise BadInput(f"template produced an unexpected file {rendered}", "report this as a bug")
    return (folders[top] / rest).as_posix()


def _package_inits(layout: ProjectLayout, files: Mapping[str, str]) -> dict[str, str]:
    """Empty __init__.py for each new package folder between the source root and a file."""
    inits = {}
    source = layout.source_root.relative_to(layout.root)
    for rel in files:
        if not rel.endswith(".py") or rel.startswith(f"{layout.tests_dir}/"):
            continue
        folder = Path(rel).parent
        while folder != source and folder != Path("."):
            init = (folder / "__init__.py").as_posix()
            if init not in files and not (layout.root / init).exists():
                inits[init] = ""
            folder = folder.parent
    return inits


def _own_settings(
    spec: RunnerSpec, layout: ProjectLayout, fields: list[FieldChoice], broker: str
) -> list[dict[str, str]]:
    """The fields of the settings class bgtasks generates for a project without one."""
    if not layout.settings.generated:
        return []
    by_key = {f.key: f for f in spec.settings_fields}
    return [
        {
            "name": c.name,
            "annotation": by_key[c.key].annotation,
            "default": by_key[c.key].default_for(broker),
        }
        for c in fields
    ]


def plan_init(
    root: Path,
    runner: str,
    *,
    broker: str = "redis",
    overrides: Overrides | None = None,
    force: bool = False,
    with_deps: bool = True,
    merge: str | None = None,
    api_shape: str | None = None,
    own_run_file: Callable[[str, str], str] | None = None,
    with_features: Sequence[str] = (),
    without_features: Sequence[str] = (),
    replaces: str = "",
) -> Plan:
    """Plan `init` (merge None) or `update` (merge "refuse" or "markers": generated files
    are merged three ways with the user's edits instead of compared).

    `api_shape` names another runner whose routes the generated router answers with
    (paths, field names), so a project moved by `migrate` keeps its clients; once
    recorded in the state file, later runs keep it. `own_run_file(path, text)` is how a
    project's own Procfile or compose file reads before the runner's processes are merged
    in (`migrate` takes out those of the runner it replaces). The optional features
    (features.py) are those recorded for this runner, plus `with_features`, minus
    `without_features`. `replaces` names the runner a `migrate` takes out."""
    found = discover_init(
        root,
        runner,
        broker=broker,
        overrides=overrides,
        merge=merge,
        replaces=replaces,
        with_features=with_features,
        without_features=without_features,
    )
    fields = choose_fields(found.spec, found.layout)
    context = _init_context(found, fields, broker, api_shape, replaces)
    plan = Plan(found.root)
    notes = list(found.notes)  # said last, after what each step notes
    # 1. the generated files and the run files (Procfile, compose)
    rendered = _plan_generated(plan, found, context, merge, force, own_run_file, notes)
    # 2. the user's settings class and app, edited in place (possibly the same file)
    _plan_project_edits(plan, found, fields, context, broker, rendered.style, notes)
    # 3. the packages in the file(s) the project installs from
    installs = (
        _plan_dependency_edits(plan, found, broker, rendered.run_files)
        if with_deps
        else _plan_feature_packages(plan, found)
    )
    # 4. .env.example: a run file, with the variables named as the settings class reads them
    env_text = render_env_example(found.spec, layout_env_names(found.layout, fields), broker)
    plan.changes.append(_env_example_change(plan.root, env_text, rendered.first_time, notes))
    # 5. the state file: everything later commands need to know
    api_prefix = _plan_state(
        plan, found, rendered.pristine, broker, context, merge, force, replaces
    )

    check_python(plan.changes)
    if merge is None:
        spec = found.spec
        plan.next_steps = build_steps(
            plan.root,
            spec,
            call_hook(
                spec,
                "next_steps",
                lambda: spec.next_steps({**context, "tests_dir": found.layout.tests_dir}),
            ),
            test_group=installs.test_group,
            test_packages=TEST_REQUIREMENTS,
            dependency_file=installs.dependency_file,
            env_example=True,
            other_steps=installs.steps,
            access={**context, "api_prefix": api_prefix},
        )
    plan.notes.extend(notes)
    plan.notes.append(f"settings: {found.layout.settings.found_by}")
    plan.notes.append(f"app: {found.layout.app.served}, {found.layout.app.found_by}")
    return plan


def _init_context(
    found: Discovered,
    fields: list[FieldChoice],
    broker: str,
    api_shape: str | None,
    replaces: str,
) -> dict[str, object]:
    """The templates' answers: the project's names, the runner's facts, the API shape
    and the features."""
    spec, state = found.spec, found.state
    context = template_context(spec, found.layout, fields, broker)
    if api_shape is None and str(state.get("runner")) == spec.name:
        # the same runner again: the surface it was scaffolded with (none recorded: the
        # runner's own, as before the common one existed), so clients keep working
        recorded = state.get("layout", {})
        api_shape = str(recorded.get("api_shape", "")) if isinstance(recorded, dict) else ""
    elif api_shape is None and spec.name != "builtin":
        api_shape = COMMON_API_SHAPE
    context["api_shape"] = api_shape or ""
    for feature in ("dashboard", "metrics", "otel", "sentry"):
        context[f"with_{feature}"] = feature in found.features
    # beside another queue runner's router on "/tasks", this one takes "/<runner>-tasks"
    set_up = [r for r in listed(state.get("runners")) if r != replaces]
    context["queue_prefix"] = router_prefix(spec.name, api_shape or "", set_up)
    return context


@dataclass(frozen=True)
class _Rendered:
    """What the generated-files step leaves for the later ones."""

    pristine: dict[str, str]  # the files as rendered, before any added task
    run_files: dict[str, str]  # Procfile, compose file, ... as rendered
    style: ProjectStyle
    first_time: bool  # this runner was not set up before


def _plan_generated(
    plan: Plan,
    found: Discovered,
    context: dict[str, object],
    merge: str | None,
    force: bool,
    own_run_file: Callable[[str, str], str] | None,
    notes: list[str],
) -> _Rendered:
    root, spec, layout, state = plan.root, found.spec, found.layout, found.state
    rendered = _router_renamed(spec, render_runner(spec, context))
    run_files = {path[4:]: text for path, text in rendered.items() if path.startswith("run/")}
    files = {
        _output_path(layout, path): text
        for path, text in rendered.items()
        if not path.startswith("run/")
    }
    files.update(_package_inits(layout, files))
    # the project's own ruff style (line length, quotes, import order), when it has one
    style = ProjectStyle(root, layout.first_party)
    files = style.apply_all(files)
    pristine = dict(files)
    if state.get("tasks") and str(state.get("runner")) == spec.name:
        from bgtasks_gen.addtask import load_project, replay_tasks

        files = style.apply_all(replay_tasks(load_project(root), files, as_on_disk=True))
    notes.extend(style.notes)
    if merge is None:
        for rel in sorted(files):
            plan.changes.append(generated(root, rel, files[rel], force=force))
    else:
        plan.changes.extend(_merged(root, state, files, merge == "markers"))
    first_time = spec.name not in listed(state.get("runners"))
    plan.changes.extend(_run_file_changes(root, spec, run_files, first_time, notes, own_run_file))
    for rel in sorted(pristine):
        base = f"{BASE_DIR}/{rel}.base"
        if merge is None:
            plan.changes.append(generated(root, base, pristine[rel], force=force))
        else:
            plan.changes.append(patched(root, base, read_existing(root, base) or "", pristine[rel]))
    return _Rendered(pristine, run_files, style, first_time)


def _runners_own_router(spec: RunnerSpec) -> str:
    """The router's module name as the runner's templates write it."""
    return get_runner(spec.name).router_file


def _router_renamed(spec: RunnerSpec, rendered: Mapping[str, str]) -> dict[str, str]:
    """The rendered files with the router under the name chosen for this project
    (init_discover: another when a module of the project's has the runner's own)."""
    own, chosen = (f"routes/{name}.py" for name in (_runners_own_router(spec), spec.router_file))
    return {chosen if path == own else path: text for path, text in rendered.items()}


def _plan_project_edits(
    plan: Plan,
    found: Discovered,
    fields: list[FieldChoice],
    context: Mapping[str, object],
    broker: str,
    style: ProjectStyle,
    notes: list[str],
) -> None:
    """The settings fields into the project's settings class, the router into its app
    (the way it includes its own), and on a FastAPI without router lifespans the
    runner's lifespan into the app's FastAPI(...) call."""
    root, spec, layout = plan.root, found.spec, found.layout
    edits: dict[str, str] = {}
    originals: dict[str, str] = {}

    def edit(path: Path) -> tuple[str, str]:
        rel = path.relative_to(root).as_posix()
        if rel not in edits:
            existing = read_existing(root, rel)
            assert existing is not None  # discovery just parsed it
            originals[rel] = existing
            # libcst drops a UTF-8 byte order mark: patch without it, put it back below
            edits[rel] = existing.removeprefix(BOM)
        return rel, edits[rel]

    by_key = {f.key: f for f in spec.settings_fields}
    new_fields = [_new_field(by_key[c.key], c.name, broker) for c in fields if c.added]
    plan.notes.extend(c.note for c in fields if c.note)
    if not layout.settings.generated:
        rel, text = edit(layout.settings.path)
        ours = _fields_under_header(text)
        edits[rel] = _add_fields_once_headed(
            text, layout.settings.class_name, new_fields, layout.first_party
        )
        reused = [c for c in fields if not c.added and c.name not in ours]
        if reused:
            names = ", ".join(c.name for c in reused)
            plan.notes.append(f"reused existing settings field(s): {names}")

    router_module = f"{layout.routes_module}.{spec.router_file}"
    rel, text = edit(layout.app.path)
    edits[rel] = include_router(
        text,
        app_var=layout.app.app_var,
        factory=layout.app.factory,
        import_module=_import_from(layout, layout.app.module, router_module),
        alias=f"{spec.router_file}_router",
        first_party=layout.first_party,
        keywords=layout.app.include_keywords,
    )
    if spec.lifespan_module and not context["router_lifespan"]:
        # a FastAPI older than router lifespans: the app's own FastAPI(...) call is edited
        from bgtasks_gen.patch.lifespan import add_lifespan

        evidence = read_dependency_truth(root, layout.source_root).evidence("fastapi")
        notes.append(
            f"the project's FastAPI is pinned below {ROUTER_LIFESPANS} or may resolve "
            f"below it ({evidence}): no router lifespans, so the {spec.lifespan_module} "
            "module's lifespan is added to the app's FastAPI(...) call"
        )
        created = layout.app.created_path or layout.app.path
        rel, text = edit(created)
        edits[rel] = add_lifespan(
            text,
            app_name_hint=layout.app.created_var or layout.app.app_var,
            import_module=_import_from(
                layout,
                layout.app.created_module or layout.app.module,
                f"{layout.tasks_module}.{spec.lifespan_module}",
            ),
        )
    for rel, new in edits.items():
        old = originals[rel]
        new = style.apply_to_edit(rel, old.removeprefix(BOM), new)
        if old.startswith(BOM):
            new = BOM + new
        plan.changes.append(patched(root, rel, old, new))


@dataclass(frozen=True)
class _Installs:
    """Where the packages went, for the next steps."""

    dependency_file: str | None = None
    test_group: str | None = None
    steps: tuple[str, ...] = ()


def _plan_dependency_edits(
    plan: Plan, found: Discovered, broker: str, run_files: Mapping[str, str]
) -> _Installs:
    """The runner's and the features' packages in every file the project installs from,
    the scaffold's test packages in its test/dev group, mypy told of untyped packages."""
    root, spec, layout = plan.root, found.spec, found.layout
    wanted = list(spec.dependencies_for(broker))
    for name in found.features:
        wanted.extend(FEATURE_PACKAGES.get(name, ()))
    if layout.settings.generated and not any("pydantic-settings" in w for w in wanted):
        wanted.append("pydantic-settings>=2.0")
    uses_uvicorn = any("uvicorn " in text for text in run_files.values())
    deps = plan_dependencies(root, wanted, layout.source_root, uses_uvicorn=uses_uvicorn)
    edited = {deps.path: deps.new} if deps.path is not None else {}
    edited.update({rel: new for rel, (_, new) in deps.more.items()})
    tests_deps = plan_test_dependencies(root, edited)
    if tests_deps.path is not None:
        if tests_deps.path not in edited:
            plan.changes.append(patched(root, tests_deps.path, tests_deps.old, tests_deps.new))
        edited[tests_deps.path] = tests_deps.new
    if deps.path is not None:
        plan.changes.append(patched(root, deps.path, deps.old, edited[deps.path]))
    for rel, (old, _) in deps.more.items():  # every further file an install uses
        plan.changes.append(patched(root, rel, old, edited[rel]))
    plan.notes.extend(deps.notes)
    _plan_mypy_override(plan, spec, layout, edited)
    return _Installs(deps.path, tests_deps.group, tuple(deps.next_steps))


def _plan_feature_packages(plan: Plan, found: Discovered) -> _Installs:
    """update (--no-deps): the runner's packages are there already; a feature's new ones
    are added all the same."""
    new_packages = _new_feature_packages(found.recorded_features, found.features)
    if new_packages:
        deps = plan_dependencies(plan.root, new_packages, found.layout.source_root)
        if deps.path is not None:
            plan.changes.append(patched(plan.root, deps.path, deps.old, deps.new))
        for rel, (old, new) in deps.more.items():
            plan.changes.append(patched(plan.root, rel, old, new))
        plan.notes.extend(deps.notes)
        plan.notes.append(f"install the packages added for the features: {' '.join(new_packages)}")
    return _Installs()


def _plan_state(
    plan: Plan,
    found: Discovered,
    pristine: Mapping[str, str],
    broker: str,
    context: Mapping[str, object],
    merge: str | None,
    force: bool,
    replaces: str,
) -> str:
    """The state file (and the features' files, whose text depends on it); returns the
    path prefix the router is served under, for every later command's URLs."""
    root, spec, layout, state = plan.root, found.spec, found.layout, found.state
    runners = [r for r in listed(state.get("runners")) if r != spec.name] + [spec.name]
    all_files = dict(owned_hashes(state))
    all_files.update({rel: digest(text) for rel, text in pristine.items()})
    state_layout: dict[str, object] = {
        "tasks_module": layout.tasks_module,
        "routes_module": layout.routes_module,
        "settings": f"{layout.settings.module}:{layout.settings.class_name}",
        "app": f"{layout.app.module}:{layout.app.factory or layout.app.app_var}",
        "tests_dir": layout.tests_dir,
        "source_root": layout.source_root.relative_to(root).as_posix(),
        "pydantic_v1": layout.settings.pydantic_v1,
        "legacy_typing": layout.legacy_typing,
        "broker": broker,
    }
    if context["api_shape"]:
        state_layout["api_shape"] = context["api_shape"]
    if spec.router_file != _runners_own_router(spec):
        # recorded only then: the state files of projects with the runner's name stay as they are
        state_layout[ROUTER_FILE] = spec.router_file
    if found.features:
        state_layout["features"] = list(found.features)
    api_prefix = served_prefix(layout.app.include_keywords, layout.settings.field_types)
    if api_prefix:
        state_layout["api_prefix"] = api_prefix
    tasks = state.get("tasks")
    tasks = tasks if isinstance(tasks, dict) else None
    # `bgtasks adopt`'s records, for the runner they were adopted onto (a migrate's
    # new runner has none)
    adopted = state.get("adopted") if not replaces else None
    adopted = adopted if isinstance(adopted, dict) else None
    state_text = render_state(runners, state_layout, all_files, tasks, adopted)
    extra = _plan_features(
        root, plan, state_text, found.features, found.recorded_features, state, merge
    )
    if extra:
        all_files.update({rel: digest(text) for rel, text in extra.items()})
        state_text = render_state(runners, state_layout, all_files, tasks, adopted)
    for rel in _dropped_feature_files(state, found.recorded_features, found.features):
        all_files.pop(rel, None)
        state_text = render_state(runners, state_layout, all_files, tasks, adopted)
    old_state = read_existing(root, STATE_FILE)
    if old_state is not None and _same_state(old_state, state_text):
        state_text = old_state
    plan.changes.append(patched(root, STATE_FILE, old_state or "", state_text))
    if old_state is None:
        plan.changes[-1] = generated(root, STATE_FILE, state_text, force=force)
    return api_prefix


def _plan_features(
    root: Path,
    plan: Plan,
    state_text: str,
    features: Sequence[str],
    recorded: Sequence[str],
    state: Mapping[str, object],
    merge: str | None,
) -> dict[str, str]:
    """The optional features' files, as generated files (merged with the user's edits on
    update, like the runner's), and those of a feature taken out removed."""
    files = feature_files(root, plan.changes, state_text, features)
    if merge is None:
        plan.changes.extend(_feature_file_change(root, rel, files[rel]) for rel in sorted(files))
        # a file the new render no longer has (migrate onto a runner without a scheduler)
        for name in features:
            for rel in owned_folder_files(owned_hashes(state), name):
                if rel not in files and _unedited(root, rel):
                    change = deleted(root, rel, "no longer part of this runner's manifests")
                    plan.changes.extend(c for c in (change,) if c is not None)
    else:
        # add-task never edits a feature's files: no task replay over their bases
        plan.changes.extend(_merged(root, state, files, merge == "markers", replay=False))
    for rel in sorted(files):
        base = f"{BASE_DIR}/{rel}.base"
        plan.changes.append(patched(root, base, read_existing(root, base) or "", files[rel]))
    if files and "k8s" in features:
        plan.notes.append(
            f"k8s: a kustomize base in {FEATURE_FOLDERS['k8s']}/ (fill in secret.yaml and "
            "autoscaler-secret.yaml, set the image, then `kubectl apply -k "
            f"{FEATURE_FOLDERS['k8s']}`; workers scale with KEDA on the queue's own keys)"
        )
    if files and "metrics" in features:
        plan.notes.append(
            "metrics: Prometheus scrapes GET <task prefix>/metrics with the API token as a "
            f"bearer token; import {FEATURE_FOLDERS['metrics']}/bgtasks-tasks.json in Grafana"
        )
    if "otel" in features:
        plan.notes.append(
            "otel: traces export once OTEL_TRACES_EXPORTER is set (otlp, console); "
            "OTEL_EXPORTER_OTLP_ENDPOINT says where, OTEL_SERVICE_NAME names the process "
            "(web, worker or scheduler when unset)"
        )
    if "sentry" in features:
        plan.notes.append(
            "sentry: errors are reported once the sentry_dsn setting is a DSN (empty: off); "
            "SENTRY_ENVIRONMENT and SENTRY_RELEASE name the environment and the release"
        )
    for rel in _dropped_feature_files(state, recorded, features):
        for path in (rel, f"{BASE_DIR}/{rel}.base"):
            change = deleted(root, path, "its feature was taken out (--without)")
            if change is not None:
                plan.changes.append(change)
    return files


def _new_feature_packages(recorded: Sequence[str], features: Sequence[str]) -> list[str]:
    """The packages of the features this run adds (none recorded before)."""
    had = set(recorded)
    return [
        package
        for name in features
        if name not in had
        for package in FEATURE_PACKAGES.get(name, ())
    ]


def _unedited(root: Path, rel: str) -> bool:
    on_disk = read_existing(root, rel)
    return on_disk is not None and on_disk == read_existing(root, f"{BASE_DIR}/{rel}.base")


def _feature_file_change(root: Path, rel: str, new: str) -> FileChange:
    """init or migrate: a feature file still as bgtasks wrote it is written again (its
    facts changed with the runner); one the user edited is a conflict, as ever."""
    if _unedited(root, rel):
        return patched(root, rel, read_existing(root, rel) or "", new, "not edited since written")
    return generated(root, rel, new, force=False)


def _dropped_feature_files(
    state: Mapping[str, object], recorded: Sequence[str], features: Sequence[str]
) -> list[str]:
    had = set(recorded)
    owned = owned_hashes(state)
    dropped = [
        rel for name in sorted(had - set(features)) for rel in owned_feature_files(owned, name)
    ]
    # the queue reader the dashboard and the metrics share goes with the last of them
    readers = {"dashboard", "metrics"}
    if had & readers and not set(features) & readers:
        dropped += sorted(rel for rel in owned if rel.endswith("_queues.py") and "/" in rel)
    return dropped


def _plan_mypy_override(
    plan: Plan, spec: RunnerSpec, layout: ProjectLayout, edited: dict[str, str]
) -> None:
    """The project's mypy configuration learns the runner's untyped packages; the file may
    be one the dependency step already edits (pyproject.toml), whose change is updated."""
    tests = [Path(name).stem for name in (spec.test_file, *spec.extra_test_files)]
    tests_package = layout.tests_dir.strip("/").replace("/", ".")
    generated = [
        f"{layout.tasks_module}.*",
        f"{layout.routes_module}.{spec.router_file}",
        # the tests as mypy names them: in a package, or top-level modules of a folder
        *(f"{prefix}{test}" for test in tests for prefix in ("", f"{tests_package}.")),
    ]
    override = plan_mypy_override(plan.root, spec.untyped_packages, edited, generated)
    if override is None:
        return
    plan.notes.append(override.note)
    for position, change in enumerate(plan.changes):
        if change.path == override.path:
            plan.changes[position] = patched(plan.root, change.path, change.old or "", override.new)
            return
    plan.changes.append(patched(plan.root, override.path, override.old, override.new))


def runner_context(spec: RunnerSpec, declared: list[str], broker: str) -> dict[str, object]:
    """The template answers the runner's spec adds for this project (celery: celery_56)."""
    if spec.template_context is None:
        return {}
    hook = spec.template_context
    inputs = TemplateInputs(tuple(declared), broker)
    return dict(call_hook(spec, "template_context", lambda: hook(inputs)))


ROUTER_LIFESPANS = "0.112.2"  # FastAPI merges included routers' lifespans since this


def router_lifespans(truth: DependencyTruth) -> bool:
    """Whether the project's FastAPI runs an included router's lifespan: the version it
    locks, else the oldest its constraints allow, is 0.112.2 or later."""
    return truth.runs_at_least("fastapi", ROUTER_LIFESPANS)


def _run_file_changes(
    root: Path,
    spec: RunnerSpec,
    run_files: Mapping[str, str],
    first_time: bool,
    notes: list[str],
    own_run_file: Callable[[str, str], str] | None = None,
) -> list[FileChange]:
    """Procfile and compose file: created once, then the user's. A project that has its
    own gets the runner's processes and services added to it instead, on the first init
    of that runner; after that, what is there is kept."""
    from bgtasks_gen import runfiles

    changes = []
    for rel, text in sorted(run_files.items()):
        target = rel
        if rel == "compose.yaml":
            target = runfiles.project_compose(root) or rel
        old = read_existing(root, target)
        if old is None or not first_time:
            changes.append(user_owned(root, target, text))
            continue
        theirs = own_run_file(target, old) if own_run_file else old
        if rel == "compose.yaml":
            merged = runfiles.merge_compose(theirs, text, spec.name, path=target)
        else:
            merged = runfiles.merge_procfile(theirs, text, spec.name)
        if merged.added:
            notes.append(f"{target}: added {', '.join(merged.added)} beside your own")
        notes.extend(merged.notes)
        changes.append(patched(root, target, old, merged.text))
    if "compose.yaml" in run_files and runfiles.dockerfile(root) is None:
        notes.append(
            "no Dockerfile in the project: the compose services' `build: .` needs one "
            "(write one, or give them an `image:`)"
        )
    return changes


def _import_from(layout: ProjectLayout, importer: str, target: str) -> str:
    """`target` as `importer` should spell it: relative when the importer's module imports
    its own package relatively and both live in one top-level package."""
    if not layout.relative_imports or importer.split(".")[0] != target.split(".")[0]:
        return target
    package = importer.rpartition(".")[0].split(".")
    parts = target.split(".")
    common = 0
    while common < min(len(package), len(parts) - 1) and package[common] == parts[common]:
        common += 1
    dots = "." * (len(package) - common + 1)
    return dots + ".".join(parts[common:])


def plan_update(
    root: Path,
    *,
    markers: bool = False,
    force: bool = False,
    api_shape: str | None = None,
    with_features: Sequence[str] = (),
    without_features: Sequence[str] = (),
) -> Plan:
    """`update`: render again with the installed templates, merge with the user's files.
    `api_shape` moves the router onto another surface (COMMON_API_SHAPE); features are
    added or taken out as at init."""
    from bgtasks_gen.addtask import load_project

    project = load_project(root)
    if api_shape is not None and project.spec.name == "builtin":
        raise BadInput(
            "--api-shape applies to the queue runners' routers (celery, arq, taskiq)",
            "the builtin runner's routes have one shape already",
        )
    plan = plan_init(
        project.root,
        project.spec.name,
        broker=str(project.layout.get("broker") or "redis"),
        overrides=Overrides(
            settings_module=str(project.layout.get("settings") or "") or None,
            app_module=str(project.layout.get("app") or "") or None,
        ),
        force=force,
        with_deps=False,
        merge="markers" if markers else "refuse",
        api_shape=api_shape,
        with_features=with_features,
        without_features=without_features,
    )
    if api_shape is None:
        from bgtasks_gen.api_surface import move_note

        note = move_note(project)
        if note:
            plan.notes.append(note)
    # the layout comes from the state file, not from an option the user gave
    plan.notes = [
        re.sub(r"the (settings|app) module override \(", f"as recorded in {STATE_FILE} (", note)
        for note in plan.notes
    ]
    return plan


def restore_command(rel: str) -> str:
    return f"bgtasks update --restore {rel}"


def plan_restore(root: Path, paths: list[str]) -> Plan:
    """`update --restore PATH`: write the named generated files again, as the installed
    templates render them now (with the tasks add-task added), and nothing else."""
    full = plan_update(root)
    project_root = full.root
    by_path = {c.path: c for c in full.changes}
    owned = owned_hashes(read_state(project_root))
    plan = Plan(project_root)
    for given in paths:
        rel = _project_relative(project_root, given)
        change = by_path.get(rel)
        if change is None or rel not in owned:
            raise BadInput(
                f"{given} is not a file bgtasks generates in this project",
                "name one of the files listed under [files] in .bgtasks.toml",
            )
        if change.old is not None:
            raise BadInput(
                f"{rel} exists: --restore only brings back a deleted generated file",
                "run `bgtasks update` to merge the new templates into it, or delete it first",
            )
        plan.changes.append(FileChange(rel, Action.CREATE, None, change.new, "restored"))
        base = by_path.get(f"{BASE_DIR}/{rel}.base")
        if base is not None:
            plan.changes.append(base)
    return plan


def _project_relative(root: Path, given: str) -> str:
    """A path as the user typed it (relative to the project, or to the current folder,
    or absolute) as the project-relative POSIX path the plan uses."""
    path = Path(given)
    candidates = [path] if path.is_absolute() else [root / path, Path.cwd() / path]
    for candidate in candidates:
        try:
            return candidate.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return path.as_posix()


def _merged(
    root: Path,
    state: Mapping[str, object],
    files: Mapping[str, str],
    markers: bool,
    replay: bool = True,
) -> list[FileChange]:
    """Three-way merge of each generated file: base = what bgtasks generated last time
    (kept under .bgtasks/base, with the added tasks replayed), ours = the file as it is,
    theirs = the new render."""
    from bgtasks_gen.addtask import load_project, replay_tasks
    from bgtasks_gen.merge import merge3

    bases = {rel: read_existing(root, f"{BASE_DIR}/{rel}.base") for rel in files}
    known = {rel: text for rel, text in bases.items() if text is not None}
    if replay and state.get("tasks"):
        known = {
            rel: text
            for rel, text in replay_tasks(load_project(root), known).items()
            if rel in known
        }
    changes = []
    for rel in sorted(files):
        ours = read_existing(root, rel)
        theirs = files[rel]
        if ours is None:
            if rel in owned_hashes(state):
                # generated once, deleted since: the user's choice stands; the render is
                # kept in the change for `update --restore`
                changes.append(
                    FileChange(
                        rel,
                        Action.IDENTICAL,
                        None,
                        theirs,
                        f"deleted by you; kept so (bring it back: {restore_command(rel)})",
                    )
                )
            else:
                changes.append(FileChange(rel, Action.CREATE, None, theirs))
            continue
        base = known.get(rel)
        if base is None:
            action = Action.IDENTICAL if ours == theirs else Action.CONFLICT
            changes.append(
                FileChange(
                    rel,
                    action,
                    ours,
                    theirs,
                    "" if ours == theirs else "no base copy to merge from",
                )
            )
            continue
        result = merge3(base, ours, theirs, markers=markers)
        if result.clean or markers:
            lines = ", ".join(str(n) for n in result.conflicts)
            note = f"{MARKERS_NOTE} near line(s) {lines}" if result.conflicts else ""
            changes.append(patched(root, rel, ours, result.text, note))
        else:
            lines = ", ".join(str(n) for n in result.conflicts)
            changes.append(
                FileChange(
                    rel,
                    Action.CONFLICT,
                    ours,
                    theirs,
                    f"your edits and the new version overlap near line(s) {lines}",
                )
            )
    return changes


# stands in for the header when the class has it already, and is removed again
_NO_SECOND_HEADER = "bgtasks: header already present"


def _add_fields_once_headed(
    source: str, class_name: str, fields: list[NewField], first_party: frozenset[str]
) -> str:
    """Add the fields; the header comment only the first time (a field re-added by
    `update` goes in without a second `# Background tasks (added by bgtasks)`)."""
    if f"# {FIELDS_HEADER}" not in source:
        return add_settings_fields(source, class_name, fields, FIELDS_HEADER, first_party)
    patched_source = add_settings_fields(source, class_name, fields, _NO_SECOND_HEADER, first_party)
    # the placeholder line, and the blank line the patcher puts above it
    return re.sub(
        rf"(?m)(^[ \t]*\r?\n)?^[ \t]*# {re.escape(_NO_SECOND_HEADER)}\r?\n", "", patched_source
    )


def _fields_under_header(source: str) -> set[str]:
    """Fields an earlier run added (below bgtasks' header comment): not "reused"."""
    _, found, below = source.partition(f"# {FIELDS_HEADER}")
    return set(re.findall(r"^\s+(\w+)\s*:", below, flags=re.MULTILINE)) if found else set()


def _new_field(field: SettingsField, name: str, broker: str) -> NewField:
    return NewField(name=name, annotation=field.annotation, default=field.default_for(broker))


def owned_hashes(state: Mapping[str, object]) -> dict[str, str]:
    files = state.get("files", {})
    return {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else {}


def _same_state(old: str, new: str) -> bool:
    """Equal but for the bgtasks version line: a re-run with a newer bgtasks changes nothing."""

    def strip(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("version = ")]

    return strip(old) == strip(new)
