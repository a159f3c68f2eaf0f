"""Whether a found `add_task` call can run on a queue worker instead of in the web process.

A worker receives the task by name and its arguments as JSON, in another process, after
the request is gone. So the callable must be a module-level function of the project (a
worker imports it by its dotted name), every parameter must be JSON by its annotation
(the annotation is what the rewritten call is checked against, not the value passed
today), and nothing may depend on the request. Each rule below names one way a call
fails that, as a stable code, a one-line reason and the change that would fix it.

The rules read only facts the scan collected (scan.py); they never read files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bgtasks_gen.adopt.scan import AddTaskCall, TargetParam, TypeRef

# the stable machine codes, in the order the rules are tried
NOT_ROUTE_PARAM = "not-route-param"
LAMBDA = "lambda"
CLOSURE = "closure"
BOUND_METHOD = "bound-method"
VARIADIC = "variadic"
NEEDS_REQUEST = "needs-request"
UNRESOLVED = "unresolved"
ARGUMENT_TYPE = "argument-type"
REASON_CODES = (
    NOT_ROUTE_PARAM,
    LAMBDA,
    CLOSURE,
    BOUND_METHOD,
    VARIADIC,
    NEEDS_REQUEST,
    UNRESOLVED,
    ARGUMENT_TYPE,
)

# what a parameter may be annotated with: values JSON carries unchanged
SCALARS = frozenset({"builtins.str", "builtins.int", "builtins.float", "builtins.bool", "None"})
LISTS = frozenset({"builtins.list", "typing.List"})
DICTS = frozenset({"builtins.dict", "typing.Dict"})
TUPLES = frozenset({"builtins.tuple", "typing.Tuple"})
UNIONS = frozenset({"typing.Union", "|"})
OPTIONAL = "typing.Optional"
LITERAL = "typing.Literal"
ANNOTATED = "typing.Annotated"

# values with a faithful string form: the task takes the string and converts it back
AS_STRING = {
    "datetime.datetime": "an ISO 8601 string (value.isoformat())",
    "datetime.date": "an ISO 8601 string (value.isoformat())",
    "datetime.time": "an ISO 8601 string (value.isoformat())",
    "datetime.timedelta": "a number of seconds (value.total_seconds())",
    "uuid.UUID": "a str (str(value))",
    "decimal.Decimal": "a str (str(value)), which keeps every digit",
    "pathlib.Path": "a str (str(value))",
}
SESSIONS = frozenset(
    {"sqlalchemy.orm.Session", "sqlalchemy.ext.asyncio.AsyncSession", "sqlmodel.Session"}
)
# what FastAPI hands a route for the connection; it is gone once the response is sent
REQUEST_CLASSES = frozenset({"Request", "WebSocket", "HTTPConnection"})
FRAMEWORK_PACKAGES = ("fastapi", "starlette")  # FastAPI re-exports Starlette's classes

PLAIN_DATA = "str, int, float, bool, list[...], dict[str, ...] or a pydantic model"


@dataclass(frozen=True)
class Problem:
    """One reason a call cannot move, with the change that would make it movable."""

    code: str  # one of REASON_CODES
    reason: str  # one line, for people
    fix: str
    parameter: str = ""  # the target's parameter concerned, when there is one


def judge(call: AddTaskCall) -> tuple[Problem, ...]:
    """Every problem of the call, the most fundamental first; empty when it can move."""
    problems: list[Problem] = []
    for rule in RULES:
        problems.extend(rule(call))
    return tuple(problems)


def not_route_param(call: AddTaskCall) -> Iterator[Problem]:
    if not call.on_route_param:
        yield Problem(
            NOT_ROUTE_PARAM,
            f"`{call.param_name}` is a BackgroundTasks created in the code, "
            "not the route's BackgroundTasks",
            f"take a BackgroundTasks parameter in `{call.route or 'the route'}` "
            "and call add_task on it",
        )


def lambda_callable(call: AddTaskCall) -> Iterator[Problem]:
    if call.callable_kind == "lambda":
        yield Problem(
            LAMBDA,
            "a lambda has no importable name",
            "define a module-level function doing what the lambda does and pass it instead",
        )


def nested_function(call: AddTaskCall) -> Iterator[Problem]:
    if call.callable_kind == "nested-function":
        where = f"`{call.nested_in}`" if call.nested_in else "a function"
        yield Problem(
            CLOSURE,
            f"`{call.callable_source}` is defined inside {where}, so a worker cannot import it",
            f"move `{call.callable_source}` to module level and pass the values it uses "
            "from the enclosing function as arguments",
        )


def object_attribute(call: AddTaskCall) -> Iterator[Problem]:
    if call.callable_kind == "attribute-of-object":
        yield Problem(
            BOUND_METHOD,
            f"`{call.callable_source}` is an attribute of an object, not a module-level function",
            "add a module-level function that takes plain data and builds the object "
            "inside it, and pass that function",
        )


def starred_arguments(call: AddTaskCall) -> Iterator[Problem]:
    if call.starred:
        shown = ", ".join(f"`{text}`" for text in call.starred)
        yield Problem(
            VARIADIC,
            f"the call unpacks {shown}, so its arguments are only known when it runs",
            "pass each argument on its own, by name",
        )


def request_argument(call: AddTaskCall) -> Iterator[Problem]:
    for text in (*call.args, *(value for _, value in call.kwargs)):
        if text in call.request_names:
            yield Problem(
                NEEDS_REQUEST,
                f"the call passes the request object `{text}`, "
                "which exists only while the request is served",
                "pass the values the task needs from the request (a header, the client "
                "address, the user's id) as plain arguments",
            )


def unresolved_target(call: AddTaskCall) -> Iterator[Problem]:
    if call.callable_kind == "unresolved":
        yield Problem(
            UNRESOLVED,
            f"`{call.callable_source}` is not a module-level function of the project: "
            f"{call.unresolved}",
            "define the task as a module-level function in the project's own code "
            "(it may call the library inside) and pass that function",
        )


def variadic_parameters(call: AddTaskCall) -> Iterator[Problem]:
    for param in target_params(call):
        if param.kind in ("var-positional", "var-keyword"):
            stars = "*" if param.kind == "var-positional" else "**"
            yield Problem(
                VARIADIC,
                f"`{call.target_name}` takes `{stars}{param.name}`, "
                "whose arguments cannot be checked",
                f"replace `{stars}{param.name}` with named, annotated parameters",
                param.name,
            )


def request_parameters(call: AddTaskCall) -> Iterator[Problem]:
    for param in target_params(call):
        if param.type is not None and is_request(param.type):
            yield Problem(
                NEEDS_REQUEST,
                f"`{call.target_name}` needs the request (`{param.name}: {param.annotation}`), "
                "which exists only while the request is served",
                f"replace `{param.name}` with the values the task needs from the request, "
                "as plain parameters",
                param.name,
            )


def argument_types(call: AddTaskCall) -> Iterator[Problem]:
    for param in target_params(call):
        if param.kind in ("var-positional", "var-keyword"):
            continue  # variadic_parameters says it
        if param.type is None:
            yield Problem(
                ARGUMENT_TYPE,
                f"parameter `{param.name}` of `{call.target_name}` has no annotation",
                f"annotate `{param.name}` with {PLAIN_DATA}",
                param.name,
            )
            continue
        if is_request(param.type):
            continue  # request_parameters says it
        culprit = not_json(param.type)
        if culprit is not None:
            yield Problem(
                ARGUMENT_TYPE,
                f"parameter `{param.name}: {param.annotation}` of `{call.target_name}` "
                f"is not JSON by its annotation ({describe(culprit)})",
                type_fix(param.name, culprit),
                param.name,
            )


Rule = Callable[["AddTaskCall"], Iterator[Problem]]
RULES: tuple[Rule, ...] = (
    not_route_param,
    lambda_callable,
    nested_function,
    object_attribute,
    starred_arguments,
    request_argument,
    unresolved_target,
    variadic_parameters,
    request_parameters,
    argument_types,
)


def target_params(call: AddTaskCall) -> tuple[TargetParam, ...]:
    return call.target.params if call.target is not None else ()


def not_json(ref: TypeRef) -> TypeRef | None:
    """The part of an annotation that JSON does not carry, or None when all of it does."""
    name, args = ref.name, ref.args
    if ref.project == "model":
        return None
    if name in SCALARS:
        return None if not args else ref
    if name == ANNOTATED:
        return not_json(args[0]) if args else ref
    if name == OPTIONAL:
        return not_json(args[0]) if len(args) == 1 else ref
    if name in UNIONS:
        return first_not_json(args) if args else ref
    if name in LISTS:
        return not_json(args[0]) if len(args) == 1 else ref
    if name in DICTS:
        if len(args) != 2 or args[0].name != "builtins.str":
            return ref
        return not_json(args[1])
    if name in TUPLES:
        items = [item for item in args if item.name != "..."]
        return first_not_json(items) if items else ref
    if name == LITERAL:
        plain = bool(args) and all(item.name in ("<value>", "None") for item in args)
        return None if plain else ref
    return ref


def first_not_json(refs: tuple[TypeRef, ...] | list[TypeRef]) -> TypeRef | None:
    for ref in refs:
        culprit = not_json(ref)
        if culprit is not None:
            return culprit
    return None


def is_request(ref: TypeRef) -> bool:
    """An annotation naming FastAPI's or Starlette's request (or websocket) class."""
    if ref.name == ANNOTATED and ref.args:
        return is_request(ref.args[0])
    return framework_class(ref.name, REQUEST_CLASSES)


def framework_class(qualified: str, names: frozenset[str]) -> bool:
    """`fastapi.Request`, `starlette.requests.Request` and the like, for any of `names`."""
    package, _, last = qualified.rpartition(".")
    return last in names and package.split(".")[0] in FRAMEWORK_PACKAGES


def describe(ref: TypeRef) -> str:
    """Why this part of an annotation does not travel as JSON, in a few words."""
    name = ref.name
    if ref.project == "class":
        return f"`{ref.text}` is a class of the project that is not a pydantic model"
    if name in AS_STRING:
        return f"`{ref.text}` has no JSON form of its own"
    if name in DICTS and len(ref.args) == 2:
        return f"`{ref.text}` has keys that are not str; JSON object keys are strings"
    if name in LISTS | DICTS | TUPLES and not ref.args:
        return f"`{ref.text}` does not say what it holds"
    if name == "":
        return f"`{ref.text}` is not a type bgtasks can read"
    return f"`{ref.text}` is not plain data"


def type_fix(param: str, ref: TypeRef) -> str:
    """The change that would make the parameter travel as JSON."""
    name = ref.name
    if ref.project == "class":
        return (
            f"pass what the task needs from `{ref.text}` (its id, or a pydantic model of "
            f"its fields) as `{param}` and load or rebuild it inside the task"
        )
    if name in AS_STRING:
        return f"pass {AS_STRING[name]} as `{param}` and convert it back inside the task"
    if name in SESSIONS:
        return (
            f"drop `{param}` and open a new session inside the task: the route's session "
            "is closed once the response is sent"
        )
    if name in DICTS and len(ref.args) == 2:
        return f"give `{param}` str keys, e.g. `dict[str, ...]`"
    if name in LISTS | DICTS | TUPLES and not ref.args:
        return f"say what `{param}` holds, e.g. `list[str]` or `dict[str, int]`"
    return f"pass plain data ({PLAIN_DATA}) as `{param}` and build the rest inside the task"
