"""Moving off celery (to taskiq): its bound task, its processes, its settings variables.

- an edited body stays a plain `def` (taskiq runs it in its thread pool, as celery's
  worker ran it); a bound task's `self.request.id` / `self.request.retries` become the
  taskiq task's `control.task_id` / `(control.tries - 1)`. Any other use of `self`
  (`self.retry`, `self.update_state`, ...) has no taskiq equivalent, and a name celery's
  tasks module defined that taskiq's does not (`SoftTimeLimitExceeded`, `celery_app`)
  would fail on the worker: both refused naming the line.
- the router keeps the surface celery's answered: the common one. A project still on
  celery's own routes (scaffolded before the common surface) is refused: taskiq has no
  router answering them.
- the variables a deployment sets for celery's broker and result backend keep working:
  the taskiq fields that mean the same read them too (pydantic's AliasChoices).
- celery's worker, beat and Flower leave the Procfile and compose file, and celery its
  requirement (the extras and pins bgtasks wrote for it).
"""

from __future__ import annotations

import ast
import re
from pathlib import PurePosixPath

from bgtasks_gen.addtask import Project, _project_style
from bgtasks_gen.api_surface import client_changes_line
from bgtasks_gen.deps import canonical, requirement_name
from bgtasks_gen.errors import BadInput
from bgtasks_gen.migrate_from import NEW_SHAPE, BodyContext, Carried, Source, undefined_names
from bgtasks_gen.migrate_from.arq import SAME_ENVIRONMENT_NOTE, _web_environment_for_taskiq
from bgtasks_gen.plan import Action, Plan, patched
from bgtasks_gen.runfiles import COMPOSE_NAMES, without_processes, without_services
from bgtasks_gen.runners.base import RunnerSpec
from bgtasks_gen.scaffold import FIELDS_HEADER
from bgtasks_gen.state import COMMON_API_SHAPE, STATE_FILE

# a bound task's request, as the taskiq task's `control` parameter says it
REQUEST_ATTRIBUTES = {"id": "control.task_id", "retries": "(control.tries - 1)"}

# the processes celery's run files start: `celery -A <app> worker|beat`, `celery flower`
CELERY_PROCESS = re.compile(r"\bcelery\s+(?:-A\s+\S+\s+)?(?:worker|beat|flower)\b")
# the comments celery's Procfile has about its own processes
PROCFILE_COMMENTS = (
    "# beat: a second one stands by (beat lock) instead of sending every schedule twice\n",
    "# flower (monitoring) is a separate package and must sit behind authentication:\n",
)
PROCFILE_FLOWER = re.compile(r"(?m)^# flower: .*\bcelery\b.*\bflower\n")
# the heading celery's compose file has, as the taskiq one says it
COMPOSE_HEADING = (
    ("a Celery worker, beat and Flower (generated", "taskiq's processes (generated"),
    (
        '#   BGTASKS_API_TOKEN="<a-long-random-string>" \\\n'
        '#   FLOWER_BASIC_AUTH="admin:<a-long-random-password>" docker compose up --build\n',
        '#   BGTASKS_API_TOKEN="<a-long-random-string>" docker compose up --build\n',
    ),
    ("# Scale workers (`--scale worker=3`); a second beat only stands by (beat lock).\n", ""),
)

# the celery variables in a service's environment of celery's compose file
CELERY_WEB_VARIABLES = re.compile(r"(?m)^      CELERY_(?:BROKER_URL|RESULT_BACKEND): \S+\n")
# celery's group in .env.example, its variables going with the fields
ENV_GROUP = re.compile(
    r"(?m)^# Celery \(background tasks\)\n(?:CELERY_(?:BROKER_URL|RESULT_BACKEND)=.*\n)+\n?"
)

# taskiq's settings field -> celery's field of the same meaning (the value a deployment
# already sets for it)
SAME_MEANING = {"taskiq_broker_url": "celery_broker_url", "redis_url": "celery_result_backend"}


