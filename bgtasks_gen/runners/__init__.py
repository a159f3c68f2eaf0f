"""The runners bgtasks knows: every entry point of the `bgtasks.runners` group.

The built-in runners register there too (pyproject.toml), so a plugin is found the same
way as celery: `NAME = "package.module:SPEC"`, SPEC a RunnerSpec. Names are read from the
installed metadata alone, by a scan of the `*.dist-info` folders on sys.path (cheap:
`bgtasks --help` needs them, and importlib.metadata's own imports cost a third of it);
a spec module is imported only when that runner is used.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from bgtasks_gen.errors import BadInput

if TYPE_CHECKING:  # imported when a spec is loaded: `--help` needs the names only
    from importlib import metadata

    from bgtasks_gen.runners.base import RunnerSpec

_T = TypeVar("_T")

GROUP = "bgtasks.runners"
DISTRIBUTION = "bgtasks"
# what this distribution registers (pyproject.toml), in the order they are listed; used
# as they are only when the installed metadata lacks the group (a stale editable install,
# a checkout on PYTHONPATH)
BUILTIN = {
    "celery": "bgtasks_gen.runners.celery:SPEC",
    "arq": "bgtasks_gen.runners.arq:SPEC",
    "builtin": "bgtasks_gen.runners.builtin:SPEC",
    "taskiq": "bgtasks_gen.runners.taskiq:SPEC",
}


@dataclass(frozen=True)
class Registered:
    name: str
    value: str  # "module:attribute"
    distribution: str  # the distribution that registers it ("bgtasks" for the built-ins)

    @property
    def builtin(self) -> bool:
        return self.distribution == DISTRIBUTION


@dataclass(frozen=True)
class Registry:
    runners: dict[str, Registered]
    problems: tuple[str, ...]  # plugins refused, one sentence each


def _distribution(entry: metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    return str(dist.metadata["Name"]) if dist is not None else "an unknown distribution"


@functools.cache
def registry() -> Registry:
    from importlib import metadata

    return _registry(
        [
            Registered(entry.name, entry.value, _distribution(entry))
            for entry in metadata.entry_points(group=GROUP)
        ]
    )


def _registry(entries: list[Registered]) -> Registry:
    builtin = {found.name: found for found in entries if found.builtin}
    if not builtin:
        builtin = {name: Registered(name, value, DISTRIBUTION) for name, value in BUILTIN.items()}
    order = list(BUILTIN)
    builtin = dict(
        sorted(builtin.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99)
    )
    plugins: dict[str, Registered] = {}
    problems: list[str] = []
    for found in entries:
        if found.builtin:
            continue
        if found.name in builtin:
            problems.append(
                f"the runner plugin {found.name!r} of {found.distribution} is ignored: "
                f"{found.name} is a built-in runner (rename the plugin's entry point)"
            )
        elif found.name in plugins:
            first = plugins[found.name]
            problems.append(
                f"the runner plugin {found.name!r} is registered by both "
                f"{first.distribution} and {found.distribution}: using "
                f"{first.distribution}'s (uninstall one of them)"
            )
        else:
            plugins[found.name] = found
    return Registry({**builtin, **plugins}, tuple(problems))


@functools.cache
def runner_names() -> tuple[str, ...]:
    """Every runner name registered, the built-in ones first; nothing is imported."""
    scanned = _scanned_entries()
    if scanned is None:
        return tuple(registry().runners)
    return tuple(_registry(scanned).runners)


def _normalized(name: str) -> str:
    """A distribution's name as importlib.metadata compares them (PEP 503, then `_`)."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _metadata_folders() -> Iterator[tuple[str, str]] | None:
    """(folder, normalized distribution name) of each distribution installed on sys.path,
    the first of each name only, in the order importlib.metadata finds them; None when a
    sys.path entry is an archive (left to importlib.metadata)."""
    folders: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in sys.path:
        root = entry or "."
        if os.path.isfile(root):
            return None
        try:
            children = os.listdir(root)
        except OSError:
            continue
        for child in children:
            stem, extension = os.path.splitext(child)
            if extension not in (".dist-info", ".egg-info"):
                continue
            name = _normalized(stem.partition("-")[0])
            if name not in seen:
                seen.add(name)
                folders.append((os.path.join(root, child), name))
    return iter(folders)


def _scanned_entries() -> list[Registered] | None:
    """The group's entry points read from `entry_points.txt` files; None when a
    distribution is out of this scan's reach (importlib.metadata then reads them)."""
    folders = _metadata_folders()
    if folders is None:
        return None
    found: list[Registered] = []
    for folder, name in folders:
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError):
            return None
        section = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
            elif section == GROUP and "=" in line:
                key, _, value = line.partition("=")
                distribution = DISTRIBUTION if name == DISTRIBUTION else name
                found.append(Registered(key.strip(), value.strip(), distribution))
    return found


def plugin_problems() -> tuple[str, ...]:
    return registry().problems


def get_runner(name: str) -> RunnerSpec:
    found = registry().runners.get(name)
    if found is None:
        names = ", ".join(runner_names())
        raise BadInput(f"unknown runner {name!r}", f"choose one of: {names}")
    return _load(found)


@functools.cache
def _load(found: Registered) -> RunnerSpec:
    from bgtasks_gen.runners.base import RunnerSpec

    module_name, _, attribute = (part.strip() for part in found.value.partition(":"))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if found.builtin and exc.name == module_name:
            raise BadInput(
                f"the {found.name} runner is not available in this version of bgtasks yet",
                "use --runner builtin for now",
            ) from exc
        raise _broken(found, f"importing {module_name} failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 -- any error of a plugin's module is reported
        why = f"importing {module_name} failed: {type(exc).__name__}: {exc}"
        raise _broken(found, why) from exc
    spec: object = module
    for part in (attribute or "SPEC").split("."):
        spec = getattr(spec, part, None)
    if not isinstance(spec, RunnerSpec):
        raise _broken(
            found,
            f"{found.value} is {type(spec).__name__}, not a bgtasks RunnerSpec",
        )
    if spec.name != found.name:
        raise _broken(found, f"its entry point is named {found.name!r} and its spec {spec.name!r}")
    return spec


def _broken(found: Registered, why: str) -> BadInput:
    return BadInput(
        f"the runner plugin {found.name!r} (from {found.distribution}) cannot be loaded: {why}",
        f"fix or uninstall {found.distribution}, or choose another runner",
    )


def available_runners() -> list[RunnerSpec]:
    """The specs of every runner that loads, in runner_names() order."""
    specs = []
    for name in runner_names():
        try:
            specs.append(get_runner(name))
        except BadInput:
            continue
    return specs


def call_hook(spec: RunnerSpec, hook: str, call: Callable[[], _T]) -> _T:
    """A spec's hook called, its failure one message naming the runner, never a
    traceback: a plugin's bug is not the user's, and nothing has been written yet."""
    from bgtasks_gen.errors import BgtasksError

    try:
        return call()
    except BgtasksError:
        raise
    except Exception as exc:  # a plugin's own code: anything can go wrong in it
        raise BgtasksError(
            f"the {spec.name} runner's {hook} hook failed: {type(exc).__name__}: {exc}",
            "a bug in that runner's spec; nothing was written (report it to its authors)",
        ) from exc
