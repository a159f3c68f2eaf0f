"""Values read from the project reach generated code only as literals; names only checked.

Hostile text (quotes, backslashes, line breaks, NUL, U+2028, letters Python folds to ASCII
in identifiers, template syntax) given as a value must come back out of the generated
code as exactly that text, inside a literal; given as a name, it must be refused (exit 2,
nothing written).
"""

from __future__ import annotations

import ast
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libcst as cst
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bgtasks_gen.discovery import ProjectLayout, discover
from bgtasks_gen.errors import BadInput, PatchError
from bgtasks_gen.patch._common import add_import
from bgtasks_gen.patch.app_router import include_router
from bgtasks_gen.patch.settings_fields import NewField, add_settings_fields
from bgtasks_gen.render import render_runner
from bgtasks_gen.runners import get_runner
from bgtasks_gen.scaffold import choose_fields, template_context
from bgtasks_gen.template_filters import import_order, is_identifier, python_literal, python_text
from tests.conftest import EXAMPLES, invoke, tree_hashes

# `os` and `system` in mathematical sans-serif letters: Python reads them as `os` and
# `system` in an identifier, and str.upper() leaves them alone
MATH_OS = "\U0001d5c8\U0001d5cc"
HOSTILE = [
    'X"+__import__("os").system("touch /tmp/pwn")+"',
    "X'+__import__('os').system('touch /tmp/pwn')+'",
    f'X"+__import__("{MATH_OS}")+"',
    "ｏｓ",  # fullwidth: NFKC folds it to `os`
    '"""',
    "'''",
    "back\\slash\\",
    "line\nbreak\r\n",
    "nul\x00",
    "sep\u2028arator\u2029",
    "{{ runner }}",
    "{% raw %}%}",
    "{__import__}",
    "",
]
hostile_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


def _reads_back(text: str) -> None:
    literal = python_literal(text)
    assert isinstance(cst.parse_expression(literal), cst.SimpleString)  # one token
    assert ast.literal_eval(literal) == text
    for quotes in ('"', '"""'):
        inside = f"{quotes}{python_text(text)}{quotes}"
        assert isinstance(cst.parse_expression(inside), cst.SimpleString)
        assert ast.literal_eval(inside) == text


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_literal_reads_back_as_exactly_the_text(text: str) -> None:
    _reads_back(text)


@given(text=hostile_text)
def test_any_literal_reads_back_as_exactly_the_text(text: str) -> None:
    _reads_back(text)


def test_plain_values_keep_the_style_the_templates_are_written_in() -> None:
    # ruff's default style: double quotes, unless that would need more escapes
    assert python_literal("app.tasks") == '"app.tasks"'
    assert python_literal('say "hi"') == "'say \"hi\"'"
    assert python_literal(True) == "True" and python_literal(3) == "3"
    assert python_literal(None) == "None" and python_literal(0.5) == "0.5"
    with pytest.raises(TypeError):
        python_literal(float("nan"))


@pytest.mark.parametrize(
    ("name", "plain"),
    [("SMTP_HOST", True), ("_x1", True), ("ｏｓ", False), ("𝗈𝗌", False), ("class", False)]
    + [("1x", False), ("a-b", False), ("a b", False), ("", False), ("é", False)],
)
def test_only_ascii_names_that_read_back_as_themselves_are_names(name: str, plain: bool) -> None:
    assert is_identifier(name) is plain


# --- rendering every runner's templates with hostile values ------------------------------


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> ProjectLayout:
    project = tmp_path_factory.mktemp("escaping") / "layered"
    shutil.copytree(EXAMPLES / "layered", project)
    return discover(project)


def _context(runner: str, layout: ProjectLayout) -> dict[str, Any]:
    spec = get_runner(runner)
    context = template_context(spec, layout, choose_fields(spec, layout), spec.brokers[0])
    context["api_shape"] = ""
    return context


def _modules(files: dict[str, str]) -> Iterator[tuple[str, ast.Module]]:
    for path, text in files.items():
        if path.endswith(".py"):
            cst.parse_module(text)  # libcst reads it (what the patch steps need) ...
            yield path, ast.parse(text)  # ... and so does Python


def _calls(files: dict[str, str]) -> set[str]:
    """Every function the generated code calls, as written: injected code would add one."""
    return {
        ast.unparse(node.func)
        for _, tree in _modules(files)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }


