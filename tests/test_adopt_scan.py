"""`bgtasks adopt`'s analysis: which add_task calls are found, what they run, which can move.

The fixture project (tests/fixtures/adopt_project) is read as text, never imported; each
call the tests look at is marked in it with a `# case: <name>` comment on its first line.
Smaller projects written to tmp_path cover the annotation rules and the rarer shapes.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from bgtasks_gen.adopt import REASON_CODES, AddTaskCall, AdoptionScan, scan_project

FIXTURE = Path(__file__).parent / "fixtures" / "adopt_project"
USERS = "app/routes/users.py"
ORDERS = "app/routes/orders.py"
SERVICES = "app/services.py"


@pytest.fixture(scope="module")
def scan() -> AdoptionScan:
    return scan_project(FIXTURE)


def case_line(rel: str, case: str) -> int:
    """The line of the fixture marked `# case: <case>`."""
    lines = (FIXTURE / rel).read_text(encoding="utf-8").splitlines()
    marked = [number for number, line in enumerate(lines, 1) if line.endswith(f"# case: {case}")]
    assert len(marked) == 1, f"{rel} marks {case!r} {len(marked)} times"
    return marked[0]


def call_at(scan: AdoptionScan, rel: str, case: str) -> AddTaskCall:
    line = case_line(rel, case)
    found = [call for call in scan.calls if call.file == rel and call.line == line]
    assert len(found) == 1, f"no single call found at {rel}:{line} ({case})"
    return found[0]


MOVABLE = {
    (USERS, "plain"),
    (USERS, "model"),
    (USERS, "same-module"),
    (USERS, "async"),
    (USERS, "keywords"),
    (ORDERS, "annotated"),
    (SERVICES, "helper"),
}
REFUSED = {
    (ORDERS, "lambda"): ("lambda", "a lambda has no importable name"),
    (ORDERS, "closure"): ("closure", "`notify_warehouse` is defined inside `ship`"),
    (ORDERS, "orm"): ("argument-type", "parameter `user: User` of `sync_user`"),
    (ORDERS, "bound-method"): ("bound-method", "`mailer.send` is an attribute of an object"),
    (ORDERS, "third-party"): ("unresolved", "it comes from `httpx`"),
    (ORDERS, "request"): ("needs-request", "passes the request object `request`"),
    (ORDERS, "starred"): ("variadic", "unpacks `*recipient`"),
    (ORDERS, "variadic"): ("variadic", "`notify_all` takes `*emails`"),
    (ORDERS, "datetime"): ("argument-type", "parameter `when: datetime` of `remind_at`"),
    (ORDERS, "local-tasks"): ("not-route-param", "`tasks` is a BackgroundTasks created"),
}


def positions(scan: AdoptionScan, cases: set[tuple[str, str]]) -> set[tuple[str, int]]:
    return {(rel, case_line(rel, case)) for rel, case in cases}


def test_the_movable_calls_are_exactly_these(scan: AdoptionScan) -> None:
    assert {(c.file, c.line) for c in scan.movable} == positions(scan, MOVABLE)
    assert {(c.file, c.line) for c in scan.refused} == positions(scan, set(REFUSED))
    for call in scan.movable:
        assert (call.reason_code, call.reason, call.fix, call.problems) == ("", "", "", ())


@pytest.mark.parametrize(("where", "expected"), sorted(REFUSED.items()), ids=lambda v: str(v))
def test_each_refusal_has_its_reason_fix_and_line(
    scan: AdoptionScan, where: tuple[str, str], expected: tuple[str, str]
) -> None:
    call = call_at(scan, *where)  # found at the marked line: the line is right
    code, words = expected
    assert not call.movable
    assert call.reason_code == code
    assert code in REASON_CODES
    assert words in call.reason
    assert "\n" not in call.reason and call.fix and "\n" not in call.fix
    assert call.problems[0].code == code


def test_every_problem_of_a_call_is_listed_with_its_parameter(scan: AdoptionScan) -> None:
    call = call_at(scan, ORDERS, "orm")
    assert [(p.code, p.parameter) for p in call.problems] == [
        ("argument-type", "user"),
        ("argument-type", "db"),
    ]
    assert "its id" in call.problems[0].fix
    assert "open a new session inside the task" in call.problems[1].fix
    request = call_at(scan, ORDERS, "request")
    assert [(p.code, p.parameter) for p in request.problems] == [
        ("needs-request", ""),  # the argument at the call
        ("needs-request", "request"),  # the target's parameter
    ]
    assert "ISO 8601" in call_at(scan, ORDERS, "datetime").fix


@pytest.mark.parametrize(
    ("where", "callable_source", "module", "name"),
    [
        ((USERS, "plain"), "send_welcome", "app.jobs", "send_welcome"),  # from x import f
        ((USERS, "async"), "refresh", "app.jobs", "refresh_cache"),  # from x import f as g
        ((USERS, "keywords"), "jobs.send_receipt", "app.jobs", "send_receipt"),  # from . import m
        ((ORDERS, "annotated"), "app.jobs.audit_order", "app.jobs", "audit_order"),  # import x.y
        ((USERS, "model"), "record_signup", "app.jobs", "record_signup"),  # from ..x import f
        ((USERS, "same-module"), "log_signup", "app.routes.users", "log_signup"),
        ((SERVICES, "helper"), "send_welcome", "app.jobs", "send_welcome"),
    ],
)
def test_the_target_is_resolved_through_each_import_form(
    scan: AdoptionScan, where: tuple[str, str], callable_source: str, module: str, name: str
) -> None:
    call = call_at(scan, *where)
    assert call.callable_source == callable_source
    assert call.callable_kind == "function"
    assert (call.target_module, call.target_name) == (module, name)
    assert call.target is not None
    assert call.target.file == module.replace(".", "/") + ".py"
    source = (FIXTURE / call.target.file).read_text(encoding="utf-8").splitlines()
    assert f"def {name}(" in source[call.target.line - 1]


def test_the_target_is_described_for_the_rewrite(scan: AdoptionScan) -> None:
    refresh = call_at(scan, USERS, "async")
    assert refresh.target_is_async is True
    assert [(p.name, p.annotation, p.has_default) for p in refresh.target_params] == [
        ("key", "str", False),
        ("ttl", "int | None", True),
    ]
    receipt = call_at(scan, USERS, "keywords")
    assert receipt.target_is_async is False
    assert [(p.name, p.kind, p.annotation) for p in receipt.target_params] == [
        ("order_id", "positional", "int"),
        ("email", "positional", "str"),
        ("lines", "keyword-only", "list[dict[str, int]] | None"),
        ("channel", "keyword-only", 'Literal["email", "sms"]'),
    ]
    variadic = call_at(scan, ORDERS, "variadic")
    assert [(p.name, p.kind) for p in variadic.target_params] == [("emails", "var-positional")]


def test_the_call_is_described_for_the_rewrite(scan: AdoptionScan) -> None:
    plain = call_at(scan, USERS, "plain")
    assert (plain.route, plain.route_is_async, plain.route_decorator) == (
        "create_user",
        False,
        "router.post",
    )
    assert (plain.param_name, plain.on_route_param) == ("background_tasks", True)
    assert plain.args == ("payload.email", "payload.name") and plain.kwargs == ()
    line = (FIXTURE / USERS).read_text(encoding="utf-8").splitlines()[plain.line - 1]
    assert line[plain.column :].startswith("background_tasks.add_task(send_welcome,")
    assert plain.end_line == plain.line

    receipt = call_at(scan, USERS, "keywords")  # over several lines
    assert (receipt.route, receipt.route_is_async, receipt.param_name) == ("receipt", True, "bg")
    assert receipt.args == ()
    assert receipt.kwargs == (("order_id", "user_id"), ("email", "email"), ("channel", '"sms"'))
    assert receipt.end_line == receipt.line + 5

    refresh = call_at(scan, USERS, "async")
    assert (refresh.args, refresh.kwargs) == (('f"user:{user_id}"',), (("ttl", "60"),))
    assert call_at(scan, ORDERS, "annotated").param_name == "tasks"
    assert call_at(scan, ORDERS, "lambda").param_name == "later"  # starlette's, renamed
    assert call_at(scan, ORDERS, "starred").starred == ("*recipient",)
    assert call_at(scan, ORDERS, "request").request_names == ("request",)
    assert call_at(scan, ORDERS, "local-tasks").on_route_param is False
    helper = call_at(scan, SERVICES, "helper")
    assert (helper.route, helper.route_decorator) == ("queue_welcome", "")


def test_other_add_task_methods_are_not_picked_up(scan: AdoptionScan) -> None:
    # app/services.py's own Scheduler has an add_task too, called outside any route
    assert [call.line for call in scan.calls if call.file == SERVICES] == [
        case_line(SERVICES, "helper")
    ]
    assert all(call.file in (USERS, ORDERS, SERVICES) for call in scan.calls)
    assert not any("nightly-report" in call.callable_source for call in scan.calls)


def test_background_tasks_parameters_without_a_call_are_listed(scan: AdoptionScan) -> None:
    assert {(u.file, u.route, u.param_name, u.referenced) for u in scan.unused} == {
        ("app/main.py", "health", "background_tasks", False),
        (USERS, "welcome_again", "background_tasks", True),  # handed to a helper
    }
    health = next(u for u in scan.unused if u.route == "health")
    line = (FIXTURE / "app/main.py").read_text(encoding="utf-8").splitlines()[health.line - 1]
    assert line[health.column :].startswith("background_tasks: BackgroundTasks")


def test_the_result_is_json_ready(scan: AdoptionScan) -> None:
    data = json.loads(json.dumps(scan.to_dict()))
    assert len(data["calls"]) == len(MOVABLE) + len(REFUSED)
    orm = next(c for c in data["calls"] if c["callable"] == "jobs.sync_user")
    assert orm["reason_code"] == "argument-type" and orm["target"]["module"] == "app.jobs"
    assert [p["parameter"] for p in orm["problems"]] == ["user", "db"]


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            status = path.stat()
            state[path.relative_to(root).as_posix()] = (status.st_mtime_ns, status.st_size)
    return state


def test_scanning_writes_nothing() -> None:
    before = tree_state(FIXTURE)
    scan_project(FIXTURE)
    assert tree_state(FIXTURE) == before  # no file changed, none added (no __pycache__)


def copy_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(FIXTURE, root)
    return root


def test_a_file_with_a_syntax_error_is_skipped_not_fatal(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    broken = root / "app" / "routes" / "broken.py"
    broken.write_text(
        "from fastapi import BackgroundTasks\n\n"
        "def route(background_tasks: BackgroundTasks:\n"
        "    background_tasks.add_task(print)\n",
        encoding="utf-8",
    )
    (root / "app" / "latin1.py").write_bytes(b"# caf\xe9\nBackgroundTasks = None\n")
    result = scan_project(root)
    assert [s.file for s in result.skipped] == ["app/latin1.py", "app/routes/broken.py"]
    assert "syntax error at line 3" in result.skipped[1].reason
    assert "not UTF-8" in result.skipped[0].reason
    assert len(result.calls) == len(MOVABLE) + len(REFUSED)  # the rest is still read


def test_a_target_in_a_file_that_cannot_be_parsed_is_unresolved(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path)
    jobs = root / "app" / "jobs.py"
    jobs.write_text(jobs.read_text(encoding="utf-8") + "\ndef oops(:\n", encoding="utf-8")
    result = scan_project(root)
    assert [s.file for s in result.skipped] == ["app/jobs.py"]
    plain = next(c for c in result.calls if c.callable_source == "jobs.send_receipt")
    assert plain.reason_code == "unresolved"
    assert "app/jobs.py could not be parsed" in plain.reason


# smaller projects: one route calling one task


def write_project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"app/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return root


ROUTE = """
from fastapi import APIRouter, BackgroundTasks

