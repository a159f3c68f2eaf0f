"""Task runners and task systems the project already has: looked for before anything else.

A project that has its own Celery app must hear so first, not a complaint about its
settings; one that runs dramatiq or rq hears that bgtasks saw it.

Besides each runner's own detection rule (RunnerSpec.detection), the names a setup of
that runner cannot do without count, however the module imports them (an alias, a
package's re-export): a Celery app reached through `shared_task` or `current_app`, an
arq `Worker`/`run_worker`/`create_pool`, any taskiq broker class or a subclass of one.
"""

from __future__ import annotations

import ast
import re

from bgtasks_gen.modules import ModuleIndex, ModuleInfo
from bgtasks_gen.patch.outline import dotted_name
from bgtasks_gen.runners.base import Detection

OTHER_SYSTEMS = (
    "dramatiq",
    "taskiq",
    "rq",
    "faststream",
    "huey",
    "procrastinate",
    "saq",
    "streaq",
)
OTHER_IMPORT = re.compile(
    r"^\s*(?:from|import)\s+(" + "|".join(OTHER_SYSTEMS) + r")\b", re.MULTILINE
)

# runner -> fully qualified names whose use in the project is a setup of that runner
RUNNER_NAMES = {
    "celery": frozenset(
        {
            "celery.Celery",
            "celery.app.Celery",
            "celery.app.base.Celery",
            "celery.shared_task",
            "celery.app.shared_task",
            "celery.current_app",
            "celery.app.current_app",
        }
    ),
    "arq": frozenset(
        {
            "arq.Worker",
            "arq.worker.Worker",
            "arq.run_worker",
            "arq.worker.run_worker",
            "arq.create_pool",
            "arq.connections.create_pool",
        }
    ),
}
# where the runner's names come from: a file that never names the package is not read
RUNNER_IMPORT = {
    "celery": re.compile(r"^\s*(?:from|import)\s+celery\b", re.MULTILINE),
    "arq": re.compile(r"^\s*(?:from|import)\s+arq\b", re.MULTILINE),
    "taskiq": re.compile(r"^\s*(?:from|import)\s+taskiq\w*", re.MULTILINE),
}


def _taskiq_broker(qualified: str) -> bool:
    """A broker class of taskiq or of one of its broker packages (taskiq_redis, ...)."""
    top = qualified.split(".")[0]
    last = qualified.rpartition(".")[2]
    return (top == "taskiq" or top.startswith("taskiq_")) and last.endswith("Broker")


def _uses(index: ModuleIndex, info: ModuleInfo, wanted: frozenset[str] | None) -> int | None:
    """The first line that uses one of `wanted` (for taskiq, None: any broker class, as a
    call or as the base of a class of the project), outside import statements."""
    lines: list[int] = []
    for node in ast.walk(index.tree(info)):
        if isinstance(node, ast.ClassDef):
            names = [dotted_name(base) for base in node.bases]
            line = node.lineno
        elif isinstance(node, ast.Call):
            names = [dotted_name(node.func)]
            line = node.lineno
        elif isinstance(node, ast.Name | ast.Attribute) and wanted is not None:
            names = [dotted_name(node)]
            line = node.lineno
        else:
            continue
        for name in names:
            if not name:
                continue
            qualified = info.resolve(name)
            if qualified.partition(".")[0] == info.name.partition(".")[0]:
                continue  # the project's own name
            if (wanted is None and _taskiq_broker(qualified)) or (
                wanted is not None and qualified in wanted
            ):
                lines.append(line)
    return min(lines) if lines else None


def _by_names(index: ModuleIndex, runner: str) -> list[tuple[str, str]]:
    pattern = RUNNER_IMPORT.get(runner)
    if pattern is None:
        return []
    found = []
    wanted = RUNNER_NAMES.get(runner)
    for path in index.grep(pattern, runner):
        info = index.load(path)
        line = _uses(index, info, wanted)
        if line is None and runner == "taskiq":
            line = _subclassed_broker(index, info)
        if line is not None:
            found.append((runner, f"{path.relative_to(index.root).as_posix()}:{line}"))
    return found


def _subclassed_broker(index: ModuleIndex, info: ModuleInfo) -> int | None:
    """A class of this module deriving, through the project's own classes, from a broker."""
    for cls in info.classes.values():
        seen: set[str] = set()
        queue = [info.resolve(base) for base in cls.bases]
        while queue:
            base = queue.pop()
            if base in seen:
                continue
            seen.add(base)
            if _taskiq_broker(base):
                return cls.line
            located = index.locate(base)
            if located is not None and located[1] in located[0].classes:
                where, name = located
                queue.extend(where.resolve(b) for b in where.classes[name].bases)
    return None


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
    """(runner, "path:line") of every setup found in the project: by the runner's detection
    rule (RunnerSpec.detection: a Celery app, an arq WorkerSettings, ...) and by the names
    a setup of it uses; one entry per file, its first line."""
    from bgtasks_gen.runners import available_runners

    found: list[tuple[str, str]] = []
    for spec in available_runners():
        rules = _found_by(index, spec.name, spec.detection) if spec.detection else []
        named = _by_names(index, spec.name)
        files = {where.partition(":")[0] for _, where in rules}
        found += rules + [item for item in named if item[1].partition(":")[0] not in files]
    return found


def other_task_systems(index: ModuleIndex) -> list[tuple[str, str]]:
    """(system, first file importing it) for dramatiq, taskiq, rq, faststream, ..."""
    seen: dict[str, str] = {}
    for path in index.grep(OTHER_IMPORT, any_of=OTHER_SYSTEMS):
        for match in OTHER_IMPORT.finditer(index.text(path)):
            seen.setdefault(match.group(1), path.relative_to(index.root).as_posix())
    return sorted(seen.items())
