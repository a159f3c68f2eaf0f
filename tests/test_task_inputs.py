"""Inputs add-task, remove-task and list used to accept and then break a working app:
names that shadow what the generated modules use, argument names that collide with the
generated code, schedules that never fire, edited parts removed without a word, and a
traceback for a module with a syntax error. Each is refused with one message and a hint,
and leaves the tree byte-identical.

The cron check is proved against the real libraries: celery's crontab and arq's
next_cron, each run in its runner's own environment, must fire exactly the schedules
bgtasks accepts, at the same minute.
"""

from __future__ import annotations

import ast
import inspect
import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from bgtasks_gen.addtask import load_project, render_snippets
from bgtasks_gen.cron_check import (
    UnreadableField,
    celery_fields,
    next_fire,
    refuse_never_firing,
    schedule_fields,
)
from bgtasks_gen.errors import BadInput
from bgtasks_gen.patch.definitions import bound_names, definition_code
from bgtasks_gen.reserved_args import (
    BASE_MODEL_ATTRIBUTES,
    LIBRARY_SPREAD_TARGETS,
    PROBE,
    PROTECTED_PREFIX,
    reserved_argument_names,
    spreads,
)
from bgtasks_gen.schedules import arq_cron_kwargs, celery_crontab_kwargs
from bgtasks_gen.task_request import TaskArg, TaskRequest, build_request
from tests.conftest import EXAMPLES, invoke, tree_hashes
from tests.e2e.harness import runner_python

RUNNERS = ("celery", "arq", "builtin")


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One `init` per runner; tests work on copies."""
    roots = {}
    for runner in RUNNERS:
        root = tmp_path_factory.mktemp(runner) / "layered"
        shutil.copytree(EXAMPLES / "layered", root)
        code, output = invoke("init", str(root), "--runner", runner)
        assert code == 0, output
        roots[runner] = root
    return roots


@pytest.fixture
def project(scaffolded: dict[str, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    def copy(runner: str) -> Path:
        dest = tmp_path / runner
        shutil.copytree(scaffolded[runner], dest)
        return dest

    return copy


def flat(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


def assert_refused(root: Path, args: list[str], code: int, *expected: str) -> str:
    """Run bgtasks; it must exit with `code`, print one error and a hint containing each
    of `expected`, and leave every file as it was."""
    before = tree_hashes(root)
    exit_code, output = invoke(*args)
    text = flat(output)
    assert exit_code == code, output
    assert text.count("error:") == 1 and "hint:" in text and "Traceback" not in text, output
    for part in expected:
        assert part in text, output
    assert tree_hashes(root) == before
    return text


def module_files(root: Path) -> dict[str, str]:
    project = load_project(root)
    return {"tasks": project.tasks_file, "routes": project.router_file, "tests": project.test_file}


# -- 1. task names bound in the modules the task goes into -------------------------------


@pytest.mark.parametrize(
    ("runner", "name", "module"),
    [
        ("celery", "time", "tasks"),
        ("celery", "logger", "tasks"),
        ("celery", "registry", "tasks"),
        ("celery", "mailer", "tasks"),
        ("celery", "celery_app", "tasks"),
        ("arq", "random", "tasks"),
        ("arq", "logger", "tasks"),
        ("builtin", "logger", "tasks"),
    ],
)
def test_names_the_scaffold_binds_are_refused(project, runner: str, name: str, module: str) -> None:  # type: ignore[no-untyped-def]
    root: Path = project(runner)
    rel = module_files(root)[module]
    text = assert_refused(root, ["add-task", name, "-p", str(root)], 2, repr(name), rel)
    assert "already defined" in text


@pytest.mark.parametrize("module", ["tasks", "routes", "tests"])
@pytest.mark.parametrize("runner", RUNNERS)
def test_a_name_the_user_bound_in_a_target_module_is_refused(
    project, runner: str, module: str
) -> None:  # type: ignore[no-untyped-def]
    """Read from the project's own files: an import the user added counts."""
    root: Path = project(runner)
    rel = module_files(root)[module]
    path = root / rel
    path.write_text(path.read_text() + "\nimport string as user_alias  # noqa: E402\n")
    line = path.read_text().count("\n")
    assert_refused(
        root,
        ["add-task", "user_alias", "-p", str(root)],
        2,
        f"'user_alias' is already defined in {rel} (line {line})",
    )