from app.tasks import task

router = APIRouter()


@router.post("/")
def route(background_tasks: BackgroundTasks) -> None:
    background_tasks.add_task(task)
"""
SCHEMAS = """
from pydantic import BaseModel as Model


class Signup(Model):
    email: str


class Team(Signup):
    members: list[Signup]
"""
TABLES = """
from sqlmodel import Field, SQLModel


class HeroBase(SQLModel):
    name: str


class Hero(HeroBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
"""


def judged_task(tmp_path: Path, header: str, signature: str) -> AddTaskCall:
    tasks = f"{header}\n\n\ndef task({signature}) -> None:\n    pass\n"
    files = {"app/routes.py": ROUTE, "app/tasks.py": tasks, "app/schemas.py": SCHEMAS}
    files["app/tables.py"] = TABLES
    [call] = scan_project(write_project(tmp_path, files)).calls
    assert call.target_name == "task"
    return call


@pytest.mark.parametrize(
    ("header", "signature"),
    [
        ("from typing import Optional", "value: Optional[int] = None"),
        ("from typing import Union", "value: Union[str, None]"),
        ("", "value: bool | float | None, count: int = 0"),
        ("", "value: list[str]"),
        ("", "value: dict[str, list[int]]"),
        ("", "value: tuple[int, ...]"),
        ("from typing import Literal", "value: Literal['a', 1, -2, None, True]"),
        ("from typing import Annotated", "value: Annotated[int, 'positive']"),
        ("import typing", "value: typing.List[typing.Dict[str, int]]"),
        ("import typing_extensions as te", "value: te.Optional[str]"),
        ("from app.schemas import Signup", "value: Signup"),
        ("from app.schemas import Team", "value: 'Team'"),  # a model of a model, quoted
        ("from app import schemas", "value: list[schemas.Signup] | None"),
        ("from .schemas import Signup", "*, value: dict[str, Signup]"),
        ("from app.tables import HeroBase", "value: HeroBase"),  # SQLModel, not a table
    ],
)
def test_json_annotations_are_movable(tmp_path: Path, header: str, signature: str) -> None:
    call = judged_task(tmp_path, header, signature)
    assert call.movable, call.reason


@pytest.mark.parametrize(
    ("header", "signature", "code", "reason", "fix"),
    [
        ("from datetime import datetime", "value: datetime", "argument-type", "datetime", "ISO"),
        ("import datetime", "value: datetime.date | None", "argument-type", "date", "ISO"),
        ("from uuid import UUID", "value: UUID", "argument-type", "UUID", "str(value)"),
        ("from decimal import Decimal", "value: Decimal", "argument-type", "Decimal", "digit"),
        ("", "value: dict[int, str]", "argument-type", "not str", "str keys"),
        ("", "value: list", "argument-type", "does not say", "list[str]"),
        ("", "value: bytes", "argument-type", "not plain data", "plain data"),
        ("from typing import Any", "value: Any", "argument-type", "Any", "plain data"),
        ("", "value", "argument-type", "has no annotation", "annotate `value`"),
        ("from app.tables import Hero", "value: Hero", "argument-type", "not a pydantic", "id"),
        ("from fastapi import Request", "request: Request", "needs-request", "needs the req", ""),
        ("from starlette.websockets import WebSocket", "ws: WebSocket", "needs-request", "", ""),
        ("", "**options: str", "variadic", "takes `**options`", "named, annotated"),
        ("", "value: 'Missing'", "argument-type", "Missing", ""),
    ],
)
def test_other_annotations_are_refused(
    tmp_path: Path, header: str, signature: str, code: str, reason: str, fix: str
) -> None:
    call = judged_task(tmp_path, header, signature)
    assert not call.movable
    assert call.reason_code == code
    assert reason in call.reason
    assert fix in call.fix


def test_a_refused_parameter_is_named_with_its_annotation(tmp_path: Path) -> None:
    call = judged_task(tmp_path, "from datetime import datetime", "name: str, when: datetime")
    assert call.problems[0].parameter == "when"
    assert "`when: datetime`" in call.reason
    assert "pass an ISO 8601 string" in call.fix


def route_calling(callable_source: str, imports: str, body: str = "") -> str:
    return f"""
{imports}
from fastapi import APIRouter, BackgroundTasks

router = APIRouter()


@router.post("/")
async def route(background_tasks: BackgroundTasks) -> None:
{textwrap.indent(textwrap.dedent(body), "    ")}
    background_tasks.add_task({callable_source}, "x")
"""


JOBS = """
class Mailer:
    @staticmethod
    def send(to: str) -> None:
        pass


mailer = Mailer()
handlers = {"send": Mailer.send}


def send_mail(to: str) -> None:
    pass
"""


@pytest.mark.parametrize(
    ("callable_source", "imports", "body", "kind", "detail"),
    [
        ("send_mail", "from app.mail import send_mail", "", "function", ""),  # a re-export
        ("mail.send_mail", "import app.mail.jobs as mail", "", "function", ""),
        ("jobs.send_mail", "from .mail import jobs", "", "function", ""),
        ("send_mail", "", "from app.mail.jobs import send_mail", "function", ""),  # local import
        ("Mailer.send", "from app.mail.jobs import Mailer", "", "attribute-of-object", ""),
        ("jobs.mailer.send", "from app.mail import jobs", "", "attribute-of-object", ""),
        ("mailer", "from app.mail.jobs import mailer", "", "unresolved", "is a value"),
        ("Mailer", "from app.mail.jobs import Mailer", "", "unresolved", "is a class"),
        ("nowhere", "from app.mail.jobs import nowhere", "", "unresolved", "is not defined"),
        ("undefined_name", "", "", "unresolved", "`undefined_name` is not defined"),
        ("print", "", "", "unresolved", "Python builtin"),
        (
            "task",
            "from app.mail import jobs",
            "task = jobs.send_mail",
            "unresolved",
            "is a local variable",
        ),
        (
            "partial(send_mail)",
            "from functools import partial\nfrom app.mail import send_mail",
            "",
            "unresolved",
            "is an expression",
        ),
        ("handlers['send']", "from app.mail.jobs import handlers", "", "unresolved", "expr"),
        (
            "sender().send",
            "from app.mail.jobs import Mailer as sender",
            "",
            "attribute-of-object",
            "",
        ),
        ("dumps", "from json import dumps", "", "unresolved", "comes from `json`"),
        ("Local", "class Local:\n    pass\n", "", "unresolved", "is a class"),
        ("runner", "runner = print", "", "unresolved", "is a value, not a def"),
    ],
)
def test_callables_of_every_shape(
    tmp_path: Path, callable_source: str, imports: str, body: str, kind: str, detail: str
) -> None:
    files = {
        "app/mail/__init__.py": "from .jobs import send_mail as send_mail\n",
        "app/mail/jobs.py": JOBS,
        "app/routes.py": route_calling(callable_source, imports, body),
    }
    [call] = scan_project(write_project(tmp_path, files)).calls
    assert call.callable_source == callable_source
    assert call.callable_kind == kind
    assert detail in call.unresolved
    if kind == "function":
        assert call.movable, call.reason
        assert (call.target_module, call.target_name) == ("app.mail.jobs", "send_mail")
    else:
        expected = {"attribute-of-object": "bound-method", "unresolved": "unresolved"}[kind]
        assert call.reason_code == expected


@pytest.mark.parametrize(
    ("imports", "annotation"),
    [
        ("from fastapi import BackgroundTasks", "'BackgroundTasks'"),
        ("import fastapi", "fastapi.BackgroundTasks"),
        ("from fastapi.background import BackgroundTasks as Later", "Later"),
        (
            "import typing\nfrom fastapi import BackgroundTasks",
            "typing.Annotated[BackgroundTasks, 1]",
        ),
    ],
)
def test_the_background_tasks_annotation_in_every_spelling(
    tmp_path: Path, imports: str, annotation: str
) -> None:
    route = f"""
{imports}

from app.jobs import ping


def route(tasks: {annotation}) -> None:
    tasks.add_task(ping)
"""
    files = {"app/jobs.py": "def ping() -> None:\n    pass\n", "app/routes.py": route}
    [call] = scan_project(write_project(tmp_path, files)).calls
    assert (call.param_name, call.movable) == ("tasks", True)


def test_a_class_of_the_project_named_background_tasks_is_not_fastapis(tmp_path: Path) -> None:
    files = {
        "app/queue.py": "class BackgroundTasks:\n    def add_task(self, f: object) -> None:\n"
        "        pass\n",
        "app/routes.py": "from app.queue import BackgroundTasks\n\n\n"
        "def route(tasks: BackgroundTasks) -> None:\n    tasks.add_task(print)\n",
    }
    result = scan_project(write_project(tmp_path, files))
    assert result.calls == () and result.unused == ()


def test_module_level_and_nested_uses(tmp_path: Path) -> None:
    routes = """
    from fastapi import BackgroundTasks

    from app.jobs import ping


    def route(background_tasks: BackgroundTasks) -> None:
        def later() -> None:
            background_tasks.add_task(ping)  # the route's, used from a nested function

        later()


    def made_here() -> None:
        shared.add_task(ping)


    shared = BackgroundTasks()
    """
    files = {"app/jobs.py": "def ping() -> None:\n    pass\n", "app/routes.py": routes}
    result = scan_project(write_project(tmp_path, files))
    nested, shared = result.calls
    assert (nested.route, nested.on_route_param, nested.movable) == ("later", True, True)
    assert (shared.param_name, shared.reason_code) == ("shared", "not-route-param")
    assert result.unused == ()
