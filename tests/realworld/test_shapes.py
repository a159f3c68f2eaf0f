"""`init` on each real-world project shape, for every runner: the right app, settings class
and folders are chosen, existing files only gain lines, no new package hides a module,
every import the change adds resolves inside the project, and a second run changes
nothing."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import invoke, is_subsequence, write_tree
from tests.realworld.shapes import SHAPES, Shape

CASES = [(shape, runner) for shape in SHAPES for runner in shape.runners]
IDS = [f"{shape.name}-{runner}" for shape, runner in CASES]


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _import_lines(source: str) -> set[int]:
    """Line numbers that belong to import statements (joined blocks may change there)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def _module_file(root: Path, roots: list[Path], dotted: str) -> Path | None:
    rel = Path(*dotted.split("."))
    for base in roots:
        for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py", base / rel):
            if candidate.exists():
                return candidate
    return None


def _added_imports(old: str | None, new: str, path: Path) -> list[tuple[str, int]]:
    """(absolute module, level) of imports in `new` that `old` does not have."""

    def imports(source: str) -> set[tuple[str, int]]:
        found = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                found.add((node.module or "", node.level))
            elif isinstance(node, ast.Import):
                found.update((alias.name, 0) for alias in node.names)
        return found

    return sorted(imports(new) - (imports(old) if old is not None else set()))


def _scaffold(shape: Shape, runner: str, tmp_path: Path) -> tuple[Path, dict, dict, dict]:
    project = write_tree(tmp_path / "project", shape.files)
    before = _tree(project)
    code, output = invoke("init", str(project), "--runner", runner, "--json")
    assert code == 0, output
    return project, before, _tree(project), json.loads(output)


@pytest.mark.parametrize(("shape", "runner"), CASES, ids=IDS)
def test_init_on_a_real_world_shape(shape: Shape, runner: str, tmp_path: Path) -> None:
    project, before, after, report = _scaffold(shape, runner, tmp_path)
    notes = "\n".join(report["notes"])
    for expected in shape.notes:
        assert expected in notes, notes

    # the decisions, read from the state file every later command builds on
    state = (project / ".bgtasks.toml").read_text()
    assert f'tasks_module = "{shape.tasks_module}"' in state
    assert f'routes_module = "{shape.routes_module}"' in state
    if shape.settings_class:
        assert f'settings = "{shape.settings_class}"' in state
    else:
        assert f'settings = "{shape.tasks_module}.settings:TaskSettings"' in state
    include_file = next(
        rel
        for rel in after
        if rel.endswith(".py")
        and "include_router(" in after[rel]
        and rel.removesuffix(".py")
        .removesuffix("/__init__")
        .replace("/", ".")
        .endswith(shape.include_module)
    )
    assert "_router" in after[include_file] and after[include_file] != before[include_file]
    if (project / "Procfile").exists() and "Procfile" not in before:
        assert f"uvicorn {shape.served}" in (project / "Procfile").read_text()

    # existing files only gain lines (import blocks may be joined)
    for rel, old in before.items():
        new = after[rel]
        if new == old or not rel.endswith(".py"):
            continue
        skipped = _import_lines(old)
        kept = [line for n, line in enumerate(old.splitlines(), 1) if n not in skipped]
        assert is_subsequence(kept, new.splitlines()), f"{rel} lost or changed lines"

    # no new package or module hides one that was there
    for rel in set(after) - set(before):
        path = Path(rel)
        if path.name == "__init__.py":
            assert f"{path.parent.as_posix()}.py" not in before, f"{rel} shadows a module"
        elif path.suffix == ".py":
            assert not any(b.startswith(f"{path.with_suffix('').as_posix()}/") for b in before), (
                f"{rel} is shadowed by a package"
            )

    # every import the change adds resolves inside the project (or is a library)
    roots = [project / shape.source_root] if shape.source_root else [project]
    first_party = {p.name.removesuffix(".py") for p in roots[0].iterdir()}
    for rel, new in after.items():
        if not rel.endswith(".py") or before.get(rel) == new or rel.startswith(".bgtasks/"):
            continue
        for module, level in _added_imports(before.get(rel), new, project / rel):
            if level:
                package = (project / rel).parents[level - 1]
                target = package / Path(*module.split(".")) if module else package
                assert target.with_suffix(".py").exists() or (target / "__init__.py").exists(), (
                    f"{rel}: relative import {'.' * level}{module} does not resolve"
                )
            elif module.split(".")[0] in first_party:
                assert _module_file(project, roots, module), f"{rel}: {module} does not resolve"

    if shape.env_names and (project / "compose.yaml").exists():
        compose = yaml.safe_load((project / "compose.yaml").read_text())
        environment = compose["services"]["web"]["environment"]
        for key, name in shape.env_names.items():
            if (key == "redis_url") == (runner == "arq"):
                assert name in environment, environment

    # a second run is nothing to do
    code, output = invoke("init", str(project), "--runner", runner, "--json")
    assert code == 0, output
    assert json.loads(output)["nothing_to_do"], output


def test_arq_on_a_mounted_sub_app_goes_on_the_app_that_runs_lifespans(tmp_path: Path) -> None:
    """Starlette never runs a mounted sub-app's lifespan, where arq's pool lives: the
    router goes on the served app (as `--app-module shop.main:app` would put it), said in
    a note."""
    shape = next(s for s in SHAPES if s.name == "mounted-api-sub-app")
    project = write_tree(tmp_path / "project", shape.files)
    code, output = invoke("init", str(project), "--runner", "arq")
    assert code == 0, output
    assert "a mounted sub-app whose lifespan" in output
    main = (project / "shop/main.py").read_text()
    assert "app.include_router(arq_tasks_router)" in main
    assert "FastAPI(title=settings.TITLE)" in main  # the router carries the pool's lifespan
    assert "arq_tasks" not in (project / "shop/api.py").read_text()


