"""Stage 1 of `init` and `update`: what the project is, before anything is planned.

discover -> plan (scaffold.plan_init) -> resolve (resolve.py) -> write (apply.py) ->
verify (verify.py); init_pipeline.py runs them in that order.

`discover_init` reads the state file, the runners already present, the served app and
the settings class in force (discovery/), decides the optional features, and refuses
what no plan could serve (an existing setup of the same runner, pydantic 1, a Python
too old for the runner's packages, a router that would go on a mounted sub-app whose
lifespan never runs). Nothing here renders, edits or writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bgtasks_gen.discovery import (
    Overrides,
    ProjectLayout,
    discover,
    present_runners,
    project_index,
)
from bgtasks_gen.errors import BadInput, DiscoveryError
from bgtasks_gen.features import DEFAULT_FEATURES, choose_features, feature_fields
from bgtasks_gen.runners import available_runners, get_runner, runner_names
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.state import read_state, scaffolded_spec


@dataclass(frozen=True)
class Discovered:
    """What planning starts from."""

    root: Path  # the project root discovery settled on
    spec: RunnerSpec  # the runner, its settings fields with the features' added
    layout: ProjectLayout  # the served app, the settings class, the packages
    state: Mapping[str, object]  # .bgtasks.toml as read ({} before the first init)
    owned: frozenset[str]  # the files bgtasks generated before
    features: tuple[str, ...]  # the optional features this run plans
    recorded_features: tuple[str, ...]  # those the state file recorded
    notes: list[str] = field(default_factory=list)  # said after the plan's own notes


def listed(value: object) -> list[str]:
    """The strings of a list read from the state file ([] when it is not a list)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def discover_init(
    root: Path,
    runner: str,
    *,
    broker: str,
    overrides: Overrides | None,
    merge: str | None,
    replaces: str,
    with_features: Sequence[str],
    without_features: Sequence[str],
) -> Discovered:
    """The project as `plan_init` needs it, or the one refusal that stops it."""
    spec = get_runner(runner)
    _check_broker(spec, broker)
    # runners already there are the first thing to say: before any settings or app question
    index = project_index(root)
    present, others = present_runners(root, index)
    state = read_state(root.resolve())
    # features carry over to every later run, a migrate's new runner included
    recorded_layout = state.get("layout", {})
    recorded = listed(recorded_layout.get("features")) if isinstance(recorded_layout, dict) else []
    features = choose_features(
        recorded,
        with_features,
        without_features,
        runner=spec.name,
        # the first init of this runner (not update, not a re-run, not migrate's
        # carried set) starts with the defaults
        defaults=DEFAULT_FEATURES
        if merge is None and not replaces and spec.name not in listed(state.get("runners"))
        else (),
    )
    if extra_fields := feature_fields(features):
        # a feature's settings fields are patched in, spelled and reused like the runner's
        spec = replace(spec, settings_fields=(*spec.settings_fields, *extra_fields))
    state_files = state.get("files", {})
    owned = frozenset(state_files) if isinstance(state_files, dict) else frozenset()
    _refuse_existing_runner(spec, present, owned)
    layout = discover(root, overrides, index)
    moved_off = ""
    if spec.lifespan_module and layout.app.mounted_in and not (overrides and overrides.app_module):
        # Starlette never runs a mounted sub-app's lifespan, where this runner's connections
        # live: its router goes on the app that mounts the project's API sub-app
        moved_off = f"{layout.app.module}:{layout.app.app_var}"
        outer = replace(overrides or Overrides(), app_module=layout.app.mounted_in)
        layout = discover(root, outer, index)
    _refuse_unservable(spec, layout)
    spec, router_note = _router_file(spec, layout, state, owned)
    notes = list(layout.notes)
    if router_note:
        notes.append(router_note)
    if moved_off:
        notes.append(
            f"the project's routers are on {moved_off}, a mounted sub-app whose lifespan "
            f"Starlette never runs: the {spec.name} router (its connections live in the "
            f"lifespan) is included on {layout.app.module}:{layout.app.app_var} instead, "
            "without the sub-app's prefix and dependencies; the router's own token check guards it"
        )
    notes += [
        f"{system} is already here ({where}): bgtasks adds {spec.name} beside it, it does not "
        "move your tasks"
        for system, where in others
        if where.partition(":")[0] not in owned  # not bgtasks' own generated code
    ]
    return Discovered(
        root=layout.root,
        spec=spec,
        layout=layout,
        state=state,
        owned=owned,
        features=tuple(features),
        recorded_features=tuple(recorded),
        notes=notes,
    )