def test_a_name_a_part_defines_must_be_free_too(project) -> None:  # type: ignore[no-untyped-def]
    """celery's route for `ping` is `queue_ping`: an import by that name in the router is
    kept, and the task refused."""
    root: Path = project("celery")
    rel = module_files(root)["routes"]
    path = root / rel
    path.write_text(path.read_text() + "\nfrom os import sep as queue_ping  # noqa: E402\n")
    assert_refused(root, ["add-task", "ping", "-p", str(root)], 2, "'queue_ping'", rel)


def test_with_no_route_the_router_is_not_a_target(project) -> None:  # type: ignore[no-untyped-def]
    root: Path = project("celery")
    path = root / module_files(root)["routes"]
    path.write_text(path.read_text() + "\nimport string as user_alias  # noqa: E402\n")
    code, output = invoke("add-task", "user_alias", "--no-route", "-p", str(root))
    assert code == 0, output


BINDINGS = """
import json
import os.path
import numbers as user_numbers
from string import capwords, Template as user_template
from typing import TYPE_CHECKING
user_value = 1
user_annotated: int = 2
first, *rest_of_them = [1, 2]
def user_helper(x=(walrus_default := 3)) -> None:
    global user_global
    user_global = x
class user_class:
    inside_the_class = 1
async def user_async() -> None:
    only_local = 1
for user_index in range(2):
    pass
with open(__file__) as user_file:
    pass
try:
    import tomllib as user_toml
except ImportError as user_error:
    pass
if TYPE_CHECKING:
    from collections import OrderedDict as user_typing
squares = [only_in_comprehension for only_in_comprehension in range(3)]
total = sum((user_walrus := n) for n in range(3))
match user_value:
    case {"k": user_key, **user_rest}:
        pass
    case [user_head, *user_tail]:
        pass
    case user_capture:
        pass
user_lambda = lambda lambda_param=1: lambda_param
del user_value
"""
BOUND = {
    "json",
    "os",
    "user_numbers",
    "capwords",
    "user_template",
    "TYPE_CHECKING",
    "user_value",
    "user_annotated",
    "first",
    "rest_of_them",
    "user_helper",
    "walrus_default",
    "user_global",
    "user_class",
    "user_async",
    "user_index",
    "user_file",
    "user_toml",
    "user_error",
    "user_typing",
    "squares",
    "total",
    "user_walrus",
    "user_key",
    "user_rest",
    "user_head",
    "user_tail",
    "user_capture",
    "user_lambda",
}


def test_every_form_of_module_level_binding_is_found() -> None:
    found = bound_names(BINDINGS)
    assert set(found) == BOUND
    assert found["user_template"] == 5 and found["user_global"] == 11


def test_bindings_in_a_module_newer_than_the_interpreter() -> None:
    """`except A, B:` (Python 3.14) is read by libcst instead of ast: same names."""
    newer = BINDINGS + "try:\n    pass\nexcept ValueError, TypeError:\n    pass\n"
    with pytest.raises(SyntaxError):
        ast.parse(newer)
    found = bound_names(newer)
    assert set(found) == BOUND
    assert found["capwords"] == 5


# -- 2. argument names that collide with the generated code ------------------------------