class CelerySource(Source):
    name = "celery"
    targets = ("taskiq",)

    def __init__(self) -> None:
        # the edited bodies seen, checked against taskiq's module once it is planned
        self._bodies: list[BodyContext] = []

    def translate_body(self, body: BodyContext, problems: list[str]) -> list[str] | None:
        """The edited body's lines with the bound task's request spelled the taskiq way;
        a problem per line that uses `self` in a way taskiq has no equivalent for."""
        function, first, name = body.function, body.first, body.name
        bound = function.args.args[0].arg if function.args.args else "self"
        parents = {
            id(child): node for node in ast.walk(function) for child in ast.iter_child_nodes(node)
        }
        replacements: list[tuple[int, int, int, str]] = []  # line, start, end (bytes), text
        seen: set[int] = set()
        for node in ast.walk(function):
            if not isinstance(node, ast.Name) or node.id != bound or node.lineno <= first:
                continue
            use = _request_use(node, parents)
            if use is None or use.lineno != use.end_lineno or use.end_col_offset is None:
                if node.lineno not in seen:
                    seen.add(node.lineno)
                    problems.append(
                        f"task {name!r}, {body.where(node.lineno)}: uses celery's bound task "
                        f"`{bound}` beyond {bound}.request.id/{bound}.request.retries; taskiq "
                        "has no bound task (raise TransientError to retry with backoff; "
                        "move anything else out of the task first)"
                    )
                continue
            assert isinstance(use, ast.Attribute)
            new = REQUEST_ATTRIBUTES[use.attr]
            replacements.append((use.lineno, use.col_offset, use.end_col_offset, new))
        if isinstance(function, ast.AsyncFunctionDef):
            problems.append(
                f"task {name!r}, {body.where(function.lineno)}: an `async def`, which "
                "celery never ran (make it the plain def it was generated as first)"
            )
            return None
        self._bodies.append(body)
        lines = body.lines[first : function.end_lineno]
        for line, start, end, new in sorted(replacements, reverse=True):
            raw = lines[line - first - 1].encode("utf-8")
            lines[line - first - 1] = (raw[:start] + new.encode() + raw[end:]).decode("utf-8")
        return lines

    def carried_header(
        self, function: ast.AsyncFunctionDef | ast.FunctionDef, text: str
    ) -> tuple[str | None, bool]:
        # the body's own return annotation, and a plain def: taskiq runs it in its
        # thread pool, so blocking calls in it stay harmless
        returns = ast.get_source_segment(text, function.returns) if function.returns else ""
        return returns or "", True

    def kept_shape(self, project: Project, api_shape: str) -> str:
        recorded = str(project.layout.get("api_shape") or "")
        if api_shape == NEW_SHAPE or recorded == COMMON_API_SHAPE:
            return COMMON_API_SHAPE
        raise BadInput(
            "this project's task routes answer celery's own HTTP surface (scaffolded before "
            "the one every queue runner shares), and taskiq has no router answering it",
            "move the routes first with `bgtasks update --api-shape common` (clients change: "
            f"{client_changes_line('celery')}), or move with `--api-shape new`; nothing "
            "was written",
        )

    def run_file(self, path: str, text: str) -> str:
        if PurePosixPath(path).name == "Procfile":
            for comment in PROCFILE_COMMENTS:
                text = text.replace(comment, "", 1)
            text = PROCFILE_FLOWER.sub("", text, count=1)
            return without_processes(text, CELERY_PROCESS)
        for old, new in COMPOSE_HEADING:
            text = text.replace(old, new, 1)
        return without_services(text, CELERY_PROCESS)

    def dropped_requirements(self, target: RunnerSpec, broker: str) -> list[str]:
        # celery itself, spelled as bgtasks writes it (5.7, or 5.6 beside arq); the
        # other packages it added are taskiq's too or the project's settings need them
        from bgtasks_gen.runners import get_runner
        from bgtasks_gen.runners.celery import CELERY_BESIDE_ARQ

        source = get_runner(self.name)
        written = [*source.dependencies_for(broker), CELERY_BESIDE_ARQ]
        return list(dict.fromkeys(r for r in written if canonical(requirement_name(r)) == "celery"))

    def adjust(
        self,
        plan: Plan,
        project: Project,
        moved: Project,
        carried: list[Carried],
        api_shape: str,
        problems: list[str],
    ) -> set[str]:
        self._refuse_undefined_names(plan, moved, problems)
        adopted = project.state.get("adopted")
        problems.extend(
            f"task {name!r} was adopted onto celery (`bgtasks adopt`, {STATE_FILE}): migrate "
            "does not carry adopted tasks yet (their module and the calls that queue them are "
            "celery's); the project stays on celery while it has one"
            for name in sorted(adopted if isinstance(adopted, dict) else {})
        )
        for index, change in enumerate(plan.changes):
            if change.action not in (Action.PATCH, Action.IDENTICAL):
                continue
            new = change.new
            if PurePosixPath(change.path).name in COMPOSE_NAMES:
                new, done = _web_environment_for_taskiq(new)
                if done:
                    plan.notes[:] = [n for n in plan.notes if SAME_ENVIRONMENT_NOTE not in n]
                    # the web service reads taskiq's variables now, given it just above;
                    # taskiq's worker and scheduler took the web's environment when added
                    new = CELERY_WEB_VARIABLES.sub("", new)
            elif PurePosixPath(change.path).name == ".env.example":
                new = ENV_GROUP.sub("", new, count=1)
            elif change.path.endswith(".py") and f"# {FIELDS_HEADER}" in new:
                new = _settings_read_celery_variables(moved, change.path, change.old or "", new)
                if change.path in _owned_files(project):
                    # the settings module celery's init wrote (the project had none): its
                    # celery fields are bgtasks' own, above the header taskiq's went under
                    new = _without_celery_fields(new)
            if new != change.new:
                plan.changes[index] = patched(plan.root, change.path, change.old or "", new)
        return set()

    def _refuse_undefined_names(self, plan: Plan, moved: Project, problems: list[str]) -> None:
        """A body using a name celery's tasks module had and taskiq's has not would fail
        with NameError on the worker."""
        fix = "import it inside the function, or say it the taskiq way"
        problems += undefined_names(plan, moved, self._bodies, fix)

    def notes(self, project: Project, target: RunnerSpec, api_shape: str) -> list[str]:
        return [
            "tasks still queued on celery's broker are not moved: stop queueing and let the "
            "celery worker finish them before the taskiq worker and scheduler replace it "
            "and beat",
            "the scaffold's example data task is taskiq's now (POST /tasks/process-data in "
            "place of celery's /tasks/process-order); send-email, long-running, status, "
            "cancel and the added tasks' routes answer as before",
        ]


