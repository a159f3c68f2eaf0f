"""Moving off arq (to taskiq): its job context, its worker processes, its pins.

arq's `ctx["job_id"]`/`ctx["job_try"]` become the taskiq task's `control.task_id`/
`control.tries`; any other use of `ctx`, or arq's `Retry`, has no taskiq equivalent and
is refused naming the line. The router keeps the surface arq's answered (the common
one, or arq's own for a project scaffolded before it).
"""

from __future__ import annotations

import ast
import re
from pathlib import PurePosixPath

from bgtasks_gen.addtask import Project
from bgtasks_gen.deps import canonical, requirement_name
from bgtasks_gen.migrate_from import NEW_SHAPE, BodyContext, Carried, Source
from bgtasks_gen.plan import Action, Plan, patched
from bgtasks_gen.runfiles import COMPOSE_NAMES, without_processes, without_services
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.state import COMMON_API_SHAPE

# arq's job context, as the taskiq task's `control` parameter says it
CTX_KEYS = {"job_id": "control.task_id", "job_try": "control.tries"}

# the processes arq's run files start: `arq <tasks module>.arq_worker.WorkerSettings`
ARQ_WORKER = re.compile(r"\barq\s+\S*WorkerSettings\b")
TASKIQ_WORKER = re.compile(r"\btaskiq\s+worker\b")
# the note merge_compose leaves when the project's app service is reused as it is
SAME_ENVIRONMENT_NOTE = "give it the same environment as the added services"


class ArqSource(Source):
    name = "arq"
    targets = ("taskiq",)

    def translate_body(self, body: BodyContext, problems: list[str]) -> list[str] | None:
        """The edited body's lines with arq's job context spelled the taskiq way; a
        problem per line that uses arq in a way taskiq has no equivalent for."""
        function, first, name = body.function, body.first, body.name
        context = function.args.args[0].arg if function.args.args else "ctx"
        replacements: list[tuple[int, int, int, str]] = []  # line, start, end (bytes), text
        seen: set[int] = set()
        parents = {
            id(child): node for node in ast.walk(function) for child in ast.iter_child_nodes(node)
        }
        for node in ast.walk(function):
            if not isinstance(node, ast.Name) or node.lineno <= first:
                continue
            where = body.where(node.lineno)
            if node.id == context:
                parent = parents.get(id(node))
                key = _ctx_key(parent, node)
                if key is None:
                    if node.lineno not in seen:
                        problems.append(
                            f"task {name!r}, {where}: uses arq's `{context}` beyond "
                            f"{', '.join(repr(k) for k in CTX_KEYS)}; taskiq has no job context "
                            "(use the project's own clients, or the `control` parameter)"
                        )
                        seen.add(node.lineno)
                    continue
                assert isinstance(parent, ast.Subscript)
                if parent.end_lineno != parent.lineno or parent.end_col_offset is None:
                    problems.append(f"task {name!r}, {where}: `{context}[...]` spans lines")
                    continue
                replacements.append(
                    (parent.lineno, parent.col_offset, parent.end_col_offset, CTX_KEYS[key])
                )
            elif node.id == "Retry":
                problems.append(
                    f"task {name!r}, {where}: raises arq's Retry; raise TransientError instead "
                    "(taskiq retries it with backoff)"
                )
        lines = body.lines[first : function.end_lineno]
        for line, start, end, new in sorted(replacements, reverse=True):
            raw = lines[line - first - 1].encode("utf-8")
            lines[line - first - 1] = (raw[:start] + new.encode() + raw[end:]).decode("utf-8")
        return lines

    def kept_shape(self, project: Project, api_shape: str) -> str:
        """The common surface, or arq's own for a project scaffolded before it (unless
        `--api-shape new` asks for the common one)."""
        if api_shape == NEW_SHAPE:
            return COMMON_API_SHAPE
        return str(project.layout.get("api_shape") or "") or project.spec.name

    def run_file(self, path: str, text: str) -> str:
        if PurePosixPath(path).name == "Procfile":
            return without_processes(text, ARQ_WORKER)
        # the heading comment of a compose file arq's init wrote names its worker
        text = text.replace("and an arq worker (generated", "and taskiq's processes (generated", 1)
        return without_services(text, ARQ_WORKER)

    def dropped_requirements(self, target: RunnerSpec, broker: str) -> list[str]:
        # arq, and the redis<6 pin it forced (taskiq-redis brings the redis it needs)
        from bgtasks_gen.runners import get_runner

        source = get_runner(self.name)
        wanted = {canonical(requirement_name(r)) for r in target.dependencies_for(broker)}
        return [r for r in source.dependencies if canonical(requirement_name(r)) not in wanted]

    def adjust(
        self,
        plan: Plan,
        project: Project,
        moved: Project,
        carried: list[Carried],
        api_shape: str,
        problems: list[str],
    ) -> set[str]:
        for index, change in enumerate(plan.changes):
            if PurePosixPath(change.path).name not in COMPOSE_NAMES:
                continue
            if change.action not in (Action.PATCH, Action.IDENTICAL):
                continue
            new, done = _web_environment_for_taskiq(change.new)
            if done:
                plan.notes[:] = [n for n in plan.notes if SAME_ENVIRONMENT_NOTE not in n]
                plan.changes[index] = patched(plan.root, change.path, change.old or "", new)
        return set()

    def notes(self, project: Project, target: RunnerSpec, api_shape: str) -> list[str]:
        return [
            "jobs still queued in arq's Redis are not moved: stop queueing and let the arq "
            "worker finish them before the taskiq worker replaces it"
        ]


def _ctx_key(parent: ast.AST | None, node: ast.Name) -> str | None:
    """'job_id' for `ctx["job_id"]` (read, not written), None for any other use."""
    if not (isinstance(parent, ast.Subscript) and parent.value is node):
        return None
    if not isinstance(parent.ctx, ast.Load):
        return None
    key = parent.slice
    if isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value in CTX_KEYS:
        return key.value
    return None


def _web_environment_for_taskiq(text: str) -> tuple[str, bool]:
    """The compose file with arq's generated web service given what the added taskiq
    worker's environment has and its own lacks (taskiq's broker URL: the app queues
    there now). Only in the block arq's template writes (`environment: &environment`,
    a `NAME: value` a line), and only if the file then reads as meant; otherwise the
    text as it is and the note merge_compose left. Returns (text, whether changed)."""
    import yaml

    services = (yaml.safe_load(text) or {}).get("services") or {}
    web = services.get("web")
    worker = next(
        (
            service
            for service in services.values()
            if isinstance(service, dict) and TASKIQ_WORKER.search(str(service.get("command")))
        ),
        None,
    )
    if not isinstance(web, dict) or not isinstance(worker, dict):
        return text, False
    have, want = web.get("environment"), worker.get("environment")
    if not isinstance(have, dict) or not isinstance(want, dict):
        return text, False
    missing = {name: value for name, value in want.items() if name not in have}
    block = re.search(r"(?m)^ +environment: &environment\r?\n(?P<inner> +)\S", text)
    if not missing or block is None:
        return text, False
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = "".join(
        # a pass-through (no value) is written as one, never as the text None
        f"{block['inner']}{name}:{'' if value is None else f' {value}'}{newline}"
        for name, value in missing.items()
    )
    new = text[: block.start("inner")] + lines + text[block.start("inner") :]
    after = (yaml.safe_load(new) or {}).get("services", {}).get("web", {}).get("environment")
    if not isinstance(after, dict) or any(after.get(k) != v for k, v in missing.items()):
        return text, False
    return new, True
