"""Property-based tests: the settings and app patches on modules of random shape.

For every generated module: the patched code parses, every original line is still there
in order (nothing of the user's is changed or dropped), each required item is present
exactly once, and patching again changes nothing.
"""

from __future__ import annotations

import ast
import keyword

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgtasks_gen.patch.app_router import include_router
from bgtasks_gen.patch.settings_fields import NewField, add_settings_fields
from tests.conftest import is_subsequence

NAMES = st.from_regex(r"[a-z][a-z_]{0,8}[a-z]", fullmatch=True).filter(
    lambda name: not keyword.iskeyword(name) and not keyword.issoftkeyword(name)
)
ANNOTATIONS = st.sampled_from(["str", "int", "bool", "float", "list[str]", "str | None"])
DEFAULTS = {
    "str": '"x"',
    "int": "1",
    "bool": "False",
    "float": "0.5",
    "list[str]": "[]",
    "str | None": "None",
}
COMMENTS = st.sampled_from(["", "  # why", "  # TODO: check"])
WANTED = ["smtp_host", "smtp_port", "email_from", "redis_url"]


@st.composite
def settings_modules(draw: st.DrawFn) -> tuple[str, bool]:
    upper = draw(st.booleans())
    v1 = draw(st.booleans())
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = ['"""Settings."""', ""]
    lines.append(
        "from pydantic import BaseSettings" if v1 else "from pydantic_settings import BaseSettings"
    )
    lines += ["", "", "class Settings(BaseSettings):"]
    if draw(st.booleans()):
        lines.append('    """The app\'s settings."""')
    names = draw(st.lists(NAMES, min_size=0, max_size=8, unique=True))
    # sometimes some of the wanted fields are already there, in the project's style
    names += draw(st.lists(st.sampled_from(WANTED), max_size=2, unique=True))
    seen = set()
    for name in names:
        spelled = name.upper() if upper else name
        if spelled in seen:
            continue
        seen.add(spelled)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "    # a group", "    # ---"])))
        annotation = draw(ANNOTATIONS)
        lines.append(f"    {spelled}: {annotation} = {DEFAULTS[annotation]}{draw(COMMENTS)}")
    if v1 and draw(st.booleans()):
        lines += ["", "    class Config:", '        env_file = ".env"']
    if draw(st.booleans()):
        lines += ["", "    @property", "    def is_debug(self) -> bool:", "        return False"]
    if not seen and lines[-1].endswith(":"):
        lines.append("    pass")
    lines += ["", "", "settings = Settings()", ""]
    return newline.join(lines), upper


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(settings_modules())
def test_settings_patch_properties(module: tuple[str, bool]) -> None:
    source, upper = module
    fields = [NewField(name.upper() if upper else name, "str", '"value"') for name in WANTED]
    patched = add_settings_fields(source, "Settings", fields, "Background tasks")
    tree = ast.parse(patched)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    declared = [
        s.target.id
        for s in cls.body
        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
    ]
    for field in fields:
        assert declared.count(field.name) == 1
    original = [line for line in source.splitlines() if line.strip() != "pass"]
    assert is_subsequence(original, patched.splitlines())
    assert ("\r\n" in source) == ("\r\n" in patched)
    assert add_settings_fields(patched, "Settings", fields, "Background tasks") == patched


@st.composite
def app_modules(draw: st.DrawFn) -> tuple[str, str, str | None]:
    factory = draw(st.booleans())
    app_var = draw(st.sampled_from(["app", "application", "api"]))
    indent = "    " if factory else ""
    lines = ["from fastapi import FastAPI", "from fastapi.staticfiles import StaticFiles", ""]
    routers = draw(st.lists(NAMES, max_size=4, unique=True))
    for name in routers:
        lines.append(f"from project.routes import {name}")
    lines += ["", ""]
    if factory:
        lines.append("def create_app() -> FastAPI:")
    lines.append(f'{indent}{app_var} = FastAPI(title="x")')
    for name in routers:
        if draw(st.booleans()):
            lines.append(f"{indent}# the {name} routes")
        lines.append(f"{indent}{app_var}.include_router({name}.router){draw(COMMENTS)}")

    if draw(st.booleans()):
        lines.append(f'{indent}{app_var}.mount("/", StaticFiles(directory="static"))')
    if draw(st.booleans()):
        lines += [
            "",
            f'{indent}@{app_var}.get("/health")',
            f"{indent}def health() -> dict[str, str]:",
            f'{indent}    return {{"status": "ok"}}',
        ]
    if factory:
        lines += [f"{indent}return {app_var}", "", "", "app = create_app()"]
    lines.append("")
    return "\n".join(lines), app_var, "create_app" if factory else None


@settings(max_examples=150, deadline=None)
@given(app_modules())
def test_include_router_properties(module: tuple[str, str, str | None]) -> None:
    source, app_var, factory = module
    args = {"app_var": app_var, "factory": factory, "import_module": "project.routes.tasks"}
    patched = include_router(source, alias="tasks_router", **args)
    ast.parse(patched)
    include = f"{app_var}.include_router(tasks_router)"
    assert patched.count(include) == 1
    assert patched.count("import router as tasks_router") == 1
    assert is_subsequence(source.splitlines(), patched.splitlines())
    if "mount(" in source:
        assert patched.index(include) < patched.index(".mount(")
    assert include_router(patched, alias="tasks_router", **args) == patched
