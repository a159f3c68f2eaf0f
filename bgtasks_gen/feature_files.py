"""The files of the optional features (features.py), read off the project as the plan in
hand would leave it.

A feature's files depend on what the rest of the plan writes (the generated modules'
queue names, the settings fields it adds, the state's layout), none of which is on disk
before the plan is written, and the plan is written all or nothing. So the readers run
against a scratch copy of the project with the plan applied: the project's own text
files, never its environments or version control.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from bgtasks_gen.plan import FileChange
from bgtasks_gen.state import STATE_FILE

# never read by a feature, and the largest folders a project has
SKIPPED = (
    *(".git", ".hg", ".venv", "venv", ".venvs", "node_modules", "__pycache__"),
    *(".mypy_cache", ".ruff_cache", ".pytest_cache", ".tox", ".nox", ".bgtasks"),
)
# where each feature writes, relative to the project root
FOLDERS = {"k8s": "deploy/k8s", "metrics": "deploy/grafana"}
# a feature made of the runner's own templates: the name its module ends with
MODULE_SUFFIXES = {
    "dashboard": "_dashboard.py",
    "metrics": "_metrics.py",
    "otel": "/tracing.py",
    "sentry": "/error_reporting.py",
}


def feature_files(
    root: Path, changes: Iterable[FileChange], state_text: str, features: Iterable[str]
) -> dict[str, str]:
    """Project-relative path -> text of every file the chosen features generate."""
    chosen = [name for name in features if name in FOLDERS]
    if not chosen:
        return {}
    with tempfile.TemporaryDirectory(prefix="bgtasks-plan-") as scratch:
        # the same folder name: a project named by its folder keeps its name
        copy = Path(scratch) / root.name
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(*SKIPPED), symlinks=True)
        for change in changes:
            target = copy / change.path
            if change.removes:
                target.unlink(missing_ok=True)
            elif change.new is not None and change.writes:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(change.new, encoding="utf-8")
        (copy / STATE_FILE).write_text(state_text, encoding="utf-8")
        return _render(copy, chosen)


def _render(copy: Path, chosen: list[str]) -> dict[str, str]:
    from bgtasks_gen.addtask import load_project

    project = load_project(copy)
    files: dict[str, str] = {}
    if "k8s" in chosen:
        from bgtasks_gen.k8s import k8s_files

        files.update(k8s_files(project, FOLDERS["k8s"]))
    if "metrics" in chosen:
        from bgtasks_gen.grafana import dashboard_json

        files[f"{FOLDERS['metrics']}/bgtasks-tasks.json"] = dashboard_json(project.spec.name)
    return files


def owned_feature_files(owned: Iterable[str], feature: str) -> list[str]:
    """The recorded generated files a feature wrote (what `--without` takes out): those
    in its folder, or for a feature made of the runner's templates (the dashboard), its
    module (`<runner>_dashboard.py`), which the runner's render now leaves out."""
    found = set(owned_folder_files(owned, feature))
    if feature in MODULE_SUFFIXES:
        suffix = MODULE_SUFFIXES[feature]
        found.update(rel for rel in owned if rel.endswith(suffix) and "/" in rel)
    return sorted(found)


def owned_folder_files(owned: Iterable[str], feature: str) -> list[str]:
    """The recorded generated files in the feature's own folder (none without one)."""
    if feature not in FOLDERS:
        return []
    folder = FOLDERS[feature] + "/"
    return sorted(rel for rel in owned if rel.startswith(folder))
