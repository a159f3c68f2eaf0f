"""The generated code meets the project's own tools: its ruff style, its mypy configuration."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from bgtasks_gen.mypy_config import plan_mypy_override
from bgtasks_gen.ruff_style import ProjectStyle, find_ruff
from bgtasks_gen.scaffold import plan_init

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _own_ruff() -> str:
    """bgtasks' own ruff: a dependency, so always there."""
    found = find_ruff({})
    assert found is not None
    return found.path


def _overrides(text: str) -> list[dict[str, object]]:
    overrides = tomllib.loads(text)["tool"]["mypy"]["overrides"]
    assert isinstance(overrides, list)
    return overrides


def test_an_override_is_appended_to_the_projects_mypy_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.mypy]\nstrict = true\n'
    )
    override = plan_mypy_override(tmp_path, ("celery",))
    assert override is not None and override.path == "pyproject.toml"
    assert _overrides(override.new) == [{"module": ["celery.*"], "ignore_missing_imports": True}]
    assert override.new.startswith(override.old)


def test_the_override_starts_from_what_the_plan_already_edits(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.mypy]\nstrict = true\n")
    edited = {"pyproject.toml": '[project]\ndependencies = ["celery"]\n\n[tool.mypy]\n'}
    override = plan_mypy_override(tmp_path, ("celery",), edited)
    assert override is not None
    assert override.old == edited["pyproject.toml"]
    assert tomllib.loads(override.new)["project"]["dependencies"] == ["celery"]


@pytest.mark.parametrize(
    "config",
    [
        "[tool.mypy]\nignore_missing_imports = true\n",
        '[tool.mypy]\n\n[[tool.mypy.overrides]]\nmodule = "celery.*"\n'
        "ignore_missing_imports = true\n",
        "[tool.ruff]\nline-length = 100\n",  # no mypy configuration at all
    ],
)
def test_nothing_is_added_when_mypy_already_accepts_celery_or_is_not_configured(
    tmp_path: Path, config: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(config)
    assert plan_mypy_override(tmp_path, ("celery",)) is None


def test_inline_overrides_cannot_take_a_table_so_the_user_is_told(tmp_path: Path) -> None:
    text = '[tool.mypy]\noverrides = [{module = "x.*", ignore_errors = true}]\n'
    (tmp_path / "pyproject.toml").write_text(text)
    override = plan_mypy_override(tmp_path, ("celery",))
    assert override is not None
    assert override.new == text and "celery" in override.note


@pytest.mark.parametrize("name,main", [("mypy.ini", "mypy"), ("setup.cfg", "mypy")])
def test_ini_style_configurations_get_a_module_section(
    tmp_path: Path, name: str, main: str
) -> None:
    (tmp_path / name).write_text(f"[{main}]\nstrict = True\n")
    # mypy reads mypy.ini before pyproject.toml, and pyproject.toml before setup.cfg
    pyproject = "[tool.mypy]\nstrict = true\n" if name == "mypy.ini" else "[project]\n"
    (tmp_path / "pyproject.toml").write_text(pyproject)
    override = plan_mypy_override(tmp_path, ("celery",))
    assert override is not None and override.path == name
    parser = configparser.ConfigParser()
    parser.read_string(override.new)
    assert parser.getboolean(f"{main}-celery.*", "ignore_missing_imports")


def test_without_a_ruff_configuration_the_code_is_left_as_rendered(tmp_path: Path) -> None:
    style = ProjectStyle(tmp_path)
    assert not style.active
    assert style.apply("a.py", "x = 'a'\n") == "x = 'a'\n"


def test_the_projects_ruff_style_is_applied_in_memory(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.ruff]\nline-length = 120\n[tool.ruff.format]\nquote-style = "single"\n'
        '[tool.ruff.lint]\nselect = ["F", "I", "UP"]\n'
    )
    style = ProjectStyle(tmp_path)
    source = 'import sys\nimport os\nfrom typing import Optional\nx: Optional[int] = "a"\n'
    styled = style.apply("pkg/mod.py", source + "print(os,\n  sys)\n")
    assert styled == "import os\nimport sys\n\nx: int | None = 'a'\nprint(os, sys)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml"]  # nothing written


def test_init_writes_code_that_the_projects_own_ruff_and_mypy_settings_accept(
    tmp_path: Path,
) -> None:
    project = tmp_path / "shop"
    shutil.copytree(EXAMPLES / "layered", project)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + '\n[tool.ruff]\nline-length = 110\n\n[tool.ruff.format]\nquote-style = "single"\n'
        + "\n[tool.mypy]\nstrict = true\n"
    )
    plan = plan_init(project, "celery")
    written = {c.path: c.new for c in plan.writes}
    assert "[[tool.mypy.overrides]]" in written["pyproject.toml"]
    assert any("mypy override for celery" in note for note in plan.notes)
    (project / "app/core/config.py").write_text(
        (project / "app/core/config.py").read_text().replace('"', "'").replace("'''", '"""')
    )
    plan = plan_init(project, "celery")
    written = {c.path: c.new for c in plan.writes}
    modules = [p for p in written if p.endswith(".py")]
    assert "app/tasks/celery_app.py" in modules and "app/core/config.py" in modules
    for rel in modules:
        check = subprocess.run(
            [_own_ruff(), "format", "--check", "--stdin-filename", str(project / rel), "-"],
            input=written[rel],
            capture_output=True,
            text=True,
            cwd=project,
            check=False,
        )
        assert check.returncode == 0, (rel, check.stdout, check.stderr)
    # the user's settings module was in the project's style already: it stays so
    config = written["app/core/config.py"]
    assert "CELERY_BROKER_URL: str = 'redis://localhost:6379/0'" in config, config


@pytest.mark.parametrize(
    "config",
    [
        "[mypy]\nignore_missing_imports = True\n",
        "[mypy]\nstrict = True\n\n[mypy-kombu.*,celery.*]\nignore_missing_imports = True\n",
        "[mypy]\n\n[mypy-*]\nignore_missing_imports = True\n",
    ],
)
def test_nothing_is_added_when_an_ini_configuration_already_accepts_celery(
    tmp_path: Path, config: str
) -> None:
    (tmp_path / "mypy.ini").write_text(config)
    assert plan_mypy_override(tmp_path, ("celery",)) is None
