"""Task runners and task systems the project already has: looked for before anything else.

A project that has its own Celery app must hear so first, not a complaint about its
settings; one that runs dramatiq or rq hears that bgtasks saw it.
"""

from __future__ import annotations

import re

from bgtasks_gen.modules import ModuleIndex

CELERY_CALL = re.compile(r"\bCelery\s*\(")
ARQ_IMPORT = re.compile(r"^\s*(?:from|import)\s+arq\b", re.MULTILINE)
OTHER_SYSTEMS = ("dramatiq", "taskiq", "rq", "faststream", "huey", "procrastinate", "saq")
OTHER_IMPORT = re.compile(
    r"^\s*(?:from|import)\s+(" + "|".join(OTHER_SYSTEMS) + r")\b", re.MULTILINE
)


def existing_runners(index: ModuleIndex) -> list[tuple[str, str]]:
    """(runner, "path:line") of every Celery app and arq WorkerSettings in the project."""
    found = []
    for path in index.grep(CELERY_CALL, "Celery"):
        info = index.load(path)
        rel = path.relative_to(index.root).as_posix()
        for call in info.calls:
            if info.resolve(call.callee) == "celery.Celery":
                found.append(("celery", f"{rel}:{call.line}"))
    for path in index.grep(ARQ_IMPORT, "arq"):
        info = index.load(path)
        rel = path.relative_to(index.root).as_posix()
        for cls in info.classes.values():
            if cls.name == "WorkerSettings":
                found.append(("arq", f"{rel}:{cls.line}"))
    return found


def other_task_systems(index: ModuleIndex) -> list[tuple[str, str]]:
    """(system, first file importing it) for dramatiq, taskiq, rq, faststream, ..."""
    seen: dict[str, str] = {}
    for path in index.grep(OTHER_IMPORT):
        for match in OTHER_IMPORT.finditer(index.text(path)):
            seen.setdefault(match.group(1), path.relative_to(index.root).as_posix())
    return sorted(seen.items())
