"""What `add-task` was asked for, validated before anything is read or rendered."""

from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass

from bgtasks_gen.errors import BadInput
from bgtasks_gen.state import MAX_ARGS

# the argument types a task may take: they travel as JSON through every broker
SCALARS = ("int", "float", "str", "bool")
ARG_TYPES = (
    *SCALARS,
    *(f"list[{t}]" for t in SCALARS),
    *(f"dict[str, {t}]" for t in SCALARS),
)
MAX_NAME = 32  # keeps every generated line within 88 columns
NAME_RULE = (
    f"a lower_case Python identifier of at most {MAX_NAME} characters, not a keyword or builtin"
)
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)


@dataclass(frozen=True)
class TaskArg:
    name: str
    type: str

    @property
    def json_example(self) -> str:
        examples = {"int": "1", "float": "1.5", "str": '"text"', "bool": "True"}
        if self.type in examples:
            return examples[self.type]
        inner = self.type.split("[", 1)[1].rstrip("]").split(", ")[-1]
        if self.type.startswith("list["):
            return f"[{examples[inner]}]"
        return f'{{"key": {examples[inner]}}}'


@dataclass(frozen=True)
class Cron:
    minute: str
    hour: str
    day_of_month: str
    month: str
    day_of_week: str

    @property
    def expression(self) -> str:
        return " ".join((self.minute, self.hour, self.day_of_month, self.month, self.day_of_week))


@dataclass(frozen=True)
class TaskRequest:
    name: str
    args: tuple[TaskArg, ...] = ()
    cron: Cron | None = None
    every: int | None = None  # seconds
    retries: int = 3
    timeout: int = 300  # seconds
    route: bool = True

    def options(self) -> dict[str, object]:
        """What the state file records, to tell a re-run with other options apart."""
        return {
            "args": [f"{a.name}:{a.type}" for a in self.args],
            "cron": self.cron.expression if self.cron else "",
            "every": self.every or 0,
            "retries": self.retries,
            "timeout": self.timeout,
            "route": self.route,
        }


def validate_name(name: str, what: str = "task name") -> str:
    problem = None
    if not name.isidentifier() or not name.isascii():
        problem = "is not a Python identifier"
    elif keyword.iskeyword(name) or keyword.issoftkeyword(name):
        problem = "is a Python keyword"
    elif name.startswith("__") and name.endswith("__"):
        problem = "is a dunder name"
    elif hasattr(builtins, name):
        problem = "shadows a Python builtin"
    elif name != name.lower():
        problem = "is not lower_case"
    elif name.startswith("_"):
        problem = "is private (starts with an underscore)"
    elif len(name) > MAX_NAME:
        problem = f"is longer than {MAX_NAME} characters"
    if problem:
        raise BadInput(f"{what} {name!r} {problem}", f"use {NAME_RULE}, e.g. resize_image")
    return name


def parse_arg(spec: str) -> TaskArg:
    name, sep, type_ = spec.partition(":")
    type_ = re.sub(r"\s*,\s*", ", ", type_.strip()) if sep else "str"
    validate_name(name.strip(), "argument name")
    if type_ not in ARG_TYPES:
        raise BadInput(
            f"argument {spec!r}: type {type_!r} is not supported",
            f"use NAME:TYPE with TYPE one of {', '.join(ARG_TYPES)} (they travel as JSON)",
        )
    return TaskArg(name.strip(), type_)


def _check_cron_field(value: str, label: str, low: int, high: int, expression: str) -> None:
    for part in value.split(","):
        base, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise BadInput(f"--cron {expression!r}: bad step {step!r} in the {label} field")
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
            raise BadInput(
                f"--cron {expression!r}: {part!r} is not valid in the {label} field",
                "each field is *, a number, a range a-b, a list a,b or a step */n",
            )
        numbers = [int(b) for b in bounds]
        if any(n < low or n > high for n in numbers) or numbers != sorted(numbers):
            raise BadInput(f"--cron {expression!r}: {part!r} is outside {low}-{high} ({label})")


def parse_cron(expression: str) -> Cron:
    fields = expression.split()
    if len(fields) != 5:
        raise BadInput(
            f"--cron {expression!r} has {len(fields)} field(s), not 5",
            'write "MIN HOUR DOM MON DOW", e.g. "0 9 * * 1-5" for 09:00 on weekdays (UTC)',
        )
    for value, (label, low, high) in zip(fields, CRON_FIELDS, strict=True):
        _check_cron_field(value, label, low, high, expression)
    return Cron(*fields)


def build_request(
    name: str,
    args: list[str],
    cron: str | None,
    every: int | None,
    retries: int,
    timeout: int,
    route: bool,
) -> TaskRequest:
    validate_name(name)
    if len(args) > MAX_ARGS:
        # the state file refuses more: writing them would lock every later command out
        raise BadInput(
            f"{len(args)} --arg options: a task takes at most {MAX_ARGS} arguments",
            "pass one structured argument (a dict[str, T] or list[T]) instead of many",
        )
    parsed = tuple(parse_arg(a) for a in args)
    names = [a.name for a in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BadInput(
            f"argument names repeat: {', '.join(map(repr, repeated))}",
            "give each --arg its own name: they become the task function's parameters",
        )
    if cron and every:
        raise BadInput("--cron and --every are alternatives", "pass one of them")
    if every is not None and every < 1:
        raise BadInput("--every must be a whole number of seconds, 1 or more")
    if not 0 <= retries <= 100:
        raise BadInput("--retries must be between 0 and 100")
    if not 1 <= timeout <= 24 * 3600:
        raise BadInput("--timeout must be between 1 and 86400 seconds")
    if (cron or every) and parsed:
        raise BadInput(
            "a scheduled task takes no arguments (the scheduler has none to give it)",
            "drop --arg, or drop --cron/--every and queue it through its route",
        )
    return TaskRequest(
        name=name,
        args=parsed,
        cron=parse_cron(cron) if cron else None,
        every=every,
        retries=retries,
        timeout=timeout,
        route=route,
    )
