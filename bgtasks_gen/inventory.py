"""`bgtasks list`: the project's tasks as its code has them, read with libcst.

Tasks written by hand count as much as generated ones: a task is recognised by its shape
(a Celery task decorator, an arq function taking `ctx`, a BackgroundTasks job returning
None), its route by the route function that names it, its schedule by the beat or cron
entry (or the taskiq label) that names it.

Every runner's code says retries, time limits and schedules in its own terms; each row
says them in one: see TaskRow.
"""

from __future__ import annotations

import ast
import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import libcst as cst
from libcst.helpers import get_full_name_for_node

from bgtasks_gen.addtask import Project
from bgtasks_gen.modules import parse_source, read_source
from bgtasks_gen.runners.base import TaskShape
from bgtasks_gen.schedules import (
    ARQ_RANGES,
    arq_cron_text,
    cron_fields_text,
    interval_text,
)

ROUTE_METHODS = ("get", "post", "put", "patch", "delete")
ADOPTED_FILE = "adopted.py"  # adopt/adopted_module.py's MODULE_FILE
TABLE_COLUMNS = ("task", "route", "schedule", "retries", "timeout", "added by")
NOT_SET = "—"  # in the table, for a value the task does not have

# what the runners do where a task's code leaves its retries unsaid
CELERY_MAX_RETRIES = 3  # celery's Task.max_retries
ARQ_WORKER_MAX_TRIES = 5  # arq's Worker(max_tries=...), for a func(...) without its own
ARQ_CRON_MAX_TRIES = 1  # arq's cron(max_tries=...)
TASKIQ_RETRY_COUNT = 3  # taskiq's SmartRetryMiddleware(default_retry_count=...): attempts
# celery's crontab() arguments in its positional order, and in cron's order
CRONTAB_ARGUMENTS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
CRONTAB_IN_CRON_ORDER = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
# a range() longer than any schedule field is not one: never expanded
MAX_RANGE = 1000


@dataclass(frozen=True)
class TaskRow:
    """One task as `bgtasks list` shows it, each column meaning the same on every runner;
    None (null in JSON, "—" in the table) where the task has none.

    `schedule`: a cron expression, UTC ("0 6 * * 1-5"), or an interval in words
    ("every 30s"). `retries`: how many times a failed run is tried again at most, what
    add-task's --retries sets (celery's max_retries, arq's max_tries - 1, taskiq's
    max_retries - 1 when it retries on error). `timeout`: the seconds one run may take, when
    the task sets a limit of its own (otherwise the worker's applies).
    """

    name: str
    route: str | None  # "POST /tasks/x"
    schedule: str | None
    retries: int | None
    timeout: float | None  # an int when it is whole
    added_by: str  # "add-task", "init" or "you"

    def as_dict(self) -> dict[str, str | float | None]:
        return asdict(self)

    def cells(self) -> tuple[str, ...]:
        """The row in the table, in TABLE_COLUMNS' order."""
        values = (self.name, self.route, self.schedule, self.retries, self.timeout, self.added_by)
        return tuple(NOT_SET if value is None else str(value) for value in values)


@dataclass(frozen=True)
class _Options:
    retries: int | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class _CronText:
    """What a `crontab(...)` call evaluates to: its schedule as cron text."""

    text: str


class Unreadable(ValueError):
    """An expression whose value only running the project would tell (a settings value)."""


@dataclass(frozen=True)
class _Code:
    """One module's expressions, evaluated without running anything; the module-level
    constants of the modules read (`SEND_EMAIL_MAX_TRIES = 5`) stand for their names."""

    module: cst.Module
    constants: Mapping[str, object]

    def value(self, node: cst.BaseExpression) -> object:
        # the newline ends a trailing comment inside the expression before the parenthesis
        source = "(" + self.module.code_for_node(node).strip() + "\n)"
        try:
            expression = ast.parse(source, mode="eval").body
        except SyntaxError as exc:  # a walrus or a star in an odd place: not a value
            raise Unreadable(source) from exc
        return _evaluate(expression, self.constants)

    def text(self, node: cst.CSTNode) -> str:
        """The node's source on one line: how a schedule nothing here reads is shown."""
        return " ".join(self.module.code_for_node(node).split())

    def count(self, node: cst.BaseExpression | None) -> int | None:
        if node is None:
            return None
        try:
            value = self.value(node)
        except Unreadable:
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def seconds(self, node: cst.BaseExpression | None) -> float | None:
        if node is None:
            return None
        try:
            return _seconds(self.value(node))
        except Unreadable:
            return None