def _strings(files: dict[str, str]) -> list[str]:
    return [
        node.value
        for _, tree in _modules(files)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


_BASELINE: dict[str, set[str]] = {}


@pytest.mark.parametrize("runner", ["celery", "arq", "builtin", "taskiq"])
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@example(prefix=HOSTILE[0])
@example(prefix=HOSTILE[2] + HOSTILE[4] + HOSTILE[7])
@example(prefix=HOSTILE[8] + HOSTILE[9] + HOSTILE[10] + HOSTILE[11] + HOSTILE[6])
@given(prefix=hostile_text)
def test_hostile_values_stay_literals_in_every_generated_module(
    runner: str, prefix: str, layered: ProjectLayout
) -> None:
    context = _context(runner, layered)
    if runner not in _BASELINE:
        _BASELINE[runner] = _calls(render_runner(get_runner(runner), context))
    # what an env_prefix that discovery had let through would give every variable
    context["env_names"] = {key: f"{prefix}{key.upper()}" for key in context["env_names"]}
    served = "".join(prefix.split()) + "x:app"  # the run target, without its options
    context["app_target"] = f"{served} --app-dir src"

    files = render_runner(get_runner(runner), context)

    assert _calls(files) == _BASELINE[runner]
    strings = _strings(files)
    token, anonymous = (
        context["env_names"][k] for k in ("bgtasks_api_token", "bgtasks_allow_anonymous")
    )
    assert any(token in text for text in strings), "the token's variable, in a docstring"
    assert any(text.startswith(f"{anonymous} is on: ") for text in strings)
    if runner == "taskiq":
        (init,) = [
            node
            for _, tree in _modules(files)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "taskiq_fastapi.init"
        ]
        assert ast.literal_eval(init.args[1]) == served


# --- names: refused where they are read --------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"tasks_module": "app.ｔasks"}, "tasks module"),
        ({"routes_module": "app.api.class"}, "routes module"),
        ({"package": "ap𝗉"}, "package"),
    ],
)
def test_a_module_name_that_is_not_plain_is_refused(
    layered: ProjectLayout, change: dict[str, str], named: str
) -> None:
    layout = dataclasses.replace(layered, **change)
    with pytest.raises(BadInput) as refused:
        _context("celery", layout)
    assert (
        named in refused.value.message
        and repr(next(iter(change.values()))) in refused.value.message
    )


@pytest.mark.parametrize(
    "change",
    [
        {"access_name": "ｓettings"},
        {"class_name": "Set tings"},
        {"access_module": "app.core.ｃonfig"},
    ],
)
def test_a_settings_name_that_is_not_plain_is_refused(
    layered: ProjectLayout, change: dict[str, str]
) -> None:
    layout = dataclasses.replace(layered, settings=dataclasses.replace(layered.settings, **change))
    with pytest.raises(BadInput) as refused:
        _context("arq", layout)
    assert "app/core/config.py" in refused.value.message


def test_an_app_name_that_is_not_plain_is_refused(layered: ProjectLayout) -> None:
    app = dataclasses.replace(layered.app, app_var="ａpp", import_name="")
    with pytest.raises(BadInput) as refused:
        _context("builtin", dataclasses.replace(layered, app=app))
    assert "'ａpp'" in refused.value.message and "app/main.py" in refused.value.message


def _with_env_prefix(project: Path, prefix: str) -> None:
    config = project / "app/core/config.py"
    text = config.read_text(encoding="utf-8")
    given = 'SettingsConfigDict(env_file=".env", extra="ignore")'
    assert given in text
    # case_sensitive: the prefix is not upper-cased on its way into the variable names
    hostile = f"SettingsConfigDict(env_file='.env', case_sensitive=True, env_prefix={prefix!r})"
    config.write_text(text.replace(given, hostile), encoding="utf-8")


@pytest.mark.parametrize(
    "prefix",
    [
        'X"+__import__("os").system("touch /tmp/pwn")+"',
        '"+__𝗂𝗆𝗉𝗈𝗋𝗍__("𝗈𝗌").𝗌𝗒𝗌𝗍𝖾𝗆("touch /tmp/pwn")+"',
        "APP-",
        "1_",
    ],
)
def test_init_refuses_an_env_prefix_that_makes_no_variable_name(example: Any, prefix: str) -> None:
    project = example("layered")
    _with_env_prefix(project, prefix)
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 2, output
    assert "env_prefix" in output and "app/core/config.py" in output
    assert tree_hashes(project) == before


def test_init_takes_a_plain_env_prefix_into_every_variable_name(example: Any) -> None:
    project = example("layered")
    _with_env_prefix(project, "SHOP_")
    code, output = invoke("init", str(project), "--runner", "celery")
    assert code == 0, output
    access = (project / "app/api/v1/routes/tasks.py").read_text(encoding="utf-8")
    assert '"SHOP_BGTASKS_ALLOW_ANONYMOUS is on: the task routes accept "' in access


