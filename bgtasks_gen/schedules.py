"""Turn add-task's --cron / --every into each scheduler's own terms, and a scheduler's
terms back into one text (`bgtasks list`): a cron expression, or words for an interval."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence

from bgtasks_gen.errors import BadInput
from bgtasks_gen.task_request import TaskRequest


def _values(field: str, low: int, high: int) -> list[int] | None:
    """The numbers a cron field matches, or None for every value (`*`)."""
    if field == "*":
        return None
    found: set[int] = set()
    for part in field.split(","):
        base, _, step = part.partition("/")
        start, _, end = base.partition("-")
        first = low if start == "*" else int(start)
        last = high if start == "*" else int(end or start)
        if step and not end and start != "*":
            last = high  # "5/15": from 5 to the top, every 15
        found.update(range(first, last + 1, int(step or 1)))
    return sorted(found)


def _literal(values: list[int]) -> str:
    """1, {1, 5} or set(range(0, 60, 2)) for a long even progression (fits one line)."""
    if len(values) == 1:
        return str(values[0])
    steps = {b - a for a, b in zip(values, values[1:], strict=False)}
    if len(values) > 4 and len(steps) == 1:
        return f"set(range({values[0]}, {values[-1] + 1}, {steps.pop()}))"
    return "{" + ", ".join(map(str, values)) + "}"


def arq_cron_kwargs(request: TaskRequest) -> list[tuple[str, str]]:
    """Keyword arguments of arq's `cron(...)` for the request's schedule (UTC)."""
    if request.every:
        return _arq_every(request.every)
    cron = request.cron
    assert cron is not None
    kwargs = []
    fields = (
        ("month", cron.month, 1, 12),
        ("day", cron.day_of_month, 1, 31),
        ("hour", cron.hour, 0, 23),
        ("minute", cron.minute, 0, 59),
    )
    for key, field, low, high in fields:
        values = _values(field, low, high)
        if values is not None:
            kwargs.append((key, _literal(values)))
    weekdays = _values(cron.day_of_week, 0, 6)
    if weekdays is not None:
        # cron counts Sunday as 0; arq (datetime.weekday) counts Monday as 0
        kwargs.append(("weekday", _literal(sorted((d - 1) % 7 for d in weekdays))))
    kwargs.append(("second", "0"))  # arq matches any value of a field left out
    return kwargs


def _arq_every(seconds: int) -> list[tuple[str, str]]:
    return [(key, _literal(values)) for key, values in _arq_every_values(seconds)]


def _arq_every_values(seconds: int) -> list[tuple[str, list[int]]]:
    """arq schedules by clock fields: N must divide a minute, an hour or a day evenly."""
    if seconds < 60 and 60 % seconds == 0:
        return [("second", list(range(0, 60, seconds)))]
    if seconds % 60 == 0 and 3600 % seconds == 0:
        return [("minute", list(range(0, 60, seconds // 60))), ("second", [0])]
    if seconds % 3600 == 0 and 86400 % seconds == 0:
        hours = list(range(0, 24, seconds // 3600))
        return [("hour", hours), ("minute", [0]), ("second", [0])]
    raise BadInput(
        f"arq cannot run a job every {seconds} seconds",
        "arq schedules by the clock: use a number of seconds that divides a minute, an "
        "hour or a day evenly (e.g. 5, 30, 300, 3600), or --cron",
    )


# crontab's own field sizes (its parser's max_ and min_): "5/15" means 5-59/15 in cron
CELERY_FIELDS = (
    ("minute", 60, 0),
    ("hour", 24, 0),
    ("day_of_month", 31, 1),
    ("month_of_year", 12, 1),
    ("day_of_week", 7, 0),
)


def _celery_field(field: str, size: int, low: int) -> str:
    """The field as celery's crontab parser reads it: that parser takes "a/n" for a
    weekday name and fails at import, so a start with a step becomes the range a-max/n."""
    parts = []
    for part in field.split(","):
        base, slash, step = part.partition("/")
        if slash and base.isdigit():
            part = f"{base}-{low + size - 1}/{step}"
        parts.append(part)
    return ",".join(parts)


def celery_crontab_kwargs(request: TaskRequest) -> list[tuple[str, str]]:
    """Keyword arguments (string values) of celery's `crontab(...)` for the request's
    cron expression; `*` fields are left out, as crontab's defaults are `*`."""
    cron = request.cron
    assert cron is not None
    values = (cron.minute, cron.hour, cron.day_of_month, cron.month, cron.day_of_week)
    return [
        (key, _celery_field(value, size, low))
        for (key, size, low), value in zip(CELERY_FIELDS, values, strict=True)
        if value != "*"
    ]


def celery_schedule(request: TaskRequest) -> str:
    """The `schedule` value of a beat entry: a timedelta, or a crontab (UTC)."""
    if request.every:
        return f"timedelta(seconds={request.every})"
    given = [f'    {key}="{value}",' for key, value in celery_crontab_kwargs(request)]
    # one argument per line, as ruff format leaves it (crontab() alone: every minute)
    return "crontab(\n" + "\n".join(given) + "\n)" if given else "crontab()"


# -- back: one text for a schedule, whichever runner holds it ---------------------------

# (low, high) of the five cron fields, in cron's order; the day of week counts Sunday as 0
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
# arq's cron() fields in cron's order, with their ranges (its weekday counts Monday as 0)
ARQ_RANGES = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 6),
)
INTERVAL_UNITS = ((86400, "d"), (3600, "h"), (60, "m"))

