"""Include a router in the user's app, beside the routers it already includes."""

from __future__ import annotations

import libcst as cst

from bgtasks_gen.errors import PatchError
from bgtasks_gen.patch._common import add_import, name_node, top_level_function


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


def _include_statement(
    app_var: str, alias: str, keywords: tuple[tuple[str, str], ...], layout: str
) -> cst.SimpleStatementLine:
    """The new include, built from checked names and the project's own keyword values (each
    one expression), laid out like the project's last include: one argument a line when
    that one spreads over lines, on one line otherwise."""
    arguments = [cst.Arg(value=name_node(alias))]
    for name, value in keywords:
        arguments.append(
            cst.Arg(
                keyword=name_node(name),
                value=_keyword_value(name, value),
                equal=cst.AssignEqual(
                    whitespace_before=cst.SimpleWhitespace(""),
                    whitespace_after=cst.SimpleWhitespace(""),
                ),
            )
        )
    opening: cst.BaseParenthesizableWhitespace = cst.SimpleWhitespace("")
    spread = _spread_indents(layout)
    if spread is not None:
        inner, closing = spread
        opening = _line_break(inner)
        arguments = [
            argument.with_changes(
                comma=cst.Comma(
                    whitespace_after=_line_break(closing if last else inner),
                )
            )
            for last, argument in ((i == len(arguments) - 1, a) for i, a in enumerate(arguments))
        ]
    call = cst.Call(
        func=cst.Attribute(value=name_node(app_var), attr=cst.Name("include_router")),
        args=arguments,
        whitespace_before_args=opening,
    )
    return cst.SimpleStatementLine(body=[cst.Expr(value=call)])


def _spread_indents(layout: str) -> tuple[str, str] | None:
    """(argument indent, closing indent) of an include written one argument a line."""
    lines = layout.strip("\n").split("\n")
    code_lines = [line for line in lines if not line.lstrip().startswith("#")]
    if len(code_lines) < 3 or not code_lines[0].rstrip().endswith("("):
        return None
    inner = code_lines[1][: len(code_lines[1]) - len(code_lines[1].lstrip())]
    closing = code_lines[-1][: len(code_lines[-1]) - len(code_lines[-1].lstrip())]
    return inner, closing


def _line_break(indent: str) -> cst.ParenthesizedWhitespace:
    return cst.ParenthesizedWhitespace(
        first_line=cst.TrailingWhitespace(),
        indent=True,  # `indent` comes after the block's own, as code_for_node shows it
        last_line=cst.SimpleWhitespace(indent),
    )


def _keyword_value(name: str, value: str) -> cst.BaseExpression:
    try:
        return cst.parse_expression(value)
    except cst.ParserSyntaxError:
        raise PatchError(
            f"the {name}= argument of the project's include_router calls ({value!r}) is not "
            "one Python expression",
            "report this as a bug, with that include_router(...) call",
        ) from None


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
        layout = module.code_for_node(body[last_include]) if last_include is not None else ""
        statement = _include_statement(app_var, alias, keywords, layout)
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