def _evaluate(node: ast.expr, constants: Mapping[str, object]) -> object:
    """The value of a literal, a constant's name, plain arithmetic (`50 * 60`), a
    collection, or one of the calls schedules and options are written with."""
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name() | ast.Attribute(value=ast.Name()):
            # `module.NAME` names a constant of a module read, never another object's field
            key = ast.unparse(node)
            if key in constants:
                return constants[key]
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_number(_evaluate(operand, constants))
        case ast.BinOp(left=left, op=op, right=right):
            return _arithmetic(
                op, _number(_evaluate(left, constants)), _number(_evaluate(right, constants))
            )
        case ast.Set(elts=items) | ast.List(elts=items) | ast.Tuple(elts=items):
            return [_evaluate(item, constants) for item in items]
        case ast.Dict(keys=keys, values=values):
            return {
                _evaluate(key, constants): _evaluate(value, constants)
                for key, value in zip(keys, values, strict=True)
                if key is not None
            }
        case ast.Call(func=function, args=args, keywords=keywords):
            positional = [_evaluate(arg, constants) for arg in args]
            named = {k.arg: _evaluate(k.value, constants) for k in keywords if k.arg is not None}
            return _call(ast.unparse(function).rpartition(".")[2], positional, named)
    raise Unreadable(ast.unparse(node))


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unreadable(repr(value))
    return value


def _arithmetic(op: ast.operator, left: float, right: float) -> float:
    try:
        match op:
            case ast.Add():
                return left + right
            case ast.Sub():
                return left - right
            case ast.Mult():
                return left * right
            case ast.Div():
                return left / right
            case ast.FloorDiv():
                return left // right
    except ZeroDivisionError as exc:
        raise Unreadable("division by zero") from exc
    raise Unreadable(type(op).__name__)


