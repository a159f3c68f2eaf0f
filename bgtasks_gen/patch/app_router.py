"""Include a router in the user's app, beside the routers it already includes."""

from __future__ import annotations

import libcst as cst

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch._common import add_import, top_level_function


def _include_call(statement: cst.BaseStatement, app_var: str) -> cst.Call | None:
    """The `app.include_router(...)` call a statement consists of, if it is one."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    small = statement.body[0]
    # libcst.matchers would read better but costs ~0.2 s of import time on every run
    if not (isinstance(small, cst.Expr) and isinstance(small.value, cst.Call)):
        return None
    func = small.value.func
    if (
        isinstance(func, cst.Attribute)
        and _is_name(func.value, app_var)
        and func.attr.value == "include_router"
    ):
        return small.value
    return None


def _is_name(node: cst.CSTNode, name: str) -> bool:
    return isinstance(node, cst.Name) and node.value == name


def _binds_app(statement: cst.BaseStatement, app_var: str) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    return any(
        (
            isinstance(small, cst.Assign)
            and len(small.targets) == 1
            and _is_name(small.targets[0].target, app_var)
        )
        or (isinstance(small, cst.AnnAssign) and _is_name(small.target, app_var))
        for small in statement.body
    )


def _include_text(app_var: str, arguments: list[str], layout: str) -> str:
    """The new include, laid out like the project's last one: one argument a line when
    that one spreads over lines, on one line otherwise."""
    lines = layout.strip("\n").split("\n")
    code_lines = [line for line in lines if not line.lstrip().startswith("#")]
    if len(code_lines) < 3 or not code_lines[0].rstrip().endswith("("):
        return f"{app_var}.include_router({', '.join(arguments)})\n"
    inner = code_lines[1][: len(code_lines[1]) - len(code_lines[1].lstrip())]
    closing = code_lines[-1][: len(code_lines[-1]) - len(code_lines[-1].lstrip())]
    body = "".join(f"{inner}{argument},\n" for argument in arguments)
    return f"{app_var}.include_router(\n{body}{closing})\n"


def include_router(
    source: str,
    *,
    app_var: str,
    factory: str | None,
    import_module: str,
    alias: str,
    first_party: frozenset[str] = frozenset(),
    keywords: tuple[tuple[str, str], ...] = (),
) -> str:
    """Add `from import_module import router as alias` and `app_var.include_router(alias)`.

    The new include goes right after the last existing include (so before a catch-all
    `mount("/")` that usually follows them), or right after the app is created.
    `keywords` (name, source) are passed as the project's own includes pass them
    (`prefix=settings.API_V1_STR`, `dependencies=[Depends(current_user)]`).
    `import_module` may be relative (`.api.tasks`).
    """
    module = cst.parse_module(source)
    scope: cst.Module | cst.FunctionDef = module
    if factory is not None:
        function = top_level_function(module, factory)
        if function is None or not isinstance(function.body, cst.IndentedBlock):
            raise PatchError(
                f"the app factory {factory}() is not a top-level function of its module",
                "pass --app-module MODULE:APP naming where the app is created",
            )
        scope = function
    if isinstance(scope, cst.Module):
        body: list[cst.BaseStatement] = list(scope.body)
    else:
        assert isinstance(scope.body, cst.IndentedBlock)
        body = list(scope.body.body)

    already = False
    last_include = None
    app_created = None
    for position, statement in enumerate(body):
        call = _include_call(statement, app_var)
        if call is not None:
            last_include = position
            if call.args and _is_name(call.args[0].value, alias):
                already = True
        elif _binds_app(statement, app_var) and app_created is None:
            app_created = position

    if not already:
        anchor = last_include if last_include is not None else app_created
        if anchor is None:
            raise PatchError(
                f"cannot find where `{app_var}` is created in {factory or 'the module'}",
                "pass --app-module MODULE:APP naming where the app is created",
            )
        arguments = [alias, *(f"{name}={value}" for name, value in keywords)]
        layout = module.code_for_node(body[last_include]) if last_include is not None else ""
        statement = cst.parse_statement(_include_text(app_var, arguments, layout))
        assert isinstance(statement, cst.SimpleStatementLine)
        if last_include is None:
            statement = statement.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        body.insert(anchor + 1, statement)
        if isinstance(scope, cst.Module):
            module = module.with_changes(body=body)
        else:
            new_function = scope.with_changes(body=scope.body.with_changes(body=body))
            module = module.with_changes(
                body=[new_function if s is scope else s for s in module.body]
            )
    if not import_module.startswith("."):
        first_party = first_party | {import_module.split(".")[0]}
    return add_import(module, import_module, "router", alias, first_party).code
