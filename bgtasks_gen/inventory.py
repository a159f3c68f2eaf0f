"""`bgtasks list`: the project's tasks as its code has them, read with libcst.

Tasks written by hand count as much as generated ones: a task is recognised by its shape
(a Celery task decorator, an arq function taking `ctx`, a BackgroundTasks job returning
None), its route by the route function that names it, its schedule by the beat or cron
entry that names it.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import libcst as cst
from libcst.helpers import get_full_name_for_node

from bgtasks_gen.addtask import Project
from bgtasks_gen.modules import parse_source, read_source
from bgtasks_gen.runners.base import TaskShape

ROUTE_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    route: str  # "POST /tasks/x" or ""
    schedule: str  # "crontab(hour=9, minute=0)" or ""
    retries: str
    timeout: str
    added_by: str  # "add-task", "init" or "you"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


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


def _keywords(module: cst.Module, call: cst.Call) -> dict[str, str]:
    return {
        arg.keyword.value: module.code_for_node(arg.value)
        for arg in call.args
        if arg.keyword is not None
    }


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


def _task_options(module: cst.Module, function: cst.FunctionDef) -> tuple[str, str]:
    for decorator in function.decorators:
        if isinstance(decorator.decorator, cst.Call):
            options = _keywords(module, decorator.decorator)
            timeout = options.get("soft_time_limit", options.get("time_limit", ""))
            return options.get("max_retries", ""), timeout
    return "", ""


def _label_schedule(module: cst.Module, function: cst.FunctionDef) -> str:
    """A schedule given as a label of the task's decorator (`schedule=[{"cron": ...}]`)."""
    for decorator in function.decorators:
        if isinstance(decorator.decorator, cst.Call):
            found = _keywords(module, decorator.decorator).get("schedule")
            if found:
                return found
    return ""


def _routes(project: Project) -> dict[str, str]:
    """task name -> "METHOD /path" of the route whose body names it."""
    rel = project.router_file
    module = _module(project, rel)
    if module is None:
        return {}
    source = module.code
    prefix_match = re.search(r'prefix="([^"]*)"', source)
    prefix = prefix_match.group(1) if prefix_match else ""
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


def _worker_entries(project: Project) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(task -> schedule, task -> (retries, timeout)) from beat_schedule / arq lists."""
    schedules: dict[str, str] = {}
    options: dict[str, tuple[str, str]] = {}
    found = _module(project, project.worker_file)
    if found is None:
        return schedules, options
    module: cst.Module = found

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
                schedules[name] = module.code_for_node(when)

        def visit_Call(self, node: cst.Call) -> None:
            callee = get_full_name_for_node(node.func) or ""
            if callee not in ("cron", "func") or not node.args:
                return
            target = (get_full_name_for_node(node.args[0].value) or "").rpartition(".")[2]
            keywords = _keywords(module, node)
            if callee == "cron":
                when = ", ".join(
                    f"{k}={v}" for k, v in keywords.items() if k not in ("name", "timeout")
                )
                schedules[target] = f"cron({when})"
            else:
                options[target] = (keywords.get("max_tries", ""), keywords.get("timeout", ""))

    module.visit(Visitor())
    return schedules, options


def _module_constants(module: cst.Module) -> dict[str, int]:
    """Module-level `NAME = <int>` assignments: the values task options name."""
    constants = {}
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if (
                isinstance(small, cst.Assign)
                and len(small.targets) == 1
                and isinstance(small.targets[0].target, cst.Name)
                and isinstance(small.value, cst.Integer)
            ):
                constants[small.targets[0].target.value] = int(small.value.evaluated_value)
    return constants


def _number(source: str, constants: dict[str, int]) -> int | None:
    """The integer an option's source stands for: a literal, a module constant
    (`arq_tasks.SEND_EMAIL_MAX_TRIES`), or a one-argument cap (`capped_timeout(300)`)."""
    source = source.strip()
    cap = re.fullmatch(r"[\w.]+\((.+)\)", source)
    if cap:
        source = cap.group(1).strip()
    if re.fullmatch(r"\d+", source):
        return int(source)
    return constants.get(source.rpartition(".")[2])


def _arq_options(options: tuple[str, str], constants: dict[str, int]) -> tuple[str, str]:
    """arq counts attempts (max_tries = retries + 1); the timeout is shown in seconds."""
    max_tries, timeout = options
    tries = _number(max_tries, constants) if max_tries else None
    seconds = _number(timeout, constants) if timeout else None
    return (
        str(tries - 1) if tries is not None else max_tries,
        str(seconds) if seconds is not None else timeout,
    )


def list_tasks(project: Project) -> list[TaskInfo]:
    module = _module(project, project.tasks_file)
    if module is None:
        return []
    modules = [module]
    tasks_package = str(project.layout["tasks_module"])
    for name in project.spec.other_task_files:
        other = _module(project, project.package_file(tasks_package, name))
        if other is not None:
            modules.append(other)
    routes = _routes(project)
    schedules, worker_options = _worker_entries(project)
    constants = _module_constants(module)
    added = project.tasks
    generated = set()
    files = project.state.get("files", {})
    if isinstance(files, dict) and project.tasks_file in files:
        generated = {"init"}
    tasks = []
    for source in modules:
        for statement in source.body:
            if not isinstance(statement, cst.FunctionDef):
                continue
            if not _is_task(project.spec.task_shape, statement):
                continue
            name = statement.name.value
            retries, timeout = _task_options(source, statement)
            if name in worker_options:
                retries, timeout = _arq_options(worker_options[name], constants)
            if name in added:
                origin = "add-task"
            elif generated and name in project.spec.scaffold_tasks:
                origin = "init"
            else:
                origin = "you"
            when = schedules.get(name, "")
            if not when and project.spec.schedule_kind == "label":
                when = _label_schedule(source, statement)
            tasks.append(TaskInfo(name, routes.get(name, ""), when, retries, timeout, origin))
    return tasks
