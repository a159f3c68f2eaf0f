"""Turn add-task's --cron / --every into each scheduler's own terms."""

from __future__ import annotations

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
    """arq schedules by clock fields: N must divide a minute, an hour or a day evenly."""
    if seconds < 60 and 60 % seconds == 0:
        return [("second", _literal(list(range(0, 60, seconds))))]
    if seconds % 60 == 0 and 3600 % seconds == 0:
        return [("minute", _literal(list(range(0, 60, seconds // 60)))), ("second", "0")]
    if seconds % 3600 == 0 and 86400 % seconds == 0:
        hours = list(range(0, 24, seconds // 3600))
        return [("hour", _literal(hours)), ("minute", "0"), ("second", "0")]
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