@pytest.mark.parametrize(
    ("runner", "arg", "reason"),
    [
        ("celery", "self:int", "a parameter of the task function"),
        ("arq", "ctx:int", "a parameter of the task function"),
        ("celery", "logger:str", "a name the task function"),
        ("arq", "logger:str", "a name the task function"),
        ("builtin", "logger:str", "a name the task function"),
        ("arq", "function:str", "a parameter of _enqueue()"),
        ("arq", "request:str", "a parameter of the route"),
        ("celery", "request:int", "a parameter of the route"),
        ("builtin", "background_tasks:int", "a parameter of the route"),
        ("builtin", "func:int", "a parameter of background_tasks.add_task()"),
        ("builtin", "self:int", "a parameter of background_tasks.add_task()"),
        ("celery", "payload:int", "a variable of the test"),
        ("arq", "json:str", "an attribute of pydantic's BaseModel"),
        ("builtin", "copy:str", "an attribute of pydantic's BaseModel"),
        ("celery", "model_name:str", "protected `model_` namespace"),
        ("celery", "match:int", "is a Python keyword"),
        ("arq", "case:str", "is a Python keyword"),
        ("arq", "class:str", "is a Python keyword"),
        ("builtin", "list:int", "shadows a Python builtin"),
    ],
)
def test_argument_names_the_generated_code_takes_are_refused(
    project, runner: str, arg: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    root: Path = project(runner)
    name = arg.partition(":")[0]
    assert_refused(
        root, ["add-task", "resize", "--arg", arg, "-p", str(root)], 2, repr(name), reason
    )


def test_a_repeated_argument_name_is_refused(project) -> None:  # type: ignore[no-untyped-def]
    root: Path = project("arq")
    args = ["add-task", "resize", "--arg", "size:int", "--arg", "size:str", "-p", str(root)]
    assert_refused(root, args, 2, "'size'", "repeat")


def _probe_parts(root: Path, route: bool = True) -> dict[str, str]:
    request = TaskRequest(name="resize", args=(TaskArg(PROBE, "int"),), route=route)
    return render_snippets(load_project(root), request)


@pytest.mark.parametrize(("runner", "own"), [("celery", "self"), ("arq", "ctx")])
def test_without_the_check_a_bound_parameter_is_a_duplicate(
    scaffolded: dict[str, Path], runner: str, own: str
) -> None:
    """The hole is real: the task snippet with an argument named like the function's own
    parameter does not compile."""
    request = TaskRequest(name="resize", args=(TaskArg(own, "int"),))
    task = render_snippets(load_project(scaffolded[runner]), request)["task"]
    with pytest.raises(SyntaxError, match="duplicate argument"):
        compile(task, "task.py", "exec")


def test_reserved_names_follow_the_snippet() -> None:
    """Nothing is a fixed list: a snippet with other parameters and variables reserves
    those, and not `self` or `ctx`."""
    parts = {
        "task": (
            f"def resize(worker_state, {PROBE}: int) -> None:\n"
            "    scratch = prepare()\n"
            "    return finish(scratch)\n"
        )
    }
    reserved = reserved_argument_names(parts, lambda name: None)
    assert set(reserved.names) == {"worker_state", "scratch", "prepare", "finish"}
    assert reserved.why("self") is None and reserved.why("model_thing") is None


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_spread_of_the_body_is_resolved(scaffolded: dict[str, Path], runner: str) -> None:
    """Where a route passes the body on as keyword arguments, the callee's parameters are
    known (from the project's router, or the library list): a snippet that spreads the
    body into something new fails here instead of reopening the hole."""
    root = scaffolded[runner]
    route = _probe_parts(root)["route"]
    tree = ast.parse(route)
    models = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    router = (root / load_project(root).router_file).read_text()
    found = list(spreads(tree, models, lambda name: definition_code(router, [name])))
    for spread in found:
        assert spread.parameters is not None, spread.callee
    reserved = reserved_argument_names(
        _probe_parts(root), lambda name: definition_code(router, [name])
    )
    for spread in found:
        for parameter in spread.parameters or ():
            assert reserved.why(parameter), parameter
    # the runners that spread: arq into the router's _enqueue, builtin into add_task
    assert {s.callee for s in found} == {
        "celery": set(),
        "arq": {"_enqueue"},
        "builtin": {"background_tasks.add_task"},
    }[runner]


def test_the_library_lists_match_the_libraries() -> None:
    import pydantic
    import pydantic.v1
    from starlette.background import BackgroundTask, BackgroundTasks

    for function in (BackgroundTasks.add_task, BackgroundTask.__init__):
        named = {
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        assert named <= set(LIBRARY_SPREAD_TARGETS["add_task"])
    for model in (pydantic.BaseModel, pydantic.v1.BaseModel):
        public = {n for n in dir(model) if not n.startswith("_") and n == n.lower()}
        assert {n for n in public if not n.startswith(PROTECTED_PREFIX)} <= BASE_MODEL_ATTRIBUTES


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_free_argument_name_still_works(project, runner: str) -> None:  # type: ignore[no-untyped-def]
    root: Path = project(runner)
    code, output = invoke("add-task", "resize", "--arg", "image_id:int", "-p", str(root))
    assert code == 0, output


# -- 3. schedules that never fire ---------------------------------------------------------

NEVER = [
    ("0 9 31 2 *", "day 31 never occurs in February"),
    ("0 9 30 2 *", "day 30 never occurs in February"),
    ("0 9 30,31 2 *", "days 30 and 31 never occur in February"),
    ("0 9 31 4,6,9,11 *", "day 31 never occurs in April, June, September or November"),
    ("0 9 31 2 1", "day 31 never occurs in February"),
]


@pytest.mark.parametrize(("expression", "reason"), NEVER)
@pytest.mark.parametrize("runner", ["celery", "arq"])
def test_a_schedule_that_never_fires_is_refused(
    project, runner: str, expression: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    root: Path = project(runner)
    text = assert_refused(
        root,
        ["add-task", "nightly", "--cron", expression, "-p", str(root)],
        2,
        f"--cron '{expression}' never fires: {reason}",
    )
    if expression.endswith(" 1"):
        assert "both (not either" in text


@pytest.mark.parametrize("runner", ["celery", "arq"])
def test_29_february_and_friday_13th_are_accepted(project, runner: str) -> None:  # type: ignore[no-untyped-def]
    root: Path = project(runner)
    code, output = invoke("add-task", "leap", "--cron", "0 9 29 2 *", "-p", str(root))
    assert code == 0, output
    code, output = invoke("add-task", "unlucky", "--cron", "0 9 13 * 5", "-p", str(root))
    assert code == 0, output
    assert "matching either" in flat(output)  # the note: both day fields must match


CROSS_CHECK = [
    "* * * * *",
    "0 9 * * *",
    "*/15 * * * *",
    "5/15 * * * *",
    "0 9-17/4 * * 1-5",
    "0 9 29 2 *",
    "0 0 29 2 1",
    "0 9 13 * 5",
    "30 6 31 * *",
    "0 9 31 1-3 *",
    "0 9 30 1,2 *",
    "0 12 1-7 * 1",
    "59 23 31 12 *",
    "0 */6 * * 0,6",
    "15 10 31 3,4 2",
    "0 0 1 */3 *",
    "0 0 31 */2 *",
    "0 9 31 2 *",
    "0 9 30 2 *",
    "0 9 30-31 2 3",
    "0 9 31 2 1",
    "0 0 31 4,6,9,11 *",
    "0 0 31 4-6/2 *",
    "0 0 31 2,4 0",
]
AFTER = datetime(2026, 3, 14, 10, 20, 30)

CELERY_NEXT = """
import json, sys
from datetime import datetime, timezone
from celery import Celery
from celery.schedules import crontab

app = Celery(set_as_current=True)
app.conf.timezone = "UTC"
cases = json.load(sys.stdin)
after = datetime.fromisoformat(cases["after"]).replace(tzinfo=timezone.utc)
found = {}
for expression, kwargs in cases["schedules"].items():
    try:
        schedule = crontab(app=app, **dict(kwargs))  # what beat builds at import
        last, delta, _ = schedule.remaining_delta(after)
        schedule.is_due(after)
    except (ValueError, RuntimeError) as exc:
        found[expression] = None
        continue
    found[expression] = (last + delta).replace(tzinfo=None).isoformat()
json.dump(found, sys.stdout)
"""

ARQ_NEXT = """
import json, sys
from datetime import datetime
from arq.cron import next_cron

cases = json.load(sys.stdin)
after = datetime.fromisoformat(cases["after"])
found = {}
for expression, kwargs in cases["schedules"].items():
    # the literals add-task writes into WorkerSettings.cron_jobs
    options = {k: eval(v, {"__builtins__": {"set": set, "range": range}}) for k, v in kwargs}
    try:
        when = next_cron(after, **options)
    except (ValueError, OverflowError):  # "year 10000 is out of range"
        found[expression] = None
        continue
    found[expression] = when.replace(second=0, microsecond=0).isoformat()
json.dump(found, sys.stdout)
"""


def _library_next(runner: str, script: str, schedules: dict[str, object], after: datetime):  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [str(runner_python(runner)), "-c", script],
        input=json.dumps({"after": after.isoformat(), "schedules": schedules}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {
        k: datetime.fromisoformat(v) if v else None for k, v in json.loads(result.stdout).items()
    }


def _bgtasks_next(runner: str, expression: str, after: datetime) -> datetime | None:
    """None when add-task refuses the expression, else when bgtasks says it fires next."""
    request = build_request("nightly", [], expression, None, 3, 300, True)
    try:
        refuse_never_firing(runner, request, now=after)
    except BadInput:
        return None
    found = next_fire(schedule_fields(runner, request), after)
    assert found is not None
    return found


def _request(expression: str) -> TaskRequest:
    return build_request("nightly", [], expression, None, 3, 300, True)


def test_bgtasks_accepts_exactly_what_celery_fires() -> None:
    schedules = {e: celery_crontab_kwargs(_request(e)) for e in CROSS_CHECK}
    celery = _library_next("celery", CELERY_NEXT, schedules, AFTER)
    ours = {e: _bgtasks_next("celery", e, AFTER) for e in CROSS_CHECK}
    assert ours == celery
    assert {e for e, when in ours.items() if when is None} == {
        e for e in CROSS_CHECK[CROSS_CHECK.index("0 9 31 2 *") :]
    }


def test_bgtasks_accepts_exactly_what_arq_fires() -> None:
    ours = {e: _bgtasks_next("arq", e, AFTER) for e in CROSS_CHECK}
    accepted = [e for e, when in ours.items() if when is not None]
    refused = [e for e, when in ours.items() if when is None]
    arq_accepted = _library_next(
        "arq", ARQ_NEXT, {e: arq_cron_kwargs(_request(e)) for e in accepted}, AFTER
    )
    assert arq_accepted == {e: ours[e] for e in accepted}
    # arq gives up on a schedule only when its day-by-day search passes the year 9999,
    # which from 2026 takes seconds per schedule. The calendar repeats every 400 years,
    # so a schedule arq cannot fire from the year 9000 it can never fire.
    late = AFTER.replace(year=9000)
    arq_refused = _library_next(
        "arq", ARQ_NEXT, {e: arq_cron_kwargs(_request(e)) for e in refused}, late
    )
    assert arq_refused == dict.fromkeys(refused)
    assert refused == CROSS_CHECK[CROSS_CHECK.index("0 9 31 2 *") :]


def test_celerys_parser_is_mirrored_for_a_start_with_a_step() -> None:
    """celery reads "5/15" as a weekday name and raises at import; add-task writes the
    range 5-59/15 it can read, and the checker refuses the form celery cannot."""
    assert dict(celery_crontab_kwargs(_request("5/15 * * * *"))) == {"minute": "5-59/15"}
    with pytest.raises(UnreadableField):
        celery_fields([("minute", "5/15")])
    result = subprocess.run(
        [
            str(runner_python("celery")),
            "-c",
            "from celery.schedules import crontab; crontab(minute='5/15')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Invalid weekday literal" in result.stderr


# -- 4. remove-task refuses every edited part ---------------------------------------------

ARQ_EDITS = {
    "body": ("tasks", 'logger.info("nightly: try', 'logger.info("nightly (edited): try'),
    "route": ("routes", '"/nightly",\n    status_code=202', '"/nightly",\n    status_code=201'),
    "test": (
        "tests",
        'assert "cron:nightly" in scheduled',
        'assert "cron:nightly" in scheduled, 1',
    ),
    "cron_jobs": ("worker", "weekday=set(range(0, 5, 1)),", "weekday=set(range(0, 4, 1)),"),
    "functions": ("worker", 'name="nightly",', 'name="nightly",  # tuned'),
}


def _worker_file(root: Path) -> str:
    worker = load_project(root).worker_file
    assert worker is not None
    return worker


def _edit(root: Path, module: str, old: str, new: str) -> str:
    files = {**module_files(root), "worker": _worker_file(root)}
    rel = files[module]
    path = root / rel
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return rel


@pytest.mark.parametrize("part", list(ARQ_EDITS))
def test_remove_refuses_an_edited_part_unless_forced(project, part: str) -> None:  # type: ignore[no-untyped-def]
    root: Path = project("arq")
    before = tree_hashes(root)
    args = ["add-task", "nightly", "--cron", "0 6 * * 1-5", "-p", str(root)]
    assert invoke(*args)[0] == 0
    module, old, new = ARQ_EDITS[part]
    rel = _edit(root, module, old, new)
    label = {"body": "the body", "route": "the route", "test": "the test"}.get(
        part, f"its `{part}` entry"
    )
    assert_refused(
        root,
        ["remove-task", "nightly", "-p", str(root)],
        1,
        f"{label} ({rel}) of task 'nightly' changed since add-task wrote it",
        "--force",
    )
    code, output = invoke("remove-task", "nightly", "--force", "-p", str(root))
    assert code == 0, output
    assert "nightly" not in (root / rel).read_text()
    state = (root / ".bgtasks.toml").read_text()
    assert "[tasks.nightly]" not in state
    assert set(tree_hashes(root)) == set(before)


def test_every_edited_part_is_named(project) -> None:  # type: ignore[no-untyped-def]
    root: Path = project("celery")
    assert invoke("add-task", "nightly", "--cron", "0 6 * * 1-5", "-p", str(root))[0] == 0
    routes = _edit(
        root, "routes", '"/nightly",\n    status_code=202', '"/nightly",\n    status_code=200'
    )
    worker = _edit(root, "worker", 'hour="6",', 'hour="7",')
    assert_refused(
        root,
        ["remove-task", "nightly", "-p", str(root)],
        1,
        f"the route ({routes}) and its `beat_schedule` entry ({worker}) of task 'nightly' "
        "changed since add-task wrote them",
    )


def test_a_part_the_user_deleted_is_not_an_edit(project) -> None:  # type: ignore[no-untyped-def]
    root: Path = project("builtin")
    before = tree_hashes(root)
    assert invoke("add-task", "ping", "--arg", "host:str", "-p", str(root))[0] == 0
    tests = root / module_files(root)["tests"]
    text = tests.read_text()
    start = text.index("\n\n\ndef test_ping_runs_after_the_response(")
    end = text.index("assert calls == [payload]\n", start) + len("assert calls == [payload]\n")
    tests.write_text(text[:start] + "\n" + text[end:])
    code, output = invoke("remove-task", "ping", "-p", str(root))
    assert code == 0, output
    assert "def ping(" not in (root / module_files(root)["tasks"]).read_text()
    assert set(tree_hashes(root)) == set(before)


def test_a_state_file_without_the_body_hash_still_works(project) -> None:  # type: ignore[no-untyped-def]
    """Older state files carry fewer hashes: the parts are compared with what add-task
    writes for the recorded options instead."""
    root: Path = project("arq")
    before = tree_hashes(root)
    assert invoke("add-task", "nightly", "--cron", "0 6 * * 1-5", "-p", str(root))[0] == 0
    state = root / ".bgtasks.toml"
    lines = state.read_text().splitlines(keepends=True)
    state.write_text("".join(line for line in lines if not line.startswith("hash = ")))
    saved = tree_hashes(root)
    _edit(root, "tasks", 'logger.info("nightly: try', 'logger.info("nightly (edited): try')
    assert_refused(root, ["remove-task", "nightly", "-p", str(root)], 1, "the body")
    _edit(root, "tasks", 'logger.info("nightly (edited): try', 'logger.info("nightly: try')
    assert tree_hashes(root) == saved
    code, output = invoke("remove-task", "nightly", "-p", str(root))
    assert code == 0, output
    assert tree_hashes(root) == before


def test_crlf_files_are_not_mistaken_for_edits(project) -> None:  # type: ignore[no-untyped-def]
    root: Path = project("arq")
    files = [*module_files(root).values(), _worker_file(root)]
    for rel in files:
        path = root / rel
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    before = tree_hashes(root)
    assert invoke("add-task", "nightly", "--cron", "0 6 * * 1-5", "-p", str(root))[0] == 0
    code, output = invoke("remove-task", "nightly", "-p", str(root))
    assert code == 0, output
    assert tree_hashes(root) == before


# -- 5. list on a module with a syntax error ----------------------------------------------


@pytest.mark.parametrize("module", ["tasks", "routes", "worker"])
def test_list_reports_a_syntax_error_as_one_message(project, module: str) -> None:  # type: ignore[no-untyped-def]
    root: Path = project("celery")
    rel = {**module_files(root), "worker": _worker_file(root)}[module]
    path = root / rel
    text = path.read_text()
    path.write_text(text + "\ndef broken(:\n")
    line = text.count("\n") + 2
    assert_refused(
        root, ["list", "-p", str(root)], 2, f"{rel}:{line}:", "syntax error, cannot be parsed"
    )
    code, output = invoke("list", "-p", str(root), "--json")
    assert code == 2 and json.loads(output)["exit_code"] == 2
