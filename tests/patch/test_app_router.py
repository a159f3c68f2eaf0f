"""Before/after pairs for including a router in the user's app."""

from __future__ import annotations

import pytest

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch.app_router import include_router

MODULE_BEFORE = """import logging

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from shop.api import health, items
from shop.core.config import settings

app = FastAPI(title=settings.NAME)

app.include_router(health.router)
app.include_router(items.router, prefix="/api")
app.mount("/", StaticFiles(directory="static"))
"""

MODULE_AFTER = """import logging

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from shop.api import health, items
from shop.api.tasks import router as tasks_router
from shop.core.config import settings

app = FastAPI(title=settings.NAME)

app.include_router(health.router)
app.include_router(items.router, prefix="/api")
app.include_router(tasks_router)
app.mount("/", StaticFiles(directory="static"))
"""

FACTORY_BEFORE = """from fastapi import FastAPI


def create_app() -> FastAPI:
    application = FastAPI()
    return application
"""

FACTORY_AFTER = """from fastapi import FastAPI

from shop.api.tasks import router as tasks_router


def create_app() -> FastAPI:
    application = FastAPI()

    application.include_router(tasks_router)
    return application
"""

ARGS = {"import_module": "shop.api.tasks", "alias": "tasks_router"}


@pytest.mark.parametrize(
    ("before", "after", "app_var", "factory"),
    [
        (MODULE_BEFORE, MODULE_AFTER, "app", None),
        (FACTORY_BEFORE, FACTORY_AFTER, "application", "create_app"),
    ],
    ids=["module-level-before-catch-all-mount", "factory-without-includes"],
)
def test_router_is_included_beside_existing_ones(
    before: str, after: str, app_var: str, factory: str | None
) -> None:
    result = include_router(before, app_var=app_var, factory=factory, **ARGS)
    assert result == after
    assert include_router(result, app_var=app_var, factory=factory, **ARGS) == after


def test_mount_stays_after_the_new_include() -> None:
    result = include_router(MODULE_BEFORE, app_var="app", factory=None, **ARGS)
    assert result.index("include_router(tasks_router)") < result.index("app.mount(")


def test_missing_factory_is_a_clear_error() -> None:
    with pytest.raises(PatchError, match="create_app"):
        include_router(MODULE_BEFORE, app_var="app", factory="create_app", **ARGS)


def test_python_314_syntax_is_accepted() -> None:
    # `except A, B:` without parentheses parses with libcst whatever Python runs bgtasks
    source = MODULE_BEFORE + "\ntry:\n    pass\nexcept ValueError, TypeError:\n    pass\n"
    result = include_router(source, app_var="app", factory=None, **ARGS)
    assert "except ValueError, TypeError:" in result
    assert "app.include_router(tasks_router)" in result


FACTORY_MULTILINE = """from fastapi import Depends, FastAPI

from .deps import current_user
from .routes import users


def create_app() -> FastAPI:
    application = FastAPI()
    application.include_router(
        users.router,
        prefix="/v1",
        dependencies=[Depends(current_user)],
    )
    return application
"""


def test_keywords_relative_import_and_the_projects_multiline_layout() -> None:
    after = include_router(
        FACTORY_MULTILINE,
        app_var="application",
        factory="create_app",
        import_module=".routes.tasks",
        alias="tasks_router",
        keywords=(("prefix", '"/v1"'), ("dependencies", "[Depends(current_user)]")),
    )
    assert after == FACTORY_MULTILINE.replace(
        "from .routes import users\n",
        "from .routes import users\nfrom .routes.tasks import router as tasks_router\n",
    ).replace(
        "    )\n    return application\n",
        "    )\n    application.include_router(\n        tasks_router,\n"
        '        prefix="/v1",\n        dependencies=[Depends(current_user)],\n    )\n'
        "    return application\n",
    )
    assert (
        include_router(
            after,
            app_var="application",
            factory="create_app",
            import_module=".routes.tasks",
            alias="tasks_router",
            keywords=(("prefix", '"/v1"'),),
        )
        == after
    )  # a second run changes nothing


def test_a_parenthesised_import_block_is_joined_not_repeated() -> None:
    from bgtasks_gen.patch.settings_fields import NewField, add_settings_fields

    source = (
        "from pydantic import (\n    AnyUrl,\n    Field,\n)\n"
        "from pydantic_settings import BaseSettings\n\n\n"
        "class Settings(BaseSettings):\n    A: AnyUrl = Field(default='http://x')\n"
    )
    after = add_settings_fields(
        source, "Settings", [NewField("P", "SecretStr", 'SecretStr("")')], "header"
    )
    assert after.startswith("from pydantic import (\n    AnyUrl,\n    Field,\n    SecretStr,\n)\n")
    assert after.count("from pydantic import") == 1
