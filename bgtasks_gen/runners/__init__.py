"""The runners bgtasks knows. Each spec module is imported only when it is used."""

from __future__ import annotations

import importlib

from bgtasks_gen.errors import BadInput
from bgtasks_gen.runners.base import RunnerSpec

NAMES = ("celery", "arq", "builtin")


def get_runner(name: str) -> RunnerSpec:
    if name not in NAMES:
        raise BadInput(f"unknown runner {name!r}", f"choose one of: {', '.join(NAMES)}")
    try:
        module = importlib.import_module(f"bgtasks_gen.runners.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bgtasks_gen.runners.{name}":
            raise
        raise BadInput(
            f"the {name} runner is not available in this version of bgtasks yet",
            "use --runner builtin for now",
        ) from exc
    spec: RunnerSpec = module.SPEC
    return spec


def available_runners() -> list[RunnerSpec]:
    """The specs of every runner this installation has, in NAMES order."""
    specs = []
    for name in NAMES:
        try:
            specs.append(get_runner(name))
        except BadInput:
            continue
    return specs