# a field's matching values; None: every value (`*`)
Values = frozenset[int] | None


def interval_text(seconds: float) -> str:
    """`every 30s`, `every 5m`, `every 1h`: the largest unit that divides the interval."""
    if seconds == int(seconds):
        whole = int(seconds)
        for size, unit in INTERVAL_UNITS:
            if whole % size == 0:
                return f"every {whole // size}{unit}"
        return f"every {whole}s"
    return f"every {seconds:g}s"


def _run_text(first: int, last: int) -> str:
    if first == last:
        return str(first)
    # a pair reads as a list, three or more in a row as a range
    return f"{first},{last}" if last == first + 1 else f"{first}-{last}"


def _field_text(values: Values, low: int, high: int) -> str:
    """A field as one canonical cron text, so that equal value sets read the same
    whichever way they were written ("*/15", "0,15,30,45", set(range(0, 60, 15)))."""
    if values is None or values == frozenset(range(low, high + 1)):
        return "*"
    ordered = sorted(values)
    listed = _list_text(ordered)
    steps = {b - a for a, b in zip(ordered, ordered[1:], strict=False)}
    if len(steps) != 1 or (step := steps.pop()) == 1:
        return listed
    reaches_top = ordered[-1] + step > high
    if reaches_top and ordered[0] == low:
        stepped = f"*/{step}"
    else:
        stepped = f"{ordered[0]}-{high if reaches_top else ordered[-1]}/{step}"
    return stepped if len(stepped) < len(listed) else listed  # "1,3,5", not "1-6/2"


def _list_text(ordered: list[int]) -> str:
    runs: list[str] = []
    first = previous = ordered[0]
    for value in ordered[1:]:
        if value != previous + 1:
            runs.append(_run_text(first, previous))
            first = value
        previous = value
    runs.append(_run_text(first, previous))
    return ",".join(runs)


def cron_text(fields: Sequence[Values]) -> str:
    """The five fields' value sets (cron's order, Sunday = 0) as a cron expression."""
    return " ".join(
        _field_text(values, low, high)
        for values, (low, high) in zip(fields, CRON_RANGES, strict=True)
    )


def cron_field_values(field: str, low: int, high: int) -> Values:
    """The values a cron field's text matches; ValueError when it is not numeric cron
    syntax (celery's weekday names, say)."""
    if any(len(number) > 2 for number in re.findall(r"\d+", field)):
        raise ValueError(f"{field!r} is outside {low}-{high}")  # never expand 0-99999999
    values = _values(field.strip(), low, high)
    if values is None:
        return None
    if high == 6:
        values = [0 if day == 7 else day for day in values]  # 7 is Sunday too
    if any(value < low or value > high for value in values):
        raise ValueError(f"{field!r} is outside {low}-{high}")
    return frozenset(values)


def cron_fields_text(fields: Sequence[str]) -> str:
    """Five cron field texts (cron's order) in their canonical form: "0 6 * * 1-5"."""
    if len(fields) != len(CRON_RANGES):
        raise ValueError(f"a cron expression has {len(CRON_RANGES)} fields")
    return cron_text(
        [
            cron_field_values(field, low, high)
            for field, (low, high) in zip(fields, CRON_RANGES, strict=True)
        ]
    )


def arq_cron_text(given: Mapping[str, frozenset[int]], every: int | None = None) -> str:
    """The schedule of arq's `cron(...)` with the fields `given` (the others: every value;
    `second` defaults to 0). `every`: the --every add-task recorded for the task, since a
    minute or hour interval is written exactly as the cron expression it equals."""
    sub_minute = _sub_minute_interval(given)
    if sub_minute is not None:
        return interval_text(sub_minute)
    if every and _arq_fields(given) == _arq_every_fields(every):
        return interval_text(every)
    fields = [given.get(key) for key, _, _ in ARQ_RANGES]
    weekdays = fields[4]
    if weekdays is not None:
        fields[4] = frozenset((day + 1) % 7 for day in weekdays)  # Monday 0 -> cron's 1
    text = cron_text(fields)
    seconds = given.get("second", frozenset({0}))
    if seconds != frozenset({0}):
        text += f" at second {_field_text(seconds, 0, 59)}"
    return text


def _sub_minute_interval(given: Mapping[str, frozenset[int]]) -> int | None:
    """N when the fields are those of arq's `every N seconds` below a minute, which no
    cron expression can say: only `second`, an even progression from 0 round the minute."""
    if set(given) != {"second"} or len(given["second"]) < 2:
        return None
    ordered = sorted(given["second"])
    step = ordered[1] - ordered[0]
    return step if ordered == list(range(0, 60, step)) and 60 % step == 0 else None


def _arq_fields(given: Mapping[str, Collection[int]]) -> dict[str, frozenset[int]]:
    """Every field's values: one left out matches every value, but `second` defaults to 0."""
    fields = {key: frozenset(range(low, high + 1)) for key, low, high in ARQ_RANGES}
    fields["second"] = frozenset({0})
    fields.update((key, frozenset(values)) for key, values in given.items())
    return fields


def _arq_every_fields(seconds: int) -> dict[str, frozenset[int]] | None:
    """The fields add-task writes for `--every seconds`; None when arq cannot say it."""
    try:
        return _arq_fields(dict(_arq_every_values(seconds)))
    except BadInput:
        return None
