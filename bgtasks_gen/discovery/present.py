"""Task runners and task systems the project already has: looked for before anything else.

A project that has its own Celery app must hear so first, not a complaint about its
settings; one that runs dramatiq or rq hears that bgtasks saw it.
"""

from __future__ import annotations

import re

from bgtasks_gen.modules import ModuleIndex
from bgtasks_gen.runners.base import Detection

OTHER_SYSTEMS = ("dramatiq", "taskiq", "rq", "faststream", "huey", "procrastinate", "saq")
OTHER_IMPORT = re.compile(
    r"^\s*(?:from|import)\s+(" + "|".join(OTHER_SYSTEMS) + r")\b", re.MULTILINE
)


def _found_by(index: ModuleIndex, runner: str, rule: Detection) -> list[tuple[str, str]]:
    """(runner, "path:line") of each setup the runner's detection rule finds."""
    found = []
    if rule.call:
        callee = rule.call.rpartition(".")[2]
        pattern = re.compile(rf"\b{re.escape(callee)}\s*\(")
        for path in index.grep(pattern, callee):
            info = index.load(path)
            rel = path.relative_to(index.root).as_posix()
            for call in info.calls:
                if info.resolve(call.callee) == rule.call:
                    found.append((runner, f"{rel}:{call.line}"))
    if rule.class_name:
        module = re.escape(rule.module)
        pattern = re.compile(rf"^\s*(?:from|import)\s+{module}\b", re.MULTILINE)
        for path in index.grep(pattern, rule.module):
            info = index.load(path)
            rel = path.relative_to(index.root).as_posix()
            for cls in info.classes.values():
                if cls.name == rule.class_name:
                    found.append((runner, f"{rel}:{cls.line}"))
    return found


def existing_runners(index: ModuleIndex) -> list[tuple[str, str]]:
    """(runner, "path:line") of every setup a runner's detection rule finds in the project
    (RunnerSpec.detection: a Celery app, an arq WorkerSettings, ...)."""
    from bgtasks_gen.runners import available_runners

    found = []
    for spec in available_runners():
        if spec.detection is not None:
            found += _found_by(index, spec.name, spec.detection)
    return found


def other_task_systems(index: ModuleIndex) -> list[tuple[str, str]]:
    """(system, first file importing it) for dramatiq, taskiq, rq, faststream, ..."""
    seen: dict[str, str] = {}
    for path in index.grep(OTHER_IMPORT):
        for match in OTHER_IMPORT.finditer(index.text(path)):
            seen.setdefault(match.group(1), path.relative_to(index.root).as_posix())
    return sorted(seen.items())
