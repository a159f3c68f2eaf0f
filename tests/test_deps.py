"""Dependency edits keep the file's formatting and pick pins that install together."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bgtasks_gen.deps import plan_dependencies
from bgtasks_gen.errors import BadInput
from bgtasks_gen.runners.celery import CELERY_BESIDE_ARQ
from tests.conftest import write_tree

PEP621 = """[project]
name = "shop"
dependencies = [
    # web
    "fastapi>=0.115",
    "uvicorn"  # no trailing comma here
]

[tool.other]
x = 1
"""


def test_pep621_list_keeps_comments_and_order(tmp_path: Path) -> None:
    write_tree(tmp_path, {"pyproject.toml": PEP621})
    edit = plan_dependencies(tmp_path, ["celery[redis]>=5.7,<5.8", "fastapi>=0.100"])
    assert edit.added == ["celery[redis]>=5.7,<5.8"]
    assert edit.new == PEP621.replace(
        '    "uvicorn"  # no trailing comma here\n',
        '    "uvicorn",  # no trailing comma here\n    "celery[redis]>=5.7,<5.8",\n',
    )
    deps = tomllib.loads(edit.new)["project"]["dependencies"]
    assert deps == ["fastapi>=0.115", "uvicorn", "celery[redis]>=5.7,<5.8"]
    assert "fastapi>=0.100" not in edit.new  # already declared: left as it was


def test_inline_list(tmp_path: Path) -> None:
    write_tree(tmp_path, {"pyproject.toml": '[project]\nname = "x"\ndependencies = ["fastapi"]\n'})
    edit = plan_dependencies(tmp_path, ["arq>=0.28,<0.29"])
    assert tomllib.loads(edit.new)["project"]["dependencies"] == ["fastapi", "arq>=0.28,<0.29"]


def test_poetry_table(tmp_path: Path) -> None:
    text = (
        '[tool.poetry.dependencies]\npython = "^3.11"\nfastapi = "^0.115"\n\n'
        "[build-system]\nx = 1\n"
    )
    write_tree(tmp_path, {"pyproject.toml": text, "poetry.lock": ""})
    edit = plan_dependencies(tmp_path, ["celery[redis]>=5.7,<5.8"])
    table = tomllib.loads(edit.new)["tool"]["poetry"]["dependencies"]
    assert table["celery"] == {"extras": ["redis"], "version": ">=5.7,<5.8"}
    assert edit.new.startswith(text.split("\n\n")[0])
    assert any(step.startswith("poetry lock") for step in edit.next_steps)


def test_requirements_txt(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements.txt": "fastapi  # web\nuvicorn"})
    edit = plan_dependencies(tmp_path, ["arq>=0.28,<0.29", "redis[hiredis]>=4.2,<6"])
    assert edit.new == "fastapi  # web\nuvicorn\narq>=0.28,<0.29\nredis[hiredis]>=4.2,<6\n"


def test_celery_beside_arq_gets_the_56_pin(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements.txt": "arq>=0.28\n"})
    edit = plan_dependencies(tmp_path, ["celery[redis]>=5.7,<5.8"])
    assert edit.added == [CELERY_BESIDE_ARQ]
    assert any("redis-py" in note for note in edit.notes)


def test_arq_beside_celery_57_is_refused_with_the_reason(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements.txt": "celery[redis]>=5.7\n"})
    with pytest.raises(BadInput, match="redis-py") as caught:
        plan_dependencies(tmp_path, ["arq>=0.28,<0.29"])
    assert CELERY_BESIDE_ARQ in caught.value.hint
    write_tree(tmp_path, {"requirements.txt": f"{CELERY_BESIDE_ARQ}\n"})
    assert plan_dependencies(tmp_path, ["arq>=0.28,<0.29"]).added == ["arq>=0.28,<0.29"]


def test_no_dependency_file_says_what_to_install(tmp_path: Path) -> None:
    edit = plan_dependencies(tmp_path, ["arq>=0.28,<0.29"])
    assert edit.path is None
    assert "arq>=0.28,<0.29" in edit.notes[-1]


def test_a_redis_below_6_pin_gets_celery_5_6(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements.txt": "fastapi\nredis>=5,<6\n"})
    edit = plan_dependencies(tmp_path, ["celery[redis]>=5.7,<5.8"])
    assert edit.added == [CELERY_BESIDE_ARQ]
    assert any("redis>=5,<6" in note for note in edit.notes)


def test_a_pydantic_1_pin_gets_no_pydantic_settings_2(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements.txt": "fastapi<0.100\npydantic<2\n"})
    edit = plan_dependencies(tmp_path, ["fastapi>=0.110", "pydantic-settings>=2.0"])
    assert "pydantic-settings>=2.0" not in edit.new
    assert any("pydantic 1 has BaseSettings built in" in note for note in edit.notes)


def test_the_list_is_found_from_the_source_folder_up_and_in_a_requirements_folder(
    tmp_path: Path,
) -> None:
    write_tree(
        tmp_path,
        {
            "backend/requirements/base.txt": "fastapi\n",
            "backend/requirements/dev.txt": "-r base.txt\npytest\n",
            "backend/app/__init__.py": "",
        },
    )
    edit = plan_dependencies(tmp_path, ["arq>=0.28,<0.29"], tmp_path / "backend" / "app")
    assert edit.path == "backend/requirements/base.txt"
    assert edit.new == "fastapi\narq>=0.28,<0.29\n"


def test_uvicorn_is_added_when_a_run_file_uses_it(tmp_path: Path) -> None:
    write_tree(tmp_path, {"requirements.txt": "fastapi\n"})
    assert "uvicorn>=0.30" in plan_dependencies(tmp_path, ["arq"], uses_uvicorn=True).added
    write_tree(tmp_path, {"requirements.txt": "fastapi[standard]\n"})
    assert "uvicorn>=0.30" not in plan_dependencies(tmp_path, ["arq"], uses_uvicorn=True).added


def test_a_crlf_pyproject_keeps_its_line_endings(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_bytes(PEP621.replace("\n", "\r\n").encode())
    edit = plan_dependencies(tmp_path, ["arq>=0.28,<0.29"])
    assert edit.new.count("\r\n") == edit.new.count("\n")  # every line ends in CRLF
    assert tomllib.loads(edit.new)["project"]["dependencies"][-1] == "arq>=0.28,<0.29"
