"""`bgtasks check`: is the scaffold still wired into the project, and current?

Each finding says what is wrong, where, and what to do. No finding: exit 0.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from pathlib import Path

import libcst as cst
from libcst.helpers import get_full_name_for_node

from bgtasks_gen import journal
from bgtasks_gen.addtask import Project, load_project
from bgtasks_gen.discovery import Overrides, discover
from bgtasks_gen.errors import BgtasksError
from bgtasks_gen.modules import ModuleIndex
from bgtasks_gen.patch.definitions import definition_names
from bgtasks_gen.plan import Action, read_existing
from bgtasks_gen.scaffold import choose_fields, owned_hashes, plan_update, restore_command


@dataclass(frozen=True)
class Finding:
    problem: str
    where: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _router_included(project: Project, app_path: Path) -> Finding | None:
    info = ModuleIndex(project.root).load(app_path)
    router = f"{project.layout['routes_module']}.{project.spec.router_file}.router"
    aliases = {local for local, target in info.imports.items() if target == router}
    included = {first for _, _, first in info.router_includes}
    if aliases & included:
        return None
    rel = app_path.relative_to(project.root).as_posix()
    return Finding(
        f"the {project.spec.name} router ({router}) is not included in the app",
        rel,
        f"run `bgtasks update` (or add `app.include_router(...)` for {router} by hand)",
    )


def scheduled_names(project: Project) -> list[tuple[str, str]]:
    """(task name, how it is referenced) for every schedule / registration entry."""
    worker = project.worker_file
    text = read_existing(project.root, worker) if worker else None
    if text is None:
        return []
    names: list[tuple[str, str]] = []

    class Visitor(cst.CSTVisitor):
        def visit_DictElement(self, node: cst.DictElement) -> None:
            key = node.key
            if isinstance(key, cst.SimpleString) and ast.literal_eval(key.value) == "task":
                if isinstance(node.value, cst.SimpleString):
                    dotted = str(ast.literal_eval(node.value.value))
                    names.append((dotted.rpartition(".")[2], f"beat entry {dotted!r}"))

        def visit_Call(self, node: cst.Call) -> None:
            callee = get_full_name_for_node(node.func) or ""
            if callee in ("cron", "func") and node.args:
                target = get_full_name_for_node(node.args[0].value) or ""
                if target:
                    names.append((target.rpartition(".")[2], f"{callee}({target})"))

    cst.parse_module(text).visit(Visitor())
    return names


def check_project(root: Path) -> list[Finding]:
    """The findings; raises BadInput when `root` is not a bgtasks project at all."""
    if journal.pending(root):
        # check never writes (CI, pre-commit, read-only checkouts): a half-written change
        # is reported, and the first command that writes finishes or undoes it
        return [
            Finding(journal.UNFINISHED, journal.JOURNAL, f"{journal.FINISH_IT}, then check again")
        ]
    project = load_project(root)
    findings: list[Finding] = []
    for rel in owned_hashes(project.state):
        if not (project.root / rel).is_file():
            findings.append(
                Finding(
                    "a generated file is missing",
                    str(rel),
                    f"run `{restore_command(str(rel))}` to bring it back",
                )
            )
    overrides = Overrides(
        settings_module=str(project.layout.get("settings") or "") or None,
        app_module=str(project.layout.get("app") or "") or None,
    )
    try:
        layout = discover(project.root, overrides)
    except BgtasksError as error:
        return [*findings, Finding(error.message, str(root), error.hint)]

    router = _router_included(project, layout.app.path)
    if router:
        findings.append(router)
    settings_rel = layout.settings.path.relative_to(project.root).as_posix()
    for choice in choose_fields(project.spec, layout):
        if choice.added:
            findings.append(
                Finding(
                    f"settings field {choice.name} is read by the generated code but missing "
                    f"from {layout.settings.class_name}",
                    settings_rel,
                    "run `bgtasks update` to add it back",
                )
            )
    tasks_text = read_existing(project.root, project.tasks_file)
    defined = set(definition_names(tasks_text)) if tasks_text is not None else set()
    for name, how in scheduled_names(project):
        if name not in defined:
            findings.append(
                Finding(
                    f"{how} names task {name!r}, which {project.tasks_file} does not define",
                    project.worker_file or "",
                    "define the task again, or remove the entry",
                )
            )
    findings.extend(_feature_drift(project))
    if not findings:
        findings.extend(_behind_templates(project))
    return findings


def _feature_drift(project: Project) -> list[Finding]:
    """Files of an optional feature that no longer match the project (a queue renamed, the
    broker changed): they are the user's to deploy, so check names them."""
    features = project.layout.get("features", [])
    if not isinstance(features, list) or "k8s" not in features:
        return []
    from bgtasks_gen.feature_files import FOLDERS
    from bgtasks_gen.k8s import k8s_drift

    return [
        Finding(
            problem.partition(": ")[2] or problem,
            problem.partition(": ")[0],
            "run `bgtasks update` to write the manifests again (your other edits are merged)",
        )
        for problem in k8s_drift(project, FOLDERS["k8s"])
    ]


def _behind_templates(project: Project) -> list[Finding]:
    """Would `update` change anything? (Only asked when the wiring is sound.)"""
    try:
        plan = plan_update(project.root, markers=False)
    except BgtasksError as error:
        return [Finding(error.message, str(project.root), error.hint)]
    return [
        Finding(
            "the scaffold is behind the installed templates"
            if change.action is not Action.CONFLICT
            else "the scaffold is behind the installed templates and your edits overlap",
            change.path,
            "run `bgtasks update --dry-run` to see the change, then `bgtasks update`",
        )
        for change in plan.changes
        # bgtasks' own bookkeeping (.bgtasks.toml, .bgtasks/base) follows the real files
        if (change.writes or change.action is Action.CONFLICT)
        and not change.path.startswith(".bgtasks")
    ]
