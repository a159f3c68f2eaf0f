"""The project's dependency truth: poetry constraints keep their meaning, locks decide."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from bgtasks_gen.dependency_truth import (
    lowest_allowed,
    poetry_requirement,
    poetry_specifier,
    read_dependency_truth,
)
from bgtasks_gen.deps import caps_below, plan_dependencies
from bgtasks_gen.runners.taskiq import SPEC as TASKIQ
from bgtasks_gen.runners.taskiq import TASKIQ_FASTAPI_BEFORE_0_133
from bgtasks_gen.scaffold import router_lifespans
from tests.conftest import EXAMPLES, REPO, write_tree


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("^0.103.2", ">=0.103.2,<0.104"),
        ("^1.2.3", ">=1.2.3,<2"),
        ("^1.2", ">=1.2,<2"),
        ("^0", ">=0,<1"),
        ("^0.0", ">=0.0,<0.1"),
        ("^0.0.3", ">=0.0.3,<0.0.4"),
        ("~1.2.3", ">=1.2.3,<1.3"),
        ("~1.2", ">=1.2,<1.3"),
        ("~1", ">=1,<2"),
        ("*", ""),
        ("", ""),
        ("1.2.3", "==1.2.3"),
        ("=1.2.3", "==1.2.3"),
        ("1.2.*", "==1.2.*"),
        ("~=0.100.0", "~=0.100.0"),
        (">= 1.2, < 1.5", ">=1.2,<1.5"),
        (">=1.2 <1.5", ">=1.2,<1.5"),
        (">=0.100,!=0.101.0", ">=0.100,!=0.101.0"),
        # a union: decisions hold for the alternative allowing the oldest release
        ("^0.115 || ^0.110", ">=0.110,<0.111"),
    ],
)
def test_poetry_constraints_become_pep440_specifier_sets(constraint: str, expected: str) -> None:
    assert poetry_specifier(constraint) == SpecifierSet(expected)


def test_a_poetry_table_entry_keeps_its_version_and_extras() -> None:
    entry = poetry_requirement("fastapi", {"version": "^0.110", "extras": ["standard"]})
    requirement = Requirement(entry)
    assert requirement.name == "fastapi"
    assert requirement.extras == {"standard"}
    assert requirement.specifier == SpecifierSet(">=0.110,<0.111")
    assert Requirement(poetry_requirement("app", {"path": "../app"})).specifier == SpecifierSet()
    assert Requirement(poetry_requirement("uvicorn", "*")).specifier == SpecifierSet()


@pytest.mark.parametrize(
    ("specifier", "lowest"),
    [
        (">=0.112.1", "0.112.1"),
        (">=0.100,>=0.112.1,<1", "0.112.1"),
        ("~=0.110.0", "0.110.0"),
        ("==0.109.*", "0.109"),
        (">0.112.1", "0.112.2"),
        ("<0.110", None),
        ("", None),
    ],
)
def test_the_lowest_allowed_version(specifier: str, lowest: str | None) -> None:
    found = lowest_allowed(SpecifierSet(specifier))
    assert found == (Version(lowest) if lowest else None)


@pytest.mark.parametrize(
    ("requirement", "version", "capped"),
    [
        ("fastapi<0.110", "0.112.2", True),
        ("fastapi<=0.112.2", "0.112.2", False),
        ("fastapi==0.109.2", "0.112.2", True),
        ("fastapi~=0.100.0", "0.112", True),
        ("fastapi~=0.100", "0.112", False),
        ("fastapi==0.100.*", "0.112", True),
        ("fastapi^0.100", "0.112", True),
        ("fastapi>=0.115", "0.112.2", False),
        ("fastapi>=0.100,<1", "0.112.2", False),
        ("celery>=5.6,<5.7", "5.7", True),
        ("pydantic<2", "2", True),
    ],
)
def test_caps_below_asks_packaging(requirement: str, version: str, capped: bool) -> None:
    assert caps_below(requirement, version) is capped


PEP621 = '[project]\nname = "shop"\ndependencies = [\n    "{fastapi}",\n    "uvicorn",\n]\n'


def _pep621(fastapi: str) -> str:
    return PEP621.replace("{fastapi}", fastapi)


def _toml_lock(version: str, extra: str = "") -> str:
    return f'version = 1\n\n[[package]]\nname = "fastapi"\nversion = "{version}"\n{extra}'


def test_a_poetry_caret_keeps_its_upper_bound_and_its_floor(tmp_path: Path) -> None:
    text = (
        '[tool.poetry.dependencies]\npython = "^3.11"\nfastapi = "^0.103.2"\n'
        'uvicorn = {version = "^0.22.0", extras = ["standard"]}\n'
    )
    write_tree(tmp_path, {"pyproject.toml": text})
    truth = read_dependency_truth(tmp_path)
    fastapi = truth.get("fastapi")
    assert fastapi is not None
    assert fastapi.constraint == SpecifierSet(">=0.103.2,<0.104")
    assert fastapi.constraint_from == ("pyproject.toml",)
    assert fastapi.deciding == Version("0.103.2")
    assert router_lifespans(truth) is False  # 0.103 predates router lifespans
    uvicorn = truth.get("uvicorn")
    assert uvicorn is not None and uvicorn.constraint == SpecifierSet(">=0.22.0,<0.23")


def test_a_uv_lock_below_router_lifespans_decides_though_the_constraint_allows_more(
    tmp_path: Path,
) -> None:
    write_tree(
        tmp_path, {"pyproject.toml": _pep621("fastapi>=0.112.1"), "uv.lock": _toml_lock("0.112.1")}
    )
    truth = read_dependency_truth(tmp_path)
    fastapi = truth.get("fastapi")
    assert fastapi is not None
    assert (fastapi.locked, fastapi.locked_from) == (Version("0.112.1"), "uv.lock")
    assert router_lifespans(truth) is False
    assert truth.evidence("fastapi") == "uv.lock pins fastapi 0.112.1"


def test_a_lock_above_the_floor_wins_over_the_lowest_allowed(tmp_path: Path) -> None:
    write_tree(
        tmp_path, {"pyproject.toml": _pep621("fastapi>=0.100"), "uv.lock": _toml_lock("0.115.6")}
    )
    assert router_lifespans(read_dependency_truth(tmp_path)) is True


@pytest.mark.parametrize("lock", ["poetry.lock", "pdm.lock"])
def test_poetry_and_pdm_locks_are_read(tmp_path: Path, lock: str) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": _pep621("fastapi>=0.100"),
            lock: '[[package]]\nname = "FastAPI"\nversion = "0.110.3"\n'
            'description = "web"\n\n[[package]]\nname = "starlette"\nversion = "0.37.2"\n',
        },
    )
    truth = read_dependency_truth(tmp_path)
    fastapi = truth.get("fastapi")
    assert fastapi is not None and (fastapi.locked, fastapi.locked_from) == (
        Version("0.110.3"),
        lock,
    )
    assert router_lifespans(truth) is False
    starlette = truth.get("starlette")  # locked only, not declared: still known
    assert starlette is not None and starlette.locked == Version("0.37.2")


def test_uv_lock_comes_before_poetry_lock(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": _pep621("fastapi"),
            "poetry.lock": _toml_lock("0.110.0"),
            "uv.lock": _toml_lock("0.120.0"),
        },
    )
    fastapi = read_dependency_truth(tmp_path).get("fastapi")
    assert fastapi is not None and fastapi.locked_from == "uv.lock"
    assert fastapi.locked == Version("0.120.0")


def test_a_pinned_requirements_file_is_a_lock(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "pyproject.toml": _pep621("fastapi>=0.100"),
            "requirements.txt": "fastapi==0.111.0 \\\n    --hash=sha256:abc\nuvicorn==0.30.1\n",
        },
    )
    truth = read_dependency_truth(tmp_path)
    fastapi = truth.get("fastapi")
    assert fastapi is not None
    assert (fastapi.locked, fastapi.locked_from) == (Version("0.111.0"), "requirements.txt")
    assert router_lifespans(truth) is False


@pytest.mark.parametrize(
    ("declared", "lifespans"),
    [
        ("fastapi>=0.112.1", False),  # the oldest allowed lacks them
        ("fastapi>=0.112.2", True),
        ("fastapi", True),  # nothing said: a fresh install takes the newest
        ("fastapi<0.110", False),
        ("fastapi[standard]>=0.115,<1", True),
    ],
)
def test_without_a_lock_the_lowest_allowed_version_decides(
    tmp_path: Path, declared: str, lifespans: bool
) -> None:
    write_tree(tmp_path, {"requirements.txt": f"{declared}\nuvicorn\n"})
    assert router_lifespans(read_dependency_truth(tmp_path)) is lifespans


@pytest.mark.parametrize(
    ("locked", "expected"),
    [("0.120.0", TASKIQ_FASTAPI_BEFORE_0_133), ("0.135.1", "taskiq-fastapi>=0.5,<0.6")],
)
def test_taskiq_fastapi_follows_the_locked_fastapi(
    tmp_path: Path, locked: str, expected: str
) -> None:
    write_tree(
        tmp_path, {"pyproject.toml": _pep621("fastapi>=0.115"), "uv.lock": _toml_lock(locked)}
    )
    edit = plan_dependencies(tmp_path, list(TASKIQ.dependencies))
    fastapi_pins = [r for r in edit.added if r.startswith("taskiq-fastapi")]
    assert fastapi_pins == [expected]
    if expected == TASKIQ_FASTAPI_BEFORE_0_133:
        assert any(f"uv.lock pins fastapi {locked}" in note for note in edit.notes)


def test_taskiq_fastapi_follows_the_oldest_allowed_fastapi_without_a_lock(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements.txt": "fastapi>=0.115\n"})
    edit = plan_dependencies(tmp_path, list(TASKIQ.dependencies))
    assert TASKIQ_FASTAPI_BEFORE_0_133 in edit.added
    assert any("allows 0.115 at the oldest" in note for note in edit.notes)
    write_tree(tmp_path, {"requirements.txt": "fastapi>=0.133\n"})
    assert (
        "taskiq-fastapi>=0.5,<0.6"
        in plan_dependencies(tmp_path, ["taskiq-fastapi>=0.5,<0.6"]).added
    )


def test_init_on_a_project_locked_below_router_lifespans_wires_the_app_lifespan(
    tmp_path: Path,
) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"fastapi>=0.115"', '"fastapi>=0.112.1"'))
    (project / "uv.lock").write_text(_toml_lock("0.112.1"))
    bgtasks = str(REPO / ".venv" / "bin" / "bgtasks")

    def run(*flags: str) -> str:
        args = [bgtasks, "init", str(project), "--runner", "arq", "--dry-run", *flags]
        done = subprocess.run(
            args, capture_output=True, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    summary = json.loads(run("--json"))
    notes = "\n".join(summary["notes"])
    assert "uv.lock pins fastapi 0.112.1" in notes
    assert "lifespan is added to the app's FastAPI(...) call" in notes
    actions = {f["path"]: f["action"] for f in summary["files"]}
    assert actions["app/main.py"] == "patch"
    diff = run()
    # the fallback: the pool's lifespan on the app, none on the router
    assert "+app = FastAPI(title=settings.PROJECT_NAME, lifespan=bgtasks_lifespan)" in diff
    assert "+from app.tasks.pool import lifespan as bgtasks_lifespan" in diff
    assert "+    lifespan=lifespan," not in diff