def _router_file(
    spec: RunnerSpec, layout: ProjectLayout, state: Mapping[str, object], owned: frozenset[str]
) -> tuple[RunnerSpec, str]:
    """The spec with the router module this project gets, and the note that says why when
    it is not the runner's own name. A runner set up before keeps the name it was given
    (the state file's); otherwise a module of the project's own under the runner's name
    (`tasks.py` beside its other routers) is left alone and the router takes another
    name (_fallback_router_file): that module is never a conflict to force over."""
    if str(state.get("runner")) == spec.name:
        recorded = state.get("layout", {})
        return scaffolded_spec(spec, recorded if isinstance(recorded, dict) else {}), ""
    folder = layout.module_path(layout.routes_module)
    taken = _taken_by(layout, folder, spec.router_file, owned)
    if not taken:
        return spec, ""
    fallback = _fallback_router_file(spec)
    also_taken = _taken_by(layout, folder, fallback, owned)
    if also_taken:
        raise BadInput(
            f"the {spec.name} router has no free name in {layout.routes_module}: {taken}, "
            f"and {also_taken}",
            "set [tool.bgtasks] routes-module in pyproject.toml to another package for the "
            "generated routes, or rename one of them; nothing was written",
        )
    chosen = (folder / f"{fallback}.py").as_posix()
    return replace(spec, router_file=fallback), f"{taken}: the {spec.name} router is {chosen}"


def _taken_by(layout: ProjectLayout, folder: Path, name: str, owned: frozenset[str]) -> str:
    """What has the module name `name` in the routes `folder` already, said as a note
    says it; "" when it is free or the router bgtasks wrote there."""
    dotted = f"{layout.routes_module}.{name}"
    if layout.tasks_module == dotted or layout.tasks_module.startswith(f"{dotted}."):
        return f"{dotted} is the tasks package"  # generated in the same run
    module = (folder / f"{name}.py").as_posix()
    if module in owned:
        return ""
    if (layout.root / module).exists():
        return f"{module} is yours"
    # a package is imported in place of a module of its name beside it
    package = (folder / name).as_posix()
    return f"{package}/ is yours" if (layout.root / package).is_dir() else ""


def _fallback_router_file(spec: RunnerSpec) -> str:
    """The router's name when the runner's own is taken: the runner's name in front
    (celery_tasks), or bgtasks' when the name starts with the runner's already
    (bgtasks_arq_tasks)."""
    prefix = "bgtasks" if spec.router_file.startswith(f"{spec.name}_") else spec.name
    return f"{prefix}_{spec.router_file}"


def _check_broker(spec: RunnerSpec, broker: str) -> None:
    known = list(dict.fromkeys(b for s in available_runners() for b in s.brokers))
    if broker not in known:
        raise BadInput(f"unknown broker {broker!r}", f"choose {' or '.join(known)}")
    if broker not in spec.brokers:
        takers = [s.name for s in available_runners() if broker in s.brokers]
        raise BadInput(f"--broker {broker} only applies to the {' and '.join(takers)} runner")


def _refuse_existing_runner(
    spec: RunnerSpec, runners: list[tuple[str, str]], owned: frozenset[str]
) -> None:
    present = {runner for runner, where in runners if where.partition(":")[0] not in owned}
    for runner, where in runners:
        if runner == spec.name and where.partition(":")[0] not in owned:
            # suggest only a runner this project would accept
            others = [r for r in runner_names() if r not in present | {runner}]
            raise DiscoveryError(
                f"this project already has a {runner} setup at {where}",
                "bgtasks adds a runner only to projects that do not have it yet; keep yours, "
                f"or add another one (--runner {others[0]})",
            )


def _refuse_unservable(spec: RunnerSpec, layout: ProjectLayout) -> None:
    if layout.settings.pydantic_v1:
        # the generated request validation (header checks after decoding encoded words,
        # finite numbers, errors without the input) is written for pydantic 2, every runner
        raise BadInput(
            f"the generated routes need pydantic 2, and this project uses pydantic 1 "
            f"({layout.settings.found_by})",
            "move the project to pydantic 2 and pydantic-settings 2 first "
            "(`from pydantic_settings import BaseSettings`), then run again",
        )
    if spec.min_python and layout.legacy_typing and spec.min_python > (3, 9):
        # legacy_typing: the project's requires-python still allows Python 3.9 or older
        needed = ".".join(map(str, spec.min_python))
        fitting = [s.name for s in available_runners() if s.min_python is None]
        raise BadInput(
            f"the {spec.name} runner's packages need Python {needed}+, and this project's "
            "requires-python still allows an older Python",
            f"raise requires-python to >={needed} first, or use --runner {' or '.join(fitting)}",
        )
    if spec.lifespan_module and layout.app.mounted_in:
        raise DiscoveryError(
            f"the {spec.name} router would go on {layout.app.module}:{layout.app.app_var}, a "
            f"sub-app that {layout.app.mounted_in} mounts, but it needs the app's lifespan "
            f"to run {spec.lifespan_module}.lifespan (the runner's connections) and "
            "Starlette never runs a mounted sub-app's lifespan",
            f"include it on the main app instead: --app-module {layout.app.mounted_in}",
        )