def _call(name: str, args: list[object], kwargs: dict[str, object]) -> object:
    try:
        if name == "range" and not kwargs:
            numbers = range(*(int(_number(a)) for a in args))
            if len(numbers) > MAX_RANGE:
                raise Unreadable("range")
            return list(numbers)
        if name in ("set", "frozenset", "list", "tuple", "sorted") and len(args) == 1:
            if isinstance(args[0], list):
                return args[0]
        if name == "timedelta":
            return timedelta(
                *(_number(a) for a in args), **{k: _number(v) for k, v in kwargs.items()}
            )
        if name == "crontab":
            return _crontab(args, kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        raise Unreadable(name) from exc
    if len(args) == 1 and not kwargs:
        # a cap the runner applies when it runs (`capped_timeout(300)`): the figure asked for
        return args[0]
    raise Unreadable(name)


def _crontab(args: list[object], kwargs: dict[str, object]) -> _CronText:
    given = dict(zip(CRONTAB_ARGUMENTS, args, strict=False)) | kwargs
    if set(given) - set(CRONTAB_ARGUMENTS):
        raise Unreadable("crontab")  # nowcast, app: not a schedule this reads

    def field(key: str) -> str:
        value = given.get(key, "*")
        if isinstance(value, list):
            return ",".join(str(int(_number(item))) for item in value)
        return str(value)

    return _CronText(cron_fields_text([field(key) for key in CRONTAB_IN_CRON_ORDER]))


def _seconds(value: object) -> float:
    """A duration given as seconds or as a timedelta; an int when it is whole."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else _number(value)
    return int(seconds) if seconds == math.floor(seconds) else seconds


def _int_set(value: object) -> frozenset[int]:
    """An arq cron field: one number or a collection of them."""
    items = value if isinstance(value, list) else [value]
    return frozenset(int(_number(item)) for item in items)


def _constants(modules: Mapping[str, cst.Module]) -> dict[str, object]:
    """Module-level `NAME = <literal>` assignments: the values task options name, as
    `NAME` and as `module.NAME` (`arq_tasks.SEND_EMAIL_MAX_TRIES`); `modules`: by stem."""
    constants: dict[str, object] = {}
    for stem, module in modules.items():
        code = _Code(module, constants)
        for statement in module.body:
            if not isinstance(statement, cst.SimpleStatementLine):
                continue
            for small in statement.body:
                if (
                    isinstance(small, cst.Assign)
                    and len(small.targets) == 1
                    and isinstance(small.targets[0].target, cst.Name)
                ):
                    name = small.targets[0].target.value
                    try:
                        constants[name] = constants[f"{stem}.{name}"] = code.value(small.value)
                    except Unreadable:
                        continue
    return constants


def _module(project: Project, rel: str | None) -> cst.Module | None:
    """The module parsed, None if it does not exist; a syntax error is one BadInput
    naming file:line:col (modules.parse_source), never a traceback."""
    if rel is None or not (project.root / rel).is_file():
        return None
    return parse_source(read_source(project.root / rel), Path(rel))


def _decorator_names(function: cst.FunctionDef) -> list[str]:
    names = []
    for decorator in function.decorators:
        node = decorator.decorator
        target = node.func if isinstance(node, cst.Call) else node
        names.append(get_full_name_for_node(target) or "")
    return names


def _decorator_keywords(function: cst.FunctionDef) -> dict[str, cst.BaseExpression]:
    """The keyword arguments of the task's decorator call (`@app.task(max_retries=3)`)."""
    for decorator in function.decorators:
        if isinstance(decorator.decorator, cst.Call):
            return _keywords(decorator.decorator)
    return {}


def _keywords(call: cst.Call) -> dict[str, cst.BaseExpression]:
    return {arg.keyword.value: arg.value for arg in call.args if arg.keyword is not None}


def _is_task(shape: TaskShape, function: cst.FunctionDef) -> bool:
    """Whether `function` has the runner's task shape (RunnerSpec.task_shape)."""
    if function.name.value.startswith("_"):
        return False
    if shape.decorators:
        return any(
            fnmatch.fnmatchcase(name, pattern)
            for name in _decorator_names(function)
            for pattern in shape.decorators
        )
    params = function.params.params
    if shape.first_param is not None:
        return (
            function.asynchronous is not None
            and bool(params)
            and params[0].name.value == shape.first_param
        )
    returns = function.returns
    return (
        not function.decorators
        and returns is not None
        and isinstance(returns.annotation, cst.Name)
        and returns.annotation.value == "None"
    )


def _routes(project: Project) -> dict[str, str]:
    """task name -> "METHOD /path" of the route whose body names it."""
    rel = project.router_file
    module = _module(project, rel)
    if module is None:
        return {}
    prefix = project.routes_prefix(module.code)
    found: dict[str, str] = {}
    for statement in module.body:
        if not isinstance(statement, cst.FunctionDef):
            continue
        for decorator in statement.decorators:
            node = decorator.decorator
            if not (isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)):
                continue
            method = node.func.attr.value
            if method not in ROUTE_METHODS or not node.args:
                continue
            path_node = node.args[0].value
            if not isinstance(path_node, cst.SimpleString):
                continue
            path = ast.literal_eval(path_node.value)
            body = module.code_for_node(statement.body)
            for word in set(re.findall(r"\b[a-z_][a-z0-9_]*\b", body)):
                if method == "post":
                    found.setdefault(word, f"POST {prefix}{path}")
    return found


# -- each runner's code: where it says schedules, retries and time limits ---------------


def _celery_beat(code: _Code) -> dict[str, list[str]]:
    """task -> schedules of its `beat_schedule` entries."""
    schedules: dict[str, list[str]] = {}

    class Visitor(cst.CSTVisitor):
        def visit_DictElement(self, node: cst.DictElement) -> None:
            if not isinstance(node.value, cst.Dict):
                return
            entry = {
                ast.literal_eval(e.key.value): e.value
                for e in node.value.elements
                if isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString)
            }
            task, when = entry.get("task"), entry.get("schedule")
            if isinstance(task, cst.SimpleString) and when is not None:
                name = str(ast.literal_eval(task.value)).rpartition(".")[2]
                schedules.setdefault(name, []).append(_celery_schedule(code, when))

    code.module.visit(Visitor())
    return schedules


def _celery_schedule(code: _Code, node: cst.BaseExpression) -> str:
    """A beat entry's schedule: a crontab as cron text, seconds or a timedelta in words."""
    try:
        value = code.value(node)
        if isinstance(value, _CronText):
            return value.text
        return interval_text(_seconds(value))
    except (Unreadable, ValueError):
        return code.text(node)