def test_app_override_selects_by_name_in_a_module_with_two_apps(tmp_path: Path) -> None:
    project = write_tree(
        tmp_path / "project",
        {
            "svc/__init__.py": "",
            "svc/config.py": "from pydantic_settings import BaseSettings\n\n\n"
            "class S(BaseSettings):\n    x: int = 1\n\n\ns = S()\n",
            "svc/apps.py": "from fastapi import FastAPI\n\npublic = FastAPI()\n"
            "internal = FastAPI()\n",
        },
    )
    code, output = invoke("init", str(project), "--runner", "builtin", "--dry-run")
    assert code == 2 and "cannot tell which FastAPI app" in output
    code, output = invoke(
        "init", str(project), "--runner", "builtin", "--app-module", "svc.apps:internal"
    )
    assert code == 0, output
    text = (project / "svc/apps.py").read_text()
    assert "internal.include_router(notifications_router)" in text
    assert "public.include_router" not in text


def test_an_existing_runner_is_named_before_any_settings_question(tmp_path: Path) -> None:
    # a Celery app and an arq worker, and no BaseSettings at all
    project = write_tree(
        tmp_path / "project",
        {
            "svc/__init__.py": "",
            "svc/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
            "svc/worker.py": "from celery import Celery\n\nqueue = Celery('svc')\n",
            "svc/jobs.py": "from arq import cron\n\n\nclass WorkerSettings:\n    functions = []\n",
            "svc/pipeline.py": "import dramatiq\n\n\n@dramatiq.actor\ndef step() -> None:\n"
            "    pass\n",
        },
    )
    before = _tree(project)
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 2 and "already has a celery setup at svc/worker.py:3" in output
    # the hint names a runner this project accepts (not arq: it has one too)
    assert "--runner builtin" in output and "--runner arq" not in output
    assert _tree(project) == before
    code, output = invoke("init", str(project), "--runner", "builtin", "--json")
    assert code == 0, output
    notes = "\n".join(json.loads(output)["notes"])
    assert "dramatiq is already here (svc/pipeline.py)" in notes
    assert "parquet" not in notes


def test_a_word_containing_arq_is_not_an_arq_setup(tmp_path: Path) -> None:
    project = write_tree(
        tmp_path / "project",
        {
            "svc/__init__.py": "",
            "svc/main.py": "import parquet_tools\nfrom fastapi import FastAPI\n\napp = FastAPI()\n",
            "svc/export.py": "class WorkerSettings:\n    target = 'data.parquet'  # arq? no\n",
        },
    )
    code, output = invoke("init", str(project), "--runner", "arq", "--dry-run")
    assert code == 0, output


def test_a_fastapi_without_router_lifespans_gets_the_lifespan_on_the_app(tmp_path: Path) -> None:
    shape = next(s for s in SHAPES if s.name == "single-module")
    project = write_tree(
        tmp_path / "project", {**shape.files, "requirements.txt": "fastapi==0.109.2\n"}
    )
    code, output = invoke("init", str(project), "--runner", "arq", "--json")
    assert code == 0, output
    notes = "\n".join(json.loads(output)["notes"])
    assert "pinned below 0.112.2" in notes
    main = (project / "main.py").read_text()
    assert "FastAPI(title=settings.name, lifespan=bgtasks_lifespan)" in main
    assert "lifespan=lifespan" not in (project / "tasks/api/arq_tasks.py").read_text()


def test_a_symlinked_routes_folder_keeps_its_package_name(tmp_path: Path) -> None:
    project = write_tree(
        tmp_path / "project",
        {
            "app/__init__.py": "",
            "app/config.py": "from pydantic_settings import BaseSettings\n\n\n"
            "class S(BaseSettings):\n    x: int = 1\n\n\ns = S()\n",
            "app/api/__init__.py": "",
            "app/shared_routes/__init__.py": "",
            "app/shared_routes/items.py": "from fastapi import APIRouter\n\nrouter = APIRouter()\n",
            "app/main.py": "from fastapi import FastAPI\n\nfrom app.api.routes import items\n\n"
            "app = FastAPI()\napp.include_router(items.router)\n",
        },
    )
    (project / "app/api/routes").symlink_to(project / "app/shared_routes")
    code, output = invoke("init", str(project), "--runner", "builtin")
    assert code == 0, output
    assert not (project / "routes").exists()  # no new top-level package
    assert (project / "app/shared_routes/notifications.py").is_file()  # through the link
    assert (
        "from app.api.routes.notifications import router" in (project / "app/main.py").read_text()
    )


@pytest.mark.parametrize(
    ("tasks_module", "reason"),
    [
        ("app.main", "is an existing module"),
        ("celery", "library the app imports"),
        ("json", "standard library"),
        ("app.api", "existing package"),
        ("app.my-tasks", "not a dotted module name"),
    ],
)
def test_a_tasks_module_that_would_break_the_app_is_refused(
    tmp_path: Path, tasks_module: str, reason: str
) -> None:
    shape = next(s for s in SHAPES if s.name == "router-placement")
    files = {**shape.files, "app/api/__init__.py": ""}
    files["pyproject.toml"] = f'[tool.bgtasks]\ntasks-module = "{tasks_module}"\n'
    project = write_tree(tmp_path / "project", files)
    before = _tree(project)
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 2 and reason in output.replace("\n", " "), output
    assert _tree(project) == before