def _request_use(node: ast.Name, parents: dict[int, ast.AST]) -> ast.Attribute | None:
    """`self.request.id` (or `.retries`), read, for the `self` of `node`; else None."""
    request = parents.get(id(node))
    if not (isinstance(request, ast.Attribute) and request.attr == "request"):
        return None
    use = parents.get(id(request))
    if not (
        isinstance(use, ast.Attribute)
        and use.value is request
        and use.attr in REQUEST_ATTRIBUTES
        and isinstance(use.ctx, ast.Load)
    ):
        return None
    return use


def _settings_read_celery_variables(moved: Project, rel: str, old: str, text: str) -> str:
    """The settings module with each taskiq field bgtasks adds now that means what a
    celery field meant reading that field's variable too (after its own), so the value
    a deployment sets keeps its effect. Only a field spelled as bgtasks adds it (`NAME:
    str = "..."` on one line) is changed, and only when the celery field is there."""
    names = {name.lower(): name for name in _annotated_names(text)}
    prefix = re.search(r"""env_prefix\s*=\s*["']([^"']*)["']""", text)
    env_prefix = prefix.group(1) if prefix else ""
    changed = text
    for new_key, old_key in SAME_MEANING.items():
        new_name, old_name = names.get(new_key), names.get(old_key)
        if new_name is None or old_name is None or new_name in _annotated_names(old):
            continue
        line = re.search(
            rf'(?m)^(?P<indent>[ \t]+){re.escape(new_name)}: str = (?P<default>"[^"\n]*")\n',
            changed,
        )
        if line is None:
            continue
        indent = line["indent"]
        old_variable = (env_prefix + old_name).upper()
        variables = f'"{(env_prefix + new_name).upper()}", "{old_variable}"'
        field = (
            f"{indent}{new_name}: str = Field(\n"
            f"{indent}    default={line['default']},\n"
            f"{indent}    # or {old_variable}, its variable before the move off celery\n"
            f"{indent}    validation_alias=AliasChoices({variables}),\n"
            f"{indent})\n"
        )
        changed = changed[: line.start()] + field + changed[line.end() :]
    if changed == text:
        return text
    changed = _with_pydantic_names(changed, ("AliasChoices", "Field"))
    return _project_style(moved).apply_to_edit(rel, text, changed)


def _owned_files(project: Project) -> set[str]:
    files = project.state.get("files", {})
    return set(files) if isinstance(files, dict) else set()


def _without_celery_fields(text: str) -> str:
    """The module without celery's fields, where spelled as its template writes them."""
    keys = "|".join(sorted(SAME_MEANING.values()))
    field = re.compile(rf'(?mi)^[ \t]+(?:{keys}): str = "[^"\n]*"\n')
    return field.sub("", text)


def _annotated_names(text: str) -> list[str]:
    return [
        node.target.id
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    ]


def _with_pydantic_names(text: str, wanted: tuple[str, ...]) -> str:
    """The module importing `wanted` from pydantic: added to its one-line `from pydantic
    import ...` (sorted as isort sorts), or as a line of their own after its imports."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    for node in tree.body:
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "pydantic"
            and node.level == 0
            and node.lineno == node.end_lineno
            and all(a.asname is None for a in node.names)
        ):
            have = [a.name for a in node.names]
            names = sorted({*have, *wanted}, key=_isort_key)
            lines[node.lineno - 1] = f"from pydantic import {', '.join(names)}\n"
            return "".join(lines)
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    at = (imports[-1].end_lineno or 0) if imports else 0
    lines.insert(at, f"from pydantic import {', '.join(sorted(wanted, key=_isort_key))}\n")
    return "".join(lines)


def _isort_key(name: str) -> tuple[int, str]:
    # isort's (and ruff's) order within an import: CONSTANTS, Classes, functions
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name