def _celery_options(code: _Code, function: cst.FunctionDef) -> _Options:
    keywords = _decorator_keywords(function)
    retries = keywords.get("max_retries")
    limit = keywords.get("soft_time_limit", keywords.get("time_limit"))
    return _Options(
        CELERY_MAX_RETRIES if retries is None else code.count(retries), code.seconds(limit)
    )


@dataclass
class _ArqWorker:
    """What arq's WorkerSettings say per task: its func(...) options, its cron(...) jobs."""

    options: dict[str, _Options]
    cron_options: dict[str, _Options]
    crons: dict[str, list[str]]


def _arq_worker(code: _Code, every: Mapping[str, int]) -> _ArqWorker:
    """`every`: task -> the --every add-task recorded (see schedules.arq_cron_text)."""
    calls: list[tuple[str, str, cst.Call]] = []  # (func or cron, task, the call)
    max_tries = ARQ_WORKER_MAX_TRIES

    class Visitor(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            nonlocal max_tries
            target = node.targets[0].target
            if isinstance(target, cst.Name) and target.value == "max_tries":
                max_tries = code.count(node.value) or max_tries

        def visit_Call(self, node: cst.Call) -> None:
            callee = get_full_name_for_node(node.func) or ""
            if callee not in ("cron", "func") or not node.args:
                return
            target = node.args[0].value
            dotted = (
                str(ast.literal_eval(target.value))
                if isinstance(target, cst.SimpleString)
                else get_full_name_for_node(target) or ""
            )
            calls.append((callee, dotted.rpartition(".")[2], node))

    code.module.visit(Visitor())
    worker = _ArqWorker({}, {}, {})
    for callee, name, call in calls:
        keywords = _keywords(call)
        tries = keywords.get("max_tries")
        default = max_tries if callee == "func" else ARQ_CRON_MAX_TRIES
        options = _Options(
            _retries_of_tries(default if tries is None else code.count(tries)),
            code.seconds(keywords.get("timeout")),
        )
        if callee == "func":
            worker.options[name] = options
            continue
        worker.cron_options.setdefault(name, options)
        worker.crons.setdefault(name, []).append(
            _arq_schedule(code, call, keywords, every.get(name))
        )
    return worker


def _retries_of_tries(tries: int | None) -> int | None:
    """arq counts attempts: max_tries=4 is the first run and 3 retries."""
    return None if tries is None else max(tries - 1, 0)


def _arq_schedule(
    code: _Code, call: cst.Call, keywords: dict[str, cst.BaseExpression], every: int | None
) -> str:
    fields = [key for key, _, _ in ARQ_RANGES] + ["second"]
    try:
        given = {
            key: _int_set(value)
            for key in fields
            if key in keywords and (value := code.value(keywords[key])) is not None
        }
    except Unreadable:
        return code.text(call)
    return arq_cron_text(given, every)


@dataclass(frozen=True)
class _TaskiqDefaults:
    """The retry middleware's defaults, for a task whose labels leave them out."""

    retry_on_error: bool = False
    tries: int = TASKIQ_RETRY_COUNT


def _taskiq_defaults(code: _Code) -> _TaskiqDefaults:
    found: dict[str, object] = {}

    class Visitor(cst.CSTVisitor):
        def visit_Call(self, node: cst.Call) -> None:
            keywords = _keywords(node)
            for key in ("default_retry_label", "default_retry_count"):
                if key in keywords:
                    try:
                        found[key] = code.value(keywords[key])
                    except Unreadable:
                        continue

    code.module.visit(Visitor())
    label, tries = found.get("default_retry_label"), found.get("default_retry_count")
    return _TaskiqDefaults(
        label if isinstance(label, bool) else False,
        tries if isinstance(tries, int) else TASKIQ_RETRY_COUNT,
    )


def _taskiq_options(code: _Code, function: cst.FunctionDef, defaults: _TaskiqDefaults) -> _Options:
    """taskiq's max_retries label counts attempts, and counts only with retry_on_error."""
    labels = _decorator_keywords(function)
    timeout = code.seconds(labels.get("timeout"))
    retry_on_error: object = defaults.retry_on_error
    if "retry_on_error" in labels:
        try:
            retry_on_error = code.value(labels["retry_on_error"])
        except Unreadable:
            return _Options(None, timeout)
    if retry_on_error is not True:
        return _Options(0, timeout)
    tries = labels.get("max_retries")
    return _Options(
        _retries_of_tries(defaults.tries if tries is None else code.count(tries)), timeout
    )


def _taskiq_schedule(code: _Code, function: cst.FunctionDef) -> list[str]:
    """The `schedule=[{"cron": ...}, {"interval": ...}]` label of the task."""
    node = _decorator_keywords(function).get("schedule")
    if node is None:
        return []
    try:
        entries = code.value(node)
        if not isinstance(entries, list):
            raise Unreadable("schedule")
        return [_taskiq_entry(entry) for entry in entries]
    except (Unreadable, ValueError):
        return [code.text(node)]


def _taskiq_entry(entry: object) -> str:
    if isinstance(entry, dict):
        cron, interval = entry.get("cron"), entry.get("interval")
        if isinstance(cron, str):
            return cron_fields_text(cron.split())
        if interval is not None:
            return interval_text(_seconds(interval))
    raise Unreadable("schedule")


def _generic_options(code: _Code, function: cst.FunctionDef) -> _Options:
    """A runner of a plugin: the decorator's own words, read as celery means them."""
    keywords = _decorator_keywords(function)
    limit = next(
        (keywords[k] for k in ("soft_time_limit", "time_limit", "timeout") if k in keywords),
        None,
    )
    return _Options(code.count(keywords.get("max_retries")), code.seconds(limit))


# -- the rows ---------------------------------------------------------------------------


def _origin(project: Project, name: str) -> str:
    files = project.state.get("files", {})
    generated = isinstance(files, dict) and project.tasks_file in files
    if name in project.tasks:
        return "add-task"
    adopted = project.state.get("adopted", {})
    record = adopted.get(name) if isinstance(adopted, dict) else None
    if isinstance(record, dict):  # `bgtasks adopt`: the project's function it runs
        return f"adopt ({record.get('source', '?')})"
    if generated and name in project.spec.scaffold_tasks:
        return "init"
    return "you"


def _recorded_every(project: Project) -> dict[str, int]:
    recorded = {}
    for name, options in project.tasks.items():
        every = options.get("every")
        if isinstance(every, int) and every > 0:
            recorded[name] = every
    return recorded


def list_tasks(project: Project) -> list[TaskRow]:
    module = _module(project, project.tasks_file)
    if module is None:
        return []
    modules = [module]
    tasks_package = str(project.layout["tasks_module"])
    stems = {Path(project.tasks_file).stem: module}
    # the tasks `bgtasks adopt` wrote (adopt/adopted_module.py), when there are any
    for name in (*project.spec.other_task_files, ADOPTED_FILE):
        other = _module(project, project.package_file(tasks_package, name))
        if other is not None:
            modules.append(other)
            stems[Path(name).stem] = other
    worker_module = _module(project, project.worker_file)
    if worker_module is not None and project.worker_file is not None:
        stems[Path(project.worker_file).stem] = worker_module
    constants = _constants(stems)
    worker = None if worker_module is None else _Code(worker_module, constants)
    # the runner's code is told apart by where its spec says schedules live
    kind = project.spec.schedule_kind
    beat = _celery_beat(worker) if kind == "beat" and worker is not None else {}
    arq = (
        _arq_worker(worker, _recorded_every(project))
        if kind == "cron" and worker is not None
        else _ArqWorker({}, {}, {})
    )
    taskiq_defaults = (
        _taskiq_defaults(worker) if kind == "label" and worker is not None else _TaskiqDefaults()
    )
    routes = _routes(project)
    rows = []
    for source in modules:
        code = _Code(source, constants)
        for statement in source.body:
            if not isinstance(statement, cst.FunctionDef):
                continue
            if not _is_task(project.spec.task_shape, statement):
                continue
            name = statement.name.value
            schedules = beat.get(name, []) + arq.crons.get(name, [])
            if kind == "beat":
                options = _celery_options(code, statement)
            elif kind == "cron":
                options = arq.options.get(name) or arq.cron_options.get(name, _Options())
            elif kind == "label":
                options = _taskiq_options(code, statement, taskiq_defaults)
                schedules += _taskiq_schedule(code, statement)
            else:
                options = _generic_options(code, statement)
            if not project.spec.retries_and_timeouts:
                options = _Options()
            rows.append(
                TaskRow(
                    name=name,
                    route=routes.get(name),
                    schedule="; ".join(schedules) or None,
                    retries=options.retries,
                    timeout=options.timeout,
                    added_by=_origin(project, name),
                )
            )
    return rows
