"""The generated module of adopted tasks, `<tasks package>/adopted.py`: rendered from the
runner's snippets (templates/_snippets/<runner>/adopted_module.py.jinja for its top,
adopted_task.py.jinja for each task), created by the first `adopt` and grown by later
ones, a task at a time, after the last definition (never rewritten: a task the user
edited stays as it is).

Besides the tasks, the module holds `enqueue` (awaited by `async def` routes) and
`enqueue_blocking` (called by plain `def` ones): the two ways a route queues a task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jinja2

from bgtasks_gen.adopt.task_code import RunnerCall, TaskCode
from bgtasks_gen.errors import ConflictError
from bgtasks_gen.patch.definitions import add_definitions, bound_names, definition_code
from bgtasks_gen.render import snippets_dir
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.template_filters import add_filters

MODULE_FILE = "adopted.py"
MODULE_NAME = "adopted"
# in the first lines of the module's docstring: how a later run knows the file as its own
MARK = "`bgtasks adopt` moved them here"
ASYNC_ENQUEUE = "enqueue"
BLOCKING_ENQUEUE = "enqueue_blocking"


@dataclass(frozen=True)
class Wiring:
    """What adopt needs to know of a runner's generated code.

    `hook`: how the worker comes to import the adopted module: "include" adds it to the
    `include=[...]` of the Celery app (worker_file), "import" imports it from the tasks
    module the worker command names (tasks_file), "functions" spreads the module's
    FUNCTIONS into the `functions` list of arq's WorkerSettings (worker_file)."""

    call: RunnerCall
    hook: str
    # modules of the tasks package the adopted module imports (refused when missing)
    needs: tuple[str, ...]


WIRINGS = {
    "celery": Wiring(RunnerCall(async_wrapper=False), "include", ("fast_publish.py",)),
    "taskiq": Wiring(RunnerCall(async_wrapper=True), "import", ("taskiq_app.py",)),
    # arq's worker takes coroutine functions only: every task is an `async def`
    "arq": Wiring(RunnerCall(async_wrapper=True), "functions", ("pool.py",)),
}


def _template(spec: RunnerSpec, name: str) -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(snippets_dir(spec))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    add_filters(env)
    return env.get_template(name)


def render_header(spec: RunnerSpec, tasks_module: str) -> str:
    """The module's top: docstring, imports, the enqueue functions."""
    return _template(spec, "adopted_module.py.jinja").render(tasks_module=tasks_module)


def render_task(spec: RunnerSpec, task: TaskCode) -> str:
    """One task: the runner's decorator around the body task_code wrote."""
    body = "\n".join(f"    {line}" if line else "" for line in task.body)
    return _template(spec, "adopted_task.py.jinja").render(task=task, body=body)


def refuse_foreign(rel: str, text: str | None) -> None:
    """A module of that name that `adopt` did not write is the project's own."""
    if text is not None and MARK not in text[:2000]:
        raise ConflictError(
            f"{rel} exists and was not written by `bgtasks adopt`",
            "nothing was written; rename that module (adopt writes its tasks there)",
        )


def existing_task(text: str | None, name: str, queue_name: str) -> bool | None:
    """Whether the module defines `name` already: True as that task (its queue name in
    its code), False as something else (the name is taken), None when it does not."""
    if text is None or name not in bound_names(text):
        return None
    code = definition_code(text, [name]) or ""
    return f'"{queue_name}"' in code or f"'{queue_name}'" in code


def with_tasks(text: str, snippets: Iterable[str]) -> str:
    """The module with the new tasks after its last definition."""
    for snippet in snippets:
        text = add_definitions(text, snippet)
    return text