def test_init_refuses_a_recorded_routes_module_that_is_not_plain(example: Any) -> None:
    project = example("layered")
    assert invoke("init", str(project), "--runner", "arq")[0] == 0
    state = project / ".bgtasks.toml"
    recorded = 'routes_module = "app.api.v1.routes"'
    assert recorded in state.read_text(encoding="utf-8")
    state.write_text(
        state.read_text(encoding="utf-8").replace(recorded, 'routes_module = "app.api.ｖ1.routes"'),
        encoding="utf-8",
    )
    before = tree_hashes(project)
    code, output = invoke("init", str(project), "--runner", "arq")
    assert code == 2, output
    assert "'app.api.ｖ1.routes'" in output and ".bgtasks.toml" in output
    assert tree_hashes(project) == before


def test_add_task_refuses_a_state_file_whose_module_is_not_plain(example: Any) -> None:
    project = example("layered")
    assert invoke("init", str(project), "--runner", "celery")[0] == 0
    state = project / ".bgtasks.toml"
    state.write_text(
        state.read_text(encoding="utf-8").replace(
            'tasks_module = "app.tasks"', 'tasks_module = "app.ｔasks"'
        ),
        encoding="utf-8",
    )
    before = tree_hashes(project)
    code, output = invoke("add-task", "resize_image", "-p", str(project))
    assert code == 2, output
    assert ".bgtasks.toml" in output and "tasks_module" in output
    assert tree_hashes(project) == before


# --- patches build nodes: nothing but one expression rides along -------------------------

APP = "from fastapi import FastAPI\n\napp = FastAPI()\napp.include_router(items)\n"


def test_an_include_keyword_value_is_one_expression_or_refused() -> None:
    smuggled = '"/v1"); import os; os.system("touch /tmp/pwn"); ("'
    with pytest.raises(PatchError):
        include_router(
            APP,
            app_var="app",
            factory=None,
            import_module="app.api.routes.tasks",
            alias="tasks_router",
            keywords=(("prefix", smuggled),),
        )


def test_an_include_keyword_value_is_copied_as_the_expression_it_is() -> None:
    patched = include_router(
        APP,
        app_var="app",
        factory=None,
        import_module="app.api.routes.tasks",
        alias="tasks_router",
        keywords=(("prefix", "settings.API_V1_STR"),),
    )
    assert "app.include_router(tasks_router, prefix=settings.API_V1_STR)\n" in patched


@pytest.mark.parametrize(
    ("module", "name", "alias"),
    [("os; import sys", "x", None), ("app.tasks", "ｏｓ", None), ("app.tasks", "router", "a as b")],
)
def test_an_import_is_built_from_plain_names_only(
    module: str, name: str, alias: str | None
) -> None:
    with pytest.raises(PatchError):
        add_import(cst.parse_module("import os\n"), module, name, alias)


def test_a_settings_field_default_is_one_expression_or_refused() -> None:
    source = "class Settings(BaseSettings):\n    X: int = 1\n"
    smuggled = NewField("SMTP_HOST", "str", '"localhost"\nimport os')
    with pytest.raises(PatchError):
        add_settings_fields(source, "Settings", [smuggled], "Background tasks")
    with pytest.raises(PatchError):
        add_settings_fields(source, "Settings", [NewField("ｏｓ", "str", '""')], "Background tasks")


def test_import_order_sorts_statements_of_one_module_by_their_first_name() -> None:
    """Ruff keeps `from m import a as b` apart from `from m import (c, d)` and orders them
    by the first name imported; a plain text sort puts the wrapped one first."""
    wrapped = "from acme.tasks import (\n    celery_inbox,\n    tracing,\n)"
    aliased = "from acme.tasks import celery_dashboard as dashboard"
    lines = [
        "from acme.tasks.celery_app import app",
        wrapped,
        "import acme.settings",
        aliased,
        "from acme.tasks import tasks as celery_tasks",
        "from Acme.core import Settings",
    ]
    assert import_order(lines) == [
        "import acme.settings",
        "from Acme.core import Settings",
        aliased,
        wrapped,
        "from acme.tasks import tasks as celery_tasks",
        "from acme.tasks.celery_app import app",
    ]


def test_import_order_puts_constants_then_classes_then_functions_first() -> None:
    lines = ["from m import helper", "from m import Model", "from m import LIMIT"]
    assert import_order(lines) == [
        "from m import LIMIT",
        "from m import Model",
        "from m import helper",
    ]
